"""Egress's part of ``bastion demo``: sanctioned flows to the parent company, logged first.

1. the parent makes its key pair (``bastion egress keygen``); the custodian loads a daily flow
   of pseudonymized video statistics carrying the parent's public key, and runs it: the
   extract and the signed manifest are in the log before the sealed chunks are delivered;
2. a differentially private aggregate flow of engagement by region: loaded, run once (every
   region of the declared domain released, the run's epsilon charged to the flow's budget);
3. a flow that tries to carry users' email addresses is refused at load, and the refusal is
   in the log;
4. a creator is shredded, and the next run of the video flow carries their videos as
   tombstones (the flow's row tokens), so the parent can delete its copies;
5. the parent verifies every delivery, offline, in run order, from a trust bundle: signature,
   inclusion in a cosigned checkpoint, chunk hashes, decryption, schema, replay; a delivery
   seen before and a chunk with one flipped byte are refused.

The flows are declared in ``egress_flows.yaml`` beside this module. Every step asserts what
should happen; ``ok`` in the report is the verdict.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from bastion.clock import Clock, iso
from bastion.egress.errors import EgressRejected
from bastion.egress.loading import FlowRefused
from bastion.egress.wiring import Egress, open_egress
from bastion.events import (
    Actor,
    DataIngest,
    EgressExtract,
    EgressFlowChange,
    EgressManifest,
    decode_event,
)
from bastion.home import Home
from bastion.store import Database
from bastion.vault import Vault, open_vault

FLOWS_FILE = "egress_flows.yaml"
KEY_PLACEHOLDER = "RECIPIENT_PUBLIC_KEY"
VIDEO_FLOW = "video-stats-daily"
AGGREGATE_FLOW = "engagement-by-region"
REFUSED_FLOW = "parent-user-contacts"
INBOX = "egress/to-parent"  # the flows' files destination, under the home

ADMIN = Actor(id="ops@custodian.example", kind="operator", role="egress-admin")
# The content service's uploads of the day: a few creators, one of whom then asks to be erased.
CREATORS = 8
FIRST_CREATOR = 96_001
VIDEOS = 40
SHREDDED = f"u{FIRST_CREATOR + 2:05d}"
REGIONS = ("us-northeast", "us-midwest", "us-south", "us-west", "canada", "mexico", "uk")
CATEGORIES = ("comedy", "music", "dance", "food", "sports", "gaming", "education")


class DemoFailed(AssertionError):
    pass


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise DemoFailed(what)


def demo_flows(public_key: str) -> dict[str, str]:
    """Each flow of ``egress_flows.yaml`` as a one-flow file, with the parent's key in it."""
    text = resources.files("bastion.demo").joinpath(FLOWS_FILE).read_text(encoding="utf-8")
    data = yaml.safe_load(text.replace(KEY_PLACEHOLDER, public_key))
    return {
        str(flow["name"]): yaml.safe_dump({"format": 1, "flows": [flow]}, sort_keys=False)
        for flow in data["flows"]
    }


def sample_video(n: int) -> dict[str, Any]:
    return {
        "video_id": f"v9{n:06d}",
        "creator_id": f"u{FIRST_CREATOR + n % CREATORS:05d}",
        "title": f"Demo upload number {n}",
        "category": CATEGORIES[n % len(CATEGORIES)],
        "duration_s": 17 + 23 * n,
        "uploaded_at": f"2026-12-0{1 + n % 3}T{n % 24:02d}:{n % 60:02d}:07Z",
        "region": REGIONS[n % len(REGIONS)],
        "upload_ip": f"198.51.100.{n}",
    }


def sample_event(n: int) -> dict[str, Any]:
    return {
        "event_id": f"e9{n:07d}",
        "user_id": f"u{97_001 + n % 60:05d}",
        "video_id": f"v9{n % VIDEOS:06d}",
        "event_type": ("view", "like", "share")[n % 3],
        "ts": f"2026-01-{20 + n % 7}T{n % 24:02d}:11:12Z",
        "day": f"2026-01-{20 + n % 7}",
        "watch_time_s": float(5 + (7 * n) % 300),
        "campaign_id": None,
        "revenue_usd": None,
        "age_band": ("18-24", "25-34", "35-44")[n % 3],
        "region": REGIONS[n % len(REGIONS)],
        "device_id": f"dev-{n % 60}-a",
    }


