"""Running a flow: read what changed, transform it, record the manifest, then deliver.

One run of a ``records`` flow, as named steps (``FlowRunner.run``):

1. **load**: the flow in force, its declaration checked against its ``egress.flow`` entry in
   the log (a declaration edited without the administrator's action does not run);
2. **finish**: a run recorded earlier but not delivered (a destination was down) is
   delivered first, from its spool, under its own manifest id: exactly once;
3. **review**: the checks of ``checks`` again, under the policy and catalog in force now (a
   refusal is recorded as ``run-refused``);
4. **range**: the change-feed range ``(cursor, end]`` (``(0, end]`` for a full run);
5. **extract**: an ``egress.extract`` entry, the capability the vault opens exactly the
   flow's fields of that range with (``vault.snapshot``), page by page;
6. **transform**: filter, pseudonymize with the flow's own tokens, generalize; tombstones for
   what a delete or a shred removed since the last run;
7. **spool**: the chunks (Parquet), the signed manifest (in-toto in DSSE) and its entry,
   written and fsynced under ``<home>/egress/spool/<manifest id>/``;
8. **record**: the ``egress.manifest`` entry, whose side write records the run, moves the
   cursor and counts the subjects under 28 CFR 202.205 (the count and the manifest are
   durable together; a count over the limit leaves both out). If this append fails nothing
   was delivered, the cursor has not moved, and the next run starts from the same place;
9. **deliver**: a checkpoint covering the entry is published, each chunk is sealed to the
   recipient (HPKE), and the destination receives manifest, entry, proof and chunks; only
   then is the run marked delivered and its spool removed.

Runs of one flow are serialized (a lock file per flow and the cursor compare in step 8).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from bastion.catalog import Catalog, DatasetSpec
from bastion.catalog import SensitiveCategory as Category
from bastion.clock import Clock, iso
from bastion.durable import fsync_dir
from bastion.egress import aggregate, payload
from bastion.egress.checks import Review, review
from bastion.egress.delivery import ENTRY_FILE, MANIFEST_FILE, Delivery, seal_delivery
from bastion.egress.destinations.base import Destination
from bastion.egress.loading import flow_event
from bastion.egress.manifest import (
    build_statement,
    chunk_subject_name,
    envelope_bytes,
    manifest_event,
    new_manifest_id,
    sign_manifest,
)
from bastion.egress.model import Flow
from bastion.egress.store import EgressStore, RunRow, StoredFlow
from bastion.egress.tokens import FlowTokens
from bastion.egress.transforms import build_table, output_schema, tombstone_table
from bastion.errors import BastionError, InputError, IntegrityError
from bastion.events import (
    SYSTEM,
    EgressExtract,
    EgressFlowChange,
    decode_event,
    encode_event,
)
from bastion.ledger.api import Receipt, SideWrite
from bastion.policy.engine import PolicyEngine
from bastion.policy.thresholds import BulkCounter
from bastion.releases.dsse import parse_envelope
from bastion.store import Cursor
from bastion.vault import Vault
from bastion.vault.changes import last_seq
from bastion.vault.snapshot import (
    SnapshotBatch,
    SnapshotGrant,
    count_writes,
    open_snapshot,
    removed_since,
)

_REASON = "egress run"


class EgressLog(Protocol):
    """What a run needs from the log."""

    def append_entries(
        self, entries: list[bytes], *, side_write: SideWrite | None = None
    ) -> list[Receipt]: ...

    def entry(self, index: int) -> bytes: ...

    def publish(self) -> object: ...

    def proof_bundle(self, index: int) -> str: ...


class FlowNotRunnable(BastionError):
    """The flow cannot run now (retired, unverified, refused by the checks): exit 2."""

    exit_code = 2


@dataclass(frozen=True)
class RunResult:
    flow: str
    status: str  # delivered | nothing-new | recorded (not yet delivered)
    manifest_id: str | None = None
    run: int | None = None
    rows: int = 0
    tombstones: int = 0
    chunks: int = 0
    cursor: tuple[int, int] | None = None
    ledger_index: int | None = None
    delivered_earlier: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["cursor"] = list(self.cursor) if self.cursor else None
        return out


@dataclass
class RunContext:
    """Everything a run touches; built by the CLI or ``serve`` (``egress.wiring``)."""

    vault: Vault
    log: EgressLog
    store: EgressStore
    catalog: Catalog
    engine: Callable[[], PolicyEngine]
    counter: BulkCounter
    signing_key: Any  # Ed25519PrivateKey
    destination: Callable[[Flow], Destination]
    spool_root: Path
    clock: Clock
    chunk_rows: int = payload.DEFAULT_CHUNK_ROWS
    # Tests inject failures between named steps; production leaves it None.
    fault: Callable[[str], None] | None = None


class FlowRunner:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    # ------------------------------------------------------------------ the steps

    def run(self, name: str, *, full: bool | None = None) -> RunResult:
        with self._exclusive(name):
            stored = self.verify_loaded(name)
            finished = self._finish_undelivered(stored)
            flow = stored.flow
            rv = self._review(stored)
            after, through, mode = self._range(flow, full)
            ds = self.ctx.catalog.dataset(flow.source.dataset)
            if flow.kind == "aggregate":
                # The whole dataset, no tombstones (an aggregate names no one), and a release
                # every run: whether a run releases must not depend on anyone's records.
                after, mode = 0, "full"
                aggregate.ensure_budget(self.ctx.store, flow)
                built = self._aggregate(stored, ds, through)
            else:
                removed = removed_since(self.ctx.vault, ds.name, after, through) if after else []
                possible = count_writes(self.ctx.vault, ds.name, after, through)
                if possible == 0 and not removed:
                    self._schedule(flow)
                    return RunResult(
                        flow.name,
                        "nothing-new",
                        cursor=(after, through),
                        delivered_earlier=finished,
                    )
                built = self._extract_and_transform(
                    stored, ds, after, through, mode, possible, removed
                )
            run = self._spool_and_record(stored, rv, built, after, through, mode)
            result = self._deliver(stored, run)
            self._schedule(flow)
            return RunResult(
                flow.name,
                result,
                run.manifest_id,
                run.run,
                run.rows,
                run.tombstones,
                run.chunks,
                (after, through),
                run.ledger_index,
                finished,
            )

    def verify_loaded(self, name: str) -> StoredFlow:
        """Step 1: the flow in force, exactly as its ``egress.flow`` entry recorded it."""
        stored = self.ctx.store.stored(name)
        state = self.ctx.store.state(name)
        if stored is None or state is None:
            raise InputError(f"no flow named {name!r} is loaded (bastion egress load)")
        if state.status != "active":
            raise FlowNotRunnable(f"flow {name!r} is retired")
        if stored.ledger_index < 0:
            raise FlowNotRunnable(f"flow {name!r} has no known ledger entry: load it again")
        if stored.flow.sha256() != stored.sha256:
            raise IntegrityError(f"flow {name!r}: the stored declaration does not match its digest")
        try:
            event = decode_event(self.ctx.log.entry(stored.ledger_index))
        except (ValueError, LookupError):
            raise IntegrityError(f"flow {name!r}: its ledger entry cannot be read") from None
        if not (
            isinstance(event, EgressFlowChange)
            and event.step == "loaded"
            and event.flow == name
            and event.version == stored.flow.version
            and event.flow_sha256 == stored.sha256
        ):
            raise IntegrityError(
                f"flow {name!r} was changed without `bastion egress load`: its declaration is "
                "not the one its ledger entry records"
            )
        return stored

    def _finish_undelivered(self, stored: StoredFlow) -> list[str]:
        """Step 2: deliver what was recorded but not delivered, oldest first."""
        done = []
        for run in self.ctx.store.undelivered(stored.flow.name):
            self._deliver(stored, run)
            done.append(run.manifest_id)
        return done

    def _review(self, stored: StoredFlow) -> Review:
        """Step 3: the load-time checks again, now."""
        flow = stored.flow
        rv = review(
            flow,
            self.ctx.catalog,
            self.ctx.engine(),
            # The bulk estimate is the load's question (a dataset-wide COUNT DISTINCT); a
            # run counts what it really delivers, in the manifest's commit.
            bulk=None,
            known_flows={s.name for s in self.ctx.store.states()},
        )
        if not rv.ok:
            event = flow_event(flow, "run-refused", SYSTEM, _REASON, iso(self.ctx.clock.now()), rv)
            self.ctx.log.append_entries([encode_event(event)])
            raise FlowNotRunnable(
                f"flow {flow.name!r} no longer passes its checks: " + ", ".join(rv.codes)
            )
        return rv

    def _range(self, flow: Flow, full: bool | None) -> tuple[int, int, str]:
        """Step 4: which stretch of the change feed this run covers."""
        state = self.ctx.store.state(flow.name)
        assert state is not None
        through = last_seq(self.ctx.vault.db)
        is_full = flow.source.mode == "full" if full is None else full
        return (0 if is_full else state.cursor), through, ("full" if is_full else "incremental")

    def _extract_and_transform(
        self,
        stored: StoredFlow,
        ds: DatasetSpec,
        after: int,
        through: int,
        mode: str,
        possible: int,
        removed: list[str],
    ) -> Built:
        """Steps 5 and 6: record the extract, open its range, build the chunks' rows."""
        flow = stored.flow
        tokens = self._tokens(flow)
        schema = _chunk_schema(flow, ds)
        built = Built(schema)
        if possible:
            for page in self._open_extract(stored, ds, after, through, mode, possible):
                table, kept = build_table(flow, ds, page.record_keys, page.columns, tokens, schema)
                built.add(table, [s for s, k in zip(page.subjects, kept, strict=True) if k])
                if after and not all(kept):
                    # Written again and no longer matching: what the recipient holds is gone.
                    dropped = [key for key, k in zip(page.record_keys, kept, strict=True) if not k]
                    built.add_tombstones(tombstone_table(tokens.rows(dropped), schema))
        if removed:
            built.add_tombstones(tombstone_table(tokens.rows(removed), schema))
        return built

    def _aggregate(self, stored: StoredFlow, ds: DatasetSpec, through: int) -> Built:
        """Steps 5 and 6 of an aggregate flow: a full extract, released by ``aggregate``."""
        flow = stored.flow
        aggregate.plan_aggregate(flow, ds)  # a declaration it cannot release: before any extract
        possible = count_writes(self.ctx.vault, ds.name, 0, through)
        pages = self._open_extract(stored, ds, 0, through, "full", possible) if possible else []
        released = aggregate.build_aggregate(flow, ds, pages, self._tokens(flow))
        built = Built(released.table.schema)
        built.add(released.table, [])  # no subject is delivered: nothing to count
        return built

    def _open_extract(
        self, stored: StoredFlow, ds: DatasetSpec, after: int, through: int, mode: str, n: int
    ) -> Iterator[SnapshotBatch]:
        """Step 5: the ``egress.extract`` entry, and the pages the vault opens for it."""
        flow = stored.flow
        state = self.ctx.store.state(flow.name)
        assert state is not None
        fields = sorted(flow.fields)
        event = EgressExtract(
            extract_id=secrets.token_hex(16),
            actor=SYSTEM,
            reason=_REASON,
            at=iso(self.ctx.clock.now()),
            flow=flow.name,
            flow_version=flow.version,
            run=state.run + 1,
            dataset=ds.name,
            fields=fields,
            mode=mode,
            after_seq=after,
            through_seq=through,
            records=n,
        )
        entry = encode_event(event)
        (receipt,) = self.ctx.log.append_entries([entry])
        grant = SnapshotGrant.bind(receipt, entry, dataset=ds.name, fields=fields)
        return open_snapshot(self.ctx.vault, grant)

    def _tokens(self, flow: Flow) -> FlowTokens:
        return FlowTokens(self.ctx.vault.identity.egress_token_key(flow.token_scope))

    def _spool_and_record(
        self,
        stored: StoredFlow,
        rv: Review,
        built: Built,
        after: int,
        through: int,
        mode: str,
    ) -> RunRow:
        """Steps 7 and 8: spool the signed manifest and chunks, then record the run."""
        flow = stored.flow
        state = self.ctx.store.state(flow.name)
        assert state is not None
        chunks = list(built.chunks(self.ctx.chunk_rows))
        manifest_id = new_manifest_id()
        now = iso(self.ctx.clock.now())
        statement = build_statement(
            manifest_id=manifest_id,
            flow=flow.name,
            flow_version=flow.version,
            flow_sha256=stored.sha256,
            recipient=flow.recipient.id,
            kind=flow.kind,
            policy_sha256=rv.policy_sha256 or "",
            run=state.run + 1,
            previous_manifest=state.last_manifest,
            cursor_after=after,
            cursor_through=through,
            mode=mode,  # type: ignore[arg-type]
            rows=built.rows,
            tombstones=built.tombstones,
            schema=payload.columns_of(built.schema),
            chunk_sha256=[hashlib.sha256(c).hexdigest() for c in chunks],
            created_at=now,
        )
        envelope = sign_manifest(statement, self.ctx.signing_key)
        # The entry's figures come from the signed predicate, so the two cannot disagree.
        event = manifest_event(envelope, actor=SYSTEM, reason=_REASON, at=now)
        entry = encode_event(event)
        spool = self._spool(manifest_id, envelope_bytes(envelope), entry, chunks)
        self._fault("spooled")
        run = RunRow(
            manifest_id=manifest_id,
            flow=flow.name,
            version=flow.version,
            run=state.run + 1,
            cursor_after=state.cursor,
            cursor_through=through,
            rows=built.rows,
            tombstones=built.tombstones,
            chunks=len(chunks),
            spool=str(spool),
            ledger_index=-1,
            created_at=now,
            delivered_at=None,
        )

        def side_write(cur: Cursor) -> None:
            self.ctx.store.record_run_in(cur, run)
            self._count(cur, flow, built.subjects, rv.categories)
            if flow.aggregate is not None:
                aggregate.charge_budget(self.ctx.store, cur, flow)  # spent with the record

        try:
            (receipt,) = self.ctx.log.append_entries([entry], side_write=side_write)
        except BaseException:
            shutil.rmtree(spool, ignore_errors=True)
            raise
        self.ctx.store.set_run_index(manifest_id, receipt.index)
        self._fault("recorded")
        return RunRow(**{**run.__dict__, "ledger_index": receipt.index})

    def _count(
        self, cur: Cursor, flow: Flow, subjects: set[str], categories: frozenset[Category]
    ) -> None:
        """The subjects this run delivers, counted for the recipient and its employer (28 CFR
        202.205) in the manifest's commit; over a limit, it raises and nothing is recorded.
        A declared restricted transaction is not held to the threshold (its controls are)."""
        if flow.restricted_transaction is not None or not categories or not subjects:
            return
        usage = {c: sorted(subjects) for c in categories}
        self.ctx.counter.reserve_in(
            cur, f"recipient:{flow.recipient.id}", flow.recipient.employer, usage
        )

    def _deliver(self, stored: StoredFlow, run: RunRow) -> str:
        """Step 9: publish, seal to the recipient, hand to the destination, mark delivered."""
        flow = stored.flow
        destination = self.ctx.destination(flow)
        if destination.delivered(flow.name, run.manifest_id):
            self._delivered(run)
            return "delivered"
        spool = Path(run.spool)
        if run.ledger_index < 0:
            raise FlowNotRunnable(
                f"run {run.manifest_id} was recorded but its ledger index was not stored; "
                "find it with `bastion ledger` and deliver it again"
            )
        self.ctx.log.publish()
        proof = self.ctx.log.proof_bundle(run.ledger_index)
        envelope = parse_envelope((spool / MANIFEST_FILE).read_bytes())
        delivery: Delivery = seal_delivery(
            envelope=envelope,
            entry=(spool / ENTRY_FILE).read_bytes(),
            proof=proof,
            plaintexts=((spool / chunk_subject_name(i)).read_bytes() for i in range(run.chunks)),
            recipient=payload.public_key_from_b64(flow.recipient.public_key),
        )
        self._fault("sealed")
        destination.deliver(delivery)
        self._fault("delivered")
        self._delivered(run)
        return "delivered"

    # ------------------------------------------------------------------ helpers

    def _delivered(self, run: RunRow) -> None:
        self.ctx.store.mark_delivered(run.manifest_id, iso(self.ctx.clock.now()))
        # The recipient has it: the custodian keeps no extra copy (a legacy copy in waiting).
        shutil.rmtree(run.spool, ignore_errors=True)

    def _spool(self, manifest_id: str, envelope: bytes, entry: bytes, chunks: list[bytes]) -> Path:
        root = self.ctx.spool_root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = root / f".{manifest_id}.tmp"
        tmp.mkdir(mode=0o700)
        files = [(MANIFEST_FILE, envelope), (ENTRY_FILE, entry)]
        files += [(chunk_subject_name(i), c) for i, c in enumerate(chunks)]
        for name, data in files:
            fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        final = root / manifest_id
        os.rename(tmp, final)
        fsync_dir(root)
        return final

    def _schedule(self, flow: Flow) -> None:
        due: datetime = self.ctx.clock.now() + flow.schedule.interval
        self.ctx.store.set_next_due(flow.name, iso(due))

    def _fault(self, step: str) -> None:
        if self.ctx.fault is not None:
            self.ctx.fault(step)

    @contextlib.contextmanager
    def _exclusive(self, name: str) -> Iterator[None]:
        root = self.ctx.spool_root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(root / f".{name}.lock", "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FlowNotRunnable(f"flow {name!r} is already running") from None
            yield


def _chunk_schema(flow: Flow, ds: DatasetSpec) -> pa.Schema:
    """The chunks' schema as the recipient checks it (every column nullable)."""
    return payload.arrow_schema(payload.columns_of(output_schema(flow, ds)))


class Built:
    """The rows of one run, gathered page by page, and the subjects they belong to."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self._tables: list[pa.Table] = []
        self._tombs: list[pa.Table] = []
        self.subjects: set[str] = set()
        self.rows = 0
        self.tombstones = 0

    def add(self, table: pa.Table, subjects: list[str]) -> None:
        if table.num_rows:
            self._tables.append(table)
            self.rows += table.num_rows
            self.subjects.update(subjects)

    def add_tombstones(self, table: pa.Table) -> None:
        if table.num_rows:
            self._tombs.append(table)
            self.tombstones += table.num_rows

    def chunks(self, rows_per_chunk: int) -> Iterator[bytes]:
        tables = self._tables + self._tombs
        whole = pa.concat_tables(tables) if tables else self.schema.empty_table()
        yield from payload.encode_chunks(whole, self.schema, rows_per_chunk)
