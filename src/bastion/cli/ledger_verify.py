"""``bastion ledger verify`` and ``verify-proof``: the auditor's commands.

They need no Bastion home and load no server code: only the log's URL (or a proof file), the
log's verifier key and, optionally, witness keys.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import typer
from rich.table import Table

from bastion.cli.common import (
    JSON_OPTION,
    console,
    emit_json,
    err_console,
    progress_bar,
    read_input_file,
    reported_errors,
)
from bastion.cli.groups import ledger_app
from bastion.errors import InputError
from bastion.ledger.cosignature import CosignatureVerifier
from bastion.ledger.note import NoteVerifier
from bastion.ledger.tlogproof import verify_proof
from bastion.ledger.verifier import LogVerifier, VerificationResult

VKEY_OPTION = typer.Option(
    ..., "--vkey", help="The log's verifier key (vkey), or a file holding it."
)
WITNESS_OPTION = typer.Option(
    [], "--witness", help="A witness cosignature vkey (or file); repeat for several."
)
QUORUM_OPTION = typer.Option(0, "--quorum", min=0, help="Distinct witnesses that must cosign.")


def default_state_dir() -> Path:
    """Where the auditor remembers the last checkpoint per log (no Bastion home needed)."""
    explicit = os.environ.get("BASTION_VERIFIER_STATE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "bastion" / "verifier"


def _key_arg(value: str, what: str) -> str:
    """A key given inline, or the path of a file that holds it."""
    path = Path(value)
    if "+" not in value and path.is_file():
        text = path.read_text().strip()
        if not text:
            raise InputError(f"{what} file is empty", file=str(path))
        return text
    return value.strip()


def _result_table(r: VerificationResult) -> Table:
    table = Table(title="Log verified", show_header=False)
    table.add_row("origin", r.origin)
    table.add_row("tree size", str(r.size))
    table.add_row("root hash", base64.b64encode(r.root_hash).decode())
    prev = "first verification" if r.previous_size is None else f"consistent with {r.previous_size}"
    table.add_row("history", prev)
    table.add_row("mode", "incremental" if r.incremental else "full")
    table.add_row("entries checked", str(r.entries_checked))
    table.add_row("tiles / bundles fetched", f"{r.tiles_fetched} / {r.bundles_fetched}")
    table.add_row("bytes fetched", f"{r.bytes_fetched:,}")
    table.add_row("elapsed", f"{r.elapsed_s:.2f} s")
    if r.cosigners:
        table.add_row("cosigned by", ", ".join(c.name for c in r.cosigners))
    return table


@ledger_app.command("verify")
def verify_cmd(
    url: str = typer.Argument(..., help="Log URL: the server root or its /log/ prefix."),
    vkey: str = VKEY_OPTION,
    state: Path | None = typer.Option(
        None, "--state", help="Auditor state directory (default: ~/.local/state/bastion/verifier)."
    ),
    witness: list[str] = WITNESS_OPTION,
    quorum: int = QUORUM_OPTION,
    incremental: bool = typer.Option(
        False, "--incremental", help="Fetch only tiles new since the last verified checkpoint."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Verify a whole log: signature, every entry and tile, root, and consistency with the past."""
    with reported_errors(as_json):
        verifier = LogVerifier(
            url,
            _key_arg(vkey, "verifier key"),
            state or default_state_dir(),
            [_key_arg(w, "witness key") for w in witness],
            quorum,
        )
        with verifier:
            if as_json:
                result = verifier.verify(incremental=incremental)
            else:
                with progress_bar("fetching tiles", out=err_console, transient=True) as bar:
                    task = bar.add_task("tiles", total=None)

                    def progress(done: int, total: int) -> None:
                        bar.update(task, completed=done, total=total)

                    result = verifier.verify(incremental=incremental, progress=progress)
    if as_json:
        emit_json(result.to_json())
    else:
        console.print(_result_table(result))


@ledger_app.command("verify-proof")
def verify_proof_cmd(
    bundle: Path = typer.Argument(..., help="A c2sp.org/tlog-proof file."),
    entry: Path = typer.Option(..., "--entry", help="The logged entry, byte for byte."),
    vkey: str = VKEY_OPTION,
    witness: list[str] = WITNESS_OPTION,
    quorum: int = QUORUM_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Verify an offline tlog-proof: the entry is in the log the signed checkpoint commits to."""
    with reported_errors(as_json):
        log_verifier = NoteVerifier.from_vkey(_key_arg(vkey, "verifier key"))
        witnesses = [CosignatureVerifier.from_vkey(_key_arg(w, "witness key")) for w in witness]
        bundle_data = read_input_file(bundle, "proof file")
        entry_data = read_input_file(entry, "entry file")
        verified = verify_proof(bundle_data, entry_data, log_verifier, witnesses, quorum)
    if as_json:
        emit_json({"ok": True, **verified.to_json()})
        return
    table = Table(title="Proof verified", show_header=False)
    table.add_row("log", verified.checkpoint.origin)
    table.add_row("entry index", str(verified.index))
    table.add_row("leaf hash", verified.leaf_hash.hex())
    table.add_row("checkpoint size", str(verified.checkpoint.size))
    table.add_row("root hash", base64.b64encode(verified.checkpoint.root_hash).decode())
    if verified.cosigners:
        table.add_row("cosigned by", ", ".join(c.name for c in verified.cosigners))
    console.print(table)
