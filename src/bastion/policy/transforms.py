"""Pure functions that turn a field value into what a plan releases: masked, generalized, ...

A field's *kind* (email, phone, person name, date, location, IP address, ...) decides how it
is masked or generalized. The catalog declares storage types, not meanings, so the kind is
read from the type and the field's name (``kind_of``); a field whose meaning is not
recognised is masked by redaction and generalized by masking, never passed through.

Pseudonyms come from the vault (keyed and deterministic); here they are only requested,
through the ``pseudonymize`` callback the gateway passes in.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from bastion.catalog import FieldSpec, FieldType
from bastion.policy.vocabulary import Transform

REDACTED = "[redacted]"
# Coarse grid for generalized locations, in degrees: 0.1 deg is about 11 km, far beyond the
# 1,000 m radius that makes geolocation "precise" under 28 CFR 202.242.
DEFAULT_GRID_DEGREES = 0.1

Pseudonymizer = Callable[[Any], str]


class FieldKind(StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    PERSON_NAME = "person_name"
    IP_ADDRESS = "ip_address"
    DATE = "date"
    TIMESTAMP = "timestamp"
    GEO = "geo"
    COUNTRY = "country"
    IDENTIFIER = "identifier"
    NUMBER = "number"
    BOOLEAN = "boolean"
    TEXT = "text"
    TEXT_LIST = "text_list"


def kind_of(spec: FieldSpec) -> FieldKind:
    """The meaning of a catalog field, from its type and name."""
    name = spec.name.lower()
    ftype = spec.type
    if ftype is FieldType.GEO:
        return FieldKind.GEO
    if ftype is FieldType.DATE:
        return FieldKind.DATE
    if ftype is FieldType.TIMESTAMP:
        return FieldKind.TIMESTAMP
    if ftype in (FieldType.INT, FieldType.FLOAT):
        return FieldKind.NUMBER
    if ftype is FieldType.BOOL:
        return FieldKind.BOOLEAN
    if ftype is FieldType.STRING_LIST:
        return FieldKind.TEXT_LIST
    if "email" in name:
        return FieldKind.EMAIL
    if "phone" in name or name in ("mobile", "msisdn"):
        return FieldKind.PHONE
    if name == "ip" or name.endswith("_ip") or name.startswith("ip_") or "ip_address" in name:
        return FieldKind.IP_ADDRESS
    if name in ("name", "full_name", "display_name") or name.endswith(("_name", "surname")):
        return FieldKind.PERSON_NAME
    if name == "country" or name.endswith("_country"):
        return FieldKind.COUNTRY
    if spec.pseudonymize or name == "id" or name.endswith(("_id", "_ids")):
        return FieldKind.IDENTIFIER
    return FieldKind.TEXT


# ---------------------------------------------------------------- masking


def mask_email(value: str) -> str:
    """Keep only the domain: ``***@example.com``."""
    _, at, domain = value.rpartition("@")
    return f"***@{domain}" if at and domain else REDACTED


def mask_phone(value: str) -> str:
    """Keep only the last four digits: ``***4567``."""
    digits = [c for c in value if c.isdigit()]
    return "***" + "".join(digits[-4:]) if len(digits) >= 4 else REDACTED


def mask_person_name(value: str) -> str:
    """Initials only: ``Ada Lovelace`` -> ``A. L.``."""
    parts = [p for p in value.replace("-", " ").split() if p]
    return " ".join(f"{p[0].upper()}." for p in parts) if parts else REDACTED


def mask_ip(value: str) -> str:
    """Keep the first octet of IPv4, the first hextet of IPv6."""
    try:
        addr = ipaddress.ip_address(value.strip())
    except ValueError:
        return REDACTED
    if addr.version == 4:
        return f"{str(addr).split('.')[0]}.*.*.*"
    return f"{addr.exploded.split(':')[0]}:*"


def mask_identifier(value: str) -> str:
    return f"{value[:2]}***" if len(value) > 4 else REDACTED


def mask_text(value: str) -> str:
    return f"{value[:1]}***" if len(value) > 3 else REDACTED


def mask_value(kind: FieldKind, value: Any) -> Any:
    """The masked form of a value; None stays None (absence is not protected)."""
    if value is None:
        return None
    if kind is FieldKind.TEXT_LIST and isinstance(value, list | tuple):
        return [mask_identifier(str(v)) for v in value]
    if kind is FieldKind.EMAIL:
        return mask_email(str(value))
    if kind is FieldKind.PHONE:
        return mask_phone(str(value))
    if kind is FieldKind.PERSON_NAME:
        return mask_person_name(str(value))
    if kind is FieldKind.IP_ADDRESS:
        return mask_ip(str(value))
    if kind is FieldKind.DATE and isinstance(value, date):
        return f"{value.year:04d}-**-**"
    if kind is FieldKind.IDENTIFIER:
        return mask_identifier(str(value))
    if kind is FieldKind.TEXT:
        return mask_text(str(value))
    # Locations, timestamps, numbers, countries, booleans: nothing partial is safe to show.
    return REDACTED


# ---------------------------------------------------------------- generalizing

# ISO 3166-1 alpha-2 to a coarse region; countries not listed generalize to "other".
_REGIONS: dict[str, str] = {
    **dict.fromkeys(("US", "CA", "MX"), "north-america"),
    **dict.fromkeys(("BR", "AR", "CL", "CO", "PE", "VE", "EC", "UY", "PY", "BO"), "south-america"),
    **dict.fromkeys(
        (
            "GB",
            "IE",
            "FR",
            "DE",
            "ES",
            "PT",
            "IT",
            "NL",
            "BE",
            "LU",
            "CH",
            "AT",
            "DK",
            "SE",
            "NO",
            "FI",
            "IS",
            "PL",
            "CZ",
            "SK",
            "HU",
            "RO",
            "BG",
            "GR",
            "HR",
            "SI",
            "EE",
            "LV",
            "LT",
            "UA",
            "RU",
            "BY",
            "RS",
        ),
        "europe",
    ),
    **dict.fromkeys(
        (
            "CN",
            "HK",
            "MO",
            "TW",
            "JP",
            "KR",
            "KP",
            "IN",
            "PK",
            "BD",
            "ID",
            "MY",
            "SG",
            "TH",
            "VN",
            "PH",
            "IR",
            "IQ",
            "SA",
            "AE",
            "IL",
            "TR",
        ),
        "asia",
    ),
    **dict.fromkeys(("AU", "NZ"), "oceania"),
    **dict.fromkeys(("ZA", "NG", "EG", "KE", "MA", "ET", "GH"), "africa"),
    **dict.fromkeys(("CU", "JM", "DO", "HT", "PR"), "caribbean"),
}


def generalize_date(value: date) -> int:
    """Birth date and other dates -> the year."""
    return value.year


def generalize_geo(value: tuple[float, float], grid: float = DEFAULT_GRID_DEGREES) -> list[float]:
    """A location -> the south-west corner of its cell on a coarse grid."""
    lat, lon = float(value[0]), float(value[1])
    decimals = max(0, -math.floor(math.log10(grid))) if grid < 1 else 0
    return [
        round(math.floor(lat / grid) * grid, decimals),
        round(math.floor(lon / grid) * grid, decimals),
    ]


def generalize_ip(value: str) -> str:
    """IPv4 -> its /24 network, IPv6 -> its /48."""
    try:
        addr = ipaddress.ip_address(value.strip())
    except ValueError:
        return REDACTED
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def generalize_country(value: str) -> str:
    return _REGIONS.get(value.strip().upper(), "other")


def generalize_number(value: float) -> float | int:
    """Keep one significant digit: 1234 -> 1000, 37.5 -> 40."""
    if value == 0 or not math.isfinite(value):
        return 0
    magnitude = 10 ** math.floor(math.log10(abs(value)))
    out = round(value / magnitude) * magnitude
    return int(out) if isinstance(value, int) or magnitude >= 1 else out


def generalize_value(kind: FieldKind, value: Any, *, grid: float = DEFAULT_GRID_DEGREES) -> Any:
    """The generalized form; kinds without a coarser form fall back to masking."""
    if value is None:
        return None
    if kind is FieldKind.TIMESTAMP and isinstance(value, datetime):
        return value.date().isoformat()
    if kind is FieldKind.DATE and isinstance(value, date):
        return generalize_date(value)
    if kind is FieldKind.GEO and isinstance(value, list | tuple) and len(value) == 2:
        return generalize_geo((float(value[0]), float(value[1])), grid)
    if kind is FieldKind.IP_ADDRESS:
        return generalize_ip(str(value))
    if kind is FieldKind.COUNTRY:
        return generalize_country(str(value))
    if kind is FieldKind.NUMBER and isinstance(value, int | float) and not isinstance(value, bool):
        return generalize_number(value)
    return mask_value(kind, value)


# ---------------------------------------------------------------- dispatch


class PseudonymUnavailable(ValueError):
    """A plan asks for a pseudonym but no pseudonymizer was given: release nothing."""


def apply_transform(
    transform: Transform,
    kind: FieldKind,
    value: Any,
    *,
    pseudonymize: Pseudonymizer | None = None,
    grid: float = DEFAULT_GRID_DEGREES,
) -> Any:
    """Apply one field plan's transform to a value. ``deny`` never reaches here: raises."""
    if transform is Transform.CLEAR:
        return value
    if transform is Transform.MASK:
        return mask_value(kind, value)
    if transform is Transform.GENERALIZE:
        return generalize_value(kind, value, grid=grid)
    if transform is Transform.PSEUDONYM:
        if value is None:
            return None
        if pseudonymize is None:
            raise PseudonymUnavailable("a pseudonym was planned but no pseudonymizer is wired")
        if kind is FieldKind.TEXT_LIST and isinstance(value, list | tuple):
            return [pseudonymize(v) for v in value]
        return pseudonymize(value)
    raise ValueError("a denied field has no released value")
