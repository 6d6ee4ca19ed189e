"""Principals: EdDSA JWT bearer tokens from the custodian's own issuer or an external OIDC issuer.

A token carries the attributes that policy and Access Transparency need: the employer, the
employer's country, the country the person is physically in, the job role, a clearance and
the authentication methods (``amr``; MFA is ``"mfa"`` in it).

Time checks (``exp``, ``nbf``, ``iat``) use the injected clock, not PyJWT's wall clock, so
tests can move time; PyJWT still does the signature, audience and issuer checks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion.clock import Clock, to_unix
from bastion.errors import ConfigError, InputError
from bastion.events import Actor
from bastion.gateway.surrogates import find_surrogate

ALGORITHM = "EdDSA"
DEFAULT_ISSUER = "bastion"
DEFAULT_AUDIENCE = "bastion-gateway"
DEFAULT_TTL = timedelta(hours=8)
MAX_TTL = timedelta(days=31)
CLOCK_SKEW = timedelta(seconds=30)
MAX_TOKEN_BYTES = 8192
VERIFIED_CACHE_SIZE = 10_000

AuthFailureKind = Literal[
    "missing",
    "malformed",
    "expired",
    "not-yet-valid",
    "wrong-audience",
    "wrong-issuer",
    "unknown-key",
    "bad-signature",
    "missing-claim",
    "claim-not-allowed",
    "unregistered",
    "disabled",
    "attribute-not-allowed",
]

_ATTRIBUTE_CLAIMS = ("employer", "employer_country", "location_country", "role", "clearance")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_NAME = re.compile(r"^[A-Za-z0-9_.:@/+-]{1,128}$")
CLEARANCES = ("none", "internal", "confidential", "restricted")

# What an external issuer may assert when its entry names no ``allow`` for an attribute:
# never an approver, administrator, auditor or data-subject role, never the custodian as
# employer, and no clearance above internal. The custodian widens this per issuer.
PRIVILEGED_ROLES = frozenset(
    {"security_officer", "privacy_officer", "policy_admin", "auditor", "subject"}
)
CUSTODIAN_EMPLOYERS = frozenset({"custodian"})
RESERVED_ROLES = frozenset({"recipient"})
EXTERNAL_MAX_CLEARANCE = "internal"
ALLOWABLE = ("role", "employer", "employer_country", "clearance")


ANONYMOUS_SUBJECT = "subject"


class AuthError(Exception):
    """A bearer token was refused. The message is safe to return (no token contents)."""

    def __init__(self, kind: AuthFailureKind, detail: str, *, claimed: Mapping[str, Any]) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind: AuthFailureKind = kind
        self.detail = detail
        # Unverified claims, kept only to name the attempt in the ledger (truncated there).
        self.claimed_subject = str(claimed.get("sub", ""))[:128]
        self.claimed_issuer = str(claimed.get("iss", ""))[:256]


@dataclass(frozen=True)
class Principal:
    """An authenticated caller and the attributes its issuer vouched for."""

    # Issuer-qualified: ``sub`` for Bastion's own issuer, ``<issuer>#<sub>`` for any other.
    id: str
    issuer: str
    role: str
    employer: str | None = None
    employer_country: str | None = None
    location_country: str | None = None
    clearance: str = "none"
    amr: tuple[str, ...] = ()
    token_id: str | None = None
    expires_at: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # How ledger entries name this caller when the id itself must not be published: a data
    # subject's token names them by their subject id, so entries carry its keyed ref instead.
    public_id: str | None = None
    # The token's own ``sub`` (``id`` qualifies it with the issuer where needed).
    sub: str = ""

    @property
    def mfa(self) -> bool:
        # RFC 8176 values: "mfa" explicitly, or a hardware/OTP factor alongside another one.
        return "mfa" in self.amr or len({"hwk", "otp", "sms", "swk", "fpt"} & set(self.amr)) > 0

    @property
    def is_subject(self) -> bool:
        return self.role == "subject"

    @property
    def is_auditor(self) -> bool:
        return self.role == "auditor"

    def actor(self) -> Actor:
        """The caller as the (public) ledger names it. A data subject never appears under
        their raw id: under their keyed ref, or, without one, as an anonymous subject."""
        kind: Literal["principal", "subject", "auditor"] = (
            "subject" if self.is_subject else "auditor" if self.is_auditor else "principal"
        )
        shown = self.public_id or (ANONYMOUS_SUBJECT if self.is_subject else self.id)
        return Actor(
            id=shown[:256],
            kind=kind,
            employer=self.employer,
            employer_country=self.employer_country,
            location_country=self.location_country,
            role=self.role,
        )

    def attributes(self) -> dict[str, Any]:
        """The attributes as policy sees them (no token bookkeeping)."""
        return {
            "id": self.id,
            "issuer": self.issuer,
            "role": self.role,
            "employer": self.employer or "",
            "employer_country": self.employer_country or "",
            "location_country": self.location_country or "",
            "clearance": self.clearance,
            "mfa": self.mfa,
        }


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_jwk(key: Ed25519PublicKey) -> dict[str, str]:
    """The RFC 8037 OKP JWK of an Ed25519 key, with its RFC 7638 thumbprint as ``kid``."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = _b64url(raw)
    # RFC 7638: required members only, lexicographic order, no whitespace.
    thumb_input = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    kid = _b64url(hashlib.sha256(thumb_input.encode()).digest())
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": ALGORITHM, "use": "sig"}


