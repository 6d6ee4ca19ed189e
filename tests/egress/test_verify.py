"""The recipient's verifier against a real witnessed log, on both storage backends: a good
delivery end to end, and every way a delivery can be wrong (each must fail with its code and
leave nothing written and nothing recorded)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bastion.egress.delivery import MemorySource, chunk_file_name
from bastion.egress.errors import EgressInputError, EgressRejected
from bastion.egress.manifest import sign_manifest
from bastion.egress.replay import SqliteReplayState
from bastion.egress.trust import EgressTrust, build_trust_bundle
from bastion.egress.verify import verify_delivery
from bastion.ledger.anchors import LogAnchors, log_anchors
from bastion.ledger.note import NoteSigner

from .builders import FIELDS, FLOW, Built, Custodian, rows, write


def _verify(
    custodian: Custodian,
    path: Path,
    tmp_path: Path,
    *,
    trust: EgressTrust | None = None,
    key: X25519PrivateKey | None = None,
) -> None:
    with SqliteReplayState(tmp_path / "state.sqlite") as state:
        verify_delivery(
            path,
            trust or custodian.trust(),
            key or custodian.recipient,
            state=state,
            out=tmp_path / "out",
        )


def _refused(
    code: str,
    custodian: Custodian,
    path: Path,
    tmp_path: Path,
    **kwargs: object,
) -> EgressRejected:
    before = _accepted(tmp_path)
    with pytest.raises(EgressRejected) as info:
        _verify(custodian, path, tmp_path, **kwargs)  # type: ignore[arg-type]
    assert info.value.code == code, info.value
    # Nothing half-written: no staging directory left, no new flow directory, nothing recorded.
    out = tmp_path / "out"
    if out.exists():
        assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert _accepted(tmp_path) == before
    return info.value


def _accepted(tmp_path: Path) -> list[str]:
    if not (tmp_path / "state.sqlite").exists():
        return []
    with SqliteReplayState(tmp_path / "state.sqlite") as state:
        return [r[0] for r in state._conn.execute("SELECT manifest_id FROM egress_accepted")]


def _dir(built: Built, tmp_path: Path, name: str = "in") -> Path:
    return write(tmp_path / name / built.delivery.path, built.delivery)


# --- the good path -------------------------------------------------------------------------


def test_a_good_delivery_verifies_end_to_end_and_lands_in_out(
    custodian: Custodian, tmp_path: Path
) -> None:
    data = rows(5, deletes=2)
    built = custodian.build(data, chunk_rows=3)
    assert len(built.delivery.chunks) == 3
    with SqliteReplayState(tmp_path / "state.sqlite") as state:
        result = verify_delivery(
            _dir(built, tmp_path),
            custodian.trust(),
            custodian.recipient,
            state=state,
            out=tmp_path / "out",
        )
        assert state.last_run(FLOW) == (1, built.manifest_id)
    assert result.recorded and result.rows == 5 and result.tombstones == 2
    assert result.log_index == built.index and len(result.checkpoint["cosigners"]) >= 2
    assert [c.step for c in result.checks] == [
        "signature",
        "inclusion",
        "chunks",
        "schema",
        "replay",
        "written",
    ]
    final = tmp_path / "out" / FLOW / built.manifest_id
    assert sorted(p.name for p in final.iterdir()) == [
        "chunk-00000.parquet",
        "chunk-00001.parquet",
        "chunk-00002.parquet",
        "manifest.json",
    ]
    got = [r for i in range(3) for r in pq.read_table(final / f"chunk-{i:05d}.parquet").to_pylist()]
    assert got == data
    assert [p.read_bytes() for p in sorted(final.glob("*.parquet"))] == built.plaintexts


def test_consecutive_runs_verify_in_order_and_from_memory(
    custodian: Custodian, tmp_path: Path
) -> None:
    first = custodian.build(rows(3))
    second = custodian.build(rows(2, start=3), run=2, previous=first.manifest_id)
    trust = custodian.trust()
    with SqliteReplayState(tmp_path / "state.sqlite") as state:
        for built in (first, second):
            verify_delivery(
                MemorySource(built.delivery),
                trust,
                custodian.recipient,
                state=state,
                out=tmp_path / "out",
            )
        assert state.last_run(FLOW) == (2, second.manifest_id)


def test_without_out_it_is_a_check_only(custodian: Custodian, tmp_path: Path) -> None:
    built = custodian.build()
    with SqliteReplayState(tmp_path / "state.sqlite") as state:
        result = verify_delivery(
            _dir(built, tmp_path), custodian.trust(), custodian.recipient, state=state
        )
        assert not result.recorded and result.out is None
        assert not state.seen(built.manifest_id)


# --- chunks: tampered, dropped, reordered, from another run ---------------------------------


def test_a_tampered_chunk_is_refused(custodian: Custodian, tmp_path: Path) -> None:
    path = _dir(custodian.build(), tmp_path)
    target = path / chunk_file_name(1)
    data = bytearray(target.read_bytes())
    data[40] ^= 0x01
    target.write_bytes(bytes(data))
    _refused("egress.chunk.tampered", custodian, path, tmp_path)


def test_a_chunk_re_encrypted_by_someone_else_fails_its_digest(
    custodian: Custodian, tmp_path: Path
) -> None:
    """HPKE base mode does not authenticate the sender: anyone with the public key and the
    manifest digest can seal a chunk that opens. The manifest's subject digest catches it."""
    from bastion.egress.payload import arrow_schema, encode_chunk, seal_chunk

    built = custodian.build()
    path = _dir(built, tmp_path)
    schema = arrow_schema(FIELDS)
    forged = encode_chunk(rows(2, start=500), schema)
    n = len(built.delivery.chunks)
    (path / chunk_file_name(0)).write_bytes(
        seal_chunk(forged, custodian.recipient.public_key(), built.digest, 0, n)
    )
    err = _refused("egress.chunk.tampered", custodian, path, tmp_path)
    assert "does not hash" in err.detail


