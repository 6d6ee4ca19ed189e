"""The delivery layout: fixed names, contiguous chunks, no way out of the directory."""

from __future__ import annotations

import pytest

from bastion.egress.delivery import (
    COMPLETE_FILE,
    ENTRY_FILE,
    MANIFEST_FILE,
    PROOF_FILE,
    Delivery,
    check_layout,
    chunk_file_name,
)
from bastion.egress.errors import EgressRejected

BASE = [MANIFEST_FILE, ENTRY_FILE, PROOF_FILE]


def _delivery(**overrides: object) -> Delivery:
    args: dict[str, object] = {
        "flow": "video-stats",
        "manifest_id": "ab" * 16,
        "envelope": b"{}",
        "entry": b"{}",
        "proof": "c2sp.org/tlog-proof@v1\n",
        "chunks": (b"c0", b"c1"),
    }
    args.update(overrides)
    return Delivery(**args)  # type: ignore[arg-type]


def test_files_are_in_order_with_the_marker_last_and_round_trip() -> None:
    d = _delivery()
    names = [n for n, _ in d.files()]
    assert names == [*BASE, "chunk-00000.hpke", "chunk-00001.hpke", COMPLETE_FILE]
    assert d.path == f"video-stats/{'ab' * 16}"
    again = Delivery.from_files(dict(d.files()), flow=d.flow, manifest_id=d.manifest_id)
    assert again == d


@pytest.mark.parametrize(
    ("names", "code"),
    [
        ([*BASE, "../../etc/passwd", chunk_file_name(0), COMPLETE_FILE], "egress.layout"),
        ([*BASE, "chunk-0.hpke", COMPLETE_FILE], "egress.layout"),
        ([*BASE, "sub/chunk-00000.hpke", COMPLETE_FILE], "egress.layout"),
        ([MANIFEST_FILE, ENTRY_FILE, chunk_file_name(0), COMPLETE_FILE], "egress.layout"),
        ([*BASE, COMPLETE_FILE], "egress.chunk.missing"),
        ([*BASE, chunk_file_name(0), chunk_file_name(2), COMPLETE_FILE], "egress.chunk.missing"),
        ([*BASE, chunk_file_name(1), COMPLETE_FILE], "egress.chunk.missing"),
        ([*BASE, chunk_file_name(0)], "egress.incomplete"),
    ],
)
def test_a_bad_layout_is_refused(names: list[str], code: str) -> None:
    with pytest.raises(EgressRejected) as info:
        check_layout(names)
    assert info.value.code == code


@pytest.mark.parametrize(
    ("field", "value"),
    [("flow", "../up"), ("flow", ".hidden"), ("flow", "a/b"), ("manifest_id", "x" * 32)],
)
def test_names_that_could_leave_the_directory_are_refused(field: str, value: str) -> None:
    with pytest.raises(EgressRejected) as info:
        _delivery(**{field: value})
    assert info.value.code == "egress.layout"


def test_a_delivery_has_at_least_one_chunk() -> None:
    with pytest.raises(EgressRejected):
        _delivery(chunks=())