def validate_attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Check the attribute claims a token will carry; raise InputError naming the bad one."""
    out: dict[str, Any] = {}
    role = attrs.get("role")
    if not isinstance(role, str) or not _NAME.match(role):
        raise InputError("role is required: letters, digits and _.:@/+- only", field="role")
    if role in RESERVED_ROLES:
        # Egress asks policy for a flow's recipient in this role: a token claiming it could
        # otherwise match the recipients' permits (though no route asks their action).
        raise InputError(f"role {role!r} is Bastion's own; no token carries it", field="role")
    out["role"] = role
    for name in ("employer",):
        value = attrs.get(name)
        if value is not None:
            if not isinstance(value, str) or not _NAME.match(value):
                raise InputError("must be a short name (letters, digits, _.:@/+-)", field=name)
            out[name] = value
    for name in ("employer_country", "location_country"):
        value = attrs.get(name)
        if value is not None:
            if not isinstance(value, str) or not _COUNTRY.match(value.upper()):
                raise InputError("must be an ISO 3166-1 alpha-2 country code", field=name)
            out[name] = value.upper()
    clearance = attrs.get("clearance", "none")
    if clearance not in CLEARANCES:
        raise InputError(f"must be one of {', '.join(CLEARANCES)}", field="clearance")
    out["clearance"] = clearance
    amr = attrs.get("amr", [])
    if isinstance(amr, str):
        amr = [a for a in amr.split(",") if a]
    if not isinstance(amr, list) or not all(isinstance(a, str) and _NAME.match(a) for a in amr):
        raise InputError("must be a list of RFC 8176 method names", field="amr")
    out["amr"] = list(amr)
    return out


class TokenIssuer:
    """The custodian's own issuer: signs tokens with the keyring's ``issuer`` Ed25519 key."""

    def __init__(
        self,
        key: Ed25519PrivateKey,
        *,
        issuer: str = DEFAULT_ISSUER,
        audience: str = DEFAULT_AUDIENCE,
        clock: Clock,
    ) -> None:
        self._key = key
        self.issuer = issuer
        self.audience = audience
        self._clock = clock
        self.jwk = public_jwk(key.public_key())

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [self.jwk]}

    def issue(
        self,
        subject: str,
        attributes: Mapping[str, Any],
        *,
        ttl: timedelta = DEFAULT_TTL,
        not_before: timedelta = timedelta(0),
        audience: str | None = None,
    ) -> str:
        """Sign a token for ``subject`` with validated attribute claims."""
        if not subject or len(subject) > 256:
            raise InputError("subject must be 1 to 256 characters", field="sub")
        if "#" in subject:
            # '#' separates issuer and sub in principal ids: the own issuer's subs never hold it.
            raise InputError("subject must not contain '#'", field="sub")
        if ttl <= timedelta(0) or ttl > MAX_TTL:
            raise InputError(f"ttl must be positive and at most {MAX_TTL}", field="ttl")
        claims = validate_attributes(attributes)
        now = self._clock.now()
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience or self.audience,
            "iat": to_unix(now),
            "nbf": to_unix(now + not_before),
            "exp": to_unix(now + ttl),
            "jti": uuid.uuid4().hex,
            **claims,
        }
        return jwt.encode(payload, self._key, algorithm=ALGORITHM, headers={"kid": self.jwk["kid"]})


@dataclass(frozen=True)
class TrustedIssuer:
    """An issuer whose tokens the gateway accepts, with its verification keys by ``kid``."""

    issuer: str
    keys: Mapping[str, Ed25519PublicKey]
    audience: str | None = None
    # Claim names of an external IdP mapped to Bastion's attribute names.
    claim_map: Mapping[str, str] = field(default_factory=dict)
    source: str = "local"
    # Values this issuer may assert, per attribute (role, employer, employer_country,
    # clearance); an attribute not named gets the external default (see PRIVILEGED_ROLES).
    allow: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @property
    def own(self) -> bool:
        return self.source == "own"

    def check_claims(self, attrs: Mapping[str, Any]) -> None:
        """Raise ValueError naming the first attribute this issuer may not assert."""
        if self.own:
            return
        for name in ALLOWABLE:
            value = attrs.get(name)
            if name in self.allow:
                if value is not None and str(value) not in self.allow[name]:
                    raise ValueError(f"issuer may not assert {name}={value!r}")
                continue
            if name == "role" and value in PRIVILEGED_ROLES:
                raise ValueError(f"issuer may not assert role {value!r}")
            if name == "employer" and value in CUSTODIAN_EMPLOYERS:
                raise ValueError("issuer may not assert the custodian as employer")
            if name == "clearance" and CLEARANCES.index(str(value or "none")) > CLEARANCES.index(
                EXTERNAL_MAX_CLEARANCE
            ):
                raise ValueError(f"issuer may not assert clearance {value!r}")


def keys_from_jwks(jwks: Mapping[str, Any], *, source: str) -> dict[str, Ed25519PublicKey]:
    """The Ed25519 keys of a JWKS document; other key types are ignored (EdDSA only)."""
    keys_raw = jwks.get("keys")
    if not isinstance(keys_raw, list):
        raise ConfigError(f"{source}: a JWKS needs a 'keys' list")
    out: dict[str, Ed25519PublicKey] = {}
    for i, jwk in enumerate(keys_raw):
        if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        try:
            key = jwt.PyJWK(jwk, algorithm=ALGORITHM).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            raise ConfigError(f"{source}: key {i} is not a valid Ed25519 JWK ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{source}: key {i} is not an Ed25519 public key")
        kid = str(jwk.get("kid") or public_jwk(key)["kid"])
        out[kid] = key
    if not out:
        raise ConfigError(f"{source}: the JWKS holds no Ed25519 (OKP) keys")
    return out


def issuer_from_config(entry: Mapping[str, Any], *, base: Path, source: str) -> TrustedIssuer:
    """One ``[[gateway.issuers]]`` entry (or an ``issuers/*.json`` file) as a TrustedIssuer.

    ``jwks_file`` is read now. ``jwks_url`` is fetched once at start-up with a short timeout
    (tests use files; the gateway never fetches keys while deciding a request).
    """
    issuer = entry.get("issuer")
    if not isinstance(issuer, str) or not issuer:
        raise ConfigError(f"{source}: 'issuer' is required")
    claim_map = entry.get("claims", {})
    if not isinstance(claim_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in claim_map.items()
    ):
        raise ConfigError(f"{source}: 'claims' must map attribute names to claim names")
    audience = entry.get("audience")
    if audience is not None and not isinstance(audience, str):
        raise ConfigError(f"{source}: 'audience' must be a string")
    allow_raw = entry.get("allow", {})
    if not isinstance(allow_raw, dict) or not all(
        k in ALLOWABLE and isinstance(v, list) and all(isinstance(x, str) for x in v)
        for k, v in allow_raw.items()
    ):
        raise ConfigError(
            f"{source}: 'allow' must map {', '.join(ALLOWABLE)} to lists of allowed values"
        )
    if "jwks_file" in entry:
        path = Path(str(entry["jwks_file"]))
        path = path if path.is_absolute() else base / path
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{source}: cannot read JWKS file {path}: {exc}") from None
        where = str(path)
    elif "jwks_url" in entry:
        import httpx

        url = str(entry["jwks_url"])
        try:
            resp = httpx.get(url, timeout=5.0)
            resp.raise_for_status()
            doc = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ConfigError(f"{source}: cannot fetch JWKS {url}: {type(exc).__name__}") from None
        where = url
    elif "jwks" in entry:
        doc = entry["jwks"]
        where = source
    else:
        raise ConfigError(f"{source}: give 'jwks_file' or 'jwks_url' for issuer {issuer!r}")
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: JWKS must be a JSON object")
    return TrustedIssuer(
        issuer=issuer,
        keys=keys_from_jwks(doc, source=where),
        audience=audience,
        claim_map=dict(claim_map),
        source=where,
        allow={k: frozenset(v) for k, v in allow_raw.items()},
    )


class TokenVerifier:
    """Checks a bearer token against the trusted issuers; returns the Principal or raises."""

    def __init__(
        self,
        issuers: Iterable[TrustedIssuer],
        *,
        audience: str = DEFAULT_AUDIENCE,
        clock: Clock,
        skew: timedelta = CLOCK_SKEW,
        subject_ref: Callable[[str], str] | None = None,
    ) -> None:
        """``subject_ref``: a subject id -> the keyed ref ledger entries may carry; a data
        subject's principal is published under it (``Principal.public_id``)."""
        self._subject_ref = subject_ref
        self._issuers: dict[str, TrustedIssuer] = {}
        for trusted in issuers:
            self._issuers[trusted.issuer] = trusted
        self.audience = audience
        self._clock = clock
        self._skew = int(skew.total_seconds())
        # Verified tokens: the signature and claims of these exact bytes were checked once;
        # time validity is re-checked on every use (see _check_time).
        self._verified: OrderedDict[str, Principal] = OrderedDict()
        self._cache_lock = threading.Lock()

    @property
    def issuers(self) -> Sequence[TrustedIssuer]:
        return list(self._issuers.values())

    def verify(self, token: str | None) -> Principal:
        if not token:
            raise AuthError("missing", "a bearer token is required", claimed={})
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("malformed", "token too long", claimed={})
        with self._cache_lock:
            cached = self._verified.get(token)
        if cached is not None:
            self._check_time(cached.extra, cached.extra)
            return cached
        principal = self._verify_uncached(token)
        with self._cache_lock:
            self._verified[token] = principal
            while len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        return principal

    def _check_time(self, payload: Mapping[str, Any], claimed: Mapping[str, Any]) -> None:
        now = to_unix(self._clock.now())
        exp, nbf = payload.get("exp"), payload.get("nbf", payload.get("iat"))
        if not isinstance(exp, int | float) or (
            nbf is not None and not isinstance(nbf, int | float)
        ):
            raise AuthError("malformed", "exp/nbf must be numeric dates", claimed=claimed)
        if now >= exp + self._skew:
            raise AuthError("expired", "token has expired", claimed=claimed)
        if nbf is not None and now + self._skew < nbf:
            raise AuthError("not-yet-valid", "token is not valid yet", claimed=claimed)

    def _verify_uncached(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            claimed = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthError("malformed", "not a JWT", claimed={}) from None
        if header.get("alg") != ALGORITHM:
            raise AuthError("malformed", "only EdDSA tokens are accepted", claimed=claimed)
        trusted = self._issuers.get(str(claimed.get("iss", "")))
        if trusted is None:
            raise AuthError("wrong-issuer", "issuer is not trusted", claimed=claimed)
        kid = header.get("kid")
        if isinstance(kid, str) and kid in trusted.keys:
            candidates = [trusted.keys[kid]]
        elif kid is None:
            candidates = list(trusted.keys.values())
        else:
            raise AuthError("unknown-key", "no trusted key with this kid", claimed=claimed)
        audience = trusted.audience or self.audience
        payload: dict[str, Any] | None = None
        for key in candidates:
            try:
                payload = jwt.decode(
                    token,
                    key,
                    algorithms=[ALGORITHM],
                    audience=audience,
                    issuer=trusted.issuer,
                    options={
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                        "require": ["iss", "sub", "aud", "exp"],
                    },
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidAudienceError:
                raise AuthError(
                    "wrong-audience", "token is for another audience", claimed=claimed
                ) from None
            except jwt.InvalidIssuerError:
                raise AuthError("wrong-issuer", "issuer is not trusted", claimed=claimed) from None
            except jwt.MissingRequiredClaimError as exc:
                raise AuthError("missing-claim", str(exc), claimed=claimed) from None
            except jwt.PyJWTError:
                raise AuthError("malformed", "token cannot be decoded", claimed=claimed) from None
        if payload is None:
            raise AuthError("bad-signature", "signature does not verify", claimed=claimed)
        return self._principal(payload, trusted)

    def _principal(self, payload: dict[str, Any], trusted: TrustedIssuer) -> Principal:
        if find_surrogate(payload) is not None:
            # Signed, but a claim is not Unicode text (a lone surrogate): no entry could name
            # this principal, so the token is refused (the refusal records only the issuer).
            raise AuthError(
                "malformed",
                "a claim holds text that is not valid Unicode",
                claimed={"iss": trusted.issuer},
            )
        self._check_time(payload, payload)
        exp = payload["exp"]
        mapped = {
            name: payload.get(trusted.claim_map.get(name, name)) for name in _ATTRIBUTE_CLAIMS
        }
        mapped["amr"] = payload.get(trusted.claim_map.get("amr", "amr"), [])
        if mapped.get("clearance") is None:
            mapped["clearance"] = "none"
        try:
            attrs = validate_attributes(mapped)
        except InputError as exc:
            raise AuthError("missing-claim", str(exc), claimed=payload) from None
        sub = payload.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 256:
            raise AuthError("missing-claim", "sub must be a non-empty string", claimed=payload)
        try:
            trusted.check_claims(attrs)
        except ValueError as exc:
            raise AuthError("claim-not-allowed", str(exc), claimed=payload) from None
        if trusted.own and "#" in sub:
            raise AuthError("malformed", "sub must not contain '#'", claimed=payload)
        extra = {k: v for k, v in payload.items() if k not in {*_ATTRIBUTE_CLAIMS, "amr"}}
        public_id = None
        if attrs["role"] == "subject" and self._subject_ref is not None:
            public_id = self._subject_ref(sub)
        return Principal(
            id=sub if trusted.own else f"{trusted.issuer}#{sub}",
            sub=sub,
            issuer=trusted.issuer,
            role=attrs["role"],
            employer=attrs.get("employer"),
            employer_country=attrs.get("employer_country"),
            location_country=attrs.get("location_country"),
            clearance=attrs["clearance"],
            amr=tuple(attrs["amr"]),
            token_id=str(payload["jti"]) if "jti" in payload else None,
            expires_at=int(exp),
            extra=extra,
            public_id=public_id,
        )


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
