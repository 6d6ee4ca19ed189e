"""The edge check for text: every string a request carries must be Unicode scalar values.

JSON can spell a lone surrogate (``"\\ud800"``), and Python's ``json`` decodes one, from that
escape or from its raw three-byte form (``ED A0 80``, which it reads with ``surrogatepass``).
Such a string cannot be written as UTF-8, so RFC 8785 refuses to canonicalize any entry that
quotes it: the refusal of the request could never be recorded, the caller got a 503 and the
ledger-failure metric a false alarm. ``unicode_guard.refuse_non_unicode``, a dependency of
every route, runs before authentication and before any parameter is validated or used, and
refuses such a request with a recorded 422 (``invalid-unicode``) that names where the string
was (``body`` and its JSON path, ``path``, or ``query`` and the parameter's name), never the
string itself.

Headers are bytes in ASGI and Starlette decodes them as Latin-1, which cannot produce a
surrogate; the one header read as JSON, the bearer token, is checked by the token verifier
(``auth.TokenVerifier``), whose refusal is a recorded 401.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.types import Scope

KIND = "invalid-unicode"
MESSAGE = "the request holds text that is not valid Unicode (a lone surrogate or bad UTF-8)"

_SURROGATE = re.compile("[\ud800-\udfff]")
# What in a body can decode to a surrogate: a \uD800-\uDFFF escape, or a raw UTF-8-style
# encoding of one. Only a body that has one of these is parsed here (most never are).
_MAY_HOLD_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")

Location = tuple[str | int, ...]


def has_surrogate(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def escape_surrogates(text: str) -> str:
    """``text`` with each surrogate written as its ``\\udXXX`` escape: safe to record."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def find_surrogate(value: Any, at: Location = ()) -> Location | None:
    """Where in a decoded JSON value the first string holding a surrogate is, or None.

    A key holding one is named by its escaped form."""
    stack: list[tuple[Any, Location]] = [(value, at)]
    while stack:  # iterative: a deeply nested body must not exhaust the stack
        item, where = stack.pop()
        if isinstance(item, str):
            if has_surrogate(item):
                return where
        elif isinstance(item, dict):
            pending: list[tuple[Any, Location]] = []
            for key, child in item.items():
                if has_surrogate(key):
                    return (*where, escape_surrogates(key))
                pending.append((child, (*where, key)))
            stack.extend(reversed(pending))
        elif isinstance(item, list):
            stack.extend((child, (*where, i)) for i, child in reversed(list(enumerate(item))))
    return None


def _utf8(raw: bytes) -> bool:
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _query_pairs(query: bytes) -> Iterator[tuple[bytes, bytes]]:
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        yield name.replace(b"+", b" "), value.replace(b"+", b" ")


def url_location(scope: Scope) -> Location | None:
    """``("path",)`` or ``("query", name)`` when the URL holds text that is not valid Unicode:
    a surrogate, or percent-encoded bytes that are not UTF-8 (e.g. ``%ED%A0%80``)."""
    path = scope.get("path", "")
    raw_path: bytes = scope.get("raw_path") or b""
    if (isinstance(path, str) and has_surrogate(path)) or not _utf8(raw_path):
        return ("path",)
    query: bytes = scope.get("query_string") or b""
    if query and (b"%" in query or not query.isascii()):
        for name, value in _query_pairs(query):
            if not (_utf8(name) and _utf8(value)):
                shown = unquote_to_bytes(name).decode("utf-8", "backslashreplace")
                return ("query", escape_surrogates(shown)[:64])
    return None


def body_location(body: bytes) -> Location | None:
    """``("body", *json_path)`` of a string holding a surrogate, or None. A body that is not
    JSON is left to the route (it answers a recorded ``malformed-json``)."""
    if not _MAY_HOLD_SURROGATE.search(body):
        return None
    try:
        value = json.loads(body)  # as FastAPI reads it (bytes: surrogatepass)
    except (ValueError, RecursionError):
        return None
    return find_surrogate(value, ("body",))


def path_text(where: Location) -> str:
    return ".".join(str(p) for p in where)[:128]