def run_demo(
    *, home: Home, db: Database, ledger: Any, clock: Clock, console: Console | None = None
) -> dict[str, Any]:
    """Run the scenes against a home whose vault, log and policy exist; a JSON-able report."""
    out = console or Console()
    workdir = home.path / "egress-demo"
    if workdir.exists():
        shutil.rmtree(workdir)
    vault = open_vault(home, db, clock)
    try:
        from bastion.gateway.runtime import public_text_for

        egress = open_egress(
            home, db, vault, ledger, clock, public_reason=public_text_for(home, db, vault).publish
        )
        scene = _Scene(home, vault, ledger, egress, clock, out, workdir)
        started = time.perf_counter()
        scene.play()
        seconds = round(time.perf_counter() - started, 2)
        return {"ok": True, "steps": scene.steps, **scene.facts, "seconds": seconds}
    finally:
        vault.close()


class _Scene:
    def __init__(
        self,
        home: Home,
        vault: Vault,
        log: Any,
        egress: Egress,
        clock: Clock,
        out: Console,
        workdir: Path,
    ) -> None:
        self.home = home
        self.vault = vault
        self.log = log
        self.egress = egress
        self.clock = clock
        self.out = out
        self.parent = workdir / "parent"  # what the parent company holds
        self.inbox = home.path / INBOX  # where the files destination delivers to the parent
        self.steps: list[dict[str, Any]] = []
        self.facts: dict[str, Any] = {}
        self.flows: dict[str, str] = {}

    def step(self, title: str, fn: Callable[[], dict[str, Any]]) -> None:
        self.out.print(f"[bold]▶ {title}[/]")
        self.steps.append({"step": title, "ok": True, **fn()})

    def play(self) -> None:
        self.step("The parent makes its key pair; its public key goes into the flows", self.keygen)
        self.step("A daily flow of pseudonymized video statistics to the parent", self.video_flow)
        self.step("A differentially private aggregate of engagement by region", self.aggregate)
        self.step("A flow that tries to carry email is refused at load", self.refused)
        self.step("A creator is erased: the next run carries tombstones", self.tombstones)
        self.step("The parent verifies what it received, offline", self.verify)

    # ------------------------------------------------------------------ helpers

    def entries_since(self, start: int) -> Iterator[tuple[int, Any]]:
        for i in range(start, self.log.size()):
            yield i, decode_event(bytes(self.log.entry(i)))

    def load(self, name: str, reason: str) -> int:
        result = self.egress.loader.load(
            self.flows[name], source=f"bastion/demo/{FLOWS_FILE}#{name}", actor=ADMIN, reason=reason
        )
        _expect(result.loaded == [name], f"{name} loads")
        return result.indexes[name]

    def ingest(self, dataset: str, rows: list[dict[str, Any]], reason: str) -> int:
        result = self.vault.ingest_rows(dataset, enumerate(rows, start=1), source=f"<{dataset}>")
        self.log.append(
            DataIngest(
                actor=ADMIN,
                reason=reason,
                at=iso(self.clock.now()),
                dataset=dataset,
                source=f"demo {dataset}",
                records=result.rows,
                sealed_values=result.sealed_values,
            )
        )
        return int(result.rows)

    # ------------------------------------------------------------------ the scenes

    def keygen(self) -> dict[str, Any]:
        from bastion.egress.payload import (
            generate_recipient_key,
            private_key_to_pem,
            public_key_to_b64,
        )

        self.parent.mkdir(parents=True)
        key = generate_recipient_key()
        public = public_key_to_b64(key.public_key())
        private = self.parent / "recipient.x25519.pem"
        # Created 0600 from the start, as `bastion egress keygen` does: it never leaves the parent.
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(private_key_to_pem(key))
        (self.parent / "recipient.x25519.pub").write_text(public + "\n")
        self.flows = demo_flows(public)
        self.out.print(f"    the parent keeps its X25519 private key ({private.name}, mode 0600)")
        self.out.print(f"    and hands over its public key: [bold]{public}[/]")
        return {"public_key": public}

    def video_flow(self) -> dict[str, Any]:
        uploads = self.ingest(
            "videos", [sample_video(n) for n in range(VIDEOS)], "demo: the day's uploads"
        )
        start = self.log.size()
        index = self.load(VIDEO_FLOW, "the parent's daily video statistics (agreement 2026-07)")
        loaded = decode_event(bytes(self.log.entry(index)))
        assert isinstance(loaded, EgressFlowChange)
        self.out.print(
            f"    {uploads} new uploads in the vault; loaded {VIDEO_FLOW} v1 (egress.flow at "
            f"index {index}), allowed by {', '.join(loaded.policies)}"
        )
        result = self.egress.runner.run(VIDEO_FLOW)
        _expect(result.status == "delivered" and result.rows >= VIDEOS, "the first run delivers")
        table = Table(title="The log, in order: the flow, the extract, the manifest, then delivery")
        for col in ("index", "entry", "what it says"):
            table.add_column(col)
        kinds = []
        for i, event in self.entries_since(start):
            if isinstance(event, EgressFlowChange):
                what = f"{event.step} {event.flow} v{event.version} for {event.recipient}"
            elif isinstance(event, EgressExtract):
                what = (
                    f"open {event.dataset} ({', '.join(event.fields)}), feed "
                    f"({event.after_seq}, {event.through_seq}], {event.records} records"
                )
            elif isinstance(event, EgressManifest):
                what = (
                    f"run {event.run}: {event.rows} rows, {event.tombstones} tombstones, "
                    f"{event.chunks} chunk(s), manifest {event.manifest_id[:12]}…, signed"
                )
            else:
                continue
            kinds.append(event.type)
            table.add_row(str(i), event.type, what)
        self.out.print(table)
        _expect(
            kinds == ["egress.flow", "egress.extract", "egress.manifest"],
            "the flow, the extract and the manifest are logged in that order",
        )
        delivered = self.inbox / VIDEO_FLOW / str(result.manifest_id)
        names = sorted(p.name for p in delivered.iterdir())
        chunks = [n for n in names if n.endswith(".hpke")]
        self.out.print(
            f"    delivered to {INBOX}/{VIDEO_FLOW}/{str(result.manifest_id)[:12]}…/: "
            f"manifest.dsse.json, entry.json, proof.tlog-proof, {len(chunks)} HPKE chunk(s), "
            "COMPLETE last; only the parent's key opens the chunks"
        )
        self.facts["video_runs"] = [result.to_json()]
        return {"manifest_id": result.manifest_id, "rows": result.rows, "files": names}

    def aggregate(self) -> dict[str, Any]:
        from bastion.vault.changes import last_seq
        from bastion.vault.snapshot import count_writes

        if count_writes(self.vault, "events", 0, last_seq(self.vault.db)) == 0:
            self.ingest(
                "events", [sample_event(n) for n in range(600)], "demo: the day's engagement"
            )
        index = self.load(AGGREGATE_FLOW, "engagement by region for the parent, DP")
        stored = self.egress.store.stored(AGGREGATE_FLOW)
        assert stored is not None and stored.flow.aggregate is not None
        agg = stored.flow.aggregate
        self.out.print(
            f"    loaded {AGGREGATE_FLOW} (egress.flow at index {index}): count and "
            f"sum(watch_time_s) clamped to {list(agg.sums['watch_time_s'])} by "
            f"{', '.join(agg.group_by)}; at most {agg.max_records_per_subject} events per "
            f"person; ε={agg.epsilon_per_run:g} a run out of the flow's own budget of "
            f"{agg.epsilon_budget:g}"
        )
        result = self.egress.runner.run(AGGREGATE_FLOW)
        groups = len(agg_domain(self.vault, agg.group_by[0]))
        _expect(result.status == "delivered", "the aggregate run delivers")
        _expect(result.rows == groups and result.tombstones == 0, "one row per declared group")
        spent = self.egress.store.spent(AGGREGATE_FLOW)
        _expect(abs(spent - agg.epsilon_per_run) < 1e-9, "the run is charged to the flow's budget")
        self.out.print(
            f"    run {result.run}: {result.rows} groups released (every region of the declared "
            f"domain, empty ones too), manifest {str(result.manifest_id)[:12]}… at index "
            f"{result.ledger_index}; ε spent {spent:g} of {agg.epsilon_budget:g}, charged in "
            "the manifest's own commit"
        )
        self.facts["aggregate_run"] = result.to_json()
        return {"loaded_index": index, "ran": True, "groups": result.rows, "epsilon_spent": spent}

    def refused(self) -> dict[str, Any]:
        start = self.log.size()
        try:
            self.load(REFUSED_FLOW, "the parent asks for user contacts")
        except FlowRefused as refusal:
            review = refusal.refused[REFUSED_FLOW]
        else:
            raise DemoFailed("a flow carrying email was loaded")
        table = Table(title=f"{REFUSED_FLOW}: refused, nothing loaded")
        for col in ("code", "field", "why"):
            table.add_column(col)
        for r in review.refusals:
            table.add_row(r.code, r.field or "-", r.message)
        self.out.print(table)
        recorded = [
            (i, e)
            for i, e in self.entries_since(start)
            if isinstance(e, EgressFlowChange) and e.flow == REFUSED_FLOW
        ]
        _expect(len(recorded) == 1 and recorded[0][1].step == "refused", "the refusal is logged")
        index, event = recorded[0]
        self.out.print(
            f"    recorded: egress.flow step {event.step} at index {index}, reasons "
            f"{', '.join(event.reasons)}"
        )
        _expect("field.protected" in review.codes, "email is refused as a protected field")
        _expect(self.egress.store.stored(REFUSED_FLOW) is None, "nothing of it is loaded")
        self.facts["refused"] = {"codes": review.codes, "ledger_index": index}
        return {"codes": review.codes, "ledger_index": index}

    def tombstones(self) -> dict[str, Any]:
        theirs = sum(1 for n in range(VIDEOS) if sample_video(n)["creator_id"] == SHREDDED)
        receipt = self.vault.shred(SHREDDED, ADMIN, "demo: a creator's erasure request")
        logged = self.log.append(receipt)
        self.out.print(
            f"    shredded one creator ({receipt.records_affected} records); deletion "
            f"receipt at index {logged.index}"
        )
        result = self.egress.runner.run(VIDEO_FLOW)
        _expect(result.status == "delivered", "the next run delivers")
        _expect(
            result.rows == 0 and result.tombstones == theirs,
            "the next run carries one tombstone per video of the creator, and nothing else",
        )
        self.out.print(
            f"    the next run of {VIDEO_FLOW} (run {result.run}): {result.rows} rows, "
            f"{result.tombstones} tombstones, manifest {str(result.manifest_id)[:12]}… at "
            f"index {result.ledger_index}: the parent must delete those rows"
        )
        self.facts["video_runs"].append(result.to_json())
        return {"manifest_id": result.manifest_id, "tombstones": result.tombstones}

    def verify(self) -> dict[str, Any]:
        import json

        from bastion.egress.aggregate import delivered_columns
        from bastion.egress.manifest import SIGNING_KEY_NAME
        from bastion.egress.payload import private_key_from_pem
        from bastion.egress.replay import SqliteReplayState
        from bastion.egress.trust import build_trust_bundle, parse_trust_bundle
        from bastion.egress.verify import pending_deliveries, verify_delivery
        from bastion.keys.signing import load_or_create_signing_key
        from bastion.ledger.anchors import log_anchors

        # At the custodian (`bastion egress trust-bundle --flow video-stats-daily`): the log's
        # key, its witnesses and quorum, the manifest key, and the fields of each flow.
        stored = self.egress.store.stored(VIDEO_FLOW)
        aggregated = self.egress.store.stored(AGGREGATE_FLOW)
        assert stored is not None and aggregated is not None
        signing = load_or_create_signing_key(self.home.keyring_dir, SIGNING_KEY_NAME)
        bundle = build_trust_bundle(
            log_anchors(self.log),
            [("custodian", signing.public_key())],
            {
                VIDEO_FLOW: stored.flow.delivered,
                AGGREGATE_FLOW: delivered_columns(aggregated.flow),
            },
        )
        (self.parent / "trust.json").write_text(json.dumps(bundle.to_json(), indent=2))
        anchors = bundle.to_json()
        self.out.print(
            f"    trust bundle: log {anchors['log']['origin']}, {len(anchors['witnesses'])} "
            f"witness(es), quorum {anchors['quorum']}, 1 custodian key, the columns of 2 flows"
        )
        # At the parent, offline: only the bundle, its key and what arrived.
        trust = parse_trust_bundle((self.parent / "trust.json").read_bytes())
        key = private_key_from_pem((self.parent / "recipient.x25519.pem").read_bytes())
        received = self.parent / "received"
        verified = []
        with SqliteReplayState(self.parent / "state.sqlite") as state:
            for path in pending_deliveries(self.inbox, state):
                verified.append(verify_delivery(path, trust, key, state=state, out=received))
            self.out.print(_checks_table(verified))
            inclusion = next(c.detail for c in verified[-1].checks if c.step == "inclusion")
            self.out.print(f"    inclusion of run {verified[-1].run}: {inclusion}")
            runs = [(v.flow, v.run) for v in verified]
            _expect(
                runs == [(AGGREGATE_FLOW, 1), (VIDEO_FLOW, 1), (VIDEO_FLOW, 2)],
                "every delivery verifies, flow by flow in run order",
            )
            released, first, second = verified
            self.out.print(
                _release_table(_received(received / AGGREGATE_FLOW / released.manifest_id))
            )
            upserts = _received(received / VIDEO_FLOW / first.manifest_id).column("_row")
            tombs = _received(received / VIDEO_FLOW / second.manifest_id)
            ops = set(tombs.column("_op").to_pylist())
            gone = set(tombs.column("_row").to_pylist())
            _expect(ops == {"delete"}, "the second delivery holds tombstones only")
            _expect(gone <= set(upserts.to_pylist()), "each tombstone names a row run 1 carried")
            self.out.print(
                f"    {VIDEO_FLOW} run 1: {first.rows} rows; run 2: {second.tombstones} "
                f"tombstones, each the _row token of a row of run 1 (e.g. {sorted(gone)[0]}): "
                "the parent deletes them"
            )
            replay = _refusal(
                lambda: verify_delivery(
                    self.inbox / VIDEO_FLOW / first.manifest_id, trust, key, state=state
                )
            )
        _expect(replay == "egress.replay", "a delivery verified before is refused")
        self.out.print(f"    run 1 delivered again → refused: [bold]{replay}[/]")
        tampered = self.parent / "tampered" / VIDEO_FLOW / first.manifest_id
        shutil.copytree(self.inbox / VIDEO_FLOW / first.manifest_id, tampered)
        chunk = tampered / "chunk-00000.hpke"
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0x01
        chunk.write_bytes(bytes(data))
        code = _refusal(lambda: verify_delivery(tampered, trust, key))
        _expect(code == "egress.chunk.tampered", "a chunk with one flipped byte is refused")
        self.out.print(f"    a copy with one byte of a chunk flipped → refused: [bold]{code}[/]")
        self.facts["verified"] = [v.to_json() for v in verified]
        self.facts["refusals"] = {"replay": replay, "tampered": code}
        return {"runs": [list(r) for r in runs], "replay": replay, "tampered": code}


