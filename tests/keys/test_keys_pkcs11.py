"""PKCS#11 specifics against a real SoftHSM2 token: keys stay in the token, failures fail closed."""

from __future__ import annotations

from pathlib import Path

import pkcs11
import pytest
from pkcs11 import Attribute, ObjectClass

from bastion.errors import KeyUnavailable
from bastion.keys import softhsm
from bastion.keys.pkcs11 import ERASURE_LABEL, Pkcs11Provider


def test_keks_are_generated_in_the_token_and_not_extractable(
    hsm_token: softhsm.SoftHsmToken, tmp_path: Path
) -> None:
    p = Pkcs11Provider.create(hsm_token.library, hsm_token.label, hsm_token.pin, tmp_path)
    p.rotate()
    for version in (1, 2):
        assert p.key_attributes(version) == {
            "sensitive": True,
            "extractable": False,
            "never_extractable": True,
            "always_sensitive": True,
        }
    p.close()
    # Ask the token directly for the key bytes: it must refuse.
    token = pkcs11.lib(hsm_token.library).get_token(token_label=hsm_token.label)
    with token.open(user_pin=hsm_token.pin) as session:
        keys = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}))
        assert {str(k[Attribute.LABEL]) for k in keys} >= {"bastion-kek-v000001", ERASURE_LABEL}
        for key in keys:
            with pytest.raises(pkcs11.exceptions.AttributeSensitive):
                key[Attribute.VALUE]


def test_erasure_secrets_are_sealed_by_the_token(
    hsm_token: softhsm.SoftHsmToken, tmp_path: Path
) -> None:
    p = Pkcs11Provider.create(hsm_token.library, hsm_token.label, hsm_token.pin, tmp_path)
    secret = p.erasure.create_many(["s1"])["s1"]
    assert secret not in (tmp_path / "erasure.db").read_bytes()
    assert p.erasure.get_many(["s1"]) == {"s1": secret}
    p.close()


def test_bad_library_path_is_key_unavailable(tmp_path: Path, softhsm_conf: Path) -> None:
    with pytest.raises(KeyUnavailable, match="cannot load"):
        Pkcs11Provider("/nonexistent/libpkcs11.so", "t", "1234", tmp_path)


def test_missing_token_is_key_unavailable(tmp_path: Path, softhsm_conf: Path) -> None:
    with pytest.raises(KeyUnavailable, match="not present"):
        Pkcs11Provider(softhsm.DEFAULT_LIBRARY, "no-such-token", "1234", tmp_path)


def test_wrong_pin_is_key_unavailable(hsm_token: softhsm.SoftHsmToken, tmp_path: Path) -> None:
    Pkcs11Provider.create(hsm_token.library, hsm_token.label, hsm_token.pin, tmp_path).close()
    with pytest.raises(KeyUnavailable, match="wrong PIN"):
        Pkcs11Provider(hsm_token.library, hsm_token.label, "0000" + hsm_token.pin, tmp_path)


def test_empty_pin_is_key_unavailable(hsm_token: softhsm.SoftHsmToken, tmp_path: Path) -> None:
    with pytest.raises(KeyUnavailable, match="no PIN"):
        Pkcs11Provider(hsm_token.library, hsm_token.label, "", tmp_path)


def test_token_without_bastion_keys_is_key_unavailable(
    hsm_token: softhsm.SoftHsmToken, tmp_path: Path
) -> None:
    with pytest.raises(KeyUnavailable, match="no Bastion key-encryption key"):
        Pkcs11Provider(hsm_token.library, hsm_token.label, hsm_token.pin, tmp_path)


# python-pkcs11 complains (harmlessly) when a search iterator of the dead session is freed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_lost_session_fails_closed(hsm_token: softhsm.SoftHsmToken, tmp_path: Path) -> None:
    p = Pkcs11Provider.create(hsm_token.library, hsm_token.label, hsm_token.pin, tmp_path)
    wrapped = p.wrap(b"k" * 32)
    p._session.close()  # the token goes away under us
    with pytest.raises(KeyUnavailable):
        p.unwrap(wrapped)
    with pytest.raises(KeyUnavailable):
        p.wrap(b"k" * 32)
