"""``bastion principals``: issue bearer tokens, publish the issuer JWKS, trust other issuers."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import typer

from bastion.cli.common import HOME_OPTION, JSON_OPTION, console, emit_json, reported_errors
from bastion.cli.groups import principals_app
from bastion.clock import SystemClock, iso
from bastion.errors import ConfigError, InputError
from bastion.gateway.auth import issuer_from_config
from bastion.gateway.config import GatewayConfig, issuers_dir
from bastion.gateway.runtime import own_issuer
from bastion.home import Home

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``8h`` or ``2d``."""
    match = _DURATION.match(text.strip())
    if not match:
        raise InputError("use a number and a unit: 90s, 30m, 8h or 2d", field="ttl")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


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
        GatewayConfig.from_settings(h.settings.raw)
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
