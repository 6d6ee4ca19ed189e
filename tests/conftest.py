"""Shared fixtures. Storage tests run on both backends; under CI=true PostgreSQL must be there."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.clock import FixedClock
from bastion.keys import softhsm
from bastion.store import Database, open_database

PG_URL = os.environ.get("BASTION_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3):
            return True
    except Exception:
        return False


_PG_OK = _pg_available()


def _require_pg() -> None:
    if not _PG_OK:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI=true but {PG_URL} is unreachable")
        pytest.skip("PostgreSQL not reachable (set CI=true to make this a failure)")


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url_factory(tmp_path: Path, backend: str) -> Iterator[object]:
    """Returns (url, schema) for a fresh, isolated database on the chosen backend."""
    schemas: list[str] = []

    def make() -> tuple[str, str | None]:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / f'db-{uuid.uuid4().hex[:8]}.db'}", None
        _require_pg()
        schema = f"t_{uuid.uuid4().hex[:12]}"
        schemas.append(schema)
        return PG_URL, schema

    yield make
    for schema in schemas:
        d = open_database(PG_URL, schema=schema)
        d.drop_schema()  # type: ignore[attr-defined]
        d.close()


@pytest.fixture
def db(tmp_path: Path, backend: str) -> Iterator[Database]:
    if backend == "sqlite":
        d = open_database(f"sqlite:///{tmp_path / 'bastion.db'}")
        yield d
        d.close()
        return
    _require_pg()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    d = open_database(PG_URL, schema=schema)
    yield d
    d.drop_schema()  # type: ignore[attr-defined]
    d.close()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture(scope="session")
def softhsm_conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not softhsm.available():
        pytest.fail("SoftHSM2 is required: run `make system` (scripts/install-system-deps.sh)")
    return softhsm.configure(tmp_path_factory.mktemp("softhsm"))


@pytest.fixture
def hsm_token(softhsm_conf: Path) -> Iterator[softhsm.SoftHsmToken]:
    """A fresh SoftHSM2 token, deleted after the test."""
    token = softhsm.make_token()
    yield token
    softhsm.delete_token(token)
