"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519, and their key encodings.

Pure functions, no I/O. A note is UTF-8 text ending in a newline, a blank line, then one or more
signature lines ``— <name> base64(key ID || signature)``. Keys are exchanged as the Go
``golang.org/x/mod/sumdb/note`` encodings:

- verifier key (vkey): ``<name>+<8 hex key ID>+base64(0x01 || 32-byte public key)``
- signer key (skey):   ``PRIVATE+KEY+<name>+<8 hex key ID>+base64(0x01 || 32-byte seed)``

Base64 may itself contain ``+``, so keys are split on the first separators only.
Verification follows the spec: signatures by unknown keys are ignored, every signature by a
known key must verify, and at least one must.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion.errors import InputError, IntegrityError

ALG_ED25519 = 0x01
SIG_PREFIX = "— "  # em dash, space
MAX_SIGNATURES = 100  # the spec requires accepting at least 16; Go's note package allows 100
MAX_NOTE_BYTES = 1 << 20


class NoteError(IntegrityError):
    """A note that is malformed, or whose signatures do not verify."""


class KeyFormatError(InputError):
    """A verifier or signer key string that is not well formed."""


class Verifier(Protocol):
    """Anything that checks one kind of note signature (Ed25519 notes, cosignatures, ...)."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> int: ...

    @property
    def public_key_bytes(self) -> bytes: ...

    def verify(self, text: bytes, signature: bytes) -> bool:
        """`signature` is the signature bytes after the 4-byte key ID."""
        ...


class Signer(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> int: ...

    def sign_bytes(self, text: bytes) -> bytes:
        """The raw signature over `text` (without the key ID)."""
        ...


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, key ID, and the signature bytes after the key ID."""

    name: str
    key_id: int
    signature: bytes

    def line(self) -> str:
        return signature_line(self.name, self.key_id, self.signature)


@dataclass(frozen=True)
class OpenedNote:
    """A note whose text may be trusted: `verified` holds the checked known-key signatures."""

    text: str
    verified: tuple[NoteSignature, ...]
    unknown: tuple[NoteSignature, ...]


# --- helpers -----------------------------------------------------------------------------


def is_valid_name(name: str) -> bool:
    """Key names are non-empty and contain no Unicode space and no '+'."""
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


def key_id(name: str, alg: int, public_key: bytes) -> int:
    """SHA-256(name || 0x0A || alg || public key)[:4], big-endian."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def b64decode_strict(text: str, what: str) -> bytes:
    """Standard base64 with padding; anything else is rejected (no silent skipping)."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise KeyFormatError(f"{what} is not valid base64") from None


def signature_line(name: str, kid: int, signature: bytes) -> str:
    """``— <name> base64(key ID || signature)\\n``."""
    blob = kid.to_bytes(4, "big") + signature
    return f"{SIG_PREFIX}{name} {base64.b64encode(blob).decode()}\n"


def _check_text(text: str, what: str) -> None:
    if not text.endswith("\n"):
        raise NoteError(f"{what} must end with a newline")
    for ch in text:
        if ch < " " and ch != "\n":
            raise NoteError(f"{what} contains a control character")


def _split_key(text: str, parts: int, what: str) -> list[str]:
    fields = text.split("+", parts - 1)
    if len(fields) != parts:
        raise KeyFormatError(f"{what} is not of the form name+keyid+key")
    return fields


def _parse_key(name: str, hex_id: str, b64: str, alg: int, size: int, what: str) -> bytes:
    if not is_valid_name(name):
        raise KeyFormatError(f"{what} has an invalid key name")
    if len(hex_id) != 8 or any(c not in "0123456789abcdefABCDEF" for c in hex_id):
        raise KeyFormatError(f"{what} key ID must be 8 hex digits")
    raw = b64decode_strict(b64, what)
    if len(raw) != 1 + size or raw[0] != alg:
        raise KeyFormatError(f"{what} is not a key of signature type 0x{alg:02x}")
    return raw[1:]


