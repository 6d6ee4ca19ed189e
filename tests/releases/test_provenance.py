"""Provenance acceptance: trusted builder, allowlist, build type, exact parameters, digest."""

from __future__ import annotations

from typing import Any

import pytest
from release_helpers import ARTIFACT_SHA, COMMIT, Keys, provenance

from bastion.releases.dsse import Envelope, sign_envelope
from bastion.releases.errors import ReleaseRejected
from bastion.releases.intoto import PAYLOAD_TYPE
from bastion.releases.policy import GIT_COMMAND_BUILD_TYPE, ReleasePolicy
from bastion.releases.provenance import check_provenance


def rejected(env: Envelope, policy: ReleasePolicy, sha: str = ARTIFACT_SHA) -> str:
    with pytest.raises(ReleaseRejected) as err:
        check_provenance(env, sha, policy)
    return err.value.code


def test_good_provenance_is_accepted(keys: Keys, policy: ReleasePolicy) -> None:
    accepted = check_provenance(provenance(keys.builder), ARTIFACT_SHA, policy)
    assert accepted.commit == COMMIT
    assert accepted.repository.name == "sample-app"
    assert accepted.builder_id == "https://builder.example/ci"
    assert accepted.build_type == GIT_COMMAND_BUILD_TYPE
    assert accepted.rebuild_command == ["python3", "build.py", "dist/app.tar.gz"]


def test_untrusted_builder_key(keys: Keys, policy: ReleasePolicy) -> None:
    assert rejected(provenance(keys.attacker), policy) == "envelope.threshold"


def test_builder_not_on_allowlist(keys: Keys, policy: ReleasePolicy) -> None:
    env = provenance(keys.builder, builder_id="https://evil.example/ci")
    assert rejected(env, policy) == "provenance.builder_not_allowed"


def test_builder_key_must_belong_to_the_claimed_builder(keys: Keys, policy: ReleasePolicy) -> None:
    # other_builder is trusted, but only as itself: it cannot speak for the CI builder.
    env = provenance(keys.other_builder, builder_id="https://builder.example/ci")
    assert rejected(env, policy) == "provenance.builder_key_mismatch"


def _set(path: list[str], value: Any) -> Any:
    def mutate(data: dict[str, Any]) -> None:
        node = data["predicate"]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def test_unknown_build_type(keys: Keys, policy: ReleasePolicy) -> None:
    env = provenance(
        keys.builder, mutate=_set(["buildDefinition", "buildType"], "https://x.example/b")
    )
    assert rejected(env, policy) == "provenance.unknown_build_type"


def test_unexpected_external_parameter(keys: Keys, policy: ReleasePolicy) -> None:
    def add(data: dict[str, Any]) -> None:
        data["predicate"]["buildDefinition"]["externalParameters"]["env"] = {"DEBUG": "1"}

    with pytest.raises(ReleaseRejected) as err:
        check_provenance(provenance(keys.builder, mutate=add), ARTIFACT_SHA, policy)
    assert err.value.code == "provenance.external_parameters"
    assert "unexpected ['env']" in str(err.value)


def test_missing_external_parameter(keys: Keys, policy: ReleasePolicy) -> None:
    def drop(data: dict[str, Any]) -> None:
        del data["predicate"]["buildDefinition"]["externalParameters"]["output"]

    with pytest.raises(ReleaseRejected) as err:
        check_provenance(provenance(keys.builder, mutate=drop), ARTIFACT_SHA, policy)
    assert "missing ['output']" in str(err.value)


@pytest.mark.parametrize("output", ["/etc/passwd", "../outside", ".."])
def test_output_must_stay_in_checkout(keys: Keys, policy: ReleasePolicy, output: str) -> None:
    env = provenance(
        keys.builder, mutate=_set(["buildDefinition", "externalParameters", "output"], output)
    )
    assert rejected(env, policy) == "provenance.external_parameters"


def test_unknown_repository(keys: Keys, policy: ReleasePolicy) -> None:
    env = provenance(keys.builder, repository_uri="https://git.example/other")
    assert rejected(env, policy) == "provenance.unknown_repository"


def test_source_commit_must_match_parameters(keys: Keys, policy: ReleasePolicy) -> None:
    env = provenance(
        keys.builder,
        mutate=_set(["buildDefinition", "externalParameters", "commit"], "c" * 40),
    )
    assert rejected(env, policy) == "provenance.source"


def test_digest_mismatch(keys: Keys, policy: ReleasePolicy) -> None:
    assert rejected(provenance(keys.builder), policy, sha="0" * 64) == "artifact.digest_mismatch"


def test_provenance_with_wrong_predicate_type(keys: Keys, policy: ReleasePolicy) -> None:
    def retype(data: dict[str, Any]) -> None:
        data["predicateType"] = "https://slsa.dev/provenance/v0.2"

    assert rejected(provenance(keys.builder, mutate=retype), policy) == "statement.predicate_type"


def test_provenance_payload_not_a_statement(keys: Keys, policy: ReleasePolicy) -> None:
    env = sign_envelope(PAYLOAD_TYPE, b'{"_type": "nope"}', [keys.builder])
    assert rejected(env, policy) == "statement.malformed"


def test_malformed_predicate(keys: Keys, policy: ReleasePolicy) -> None:
    def gut(data: dict[str, Any]) -> None:
        del data["predicate"]["runDetails"]

    assert rejected(provenance(keys.builder, mutate=gut), policy) == "predicate.malformed"
