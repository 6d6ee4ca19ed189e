"""Durable files: a rename or a new file survives a crash only once its directory is synced.

Every writer that publishes a file by rename (the log's tiles, the clean room's snapshot, an
egress spool and delivery, a recipient's verified files) ends with :func:`fsync_dir`.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flush ``path``'s entries (names created, renamed or removed in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
