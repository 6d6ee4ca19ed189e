"""What the destinations share: their error, and the names a delivery carries, checked.

Imported by every destination and by the receiving side (no server code); ``base`` builds
destinations from config on top of it, so nothing here imports a destination.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from bastion.errors import InputError, StoreUnavailable

if TYPE_CHECKING:
    from bastion.egress.delivery import Delivery

COMPLETE = "COMPLETE"

# Names that travel as path segments (files, HTTP) and as subject tokens (NATS): no separator,
# no dot in a flow name (a NATS token boundary), nothing a path could climb out with.
_FLOW = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_MANIFEST_ID = re.compile(r"[0-9a-f]{32}")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class DestinationUnavailable(StoreUnavailable):
    """The destination could not be reached or written: nothing was marked delivered.

    A :class:`~bastion.errors.StoreUnavailable` (exit code 4, a 503 in the gateway): like a
    store that is down, it is the infrastructure's state, not the input's, and a retry later
    completes the delivery. The message names the destination, never a payload byte.
    """


# ---- the names a delivery carries ------------------------------------------------------------


def check_flow(flow: str) -> str:
    if not _FLOW.fullmatch(flow):
        raise InputError(
            "a flow name for a destination is 1-128 letters, digits, '-' or '_'", field="flow"
        )
    return flow


def check_manifest_id(manifest_id: str) -> str:
    if not _MANIFEST_ID.fullmatch(manifest_id):
        raise InputError("a manifest id is 32 lowercase hex digits", field="manifest_id")
    return manifest_id


def check_file_name(name: str) -> str:
    """A layout file name: one path segment (no '/', no '..', no leading dot)."""
    if not _FILE.fullmatch(name) or ".." in name:
        raise InputError(f"not a delivery file name: {name!r}", field="file")
    return name


def layout(delivery: Delivery) -> list[tuple[str, bytes]]:
    """The files to transport, in order, ``COMPLETE`` last (as ``Delivery.files`` gives them),
    each name checked again here: a destination writes them as paths and subjects."""
    check_flow(delivery.flow)
    check_manifest_id(delivery.manifest_id)
    files = [(check_file_name(n), bytes(b)) for n, b in delivery.files()]
    names = [n for n, _ in files]
    if len(set(names)) != len(names) or COMPLETE not in names or names[-1] != COMPLETE:
        raise InputError("a delivery's files are unique and end with COMPLETE", field="file")
    return files
