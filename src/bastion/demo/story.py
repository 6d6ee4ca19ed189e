"""``bastion demo``: the whole story on a fresh embedded home (SQLite + local keys).

Composition only: each part's own demo scenario lives in that part; this module runs them
in order against one home, one database, one log and one clock, and prints what happened.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from bastion.clock import Clock, SystemClock, iso
from bastion.errors import BastionError, IntegrityError, KeyUnavailable
from bastion.events import AccessDecision, Actor, DataIngest, FieldRelease, encode_event
from bastion.home import Home
from bastion.ledger.log import Log, open_log
from bastion.store import Database
from bastion.vault import ReadPlan, RecordedPlan, Vault, ingest_file, open_vault

DEMO_OPERATOR = Actor(id="ops@custodian.example", kind="operator", role="vault-operator")


@dataclass
class DemoContext:
    home: Home
    db: Database
    log: Log
    vault: Vault
    clock: Clock
    console: Console
    data_dir: Path
    report: dict[str, Any] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def section(console: Console, title: str) -> None:
    console.rule(f"[bold cyan]{title}")


# ---- vault: generate, ingest, classify, shred, rotate ------------------------------------


def synthesize(ctx: DemoContext, users: int, videos: int, events: int) -> dict[str, Path]:
    from bastion.synth import SynthSpec, generate

    spec = SynthSpec(seed=7, users=users, videos=videos, events=events)
    result = generate(spec, ctx.data_dir, "parquet", catalog=ctx.vault.catalog)
    ctx.console.print(
        f"Generated {result.rows} in {result.seconds:.1f}s under {ctx.data_dir}", highlight=False
    )
    return dict(result.files)


def ingest_all(ctx: DemoContext, files: dict[str, Path]) -> None:
    with Progress(
        TextColumn("[bold]ingest {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} rows"),
        TimeElapsedColumn(),
        console=ctx.console,
    ) as bar:
        for dataset, path in files.items():
            from bastion.vault.files import count_rows

            task = bar.add_task(dataset, total=count_rows(path))

            def advance(n: int, task: TaskID = task) -> None:
                bar.update(task, advance=n)

            result = ingest_file(ctx.vault, dataset, path, progress=advance)
            receipt = ctx.log.append(
                DataIngest(
                    actor=DEMO_OPERATOR,
                    reason="demo: load the synthetic platform",
                    at=iso(ctx.clock.now()),
                    dataset=dataset,
                    source=path.name,
                    records=result.rows,
                    sealed_values=result.sealed_values,
                )
            )
            ctx.report.setdefault("ingest", {})[dataset] = {
                **result.to_json(),
                "ledger_index": receipt.index,
            }


def show_classification(ctx: DemoContext) -> None:
    stats = ctx.vault.stats()
    table = Table(title="Values held, by classification")
    table.add_column("classification")
    table.add_column("values", justify="right")
    for name, count in sorted(stats.values_by_classification.items()):
        table.add_row(name, f"{count:,}")
    ctx.console.print(table)
    ctx.report["values_by_classification"] = stats.values_by_classification
    ctx.report["records"] = stats.records


def record_and_open(ctx: DemoContext, dataset: str, pairs: list[tuple[str, str]]) -> Any:
    """The one path, in miniature: record the access in the ledger, then open only that."""
    plan = ReadPlan.of(dataset, pairs)
    event = AccessDecision(
        actor=DEMO_OPERATOR,
        reason="demo: prove the shredded subject's values cannot be opened",
        at=iso(ctx.clock.now()),
        request_id=f"demo-{time.time_ns()}",
        action="read",
        dataset=dataset,
        decision="allow",
        purpose="erasure verification",
        released=[
            FieldRelease(dataset=dataset, record=i.record, field=i.field, transform="clear")
            for i in plan.items
        ],
    )
    receipt = ctx.log.append(event)
    return ctx.vault.open(RecordedPlan.bind(plan, receipt, encode_event(event)))


def shred_one(ctx: DemoContext) -> None:
    """Erase one user, then show their values are gone, in the live DB and in a backup."""
    spec = ctx.vault.catalog.dataset("users")
    protected = [f.name for f in spec.fields if f.classification == "protected"]
    import pyarrow.parquet as pq

    subject = str(pq.read_table(ctx.data_dir / "users.parquet", columns=[spec.subject_key])[0][0])
    refs = ctx.vault.subject_records(subject, "users")
    record = refs[0].record
    before = record_and_open(ctx, "users", [(record, f) for f in protected])
    ctx.console.print(
        f"Before shredding, the custodian can open {len(before)} protected values of one user"
        " (through a recorded plan)."
    )
    backup = ctx.home.path / "backup-before-shred.db"
    if ctx.db.dialect == "sqlite":
        src = sqlite3.connect(ctx.home.sqlite_path)
        dst = sqlite3.connect(backup)
        src.backup(dst)
        src.close()
        dst.close()
    started = time.perf_counter()
    receipt = ctx.vault.shred(subject, DEMO_OPERATOR, "demo: data subject erasure request")
    shred_ms = (time.perf_counter() - started) * 1000
    idx = ctx.log.append(receipt)
    ctx.console.print(
        f"Shredded one user in {shred_ms:.1f} ms: {receipt.records_affected} records,"
        f" {receipt.pseudonyms_removed} pseudonyms; deletion receipt at ledger index {idx.index}."
    )
    outcome = "opened (BUG)"
    try:
        record_and_open(ctx, "users", [(record, f) for f in protected])
    except (KeyUnavailable, IntegrityError) as exc:
        outcome = f"refused: {type(exc).__name__}"
    ctx.console.print(f"After shredding, opening the same values: [bold]{outcome}[/]")
    backup_outcome = "skipped"
    if backup.exists():
        backup_outcome = open_in_backup(ctx, backup, record, protected)
        backup.unlink()
        ctx.console.print(
            f"Opening them from a copy of the database taken before: {backup_outcome}"
        )
    ctx.report["shred"] = {
        "receipt": receipt.model_dump(mode="json"),
        "ledger_index": idx.index,
        "latency_ms": round(shred_ms, 2),
        "open_after_shred": outcome,
        "open_from_backup": backup_outcome,
    }
    if outcome.startswith("opened") or backup_outcome.startswith("opened"):
        raise IntegrityError("a shredded subject's values could still be opened")


def open_in_backup(ctx: DemoContext, backup: Path, record: str, fields: list[str]) -> str:
    from bastion.keys.factory import open_key_provider
    from bastion.store import open_database

    db = open_database(f"sqlite:///{backup}")
    provider = open_key_provider(ctx.home)
    vault = Vault(db, provider, ctx.vault.catalog, ctx.clock)
    try:
        record_copy = DemoContext(
            ctx.home, db, ctx.log, vault, ctx.clock, ctx.console, ctx.data_dir
        )
        record_and_open(record_copy, "users", [(record, f) for f in fields])
        return "opened (BUG)"
    except (KeyUnavailable, IntegrityError) as exc:
        return f"refused: {type(exc).__name__}"
    finally:
        vault.close()
        db.close()


def rotate_keys(ctx: DemoContext) -> None:
    event = ctx.vault.rotate(DEMO_OPERATOR, "demo: scheduled key-encryption-key rotation")
    receipt = ctx.log.append(event)
    ctx.console.print(
        f"Rotated the key-encryption key v{event.old_version} → v{event.new_version}:"
        f" rewrapped {event.rewrapped} data keys, no field ciphertext touched;"
        f" ledger index {receipt.index}."
    )
    ctx.report["rotation"] = {**event.model_dump(mode="json"), "ledger_index": receipt.index}


# ---- auditor: verify the log over HTTP ----------------------------------------------------


@contextmanager
def serving(app: Any, port: int) -> Iterator[str]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise BastionError("the demo server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def audit_over_http(ctx: DemoContext, base_url: str | None = None) -> None:
    from fastapi import FastAPI

    from bastion.ledger.http import log_router
    from bastion.ledger.verifier import LogVerifier

    ctx.log.publish()
    state = ctx.home.path / "auditor-state"

    witness_vkeys: list[str] = ctx.report.get("witnesses", [])

    def verify(url: str) -> None:
        result = LogVerifier(
            url, ctx.log.vkey, state, witness_vkeys=witness_vkeys, quorum=len(witness_vkeys)
        ).verify()
        cosigners = ", ".join(c.name for c in result.cosigners) or "none"
        ctx.console.print(
            f"An auditor verified the log over HTTP at {url}: size {result.size},"
            f" root {result.root_hash.hex()[:16]}…, {result.entries_checked} entries checked"
            f" in {result.elapsed_s:.2f}s; cosigned by {cosigners}."
        )
        ctx.report["audit"] = {"size": result.size, "root": result.root_hash.hex()}

    if base_url is not None:
        verify(f"{base_url}/log/")
        return
    app = FastAPI()
    app.include_router(log_router(ctx.log.reader))
    with serving(app, free_port()) as url:
        verify(f"{url}/log/")


# ---- the whole story ---------------------------------------------------------------------

Step = Callable[[DemoContext], None]


WITNESS_NAMES = ("witness.regulator.example", "witness.ngo.example")


@contextmanager
def witnesses(home: Home, clock: Clock) -> Iterator[tuple[Home, list[str]]]:
    """Two independent witnesses (a regulator's, an NGO's) on local ports for the demo.

    Returns the home re-pointed at them (quorum 2, not written to its config: they stop
    with the demo) and their cosignature vkeys, which the auditor then requires.
    """
    from dataclasses import replace

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from bastion.keys.signing import load_signing_key
    from bastion.ledger.cosignature import CosignatureSigner
    from bastion.ledger.log import LOG_KEY_NAME
    from bastion.ledger.note import NoteSigner
    from bastion.ledger.witness import Witness, witness_app
    from bastion.store import open_database

    log_vkey = NoteSigner(
        home.settings.log_origin, load_signing_key(home.keyring_dir, LOG_KEY_NAME)
    ).vkey
    specs: list[str] = []
    vkeys: list[str] = []
    with ExitStack() as stack:
        for name in WITNESS_NAMES:
            folder = home.path / "witnesses" / name
            folder.mkdir(parents=True, exist_ok=True)
            wdb = open_database(f"sqlite:///{folder / 'witness.db'}")
            stack.callback(wdb.close)
            signer = CosignatureSigner(name, Ed25519PrivateKey.generate())
            witness = Witness.for_log_vkeys(wdb, signer, [log_vkey], clock)
            url = stack.enter_context(serving(witness_app(witness), free_port()))
            specs.append(f"{url} {signer.vkey}")
            vkeys.append(signer.vkey)
        ledger = home.settings.ledger.model_copy(
            update={"witnesses": tuple(specs), "witness_quorum": len(specs)}
        )
        settings = home.settings.model_copy(update={"ledger": ledger})
        yield replace(home, settings=settings), vkeys


def run(home: Home, db: Database, console: Console) -> dict[str, Any]:
    clock = SystemClock()
    with witnesses(home, clock) as (witnessed, witness_vkeys):
        return run_story(witnessed, db, console, clock, witness_vkeys)


def run_story(
    home: Home, db: Database, console: Console, clock: Clock, witness_vkeys: list[str]
) -> dict[str, Any]:
    log = open_log(home, db, clock)
    vault = open_vault(home, db, clock)
    data_dir = home.path / "data"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    ctx = DemoContext(home, db, log, vault, clock, console, data_dir)
    ctx.report["witnesses"] = witness_vkeys
    started = time.perf_counter()
    try:
        section(console, "Vault: a synthetic social video platform under custodian keys")
        files = synthesize(ctx, users=2_000, videos=500, events=20_000)
        ingest_all(ctx, files)
        show_classification(ctx)
        section(console, "Crypto-shredding: one user asks to be erased")
        shred_one(ctx)
        section(console, "Key rotation")
        rotate_keys(ctx)
        for title, step in extra_steps():
            section(console, title)
            step(ctx)
        section(console, "Auditor: verify the whole log over HTTP, trusting only its key")
        audit_over_http(ctx)
    finally:
        vault.close()
        log.close()
    ctx.report["seconds"] = round(time.perf_counter() - started, 1)
    ctx.report["log_vkey"] = log.vkey
    return ctx.report


def releases_story(ctx: DemoContext) -> None:
    from bastion.demo.releases import render_report
    from bastion.demo.releases import run_demo as run_releases

    report = run_releases(
        home=ctx.home,
        db=ctx.db,
        ledger=ctx.log,
        clock=ctx.clock,
        workdir=ctx.home.path / "releases-demo",
    )
    render_report(report, ctx.console)
    ctx.report["releases"] = report
    if not report.get("ok"):
        raise BastionError("the release-assurance scenario did not behave as expected")


def gateway_story(ctx: DemoContext) -> None:
    from bastion.demo.gateway import run_demo as run_gateway

    ctx.report["gateway"] = run_gateway(
        home=ctx.home, db=ctx.db, ledger=ctx.log, clock=ctx.clock, console=ctx.console
    )


def live_vault_story(ctx: DemoContext) -> None:
    from bastion.demo.live_vault import run_demo as run_live_vault

    ctx.report["live_vault"] = run_live_vault(
        home=ctx.home, db=ctx.db, ledger=ctx.log, clock=ctx.clock, console=ctx.console
    )


def cleanroom_story(ctx: DemoContext) -> None:
    from bastion.demo.cleanroom import demo as run_cleanroom

    # The clean room reads the snapshot Bastion builds from the vault, not the synthetic files.
    ctx.report["cleanroom"] = run_cleanroom(
        ctx.db, ctx.log, ctx.clock, ctx.vault, ctx.home.path / "cleanroom", console=ctx.console
    )


def egress_story(ctx: DemoContext) -> None:
    from bastion.demo.egress import run_demo as run_egress

    ctx.report["egress"] = run_egress(
        home=ctx.home, db=ctx.db, ledger=ctx.log, clock=ctx.clock, console=ctx.console
    )


def extra_steps() -> list[tuple[str, Step]]:
    """Scenarios of the parts above the vault and ledger, in the order the story needs them."""
    return [
        ("Gateway: every access decided, minimized, approved and recorded first", gateway_story),
        (
            "Live vault: the platform writes; a person downloads and erases their data",
            live_vault_story,
        ),
        ("Clean room: the ad partner gets differentially private aggregates only", cleanroom_story),
        ("Egress: declared flows to the parent company, logged before they leave", egress_story),
        ("Release assurance: only reviewed code ships, and a phone can check it", releases_story),
    ]
