"""``bastion egress keygen``, ``trust-bundle`` and ``verify`` on the command line: --json,
exit codes, keys created private, nothing written on a failure."""

from __future__ import annotations

import json
import re
import stat
import uuid
from pathlib import Path

import pytest

from bastion.egress.payload import private_key_from_pem, private_key_to_pem, public_key_from_b64
from bastion.egress.trust import parse_trust_bundle
from bastion.ledger.note import NoteVerifier
from witnessed_log import RunningWitness

from .builders import FLOW, Custodian, rows, write
from .cli_support import run


def test_keygen_writes_a_private_key_only_the_owner_reads(tmp_path: Path) -> None:
    out = run("egress", "keygen", "--out", str(tmp_path / "k"))
    private = Path(out["private_key"])
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = private_key_from_pem(private.read_bytes())
    assert public_key_from_b64(out["public_key"]).public_bytes_raw() == (
        key.public_key().public_bytes_raw()
    )
    again = run("egress", "keygen", "--out", str(tmp_path / "k"), code=2)
    assert again["ok"] is False and "refusing to overwrite" in again["message"]
    assert private_key_from_pem(private.read_bytes()).private_bytes_raw() == key.private_bytes_raw()


def _files(custodian: Custodian, tmp_path: Path) -> tuple[Path, Path]:
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps(custodian.trust().to_json()))
    key = tmp_path / "recipient.pem"
    key.write_bytes(private_key_to_pem(custodian.recipient))
    return trust, key


def test_verify_a_folder_of_deliveries_in_run_order_then_nothing_new(
    custodian: Custodian, tmp_path: Path
) -> None:
    trust, key = _files(custodian, tmp_path)
    first = custodian.build(rows(3))
    second = custodian.build(rows(2, start=3), run=2, previous=first.manifest_id)
    inbox = tmp_path / "inbox"
    for built in (second, first):  # arrival order does not matter
        write(inbox / built.delivery.path, built.delivery)
    args = ("--trust", str(trust), "--key", str(key), "--state", str(tmp_path / "s.sqlite"))
    out = run("egress", "verify", str(inbox), *args, "--out", str(tmp_path / "out"))
    assert [v["run"] for v in out["verified"]] == [1, 2]
    assert all(v["recorded"] for v in out["verified"])
    assert (tmp_path / "out" / FLOW / second.manifest_id / "chunk-00000.parquet").is_file()
    again = run("egress", "verify", str(inbox), *args, "--out", str(tmp_path / "out"))
    assert again["verified"] == []
    # One delivery named directly, already accepted: a replay, refused.
    replay = run(
        "egress",
        "verify",
        str(inbox / first.delivery.path),
        *args,
        "--out",
        str(tmp_path / "o2"),
        code=6,
    )
    assert replay["detail"]["code"] == "egress.replay"


def test_verify_refuses_a_tampered_chunk_with_its_code_and_writes_nothing(
    custodian: Custodian, tmp_path: Path
) -> None:
    trust, key = _files(custodian, tmp_path)
    built = custodian.build()
    path = write(tmp_path / "in", built.delivery)
    chunk = path / "chunk-00000.hpke"
    chunk.write_bytes(chunk.read_bytes()[:-1] + bytes([chunk.read_bytes()[-1] ^ 1]))
    out = tmp_path / "out"
    failed = run(
        "egress",
        "verify",
        str(path),
        "--trust",
        str(trust),
        "--key",
        str(key),
        "--out",
        str(out),
        code=6,
    )
    assert failed["ok"] is False and failed["detail"]["code"] == "egress.chunk.tampered"
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("which", ["trust", "key"])
def test_verify_names_a_bad_trust_bundle_or_key_file(
    custodian: Custodian, tmp_path: Path, which: str
) -> None:
    trust, key = _files(custodian, tmp_path)
    path = write(tmp_path / "in", custodian.build().delivery)
    bad = trust if which == "trust" else key
    bad.write_text('{"format": "bastion-egress-trust/v1"}' if which == "trust" else "nope")
    failed = run("egress", "verify", str(path), "--trust", str(trust), "--key", str(key), code=2)
    assert str(bad) in failed["message"]
    code = "egress.trust.malformed" if which == "trust" else "egress.key.malformed"
    assert failed["detail"]["code"] == code


@pytest.fixture
def home(tmp_path: Path, witness_servers: list[RunningWitness]) -> tuple[Path, str]:
    home = tmp_path / "home"
    origin = f"egress.test.example/{uuid.uuid4().hex[:8]}"
    summary = run("init", "--home", str(home), "--origin", origin)
    verifier = NoteVerifier.from_vkey(summary["log_vkey"])
    for w in witness_servers:
        w.witness.logs[origin] = [verifier]
    entries = ", ".join(f'"{w.url} {w.witness.vkey}"' for w in witness_servers)
    cfg = home / "bastion.toml"
    text = re.sub(r"witnesses = \[\]", f"witnesses = [{entries}]", cfg.read_text())
    cfg.write_text(text.replace("witness_quorum = 0", "witness_quorum = 2"))
    return home, summary["log_vkey"]


def test_trust_bundle_from_the_home_log(home: tuple[Path, str], tmp_path: Path) -> None:
    path, vkey = home
    out = tmp_path / "trust.json"
    done = run(
        "egress",
        "trust-bundle",
        "--out",
        str(out),
        "--home",
        str(path),
        "--flow",
        "video-stats=video,month,views",
        "--flow",
        "engagement=region,count",
    )
    assert done["flows"] == ["engagement", "video-stats"]
    trust = parse_trust_bundle(out.read_bytes())
    assert trust.log.verifier_key == vkey and trust.quorum == 2 and len(trust.witnesses) == 3
    assert trust.flow_fields("video-stats") == {"video", "month", "views"}
    bad = run(
        "egress",
        "trust-bundle",
        "--out",
        str(tmp_path / "t2.json"),
        "--home",
        str(path),
        "--flow",
        "no-fields",
        code=2,
    )
    assert "--flow" in bad["message"] and not (tmp_path / "t2.json").exists()
