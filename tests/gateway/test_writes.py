"""Writes through the gateway: decided by Cedar, recorded in the commit that stores them."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from bastion.cli.home_cmd import init_home
from bastion.clock import FixedClock
from bastion.demo.platform import PRINCIPALS, bootstrap, sample_event, sample_user
from bastion.events import Actor, decode_event
from bastion.gateway.app import create_app
from bastion.gateway.client import GatewayClient, GatewayError
from bastion.gateway.runtime import Runtime
from bastion.gateway.server import ThreadedServer
from bastion.home import Home
from bastion.store import Database

from .conftest import USERS, Connect

OPERATOR = Actor(id="ops", kind="operator")


def _entries(rt: Runtime) -> list[dict[str, object]]:
    reader = rt.ledger.reader
    return [json.loads(e) for _i, e in reader.entries(0, reader.tree_size())]


def _new_user(n: int, **over: object) -> dict[str, object]:
    return {**sample_user(n), **over}


def _subject(runtime: Runtime, connect: Connect, subject_id: str) -> GatewayClient:
    token = runtime.issuer.issue(
        subject_id,
        {"role": "subject", "amr": ["pwd", "otp"], "location_country": "US"},
        ttl=timedelta(minutes=5),
    )
    return connect(token=token)


def test_a_service_signs_up_changes_and_deletes(runtime: Runtime, connect: Connect) -> None:
    svc = connect("profile-service")
    out = svc.write_records("users", [_new_user(USERS + 1)])
    [rec] = out.records
    assert (rec.record_id, rec.version, rec.created) == (f"u{USERS + 1:05d}", 1, True)
    assert rec.tokens["user_id"] and rec.tokens["user_id"] != rec.record_id  # a token, not the id
    assert out.receipt is not None
    changed = svc.change_record("users", rec.record_id, {"email": "new@example.com"}, if_match=1)
    assert changed.records[0].version == 2
    # (tests/vault/test_vault_writes.py reads the new value back through a recorded plan.)
    entries = _entries(runtime)
    writes = [e for e in entries if e["type"] == "data.write"]
    assert [w["op"] for w in writes] == ["insert", "update"]
    assert writes[1]["fields"] == ["email"]
    text = json.dumps(entries)
    assert "new@example.com" not in text and sample_user(USERS + 1)["email"] not in text
    events = connect("events-service")
    events.write_records("events", [sample_event(9001, USERS + 1)])
    gone = events.delete_record("events", str(sample_event(9001, 1)["event_id"]))
    assert gone.records[0].version == 2


def test_idempotency_key_replays_the_first_answer(runtime: Runtime, connect: Connect) -> None:
    svc = connect("profile-service")
    first = svc.write_records("users", [_new_user(USERS + 2)], idempotency_key="k-1")
    size = runtime.ledger.reader.tree_size()
    again = svc.write_records("users", [_new_user(USERS + 2)], idempotency_key="k-1")
    assert again.replayed and again.records == first.records
    assert again.leaf_hash == first.leaf_hash
    assert runtime.ledger.reader.tree_size() == size  # nothing written or logged twice
    with pytest.raises(GatewayError) as err:
        svc.write_records(
            "users", [_new_user(USERS + 2, email="x@example.com")], idempotency_key="k-1"
        )
    assert err.value.status == 422 and err.value.kind == "idempotency-key-reused"


def test_versions_conflicts_and_missing_records(runtime: Runtime, connect: Connect) -> None:
    svc = connect("profile-service")
    svc.write_records("users", [_new_user(USERS + 3)])
    rid = f"u{USERS + 3:05d}"
    svc.change_record("users", rid, {"language": "fr"}, if_match=1)
    with pytest.raises(GatewayError) as err:
        svc.change_record("users", rid, {"language": "de"}, if_match=1)
    assert err.value.status == 412
    with pytest.raises(GatewayError) as err:
        svc.write_records("users", [_new_user(USERS + 3)])
    assert err.value.status == 409
    with pytest.raises(GatewayError) as err:
        svc.change_record("users", "u99999", {"language": "de"})
    assert err.value.status == 404
    raw = svc._http.request(
        "PATCH",
        f"/datasets/users/records/{rid}",
        json={"fields": {"language": "it"}},
        headers={**svc._headers(None), "If-Match": '"2"'},
    )
    assert raw.status_code == 200 and raw.headers["etag"] == '"3"'
    upserted = svc.write_records("users", [_new_user(USERS + 3)], upsert=True)
    assert upserted.records[0].version == 4 and not upserted.records[0].created
    refusals = [e for e in _entries(runtime) if e["type"] == "request.rejected"]
    assert {e["status"] for e in refusals} >= {404, 409, 412}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"records": [{"user_id": "u1"}]}, 422, None),  # missing required fields
        ({"records": [sample_user(1) | {"email": 12}]}, 422, "email"),
        ({"records": [sample_user(1) | {"email": "x" * 400}]}, 422, "email"),
        ({"records": [sample_user(1) | {"shoe": 9}]}, 422, "shoe"),
    ],
)
def test_bad_records_name_the_field_and_write_nothing(
    runtime: Runtime, connect: Connect, body: dict[str, object], status: int, field: str | None
) -> None:
    svc = connect("profile-service")
    before = runtime.vault.stats().records["users"]
    with pytest.raises(GatewayError) as err:
        svc.request("POST", "/datasets/users/records", json=body)
    assert err.value.status == status
    if field is not None:
        assert field in err.value.message
    assert runtime.vault.stats().records["users"] == before
    assert _entries(runtime)[-1]["type"] == "request.rejected"


def test_one_bad_record_refuses_the_whole_batch(runtime: Runtime, connect: Connect) -> None:
    svc = connect("profile-service")
    before = runtime.vault.stats().records["users"]
    batch = [_new_user(USERS + 10), _new_user(USERS + 11, birth_date="not a date")]
    with pytest.raises(GatewayError) as err:
        svc.write_records("users", batch)
    assert "row 2" in err.value.message and "birth_date" in err.value.message
    assert runtime.vault.stats().records["users"] == before


def test_unknown_dataset_and_oversize_batch(runtime: Runtime, connect: Connect) -> None:
    svc = connect("profile-service")
    with pytest.raises(GatewayError) as err:
        svc.write_records("billing", [{"x": 1}])
    assert err.value.status == 404
    limit = runtime.config.max_write_batch
    with pytest.raises(GatewayError) as err:
        svc.write_records("users", [_new_user(1000 + i) for i in range(limit + 1)])
    assert err.value.status == 413


@pytest.mark.parametrize(
    ("who", "dataset", "fields"),
    [
        ("wei", "users", {"email": "a@b.co"}),  # a covered person
        ("wei", "users", {"language": "zh"}),  # ... writes nothing, protected or not
        ("kenji", "users", {"email": "a@b.co"}),  # an engineer abroad
        ("adco", "users", {"language": "en"}),  # the ad partner
        ("alice", "users", {"language": "en"}),  # staff do not write through the gateway
        ("content-service", "users", {"language": "en"}),  # another service's dataset
    ],
)
def test_writes_policy_does_not_allow_are_denied_and_recorded(
    runtime: Runtime, connect: Connect, who: str, dataset: str, fields: dict[str, object]
) -> None:
    client = connect(who)
    with pytest.raises(GatewayError) as err:
        client.change_record(dataset, "u00001", fields)
    assert err.value.status == 403
    last = _entries(runtime)[-1]
    assert last["type"] == "access.decision" and last["decision"] == "deny"
    assert last["action"] == "write"


def test_a_service_cannot_pose_as_another_by_claim(runtime: Runtime, connect: Connect) -> None:
    # A token of the content service that claims the profile service's name in extra claims
    # still writes as the content service: the name is the registered sub.
    client = connect("content-service", service="profile-service")
    with pytest.raises(GatewayError) as err:
        client.change_record("users", "u00001", {"language": "en"})
    assert err.value.status == 403


def test_a_subject_rectifies_only_their_own_profile(runtime: Runtime, connect: Connect) -> None:
    me = _subject(runtime, connect, "u00004")
    out = me.change_record("users", "u00004", {"email": "me@example.com"})
    assert out.records[0].version == 2
    with pytest.raises(GatewayError) as err:
        me.change_record("users", "u00005", {"email": "me@example.com"})
    assert err.value.status == 403
    with pytest.raises(GatewayError) as err:
        me.change_record("users", "u00004", {"birth_date": "2000-01-01"})  # not rectifiable
    assert err.value.status == 403
    # The write appears in the subject's own access history, with its proof.
    history = me.subject_accesses("u00004")
    assert any(a.event.get("type") == "data.write" for a in history.entries)


def test_a_shredded_subject_cannot_be_written_again(runtime: Runtime, connect: Connect) -> None:
    runtime.vault.shred("u00006", OPERATOR, "erasure")
    svc = connect("profile-service")
    with pytest.raises(GatewayError) as err:
        svc.write_records("users", [sample_user(6)], upsert=True)
    assert err.value.status == 410
    ev = connect("events-service")
    with pytest.raises(GatewayError) as err:
        ev.write_records("events", [sample_event(9100, 6)])
    assert err.value.status == 410


def test_the_change_feed_lists_changes_in_commit_order(runtime: Runtime, connect: Connect) -> None:
    svc = connect("profile-service")
    start = svc.changes("users", limit=1000)["cursor"]
    svc.write_records("users", [_new_user(USERS + 20)])
    svc.change_record("users", f"u{USERS + 20:05d}", {"language": "sw"})
    feed = svc.changes("users", after=start)
    assert [(c["op"], c["version"]) for c in feed["changes"]] == [("insert", 1), ("update", 2)]
    assert feed["changes"][1]["fields"] == ["language"]
    assert '"sw"' not in json.dumps(feed)  # names and versions, never values
    assert svc.changes("users", after=feed["cursor"])["changes"] == []
    with pytest.raises(GatewayError) as err:
        connect("alice").changes("users")
    assert err.value.status == 403


def test_every_write_entry_decodes(runtime: Runtime, connect: Connect) -> None:
    connect("profile-service").write_records("users", [_new_user(USERS + 30)])
    reader = runtime.ledger.reader
    types = {decode_event(e).type for _i, e in reader.entries(0, reader.tree_size())}
    assert "data.write" in types


def test_a_service_writes_only_its_registered_datasets(runtime: Runtime, connect: Connect) -> None:
    from bastion.policy.registry import PrincipalEntry

    entry = runtime.registry.get(runtime.issuer.issuer, "events-service")
    assert entry is not None and entry.datasets == ("events",)
    # Policy allows the events service the events dataset; the registry narrows it to none.
    runtime.registry.register(entry.model_copy(update={"datasets": ("videos",)}))
    assert isinstance(runtime.registry.get(runtime.issuer.issuer, "events-service"), PrincipalEntry)
    with pytest.raises(GatewayError) as err:
        connect("events-service").write_records("events", [sample_event(9200, 2)])
    assert err.value.status == 403 and "registered" in err.value.message
    assert _entries(runtime)[-1]["decision"] == "deny"


def test_missing_subject_key_names_it(runtime: Runtime, connect: Connect) -> None:
    row = {k: v for k, v in sample_event(9300, 2).items() if k != "user_id"}
    with pytest.raises(GatewayError) as err:
        connect("events-service").write_records("events", [row])
    assert err.value.status == 422 and "user_id" in err.value.message


def test_a_files_backed_log_refuses_writes(db: Database, tmp_path: Path, clock: FixedClock) -> None:
    # The files driver commits entries apart from the database, so a write and its entry
    # could not be durable together: the gateway refuses writes rather than risk it.
    home = init_home(tmp_path / "home")
    config = home.config_file.read_text()
    home.config_file.write_text(
        config.replace(
            "[ledger]\n", f'[ledger]\nstorage = "files"\ndirectory = "{tmp_path}/log"\n', 1
        )
    )
    rt = bootstrap(Home.load(home.path), db, clock, publish_interval=0.05)
    try:
        with ThreadedServer(create_app(rt)) as srv:
            token = rt.issuer.issue(
                "profile-service", PRINCIPALS["profile-service"], ttl=timedelta(hours=1)
            )
            with GatewayClient(srv.url, token=token) as svc, pytest.raises(GatewayError) as err:
                svc.write_records("users", [_new_user(1)])
        assert err.value.status == 503 and err.value.kind == "writes-unavailable"
        assert rt.vault.stats().records["users"] == 0
    finally:
        rt.close()
