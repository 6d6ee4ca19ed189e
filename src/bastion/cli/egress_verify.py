"""``bastion egress verify``, ``keygen`` and ``trust-bundle``: the recipient's side.

``verify`` and ``keygen`` run at the recipient, offline, with no Bastion home: they read only
the delivery, the trust bundle and the recipient's key. ``trust-bundle`` runs at the custodian
and writes the bundle the recipient is given (from the home's log and manifest signing key).
The protocol is ``docs/EGRESS-PROTOCOL.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from bastion.cli.common import (
    HOME_OPTION,
    JSON_OPTION,
    console,
    emit_json,
    read_input_file,
    reported_errors,
)
from bastion.cli.groups import egress_app
from bastion.errors import InputError

PRIVATE_KEY_FILE = "recipient.x25519.pem"
PUBLIC_KEY_FILE = "recipient.x25519.pub"


def register(app: typer.Typer) -> None:
    """The commands hang off ``egress_app`` (mounted by main, which imports this module for
    the ``egress`` entry); nothing else to add."""


# --- verify ----------------------------------------------------------------------------------


@egress_app.command("verify")
def verify_cmd(
    delivery: Path = typer.Argument(
        ...,
        help="A delivery directory (holding manifest.dsse.json), or a folder of "
        "<flow>/<manifest_id>/ deliveries: those not yet accepted are verified in run order.",
    ),
    trust: Path = typer.Option(..., "--trust", help="The trust bundle from the custodian."),
    key: Path = typer.Option(..., "--key", help="The recipient's X25519 private key (PEM)."),
    state: Path | None = typer.Option(
        None, "--state", help="SQLite file remembering accepted manifests (replay protection)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Where the verified Parquet files go (<out>/<flow>/<manifest_id>/)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Offline: check signature, log inclusion, chunk hashes, decrypt, schema, replay; write
    the Parquet files only if every check passes. Non-zero exit on the first failure."""
    with reported_errors(as_json):
        from bastion.egress.payload import private_key_from_pem
        from bastion.egress.replay import SqliteReplayState
        from bastion.egress.trust import parse_trust_bundle
        from bastion.egress.verify import pending_deliveries, verify_delivery

        bundle = parse_trust_bundle(read_input_file(trust, "trust bundle"), file=str(trust))
        recipient = private_key_from_pem(read_input_file(key, "recipient key"), file=str(key))
        if not delivery.is_dir():
            raise InputError("delivery directory not found", file=str(delivery))
        replay = SqliteReplayState(state) if state is not None else None
        try:
            paths = pending_deliveries(delivery, replay)
            results: list[dict[str, Any]] = []
            for path in paths:
                result = verify_delivery(path, bundle, recipient, state=replay, out=out)
                results.append({"path": str(path), **result.to_json()})
                if not as_json:
                    _show(path, result.to_json())
        finally:
            if replay is not None:
                replay.close()
        if as_json:
            emit_json({"ok": True, "verified": results})
        elif not paths:
            console.print(f"Nothing new to verify in {delivery}")


def _show(path: Path, result: dict[str, Any]) -> None:
    table = Table(title=f"{result['flow']} run {result['run']} ({result['manifest_id']})")
    table.add_column("check")
    table.add_column("detail")
    for check in result["checks"]:
        table.add_row(f"[green]ok[/] {check['check']}", check["detail"])
    console.print(table)
    where = f" -> {result['out']}" if result["out"] else " (check only: no --out)"
    console.print(
        f"[bold green]VERIFIED[/] {path}: {result['rows']} rows, "
        f"{result['tombstones']} tombstones{where}"
    )


# --- keygen ----------------------------------------------------------------------------------


@egress_app.command("keygen")
def keygen_cmd(
    out: Path = typer.Option(..., "--out", help="Directory for the recipient's key pair."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create the recipient's X25519 key pair: the private key (PEM, mode 0600) stays with the
    recipient; the public key (base64 of 32 bytes) goes into the flow declaration."""
    with reported_errors(as_json):
        from bastion.egress.payload import (
            generate_recipient_key,
            private_key_to_pem,
            public_key_to_b64,
        )

        private_path, public_path = out / PRIVATE_KEY_FILE, out / PUBLIC_KEY_FILE
        for path in (private_path, public_path):
            if path.exists():
                raise InputError("key file already exists; refusing to overwrite", file=str(path))
        out.mkdir(parents=True, exist_ok=True)
        key = generate_recipient_key()
        public = public_key_to_b64(key.public_key())
        _write_new(private_path, private_key_to_pem(key), 0o600)
        _write_new(public_path, (public + "\n").encode(), 0o644)
        info = {"private_key": str(private_path), "public_key_file": str(public_path)}
        if as_json:
            emit_json({"ok": True, **info, "public_key": public})
        else:
            console.print(f"Wrote {private_path} (mode 0600) and {public_path}")
            console.print(f"public key: [bold]{public}[/]")


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (never briefly readable), or fail."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise InputError("key file already exists; refusing to overwrite", file=str(path)) from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


# --- trust-bundle (custodian side) -------------------------------------------------------------


def _parse_flow(spec: str) -> tuple[str, list[str]]:
    name, sep, fields = spec.partition("=")
    names = [f.strip() for f in fields.split(",") if f.strip()]
    if not sep or not name.strip() or not names:
        raise InputError(f"{spec!r} must be NAME=field1,field2", field="--flow")
    return name.strip(), names


@egress_app.command("trust-bundle")
def trust_bundle_cmd(
    out: Path = typer.Option(..., "--out", help="Where to write the trust bundle (JSON)."),
    flow: list[str] = typer.Option(
        ...,
        "--flow",
        help="A flow the recipient receives and its output fields: NAME=field1,field2 "
        "(repeat for several flows).",
    ),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Write the recipient's trust bundle: the log's key, witnesses and quorum, the manifest
    signing key, and the fields of each flow."""
    with reported_errors(as_json):
        from bastion.clock import SystemClock
        from bastion.egress.manifest import SIGNING_KEY_NAME
        from bastion.egress.trust import build_trust_bundle
        from bastion.home import Home
        from bastion.keys.signing import load_or_create_signing_key
        from bastion.ledger.anchors import log_anchors
        from bastion.ledger.log import open_log
        from bastion.releases.files import write_private
        from bastion.wiring import open_store

        flows = dict(_parse_flow(spec) for spec in flow)
        h = Home.load(home)
        db = open_store(h)
        try:
            log = open_log(h, db, SystemClock(), background=False)
            try:
                anchors = log_anchors(log)
            finally:
                log.close()
        finally:
            db.close()
        key = load_or_create_signing_key(h.keyring_dir, SIGNING_KEY_NAME)
        bundle = build_trust_bundle(anchors, [("custodian", key.public_key())], flows)
        write_private(out, (json.dumps(bundle.to_json(), indent=2, sort_keys=True) + "\n").encode())
        if as_json:
            emit_json({"ok": True, "out": str(out), "flows": sorted(flows)})
        else:
            console.print(f"Wrote {out} ({len(flows)} flow(s), quorum {anchors.quorum})")