def parse_vkey(vkey: str, alg: int = ALG_ED25519) -> tuple[str, int, bytes]:
    """(name, key ID, public key) from a vkey string; the key ID must match the key."""
    name, hex_id, b64 = _split_key(vkey.strip(), 3, "verifier key")
    public = _parse_key(name, hex_id, b64, alg, 32, "verifier key")
    kid = int(hex_id, 16)
    if kid != key_id(name, alg, public):
        raise KeyFormatError("verifier key ID does not match its name and public key")
    return name, kid, public


def format_vkey(name: str, alg: int, public_key: bytes) -> str:
    if not is_valid_name(name):
        raise KeyFormatError(f"invalid key name {name!r}")
    blob = base64.b64encode(bytes([alg]) + public_key).decode()
    return f"{name}+{key_id(name, alg, public_key):08x}+{blob}"


# --- Ed25519 note keys -------------------------------------------------------------------


def _ed25519_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class NamedPublicKey:
    """A named public key whose key ID commits to signature type `ALG`; verifiers extend it."""

    ALG: ClassVar[int]

    name: str
    key_id: int
    public_key_bytes: bytes

    @classmethod
    def from_vkey(cls, vkey: str) -> Self:
        name, kid, public = parse_vkey(vkey, cls.ALG)
        return cls(name, kid, public)

    @property
    def vkey(self) -> str:
        return format_vkey(self.name, self.ALG, self.public_key_bytes)


@dataclass(frozen=True)
class NoteVerifier(NamedPublicKey):
    """Verifies Ed25519 (type 0x01) note signatures by one named key."""

    ALG: ClassVar[int] = ALG_ED25519

    @classmethod
    def from_public_key(cls, name: str, key: Ed25519PublicKey) -> NoteVerifier:
        public = _ed25519_public(key)
        return cls(name, key_id(name, ALG_ED25519, public), public)

    def verify(self, text: bytes, signature: bytes) -> bool:
        if len(signature) != 64:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key_bytes).verify(signature, text)
        except InvalidSignature:
            return False
        return True


class NamedPrivateKey:
    """An Ed25519 private key under a key name whose key ID commits to signature type `ALG`."""

    ALG: ClassVar[int]

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        if not is_valid_name(name):
            raise KeyFormatError(f"invalid key name {name!r}")
        self._name = name
        self._key = private_key
        self._public = _ed25519_public(private_key.public_key())
        self._key_id = key_id(name, self.ALG, self._public)

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> int:
        return self._key_id

    @property
    def public_key_bytes(self) -> bytes:
        return self._public

    @property
    def vkey(self) -> str:
        return format_vkey(self._name, self.ALG, self._public)


class NoteSigner(NamedPrivateKey):
    """Signs notes with an Ed25519 key under a key name (for a log: its origin)."""

    ALG: ClassVar[int] = ALG_ED25519

    @classmethod
    def from_skey(cls, skey: str) -> NoteSigner:
        fields = _split_key(skey.strip(), 5, "signer key")
        if fields[0] != "PRIVATE" or fields[1] != "KEY":
            raise KeyFormatError("signer key must start with PRIVATE+KEY+")
        name, hex_id, b64 = fields[2:]
        seed = _parse_key(name, hex_id, b64, ALG_ED25519, 32, "signer key")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(seed))
        if signer.key_id != int(hex_id, 16):
            raise KeyFormatError("signer key ID does not match its name and key")
        return signer

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        return cls(name, Ed25519PrivateKey.generate())

    @property
    def skey(self) -> str:
        seed = self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        blob = base64.b64encode(bytes([ALG_ED25519]) + seed).decode()
        return f"PRIVATE+KEY+{self._name}+{self._key_id:08x}+{blob}"

    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self._name, self._key_id, self._public)

    def sign_bytes(self, text: bytes) -> bytes:
        return self._key.sign(text)

    def signature_line(self, text: str) -> str:
        _check_text(text, "note text")
        return signature_line(self._name, self._key_id, self.sign_bytes(text.encode()))

    def sign(self, text: str) -> str:
        """The whole signed note: text, blank line, this key's signature line."""
        return sign_note(text, [self])


