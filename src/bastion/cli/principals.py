"""``bastion principals``: register who may call, issue bearer tokens, publish the issuer JWKS,
trust other issuers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Literal

import typer
from pydantic import ValidationError
from rich.table import Table

from bastion.cli.common import HOME_OPTION, JSON_OPTION, console, emit_json, reported_errors
from bastion.cli.groups import principals_app
from bastion.clock import SystemClock, iso
from bastion.errors import ConfigError, InputError
from bastion.gateway.auth import issuer_from_config, validate_attributes
from bastion.gateway.config import gateway_config, issuers_dir
from bastion.gateway.runtime import own_issuer
from bastion.home import Home
from bastion.policy.registry import (
    Claimed,
    PrincipalEntry,
    PrincipalRefused,
    PrincipalRegistry,
    check_entry,
)

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``8h`` or ``2d``."""
    match = _DURATION.match(text.strip())
    if not match:
        raise InputError("use a number and a unit: 90s, 30m, 8h or 2d", field="ttl")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@contextmanager
def _registry(h: Home) -> Iterator[PrincipalRegistry]:
    from bastion.wiring import open_store

    db = open_store(h)
    try:
        registry = PrincipalRegistry(db, SystemClock())
        registry.migrate()
        yield registry
    finally:
        db.close()


def _check_registered(h: Home, issuer: str, subject: str, attrs: Mapping[str, object]) -> None:
    """A token for a principal the gateway would refuse is refused here already."""
    if attrs.get("role") == "subject":
        return
    if gateway_config(h.settings).principals != "registered":
        return
    with _registry(h) as registry:
        entry = registry.get(issuer, subject)
    claimed = Claimed(
        issuer=issuer,
        sub=subject,
        role=str(attrs["role"]),
        employer=_opt(attrs.get("employer")),
        employer_country=_opt(attrs.get("employer_country")),
        location_country=_opt(attrs.get("location_country")),
        clearance=str(attrs.get("clearance", "none")),
    )
    try:
        check_entry(entry, claimed)
    except PrincipalRefused as exc:
        raise InputError(
            f"{exc.detail}; register it first: bastion principals register", field="sub"
        ) from None


def _opt(value: object) -> str | None:
    return (
        str(value).upper()
        if isinstance(value, str) and len(value) == 2
        else (str(value) if value else None)
    )


