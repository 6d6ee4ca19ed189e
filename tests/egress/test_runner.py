"""Flows end to end on both backends: load (recorded), run (manifest first), deliver to a
directory, verify at the recipient; tombstones after deletes and shreds; refusals."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bastion.clock import FixedClock
from bastion.demo.platform import ingest, sample_event, sample_user
from bastion.egress import payload
from bastion.egress.errors import EgressRejected
from bastion.egress.loading import FlowRefused
from bastion.egress.runner import FlowNotRunnable
from bastion.egress.verify import SqliteReplayState, verify_delivery
from bastion.egress.wiring import Egress
from bastion.errors import IntegrityError
from bastion.events import (
    EgressExtract,
    EgressFlowChange,
    EgressManifest,
    canonical,
    decode_event,
)
from bastion.gateway.runtime import Runtime
from bastion.store import Database

from .flows_support import (
    ADMIN,
    USERS,
    deliveries,
    egress_on,
    entries,
    home_with_events,
    trust_for,
)


@pytest.fixture
def rt(db: Database, tmp_path: Path, clock: FixedClock) -> Iterator[Runtime]:
    with home_with_events(
        db, tmp_path, clock, [sample_event(n, 1 + n % USERS) for n in range(1, 37)]
    ) as runtime:
        yield runtime


@pytest.fixture
def recipient() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


@pytest.fixture
def egress(rt: Runtime) -> Egress:
    return egress_on(rt)


PARENT_FIELDS_YAML = """\
      video_id: pseudonymize
      event_type: keep
      region: keep
      day: keep
      watch_time_s: {truncate: 10}"""
VIEWS_AND_LIKES = "      filter:\n        - {field: event_type, op: in, value: [view, like]}\n"


def parent_flow(
    key: X25519PrivateKey,
    *,
    version: int = 1,
    dataset: str = "events",
    fields: str = PARENT_FIELDS_YAML,
    filter: str = VIEWS_AND_LIKES,
) -> str:
    public = payload.public_key_to_b64(key.public_key())
    return f"""
flows:
  - name: engagement-parent
    version: {version}
    kind: records
    recipient:
      id: parent-analytics
      employer: parent-co
      employer_country: CN
      location_country: CN
      public_key: {public}
    source:
      dataset: {dataset}
{filter}    fields:
{fields}
    schedule: {{every: 1d}}
    destination: {{type: files, path: outbox}}