def test_a_dropped_last_chunk_is_refused(custodian: Custodian, tmp_path: Path) -> None:
    built = custodian.build()
    path = _dir(built, tmp_path)
    (path / chunk_file_name(len(built.delivery.chunks) - 1)).unlink()
    _refused("egress.chunk.missing", custodian, path, tmp_path)


def test_a_dropped_middle_chunk_is_refused(custodian: Custodian, tmp_path: Path) -> None:
    path = _dir(custodian.build(), tmp_path)
    (path / chunk_file_name(1)).unlink()
    err = _refused("egress.chunk.missing", custodian, path, tmp_path)
    assert "chunk-00001.hpke" in err.detail


def test_an_extra_chunk_is_refused(custodian: Custodian, tmp_path: Path) -> None:
    built = custodian.build()
    path = _dir(built, tmp_path)
    n = len(built.delivery.chunks)
    (path / chunk_file_name(n)).write_bytes(built.delivery.chunks[0])
    _refused("egress.chunk.extra", custodian, path, tmp_path)


def test_reordered_chunks_are_refused(custodian: Custodian, tmp_path: Path) -> None:
    path = _dir(custodian.build(), tmp_path)
    a, b = path / chunk_file_name(0), path / chunk_file_name(1)
    first, second = a.read_bytes(), b.read_bytes()
    a.write_bytes(second)
    b.write_bytes(first)
    _refused("egress.chunk.tampered", custodian, path, tmp_path)


def test_a_chunk_from_another_run_is_refused(custodian: Custodian, tmp_path: Path) -> None:
    built = custodian.build(rows(4))
    other = custodian.build(rows(4))  # same shape, another manifest
    path = _dir(built, tmp_path)
    (path / chunk_file_name(0)).write_bytes(other.delivery.chunks[0])
    _refused("egress.chunk.tampered", custodian, path, tmp_path)


def test_a_delivery_for_another_recipient_does_not_open(
    custodian: Custodian, tmp_path: Path
) -> None:
    path = _dir(custodian.build(), tmp_path)
    _refused("egress.chunk.tampered", custodian, path, tmp_path, key=X25519PrivateKey.generate())


# --- replay --------------------------------------------------------------------------------


def test_a_replayed_manifest_is_refused(custodian: Custodian, tmp_path: Path) -> None:
    path = _dir(custodian.build(), tmp_path)
    _verify(custodian, path, tmp_path)
    err = _refused("egress.replay", custodian, path, tmp_path)
    assert "already accepted" in err.detail


def test_an_older_run_after_a_newer_one_is_refused(custodian: Custodian, tmp_path: Path) -> None:
    first = custodian.build(rows(2))
    second = custodian.build(rows(2), run=2, previous=first.manifest_id)
    _verify(custodian, _dir(second, tmp_path, "b"), tmp_path)
    _refused("egress.replay", custodian, _dir(first, tmp_path, "a"), tmp_path)


