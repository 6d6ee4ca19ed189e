"""in-toto Statement v1 parsing as the framework's rules say (issue 11, item 6): unknown fields
are ignored, the required ones are still required, and every subject carries a digest."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from release_helpers import ARTIFACT_SHA, COMMIT, Keys, provenance

from bastion.events import canonical
from bastion.releases.dsse import sign_envelope
from bastion.releases.errors import ReleaseRejected
from bastion.releases.intoto import PAYLOAD_TYPE, STATEMENT_TYPE, parse_statement
from bastion.releases.policy import ReleasePolicy
from bastion.releases.provenance import check_provenance
from bastion.releases.slsa import PROVENANCE_TYPE

PREDICATE = "https://example.test/predicate/v1"


def _statement(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": "app.tar.gz", "digest": {"sha256": ARTIFACT_SHA}}],
        "predicateType": PREDICATE,
        "predicate": {"x": 1},
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def _parse(doc: dict[str, Any]) -> Any:
    return parse_statement(json.dumps(doc).encode(), PREDICATE, "test")


def _refused(doc: dict[str, Any]) -> str:
    with pytest.raises(ReleaseRejected) as err:
        _parse(doc)
    assert err.value.code == "statement.malformed"
    return err.value.detail


def test_unknown_fields_are_ignored() -> None:
    doc = _statement(
        futureField={"nested": [1, 2]},
        subject=[
            {"name": "app.tar.gz", "digest": {"sha256": ARTIFACT_SHA}, "futureAnnotation": "x"}
        ],
    )
    statement = _parse(doc)
    assert statement.subject_digests("sha256") == {ARTIFACT_SHA}
    assert b"future" not in statement.to_payload()


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d.pop("_type"), "_type"),
        (lambda d: d.update(_type="https://in-toto.io/Statement/v0.1"), "_type"),
        (lambda d: d.pop("subject"), "subject"),
        (lambda d: d.update(subject=[]), "subject"),
        (lambda d: d.pop("predicateType"), "predicateType"),
        (lambda d: d.update(predicateType=""), "predicateType"),
    ],
    ids=["no-type", "old-type", "no-subject", "empty-subject", "no-predicate-type", "empty-pt"],
)
def test_required_fields_are_still_required(
    change: Callable[[dict[str, Any]], object], where: str
) -> None:
    doc = _statement()
    change(doc)
    assert where in _refused(doc)


@pytest.mark.parametrize(
    "subject",
    [
        {"name": "app.tar.gz", "uri": "https://cdn.example/app.tar.gz"},
        {"name": "app.tar.gz", "content": "aGVsbG8="},
        {"name": "app.tar.gz", "digest": {}},
    ],
    ids=["uri-only", "content-only", "empty-digest"],
)
def test_subject_without_a_digest_is_refused(subject: dict[str, Any]) -> None:
    good = {"name": "app.tar.gz", "digest": {"sha256": ARTIFACT_SHA}}
    detail = _refused(_statement(subject=[good, subject]))
    assert "subject" in detail and "digest" in detail


def test_statement_naming_a_key_twice_is_refused() -> None:
    payload = json.dumps(_statement()).encode()
    twice = payload[:-1] + b', "predicateType": "https://other.example/v1"}'
    with pytest.raises(ReleaseRejected) as err:
        parse_statement(twice, PREDICATE, "test")
    assert err.value.code == "statement.malformed" and "twice" in err.value.detail


def _signed_provenance(keys: Keys, mutate: Callable[[dict[str, Any]], None]) -> Any:
    doc = json.loads(provenance(keys.builder).payload)
    mutate(doc)
    return sign_envelope(PAYLOAD_TYPE, canonical(doc), [keys.builder])


def test_signed_provenance_with_unknown_statement_fields_is_accepted(
    keys: Keys, policy: ReleasePolicy
) -> None:
    def extend(doc: dict[str, Any]) -> None:
        assert doc["predicateType"] == PROVENANCE_TYPE
        doc["https://example.test/extension"] = {"any": "thing"}
        doc["subject"][0]["annotations_v2"] = ["x"]

    accepted = check_provenance(_signed_provenance(keys, extend), ARTIFACT_SHA, policy)
    assert accepted.commit == COMMIT


def test_signed_provenance_with_a_digestless_subject_is_refused(
    keys: Keys, policy: ReleasePolicy
) -> None:
    def add(doc: dict[str, Any]) -> None:
        doc["subject"].append({"name": "other.bin", "uri": "https://cdn.example/other.bin"})

    with pytest.raises(ReleaseRejected) as err:
        check_provenance(_signed_provenance(keys, add), ARTIFACT_SHA, policy)
    assert err.value.code == "statement.malformed" and "digest" in err.value.detail
