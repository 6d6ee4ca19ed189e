"""End to end on the real Log with three real witnesses (quorum 2), on SQLite and PostgreSQL:
review -> build -> approve (ledger) -> publish -> evidence -> offline verify; and refusals."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from release_helpers import ALICE, AUTHOR, BOB, BUILDER_ID, CAROL, REPO_NAME, REPO_URI, Keys, holder

from bastion.clock import FixedClock, iso
from bastion.demo.release_sample import BUILD_COMMAND, BUILD_OUTPUT, commit_files
from bastion.events import Actor, decode_event
from bastion.ledger.log import Log
from bastion.releases.approve import ApprovedRelease, approve_release, custodian_verifier_id
from bastion.releases.builder import BuildResult, build_with_provenance
from bastion.releases.bundle import CustodianTrust, LogTrust, TrustBundle, WitnessTrust
from bastion.releases.errors import ReleaseRejected
from bastion.releases.evidence import release_evidence
from bastion.releases.ledger_link import witness_vkeys
from bastion.releases.policy import ReleasePolicy
from bastion.releases.rebuild import rebuild
from bastion.releases.reviewing import initialize_releases, record_review
from bastion.releases.verify import DirectoryState, verify_release
from bastion.store import Database

APP = "com.example.app"


class Flow:
    def __init__(
        self,
        db: Database,
        log: Log,
        policy: ReleasePolicy,
        keys: Keys,
        clock: FixedClock,
        repo: Path,
    ) -> None:
        self.db, self.log, self.policy, self.keys, self.clock, self.repo = (
            db,
            log,
            policy,
            keys,
            clock,
            repo,
        )
        initialize_releases(db)

    def review(self, reviewers: list[tuple[str, object]], rev: str = "HEAD") -> None:
        record_review(
            self.db,
            self.policy,
            repo_path=self.repo,
            repository=REPO_NAME,
            revision=rev,
            reviewers=reviewers,  # type: ignore[arg-type]
            verdict="approve",
            scope="all",
            notes="",
            clock=self.clock,
        )

    def build(self, rev: str = "HEAD") -> BuildResult:
        return build_with_provenance(
            repo_path=self.repo,
            repository_uri=REPO_URI,
            revision=rev,
            command=BUILD_COMMAND,
            output=BUILD_OUTPUT,
            builder_id=BUILDER_ID,
            builder_key=self.keys.builder,
            clock=self.clock,
        )

    def approve(self, build: BuildResult, artifact: bytes | None = None) -> ApprovedRelease:
        return approve_release(
            db=self.db,
            ledger=self.log,
            policy=self.policy,
            custodian_key=self.keys.custodian,
            verifier_id=custodian_verifier_id(self.log.origin),
            actor=Actor(id="custodian"),
            artifact=build.artifact if artifact is None else artifact,
            artifact_name=build.artifact_name,
            provenance=build.provenance,
            app=APP,
            channel="stable",
            clock=self.clock,
        )

    def bundle(self, days: int = 30) -> TrustBundle:
        now = self.clock.now()
        return TrustBundle(
            issued_at=iso(now - timedelta(days=1)),
            expires_at=iso(now + timedelta(days=days)),
            custodian=CustodianTrust(
                verifier_id=custodian_verifier_id(self.log.origin),
                keys=[holder("custodian", self.keys.custodian)],
            ),
            log=LogTrust(origin=self.log.origin, vkey=self.log.vkey),
            witnesses=WitnessTrust(vkeys=witness_vkeys(self.log), quorum=2),
            policy=self.policy,
        )

    def evidence(self, sha: str, known: tuple[int, ...] = ()) -> dict[str, object]:
        return release_evidence(
            self.db,
            self.log,
            artifact_sha256=sha,
            app=APP,
            channel="stable",
            clock=self.clock,
            known_sizes=known,
        ).to_json()


@pytest.fixture
def flow(
    db: Database,
    real_log: Log,
    policy: ReleasePolicy,
    keys: Keys,
    clock: FixedClock,
    sample_repo: tuple[Path, str],
) -> Flow:
    return Flow(db, real_log, policy, keys, clock, sample_repo[0])


def test_release_flow_verifies_offline_and_state_tracks_the_log(flow: Flow, tmp_path: Path) -> None:
    flow.review([(ALICE.email, flow.keys.alice), (BOB.email, flow.keys.bob)])
    build = flow.build()
    approved = flow.approve(build)
    # The log holds exactly the approval the custodian encoded: the binary-transparency record.
    assert flow.log.entry(approved.receipt.index) == approved.entry
    event = decode_event(approved.entry)
    assert event.type == "release.approval" and event.attestations is not None
    assert set(event.attestations) == {"provenance", "review"}
    flow.log.publish()
    note = flow.log.checkpoint_note()
    assert note.count("\n— witness") >= 2  # cosigned by at least the quorum

    bundle = flow.bundle()
    state = DirectoryState(tmp_path / "phone")
    first = flow.evidence(build.sha256)
    result = verify_release(
        build.artifact, first, bundle, state, app=APP, channel="stable", now=flow.clock.now()
    )
    assert result.ok, result.to_json()
    assert result.reviewers == [ALICE.email, BOB.email] and result.builder == BUILDER_ID
    assert result.policy_digest_matches_bundle

    # A second release: the range starts at the first review; Alice wrote it, Bob and Carol review.
    commit_files(
        flow.repo,
        {"app/feature.txt": "new\n"},
        author=ALICE,
        when=flow.clock.now() + timedelta(hours=1),
        message="feature",
    )
    with pytest.raises(ReleaseRejected):
        flow.review([(ALICE.email, flow.keys.alice), (BOB.email, flow.keys.bob)])
    flow.review([(BOB.email, flow.keys.bob), (CAROL.email, flow.keys.carol)])
    build2 = flow.build()
    assert build2.sha256 != build.sha256
    flow.approve(build2)
    flow.log.publish()
    # Evidence carries a consistency proof from the size served before, so the phone advances.
    second = flow.evidence(build2.sha256)
    result2 = verify_release(
        build2.artifact, second, bundle, state, app=APP, channel="stable", now=flow.clock.now()
    )
    assert result2.ok, result2.to_json()
    assert result2.reviewers == [BOB.email, CAROL.email]
    assert state.load(flow.log.origin).size == result2.checkpoint["size"]  # type: ignore[union-attr,index]

    # Rollback: the old evidence (smaller tree) is now refused by this phone.
    rolled = verify_release(
        build.artifact, first, bundle, state, app=APP, channel="stable", now=flow.clock.now()
    )
    assert not rolled.ok and rolled.code == "log.rollback"
    # Fresh evidence for the first release is fine.
    again = verify_release(
        build.artifact,
        flow.evidence(build.sha256),
        bundle,
        state,
        app=APP,
        channel="stable",
        now=flow.clock.now(),
    )
    assert again.ok, again.to_json()


def test_tampered_artifact_and_expired_bundle(flow: Flow) -> None:
    flow.review([(ALICE.email, flow.keys.alice), (BOB.email, flow.keys.bob)])
    build = flow.build()
    flow.approve(build)
    flow.log.publish()
    ev = flow.evidence(build.sha256)
    tampered = bytearray(build.artifact)
    tampered[100] ^= 1
    bad = verify_release(
        bytes(tampered), ev, flow.bundle(), app=APP, channel="stable", now=flow.clock.now()
    )
    assert bad.code == "artifact.digest_mismatch"
    expired = verify_release(
        build.artifact,
        ev,
        flow.bundle(),
        app=APP,
        channel="stable",
        now=flow.clock.now() + timedelta(days=31),
    )
    assert expired.code == "bundle.expired"


def test_unreviewed_commit_is_not_approved_and_nothing_is_logged(flow: Flow) -> None:
    flow.review([(ALICE.email, flow.keys.alice), (BOB.email, flow.keys.bob)])
    sneaky = commit_files(
        flow.repo,
        {"app/config.json": "{}\n"},
        author=AUTHOR,
        when=flow.clock.now() + timedelta(hours=1),
        message="sneaky",
    )
    build = flow.build(sneaky)
    before = flow.log.size()
    with pytest.raises(ReleaseRejected) as err:
        flow.approve(build)
    assert err.value.code == "review.unreviewed_commit"
    assert flow.log.size() == before
    with pytest.raises(ReleaseRejected) as err:
        flow.evidence(build.sha256)
    assert err.value.code == "artifact.not_approved"


def test_approval_refuses_a_digest_mismatch_and_duplicates(flow: Flow) -> None:
    flow.review([(ALICE.email, flow.keys.alice), (BOB.email, flow.keys.bob)])
    build = flow.build()
    with pytest.raises(ReleaseRejected) as err:
        flow.approve(build, artifact=build.artifact + b"!")
    assert err.value.code == "artifact.digest_mismatch"
    flow.approve(build)
    with pytest.raises(ReleaseRejected) as err:
        flow.approve(build)
    assert err.value.code == "release.already_approved"


def test_approval_refuses_provenance_from_an_untrusted_builder(flow: Flow) -> None:
    flow.review([(ALICE.email, flow.keys.alice), (BOB.email, flow.keys.bob)])
    good = flow.build()
    forged = build_with_provenance(
        repo_path=flow.repo,
        repository_uri=REPO_URI,
        revision="HEAD",
        command=BUILD_COMMAND,
        output=BUILD_OUTPUT,
        builder_id=BUILDER_ID,
        builder_key=flow.keys.attacker,
        clock=flow.clock,
    )
    assert forged.sha256 == good.sha256  # same bytes, but the signature is not a trusted builder's
    with pytest.raises(ReleaseRejected) as err:
        flow.approve(forged)
    assert err.value.code == "envelope.threshold"


def test_rebuild_is_bit_for_bit_and_detects_a_different_artifact(flow: Flow) -> None:
    build = flow.build()
    same = rebuild(build.provenance, flow.policy, repo_path=flow.repo, artifact=build.artifact)
    assert same.reproducible and same.rebuilt_sha256 == build.sha256
    other = rebuild(build.provenance, flow.policy, repo_path=flow.repo)
    assert other.reproducible
    with pytest.raises(ReleaseRejected) as err:  # an artifact the provenance does not name
        rebuild(build.provenance, flow.policy, repo_path=flow.repo, artifact=b"other")
    assert err.value.code == "artifact.digest_mismatch"
    assert hashlib.sha256(build.artifact).hexdigest() == build.sha256


def test_evidence_waits_for_a_cosigned_checkpoint(flow: Flow) -> None:
    flow.review([(ALICE.email, flow.keys.alice), (BOB.email, flow.keys.bob)])
    build = flow.build()
    flow.approve(build)
    from bastion.errors import LedgerUnavailable

    with pytest.raises(LedgerUnavailable):
        flow.evidence(build.sha256)  # appended, but no checkpoint published yet