def test_a_gap_in_runs_is_refused_with_the_missing_run(
    custodian: Custodian, tmp_path: Path
) -> None:
    first = custodian.build(rows(2))
    second = custodian.build(rows(2), run=2, previous=first.manifest_id)
    third = custodian.build(rows(2), run=3, previous=second.manifest_id)
    _verify(custodian, _dir(first, tmp_path, "a"), tmp_path)
    err = _refused("egress.replay.gap", custodian, _dir(third, tmp_path, "c"), tmp_path)
    assert "verify run 2 first" in err.detail
    _verify(custodian, _dir(second, tmp_path, "b"), tmp_path)
    _verify(custodian, _dir(third, tmp_path, "c"), tmp_path)


def test_a_run_that_names_another_previous_manifest_is_refused(
    custodian: Custodian, tmp_path: Path
) -> None:
    first = custodian.build(rows(2))
    forked = custodian.build(rows(2), run=2, previous="f" * 32)
    _verify(custodian, _dir(first, tmp_path, "a"), tmp_path)
    _refused("egress.replay.chain", custodian, _dir(forked, tmp_path, "b"), tmp_path)


def test_a_corrupt_state_file_is_refused_not_reset(tmp_path: Path) -> None:
    bad = tmp_path / "state.sqlite"
    bad.write_bytes(b"not a database, but not empty either" * 100)
    with pytest.raises(EgressInputError) as info:
        SqliteReplayState(bad)
    assert info.value.code == "egress.state.corrupt"


# --- the log -------------------------------------------------------------------------------


def test_a_proof_for_another_entry_is_refused(custodian: Custodian, tmp_path: Path) -> None:
    built = custodian.build()
    other = custodian.build()
    path = _dir(built, tmp_path)
    (path / "proof.tlog-proof").write_text(other.delivery.proof)
    _refused("egress.inclusion", custodian, path, tmp_path)


def test_another_manifests_logged_entry_is_refused(custodian: Custodian, tmp_path: Path) -> None:
    """Entry and proof are genuine, and included, but for another manifest."""
    built = custodian.build()
    other = custodian.build()
    path = _dir(built, tmp_path)
    (path / "entry.json").write_bytes(other.delivery.entry)
    (path / "proof.tlog-proof").write_text(other.delivery.proof)
    _refused("egress.entry.mismatch", custodian, path, tmp_path)


def test_a_manifest_never_appended_to_the_log_is_refused(
    custodian: Custodian, tmp_path: Path
) -> None:
    """Signed by the custodian but never logged: the entry it would be is in no checkpoint."""
    from bastion.egress.delivery import seal_delivery

    logged = custodian.build()
    statement, plaintexts = custodian.statement(rows(3))
    envelope = sign_manifest(statement, custodian.key)
    entry = logged.delivery.entry.replace(
        logged.manifest_id.encode(), statement["predicate"]["manifest_id"].encode()
    )
    unlogged = seal_delivery(
        envelope=envelope,
        entry=entry,
        proof=logged.delivery.proof,
        plaintexts=plaintexts,
        recipient=custodian.recipient.public_key(),
    )
    path = write(tmp_path / "in" / unlogged.path, unlogged)
    _refused("egress.inclusion", custodian, path, tmp_path)


def test_a_checkpoint_without_the_witness_quorum_is_refused(
    custodian: Custodian, tmp_path: Path
) -> None:
    """The bundle trusts one of the three witnesses and wants two cosignatures: the ones of
    witnesses it does not know do not count."""
    path = _dir(custodian.build(), tmp_path)
    anchors = log_anchors(custodian.log)
    narrow = LogAnchors(anchors.origin, anchors.vkey, anchors.witnesses[:1], quorum=1)
    trust = build_trust_bundle(
        narrow, [("custodian", custodian.key.public_key())], {FLOW: [n for n, _ in FIELDS]}
    )
    strict = trust.model_copy(update={"quorum": 2})  # past the parser's own check on purpose
    err = _refused("egress.inclusion", custodian, path, tmp_path, trust=strict)
    assert "cosign" in err.detail or "quorum" in err.detail


