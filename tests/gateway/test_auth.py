"""Bearer tokens: the custodian's issuer, external JWKS issuers, and every way a token fails."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.clock import FixedClock, to_unix
from bastion.errors import ConfigError, InputError
from bastion.gateway.auth import (
    AuthError,
    TokenIssuer,
    TokenVerifier,
    TrustedIssuer,
    bearer_token,
    issuer_from_config,
    public_jwk,
)

ATTRS = {
    "role": "engineer",
    "employer": "custodian",
    "employer_country": "us",
    "location_country": "US",
    "clearance": "restricted",
    "amr": ["pwd", "mfa"],
}


def _setup(clock: FixedClock) -> tuple[TokenIssuer, TokenVerifier]:
    issuer = TokenIssuer(Ed25519PrivateKey.generate(), clock=clock)
    trusted = TrustedIssuer(issuer.issuer, {issuer.jwk["kid"]: issuer.public_key}, source="own")
    return issuer, TokenVerifier([trusted], clock=clock)


def test_round_trip_carries_attributes(clock: FixedClock) -> None:
    issuer, verifier = _setup(clock)
    p = verifier.verify(issuer.issue("alice", ATTRS))
    assert p.id == "alice" and p.role == "engineer" and p.employer == "custodian"
    assert p.employer_country == "US" and p.location_country == "US"
    assert p.clearance == "restricted" and p.mfa
    actor = p.actor()
    assert actor.kind == "principal" and actor.employer_country == "US"


def test_no_mfa_without_amr(clock: FixedClock) -> None:
    issuer, verifier = _setup(clock)
    p = verifier.verify(issuer.issue("bob", {**ATTRS, "amr": ["pwd"]}))
    assert not p.mfa


def test_expired_not_yet_valid_wrong_audience(clock: FixedClock) -> None:
    issuer, verifier = _setup(clock)
    cases = {
        "not-yet-valid": issuer.issue("a", ATTRS, not_before=timedelta(minutes=10)),
        "wrong-audience": issuer.issue("a", ATTRS, audience="someone-else"),
    }
    for kind, token in cases.items():
        with pytest.raises(AuthError) as err:
            verifier.verify(token)
        assert err.value.kind == kind
    token = issuer.issue("a", ATTRS)
    clock.advance(timedelta(hours=9))
    with pytest.raises(AuthError) as err:
        verifier.verify(token)
    assert err.value.kind == "expired"


def test_expiry_uses_the_injected_clock(clock: FixedClock) -> None:
    issuer, verifier = _setup(clock)
    token = issuer.issue("a", ATTRS, ttl=timedelta(minutes=5))
    clock.advance(timedelta(minutes=4))
    assert verifier.verify(token).id == "a"
    clock.advance(timedelta(minutes=2))
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(token)


def test_forged_signature(clock: FixedClock) -> None:
    issuer, verifier = _setup(clock)
    forger = TokenIssuer(Ed25519PrivateKey.generate(), clock=clock)
    # Same issuer name and the genuine kid, signed by another key.
    token = jwt.encode(
        jwt.decode(forger.issue("mallory", ATTRS), options={"verify_signature": False}),
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": issuer.jwk["kid"]},
    )
    with pytest.raises(AuthError) as err:
        verifier.verify(token)
    assert err.value.kind == "bad-signature"
    assert err.value.claimed_subject == "mallory"


def test_tampered_claims_fail(clock: FixedClock) -> None:
    issuer, verifier = _setup(clock)
    head, body, sig = issuer.issue("eve", ATTRS).split(".")
    claims = jwt.decode(f"{head}.{body}.{sig}", options={"verify_signature": False})
    claims["role"] = "admin"
    forged_body = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    with pytest.raises(AuthError) as err:
        verifier.verify(f"{head}.{forged_body}.{sig}")
    assert err.value.kind == "bad-signature"


def test_wrong_issuer_and_unknown_key(clock: FixedClock) -> None:
    _, verifier = _setup(clock)
    stranger = TokenIssuer(Ed25519PrivateKey.generate(), issuer="https://evil.example", clock=clock)
    with pytest.raises(AuthError) as err:
        verifier.verify(stranger.issue("a", ATTRS))
    assert err.value.kind == "wrong-issuer"
    impostor = TokenIssuer(Ed25519PrivateKey.generate(), clock=clock)
    with pytest.raises(AuthError) as err:
        verifier.verify(impostor.issue("a", ATTRS))
    assert err.value.kind == "unknown-key"


def test_hs256_and_none_algorithms_refused(clock: FixedClock) -> None:
    issuer, verifier = _setup(clock)
    claims = jwt.decode(issuer.issue("a", ATTRS), options={"verify_signature": False})
    hs = jwt.encode(claims, "secret-of-32-bytes-long-enough!!", algorithm="HS256")
    with pytest.raises(AuthError, match="malformed"):
        verifier.verify(hs)
    none = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
    with pytest.raises(AuthError, match="malformed"):
        verifier.verify(none)


@pytest.mark.parametrize("token", [None, "", "not-a-jwt", "a.b.c", "x" * 9000])
def test_missing_or_garbage(clock: FixedClock, token: str | None) -> None:
    _, verifier = _setup(clock)
    with pytest.raises(AuthError) as err:
        verifier.verify(token)
    assert err.value.kind in ("missing", "malformed")


def test_bad_attributes_refused_at_issue(clock: FixedClock) -> None:
    issuer, _ = _setup(clock)
    with pytest.raises(InputError, match="employer_country"):
        issuer.issue("a", {**ATTRS, "employer_country": "USA"})
    with pytest.raises(InputError, match="role"):
        issuer.issue("a", {"employer": "x"})
    with pytest.raises(InputError, match="clearance"):
        issuer.issue("a", {**ATTRS, "clearance": "cosmic"})
    with pytest.raises(InputError, match="ttl"):
        issuer.issue("a", ATTRS, ttl=timedelta(days=400))


def test_external_issuer_from_jwks_file(tmp_path: Path, clock: FixedClock) -> None:
    idp_key = Ed25519PrivateKey.generate()
    jwks = {"keys": [public_jwk(idp_key.public_key())]}
    (tmp_path / "idp.json").write_text(json.dumps(jwks))
    trusted = issuer_from_config(
        {
            "issuer": "https://idp.partner.example",
            "jwks_file": "idp.json",
            "claims": {"employer": "org", "role": "job"},
        },
        base=tmp_path,
        source="test",
    )
    verifier = TokenVerifier([trusted], clock=clock)
    now = to_unix(clock.now())
    token = jwt.encode(
        {
            "iss": "https://idp.partner.example",
            "sub": "partner-analyst",
            "aud": "bastion-gateway",
            "iat": now,
            "exp": now + 600,
            "org": "adpartner",
            "job": "analyst",
            "employer_country": "US",
            "location_country": "US",
        },
        idp_key,
        algorithm="EdDSA",
        headers={"kid": jwks["keys"][0]["kid"]},
    )
    p = verifier.verify(token)
    # Identity is issuer + sub: another issuer's "partner-analyst" is another principal.
    assert (p.id, p.sub, p.issuer, p.employer, p.role) == (
        "https://idp.partner.example#partner-analyst",
        "partner-analyst",
        "https://idp.partner.example",
        "adpartner",
        "analyst",
    )


def _external(tmp_path: Path, allow: dict[str, list[str]] | None = None) -> tuple[Any, Any]:
    idp_key = Ed25519PrivateKey.generate()
    jwks = {"keys": [public_jwk(idp_key.public_key())]}
    entry: dict[str, Any] = {"issuer": "https://idp.example", "jwks": jwks}
    if allow is not None:
        entry["allow"] = allow
    return idp_key, issuer_from_config(entry, base=tmp_path, source="test")


def _external_token(key: Ed25519PrivateKey, clock: FixedClock, **claims: Any) -> str:
    now = to_unix(clock.now())
    body = {"iss": "https://idp.example", "aud": "bastion-gateway", "iat": now, "exp": now + 600}
    return jwt.encode({**body, **claims}, key, algorithm="EdDSA")


@pytest.mark.parametrize(
    "claims",
    [
        {"role": "engineer", "employer": "custodian"},  # posing as the custodian's staff
        {"role": "security_officer", "employer": "globalco"},  # an approver role
        {"role": "policy_admin", "employer": "globalco"},
        {"role": "auditor", "employer": "globalco"},
        {"role": "subject"},  # a data subject: only Bastion's own issuer names subjects
        {"role": "engineer", "employer": "globalco", "clearance": "restricted"},
    ],
)
def test_an_external_issuer_cannot_claim_privileged_attributes(
    tmp_path: Path, clock: FixedClock, claims: dict[str, str]
) -> None:
    key, trusted = _external(tmp_path)
    verifier = TokenVerifier([trusted], clock=clock)
    with pytest.raises(AuthError) as err:
        verifier.verify(_external_token(key, clock, sub="mallory", **claims))
    assert err.value.kind == "claim-not-allowed"


def test_an_external_issuer_may_claim_what_it_is_configured_for(
    tmp_path: Path, clock: FixedClock
) -> None:
    key, trusted = _external(
        tmp_path, allow={"role": ["security_officer"], "employer": ["custodian"]}
    )
    verifier = TokenVerifier([trusted], clock=clock)
    p = verifier.verify(
        _external_token(key, clock, sub="sam", role="security_officer", employer="custodian")
    )
    assert p.role == "security_officer" and p.id == "https://idp.example#sam"
    with pytest.raises(AuthError) as err:
        verifier.verify(_external_token(key, clock, sub="eve", role="policy_admin"))
    assert err.value.kind == "claim-not-allowed"


def test_the_own_issuer_refuses_a_sub_with_the_separator(clock: FixedClock) -> None:
    issuer, _ = _setup(clock)
    with pytest.raises(InputError):
        issuer.issue("https://idp.example#sam", ATTRS)


def test_external_issuer_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="issuer"):
        issuer_from_config({"jwks_file": "x"}, base=tmp_path, source="cfg")
    with pytest.raises(ConfigError, match="cannot read"):
        issuer_from_config({"issuer": "i", "jwks_file": "nope.json"}, base=tmp_path, source="c")
    (tmp_path / "rsa.json").write_text(json.dumps({"keys": [{"kty": "RSA", "n": "x", "e": "y"}]}))
    with pytest.raises(ConfigError, match="no Ed25519"):
        issuer_from_config({"issuer": "i", "jwks_file": "rsa.json"}, base=tmp_path, source="c")


def test_bearer_header_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


def test_a_subject_is_never_named_by_their_id_in_entries(clock: FixedClock) -> None:
    issuer = TokenIssuer(Ed25519PrivateKey.generate(), clock=clock)
    trusted = TrustedIssuer(issuer.issuer, {issuer.jwk["kid"]: issuer.public_key}, source="own")
    ref = "hmac-sha256:" + "ab" * 16
    verifier = TokenVerifier([trusted], clock=clock, subject_ref=lambda _sid: ref)
    subject = verifier.verify(issuer.issue("u00001", {"role": "subject"}))
    # Policy still sees the id (the subject reads their own history); entries see the ref.
    assert subject.id == "u00001" and subject.actor().id == ref
    assert subject.actor().kind == "subject"
    staff = verifier.verify(issuer.issue("alice", ATTRS))
    assert staff.public_id is None and staff.actor().id == "alice"
    # Without a ref function, a subject is anonymous in entries rather than named.
    bare = TokenVerifier([trusted], clock=clock)
    assert bare.verify(issuer.issue("u00002", {"role": "subject"})).actor().id == "subject"
