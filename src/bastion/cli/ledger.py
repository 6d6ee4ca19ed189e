"""``bastion ledger``: append operator events, show the key, checkpoint, proofs and status.

(``verify`` and ``verify-proof``, the auditor's commands, live in ``ledger_verify.py``.)
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.table import Table

from bastion.cli.common import HOME_OPTION, JSON_OPTION, console, emit_json, reported_errors
from bastion.cli.groups import ledger_app
from bastion.clock import Clock, SystemClock, iso
from bastion.errors import InputError
from bastion.events import EVENT_ADAPTER
from bastion.home import Home
from bastion.ledger.log import Log, encode_entry, open_log
from bastion.ledger.merkle import leaf_hash
from bastion.store import open_database


@contextmanager
def opened_log(home_path: Path | None, clock: Clock | None = None) -> Iterator[Log]:
    """The home's log, without background threads: commands publish explicitly."""
    home = Home.load(home_path)
    db = open_database(home.database_url, bounds=home.settings.bounds)
    try:
        log = open_log(home, db, clock or SystemClock(), background=False)
        try:
            yield log
        finally:
            log.close()
    finally:
        db.close()


def _default_actor(actor: str | None) -> dict[str, str]:
    name = actor or os.environ.get("BASTION_ACTOR") or getpass.getuser() or "operator"
    return {"id": name, "kind": "operator"}


def parse_events(
    lines: list[str], *, source: str, actor: str | None, clock: Clock
) -> list[tuple[int, bytes]]:
    """Validate every line before anything is appended: (line number, entry) pairs.

    A line is one JSON object: any typed event (``"type"`` present), or the fields of an
    ``operator.note`` (the default type). ``at`` defaults to now and ``actor`` to the operator.
    """
    out: list[tuple[int, bytes]] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputError(f"not valid JSON ({exc.msg})", file=source, row=number) from None
        if not isinstance(obj, dict):
            raise InputError("each line must be a JSON object", file=source, row=number)
        obj.setdefault("type", "operator.note")
        obj.setdefault("at", iso(clock.now()))
        obj.setdefault("actor", _default_actor(actor))
        try:
            event = EVENT_ADAPTER.validate_python(obj)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = list(err["loc"])
            if loc and loc[0] == obj["type"]:
                loc = loc[1:]  # the union's tag, not a field of the line
            field = ".".join(str(p) for p in loc) or None
            raise InputError(err["msg"], file=source, row=number, field=field) from None
        try:
            entry = encode_entry(event)
        except InputError as exc:
            raise InputError(exc.reason, file=source, row=number) from None
        out.append((number, entry))
    if not out:
        raise InputError("no events to append (input is empty)", file=source)
    return out


