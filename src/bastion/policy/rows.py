"""Typed table rows for the policy package's stores (approvals, tickets, policy versions).

A row is a frozen dataclass whose fields are the table's columns, in order. Its SELECT list
is written from the dataclass (``columns``) and every row is built from that SELECT in one
place (``select``), so a query cannot fall out of step with the type that holds its result
and no caller reads a row by position."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any, Protocol, TypeVar

from bastion.store import Database


class _Row(Protocol):
    """A row dataclass: built from a SELECT of its own fields, in order."""

    def __init__(self, *values: Any) -> None: ...


R = TypeVar("R", bound=_Row)


def columns(row_type: type[Any]) -> str:
    """The SELECT list of a row dataclass: its fields, in order."""
    return ", ".join(f.name for f in fields(row_type))


def select(db: Database, row_type: type[R], tail: str, params: Sequence[Any] = ()) -> list[R]:
    """``SELECT <row_type's columns> <tail>``, each result row built as a ``row_type``."""
    sql = f"SELECT {columns(row_type)} {tail}"
    return [row_type(*values) for values in db.query(sql, tuple(params))]
