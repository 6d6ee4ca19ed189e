"""The destination config and the directory destination (the embedded default)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from bastion.egress.destinations import (
    Destination,
    DestinationUnavailable,
    DirectoryDestination,
    destination_from_config,
)
from bastion.egress.destinations import files as files_mod
from bastion.egress.destinations.base import layout
from bastion.egress.destinations.http import HttpDestination
from bastion.egress.destinations.nats import NatsDestination
from bastion.errors import InputError, StoreUnavailable
from bastion.extras import MissingExtra

from .destination_cases import FLOW, Crash, CrashAfter, delivery

# ---- config ----------------------------------------------------------------------------------


def test_each_type_is_built_and_a_relative_path_is_under_the_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    d = destination_from_config({"type": "files", "path": "egress/out"}, home=home)
    assert isinstance(d, DirectoryDestination) and d.root == home / "egress/out"
    absolute = destination_from_config({"type": "files", "path": str(tmp_path / "x")}, home=home)
    assert isinstance(absolute, DirectoryDestination) and absolute.root == tmp_path / "x"
    n = destination_from_config(
        {"type": "nats", "url": "nats://127.0.0.1:4222", "stream": "S", "subject_prefix": "a.b"},
        home=home,
    )
    assert isinstance(n, NatsDestination) and (n.stream, n.prefix) == ("S", "a.b")
    h = destination_from_config(
        {"type": "http", "url": "https://parent.example/in/", "token_env": "PARENT_TOKEN"},
        home=home,
    )
    assert isinstance(h, HttpDestination) and h.url == "https://parent.example/in"
    for made in (d, n, h):
        assert isinstance(made, Destination)


@pytest.mark.parametrize(
    ("cfg", "field", "words"),
    [
        ({"type": "ftp", "path": "x"}, "destination.type", "unknown destination type 'ftp'"),
        ({"path": "x"}, "destination.type", "unknown destination type None"),
        ({"type": "files"}, "destination.path", "required"),
        ({"type": "files", "path": ""}, "destination.path", "at least 1"),
        ({"type": "files", "path": "x", "mode": 1}, "destination.mode", "not permitted"),
        ({"type": "nats", "url": "http://x:4222"}, "destination.url", "nats://host:port"),
        ({"type": "nats", "stream": "a.b"}, "destination.stream", "stream name"),
        ({"type": "nats", "subject_prefix": "a.>"}, "destination.subject_prefix", "wildcard"),
        ({"type": "nats", "connect_timeout_s": 0}, "destination.connect_timeout_s", "greater"),
        ({"type": "http", "url": "ftp://x"}, "destination.url", "https://"),
        ({"type": "http", "url": "http://parent.example"}, "destination.url", "localhost"),
        ({"type": "http", "url": "https://p.example?a=1"}, "destination.url", "no query"),
        ({"type": "http", "url": "https://p", "token_env": "A-B"}, "destination.token_env", ""),
    ],
)
def test_a_bad_destination_is_refused_naming_the_field(
    cfg: dict[str, object], field: str, words: str, tmp_path: Path
) -> None:
    with pytest.raises(InputError) as caught:
        destination_from_config(cfg, home=tmp_path)
    assert caught.value.field == field
    assert words in str(caught.value)
    assert caught.value.exit_code == 2


def test_plain_http_to_this_machine_is_allowed(tmp_path: Path) -> None:
    for url in ("http://127.0.0.1:8470", "http://localhost:1/x", "http://[::1]:9"):
        assert isinstance(
            destination_from_config({"type": "http", "url": url}, home=tmp_path), HttpDestination
        )


def test_the_nats_destination_without_its_extra_names_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "nats", None)  # as if nats-py were not installed
    with pytest.raises(MissingExtra, match=r"pip install 'bastion\[egress\]'"):
        destination_from_config({"type": "nats"}, home=tmp_path)


def test_unavailable_is_a_store_outage_not_bad_input() -> None:
    assert issubclass(DestinationUnavailable, StoreUnavailable)
    assert DestinationUnavailable("x").exit_code == 4  # the gateway's 503 family


# ---- the directory destination -----------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_a_delivery_is_its_layout_in_a_directory(tmp_path: Path) -> None:
    d = delivery()
    dest = DirectoryDestination(tmp_path / "out")
    assert not dest.delivered(FLOW, d.manifest_id)
    dest.deliver(d)
    assert dest.delivered(FLOW, d.manifest_id)
    assert _tree(tmp_path / "out") == {f"{FLOW}/{d.manifest_id}/{n}": b for n, b in d.files()}
    assert dest.path_of(FLOW, d.manifest_id) == tmp_path / "out" / FLOW / d.manifest_id
    assert not files_mod.staging_dir(tmp_path / "out", FLOW, d.manifest_id).exists()


def test_a_second_delivery_of_the_same_manifest_is_a_no_op(tmp_path: Path) -> None:
    d, other = delivery(), delivery()
    dest = DirectoryDestination(tmp_path)
    dest.deliver(d)
    final = dest.path_of(FLOW, d.manifest_id)
    before = {p.name: os.stat(p).st_ino for p in final.iterdir()}
    dest.deliver(d)
    dest.deliver(other)
    assert {p.name: os.stat(p).st_ino for p in final.iterdir()} == before  # not rewritten
    assert sorted(p.name for p in (tmp_path / FLOW).iterdir()) == sorted(
        [d.manifest_id, other.manifest_id]
    )
    assert len(_tree(tmp_path)) == len(d.files()) + len(other.files())


def test_an_unwritable_directory_is_unavailable_and_nothing_is_delivered(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")  # a file where the directory should be: unwritable, even as root
    d = delivery()
    dest = DirectoryDestination(blocker / "out")
    with pytest.raises(DestinationUnavailable, match="could not be written") as caught:
        dest.deliver(d)
    assert "NotADirectoryError" in str(caught.value)
    assert not dest.delivered(FLOW, d.manifest_id)


def test_a_crash_after_k_files_leaves_nothing_delivered_and_the_retry_delivers_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = delivery(chunks=4)
    dest = DirectoryDestination(tmp_path)
    for k in (0, 1, 3, len(d.files()) - 1):  # the last one is COMPLETE itself
        crash = CrashAfter(k, files_mod._write_file)
        monkeypatch.setattr(files_mod, "_write_file", crash)
        with pytest.raises(Crash):
            dest.deliver(d)
        assert crash.calls == k
        assert not dest.delivered(FLOW, d.manifest_id)
        assert not (tmp_path / FLOW / d.manifest_id).exists()  # nothing a reader could see
        monkeypatch.undo()
    dest.deliver(d)
    assert dest.delivered(FLOW, d.manifest_id)
    delivered = {k: v for k, v in _tree(tmp_path).items() if not k.startswith(".")}
    assert delivered == {f"{FLOW}/{d.manifest_id}/{n}": b for n, b in d.files()}


def test_a_staging_directory_left_by_a_killed_process_is_replaced(tmp_path: Path) -> None:
    d = delivery()
    staging = files_mod.staging_dir(tmp_path, FLOW, d.manifest_id)
    staging.mkdir(parents=True)
    (staging / "chunk-00000.hpke").write_bytes(b"half")  # what a kill -9 leaves
    (staging / "chunk-00007.hpke").write_bytes(b"not of this delivery")
    (staging / ".chunk-00001.hpke.tmp").write_bytes(b"torn")
    dest = DirectoryDestination(tmp_path)
    assert not dest.delivered(FLOW, d.manifest_id)
    dest.deliver(d)
    final = dest.path_of(FLOW, d.manifest_id)
    assert {p.name: p.read_bytes() for p in final.iterdir()} == dict(d.files())
    assert not staging.exists()


def test_a_directory_in_place_without_complete_is_not_overwritten(tmp_path: Path) -> None:
    d = delivery()
    foreign = tmp_path / FLOW / d.manifest_id
    foreign.mkdir(parents=True)
    (foreign / "manifest.dsse.json").write_bytes(b"someone else's")
    dest = DirectoryDestination(tmp_path)
    with pytest.raises(DestinationUnavailable, match="exists without COMPLETE"):
        dest.deliver(d)
    assert not dest.delivered(FLOW, d.manifest_id)
    assert [p.name for p in foreign.iterdir()] == ["manifest.dsse.json"]


class _Evil:
    """A delivery whose file names try to climb out of their directory."""

    def __init__(self, name: str, flow: str = FLOW, manifest_id: str = "a" * 32) -> None:
        self.flow, self.manifest_id, self.name = flow, manifest_id, name

    def files(self) -> list[tuple[str, bytes]]:
        return [(self.name, b"x"), ("COMPLETE", b"done")]


@pytest.mark.parametrize(
    ("evil", "field"),
    [
        (_Evil("../../escape"), "file"),
        (_Evil(".."), "file"),
        (_Evil("/etc/passwd"), "file"),
        (_Evil(".hidden"), "file"),
        (_Evil("ok", flow="../up"), "flow"),
        (_Evil("ok", flow="a.b"), "flow"),
        (_Evil("ok", manifest_id="../" + "a" * 29), "manifest_id"),
    ],
)
def test_a_name_that_climbs_out_is_refused_before_anything_is_written(
    evil: _Evil, field: str, tmp_path: Path
) -> None:
    root = tmp_path / "out"
    with pytest.raises(InputError) as caught:
        DirectoryDestination(root).deliver(evil)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert list(tmp_path.iterdir()) == []


def test_layout_needs_complete_last() -> None:
    class NoMarker(_Evil):
        def files(self) -> list[tuple[str, bytes]]:
            return [("COMPLETE", b"done"), ("entry.json", b"{}")]

    with pytest.raises(InputError, match="end with COMPLETE"):
        layout(NoMarker("x"))  # type: ignore[arg-type]
