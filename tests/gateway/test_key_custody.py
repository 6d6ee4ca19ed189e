"""The key holder can stop a running gateway, and an HSM that comes back is used again.

Revocation runs while the gateway serves: threads keep reading protected values through the
real app over HTTP, the custodian revokes (removes the local key files and erasure store, or
destroys the HSM's keys from a tool of its own), the injectable clock moves past
``revocation_check_s``, and every read that starts after that is counted: none may release
anything. The token test moves the SoftHSM2 token's directory away (reads fail closed, 503
``key-unavailable``) and back (reads succeed again, same process).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from bastion.cli.home_cmd import init_home
from bastion.clock import FixedClock
from bastion.demo.platform import PRINCIPALS, bootstrap, ingest, sample_user
from bastion.gateway.app import create_app
from bastion.gateway.client import Context, GatewayClient, GatewayError
from bastion.gateway.runtime import Runtime
from bastion.gateway.server import ThreadedServer
from bastion.home import CONFIG_NAME, Home
from bastion.keys import softhsm
from bastion.store import Database

from .conftest import register_ticket

SUPPORT = Context(purpose="customer support", ticket="SUP-1")  # registered: names u00001
THREADS = 4


@pytest.fixture
def backend() -> str:
    return "sqlite"  # key custody does not depend on the database


@dataclass
class Outcome:
    phase: int  # 0: started before the bound passed; 1: after
    status: int
    kind: str
    released: bool


@dataclass
class Load:
    """Threads reading a protected value through the gateway, each read's outcome kept."""

    url: str
    token: str
    phase: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for _ in range(THREADS):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _run(self) -> None:
        with GatewayClient(self.url, token=self.token, timeout=60) as client:
            while not self._stop.is_set():
                phase = self.phase
                try:
                    out = client.read("users", "u00001", fields=["email"], context=SUPPORT)
                except GatewayError as exc:
                    self.outcomes.append(Outcome(phase, exc.status, exc.kind, False))
                except httpx.HTTPError as exc:
                    self.outcomes.append(Outcome(phase, -1, type(exc).__name__, False))
                else:
                    released = any(r.values.get("email") for r in out.records)
                    self.outcomes.append(Outcome(phase, 200, "", released))

    def wait_for(self, phase: int, count: int, timeout: float = 90) -> list[Outcome]:
        deadline = time.monotonic() + timeout
        while True:
            seen = [o for o in list(self.outcomes) if o.phase == phase]
            if len(seen) >= count or time.monotonic() > deadline:
                return seen
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


def _token(rt: Runtime) -> str:
    return rt.issuer.issue("alice", PRINCIPALS["alice"], ttl=timedelta(hours=1))


def _revoke_while_serving(rt: Runtime, clock: FixedClock, revoke: Callable[[], None]) -> None:
    with ThreadedServer(create_app(rt)) as server:
        load = Load(server.url, _token(rt)).start()
        try:
            before = load.wait_for(0, 20)
            assert sum(o.released for o in before) >= 20  # serving, under load
            revoke()
            clock.advance(timedelta(seconds=rt.home.settings.bounds.revocation_check_s))
            load.phase = 1  # every read that starts from now on is past the bound
            after = load.wait_for(1, 40)
        finally:
            load.stop()
    after = [o for o in load.outcomes if o.phase == 1]
    assert len(after) >= 40
    assert [o for o in after if o.released] == []  # not one release after the bound
    assert {(o.status, o.kind) for o in after} == {(503, "key-unavailable")}


# ---- the local keyring --------------------------------------------------------------------


def _remove_local_keys(keys_dir: Path, keep: Path) -> Callable[[], None]:
    """Revoke as the issue's custodian did: remove the KEK files and the erasure store (kept
    aside here, so the test can put them back)."""
    keep.mkdir()
    moved = [p for p in keys_dir.iterdir() if p.name.startswith("kek-") or p.name == "erasure.db"]
    for path in moved:
        shutil.move(path, keep / path.name)

    def restore() -> None:
        for path in moved:
            shutil.move(keep / path.name, path)

    return restore


