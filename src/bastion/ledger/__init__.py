"""The transparency log: RFC 6962 tree, C2SP checkpoints, tiles, proofs and witnesses."""
