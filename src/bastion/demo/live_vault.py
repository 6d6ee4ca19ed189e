"""The live vault's part of ``bastion demo``: the platform writes, the person exercises rights.

1. the profile service signs a user up and changes their email (each write a ``data.write``
   entry committed with the data; the caller keeps pseudonym tokens, not values);
2. the user downloads a copy of their data (recorded before any value leaves);
3. the user asks to be erased; a privacy officer's legal hold keeps the request pending
   until the hold is released, and then the erasure runs (crypto-shred);
4. the user fetches the deletion receipt and checks its inclusion proof offline, and a late
   write for them is refused (410).

Every step asserts what should happen; ``ok`` in the report is the verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from rich.console import Console

from bastion.clock import Clock
from bastion.demo.platform import PRINCIPALS, register_principals, sample_user
from bastion.gateway.app import create_app
from bastion.gateway.client import GatewayClient, GatewayError
from bastion.gateway.runtime import Runtime
from bastion.gateway.server import ThreadedServer
from bastion.home import Home
from bastion.ledger.note import NoteVerifier
from bastion.ledger.tlogproof import verify_proof
from bastion.store import Database

USER = "u95001"
SUBJECT_ATTRS = {"role": "subject", "amr": ["pwd", "otp"], "location_country": "US"}


class DemoFailed(AssertionError):
    pass


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise DemoFailed(what)


def run_demo(
    *, home: Home, db: Database, ledger: Any, clock: Clock, console: Console | None = None
) -> dict[str, Any]:
    """Run the scene against a home whose vault, log and policy exist; a JSON-able report."""
    out = console or Console()
    steps: list[dict[str, Any]] = []
    rt = Runtime.build(home, db, clock, ledger=ledger)
    register_principals(rt)

    def step(title: str, fn: Callable[[], dict[str, Any]]) -> None:
        out.print(f"[bold]▶ {title}[/]")
        steps.append({"step": title, "ok": True, **fn()})

    try:
        with ThreadedServer(create_app(rt)) as srv:

            def client(name: str, attrs: dict[str, Any] | None = None) -> GatewayClient:
                token = rt.issuer.issue(name, attrs or PRINCIPALS[name], ttl=timedelta(hours=1))
                return GatewayClient(srv.url, token=token)

            with (
                client("profile-service") as service,
                client(USER, SUBJECT_ATTRS) as me,
                client("omar") as officer,
            ):
                _scene(rt, service, me, officer, step, out)
    finally:
        rt.close()
    return {"ok": True, "steps": steps}


def _scene(
    rt: Runtime,
    service: GatewayClient,
    me: GatewayClient,
    officer: GatewayClient,
    step: Callable[[str, Callable[[], dict[str, Any]]], None],
    out: Console,
) -> None:
    def sign_up() -> dict[str, Any]:
        row = {**sample_user(95_001), "user_id": USER}
        created = service.write_records("users", [row], idempotency_key=f"signup-{USER}")
        rec = created.records[0]
        changed = service.change_record(
            "users", USER, {"email": "new.address@example.com"}, if_match=rec.version
        )
        version = changed.records[0].version
        out.print(
            f"    signed up {USER} (version {rec.version}, token {rec.tokens['user_id']}); "
            f"email changed → version {version}"
        )
        _expect(version == rec.version + 1, "the change makes the next version")
        return {"versions": [rec.version, version]}

    def download() -> dict[str, Any]:
        doc = me.export_subject(USER)
        records = int(doc["records"])
        emails = [r["values"].get("email") for r in doc["datasets"]["users"]["records"]]
        out.print(f"    the export holds {records} record(s), recorded before it left")
        _expect("new.address@example.com" in emails, "the export holds the changed email")
        return {"records": records}

    state: dict[str, str] = {}

    def erase_under_hold() -> dict[str, Any]:
        hold = officer.place_legal_hold(USER, "litigation hold 2026-17")["hold"]
        opened = me.request_erasure(USER)["request"]
        state["request"] = opened["id"]
        out.print(f"    erasure requested while a legal hold is in place: {opened['status']}")
        _expect(opened["status"] == "held", "a legal hold keeps the erasure pending")
        officer.release_legal_hold(hold["id"], "litigation settled")
        status = me.erasure_status(USER, opened["id"])
        out.print(f"    hold released; the erasure is now {status['request']['status']}")
        _expect(status["request"]["status"] == "executed", "releasing the hold runs it")
        return {"request": opened["id"]}

    def receipt() -> dict[str, Any]:
        status = me.erasure_status(USER, state["request"])
        deletion = status["request"]["deletion_receipt"]
        verify_proof(
            status["proof"], deletion_entry(deletion), NoteVerifier.from_vkey(rt.ledger.vkey)
        )
        out.print(
            f"    deletion receipt at index {deletion['index']}: inclusion proof checked offline"
        )
        try:
            service.write_records("users", [{**sample_user(95_001), "user_id": USER}])
        except GatewayError as exc:
            _expect(exc.status == 410, "a late write for an erased person is refused")
            out.print("    a late write for the erased user is refused: 410")
            return {"receipt_index": deletion["index"]}
        raise DemoFailed("a late write for an erased person was accepted")

    step("The profile service signs a user up and changes their email", sign_up)
    step("The user downloads their data", download)
    step("The user asks to be erased; a legal hold delays it until released", erase_under_hold)
    step("The user checks the deletion receipt offline", receipt)


def deletion_entry(deletion: dict[str, Any]) -> bytes:
    """The receipt's ledger entry bytes (canonical JSON of its event)."""
    from bastion.events import canonical

    return canonical(deletion["event"])
