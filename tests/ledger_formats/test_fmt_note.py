"""C2SP signed notes and checkpoints: shared vectors, malformed notes, wrong keys, tampering."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from bastion.errors import InputError, IntegrityError
from bastion.ledger.checkpoint import (
    Checkpoint,
    CheckpointError,
    open_checkpoint,
    parse_checkpoint,
    sign_checkpoint,
)
from bastion.ledger.merkle import EMPTY_ROOT, leaf_hash
from bastion.ledger.note import (
    KeyFormatError,
    NoteError,
    NoteSigner,
    NoteVerifier,
    generate_keys,
    open_note,
    parse_note,
    sign_note,
)

# Vendored (see vectors/README.md): the suite reads nothing outside the repository.
VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "vectors" / "signed-note" / "vectors.json").read_text()
)["vectors"]


@pytest.mark.parametrize("vec", VECTORS, ids=[v["vkey"].split("+")[0] for v in VECTORS])
def test_signed_note_vectors_verify(vec: dict[str, Any]) -> None:
    verifier = NoteVerifier.from_vkey(vec["vkey"])
    assert verifier.vkey == vec["vkey"]  # round trip, including '+' inside the base64
    opened = open_note(vec["note"], [verifier])
    assert opened.text == vec["text"]
    assert [s.name for s in opened.verified] == [verifier.name]
    assert opened.unknown == ()
    # bytes in, same result
    assert open_note(vec["note"].encode(), [verifier]).text == vec["text"]


@pytest.mark.parametrize("vec", [v for v in VECTORS if "skey" in v])
def test_signed_note_vectors_sign_exactly(vec: dict[str, Any]) -> None:
    signer = NoteSigner.from_skey(vec["skey"])
    assert signer.vkey == vec["vkey"]
    assert signer.skey == vec["skey"]
    assert signer.sign(vec["text"]) == vec["note"]


def test_vectors_include_plus_in_base64() -> None:
    assert any("+" in v["vkey"].split("+", 2)[2] for v in VECTORS) or any(
        "+" in v.get("skey", "").split("+", 4)[-1] for v in VECTORS
    )


def test_generated_keys_round_trip() -> None:
    for i in range(40):  # enough draws that some base64 contains '+' and '/'
        skey, vkey = generate_keys(f"log.example/{i}")
        signer = NoteSigner.from_skey(skey)
        assert signer.vkey == vkey
        note = signer.sign("hello\n")
        assert open_note(note, [NoteVerifier.from_vkey(vkey)]).text == "hello\n"


@pytest.mark.parametrize(
    "vkey",
    [
        "",
        "name",
        "name+530d903a",
        "+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",  # empty name
        "exa mple+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",  # space
        "example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",  # wrong id
        "example.com/foo+530d903+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",  # short id
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2",  # bad b64
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k!",
        "example.com/foo+530d903a+BOkyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",  # wrong type
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2kAAAA",  # too long
    ],
)
def test_bad_vkeys_rejected(vkey: str) -> None:
    with pytest.raises(KeyFormatError):
        NoteVerifier.from_vkey(vkey)
    assert issubclass(KeyFormatError, InputError)


def test_bad_skeys_rejected() -> None:
    skey = next(v["skey"] for v in VECTORS if "skey" in v)
    for bad in (skey.replace("PRIVATE", "PUBLIC"), skey[:-2], skey.replace("c74f20a3", "c74f20a4")):
        with pytest.raises(KeyFormatError):
            NoteSigner.from_skey(bad)


SIGNER = NoteSigner.generate("example.com/log")
OTHER = NoteSigner.generate("example.com/other")


def test_open_note_rules() -> None:
    note = sign_note("text\n", [SIGNER, OTHER])
    # unknown keys are ignored, but at least one known key must verify
    opened = open_note(note, [SIGNER.verifier()])
    assert [s.name for s in opened.verified] == ["example.com/log"]
    assert [s.name for s in opened.unknown] == ["example.com/other"]
    with pytest.raises(NoteError, match="not signed by any known key"):
        open_note(note, [NoteSigner.generate("example.com/third").verifier()])
    # a key with the same name but a different key is unknown, not a failure
    impostor = NoteSigner.generate("example.com/log")
    with pytest.raises(NoteError, match="not signed by any known key"):
        open_note(note, [impostor.verifier()])


def test_bad_signature_by_known_key_rejects_note() -> None:
    note = SIGNER.sign("text\n")
    text, sigs = parse_note(note)
    forged = text + "\n" + sigs[0].__class__(sigs[0].name, sigs[0].key_id, bytes(64)).line()
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(forged, [SIGNER.verifier()])
    # a good signature plus a bad one from the same key: still rejected
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(note + forged.split("\n\n")[1], [SIGNER.verifier()])
    # tampered text
    with pytest.raises(NoteError):
        open_note(note.replace("text", "test"), [SIGNER.verifier()])


def test_duplicate_signature_counted_once() -> None:
    note = SIGNER.sign("text\n")
    doubled = note + note.split("\n\n")[1]
    opened = open_note(doubled, [SIGNER.verifier()])
    assert len(opened.verified) == 1


@pytest.mark.parametrize(
    "note",
    [
        "",
        "text\n",  # no signatures
        "text\n\n",  # blank line but no signatures
        "text\n\n— example.com/log AAAA\n",  # signature too short
        "text\n\n— example.com/log AAAAAAAA",  # no final newline
        "text\n\n- example.com/log AAAAAAAA\n",  # hyphen, not em dash
        "text\n\n—example.com/log AAAAAAAA\n",
        "text\n\n— example.com/log\n",
        "text\n\n— example com/log AAAAAAAA\n",
        "text\n\n— example.com/log AAAAAAA=\n",  # bad base64
        "te\txt\n\n— example.com/log AAAAAAAA\n",  # control character
        "text\r\n\n— example.com/log AAAAAAAA\n",
        "text\n\n— example.com/log AAAAAAAA\n\n",
        "text\n\n\n",
        "text\n\n— a AAAAAAAA\n" * 1 + "— a AAAAAAAA\n" * 100,  # too many signatures
    ],
)
def test_malformed_notes_rejected(note: str) -> None:
    with pytest.raises(NoteError):
        open_note(note, [SIGNER.verifier()])


def test_invalid_utf8_rejected() -> None:
    with pytest.raises(NoteError, match="UTF-8"):
        parse_note(b"\xff\n\n\xe2\x80\x94 a AAAAAAAA\n")


def test_text_with_blank_lines_splits_at_last_blank_line() -> None:
    text = "line one\n\nline three\n"
    note = SIGNER.sign(text)
    assert open_note(note, [SIGNER.verifier()]).text == text


def test_sign_refuses_bad_text() -> None:
    with pytest.raises(NoteError):
        SIGNER.sign("no newline")
    with pytest.raises(NoteError):
        SIGNER.sign("bell\x07\n")


# --- checkpoints -------------------------------------------------------------------------

ROOT = leaf_hash(b"x")


def test_checkpoint_round_trip() -> None:
    cp = Checkpoint("example.com/log", 20852163, ROOT, ("ext one",))
    body = cp.body()
    assert body == f"example.com/log\n20852163\n{base64.b64encode(ROOT).decode()}\next one\n"
    assert parse_checkpoint(body) == cp
    note = sign_checkpoint(cp, SIGNER)
    assert open_checkpoint(note, SIGNER.verifier()) == cp
    empty = Checkpoint("example.com/log", 0, EMPTY_ROOT)
    assert parse_checkpoint(empty.body()) == empty


def test_spec_example_checkpoint_parses() -> None:
    body = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    cp = parse_checkpoint(body)
    assert (cp.origin, cp.size) == ("example.com/behind-the-sofa", 20852163)


B64 = base64.b64encode(ROOT).decode()


@pytest.mark.parametrize(
    "body",
    [
        f"o\n1\n{B64}",  # no final newline
        "o\n1\n",
        f"\n1\n{B64}\n",  # empty origin
        f"o\n01\n{B64}\n",  # leading zero
        f"o\n-1\n{B64}\n",
        f"o\n+1\n{B64}\n",
        f"o\n 1\n{B64}\n",
        f"o\n1.0\n{B64}\n",
        f"o\n99999999999999999999\n{B64}\n",  # above 2**63-1
        f"o\n1\n{B64[:-4]}\n",  # short hash
        f"o\n1\n{B64.rstrip('=')}\n",  # unpadded
        f"o\n1\n{B64}\n\n",  # empty extension line
        "o\n1\nnot base64!\n",
        f"o\n1\n{base64.b64encode(ROOT + b'x').decode()}\n",
    ],
)
def test_malformed_checkpoints_rejected(body: str) -> None:
    with pytest.raises(CheckpointError):
        parse_checkpoint(body)


def test_checkpoint_wrong_key_wrong_origin_tampered() -> None:
    cp = Checkpoint("example.com/log", 5, ROOT)
    note = sign_checkpoint(cp, SIGNER)
    with pytest.raises(IntegrityError):
        open_checkpoint(note, OTHER.verifier())
    with pytest.raises(IntegrityError):
        open_checkpoint(note.replace("\n5\n", "\n6\n"), SIGNER.verifier())
    # signed by the log's key, but for a different log identity
    foreign = sign_checkpoint(Checkpoint("example.com/elsewhere", 5, ROOT), SIGNER)
    with pytest.raises(CheckpointError, match="origin"):
        open_checkpoint(foreign, SIGNER.verifier())
    assert open_checkpoint(foreign, SIGNER.verifier(), origin="example.com/elsewhere").size == 5
