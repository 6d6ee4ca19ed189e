"""The egress delivery as this version wrote it (``golden/v2/egress``, by
``make_golden_egress.py``, never regenerated) still verifies at the recipient: the manifest
format, the HPKE context, the Parquet chunks, the delivery layout and the trust bundle."""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bastion.egress.errors import EgressRejected
from bastion.egress.manifest import parse_manifest
from bastion.egress.payload import private_key_from_pem
from bastion.egress.replay import SqliteReplayState
from bastion.egress.trust import parse_trust_bundle
from bastion.egress.verify import verify_delivery
from bastion.events import EgressManifest, decode_event, encode_event

GOLDEN = Path(__file__).parent / "golden" / "v2" / "egress"
DELIVERY = GOLDEN / "delivery" / "video-stats" / "0123456789abcdef0123456789abcdef"


def test_the_golden_delivery_still_verifies_to_the_same_rows(tmp_path: Path) -> None:
    expected = json.loads((GOLDEN / "expected.json").read_text())
    trust = parse_trust_bundle((GOLDEN / "trust.json").read_bytes())
    key = private_key_from_pem((GOLDEN / "recipient.x25519.pem").read_bytes())
    with SqliteReplayState(tmp_path / "state.sqlite") as state:
        result = verify_delivery(DELIVERY, trust, key, state=state, out=tmp_path / "out")
    assert result.manifest_sha256 == expected["manifest_sha256"]
    assert result.log_index == expected["log_index"]
    final = Path(result.out or "")
    rows = [
        r
        for i in range(result.chunks)
        for r in pq.read_table(final / f"chunk-{i:05d}.parquet").to_pylist()
    ]
    as_json = [
        {k: v.isoformat() if isinstance(v, datetime.date) else v for k, v in r.items()}
        for r in rows
    ]
    assert as_json == expected["rows"]


def test_the_golden_manifest_parses_to_the_same_predicate() -> None:
    expected = json.loads((GOLDEN / "expected.json").read_text())
    trust = parse_trust_bundle((GOLDEN / "trust.json").read_bytes())
    manifest = parse_manifest((DELIVERY / "manifest.dsse.json").read_bytes(), trust.trusted_keys())
    assert manifest.predicate.to_json() == expected["predicate"]


def test_the_golden_entry_decodes_and_encodes_to_the_same_bytes() -> None:
    entry = (DELIVERY / "entry.json").read_bytes()
    event = decode_event(entry)
    assert isinstance(event, EgressManifest)
    assert encode_event(event) == entry


def test_a_golden_chunk_altered_is_still_refused(tmp_path: Path) -> None:
    trust = parse_trust_bundle((GOLDEN / "trust.json").read_bytes())
    key = private_key_from_pem((GOLDEN / "recipient.x25519.pem").read_bytes())
    copy = tmp_path / "delivery"
    shutil.copytree(DELIVERY, copy)
    chunk = copy / "chunk-00001.hpke"
    data = bytearray(chunk.read_bytes())
    data[-5] ^= 0x10
    chunk.write_bytes(bytes(data))
    with pytest.raises(EgressRejected) as info:
        verify_delivery(copy, trust, key)
    assert info.value.code == "egress.chunk.tampered"
