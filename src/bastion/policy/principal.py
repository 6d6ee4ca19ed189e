"""Who is asking, as policy sees them: token attributes plus what Bastion derives from them.

The gateway's authenticated principal (or any object with the same attributes) goes in;
``PrincipalAttributes`` comes out, with the flags a caller must never set for themselves:
``covered_person`` (28 CFR 202.211, using the 202.601 countries of concern), ``custodian``
and ``mfa``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bastion.errors import InputError
from bastion.events import Actor

# 28 CFR 202.601: China (with Hong Kong and Macau), Cuba, Iran, North Korea, Russia, Venezuela.
COUNTRIES_OF_CONCERN: frozenset[str] = frozenset({"CN", "HK", "MO", "CU", "IR", "KP", "RU", "VE"})

CLEARANCE_LEVELS: dict[str, int] = {"none": 0, "internal": 1, "confidential": 2, "restricted": 3}

# RFC 8176 methods that count as a second factor when present.
_STRONG_AMR = frozenset({"mfa", "hwk", "otp", "sms", "swk", "fpt", "face", "iris", "retina"})

_COUNTRY = re.compile(r"^[A-Z]{2}$")
_NAME = re.compile(r"^[A-Za-z0-9_.:@/+-]{1,128}$")


def country_code(v: str | None) -> str | None:
    """An ISO 3166-1 alpha-2 code, upper-cased; ValueError otherwise (pydantic validators)."""
    if v is None:
        return None
    if not _COUNTRY.match(v.upper()):
        raise ValueError("must be an ISO 3166-1 alpha-2 country code")
    return v.upper()


def clearance_name(v: str) -> str:
    """One of the clearance names; ValueError otherwise (pydantic validators)."""
    if v not in CLEARANCE_LEVELS:
        raise ValueError(f"must be one of {', '.join(CLEARANCE_LEVELS)}")
    return v


class PrincipalLike(Protocol):
    """What the policy layer reads from an authenticated caller (the gateway's Principal)."""

    @property
    def id(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def employer(self) -> str | None: ...

    @property
    def employer_country(self) -> str | None: ...

    @property
    def location_country(self) -> str | None: ...

    @property
    def clearance(self) -> str: ...

    @property
    def amr(self) -> tuple[str, ...]: ...


class PrincipalSpec(BaseModel):
    """A principal described in JSON (CLI ``--principal-json``, tests, the demo)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=256)
    role: str
    employer: str | None = None
    employer_country: str | None = None
    location_country: str | None = None
    clearance: str = "none"
    amr: tuple[str, ...] = ()
    subject_id: str | None = None

    @field_validator("role", "employer")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.match(v):
            raise ValueError("must be a short name (letters, digits, _.:@/+-)")
        return v

    @field_validator("employer_country", "location_country")
    @classmethod
    def _country(cls, v: str | None) -> str | None:
        return country_code(v)

    @field_validator("clearance")
    @classmethod
    def _clearance(cls, v: str) -> str:
        return clearance_name(v)

    @classmethod
    def parse(cls, data: Mapping[str, Any], *, source: str = "principal") -> PrincipalSpec:
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or None
            raise InputError(first["msg"], file=source, field=where) from None


@dataclass(frozen=True)
class PrincipalConfig:
    """How Bastion derives policy flags from token attributes.

    ``custodian_employers``: employer names that are the custodian itself.
    ``covered_employers``: employers designated covered persons although registered outside a
    country of concern (e.g. 50 %-owned by one, 28 CFR 202.211(a)(2)).
    """

    custodian_employers: frozenset[str] = frozenset({"custodian"})
    covered_employers: frozenset[str] = frozenset()
    countries_of_concern: frozenset[str] = COUNTRIES_OF_CONCERN


DEFAULT_PRINCIPAL_CONFIG = PrincipalConfig()


@dataclass(frozen=True)
class PrincipalAttributes:
    """The Cedar ``Bastion::Principal`` entity's attributes, derived once per request."""

    id: str
    role: str
    employer: str
    employer_country: str
    location_country: str
    clearance: str
    clearance_level: int
    amr: tuple[str, ...]
    mfa: bool
    covered_person: bool
    custodian: bool
    subject_id: str
    covered_reasons: tuple[str, ...] = field(default=())
    service: str = ""

    def cedar_attrs(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "employer": self.employer,
            "employer_country": self.employer_country,
            "location_country": self.location_country,
            "clearance": self.clearance,
            "clearance_level": self.clearance_level,
            "amr": sorted(set(self.amr)),
            "mfa": self.mfa,
            "covered_person": self.covered_person,
            "custodian": self.custodian,
            "subject_id": self.subject_id,
            "service": self.service,
        }

    def actor(self) -> Actor:
        kind = (
            "subject"
            if self.role == "subject"
            else "auditor"
            if self.role == "auditor"
            else "principal"
        )
        return Actor(
            id=self.id[:256],
            kind=kind,
            employer=self.employer or None,
            employer_country=self.employer_country or None,
            location_country=self.location_country or None,
            role=self.role,
        )


def _subject_id(p: PrincipalLike) -> str:
    explicit = getattr(p, "subject_id", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    extra = getattr(p, "extra", None)
    if isinstance(extra, Mapping):
        claimed = extra.get("subject_id")
        if isinstance(claimed, str) and claimed:
            return claimed
    # A subject's token names the subject in ``sub`` (the id may qualify it with the issuer).
    sub = getattr(p, "sub", None)
    if p.role == "subject":
        return sub if isinstance(sub, str) and sub else p.id
    return ""


def _service(p: PrincipalLike) -> str:
    """A platform service's name: the token's own ``sub`` (the registered principal the
    registry admitted), never a claim the token adds. Only for role "service", and for a
    flow's recipient (role "recipient", named by its loaded declaration: ``egress.checks``)."""
    if p.role not in ("service", "recipient"):
        return ""
    sub = getattr(p, "sub", None)
    if sub is None:  # a PrincipalSpec (tests, the CLI) names the service by its id
        sub = p.id
    return sub if isinstance(sub, str) and _NAME.match(sub) else ""


def derive_attributes(
    p: PrincipalLike, config: PrincipalConfig = DEFAULT_PRINCIPAL_CONFIG
) -> PrincipalAttributes:
    """Derive the policy view of a principal; unknown clearances count as none (fail closed)."""
    if isinstance(p, PrincipalAttributes):
        return p
    employer = p.employer or ""
    employer_country = (p.employer_country or "").upper()
    location_country = (p.location_country or "").upper()
    reasons: list[str] = []
    if employer_country in config.countries_of_concern:
        reasons.append(f"employer country {employer_country} is a country of concern")
    if location_country in config.countries_of_concern:
        reasons.append(f"located in {location_country}, a country of concern")
    if employer and employer in config.covered_employers:
        reasons.append(f"employer {employer} is designated a covered person")
    amr = tuple(p.amr)
    clearance = p.clearance if p.clearance in CLEARANCE_LEVELS else "none"
    return PrincipalAttributes(
        id=p.id,
        role=p.role,
        employer=employer,
        employer_country=employer_country,
        location_country=location_country,
        clearance=clearance,
        clearance_level=CLEARANCE_LEVELS[clearance],
        amr=amr,
        mfa=bool(_STRONG_AMR & set(amr)),
        covered_person=bool(reasons),
        # A covered person is never treated as custodian staff, whatever the employer string.
        custodian=employer in config.custodian_employers and not reasons,
        subject_id=_subject_id(p),
        covered_reasons=tuple(reasons),
        service=_service(p),
    )
