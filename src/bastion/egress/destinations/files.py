"""The directory destination (the embedded default): ``<root>/<flow>/<manifest_id>/...``.

A delivery is written into a staging directory under the same root
(``<root>/.partial/<flow>/<manifest_id>``), every file fsynced, ``COMPLETE`` last, and the
staging directory is then renamed into place: one atomic step, so a reader sees either no
``<manifest_id>`` directory or a whole one. A staging directory left by a crash is removed
and rewritten by the next delivery of the same manifest; a manifest already in place is left
alone (a no-op), which is what makes a retry deliver exactly once.

The same steps serve the receiving side (the HTTP receiver, the NATS reader): they are plain
functions of a root directory, with no server code.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from bastion.durable import fsync_dir
from bastion.egress.destinations.common import (
    COMPLETE,
    DestinationUnavailable,
    check_file_name,
    check_flow,
    check_manifest_id,
    layout,
)

if TYPE_CHECKING:
    from bastion.egress.delivery import Delivery


STAGING = ".partial"


def final_dir(root: Path, flow: str, manifest_id: str) -> Path:
    return root / check_flow(flow) / check_manifest_id(manifest_id)


def staging_dir(root: Path, flow: str, manifest_id: str) -> Path:
    # Under the same root (so the rename is atomic) but one level deeper than a delivery, so
    # a recipient's glob of <root>/*/*/manifest.dsse.json never takes a staged one for one.
    return root / STAGING / check_flow(flow) / check_manifest_id(manifest_id)


def is_complete(root: Path, flow: str, manifest_id: str) -> bool:
    return (final_dir(root, flow, manifest_id) / COMPLETE).is_file()


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` durably: a temporary name, fsync, then rename over ``path``."""
    # A unique temporary name: two writers of the same file (a retry overlapping a slow
    # first attempt at the HTTP receiver) never write into one temporary file.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_staged(root: Path, flow: str, manifest_id: str, name: str, data: bytes) -> None:
    """Write one file of a delivery into its staging directory (created if missing)."""
    staging = staging_dir(root, flow, manifest_id)
    staging.mkdir(parents=True, exist_ok=True)
    _write_file(staging / check_file_name(name), data)


def staged_names(root: Path, flow: str, manifest_id: str) -> list[str]:
    """The files staged so far (a half-written ``.tmp`` is not one)."""
    staging = staging_dir(root, flow, manifest_id)
    if not staging.is_dir():
        return []
    return sorted(p.name for p in staging.iterdir() if not p.name.startswith("."))


def commit(root: Path, flow: str, manifest_id: str) -> None:
    """Rename the staging directory into place: the one step that makes it a delivery."""
    staging = staging_dir(root, flow, manifest_id)
    final = final_dir(root, flow, manifest_id)
    for torn in staging.glob(".*"):  # a temporary file a killed writer left: not a file of it
        torn.unlink()
    fsync_dir(staging)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, final)
    fsync_dir(final.parent)
    fsync_dir(staging.parent)


def write_layout(
    root: Path, flow: str, manifest_id: str, files: Iterable[tuple[str, bytes]]
) -> bool:
    """Write a whole delivery (``COMPLETE`` among ``files``, last). False if already there.

    Raises :class:`DestinationUnavailable` when the directory cannot be written; what was
    staged is removed, and nothing is in place.
    """
    if is_complete(root, flow, manifest_id):
        return False
    staging = staging_dir(root, flow, manifest_id)
    final = final_dir(root, flow, manifest_id)
    try:
        if final.exists():
            # Not ours to delete (the rename makes a directory whole or absent): say so.
            raise DestinationUnavailable(
                f"{final} exists without {COMPLETE}; move it away and retry the delivery"
            )
        if staging.exists():
            shutil.rmtree(staging)  # a crash's leftovers: rewritten from the start
        staging.mkdir(parents=True)
        for name, data in files:
            _write_file(staging / check_file_name(name), data)
        commit(root, flow, manifest_id)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if is_complete(root, flow, manifest_id):  # another writer finished it meanwhile
            return False
        raise DestinationUnavailable(
            f"the directory destination {root} could not be written "
            f"({type(exc).__name__}: {exc.strerror or exc})"
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return True


class DirectoryDestination:
    """Deliveries as directories under ``root`` (see the module docstring)."""

    name = "files"

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"DirectoryDestination({str(self.root)!r})"

    def path_of(self, flow: str, manifest_id: str) -> Path:
        return final_dir(self.root, flow, manifest_id)

    def deliver(self, delivery: Delivery) -> None:
        write_layout(self.root, delivery.flow, delivery.manifest_id, layout(delivery))

    def delivered(self, flow: str, manifest_id: str) -> bool:
        return is_complete(self.root, flow, manifest_id)
