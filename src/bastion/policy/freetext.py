"""Text a principal types, and what the public log carries for it.

The transparency log is public, and free text (a justification's detail, an approver's or a
revoker's reason, a break-glass review's notes, a stated purpose) can name a person: "checking
jane.doe@example.com's account". So by default (``free_text = "commit"``) the log carries a
keyed *commitment* of such text, ``hmac-sha256:<64 hex>``, and the text itself stays in the
custodian's database (the ``free_texts`` table, keyed by that commitment, besides the
``access_requests`` / ``access_approvals`` / ``break_glass_reviews`` rows that keep it too).
An auditor with the database and the custodian's key recomputes the commitment of the stored
text and compares it with the entry. ``free_text = "publish"`` puts the text in the log
verbatim, as before, for custodians that must publish it.

Enumerated and structured values (justification type, ticket ids, steps, outcomes such as
"justified") are not free text and stay in clear.

The commitment is HMAC-SHA256 under a custodian key; the gateway and the CLI derive that key
from the vault's keyed subject hash (:func:`text_key`), so it is the same secret subject refs
come from, domain-separated, and nobody without it can test guesses against the log.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Callable

from bastion.errors import ConfigError, IntegrityError
from bastion.home import FREE_TEXT_MODES, FreeTextMode
from bastion.store import Database

PREFIX = "hmac-sha256:"
_TEXT_LABEL = b"bastion/free-text/v1\x00"
# What the vault's keyed hash is asked for to derive the key: a subject id never starts so.
_KEY_LABEL = "bastion/free-text-key/v1\x00"

FREE_TEXT_DDL = [
    """CREATE TABLE IF NOT EXISTS free_texts (
        commitment TEXT PRIMARY KEY,
        text TEXT NOT NULL
    )""",
]

# text -> its commitment, "hmac-sha256:<64 hex>".
TextCommitment = Callable[[str], str]


def text_commitment(key: bytes, text: str) -> str:
    """The keyed commitment of a text (pure): ``hmac-sha256:`` + HMAC-SHA256(key, label || text)."""
    return PREFIX + hmac.new(key, _TEXT_LABEL + text.encode("utf-8"), hashlib.sha256).hexdigest()


def text_key(keyed_hash: Callable[[str], str]) -> bytes:
    """A 256-bit commitment key from a keyed hash (the vault's ``subject_hash``, HMAC-SHA256
    under its receipt key) of a fixed label: the HMAC of a label is a derived key."""
    digest = keyed_hash(_KEY_LABEL).rpartition(":")[2]
    key = bytes.fromhex(digest)
    if len(key) < 32:
        raise IntegrityError("the keyed hash for free-text commitments is too short")
    return key


def keyed_commitment(key_source: Callable[[], bytes]) -> TextCommitment:
    """:func:`text_commitment` under a key fetched on first use (the vault's identity may not be
    readable while the gateway is being wired), then kept."""
    lock = threading.Lock()
    cached: list[bytes] = []

    def commit(text: str) -> str:
        with lock:
            if not cached:
                cached.append(key_source())
            key = cached[0]
        return text_commitment(key, text)

    return commit


def migrate_free_text(db: Database) -> None:
    db.migrate("free-text", FREE_TEXT_DDL)


class PublicText:
    """Turns typed text into what an event carries, keeping the text in the database first.

    The text is stored *before* its event is appended, so every commitment in the log has its
    text in the database (a failed append leaves a harmless stored text, never the reverse).
    """

    _KNOWN_MAX = 4096

    def __init__(self, db: Database, commit: TextCommitment, mode: FreeTextMode = "commit") -> None:
        self.db = db
        if mode not in FREE_TEXT_MODES:
            raise ConfigError(f"free_text must be 'commit' or 'publish', not {mode!r}")
        self.mode: FreeTextMode = mode
        self._commit = commit
        self._lock = threading.Lock()
        # Commitments already stored by this process: a repeated purpose costs no write.
        self._known: set[str] = set()

    def commitment(self, text: str) -> str:
        """The commitment of ``text`` (checked: never the text itself)."""
        c = str(self._commit(text))
        if not c.startswith(PREFIX) or len(c) != len(PREFIX) + 64 or c == text:
            # Fail closed: a broken commitment function must not put text in the public log.
            raise IntegrityError("the free-text commitment function returned no commitment")
        return c

    def publish(self, text: str) -> str:
        """What the public log carries for ``text``: its commitment (the text stored), or, when
        the custodian publishes free text, the text itself. Empty text stays empty."""
        if not text or self.mode == "publish":
            return text
        c = self.commitment(text)
        with self._lock:
            if c in self._known:
                return c
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO free_texts (commitment, text) VALUES (?, ?) "
                "ON CONFLICT (commitment) DO NOTHING",
                (c, text),
            )
        with self._lock:
            if len(self._known) >= self._KNOWN_MAX:
                self._known.clear()
            self._known.add(c)
        return c

    def reason(self, label: str, text: str, *, published: str | None = None) -> str:
        """An event's ``reason`` for a step that carries typed text: ``"<label>; text
        hmac-sha256:…"`` when committing; ``published`` (default: the text) when publishing;
        the label alone when nothing was typed."""
        text = text.strip()
        if not text:
            return label
        if self.mode == "publish":
            return published if published is not None else text
        return f"{label}; text {self.publish(text)}"

    def matches(self, text: str, published: str) -> bool:
        """Does ``published`` (a commitment in an entry) commit to ``text``? (Auditor check.)"""
        return hmac.compare_digest(self.commitment(text).encode(), published.encode())

    def stored(self, commitment: str) -> str | None:
        """The text the database keeps for a commitment in the log."""
        rows = self.db.query("SELECT text FROM free_texts WHERE commitment = ?", (commitment,))
        return str(rows[0][0]) if rows else None
