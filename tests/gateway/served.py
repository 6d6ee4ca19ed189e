"""`bastion serve` as a real subprocess over a home on either backend: what the SIGKILL
reliability tests share (tests/gateway/test_reliability.py, test_write_reliability.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bastion.cli.home_cmd import init_home
from bastion.clock import SystemClock
from bastion.demo.platform import PRINCIPALS, initialize_all, sample_user
from bastion.gateway.runtime import own_issuer
from bastion.gateway.server import free_port
from bastion.home import Home
from bastion.policy.registry import PrincipalEntry, PrincipalRegistry
from bastion.store import Database, open_database
from bastion.vault import open_vault

ServedHome = tuple[Home, Database, dict[str, str]]


def _dsn(url: str, schema: str | None) -> str:
    return url if schema is None else f"{url}?options=-csearch_path%3D{schema}"


class Server:
    """One ``bastion serve`` process; ``kill`` is a SIGKILL, ``start`` waits for /health."""

    def __init__(self, home: Path, env: dict[str, str], log_file: Path) -> None:
        self.home, self.env, self.log_file = home, env, log_file
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bastion.cli.main",
                    "serve",
                    "--home",
                    str(self.home),
                    "--port",
                    str(self.port),
                    "--sweep-seconds",
                    "0",
                ],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_file.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not come up")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def served_home(
    tmp_path: Path,
    db_url_factory: Callable[[], tuple[str, str | None]],
    *,
    users: int,
    principals: Iterable[str],
) -> Iterator[ServedHome]:
    """An initialized home with ``users`` sample users ingested and the named demo
    principals registered; the env a ``bastion serve`` child needs to find its database."""
    url, schema = db_url_factory()
    env = {**os.environ}
    home_path = tmp_path / "home"
    if url.startswith("sqlite:///"):
        env.pop("BASTION_DATABASE_URL", None)
        home = init_home(home_path)
        db = open_database(home.database_url)
    else:
        env["BASTION_DATABASE_URL"] = _dsn(url, schema)
        os.environ["BASTION_DATABASE_URL"] = env["BASTION_DATABASE_URL"]
        try:
            home = init_home(home_path)
        finally:
            del os.environ["BASTION_DATABASE_URL"]
        db = open_database(url, schema=schema)
    clock = SystemClock()
    initialize_all(home, db, clock)
    vault = open_vault(home, db, clock)
    vault.ingest_rows("users", enumerate((sample_user(n) for n in range(1, users + 1)), 1))
    vault.provider.close()
    registry = PrincipalRegistry(db, clock)
    issuer = own_issuer(home, clock).issuer
    for name in principals:
        attrs = PRINCIPALS[name]
        registry.register(
            PrincipalEntry(
                issuer=issuer,
                sub=name,
                roles=(attrs["role"],),
                employer=attrs["employer"],
                employer_country=attrs["employer_country"],
                max_clearance=attrs["clearance"],
            )
        )
    try:
        yield home, db, env
    finally:
        db.close()