@principals_app.command("register")
def register(
    subject: str = typer.Argument(..., help="The principal's sub at its issuer."),
    role: list[str] = typer.Option(..., "--role", help="A role it may act in (repeatable)."),
    employer: str | None = typer.Option(None, help="Its employing entity (fixed)."),
    employer_country: str | None = typer.Option(
        None, "--employer-country", help="ISO country of the employing entity (fixed)."
    ),
    max_clearance: str = typer.Option(
        "none", "--max-clearance", help="Highest clearance its tokens may claim."
    ),
    location: list[str] = typer.Option(
        [], "--location", help="A country it may work from (repeatable; default any)."
    ),
    dataset: list[str] = typer.Option(
        [], "--dataset", help="A dataset a service may write (repeatable; default: policy's)."
    ),
    issuer: str | None = typer.Option(None, help="Its issuer (default Bastion's own)."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Admit a principal, with the attributes its tokens may carry."""
    with reported_errors(as_json):
        h = Home.load(home)
        iss = issuer or own_issuer(h, SystemClock()).issuer
        try:
            entry = PrincipalEntry(
                issuer=iss,
                sub=subject,
                roles=tuple(role),
                employer=employer,
                employer_country=employer_country,
                max_clearance=max_clearance,
                locations=tuple(location) if location else None,
                datasets=tuple(dataset) if dataset else None,
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            raise InputError(first["msg"], field=".".join(map(str, first["loc"]))) from None
        with _registry(h) as registry:
            registry.register(entry)
        if as_json:
            emit_json({"ok": True, **entry.to_json()})
        else:
            console.print(f"Registered [bold]{subject}[/] of {iss}: roles {', '.join(role)}")


@principals_app.command("list")
def list_cmd(home: Path | None = HOME_OPTION, as_json: bool = JSON_OPTION) -> None:
    """The registered principals."""
    with reported_errors(as_json):
        h = Home.load(home)
        with _registry(h) as registry:
            entries = registry.list()
        if as_json:
            emit_json({"ok": True, "principals": [e.to_json() for e in entries]})
            return
        table = Table(title="Registered principals")
        for col in ("issuer", "sub", "roles", "employer", "country", "max clearance", "status"):
            table.add_column(col, overflow="fold")
        for e in entries:
            table.add_row(
                e.issuer,
                e.sub,
                ", ".join(e.roles),
                e.employer or "-",
                e.employer_country or "-",
                e.max_clearance,
                e.status,
            )
        console.print(table)


@principals_app.command("disable")
def disable(
    subject: str = typer.Argument(..., help="The principal's sub."),
    issuer: str | None = typer.Option(None, help="Its issuer (default Bastion's own)."),
    enable: bool = typer.Option(False, "--enable", help="Re-enable instead."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Refuse a principal's tokens from now on (every gateway within seconds)."""
    with reported_errors(as_json):
        h = Home.load(home)
        iss = issuer or own_issuer(h, SystemClock()).issuer
        status: Literal["active", "disabled"] = "active" if enable else "disabled"
        with _registry(h) as registry:
            registry.set_status(iss, subject, status)
        if as_json:
            emit_json({"ok": True, "issuer": iss, "sub": subject, "status": status})
        else:
            console.print(f"{subject} of {iss}: {status}")


@principals_app.command("issue")
def issue(
    subject: str = typer.Argument(..., help="The principal's id (the token's sub)."),
    role: str = typer.Option(..., help="Job role, e.g. engineer, moderator, auditor, subject."),
    employer: str | None = typer.Option(None, help="Employing entity, e.g. custodian."),
    employer_country: str | None = typer.Option(
        None, "--employer-country", help="ISO country of the employing entity (office)."
    ),
    location_country: str | None = typer.Option(
        None, "--location-country", help="ISO country where the person physically is."
    ),
    clearance: str = typer.Option("none", help="none, internal, confidential or restricted."),
    amr: str = typer.Option("pwd", help="Authentication methods, comma-separated (mfa, pwd…)."),
    ttl: str = typer.Option("8h", help="Lifetime: 90s, 30m, 8h, 2d."),
    audience: str | None = typer.Option(None, help="Audience (default: the gateway's)."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Sign a token with the custodian's own issuer key."""
    with reported_errors(as_json):
        h = Home.load(home)
        issuer = own_issuer(h, SystemClock())
        lifetime = parse_duration(ttl)
        attrs = {
            "role": role,
            "employer": employer,
            "employer_country": employer_country,
            "location_country": location_country,
            "clearance": clearance,
            "amr": [a.strip() for a in amr.split(",") if a.strip()],
        }
        _check_registered(h, issuer.issuer, subject, validate_attributes(attrs))
        token = issuer.issue(subject, attrs, ttl=lifetime, audience=audience)
        expires = iso(SystemClock().now() + lifetime)
        if as_json:
            emit_json({"ok": True, "token": token, "subject": subject, "expires_at": expires})
        else:
            # Only the token on stdout, so `TOKEN=$(bastion principals issue ...)` works.
            typer.echo(token)


@principals_app.command("jwks")
def jwks(home: Path | None = HOME_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Print the custodian issuer's JWKS (also served at /.well-known/jwks.json)."""
    with reported_errors(as_json):
        h = Home.load(home)
        doc = own_issuer(h, SystemClock()).jwks()
        if as_json:
            emit_json(doc)
        else:
            typer.echo(json.dumps(doc, indent=2))


@principals_app.command("add-issuer")
def add_issuer(
    issuer: str = typer.Argument(..., help="The external issuer's iss value."),
    jwks_file: Path | None = typer.Option(None, "--jwks-file", help="A local JWKS JSON file."),
    jwks_url: str | None = typer.Option(None, "--jwks-url", help="The issuer's JWKS URL."),
    audience: str | None = typer.Option(None, help="Audience its tokens carry, if not ours."),
    claim: list[str] = typer.Option(
        [], "--claim", help="Map an attribute to the IdP's claim: employer=org (repeatable)."
    ),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Trust an external OIDC issuer by its JWKS. The gateway reads it at start-up."""
    with reported_errors(as_json):
        h = Home.load(home)
        gateway_config(h.settings)
        if (jwks_file is None) == (jwks_url is None):
            raise InputError("give exactly one of --jwks-file or --jwks-url", field="jwks")
        claims: dict[str, str] = {}
        for item in claim:
            name, sep, value = item.partition("=")
            if not sep or not name or not value:
                raise InputError("use attribute=claim, e.g. employer=org", field="claim")
            claims[name] = value
        entry: dict[str, object] = {"issuer": issuer, "claims": claims}
        if audience:
            entry["audience"] = audience
        if jwks_file is not None:
            # Keep a copy in the home so the trust does not depend on a file elsewhere.
            try:
                entry["jwks"] = json.loads(jwks_file.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise InputError(f"cannot read JWKS: {exc}", file=str(jwks_file)) from None
        else:
            entry["jwks_url"] = jwks_url
        folder = issuers_dir(h)
        folder.mkdir(exist_ok=True)
        try:
            trusted = issuer_from_config(entry, base=folder, source=issuer)
        except ConfigError as exc:
            raise InputError(str(exc), field="jwks") from None
        slug = re.sub(r"[^A-Za-z0-9]+", "-", issuer).strip("-")[:80] or "issuer"
        path = folder / f"{slug}.json"
        path.write_text(json.dumps(entry, indent=2, sort_keys=True))
        summary = {"ok": True, "issuer": issuer, "keys": sorted(trusted.keys), "file": str(path)}
        if as_json:
            emit_json(summary)
        else:
            console.print(f"Trusting [bold]{issuer}[/] ({len(trusted.keys)} key(s)) from {path}")
