"""Shared fixtures. Storage tests run on both backends; under CI=true PostgreSQL must be there.

The suite runs in parallel under pytest-xdist (``make unit``: ``-n 2 --dist loadgroup``), so
every fixture makes its own state: a PostgreSQL schema, a NATS stream, a port, a directory
under ``tmp_path`` per test. :data:`SERIAL_GROUPS` names the tests that run one after another
on one worker, and why (docs/TESTING.md).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Rich fixes a console's width when it is made if COLUMNS is set, and the CLI makes its
# console at import. pytest-xdist's workers start with COLUMNS=80, which would pin every CLI
# table to 80 columns for the whole run; without it the console reads COLUMNS at each print,
# so a test's own ``env={"COLUMNS": ...}`` holds in a worker as in a plain run.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)

from bastion.clock import FixedClock
from bastion.keys import softhsm
from bastion.store import Database, open_database

# Tests that run as one unit on one xdist worker (``--dist loadgroup``), in collection order,
# never beside each other. An entry is a module (all its tests) or a ``module::test`` prefix.
SERIAL_GROUPS: dict[str, tuple[str, ...]] = {
    # SIGKILL under load: each drives child processes at full speed on both cores and kills
    # them at random moments. Beside each other they starve each other's load (the write test
    # asserts that enough writes were acknowledged to mean anything), so they take turns.
    "sigkill": (
        "tests/gateway/test_reliability.py",
        "tests/gateway/test_write_reliability.py",
        "tests/ledger/test_log_processes.py::test_kill_9_at_random_moments",
        "tests/cleanroom/test_cleanroom_snapshot_kill.py",
    ),
    # One Spark JVM (about 20 s to start, 1 GiB, and it stays up for the rest of the process):
    # on two workers there would be two, each slowing every test beside it.
    "spark": (
        "tests/cleanroom/test_cleanroom_engines.py",
        "tests/cleanroom/test_cleanroom_nonfinite.py",
    ),
    # A module fixture (a home with 40,000 events ingested and snapshotted through the CLI,
    # about 30 s) that each worker would otherwise build again.
    "cleanroom-cli": ("tests/cleanroom/test_cleanroom_cli.py",),
}


def serial_group(nodeid: str) -> str | None:
    """The :data:`SERIAL_GROUPS` group a test belongs to, if any."""
    for group, prefixes in SERIAL_GROUPS.items():
        if nodeid.startswith(prefixes):
            return group
    return None


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: absent without the plugin
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadgroup`` with :data:`SERIAL_GROUPS` as the groups; every other test is
    handed out on its own, as ``--dist load`` does.

    Not ``xdist_group`` marks: xdist carries a mark's group to its scheduler by rewriting the
    test's node id, which pytest 9.2's structured ids ignore, so the marks silently group
    nothing (pytest-dev/pytest-xdist#1386). The scheduler reads the node ids as they are.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class SerialGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return serial_group(nodeid) or super()._split_scope(nodeid)

    return SerialGroupScheduling(config, log)  # type: ignore[arg-type]


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