"""


def load(egress: Egress, text: str) -> Any:
    return egress.loader.load(text, source="flows.yaml", actor=ADMIN, reason="daily statistics")


PARENT_FIELDS = {"engagement-parent": ["video_id", "event_type", "region", "day", "watch_time_s"]}


def test_a_loaded_flow_runs_manifest_first_and_the_recipient_verifies_it(
    rt: Runtime, egress: Egress, recipient: X25519PrivateKey, tmp_path: Path
) -> None:
    loaded = load(egress, parent_flow(recipient))
    assert loaded.loaded == ["engagement-parent"]
    result = egress.runner.run("engagement-parent")
    assert result.status == "delivered" and result.rows == 36 and result.tombstones == 0

    log = entries(rt)
    kinds = [type(e) for e in log]
    # The load, then the extract (the vault's capability), then the manifest: in that order.
    flow_at = kinds.index(EgressFlowChange)
    assert kinds.index(EgressExtract) > flow_at
    manifest = next(e for e in log if isinstance(e, EgressManifest))
    assert manifest.manifest_id == result.manifest_id and manifest.rows == 36

    (delivered,) = deliveries(rt, "engagement-parent")
    state = SqliteReplayState(tmp_path / "state.sqlite")
    out = tmp_path / "received"
    verified = verify_delivery(
        delivered, trust_for(rt, PARENT_FIELDS), recipient, state=state, out=out
    )
    assert verified.rows == 36 and verified.log_index == manifest_index(rt, result.manifest_id)
    table = pq.read_table(next(out.rglob("*.parquet")))
    assert table.column_names == ["_row", "_op", *sorted(PARENT_FIELDS["engagement-parent"])]
    tokens = set(table.column("video_id").to_pylist())
    # Flow tokens, never the raw video ids nor the vault's own tokens.
    assert all(t.startswith("ft_") for t in tokens)
    assert not tokens & {sample_event(n, 1)["video_id"] for n in range(7)}
    assert set(table.column("watch_time_s").to_pylist()) <= {10.0, 20.0, 30.0, 40.0, 50.0}
    # A second run with nothing new delivers nothing and records no manifest.
    assert egress.runner.run("engagement-parent").status == "nothing-new"
    assert sum(isinstance(e, EgressManifest) for e in entries(rt)) == 1


def test_a_delete_and_a_shred_reach_the_recipient_as_tombstones(
    rt: Runtime, egress: Egress, recipient: X25519PrivateKey, tmp_path: Path
) -> None:
    load(egress, parent_flow(recipient))
    first = egress.runner.run("engagement-parent")
    token_of_first = _rows(rt, tmp_path, recipient, first.manifest_id, "a")
    rt.vault.shred(sample_user(3)["user_id"], ADMIN, "erasure request")
    second = egress.runner.run("engagement-parent")
    assert second.rows == 0 and second.tombstones == 3  # user 3 has events 2, 14, 26
    received = _rows(rt, tmp_path, recipient, second.manifest_id, "b")
    assert set(received.column("_op").to_pylist()) == {"delete"}
    # Each tombstone names a row the first delivery carried.
    assert set(received.column("_row").to_pylist()) <= set(
        token_of_first.column("_row").to_pylist()
    )


def _rows(
    rt: Runtime, tmp_path: Path, key: X25519PrivateKey, manifest_id: str | None, tag: str
) -> Any:
    root = rt.home.path / "outbox" / "engagement-parent" / str(manifest_id)
    out = tmp_path / f"out-{tag}"
    state = SqliteReplayState(tmp_path / "state.sqlite")
    verify_delivery(root, trust_for(rt, PARENT_FIELDS), key, state=state, out=out)
    return pq.read_table(next(out.rglob("*.parquet")))


def test_a_flow_with_email_is_refused_at_load_and_the_refusal_is_recorded(
    rt: Runtime, egress: Egress, recipient: X25519PrivateKey
) -> None:
    text = parent_flow(
        recipient, dataset="users", fields="      email: keep\n      region: keep", filter=""
    )
    with pytest.raises(FlowRefused) as refused:
        load(egress, text)
    codes = refused.value.refused["engagement-parent"].codes
    assert "field.protected" in codes and "recipient.denied" in codes
    recorded = [e for e in entries(rt) if isinstance(e, EgressFlowChange)]
    assert [e.step for e in recorded] == ["refused"]
    assert "field.protected" in recorded[0].reasons
    assert egress.store.stored("engagement-parent") is None


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ("      user_id: keep\n      region: keep", "identifier.not-pseudonymized"),
        ("      user_id: pseudonymize\n      region: keep", "recipient.denied"),
        ("      campaign_id: keep\n      region: keep", "recipient.denied"),
    ],
)
def test_a_flow_the_checks_refuse_loads_nothing(
    rt: Runtime, egress: Egress, recipient: X25519PrivateKey, fields: str, code: str
) -> None:
    text = parent_flow(recipient, fields=fields + "\n      event_type: drop")
    with pytest.raises(FlowRefused) as refused:
        load(egress, text)
    assert code in refused.value.refused["engagement-parent"].codes
    assert egress.store.states() == []


def test_a_declaration_edited_in_the_database_does_not_run(
    rt: Runtime, egress: Egress, recipient: X25519PrivateKey
) -> None:
    load(egress, parent_flow(recipient))
    stored = egress.store.stored("engagement-parent")
    assert stored is not None
    tampered = stored.flow.declaration()
    tampered["fields"]["watch_time_s"] = {"keep": True}
    with rt.db.transaction() as cur:
        cur.execute(
            "UPDATE egress_flows SET declaration = ?, sha256 = ? WHERE name = ?",
            (
                json.dumps(tampered),
                hashlib.sha256(canonical(tampered)).hexdigest(),
                "engagement-parent",
            ),
        )
    with pytest.raises(IntegrityError, match="without `bastion egress load`"):
        egress.runner.run("engagement-parent")
    assert deliveries(rt, "engagement-parent") == []


def test_a_changed_declaration_needs_a_new_version(
    egress: Egress, recipient: X25519PrivateKey
) -> None:
    load(egress, parent_flow(recipient))
    changed = parent_flow(recipient).replace("{truncate: 10}", "{truncate: 60}")
    with pytest.raises(Exception, match="new version"):
        load(egress, changed)
    assert load(
        egress, parent_flow(recipient, version=2).replace("{truncate: 10}", "{truncate: 60}")
    ).loaded == ["engagement-parent"]


def test_a_destination_that_is_down_delivers_once_on_the_retry(
    rt: Runtime, egress: Egress, recipient: X25519PrivateKey, tmp_path: Path
) -> None:
    load(egress, parent_flow(recipient))
    outbox = rt.home.path / "outbox"
    outbox.write_text("not a directory")  # the destination cannot write
    with pytest.raises(Exception) as failed:
        egress.runner.run("engagement-parent")
    assert "Destination" in type(failed.value).__name__ or "unavailable" in str(failed.value)
    (pending,) = egress.store.undelivered("engagement-parent")
    outbox.unlink()
    retried = egress.runner.run("engagement-parent")
    assert retried.delivered_earlier == [pending.manifest_id]
    assert retried.status == "nothing-new"
    (only,) = deliveries(rt, "engagement-parent")
    assert only.name == pending.manifest_id
    assert sum(isinstance(e, EgressManifest) for e in entries(rt)) == 1


def test_a_failed_manifest_append_delivers_nothing_and_keeps_the_cursor(
    rt: Runtime, egress: Egress, recipient: X25519PrivateKey
) -> None:
    load(egress, parent_flow(recipient))

    def fail(step: str) -> None:
        if step == "spooled":
            raise RuntimeError("the ledger is down")

    egress.context.fault = fail
    with pytest.raises(RuntimeError):
        egress.runner.run("engagement-parent")
    state = egress.store.state("engagement-parent")
    assert state is not None and state.cursor == 0 and state.run == 0
    assert deliveries(rt, "engagement-parent") == []
    assert not any(isinstance(e, EgressManifest) for e in entries(rt))
    egress.context.fault = None
    assert egress.runner.run("engagement-parent").rows == 36


def test_a_retired_flow_does_not_run(egress: Egress, recipient: X25519PrivateKey) -> None:
    load(egress, parent_flow(recipient))
    egress.loader.retire("engagement-parent", actor=ADMIN, reason="contract ended")
    with pytest.raises(FlowNotRunnable):
        egress.runner.run("engagement-parent")


def test_the_recipient_refuses_a_delivery_verified_twice(
    rt: Runtime, egress: Egress, recipient: X25519PrivateKey, tmp_path: Path
) -> None:
    load(egress, parent_flow(recipient))
    egress.runner.run("engagement-parent")
    (delivered,) = deliveries(rt, "engagement-parent")
    state = SqliteReplayState(tmp_path / "state.sqlite")
    trust = trust_for(rt, PARENT_FIELDS)
    verify_delivery(delivered, trust, recipient, state=state, out=tmp_path / "a")
    with pytest.raises(EgressRejected) as replay:
        verify_delivery(delivered, trust, recipient, state=state, out=tmp_path / "b")
    assert replay.value.code == "egress.replay"


def manifest_index(rt: Runtime, manifest_id: str | None) -> int:
    for i in range(rt.ledger.size()):
        event = decode_event(bytes(rt.ledger.entry(i)))
        if isinstance(event, EgressManifest) and event.manifest_id == manifest_id:
            return i
    raise AssertionError("no manifest entry")


def test_serve_runs_a_flow_when_it_is_due_and_not_before(
    rt: Runtime, egress: Egress, recipient: X25519PrivateKey, clock: FixedClock
) -> None:
    from datetime import timedelta

    from bastion.gateway.background import egress_round

    load(egress, parent_flow(recipient))
    round_ = egress_round(rt)
    (first,) = round_()  # type: ignore[misc]
    assert first["status"] == "delivered" and first["rows"] == 36
    assert round_() == []  # due again in a day, by the runtime's clock
    ingest(rt, "events", [sample_event(n, 1) for n in range(100, 103)])
    clock.advance(timedelta(days=1, seconds=1))
    (second,) = round_()  # type: ignore[misc]
    assert second["rows"] == 3 and second["cursor"][0] == first["cursor"][1]
