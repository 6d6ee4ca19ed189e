"""The offline client check, piece by piece, against an in-memory log (forks are easy there)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from release_helpers import (
    ALICE,
    ARTIFACT,
    AUTHOR,
    BOB,
    ORIGIN,
    Keys,
    ToyLog,
    approval_entry,
    provenance,
    review,
    trust_bundle,
)

from bastion.events import canonical
from bastion.ledger.cosignature import CosignatureSigner
from bastion.ledger.note import NoteSigner
from bastion.releases.bundle import TrustBundle
from bastion.releases.dsse import sign_envelope
from bastion.releases.intoto import PAYLOAD_TYPE
from bastion.releases.policy import ReleasePolicy
from bastion.releases.verify import (
    DirectoryState,
    Evidence,
    MemoryState,
    VerificationResult,
    verify_release,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)
APP, CHANNEL = "com.example.app", "stable"  # what approval_entry approves
TARGET = {"app": APP, "channel": CHANNEL}


class World:
    def __init__(self, keys: Keys, policy: ReleasePolicy) -> None:
        self.keys, self.policy = keys, policy
        self.log_signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
        self.witnesses = [
            CosignatureSigner(f"witness{i}.example", Ed25519PrivateKey.generate()) for i in range(3)
        ]
        self.log = ToyLog(self.log_signer, self.witnesses)
        self.bundle = self.make_bundle()

    def make_bundle(self, **kw: Any) -> TrustBundle:
        return trust_bundle(
            self.keys,
            self.policy,
            self.log_signer.vkey,
            [w.vkey for w in self.witnesses],
            2,
            **kw,
        )

    def release(self, **kw: Any) -> tuple[bytes, int]:
        entry = approval_entry(self.keys, self.policy, **kw)
        return entry, self.log.append(entry)

    def verify(
        self, evidence: object, artifact: bytes = ARTIFACT, state: Any = None, **kw: Any
    ) -> VerificationResult:
        kw = {**TARGET, **kw}
        return verify_release(
            artifact,
            evidence,  # type: ignore[arg-type]
            kw.pop("bundle", self.bundle),
            state,
            now=NOW,
            **kw,
        )


@pytest.fixture
def world(keys: Keys, policy: ReleasePolicy) -> World:
    return World(keys, policy)


def test_valid_release_verifies(world: World) -> None:
    world.log.append(b"some earlier entry")
    entry, index = world.release()
    state = MemoryState()
    result = world.verify(world.log.evidence(entry, index), state=state)
    assert result.ok, result.to_json()
    assert result.code is None
    assert result.log_index == 1 and result.checkpoint and result.checkpoint["size"] == 2
    assert result.reviewers == [ALICE.email, BOB.email]
    assert result.policy_digest_matches_bundle is True
    assert [c.name for c in result.checks] == [
        "bundle",
        "artifact",
        "log.inclusion",
        "log.consistency",
        "attestations",
        "vsa",
        "provenance",
        "review",
    ]
    assert state.load(ORIGIN) is not None
    json.dumps(result.to_json())  # machine-readable


def test_evidence_and_bundle_round_trip_through_json(world: World) -> None:
    entry, index = world.release()
    ev = json.loads(json.dumps(world.log.evidence(entry, index).to_json()))
    bundle = json.dumps(world.bundle.to_json())
    assert verify_release(ARTIFACT, ev, bundle, app=APP, channel=CHANNEL, now=NOW).ok


def test_tampered_artifact(world: World) -> None:
    entry, index = world.release()
    result = world.verify(world.log.evidence(entry, index), artifact=ARTIFACT + b"\x00")
    assert not result.ok and result.code == "artifact.digest_mismatch"


def test_expired_trust_bundle(world: World) -> None:
    entry, index = world.release()
    bundle = world.make_bundle(expires_at="2026-05-31T23:59:59Z")
    result = world.verify(world.log.evidence(entry, index), bundle=bundle)
    assert result.code == "bundle.expired"


def test_wrong_custodian_key(world: World) -> None:
    entry, index = world.release(custodian_key=world.keys.attacker)
    result = world.verify(world.log.evidence(entry, index))
    assert result.code == "envelope.threshold"
    assert result.checks[-1].name == "vsa"


def test_unreviewed_commit(world: World) -> None:
    # The review approves another commit than the one the artifact was built from.
    other = review([world.keys.alice, world.keys.bob], [ALICE.email, BOB.email], commit="c" * 40)
    entry, index = world.release(review_env=other)
    assert world.verify(world.log.evidence(entry, index)).code == "review.unreviewed_commit"


def test_review_by_the_author(world: World) -> None:
    by_author = review([world.keys.alice, world.keys.dana], [ALICE.email, AUTHOR.email])
    entry, index = world.release(review_env=by_author)
    assert world.verify(world.log.evidence(entry, index)).code == "review.author_is_reviewer"


def test_unexpected_external_parameters(world: World) -> None:
    def add(data: dict[str, Any]) -> None:
        data["predicate"]["buildDefinition"]["externalParameters"]["extra"] = "x"

    bad = provenance(world.keys.builder, mutate=add)
    entry, index = world.release(provenance_env=bad)
    result = world.verify(world.log.evidence(entry, index))
    assert result.code == "provenance.external_parameters"


def test_vsa_for_other_channel_is_refused_when_client_names_its_channel(world: World) -> None:
    entry, index = world.release(channel="beta")
    ev = world.log.evidence(entry, index)
    assert world.verify(ev, channel="beta").ok
    assert world.verify(ev, channel="stable").code == "release.wrong_target"
    assert world.verify(ev, app="com.example.other", channel="beta").code == (
        "release.wrong_target"
    )


def test_entry_not_in_log(world: World) -> None:
    entry, index = world.release()
    ev = world.log.evidence(entry, index)
    other_entry = approval_entry(world.keys, world.policy, channel="beta")
    forged = Evidence(other_entry, ev.tlog_proof)
    assert world.verify(forged, channel="beta").code == "log.inclusion"


def test_missing_witness_cosignatures(world: World) -> None:
    entry, index = world.release()
    ev = world.log.evidence(entry, index)
    head, _, _ = ev.tlog_proof.partition("\n\n")
    one_witness = world.log.checkpoint_note(cosigners=1)
    thin = Evidence(entry, head + "\n\n" + one_witness)
    assert world.verify(thin).code == "log.cosignatures"


def test_checkpoint_signed_by_another_log_key(world: World) -> None:
    entry, _ = world.release()
    imposter = World(world.keys, world.policy)
    imposter.log.append(entry)
    assert world.verify(imposter.log.evidence(entry, 0)).code == "log.checkpoint"


def test_rollback_to_an_older_log(world: World) -> None:
    entry, index = world.release()
    old_evidence = world.log.evidence(entry, index)
    world.log.append(b"later entry")
    state = MemoryState()
    assert world.verify(world.log.evidence(entry, index), state=state).ok
    result = world.verify(old_evidence, state=state)
    assert result.code == "log.rollback"
    assert state.load(ORIGIN).size == 2  # type: ignore[union-attr]


def test_growth_needs_a_valid_consistency_proof(world: World) -> None:
    entry, index = world.release()
    state = MemoryState()
    assert world.verify(world.log.evidence(entry, index), state=state).ok
    for i in range(5):
        world.log.append(b"more %d" % i)
    missing = world.verify(world.log.evidence(entry, index), state=state)
    assert missing.code == "log.consistency_missing"
    ok = world.verify(world.log.evidence(entry, index, olds=(1,)), state=state)
    assert ok.ok, ok.to_json()
    assert state.load(ORIGIN).size == 6  # type: ignore[union-attr]


def test_split_view_same_size_different_root(world: World) -> None:
    entry, index = world.release()
    world.log.append(b"x")
    state = MemoryState()
    assert world.verify(world.log.evidence(entry, index), state=state).ok
    fork = ToyLog(world.log_signer, world.witnesses)  # same keys, different history
    fork.append(entry)
    fork.append(b"y")
    assert world.verify(fork.evidence(entry, 0), state=state).code == "log.split_view"


def test_split_view_bad_consistency_proof(world: World) -> None:
    entry, index = world.release()
    world.log.append(b"x")
    state = MemoryState()
    assert world.verify(world.log.evidence(entry, index), state=state).ok
    fork = ToyLog(world.log_signer, world.witnesses)
    for e in (entry, b"y", b"z"):
        fork.append(e)
    # A fork presents a proof from size 2, but its size-2 tree is not ours.
    result = world.verify(fork.evidence(entry, 0, olds=(2,)), state=state)
    assert result.code == "log.split_view"


def test_directory_state_persists_and_detects_corruption(world: World, tmp_path: Path) -> None:
    entry, index = world.release()
    state = DirectoryState(tmp_path / "state")
    assert world.verify(world.log.evidence(entry, index), state=state).ok
    assert DirectoryState(tmp_path / "state").load(ORIGIN).size == 1  # type: ignore[union-attr]
    for f in (tmp_path / "state").glob("*.json"):
        f.write_text("{broken")
    assert world.verify(world.log.evidence(entry, index), state=state).code == "state.corrupt"


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda ev: "not json", "evidence.malformed"),
        (lambda ev: {**ev, "format": "v0"}, "evidence.malformed"),
        (lambda ev: {**ev, "entry": "%%"}, "evidence.malformed"),
        (
            lambda ev: {**ev, "entry": base64.b64encode(b'{"type":"x"}').decode()},
            "evidence.malformed",
        ),
        (lambda ev: {**ev, "tlog_proof": "garbage"}, "log.inclusion"),
        (lambda ev: {**ev, "consistency": [{"old_size": "1"}]}, "evidence.malformed"),
    ],
)
def test_malformed_evidence(world: World, mutate: Any, code: str) -> None:
    entry, index = world.release()
    ev = mutate(world.log.evidence(entry, index).to_json())
    assert world.verify(ev).code == code


def test_malformed_envelope_inside_the_logged_entry(world: World) -> None:
    entry, index = world.release()
    doc = json.loads(entry)
    doc["attestations"]["review"]["payload"] = "***"
    broken = canonical(doc)
    world.log.append(broken)
    result = world.verify(world.log.evidence(broken, index + 1))
    assert result.code == "envelope.malformed"


def test_malformed_bundle(world: World) -> None:
    entry, index = world.release()
    doc = world.bundle.to_json()
    doc["witnesses"]["quorum"] = 9
    result = verify_release(
        ARTIFACT, world.log.evidence(entry, index), doc, app=APP, channel=CHANNEL, now=NOW
    )
    assert result.code == "bundle.malformed"


def test_verifier_imports_no_server_code() -> None:
    code = (
        "import sys, bastion.releases.verify as v; "
        "bad = [m for m in sys.modules if m.startswith(('bastion.store', 'bastion.wiring', "
        "'bastion.gateway', 'bastion.ledger.log', 'bastion.ledger.sequencer', "
        "'bastion.ledger.storage', 'bastion.releases.reviewing', 'bastion.releases.approve', "
        "'sqlite3', 'psycopg', 'httpx'))]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- one meaning per logged byte string (issue 11, item 4) -----------------------------------


def _logged(world: World, entry: bytes) -> Evidence:
    return world.log.evidence(entry, world.log.append(entry))


def test_entry_naming_a_key_twice_is_refused(world: World) -> None:
    entry, _ = world.release()
    assert entry.startswith(b'{"actor":')
    # A decoy digest first, the real one later: parsers that keep the last key (Python's json,
    # pydantic) see the real release, those that keep the first see the decoy.
    decoy = b'{"artifact_sha256":"' + b"0" * 64 + b'",' + entry[1:]
    result = world.verify(_logged(world, decoy))
    assert not result.ok
    assert result.code == "evidence.malformed" and "twice" in (result.message or "")


@pytest.mark.parametrize(
    "respell",
    [
        lambda doc: json.dumps(doc, indent=2).encode(),  # pretty-printed
        lambda doc: json.dumps(doc).encode(),  # ", " and ": " separators
        lambda doc: json.dumps(dict(reversed(doc.items())), separators=(",", ":")).encode(),
        lambda doc: canonical(doc) + b"\n",
    ],
    ids=["pretty", "spaced", "key-order", "trailing-newline"],
)
def test_entry_that_is_not_rfc8785_canonical_is_refused(world: World, respell: Any) -> None:
    entry, _ = world.release()
    doc = json.loads(entry)
    other = respell(doc)
    assert other != entry
    result = world.verify(_logged(world, other))
    assert not result.ok and result.code == "evidence.noncanonical", result.to_json()


def test_entry_with_escaped_char_that_still_means_the_app_is_refused(world: World) -> None:
    # "\u0063om.example.app" decodes to the approved app id: same meaning, other bytes.
    entry, _ = world.release()
    other = entry.replace(b'"app":"com.example.app"', b'"app":"\\u0063om.example.app"')
    assert other != entry and json.loads(other) == json.loads(entry)
    result = world.verify(_logged(world, other))
    assert result.code == "evidence.noncanonical"


def test_canonical_entry_is_accepted_after_the_checks(world: World) -> None:
    entry, _ = world.release()
    assert canonical(json.loads(entry)) == entry
    assert world.verify(_logged(world, entry)).ok


# --- bounded evidence: never a RecursionError (issue 11, item 5) -----------------------------

DEEP = "[" * 100_000 + "]" * 100_000


def _deep_evidence(world: World) -> str:
    entry, index = world.release()
    doc = world.log.evidence(entry, index).to_json()
    text = json.dumps(doc)
    return text[:-1] + ', "consistency_extra": ' + DEEP + "}"


@pytest.mark.parametrize("as_bytes", [False, True])
def test_deeply_nested_evidence_fails_verification_without_raising(
    world: World, as_bytes: bool
) -> None:
    deep = _deep_evidence(world)
    for evidence in (deep, DEEP, '{"format": ' + DEEP + "}"):
        result = world.verify(evidence.encode() if as_bytes else evidence)
        assert not result.ok and result.code == "evidence.malformed"
        assert "nested more than" in (result.message or "")
        assert result.checks[-1].ok is False


def test_deeply_nested_trust_bundle_fails_verification_without_raising(world: World) -> None:
    entry, index = world.release()
    doc = json.dumps(world.bundle.to_json())
    deep_bundle = doc[:-1] + ', "x": ' + DEEP + "}"
    result = world.verify(world.log.evidence(entry, index), bundle=deep_bundle)
    assert result.code == "bundle.malformed" and "nested" in (result.message or "")


def test_oversized_evidence_is_refused_before_parsing(world: World) -> None:
    entry, index = world.release()
    doc = world.log.evidence(entry, index).to_json()
    doc["padding"] = "x" * (1 << 20)
    result = world.verify(json.dumps(doc))
    assert result.code == "evidence.malformed" and "limit" in (result.message or "")


def test_oversized_entry_is_refused(world: World) -> None:
    entry, index = world.release()
    ev = world.log.evidence(entry, index).to_json()
    ev["entry"] = base64.b64encode(b" " * (64 * 1024 + 1)).decode()
    result = world.verify(ev)
    assert result.code == "evidence.malformed" and "exceeds" in (result.message or "")


def test_deeply_nested_signed_statement_fails_verification_without_raising(
    world: World,
) -> None:
    # Signed by both reviewers and logged, so only the payload's parse can stop it.
    deep_review = sign_envelope(PAYLOAD_TYPE, b"[" * 20_000, [world.keys.alice, world.keys.bob])
    entry, index = world.release(review_env=deep_review)
    result = world.verify(world.log.evidence(entry, index))
    assert result.code == "statement.malformed" and "nested" in (result.message or "")


def test_deeply_nested_verifier_state_is_corrupt_not_a_crash(world: World, tmp_path: Path) -> None:
    entry, index = world.release()
    state = DirectoryState(tmp_path / "state")
    assert world.verify(world.log.evidence(entry, index), state=state).ok
    for f in (tmp_path / "state").glob("*.json"):
        f.write_text(DEEP)
    assert world.verify(world.log.evidence(entry, index), state=state).code == "state.corrupt"


def test_unexpected_failure_inside_a_check_still_returns_a_failed_result(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bastion.releases.verify as verify_module

    def explode(*_: object, **__: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(verify_module, "check_review", explode)
    entry, index = world.release()
    result = world.verify(world.log.evidence(entry, index))
    assert not result.ok and result.code == "review.error"
    assert "RecursionError" in (result.message or "")


def _cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from bastion.cli.main import app

    return CliRunner().invoke(app, ["releases", "verify", *args])


def _files(world: World, tmp_path: Path, evidence: str) -> list[str]:
    artifact, ev, bundle = tmp_path / "app.bin", tmp_path / "ev.json", tmp_path / "trust.json"
    artifact.write_bytes(ARTIFACT)
    ev.write_text(evidence)
    bundle.write_text(json.dumps(world.bundle.to_json()))
    return [str(artifact), "--bundle", str(bundle), "--evidence", str(ev)]


def test_cli_refuses_deeply_nested_evidence_with_a_clear_message(
    world: World, tmp_path: Path
) -> None:
    args = [*_files(world, tmp_path, _deep_evidence(world)), "--app", "a.b", "--channel", "c"]
    result = _cli(*args, "--json")
    assert not isinstance(result.exception, RecursionError), result.exception
    assert result.exit_code == 2
    out = json.loads(result.stdout)
    assert out["error"] == "InputError" and "nested more than" in out["message"]
    # As a real process: one line on stderr, no traceback.
    proc = subprocess.run(
        [sys.executable, "-m", "bastion.cli.main", "releases", "verify", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr
    assert "nested more than" in proc.stderr


# --- the update checker names its target (issue 11, item 6) ----------------------------------


def test_update_checker_must_name_app_and_channel(world: World, tmp_path: Path) -> None:
    import inspect

    params = inspect.signature(verify_release).parameters
    for name in ("app", "channel"):
        assert params[name].default is inspect.Parameter.empty
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
    entry, index = world.release()
    ev = world.log.evidence(entry, index)
    for target in ({"app": None}, {"channel": ""}):
        result = world.verify(ev, **target)
        assert not result.ok and result.code == "release.target_missing"
    with pytest.raises(TypeError):
        verify_release(ARTIFACT, ev, world.bundle, now=NOW)  # type: ignore[call-arg]
    files = _files(world, tmp_path, json.dumps(ev.to_json()))
    for missing in (["--app", "com.example.app"], ["--channel", "stable"]):
        result = _cli(*files, *missing)
        assert result.exit_code == 2 and "Missing option" in result.output
    ok = _cli(*files, "--app", "com.example.app", "--channel", "stable", "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["ok"]