def generate_keys(name: str) -> tuple[str, str]:
    """A fresh Ed25519 note key as (skey, vkey) strings."""
    signer = NoteSigner.generate(name)
    return signer.skey, signer.vkey


# --- notes -------------------------------------------------------------------------------


def sign_note(text: str, signers: Sequence[Signer], existing: Iterable[str] = ()) -> str:
    """Sign `text` with each signer; `existing` signature lines are appended after, deduplicated."""
    _check_text(text, "note text")
    if not signers:
        raise ValueError("a note needs at least one signer")
    lines: list[str] = []
    for s in signers:
        if not is_valid_name(s.name):
            raise KeyFormatError(f"invalid key name {s.name!r}")
        lines.append(signature_line(s.name, s.key_id, s.sign_bytes(text.encode())))
    for line in existing:
        line = line if line.endswith("\n") else line + "\n"
        _parse_signature_line(line[:-1])  # refuse to emit a malformed note
        if line not in lines:
            lines.append(line)
    return text + "\n" + "".join(lines)


def _parse_signature_line(line: str) -> NoteSignature:
    if not line.startswith(SIG_PREFIX):
        raise NoteError("note signature line does not start with an em dash and a space")
    name, sep, b64 = line[len(SIG_PREFIX) :].partition(" ")
    if not sep or not is_valid_name(name) or not b64:
        raise NoteError("note signature line is malformed")
    try:
        blob = base64.b64decode(b64.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise NoteError("note signature is not valid base64") from None
    if len(blob) < 5:
        raise NoteError("note signature is too short")
    return NoteSignature(name, int.from_bytes(blob[:4], "big"), blob[4:])


def parse_note(note: str | bytes) -> tuple[str, list[NoteSignature]]:
    """Split a note into its text and signatures, checking only the syntax. Trust nothing yet."""
    if isinstance(note, bytes):
        if len(note) > MAX_NOTE_BYTES:
            raise NoteError("note is too large")
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("note is not valid UTF-8") from None
    elif len(note) > MAX_NOTE_BYTES:
        raise NoteError("note is too large")
    for ch in note:
        if (ch < " " and ch != "\n") or "\ud800" <= ch <= "\udfff":
            raise NoteError("note contains a control character or invalid text")
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    text, sigs = note[: split + 1], note[split + 2 :]
    if not sigs or not sigs.endswith("\n"):
        raise NoteError("note has no signature lines, or they do not end with a newline")
    lines = sigs[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    return text, [_parse_signature_line(line) for line in lines]


def open_note(note: str | bytes, verifiers: Iterable[Verifier]) -> OpenedNote:
    """Verify a note against known keys.

    Unknown (name, key ID) pairs are ignored; a known key whose signature fails makes the whole
    note invalid; at least one known signature must verify. Repeated signatures by one key are
    all checked and reported once.
    """
    text, signatures = parse_note(note)
    known: dict[tuple[str, int], Verifier] = {}
    for v in verifiers:
        known.setdefault((v.name, v.key_id), v)
    raw_text = text.encode()
    verified: list[NoteSignature] = []
    unknown: list[NoteSignature] = []
    seen: set[tuple[str, int]] = set()
    for sig in signatures:
        match = known.get((sig.name, sig.key_id))
        if match is None:
            if sig not in unknown:
                unknown.append(sig)
            continue
        if not match.verify(raw_text, sig.signature):
            raise NoteError(f"invalid signature by known key {sig.name!r}")
        if (sig.name, sig.key_id) not in seen:
            seen.add((sig.name, sig.key_id))
            verified.append(sig)
    if not verified:
        raise NoteError("note is not signed by any known key")
    return OpenedNote(text, tuple(verified), tuple(unknown))
