"""The narrow storage interface and its two backends (SQLite embedded, PostgreSQL).

Every part writes portable SQL with ``?`` placeholders and owns its own tables through
:meth:`Database.migrate`. DDL may use ``{blob}`` and ``{int}`` for the two types whose
names differ between the dialects.
"""

from bastion.store.backends import open_database
from bastion.store.base import Cursor, Database, DuplicateKey

__all__ = ["Cursor", "Database", "DuplicateKey", "open_database"]
