"""The recipient's trust bundle: built from the log's anchors, parsed strictly, errors name
the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.egress.errors import EgressInputError
from bastion.egress.trust import build_trust_bundle, parse_trust_bundle
from bastion.ledger.anchors import LogAnchors, WitnessAnchor
from bastion.ledger.cosignature import CosignatureSigner
from bastion.ledger.note import NoteSigner

LOG = NoteSigner.generate("log.example/egress")
WITNESSES = [CosignatureSigner(f"w{i}.example", Ed25519PrivateKey.generate()) for i in range(2)]
CUSTODIAN = Ed25519PrivateKey.generate()


def _bundle() -> dict[str, Any]:
    anchors = LogAnchors(
        LOG.name, LOG.vkey, tuple(WitnessAnchor(w.name, w.vkey) for w in WITNESSES), 2
    )
    trust = build_trust_bundle(
        anchors, [("custodian", CUSTODIAN.public_key())], {"video-stats": ["video", "views"]}
    )
    return trust.to_json()


def test_a_built_bundle_round_trips_through_json() -> None:
    doc = _bundle()
    assert doc["format"] == "bastion-egress-trust/v1"
    trust = parse_trust_bundle(json.dumps(doc))
    assert trust.flow_fields("video-stats") == {"video", "views"}
    assert trust.flow_fields("other") is None
    assert trust.log_verifier().name == LOG.name
    assert [w.name for w in trust.witness_verifiers()] == ["w0.example", "w1.example"]
    assert trust.trusted_keys()[0].name == "custodian"


def _broken(path: str, value: object) -> dict[str, Any]:
    doc = _bundle()
    *parents, last = path.split(".")
    target: Any = doc
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("format", "bastion-trust-bundle/v1", "format"),
        ("quorum", 3, None),
        ("log.verifier_key", "not a key", "log"),
        ("log.origin", "another.example/log", "log"),
        ("witnesses.0.name", "impostor.example", "witnesses.0"),
        ("custodian_keys.0.public_key", "AAAA", "custodian_keys.0.public_key"),
        ("custodian_keys", [], "custodian_keys"),
        ("flows.video-stats.fields", ["_row"], "flows.video-stats.fields"),
        ("flows", {"../x": {"fields": ["a"]}}, "flows"),
        ("extra", 1, "extra"),
        ("quorum", _DELETE, "quorum"),
    ],
)
def test_a_bad_bundle_is_refused_naming_the_field(path: str, value: object, field: str) -> None:
    with pytest.raises(EgressInputError) as info:
        parse_trust_bundle(_broken(path, value), file="trust.json")
    assert info.value.code == "egress.trust.malformed"
    assert info.value.field == field
    assert "trust.json" in str(info.value)


def test_bundle_text_is_parsed_strictly() -> None:
    text = json.dumps(_bundle())
    for bad in (text[:-1], text[:-1] + ', "quorum": 1}', b"\xff"):
        with pytest.raises(EgressInputError) as info:
            parse_trust_bundle(bad)
        assert info.value.code == "egress.trust.malformed"