def _refusal(verify: Callable[[], object]) -> str:
    try:
        verify()
    except EgressRejected as exc:
        return exc.code
    raise DemoFailed("a delivery that must be refused was accepted")


def _received(folder: Path) -> Any:
    """The verified Parquet chunks of one delivery, as one table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables(pq.read_table(p) for p in sorted(folder.glob("*.parquet")))


def _checks_table(verified: list[Any]) -> Table:
    """One column per delivery (in the order verified), one row per check it passed."""
    steps = [c.step for c in verified[0].checks] if verified else []
    table = Table(title="The parent's checks (bastion egress verify), in run order")
    table.add_column("")
    for v in verified:
        table.add_column(f"{v.flow}\nrun {v.run}", justify="center")
    table.add_row("rows", *(str(v.rows) for v in verified))
    table.add_row("tombstones", *(str(v.tombstones) for v in verified))
    for step in steps:
        passed = [step in {c.step for c in v.checks} for v in verified]
        table.add_row(step, *("[green]✓[/]" if ok else "[red]✗[/]" for ok in passed))
    return table


def _release_table(table: Any) -> Table:
    """What the parent reads from the aggregate: noisy values and their 95% half-widths."""
    out = Table(title="engagement by region, as the parent receives it (ε=1, DP)")
    for col in ("region", "events", "± 95%", "watch time (h)", "± 95%"):
        out.add_column(col, justify="left" if col == "region" else "right")
    rows = table.to_pylist()
    for r in rows:
        out.add_row(
            str(r["region"]),
            f"{max(int(r['count']), 0):,}",  # clipped for display only
            f"{r['count_ci95']:,.0f}",
            f"{max(r['sum_watch_time_s'], 0.0) / 3600:,.1f}",
            f"{r['sum_watch_time_s_ci95'] / 3600:,.1f}",
        )
    return out


def agg_domain(vault: Vault, field: str) -> list[Any]:
    """The declared domain of an events field: the groups an aggregate by it releases."""
    domain = vault.catalog.dataset("events").field(field).domain
    return domain.members() if domain is not None else []
