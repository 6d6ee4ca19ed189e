"""``bastion tickets open/show/close`` and ``bastion access request --all-subjects
--max-uses`` on an initialized home (SQLite)."""

from __future__ import annotations

from pathlib import Path

from .test_policy_cli_home import ALICE, home, person, run

__all__ = ["home"]  # the fixture, shared

HELPDESK = person("helpdesk", "ticketing_service", clearance="none", amr=["pwd"])


def test_tickets_open_show_close(home: Path) -> None:
    opened = run(
        home,
        "tickets",
        "open",
        "SUP-12",
        "--subject",
        "u1",
        "--subject",
        "u2",
        "--assignee",
        "alice",
        "--expires",
        "2d",
        "--as",
        HELPDESK,
    )
    assert opened["_exit"] == 0, opened
    assert opened["step"] == "opened" and opened["ticket"]["subjects"] == ["u1", "u2"]  # type: ignore[index]
    entry = run(home, "ledger", "entry", str(opened["ledger_index"]))
    assert entry["entry"]["type"] == "ticket"  # type: ignore[index]
    assert len(entry["entry"]["subject_refs"]) == 2  # type: ignore[index]
    assert '"u1"' not in str(entry["entry"])

    shown = run(home, "tickets", "show", "SUP-12")
    assert shown["ticket"]["status"] == "open" and shown["ticket"]["assignees"] == ["alice"]  # type: ignore[index]
    refused = run(home, "tickets", "open", "SUP-13", "--subject", "u1", "--as", ALICE)
    assert refused["_exit"] == 2 and "not-permitted" in str(refused["message"])
    too_long = run(
        home, "tickets", "open", "SUP-14", "--subject", "u1", "--expires", "60d", "--as", HELPDESK
    )
    assert too_long["_exit"] == 2 and "at most" in str(too_long["message"])

    closed = run(home, "tickets", "close", "SUP-12", "--as", HELPDESK)
    assert closed["step"] == "closed" and closed["ticket"]["status"] == "closed"  # type: ignore[index]
    assert run(home, "tickets", "show", "SUP-99")["_exit"] == 2


def test_access_request_for_every_subject_with_uses(home: Path) -> None:
    base = (
        "access",
        "request",
        "--as",
        ALICE,
        "--dataset",
        "users",
        "--fields",
        "location",
        "--justification",
        "customer_initiated_support",
        "--detail",
        "User reported the phone stolen",
        "--ticket",
        "SUP-9",
        "--purpose",
        "recovery",
    )
    unnamed = run(home, *base)
    assert unnamed["_exit"] == 2 and "all_subjects" in str(unnamed["message"])
    every = run(home, *base, "--all-subjects", "--max-uses", "3")
    assert every["_exit"] == 0, every
    request = every["request"]
    assert request["all_subjects"] is True and request["max_uses"] == 3  # type: ignore[index]
    assert request["approvers_required"] == 3  # type: ignore[index]
