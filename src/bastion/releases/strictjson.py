"""Strict JSON for release documents: bounded in bytes and nesting, one meaning per text.

Everything a release verifier parses (evidence, log entries, trust bundles, DSSE envelopes,
in-toto statements, verifier state) comes from an untrusted mirror, so parsing it must neither
crash nor be ambiguous:

- the text must be UTF-8 and at most ``max_bytes`` long;
- arrays and objects may nest at most ``max_depth`` levels. This is checked by a linear scan
  *before* the recursive parser runs, so 100,000 nested brackets cost one pass and a refusal,
  never a ``RecursionError``;
- an object may not name a key twice. Parsers disagree on which duplicate wins (Python's
  ``json`` and pydantic keep the last, others the first), so one byte string could mean two
  different things to two verifiers; it is refused instead;
- ``NaN`` and ``Infinity`` are not JSON (RFC 8259) and are refused.

Pure, no I/O.
"""

from __future__ import annotations

import json
import re
from typing import Any

from bastion.events import canonical

MAX_DEPTH = 64
"""Deepest nesting any release document needs is about 8; 64 leaves room for predicates."""

# The characters that matter for nesting: brackets, and what starts, escapes or ends a string.
_SPECIAL = re.compile(r'[\[\]{}"\\]')


class JsonRefused(ValueError):
    """The text is not strict, bounded JSON; the message says why (no input is quoted)."""


class NotCanonical(JsonRefused):
    """Strict JSON, but not the RFC 8785 bytes of what it says."""


def exceeds_depth(text: str, max_depth: int) -> bool:
    """Whether arrays/objects in ``text`` nest deeper than ``max_depth`` (brackets in strings
    do not count). Linear in the number of brackets, quotes and backslashes; not recursive."""
    depth = 0
    in_string = False
    escaped_at = -1
    for match in _SPECIAL.finditer(text):
        pos = match.start()
        if pos == escaped_at:
            continue
        char = match.group()
        if in_string:
            if char == "\\":
                escaped_at = pos + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            shown = key if len(key) <= 64 else key[:64] + "…"
            raise JsonRefused(f"an object names the key {shown!r} twice")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise JsonRefused(f"{name} is not JSON")


def loads(text: str | bytes, *, max_bytes: int | None, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``text`` as strict JSON (see the module docstring). Raises ``JsonRefused``."""
    if isinstance(text, str):
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            raise JsonRefused("text is not UTF-8 (a lone surrogate)") from None
    else:
        data = bytes(text)
    if max_bytes is not None and len(data) > max_bytes:
        raise JsonRefused(f"{len(data)} bytes, more than the limit of {max_bytes}")
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError:
        raise JsonRefused("text is not UTF-8") from None
    if exceeds_depth(decoded, max_depth):
        raise JsonRefused(f"nested more than {max_depth} levels deep")
    try:
        return json.loads(
            decoded, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant
        )
    except JsonRefused:
        raise
    except RecursionError:  # unreachable after the scan; kept so that a parse never crashes
        raise JsonRefused(f"nested more than {max_depth} levels deep") from None
    except ValueError as exc:
        raise JsonRefused(f"not JSON ({exc})") from None


def loads_canonical(data: bytes, *, max_bytes: int | None) -> Any:
    """Parse a log entry, accepted only as the exact RFC 8785 bytes of what it says.

    The log commits to bytes; every verifier must read one meaning from them. Other
    whitespace, key order, or number and string spellings would let the same logged bytes be
    read two ways, so the text is parsed strictly, re-encoded, and refused (``NotCanonical``)
    unless that gives the same bytes."""
    doc = loads(data, max_bytes=max_bytes)
    try:
        again = canonical(doc)
    except ValueError:  # rfc8785 refuses what JCS cannot encode (unsafe integers, surrogates)
        again = b""
    if again != bytes(data):
        raise NotCanonical("not RFC 8785 canonical JSON (re-encoding it gives other bytes)")
    return doc
