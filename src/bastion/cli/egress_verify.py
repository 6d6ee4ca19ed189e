"""``bastion egress verify``, ``keygen``, ``receive`` and ``trust-bundle``: the recipient's side.

``verify``, ``keygen``, ``receive nats`` and ``receive-http`` run at the recipient with no
Bastion home: they read or write only deliveries, the trust bundle and the recipient's key.
``receive nats`` rebuilds deliveries from a JetStream stream into a directory; ``receive-http``
serves the endpoint the HTTP destination delivers to. Both write the layout ``verify`` reads,
and neither checks anything itself: what arrives is checked by ``verify``. ``trust-bundle``
runs at the custodian and writes the bundle the recipient is given (from the home's log and
manifest signing key). The protocol is ``docs/EGRESS-PROTOCOL.md``.
"""

from __future__ import annotations

import json
import os
import sys
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
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_STREAM = "BASTION_EGRESS"
DEFAULT_PREFIX = "bastion.egress"
DEFAULT_RECEIVER_PORT = 8470
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


def _parse_flow(spec: str) -> tuple[str, list[str] | None]:
    """``NAME=field1,field2``, or ``NAME`` alone: its fields are then the loaded flow's."""
    name, sep, fields = spec.partition("=")
    names = [f.strip() for f in fields.split(",") if f.strip()]
    if not name.strip() or (sep and not names):
        raise InputError(f"{spec!r} must be NAME or NAME=field1,field2", field="--flow")
    return name.strip(), names if sep else None


def _loaded_fields(db: Any, name: str) -> list[str]:
    """The columns the loaded flow ``name`` delivers, as its recipient receives them: a records
    flow's delivered fields, an aggregate flow's groups and statistics."""
    from bastion.egress.store import EgressStore

    stored = EgressStore(db).stored(name)
    if stored is None:
        raise InputError(
            f"no flow named {name!r} is loaded: load it, or name its fields (NAME=f1,f2)",
            field="--flow",
        )
    flow = stored.flow
    if flow.kind != "aggregate":
        return flow.delivered
    from bastion.egress.aggregate import delivered_columns  # OpenDP: only for an aggregate

    return delivered_columns(flow)


@egress_app.command("trust-bundle")
def trust_bundle_cmd(
    out: Path = typer.Option(..., "--out", help="Where to write the trust bundle (JSON)."),
    flow: list[str] = typer.Option(
        ...,
        "--flow",
        help="A flow the recipient receives: NAME (its fields are read from the loaded flow) "
        "or NAME=field1,field2 (repeat for several flows).",
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

        specs = [_parse_flow(spec) for spec in flow]
        h = Home.load(home)
        db = open_store(h)
        try:
            # Typed fields win; a bare name reads the declaration in force, so an operator
            # does not retype (and cannot mistype) what the flow delivers.
            flows = {n: f if f is not None else _loaded_fields(db, n) for n, f in specs}
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
            emit_json(
                {
                    "ok": True,
                    "out": str(out),
                    "flows": sorted(flows),
                    "fields": {n: list(flows[n]) for n in sorted(flows)},
                }
            )
        else:
            console.print(f"Wrote {out} ({len(flows)} flow(s), quorum {anchors.quorum})")


# --- receive (recipient side) ------------------------------------------------------------------

receive_app = typer.Typer(
    name="receive",
    help="Fetch deliveries from a destination into a directory, for `bastion egress verify`.",
    no_args_is_help=True,
)
egress_app.add_typer(receive_app)


@receive_app.command("nats")
def receive_nats_cmd(
    flow: str = typer.Option(..., "--flow", help="The flow whose deliveries to fetch."),
    out: Path = typer.Option(
        ..., "--out", help="The directory deliveries are written to (<out>/<flow>/<manifest_id>/)."
    ),
    url: str = typer.Option(DEFAULT_NATS_URL, "--url", help="The NATS server."),
    stream: str = typer.Option(DEFAULT_STREAM, "--stream", help="The JetStream stream."),
    subject_prefix: str = typer.Option(
        DEFAULT_PREFIX, "--subject-prefix", help="The flow's subject prefix (its destination's)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Rebuild the flow's complete deliveries from a JetStream stream under --out; those
    already there are skipped, and nothing is removed from the stream (run it again any time).
    Then check them with `bastion egress verify OUT`."""
    with reported_errors(as_json):
        try:
            from bastion.egress.destinations.nats import receive_nats
        except ImportError:  # nats-py is the "egress" extra
            raise InputError(
                "receiving from NATS needs nats-py: pip install 'bastion[egress]'"
            ) from None

        written = receive_nats(url, stream, flow, out, subject_prefix=subject_prefix)
        if as_json:
            emit_json({"ok": True, "flow": flow, "out": str(out), "received": written})
        elif written:
            for manifest_id in written:
                console.print(f"Received {flow}/{manifest_id} -> {out / flow / manifest_id}")
        else:
            console.print(f"Nothing new for {flow} in {stream} at {url}")


@egress_app.command("receive-http")
def receive_http_cmd(
    root: Path = typer.Option(
        ..., "--root", help="The directory deliveries are written to (<root>/<flow>/<id>/)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="The address to listen on."),
    port: int = typer.Option(DEFAULT_RECEIVER_PORT, "--port", min=1, max=65535),
    token_env: str | None = typer.Option(
        None,
        "--token-env",
        help="An environment variable holding the bearer token every request must carry "
        "(the destination's token_env). Without it the endpoint takes any request.",
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Serve the endpoint the HTTP destination delivers to, until interrupted: each delivery
    is staged and appears under --root only once complete. Check them with `bastion egress
    verify ROOT`."""
    with reported_errors(as_json):
        from bastion.egress.destinations.http_receiver import run_receiver

        token = _token_from(token_env)
        if root.exists() and not root.is_dir():
            raise InputError("is not a directory", file=str(root), field="--root")
        _check_can_listen(host, port)
        listening = {
            "ok": True,
            "listening": f"http://{host}:{port}",
            "root": str(root),
            "token": token is not None,
        }
        if as_json:
            # One line, flushed: what a supervisor reads before the server takes over.
            sys.stdout.write(json.dumps(listening, sort_keys=True) + "\n")
            sys.stdout.flush()
        else:
            auth = f"bearer token from ${token_env}" if token_env else "[yellow]no token[/]"
            console.print(f"Receiving deliveries on http://{host}:{port} into {root} ({auth})")
        try:
            run_receiver(root, host=host, port=port, token=token)
        except SystemExit as exc:  # uvicorn exits when it cannot start (a lost bind race)
            if exc.code not in (0, None):
                raise InputError(f"cannot listen on {host}:{port}", field="--port") from None


def _check_can_listen(host: str, port: int) -> None:
    """Fail with a clear error, before saying we listen, when the address is taken or bad
    (uvicorn would log and exit on its own)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"cannot listen on {host}:{port} ({reason})", field="--port") from None


def _token_from(env: str | None) -> str | None:
    if env is None:
        return None
    token = os.environ.get(env, "")
    if not token.strip():
        raise InputError(f"the environment variable {env} is not set or empty", field="--token-env")
    return token