def test_a_log_the_bundle_does_not_trust_is_refused(custodian: Custodian, tmp_path: Path) -> None:
    path = _dir(custodian.build(), tmp_path)
    anchors = log_anchors(custodian.log)
    impostor = NoteSigner.generate(anchors.origin)
    trust = build_trust_bundle(
        LogAnchors(anchors.origin, impostor.vkey, anchors.witnesses, anchors.quorum),
        [("custodian", custodian.key.public_key())],
        {FLOW: [n for n, _ in FIELDS]},
    )
    _refused("egress.inclusion", custodian, path, tmp_path, trust=trust)


# --- the signature -------------------------------------------------------------------------


def test_a_manifest_signed_by_an_untrusted_key_is_refused(
    custodian: Custodian, tmp_path: Path
) -> None:
    path = _dir(custodian.build(), tmp_path)
    trust = build_trust_bundle(
        log_anchors(custodian.log),
        [("someone-else", Ed25519PrivateKey.generate().public_key())],
        {FLOW: [n for n, _ in FIELDS]},
    )
    _refused("egress.signature", custodian, path, tmp_path, trust=trust)


def test_a_bad_signature_is_refused(custodian: Custodian, tmp_path: Path) -> None:
    import json

    path = _dir(custodian.build(), tmp_path)
    doc = json.loads((path / "manifest.dsse.json").read_bytes())
    sig = doc["signatures"][0]["sig"]
    doc["signatures"][0]["sig"] = ("B" if sig[0] == "A" else "A") + sig[1:]
    (path / "manifest.dsse.json").write_text(json.dumps(doc))
    _refused("egress.signature", custodian, path, tmp_path)


# --- the schema ----------------------------------------------------------------------------


def test_a_manifest_with_an_undeclared_column_is_refused_before_decrypting(
    custodian: Custodian, tmp_path: Path
) -> None:
    wide = [*FIELDS, ("email", "string")]
    data = [dict(r, email=None) for r in rows(3)]
    path = _dir(custodian.build(data, fields=wide), tmp_path)
    err = _refused("egress.schema.extra_column", custodian, path, tmp_path)
    assert "'email'" in err.detail


def test_a_chunk_with_a_column_the_manifest_hides_is_refused(
    custodian: Custodian, tmp_path: Path
) -> None:
    wide = [*FIELDS, ("email", "string")]
    data = [dict(r, email=None) for r in rows(3)]
    path = _dir(custodian.build(data, fields=wide, declared=FIELDS), tmp_path)
    err = _refused("egress.schema.extra_column", custodian, path, tmp_path)
    assert "chunk 0" in err.detail and "'email'" in err.detail


def test_a_schema_mismatch_is_refused(custodian: Custodian, tmp_path: Path) -> None:
    declared = [("video", "string"), ("month", "date32[day]"), ("views", "string")]
    path = _dir(custodian.build(rows(3), declared=declared), tmp_path)
    _refused("egress.schema.mismatch", custodian, path, tmp_path)


def test_row_counts_that_differ_from_the_manifest_are_refused(
    custodian: Custodian, tmp_path: Path
) -> None:
    path = _dir(custodian.build(rows(3), declared_rows=4), tmp_path)
    _refused("egress.rows.mismatch", custodian, path, tmp_path)


def test_a_flow_the_bundle_does_not_know_is_refused(custodian: Custodian, tmp_path: Path) -> None:
    path = _dir(custodian.build(), tmp_path)
    trust = custodian.trust({"another-flow": ["video"]})
    _refused("egress.flow.unknown", custodian, path, tmp_path, trust=trust)


# --- the layout ----------------------------------------------------------------------------


def test_an_incomplete_delivery_is_refused(custodian: Custodian, tmp_path: Path) -> None:
    path = _dir(custodian.build(), tmp_path)
    (path / "COMPLETE").unlink()
    _refused("egress.incomplete", custodian, path, tmp_path)


def test_an_unexpected_file_or_a_symlink_is_refused(custodian: Custodian, tmp_path: Path) -> None:
    path = _dir(custodian.build(), tmp_path)
    (path / "notes.txt").write_text("hello")
    _refused("egress.layout", custodian, path, tmp_path)
    (path / "notes.txt").unlink()
    target = path / chunk_file_name(0)
    (tmp_path / "elsewhere").write_bytes(target.read_bytes())
    target.unlink()
    os.symlink(tmp_path / "elsewhere", target)
    _refused("egress.layout", custodian, path, tmp_path)
