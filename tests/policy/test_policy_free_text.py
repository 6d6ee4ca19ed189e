"""Typed text and the public log: keyed commitments by default, the text kept in the database.

The commitment is a pure function of key and text; ``PublicText`` stores the text before
handing out its commitment, fails closed on a broken commitment function, and in "publish"
mode hands the text back unchanged. The setting comes from bastion.toml or its environment
override.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest

from bastion.clock import FixedClock
from bastion.errors import ConfigError, IntegrityError
from bastion.events import Actor, Approval, PolicyChange
from bastion.home import DEFAULT_CONFIG, settings_from
from bastion.ledger.log import Log
from bastion.policy import (
    AccessRequestSpec,
    ApprovalService,
    JustificationType,
    PolicyStore,
    PublicText,
    default_pack_text,
    text_commitment,
    text_key,
)
from bastion.store import Database

from .conftest import PEOPLE, TEXT_KEY, commit_text, recorded

KEY = bytes(range(32))
DETAIL = "checking jane.doe@example.com's account"


def spec() -> AccessRequestSpec:
    return AccessRequestSpec(
        dataset="users",
        fields=("email", "location"),
        subjects=("u1",),
        justification_type=JustificationType.CUSTOMER_INITIATED_SUPPORT,
        justification_detail=DETAIL,
        ticket="SUP-77",
        purpose="account recovery",
    )


def test_commitment_is_a_keyed_hmac_of_the_text() -> None:
    c = text_commitment(KEY, "checking jane.doe@example.com")
    expected = hmac.new(
        KEY, b"bastion/free-text/v1\x00checking jane.doe@example.com", hashlib.sha256
    ).hexdigest()
    assert c == "hmac-sha256:" + expected
    assert text_commitment(KEY, "checking jane.doe@example.com") == c  # deterministic
    assert text_commitment(bytes(32), "checking jane.doe@example.com") != c  # keyed
    assert text_commitment(KEY, "checking jane.doe@example.co") != c


def test_key_from_a_keyed_hash() -> None:
    def keyed_hash(value: str) -> str:
        return "hmac-sha256:" + hmac.new(KEY, value.encode(), hashlib.sha256).hexdigest()

    key = text_key(keyed_hash)
    assert len(key) == 32 and key != KEY
    with pytest.raises(IntegrityError):
        text_key(lambda _v: "hmac-sha256:" + "ab" * 16)  # a 128-bit ref is no key


def test_commit_stores_the_text_and_publish_does_not(policy_db: Database) -> None:
    public = PublicText(policy_db, commit_text)
    c = public.publish("Jane Doe called")
    assert c == text_commitment(TEXT_KEY, "Jane Doe called")
    assert public.stored(c) == "Jane Doe called" and public.matches("Jane Doe called", c)
    assert public.publish("Jane Doe called") == c  # stored once
    assert public.reason("approved", "  Jane Doe called ") == f"approved; text {c}"
    assert public.reason("approved", "  ") == "approved"
    plain = PublicText(policy_db, commit_text, "publish")
    assert plain.publish("Jane Doe again") == "Jane Doe again"
    assert plain.reason("justified", "ok then", published="justified: ok then") == (
        "justified: ok then"
    )
    assert plain.stored(text_commitment(TEXT_KEY, "Jane Doe again")) is None


@pytest.mark.parametrize(
    "broken", [lambda t: t, lambda t: "hmac-sha256:" + t, lambda _t: "hmac-sha256:" + "0" * 32]
)
def test_a_broken_commitment_function_stops_the_step(
    approvals: ApprovalService, ledger: Log, broken: object
) -> None:
    approvals.public_text = PublicText(approvals.db, broken)  # type: ignore[arg-type]
    before = ledger.size()
    with pytest.raises(IntegrityError, match="no commitment"):
        approvals.request(PEOPLE["staff"], spec())
    assert ledger.size() == before


def test_approval_steps_carry_commitments(approvals: ApprovalService, ledger: Log) -> None:
    out = approvals.request(PEOPLE["staff"], spec())
    approvals.deny(out.request.id, PEOPLE["officer1"], "Jane Doe says no")
    events = [e for e in recorded(ledger) if isinstance(e, Approval)]
    assert [e.reason for e in events[-2:]] == [
        f"requested; text {commit_text(DETAIL)}",
        f"denied; text {commit_text('Jane Doe says no')}",
    ]
    assert events[-1].justification_type == "customer_initiated_support"
    assert approvals.get(out.request.id).justification_detail == DETAIL  # kept in the database
    assert approvals.public_text.stored(commit_text("Jane Doe says no")) == "Jane Doe says no"


def test_a_policy_load_reason_is_committed_not_published(
    policy_db: Database, ledger: Log, clock: FixedClock, public_text: PublicText
) -> None:
    store = PolicyStore(policy_db, ledger, clock, public_text=public_text)
    why = "complaint from jane.doe@example.com"
    store.load(default_pack_text() + "\n// v2\n", Actor(id="ada", kind="operator"), why)
    change = recorded(ledger)[-1]
    assert isinstance(change, PolicyChange) and change.reason == commit_text(why)
    assert public_text.stored(change.reason) == why
    assert store.history(1)[0].reason == why  # the version row keeps the text
    # Publishing: the reason verbatim, as before.
    store.public_text = PublicText(policy_db, commit_text, "publish")
    store.load(default_pack_text() + "\n// v3\n", Actor(id="ada", kind="operator"), why)
    assert recorded(ledger)[-1].reason == why


def test_setting_from_config_and_environment() -> None:
    assert settings_from({}, {}).free_text == "commit"
    assert '\nfree_text = "commit"\n' in DEFAULT_CONFIG
    assert settings_from({"ledger": {"free_text": "publish"}}, {}).free_text == "publish"
    env = {"BASTION_FREE_TEXT": "publish"}
    assert settings_from({"ledger": {"free_text": "commit"}}, env).free_text == "publish"
    with pytest.raises(ConfigError, match="free_text"):
        settings_from({"ledger": {"free_text": "hash"}}, {})
