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

from bastion.ledger.cosignature import CosignatureSigner
from bastion.ledger.note import NoteSigner
from bastion.releases.bundle import TrustBundle
from bastion.releases.policy import ReleasePolicy
from bastion.releases.verify import (
    DirectoryState,
    Evidence,
    MemoryState,
    VerificationResult,
    verify_release,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)


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
        self, evidence: Evidence, artifact: bytes = ARTIFACT, state: Any = None, **kw: Any
    ) -> VerificationResult:
        return verify_release(
            artifact, evidence, kw.pop("bundle", self.bundle), state, now=NOW, **kw
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
    assert verify_release(ARTIFACT, ev, bundle, now=NOW).ok


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
    assert world.verify(ev).ok
    assert world.verify(ev, channel="stable").code == "release.wrong_target"


def test_entry_not_in_log(world: World) -> None:
    entry, index = world.release()
    ev = world.log.evidence(entry, index)
    other_entry = approval_entry(world.keys, world.policy, channel="beta")
    forged = Evidence(other_entry, ev.tlog_proof)
    assert world.verify(forged).code == "log.inclusion"


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
    broken = json.dumps(doc).encode()
    world.log.append(broken)
    result = world.verify(world.log.evidence(broken, index + 1))
    assert result.code == "envelope.malformed"


def test_malformed_bundle(world: World) -> None:
    entry, index = world.release()
    doc = world.bundle.to_json()
    doc["witnesses"]["quorum"] = 9
    result = verify_release(ARTIFACT, world.log.evidence(entry, index), doc, now=NOW)
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
