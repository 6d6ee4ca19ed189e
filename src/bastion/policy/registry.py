"""The principal registry: who may call the gateway, and which attributes each may hold.

A signed token alone does not make a principal. Each (issuer, sub) the custodian admits is
registered with the attributes it may assert: the roles it may act in, its employer and the
employer's country (fixed), the highest clearance, and optionally the countries it may work
from. A token whose principal is not registered, is disabled, or claims more than its entry
allows is refused at authentication, before any decision. Data subjects are not registered one
by one: a token in the role ``subject`` is admitted only from an issuer allowed to assert it.

Identity is issuer + sub everywhere: a principal's id is ``sub`` for Bastion's own issuer and
``<issuer>#<sub>`` for any other, so that grants, self-approval and subject matching never
confuse two issuers' subjects. (``#`` is refused in the own issuer's subjects.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bastion.clock import Clock, iso
from bastion.errors import BastionError, InputError
from bastion.policy.principal import CLEARANCE_LEVELS, clearance_name, country_code
from bastion.store import Database

REGISTRY_DDL = [
    """CREATE TABLE IF NOT EXISTS principals (
        issuer TEXT NOT NULL,
        sub TEXT NOT NULL,
        roles TEXT NOT NULL,
        employer TEXT,
        employer_country TEXT,
        max_clearance TEXT NOT NULL,
        locations TEXT,
        status TEXT NOT NULL,
        registered_at TEXT NOT NULL,
        PRIMARY KEY (issuer, sub))""",
]

RefusalKind = Literal["unregistered", "disabled", "attribute-not-allowed"]


class PrincipalRefused(BastionError):
    """A token's principal is not admitted (an authentication failure, 401)."""

    exit_code = 2

    def __init__(self, kind: RefusalKind, detail: str) -> None:
        super().__init__(detail)
        self.kind: RefusalKind = kind
        self.detail = detail


def qualified_id(issuer: str, sub: str, *, own: bool) -> str:
    """The principal id: ``sub`` for the own issuer, ``issuer#sub`` for any other."""
    return sub if own else f"{issuer}#{sub}"


