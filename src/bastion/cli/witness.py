"""``bastion witness``: run a C2SP tlog-witness of your own (an auditor's tool).

The witness lives in its own directory (no Bastion home needed): its Ed25519 key, its name and
its state (a SQLite file holding the last checkpoint it cosigned per log).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.table import Table

from bastion.cli.common import JSON_OPTION, console, emit_json, reported_errors
from bastion.clock import SystemClock
from bastion.errors import ConfigError, InputError, KeyUnavailable
from bastion.keys.signing import create_signing_key, load_signing_key, read_key_pem
from bastion.ledger.cosignature import CosignatureSigner
from bastion.ledger.note import KeyFormatError, is_valid_name
from bastion.store import open_database

witness_app_cli = typer.Typer(
    name="witness",
    help="A C2SP tlog-witness: cosign checkpoints only if consistent with what it saw.",
    no_args_is_help=True,
)

KEY_NAME = "witness"
NAME_FILE = "witness.name"
DIR_OPTION = typer.Option(
    Path("./.bastion-witness"),
    "--dir",
    envvar="BASTION_WITNESS_DIR",
    help="The witness's directory: key, name and state.",
)
KEY_OPTION = typer.Option(
    None, "--key", help="An Ed25519 private key (PEM) to use instead of the one in --dir."
)
NAME_OPTION = typer.Option(None, "--name", help="The witness name (e.g. witness.example/w1).")


def _load_key(directory: Path, key_path: Path | None) -> Ed25519PrivateKey:
    if key_path is None:
        return load_signing_key(directory, KEY_NAME)
    return read_key_pem(key_path, f"witness key {key_path}")


def _name(directory: Path, name: str | None) -> str:
    if name is None:
        try:
            name = (directory / NAME_FILE).read_text().strip()
        except FileNotFoundError:
            raise ConfigError(
                f"{directory} has no witness name: run `bastion witness init` or pass --name"
            ) from None
    if not is_valid_name(name):
        raise InputError(f"invalid witness name {name!r} (no spaces or '+')", field="name")
    return name


def _signer(directory: Path, key: Path | None, name: str | None) -> CosignatureSigner:
    try:
        return CosignatureSigner(_name(directory, name), _load_key(directory, key))
    except KeyFormatError as exc:
        raise InputError(str(exc), field="name") from None


@witness_app_cli.command("init")
def init_cmd(
    name: str = typer.Option(..., "--name", help="The witness name (e.g. witness.example/w1)."),
    directory: Path = DIR_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Create the witness directory, its key and name; print its cosignature vkey."""
    with reported_errors(as_json):
        if not is_valid_name(name):
            raise InputError(f"invalid witness name {name!r} (no spaces or '+')", field="name")
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        try:
            key = load_signing_key(directory, KEY_NAME)
        except KeyUnavailable:
            key = create_signing_key(directory, KEY_NAME)
        name_file = directory / NAME_FILE
        if name_file.exists() and name_file.read_text().strip() != name:
            raise ConfigError(f"{directory} already holds witness {name_file.read_text().strip()}")
        name_file.write_text(name + "\n")
        vkey = CosignatureSigner(name, key).vkey
    if as_json:
        emit_json({"ok": True, "dir": str(directory), "name": name, "vkey": vkey})
    else:
        console.print(f"Witness [bold]{name}[/] in {directory}")
        console.print(vkey, highlight=False, soft_wrap=True)


@witness_app_cli.command("vkey")
def vkey_cmd(
    directory: Path = DIR_OPTION,
    key: Path | None = KEY_OPTION,
    name: str | None = NAME_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Print the witness's cosignature verifier key, for logs and verifiers to trust."""
    with reported_errors(as_json):
        signer = _signer(directory, key, name)
    if as_json:
        emit_json({"name": signer.name, "vkey": signer.vkey})
    else:
        typer.echo(signer.vkey)


@witness_app_cli.command("serve")
def serve_cmd(
    log_vkey: list[str] = typer.Option(
        ..., "--log-vkey", help="A log's verifier key to follow (repeat for several logs)."
    ),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(7380, "--port"),
    directory: Path = DIR_OPTION,
    key: Path | None = KEY_OPTION,
    name: str | None = NAME_OPTION,
) -> None:
    """Serve POST /add-checkpoint (C2SP tlog-witness)."""
    import uvicorn

    # Imported here: the web stack is only needed by this command, and the CLI starts faster.
    from bastion.ledger.witness import Witness, witness_app

    with reported_errors(False):
        signer = _signer(directory, key, name)
        directory.mkdir(parents=True, exist_ok=True)
        db = open_database(f"sqlite:///{directory / 'witness.db'}")
        witness = Witness.for_log_vkeys(db, signer, log_vkey, SystemClock())
    console.print(f"witness {signer.name} on http://{host}:{port}/add-checkpoint", highlight=False)
    console.print(f"vkey {signer.vkey}", highlight=False, soft_wrap=True)
    try:
        uvicorn.run(witness_app(witness), host=host, port=port, log_level="warning")
    finally:
        db.close()


@witness_app_cli.command("status")
def status_cmd(directory: Path = DIR_OPTION, as_json: bool = JSON_OPTION) -> None:
    """The last checkpoint this witness cosigned, per log."""
    with reported_errors(as_json):
        path = directory / "witness.db"
        if not path.exists():
            raise ConfigError(f"{directory} has no witness state yet")
        db = open_database(f"sqlite:///{path}")
        try:
            rows = db.query(
                "SELECT origin, tree_size, updated_at FROM witness_logs ORDER BY origin"
            )
        finally:
            db.close()
    logs = [{"origin": o, "size": int(s), "updated_at": u} for o, s, u in rows]
    if as_json:
        emit_json({"logs": logs})
        return
    table = Table(title="Witnessed logs")
    for col in ("origin", "size", "updated"):
        table.add_column(col)
    for entry in logs:
        table.add_row(str(entry["origin"]), str(entry["size"]), str(entry["updated_at"]))
    console.print(table)


def mount(app: typer.Typer) -> None:
    app.add_typer(witness_app_cli)
