"""The manifest format: build, sign, parse; every refusal names its field. Pure, no log."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.egress.errors import EgressRejected
from bastion.egress.manifest import (
    MAX_CHUNKS,
    PREDICATE_TYPE,
    build_statement,
    envelope_bytes,
    manifest_digest,
    manifest_event,
    new_manifest_id,
    parse_manifest,
    peek_manifest,
    sign_manifest,
    statement_payload,
)
from bastion.events import SYSTEM, EgressManifest, encode_event
from bastion.releases.dsse import TrustedKey, add_signature, sign_envelope
from bastion.releases.intoto import PAYLOAD_TYPE

KEY = Ed25519PrivateKey.generate()
TRUSTED = [TrustedKey("custodian", KEY.public_key())]
SCHEMA = [("_row", "string"), ("_op", "string"), ("video", "string"), ("views", "int64")]


def _statement(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "manifest_id": "0" * 32,
        "flow": "video-stats",
        "flow_version": 3,
        "flow_sha256": "a" * 64,
        "recipient": "parent",
        "kind": "records",
        "policy_sha256": "b" * 64,
        "run": 2,
        "previous_manifest": "1" * 32,
        "cursor_after": 10,
        "cursor_through": 20,
        "mode": "incremental",
        "rows": 7,
        "tombstones": 1,
        "schema": SCHEMA,
        "chunk_sha256": [hashlib.sha256(b"chunk0").hexdigest(), "c" * 64],
        "created_at": "2026-12-04T12:00:00Z",
    }
    args.update(overrides)
    return build_statement(**args)


def _signed_payload(payload: dict[str, Any]) -> bytes:
    return envelope_bytes(sign_envelope(PAYLOAD_TYPE, json.dumps(payload).encode(), [KEY]))


def test_a_signed_manifest_parses_to_its_predicate() -> None:
    statement = _statement()
    envelope = sign_manifest(statement, KEY)
    manifest = parse_manifest(envelope_bytes(envelope), TRUSTED)
    p = manifest.predicate
    assert (p.flow, p.run, p.previous_manifest, p.rows, p.tombstones) == (
        "video-stats",
        2,
        "1" * 32,
        7,
        1,
    )
    assert p.fields == ("video", "views") and p.cursor.after == 10 and p.chunks == 2
    assert manifest.chunk_sha256 == tuple(s["digest"]["sha256"] for s in statement["subject"])
    assert [s["name"] for s in statement["subject"]] == [
        "chunk-00000.parquet",
        "chunk-00001.parquet",
    ]
    assert statement["predicateType"] == PREDICATE_TYPE
    assert manifest.signers == ("custodian",)


def test_the_digest_is_the_signed_payload_and_ignores_countersignatures() -> None:
    envelope = sign_manifest(_statement(), KEY)
    assert envelope.payload == statement_payload(_statement())
    assert manifest_digest(envelope) == hashlib.sha256(envelope.payload).digest()
    again = add_signature(envelope, Ed25519PrivateKey.generate())
    assert manifest_digest(again) == manifest_digest(envelope)


def test_an_untrusted_signer_is_refused() -> None:
    envelope = sign_manifest(_statement(), Ed25519PrivateKey.generate())
    with pytest.raises(EgressRejected) as info:
        parse_manifest(envelope_bytes(envelope), TRUSTED)
    assert info.value.code == "egress.signature"


def test_unknown_predicate_fields_are_ignored() -> None:
    statement = _statement()
    statement["predicate"]["added_later"] = {"x": 1}
    manifest = parse_manifest(envelope_bytes(sign_manifest(statement, KEY)), TRUSTED)
    assert manifest.predicate.run == 2


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("manifest_id", "../../etc", "manifest_id"),
        ("flow", "../x", "flow"),
        ("run", 0, "run"),
        ("rows", -1, "rows"),
        ("kind", "everything", "kind"),
        ("schema", [("video", "string")], "schema"),
        ("schema", [*SCHEMA, ("video", "string")], "schema"),
        ("created_at", "yesterday", "created_at"),
        ("flow_sha256", "xyz", "flow_sha256"),
    ],
)
def test_a_bad_value_is_refused_before_signing_naming_the_field(
    field: str, value: object, named: str
) -> None:
    with pytest.raises(EgressRejected) as info:
        _statement(**{field: value})
    assert info.value.code == "egress.manifest.malformed"
    assert named in info.value.detail


def test_run_one_has_no_previous_and_the_cursor_is_ordered() -> None:
    with pytest.raises(EgressRejected):
        _statement(run=1)
    with pytest.raises(EgressRejected, match="cursor"):
        _statement(cursor_after=30)
    with pytest.raises(EgressRejected):
        _statement(chunk_sha256=[])
    with pytest.raises(EgressRejected):
        _statement(chunk_sha256=["c" * 64] * (MAX_CHUNKS + 1))


def test_a_received_manifest_that_breaks_the_format_is_refused_naming_the_field() -> None:
    good = json.loads(statement_payload(_statement()))
    missing = json.loads(json.dumps(good))
    del missing["predicate"]["cursor"]
    renamed = json.loads(json.dumps(good))
    renamed["subject"][1]["name"] = "chunk-00007.parquet"
    other_type = json.loads(json.dumps(good))
    other_type["predicateType"] = "https://example.com/other"
    for doc, named in (
        (missing, "cursor"),
        (renamed, "subject[1].name"),
        (other_type, "predicateType"),
    ):
        with pytest.raises(EgressRejected) as info:
            parse_manifest(_signed_payload(doc), TRUSTED)
        assert info.value.code == "egress.manifest.malformed"
        assert named in info.value.detail


def test_peek_reads_without_trusting() -> None:
    envelope = sign_manifest(_statement(), Ed25519PrivateKey.generate())
    peeked = peek_manifest(envelope_bytes(envelope))
    assert peeked.signers == () and peeked.predicate.flow == "video-stats"


def test_new_manifest_ids_are_random_hex() -> None:
    ids = {new_manifest_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_the_largest_manifest_fits_in_one_ledger_entry() -> None:
    wide = [*SCHEMA[:2], *((f"field_{i:03d}", "timestamp[us, tz=UTC]") for i in range(64))]
    statement = _statement(
        flow="f" * 128, recipient="r" * 200, schema=wide, chunk_sha256=["c" * 64] * MAX_CHUNKS
    )
    envelope = sign_manifest(statement, KEY)
    event = EgressManifest(
        actor=SYSTEM,
        reason="r" * 500,
        at="2026-12-04T12:00:00Z",
        flow="f" * 128,
        flow_version=1,
        manifest_id=new_manifest_id(),
        recipient="r" * 200,
        run=2,
        rows=7,
        tombstones=1,
        chunks=MAX_CHUNKS,
        cursor_after=10,
        cursor_through=20,
        envelope=envelope.to_json(),
    )
    encode_event(event)  # raises EntryTooLarge past 64 KiB


def test_the_ledger_event_carries_the_envelope_and_the_signed_figures() -> None:
    envelope = sign_manifest(_statement(), KEY)
    event = manifest_event(envelope, actor=SYSTEM, reason="egress run 2", at="2026-12-04T12:00:00Z")
    assert event.envelope == envelope.to_json()
    assert (event.manifest_id, event.run, event.rows, event.tombstones, event.chunks) == (
        "0" * 32,
        2,
        7,
        1,
        2,
    )
    assert (event.cursor_after, event.cursor_through, event.recipient) == (10, 20, "parent")
    encode_event(event)