class PrincipalEntry(BaseModel):
    """One registered principal and the attributes its tokens may carry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str = Field(min_length=1, max_length=256)
    sub: str = Field(min_length=1, max_length=256)
    roles: tuple[str, ...] = Field(min_length=1)
    employer: str | None = None
    employer_country: str | None = None
    max_clearance: str = "none"
    # None: any country (where a person works from is not fixed); else an allow-list.
    locations: tuple[str, ...] | None = None
    status: Literal["active", "disabled"] = "active"
    # A platform service's datasets: it writes and follows no other, whatever policy says
    # (None: no restriction here; policy alone decides). Checked by the gateway's writes.
    datasets: tuple[str, ...] | None = None

    @field_validator("max_clearance")
    @classmethod
    def _clearance(cls, v: str) -> str:
        return clearance_name(v)

    @field_validator("employer_country")
    @classmethod
    def _country(cls, v: str | None) -> str | None:
        return country_code(v) if v else None

    @field_validator("locations")
    @classmethod
    def _countries(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return tuple(str(country_code(c)) for c in v) if v is not None else None

    def to_json(self) -> dict[str, object]:
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class Claimed:
    """What a verified token asserts, as the registry checks it."""

    issuer: str
    sub: str
    role: str
    employer: str | None
    employer_country: str | None
    location_country: str | None
    clearance: str


def check_entry(entry: PrincipalEntry | None, claimed: Claimed) -> None:
    """Refuse a token its entry does not allow (pure: the registry's rule, testable alone)."""
    who = f"{claimed.sub!r} of issuer {claimed.issuer!r}"
    if entry is None:
        raise PrincipalRefused("unregistered", f"principal {who} is not registered")
    if entry.status != "active":
        raise PrincipalRefused("disabled", f"principal {who} is disabled")
    if claimed.role not in entry.roles:
        raise PrincipalRefused("attribute-not-allowed", f"role {claimed.role!r} is not allowed")
    if (claimed.employer or None) != entry.employer:
        raise PrincipalRefused("attribute-not-allowed", "employer is not the registered one")
    if (claimed.employer_country or None) != entry.employer_country:
        raise PrincipalRefused(
            "attribute-not-allowed", "employer country is not the registered one"
        )
    if CLEARANCE_LEVELS.get(claimed.clearance, 99) > CLEARANCE_LEVELS[entry.max_clearance]:
        raise PrincipalRefused(
            "attribute-not-allowed",
            f"clearance {claimed.clearance!r} is above the registered {entry.max_clearance!r}",
        )
    if entry.locations is not None and (claimed.location_country or "") not in entry.locations:
        raise PrincipalRefused(
            "attribute-not-allowed", "location country is not one the entry allows"
        )


_COLUMNS = (
    "issuer, sub, roles, employer, employer_country, max_clearance, locations, status, datasets"
)


class PrincipalRegistry:
    """Registered principals in the shared database, read through a short-lived cache.

    A change (a new entry, a disabled one) reaches every gateway within ``refresh_seconds``.
    """

    def __init__(self, db: Database, clock: Clock, *, refresh_seconds: float = 2.0) -> None:
        self.db = db
        self.clock = clock
        self.refresh_seconds = refresh_seconds
        self._cache: dict[tuple[str, str], tuple[float, PrincipalEntry | None]] = {}
        self._lock = threading.Lock()

    def migrate(self) -> None:
        self.db.migrate("principals", REGISTRY_DDL)
        self.db.add_columns("principals", "principals", [("datasets", "TEXT")])

    def register(self, entry: PrincipalEntry) -> PrincipalEntry:
        """Add or replace an entry (the custodian's operator decides who is admitted)."""
        if "#" in entry.sub:
            raise InputError("a registered sub must not contain '#'", field="sub")
        row = (
            entry.issuer,
            entry.sub,
            "\n".join(entry.roles),
            entry.employer,
            entry.employer_country,
            entry.max_clearance,
            "\n".join(entry.locations) if entry.locations is not None else None,
            entry.status,
            "\n".join(entry.datasets) if entry.datasets is not None else None,
            iso(self.clock.now()),
        )
        with self.db.transaction(lock="principals") as cur:
            cur.execute("DELETE FROM principals WHERE issuer = ? AND sub = ?", row[:2])
            cur.execute(
                f"INSERT INTO principals ({_COLUMNS}, registered_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        self._forget(entry.issuer, entry.sub)
        return entry

    def set_status(self, issuer: str, sub: str, status: Literal["active", "disabled"]) -> None:
        with self.db.transaction(lock="principals") as cur:
            cur.execute(
                "UPDATE principals SET status = ? WHERE issuer = ? AND sub = ?",
                (status, issuer, sub),
            )
            if cur.rowcount == 0:
                raise InputError("no such registered principal", field="sub")
        self._forget(issuer, sub)

    def get(self, issuer: str, sub: str) -> PrincipalEntry | None:
        rows = self.db.query(
            f"SELECT {_COLUMNS} FROM principals WHERE issuer = ? AND sub = ?", (issuer, sub)
        )
        return _entry(rows[0]) if rows else None

    def list(self, limit: int = 1000) -> list[PrincipalEntry]:
        rows = self.db.query(
            f"SELECT {_COLUMNS} FROM principals ORDER BY issuer, sub LIMIT ?", (limit,)
        )
        return [_entry(r) for r in rows]

    def entry(self, issuer: str, sub: str) -> PrincipalEntry | None:
        """The registered entry, through the cache."""
        return self._cached(issuer, sub)

    def admit(self, claimed: Claimed) -> None:
        """Raise PrincipalRefused unless the token's principal is registered and allowed
        every attribute it claims."""
        check_entry(self._cached(claimed.issuer, claimed.sub), claimed)

    def peek(self, issuer: str, sub: str) -> tuple[bool, PrincipalEntry | None]:
        """(fresh, entry) from the cache without touching the database."""
        with self._lock:
            hit = self._cache.get((issuer, sub))
        if hit is not None and time.monotonic() - hit[0] < self.refresh_seconds:
            return True, hit[1]
        return False, None

    def _cached(self, issuer: str, sub: str) -> PrincipalEntry | None:
        # Monotonic time only paces the re-read; it never decides anything.
        now = time.monotonic()
        key = (issuer, sub)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.refresh_seconds:
            return hit[1]
        entry = self.get(issuer, sub)
        with self._lock:
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = (now, entry)
        return entry

    def _forget(self, issuer: str, sub: str) -> None:
        with self._lock:
            self._cache.pop((issuer, sub), None)

    def register_many(self, entries: Sequence[PrincipalEntry]) -> None:
        for e in entries:
            self.register(e)


def _entry(row: tuple[object, ...]) -> PrincipalEntry:
    issuer, sub, roles, employer, ec, clearance, locations, status, datasets = row
    return PrincipalEntry(
        issuer=str(issuer),
        sub=str(sub),
        roles=tuple(str(roles).split("\n")),
        employer=str(employer) if employer is not None else None,
        employer_country=str(ec) if ec is not None else None,
        max_clearance=str(clearance),
        locations=tuple(str(locations).split("\n")) if locations is not None else None,
        status="disabled" if status == "disabled" else "active",
        datasets=tuple(str(datasets).split("\n")) if datasets is not None else None,
    )


__all__ = [
    "Claimed",
    "PrincipalEntry",
    "PrincipalRefused",
    "PrincipalRegistry",
    "check_entry",
    "qualified_id",
]
