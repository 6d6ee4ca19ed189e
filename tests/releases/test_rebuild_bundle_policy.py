"""Rebuilds that differ, trust-bundle validity, and policy invariants."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from release_helpers import ALICE, AUTHOR, BOB, BUILDER_ID, REPO_URI, T0, Keys, holder, trust_bundle

from bastion.clock import FixedClock
from bastion.demo.release_sample import commit_files, init_sample_repo
from bastion.releases.builder import build_with_provenance
from bastion.releases.bundle import load_trust_bundle
from bastion.releases.errors import ReleaseRejected
from bastion.releases.files import load_policy, save_policy
from bastion.releases.policy import ReleasePolicy, RepositoryRule
from bastion.releases.rebuild import rebuild

NONDETERMINISTIC = "import os, sys, time\nopen(sys.argv[1], 'w').write(str(time.time_ns()))\n"


def test_rebuild_detects_a_build_that_is_not_reproducible(
    tmp_path: Path, keys: Keys, policy: ReleasePolicy
) -> None:
    repo = tmp_path / "r"
    init_sample_repo(repo, author=AUTHOR, when=T0)
    commit_files(repo, {"build.py": NONDETERMINISTIC}, author=AUTHOR, when=T0, message="nd")
    build = build_with_provenance(
        repo_path=repo,
        repository_uri=REPO_URI,
        revision="HEAD",
        command=["python3", "build.py", "out.bin"],
        output="out.bin",
        builder_id=BUILDER_ID,
        builder_key=keys.builder,
        clock=FixedClock(T0),
    )
    result = rebuild(build.provenance, policy, repo_path=repo, artifact=build.artifact)
    assert not result.reproducible
    assert result.rebuilt_sha256 != build.sha256 and result.expected_sha256 == [build.sha256]


def test_rebuild_runs_nothing_for_untrusted_provenance(
    tmp_path: Path, keys: Keys, policy: ReleasePolicy
) -> None:
    repo = tmp_path / "r"
    init_sample_repo(repo, author=AUTHOR, when=T0)
    marker = tmp_path / "ran"
    commit_files(
        repo,
        {"evil.py": f"open({str(marker)!r}, 'w').write('x')\n"},
        author=AUTHOR,
        when=T0,
        message="evil",
    )
    forged = build_with_provenance(
        repo_path=repo,
        repository_uri=REPO_URI,
        revision="HEAD",
        command=["python3", "evil.py"],
        output="evil.py",
        builder_id=BUILDER_ID,
        builder_key=keys.attacker,
        clock=FixedClock(T0),
    )
    assert marker.exists()  # the attacker's own build ran it
    marker.unlink()
    with pytest.raises(ReleaseRejected):
        rebuild(forged.provenance, policy, repo_path=repo)
    assert not marker.exists()


def _bundle(keys: Keys, policy: ReleasePolicy, **kw: Any) -> dict[str, Any]:
    return trust_bundle(
        keys, policy, "log.test.example/releases+01234567+AQ==", [], 0, **kw
    ).to_json()


def test_bundle_validity_window(keys: Keys, policy: ReleasePolicy) -> None:
    bundle = load_trust_bundle(_bundle(keys, policy))
    bundle.check_current(datetime(2026, 6, 1, tzinfo=UTC))
    with pytest.raises(ReleaseRejected) as err:
        bundle.check_current(datetime(2027, 1, 1, tzinfo=UTC))
    assert err.value.code == "bundle.expired"
    with pytest.raises(ReleaseRejected) as err:
        bundle.check_current(datetime(2025, 1, 1, tzinfo=UTC))
    assert err.value.code == "bundle.not_yet_valid"


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d.update(expires_at="2025-01-01T00:00:00Z"), "after issued_at"),
        (lambda d: d.update(expires_at="tomorrow"), "RFC 3339"),
        (lambda d: d["custodian"].update(threshold=2), "threshold"),
        (lambda d: d["witnesses"].update(quorum=1), "quorum"),
        (lambda d: d["custodian"]["keys"][0].update(public_key="AAAA"), "32-byte"),
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d.pop("log"), "log"),
    ],
)
def test_malformed_bundle_is_named(
    keys: Keys, policy: ReleasePolicy, change: Any, needle: str
) -> None:
    doc = _bundle(keys, policy)
    change(doc)
    with pytest.raises(ReleaseRejected) as err:
        load_trust_bundle(doc)
    assert err.value.code in ("bundle.malformed", "time.malformed")
    assert needle in str(err.value)


def test_policy_refuses_one_key_for_two_reviewers(keys: Keys) -> None:
    with pytest.raises(ValueError, match="share a public key"):
        ReleasePolicy(reviewers=[holder(ALICE.email, keys.alice), holder(BOB.email, keys.alice)])
    with pytest.raises(ValueError, match="unique"):
        ReleasePolicy(
            repositories=[RepositoryRule(name="a", uri="u1"), RepositoryRule(name="a", uri="u2")]
        )
    with pytest.raises(ValueError):
        RepositoryRule(name="a", uri="u", required_reviewers=0)


def test_policy_file_round_trip_and_digest(tmp_path: Path, policy: ReleasePolicy) -> None:
    assert load_policy(tmp_path) == ReleasePolicy()  # nothing trusted until configured
    path = save_policy(tmp_path, policy)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = load_policy(tmp_path)
    assert loaded == policy and loaded.digest() == policy.digest()
    assert ReleasePolicy().digest() != policy.digest()
