"""DSSE v1: PAE counts bytes, both base64 alphabets, unique trusted keys, keyid never trusted."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.releases.dsse import (
    Envelope,
    Signature,
    TrustedKey,
    add_signature,
    b64decode_any,
    key_id,
    pae,
    parse_envelope,
    sign_envelope,
    verify_envelope,
)
from bastion.releases.errors import ReleaseRejected

PT = "application/vnd.in-toto+json"
NON_ASCII_PT = "application/vnd.bastion.ünïcødé+json"  # 36 characters, 40 bytes


def trusted(*pairs: tuple[str, Ed25519PrivateKey]) -> list[TrustedKey]:
    return [TrustedKey(name, key.public_key()) for name, key in pairs]


def test_pae_matches_the_spec_example() -> None:
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_counts_bytes_not_characters() -> None:
    assert len(NON_ASCII_PT) == 36 and len(NON_ASCII_PT.encode()) == 40
    body = "héllo".encode()  # 5 characters, 6 bytes
    assert pae(NON_ASCII_PT, body) == (b"DSSEv1 40 " + NON_ASCII_PT.encode() + b" 6 " + body)


def test_non_ascii_payload_type_round_trip_and_char_counting_pae_is_rejected() -> None:
    key = Ed25519PrivateKey.generate()
    env = sign_envelope(NON_ASCII_PT, b"{}", [key])
    ok = verify_envelope(env, payload_type=NON_ASCII_PT, trusted=trusted(("k", key)), threshold=1)
    assert ok.signers == ("k",)
    # What a character-counting implementation (securesystemslib) would sign instead:
    wrong_pae = b"DSSEv1 %d %b %d %b" % (len(NON_ASCII_PT), NON_ASCII_PT.encode(), 2, b"{}")
    forged = Envelope(NON_ASCII_PT, b"{}", (Signature("", key.sign(wrong_pae)),))
    with pytest.raises(ReleaseRejected) as err:
        verify_envelope(forged, payload_type=NON_ASCII_PT, trusted=trusted(("k", key)), threshold=1)
    assert err.value.code == "envelope.threshold"


def _payload_with_both_alphabet_chars() -> bytes:
    payload = bytes(range(256)) * 3 + b"x"
    std = base64.b64encode(payload).decode()
    assert "+" in std and "/" in std and std.endswith("=")
    return payload


@pytest.mark.parametrize(
    "encode",
    [
        lambda b: base64.b64encode(b).decode(),
        lambda b: base64.b64encode(b).decode().rstrip("="),
        lambda b: base64.urlsafe_b64encode(b).decode(),
        lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="),
    ],
    ids=["standard", "standard-unpadded", "urlsafe", "urlsafe-unpadded"],
)
def test_both_base64_alphabets_with_or_without_padding_verify(encode: Any) -> None:
    key = Ed25519PrivateKey.generate()
    payload = _payload_with_both_alphabet_chars()
    env = sign_envelope(PT, payload, [key])
    doc = {
        "payloadType": PT,
        "payload": encode(payload),
        "signatures": [{"keyid": "", "sig": encode(env.signatures[0].sig)}],
    }
    parsed = parse_envelope(doc)
    assert parsed.payload == payload
    verify_envelope(parsed, payload_type=PT, trusted=trusted(("k", key)), threshold=1)


@pytest.mark.parametrize("bad", ["ab+c-d==", "a", "ab=c", "abc===", "ab c", "é", 12, None])
def test_bad_base64_is_malformed(bad: object) -> None:
    with pytest.raises(ReleaseRejected) as err:
        b64decode_any(bad, "payload")
    assert err.value.code == "envelope.malformed"


def test_wrong_key_is_rejected() -> None:
    signer, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    env = sign_envelope(PT, b"{}", [signer])
    with pytest.raises(ReleaseRejected) as err:
        verify_envelope(env, payload_type=PT, trusted=trusted(("other", other)), threshold=1)
    assert err.value.code == "envelope.threshold"


def test_too_few_keys_for_the_threshold() -> None:
    a, b, c = (Ed25519PrivateKey.generate() for _ in range(3))
    env = sign_envelope(PT, b"{}", [a, b])
    keys = trusted(("a", a), ("b", b), ("c", c))
    assert verify_envelope(env, payload_type=PT, trusted=keys, threshold=2).signers == ("a", "b")
    with pytest.raises(ReleaseRejected) as err:
        verify_envelope(env, payload_type=PT, trusted=keys, threshold=3)
    assert "2 distinct trusted key(s) signed, 3 required" in str(err.value)


def test_same_key_signing_twice_counts_once() -> None:
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    env = add_signature(sign_envelope(PT, b"{}", [a]), a)
    assert len(env.signatures) == 2
    with pytest.raises(ReleaseRejected) as err:
        verify_envelope(env, payload_type=PT, trusted=trusted(("a", a), ("b", b)), threshold=2)
    assert err.value.code == "envelope.threshold"


def test_same_key_trusted_under_two_names_counts_once() -> None:
    a = Ed25519PrivateKey.generate()
    env = sign_envelope(PT, b"{}", [a])
    with pytest.raises(ReleaseRejected):
        verify_envelope(env, payload_type=PT, trusted=trusted(("a", a), ("alias", a)), threshold=2)


def test_keyid_is_never_trusted() -> None:
    trusted_key, attacker = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    # An attacker's signature claiming the trusted key's id does not verify...
    forged = sign_envelope(PT, b"{}", [attacker])
    forged = Envelope(
        PT, b"{}", (Signature(key_id(trusted_key.public_key()), forged.signatures[0].sig),)
    )
    with pytest.raises(ReleaseRejected):
        verify_envelope(forged, payload_type=PT, trusted=trusted(("t", trusted_key)), threshold=1)
    # ...and a genuine signature under a wrong or empty keyid still does.
    genuine = sign_envelope(PT, b"{}", [trusted_key])
    relabelled = Envelope(PT, b"{}", (Signature("bogus", genuine.signatures[0].sig),))
    ok = verify_envelope(
        relabelled, payload_type=PT, trusted=trusted(("t", trusted_key)), threshold=1
    )
    assert ok.signers == ("t",)


def test_swapped_payload_type_is_rejected() -> None:
    key = Ed25519PrivateKey.generate()
    env = sign_envelope(PT, b"{}", [key])
    swapped = Envelope("application/json", env.payload, env.signatures)
    keys = trusted(("k", key))
    with pytest.raises(ReleaseRejected) as err:
        verify_envelope(swapped, payload_type=PT, trusted=keys, threshold=1)
    assert err.value.code == "envelope.payload_type"
    # Even a verifier expecting the swapped type finds the signature does not cover it.
    with pytest.raises(ReleaseRejected) as err:
        verify_envelope(swapped, payload_type="application/json", trusted=keys, threshold=1)
    assert err.value.code == "envelope.threshold"


def test_tampered_payload_is_rejected() -> None:
    key = Ed25519PrivateKey.generate()
    env = sign_envelope(PT, b'{"a":1}', [key])
    tampered = Envelope(PT, b'{"a":2}', env.signatures)
    with pytest.raises(ReleaseRejected):
        verify_envelope(tampered, payload_type=PT, trusted=trusted(("k", key)), threshold=1)


def test_zero_threshold_is_a_programming_error() -> None:
    key = Ed25519PrivateKey.generate()
    with pytest.raises(ValueError):
        verify_envelope(sign_envelope(PT, b"{}", [key]), payload_type=PT, trusted=[], threshold=0)


GOOD: dict[str, Any] = {
    "payloadType": PT,
    "payload": "e30=",
    "signatures": [{"keyid": "", "sig": base64.b64encode(b"\0" * 64).decode()}],
}


def _mutate(path: str, value: object) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    if path == "signatures[0].sig":
        doc["signatures"][0]["sig"] = value
    elif path == "signatures[0].extra":
        doc["signatures"][0]["extra"] = value
    elif value is KeyError:
        del doc[path]
    else:
        doc[path] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ("not json", "not JSON"),
        ([1, 2], "JSON object"),
        (_mutate("payload", KeyError), "payload"),
        (_mutate("payloadType", KeyError), "payloadType"),
        (_mutate("payloadType", 7), "payloadType"),
        (_mutate("payload", "%%%"), "payload"),
        (_mutate("signatures", []), "signatures"),
        (_mutate("signatures", "sig"), "signatures"),
        (_mutate("signatures", [[]]), "signatures[0]"),
        (_mutate("signatures[0].sig", "*"), "signatures[0].sig"),
        (_mutate("signatures[0].extra", 1), "signatures[0]"),
        (_mutate("extra", 1), "unknown envelope fields"),
        (_mutate("signatures", [{"sig": "AA=="}] * 33), "more than 32"),
    ],
)
def test_malformed_envelope_is_rejected_clearly(doc: object, needle: str) -> None:
    with pytest.raises(ReleaseRejected) as err:
        parse_envelope(doc)
    assert err.value.code == "envelope.malformed"
    assert needle in str(err.value)


def test_envelope_json_round_trip() -> None:
    key = Ed25519PrivateKey.generate()
    env = sign_envelope(PT, b'{"x": "y"}', [key])
    assert parse_envelope(env.to_json()) == env
    assert len(env.sha256()) == 64