@ledger_app.command("append")
def append_cmd(
    file: Path | None = typer.Option(
        None, "--file", "-f", help="Read events from this file instead of stdin."
    ),
    actor: str | None = typer.Option(
        None, "--actor", help="Default actor id (else $BASTION_ACTOR or the login name)."
    ),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Append events, one JSON object per line (e.g. a data centre's wipe certificate).

    All lines are checked first: one bad line appends nothing. The events are committed in one
    transaction, in order, and a checkpoint covering them is published.
    """
    with reported_errors(as_json):
        if file is not None:
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise InputError(f"cannot read ({exc})", file=str(file)) from None
            source = str(file)
        else:
            text, source = sys.stdin.read(), "<stdin>"
        clock = SystemClock()
        parsed = parse_events(text.splitlines(), source=source, actor=actor, clock=clock)
        with opened_log(home, clock) as log:
            receipts = log.append_entries([entry for _, entry in parsed])
            cp = log.publish()
    rows = [
        {"line": number, **r.to_json()} for (number, _), r in zip(parsed, receipts, strict=True)
    ]
    if as_json:
        emit_json({"ok": True, "receipts": rows, "checkpoint_size": cp.tree_size})
        return
    table = Table(title=f"Appended {len(rows)} event(s)")
    for col in ("line", "index", "leaf hash"):
        table.add_column(col)
    for row in rows:
        table.add_row(str(row["line"]), str(row["index"]), str(row["leaf_hash"]))
    console.print(table)
    console.print(f"checkpoint published at size {cp.tree_size}")


@ledger_app.command("vkey")
def vkey_cmd(home: Path | None = HOME_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Print the log's verifier key (C2SP signed-note vkey): all an auditor needs."""
    with reported_errors(as_json), opened_log(home) as log:
        vkey, origin = log.vkey, log.origin
    if as_json:
        emit_json({"origin": origin, "vkey": vkey})
    else:
        sys.stdout.write(vkey + "\n")


def _checkpoint_json(log: Log) -> dict[str, Any]:
    cp = log.checkpoint()
    if cp is None:
        return {"published": False}
    return {
        "published": True,
        "origin": log.origin,
        "size": cp.tree_size,
        "root_hash": base64.b64encode(cp.root_hash).decode(),
        "witnesses": cp.witnesses,
        "created_at": cp.created_at,
        "note": cp.text,
    }


@ledger_app.command("checkpoint")
def checkpoint_cmd(
    publish: bool = typer.Option(
        True, "--publish/--no-publish", help="Sign a checkpoint for new entries first."
    ),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Print the newest published checkpoint (a C2SP signed note)."""
    with reported_errors(as_json), opened_log(home) as log:
        if publish:
            log.publish()
        info = _checkpoint_json(log)
        note = log.checkpoint_note()
    if as_json:
        emit_json(info)
    else:
        sys.stdout.write(note)


@ledger_app.command("entry")
def entry_cmd(
    index: int = typer.Argument(..., min=0, help="The entry's index."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the raw entry here."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Print one entry (its canonical JSON), e.g. to check a proof with verify-proof."""
    with reported_errors(as_json), opened_log(home) as log:
        entry = log.entry(index)
    if out is not None:
        out.write_bytes(entry)
    if as_json:
        emit_json(
            {
                "index": index,
                "leaf_hash": leaf_hash(entry).hex(),
                "entry": json.loads(entry) if entry[:1] == b"{" else None,
                "entry_b64": base64.b64encode(entry).decode(),
            }
        )
    elif out is None:
        sys.stdout.write(entry.decode("utf-8", errors="replace") + "\n")


@ledger_app.command("proof")
def proof_cmd(
    index: int = typer.Argument(..., min=0, help="The entry's index."),
    bundle: bool = typer.Option(
        False, "--bundle", help="Print an offline C2SP tlog-proof instead of the proof hashes."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the tlog-proof here."),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Inclusion proof of an entry against the newest published checkpoint."""
    with reported_errors(as_json), opened_log(home) as log:
        log.publish()
        cp, entry, hashes = log.reader.proof(index)
        text = log.proof_bundle(index) if (bundle or out is not None) else ""
    if out is not None:
        out.write_text(text)
    if as_json:
        emit_json(
            {
                "index": index,
                "tree_size": cp.tree_size,
                "leaf_hash": leaf_hash(entry).hex(),
                "inclusion_proof": [base64.b64encode(h).decode() for h in hashes],
                "root_hash": base64.b64encode(cp.root_hash).decode(),
                "checkpoint": cp.text,
                **({"tlog_proof": text} if text else {}),
            }
        )
    elif bundle and out is None:
        sys.stdout.write(text)
    else:
        table = Table(title=f"Inclusion proof for entry {index}", show_header=False)
        table.add_row("tree size", str(cp.tree_size))
        table.add_row("leaf hash", leaf_hash(entry).hex())
        table.add_row("root hash", base64.b64encode(cp.root_hash).decode())
        for i, h in enumerate(hashes):
            table.add_row(f"proof[{i}]", base64.b64encode(h).decode())
        if out is not None:
            table.add_row("tlog-proof", str(out))
        console.print(table)


@ledger_app.command("status")
def status_cmd(
    verify: bool = typer.Option(
        False, "--verify", help="Recompute every entry, tile and the signed root from storage."
    ),
    home: Path | None = HOME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """The log's size, newest checkpoint, witnesses and storage."""
    with reported_errors(as_json), opened_log(home) as log:
        info: dict[str, Any] = {
            "origin": log.origin,
            "vkey": log.vkey,
            "database": log.storage.description,
            "tree_size": log.size(),
            "witnesses": [w.url for w in log.witnesses],
            "witness_quorum": log.quorum,
            "checkpoint": _checkpoint_json(log),
        }
        if verify:
            info["storage"] = {"ok": True, **log.verify_storage().to_json()}
    if as_json:
        emit_json(info)
        return
    table = Table(title="Ledger", show_header=False)
    table.add_column("what", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("origin", info["origin"])
    table.add_row("vkey", info["vkey"])
    table.add_row("database", info["database"])
    table.add_row("entries committed", str(info["tree_size"]))
    cp = info["checkpoint"]
    if cp["published"]:
        table.add_row("checkpoint", f"size {cp['size']}, {cp['witnesses']} witness cosignature(s)")
        table.add_row("root hash", cp["root_hash"])
        table.add_row("signed at", cp["created_at"])
    else:
        table.add_row("checkpoint", "none published yet")
    table.add_row("witnesses", ", ".join(info["witnesses"]) or "none configured")
    if verify:
        st = info["storage"]
        table.add_row(
            "storage", f"verified: {st['entries_checked']} entries, {st['tiles_checked']} tiles"
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    """The commands attach to the ledger group on import."""