@pytest.mark.timeout(180)
def test_revoking_the_local_keys_stops_releases_within_the_bound(
    runtime: Runtime, clock: FixedClock, tmp_path: Path
) -> None:
    register_ticket(runtime, "SUP-1", ["u00001"])
    restore: list[Callable[[], None]] = []
    _revoke_while_serving(
        runtime,
        clock,
        lambda: restore.append(_remove_local_keys(runtime.home.keyring_dir, tmp_path / "kept")),
    )
    # The custodian puts the keys back: releases resume at the next check, no restart.
    restore[0]()
    clock.advance(timedelta(seconds=runtime.home.settings.bounds.revocation_check_s))
    with (
        ThreadedServer(create_app(runtime)) as server,
        GatewayClient(server.url, token=_token(runtime)) as alice,
    ):
        out = alice.read("users", "u00001", fields=["email"], context=SUPPORT)
    assert out.records[0].values == {"email": "person1@example.com"}


# ---- a PKCS#11 token (SoftHSM2) -----------------------------------------------------------


def _pkcs11_home(path: Path, token: softhsm.SoftHsmToken) -> Home:
    init_home(path)
    cfg = path / CONFIG_NAME
    text = cfg.read_text().replace('provider = "local"', 'provider = "pkcs11"')
    text = text.replace('token = "bastion"', f'token = "{token.label}"\npin = "{token.pin}"')
    text = text.replace(
        'library = "/usr/lib/softhsm/libsofthsm2.so"', f'library = "{token.library}"'
    )
    cfg.write_text(text)
    home = Home.load(path)
    assert home.settings.key_provider == "pkcs11"
    return home


@pytest.fixture
def hsm_runtime(
    db: Database, tmp_path: Path, clock: FixedClock, hsm_token: softhsm.SoftHsmToken
) -> Iterator[Runtime]:
    rt = bootstrap(_pkcs11_home(tmp_path / "home", hsm_token), db, clock, publish_interval=0.05)
    ingest(rt, "users", [sample_user(n) for n in range(1, 6)])
    register_ticket(rt, "SUP-1", ["u00001"])
    yield rt
    rt.close()


_DESTROY = """
import sys, pkcs11
from pkcs11 import Attribute, ObjectClass
library, label, pin = sys.argv[1:]
session = pkcs11.lib(library).get_token(token_label=label).open(user_pin=pin, rw=True)
for key in list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})):
    key.destroy()
session.close()
"""


# python-pkcs11 complains (harmlessly) when a search iterator of a dead session is freed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.timeout(180)
def test_destroying_the_hsm_keys_stops_releases_within_the_bound(
    hsm_runtime: Runtime, clock: FixedClock, hsm_token: softhsm.SoftHsmToken
) -> None:
    def destroy() -> None:
        subprocess.run(
            [sys.executable, "-c", _DESTROY, hsm_token.library, hsm_token.label, hsm_token.pin],
            check=True,
            capture_output=True,
            timeout=60,
        )

    _revoke_while_serving(hsm_runtime, clock, destroy)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.timeout(180)
def test_an_hsm_token_that_comes_back_serves_again_without_restart(
    hsm_runtime: Runtime, hsm_token: softhsm.SoftHsmToken, tmp_path: Path
) -> None:
    where = softhsm.token_dir(hsm_token)
    away = tmp_path / "token-away"
    with (
        ThreadedServer(create_app(hsm_runtime)) as server,
        GatewayClient(server.url, token=_token(hsm_runtime), timeout=60) as alice,
    ):
        out = alice.read("users", "u00001", fields=["email"], context=SUPPORT)
        assert out.records[0].values == {"email": "person1@example.com"}
        shutil.move(where, away)
        try:
            for _ in range(3):  # gone: every read fails closed
                with pytest.raises(GatewayError) as err:
                    alice.read("users", "u00001", fields=["email"], context=SUPPORT)
                assert (err.value.status, err.value.kind) == (503, "key-unavailable")
                time.sleep(0.3)
        finally:
            shutil.move(away, where)
        # Back: the same gateway process serves again once its session is reopened.
        deadline = time.monotonic() + 30
        while True:
            try:
                out = alice.read("users", "u00001", fields=["email"], context=SUPPORT)
                break
            except GatewayError as exc:
                assert (exc.status, exc.kind) == (503, "key-unavailable"), str(exc)
                assert time.monotonic() < deadline, "the token came back but is not used"
                time.sleep(0.2)
        assert out.records[0].values == {"email": "person1@example.com"}
