"""Key providers: key-encryption keys (local keyring or PKCS#11 HSM) and signing keys."""
