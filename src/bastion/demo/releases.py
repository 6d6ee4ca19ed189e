"""The release-assurance demo: review, build, approve, verify; then three rejected attempts.

``run_demo`` is called by ``bastion demo`` with live components. It creates a sample app
repository (fixed identities and dates), records a review by two reviewers who are not the
author, builds a reproducible artifact with signed SLSA provenance, has the custodian approve
it (VSA appended to the ledger), publishes a checkpoint, produces the client evidence and trust
bundle, verifies offline, and checks the rebuild is bit-for-bit identical. Then it shows
that a tampered artifact, a build from an unreviewed commit and a review signed by the
commit's own author are each rejected.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bastion.clock import Clock, iso
from bastion.demo.release_sample import (
    BUILD_COMMAND,
    BUILD_OUTPUT,
    Person,
    commit_files,
    init_sample_repo,
)
from bastion.events import Actor
from bastion.home import Home
from bastion.keys.signing import load_or_create_signing_key
from bastion.releases import files
from bastion.releases.approve import approve_release, custodian_verifier_id
from bastion.releases.builder import build_with_provenance
from bastion.releases.bundle import CustodianTrust, LogTrust, TrustBundle, WitnessTrust
from bastion.releases.dsse import public_key_to_b64
from bastion.releases.errors import ReleaseRejected
from bastion.releases.evidence import release_evidence
from bastion.releases.ledger_link import ReleaseLedger, witness_vkeys
from bastion.releases.policy import KeyHolder, ReleasePolicy, RepositoryRule
from bastion.releases.rebuild import rebuild
from bastion.releases.reviewing import initialize_releases, record_review
from bastion.releases.verify import DirectoryState, verify_release
from bastion.store import Database

APP, CHANNEL = "com.example.socialapp", "stable"
REPO_NAME, REPO_URI = "socialapp", "https://git.example.com/socialapp"
BUILDER_ID = "https://ci.example.com/builders/reproducible"

AUTHOR = Person("Dana Developer", "dana@dev.example.com")
REVIEWERS = (
    Person("Alice Auditor", "alice@custodian.example"),
    Person("Bob Reviewer", "bob@custodian.example"),
)


def run_demo(
    *, home: Home, db: Database, ledger: ReleaseLedger, clock: Clock, workdir: Path
) -> dict[str, Any]:
    """Run the scenario in ``workdir``; returns a JSON-able report (``ok`` is the verdict)."""
    started = time.perf_counter()
    initialize_releases(db)
    workdir.mkdir(parents=True, exist_ok=True)
    steps: list[dict[str, Any]] = []
    run_id = uuid.uuid4().hex[:12]
    rejections: list[dict[str, Any]] = []

    def step(name: str, **detail: Any) -> None:
        steps.append({"step": name, "ok": True, **detail})

    def expect_rejection(name: str, attempt: Callable[[], Any]) -> None:
        try:
            outcome = attempt()
        except ReleaseRejected as exc:
            rejections.append(
                {"attempt": name, "rejected": True, "code": exc.code, "message": exc.detail}
            )
            return
        code = getattr(outcome, "code", None)
        ok = getattr(outcome, "ok", True)
        rejections.append(
            {
                "attempt": name,
                "rejected": not ok,
                "code": code,
                "message": getattr(outcome, "message", None),
            }
        )

    # Identities: demo reviewer and builder keys live in the work directory; the custodian's
    # key is the home's real one.
    keys_dir = workdir / "keys"
    reviewer_keys = {
        p.email: _key(keys_dir / f"reviewer-{p.email.split('@')[0]}.pem") for p in REVIEWERS
    }
    author_key = _key(keys_dir / "reviewer-dana.pem")
    builder_key = _key(keys_dir / "builder.pem")
    custodian_key = load_or_create_signing_key(home.keyring_dir, "custodian")
    policy = ReleasePolicy(
        repositories=[RepositoryRule(name=REPO_NAME, uri=REPO_URI, required_reviewers=2)],
        reviewers=[
            *(_holder(email, key) for email, key in reviewer_keys.items()),
            _holder(AUTHOR.email, author_key),  # Dana reviews others' code, never her own
        ],
        builders=[_holder(BUILDER_ID, builder_key)],
    )
    files.write_json(workdir / "policy.json", policy.model_dump(mode="json"))

    # 1. Source: a sample app by Dana.
    repo = workdir / "socialapp"
    if (repo / ".git").is_dir():
        # A rerun in the same place: a new change on top, so each run reviews a fresh commit.
        commit = commit_files(
            repo,
            {"app/build-id.txt": f"{run_id}\n"},
            author=AUTHOR,
            when=clock.now(),
            message="New build id",
        )
    else:
        commit = init_sample_repo(repo, author=AUTHOR, when=clock.now())
    step("repository", path=str(repo), commit=commit, author=AUTHOR.email)

    # 2. Review by two reviewers who are not the author.
    review = record_review(
        db,
        policy,
        repo_path=repo,
        repository=REPO_NAME,
        revision=commit,
        reviewers=[(email, key) for email, key in reviewer_keys.items()],
        verdict="approve",
        scope="full source: data flows, network endpoints, telemetry",
        notes="no data leaves the US region; telemetry off by default",
        clock=clock,
    )
    files.write_json(workdir / "review.dsse.json", review.envelope.to_json())
    step(
        "review",
        reviewers=[r.id for r in review.predicate.reviewers],
        range=f"{review.predicate.range.base or 'root'}..{commit}",
    )

    # 3. Reproducible build with signed provenance.
    build = build_with_provenance(
        repo_path=repo,
        repository_uri=REPO_URI,
        revision=commit,
        command=BUILD_COMMAND,
        output=BUILD_OUTPUT,
        builder_id=BUILDER_ID,
        builder_key=builder_key,
        clock=clock,
    )
    artifact = workdir / "app.tar.gz"
    artifact.write_bytes(build.artifact)
    files.write_json(workdir / "provenance.dsse.json", build.provenance.to_json())
    step("build", artifact=str(artifact), sha256=build.sha256, builder=BUILDER_ID)

    # 4. Custodian approval: VSA signed and appended to the ledger.
    verifier_id = custodian_verifier_id(ledger.origin)
    approved = approve_release(
        db=db,
        ledger=ledger,
        policy=policy,
        custodian_key=custodian_key,
        verifier_id=verifier_id,
        actor=Actor(id="release-custodian", kind="operator", role="release approver"),
        artifact=build.artifact,
        artifact_name=build.artifact_name,
        provenance=build.provenance,
        app=APP,
        channel=CHANNEL,
        clock=clock,
    )
    step("approve", log_index=approved.receipt.index, vsa_sha256=approved.vsa.sha256())

    # 5. Publish a checkpoint (witnesses cosign it), then the client's evidence and bundle.
    ledger.publish()
    evidence = release_evidence(
        db, ledger, artifact_sha256=build.sha256, app=APP, channel=CHANNEL, clock=clock
    )
    files.write_json(workdir / "evidence.json", evidence.to_json())
    bundle = TrustBundle(
        issued_at=iso(clock.now()),
        expires_at=iso(clock.now() + timedelta(days=90)),
        custodian=CustodianTrust(
            verifier_id=verifier_id, keys=[_holder("custodian", custodian_key)]
        ),
        log=LogTrust(origin=ledger.origin, vkey=ledger.vkey),
        witnesses=WitnessTrust(vkeys=witness_vkeys(ledger), quorum=ledger.quorum),
        policy=policy,
    )
    files.write_json(workdir / "trust-bundle.json", bundle.to_json())
    step(
        "publish",
        evidence=str(workdir / "evidence.json"),
        bundle=str(workdir / "trust-bundle.json"),
    )

    # 6. The phone's offline check.
    state = DirectoryState(workdir / "phone-state")
    result = verify_release(
        artifact, evidence, bundle, state, app=APP, channel=CHANNEL, now=clock.now()
    )
    steps.append(
        {
            "step": "verify",
            "ok": result.ok,
            "code": result.code,
            "reviewers": result.reviewers,
            "log_index": result.log_index,
            "checkpoint_size": (result.checkpoint or {}).get("size"),
        }
    )

    # 7. Anyone can rebuild and compare.
    rebuilt = rebuild(build.provenance, policy, repo_path=repo, artifact=build.artifact)
    steps.append(
        {"step": "rebuild", "ok": rebuilt.reproducible, "rebuilt_sha256": rebuilt.rebuilt_sha256}
    )

    # Rejected attempt 1: a tampered artifact.
    tampered = bytearray(build.artifact)
    tampered[len(tampered) // 2] ^= 0x01
    expect_rejection(
        "tampered artifact",
        lambda: verify_release(
            bytes(tampered), evidence, bundle, state, app=APP, channel=CHANNEL, now=clock.now()
        ),
    )

    # Rejected attempt 2: a build from a commit nobody reviewed.
    sneaky = commit_files(
        repo,
        {"app/config.json": f'{{"telemetry": true, "collector": "https://c.example/{run_id}"}}\n'},
        author=AUTHOR,
        when=clock.now() + timedelta(minutes=5),
        message="Enable telemetry",
    )
    unreviewed = build_with_provenance(
        repo_path=repo,
        repository_uri=REPO_URI,
        revision=sneaky,
        command=BUILD_COMMAND,
        output=BUILD_OUTPUT,
        builder_id=BUILDER_ID,
        builder_key=builder_key,
        clock=clock,
    )
    expect_rejection(
        "build from an unreviewed commit",
        lambda: approve_release(
            db=db,
            ledger=ledger,
            policy=policy,
            custodian_key=custodian_key,
            verifier_id=verifier_id,
            actor=Actor(id="release-custodian"),
            artifact=unreviewed.artifact,
            artifact_name=unreviewed.artifact_name,
            provenance=unreviewed.provenance,
            app=APP,
            channel=CHANNEL,
            clock=clock,
        ),
    )

    # Rejected attempt 3: the author reviews her own change.
    expect_rejection(
        "review signed by the commit's own author",
        lambda: record_review(
            db,
            policy,
            repo_path=repo,
            repository=REPO_NAME,
            revision=sneaky,
            reviewers=[
                (AUTHOR.email, author_key),
                (REVIEWERS[0].email, reviewer_keys[REVIEWERS[0].email]),
            ],
            verdict="approve",
            scope="telemetry change",
            notes="lgtm",
            clock=clock,
        ),
    )

    ok = all(s["ok"] for s in steps) and all(r["rejected"] for r in rejections)
    report = {
        "ok": ok,
        "app": APP,
        "channel": CHANNEL,
        "artifact_sha256": build.sha256,
        "steps": steps,
        "rejected_attempts": rejections,
        "workdir": str(workdir),
        "seconds": round(time.perf_counter() - started, 3),
        "verify_command": (
            f"bastion releases verify {artifact} --bundle {workdir / 'trust-bundle.json'} "
            f"--evidence {workdir / 'evidence.json'} --state {workdir / 'phone-state'} --json"
        ),
    }
    files.write_json(workdir / "report.json", report)
    return report


def _key(path: Path) -> Any:
    return files.load_key_file(path) if path.exists() else files.create_key_file(path)


def _holder(identity: str, key: Any) -> KeyHolder:
    return KeyHolder(id=identity, public_key=public_key_to_b64(key.public_key()))


def render_report(report: dict[str, Any], console: Console) -> None:
    """Show a ``run_demo`` report as two Rich tables (for ``bastion demo``)."""
    steps = Table(title=f"Release of {report['app']}/{report['channel']}")
    for col in ("step", "result", "detail"):
        steps.add_column(col)
    for s in report["steps"]:
        detail = ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("step", "ok"))
        steps.add_row(s["step"], "[green]ok[/]" if s["ok"] else "[red]FAILED[/]", detail)
    console.print(steps)
    attempts = Table(title="Attempts that must be rejected")
    for col in ("attempt", "result", "code"):
        attempts.add_column(col)
    for r in report["rejected_attempts"]:
        verdict = "[green]rejected[/]" if r["rejected"] else "[red]ACCEPTED[/]"
        attempts.add_row(r["attempt"], verdict, str(r["code"]))
    console.print(attempts)
    console.print(f"Check it yourself: {report['verify_command']}")
