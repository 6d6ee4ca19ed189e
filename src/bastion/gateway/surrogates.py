"""The edge check for text: every string a request carries must be Unicode scalar values.

JSON can spell a lone surrogate (``"\\ud800"``), and Python's ``json`` decodes one, from that
escape or from its raw three-byte form (``ED A0 80``, which it reads with ``surrogatepass``).
Such a string cannot be written as UTF-8, so RFC 8785 refuses to canonicalize any entry that
quotes it: the refusal of the request could never be recorded, the caller got a 503 and the
ledger-failure metric a false alarm. ``refuse_non_unicode``, a dependency of every route, runs
before authentication and before any parameter is validated or used, and refuses such a request
with a recorded 422 (``invalid-unicode``) that names where the string was (``body`` and its
JSON path, ``path``, or ``query`` and the parameter's name), never the string itself.

Headers are bytes in ASGI and Starlette decodes them as Latin-1, which cannot produce a
surrogate; the one header read as JSON, the bearer token, is checked by the token verifier
(``auth.TokenVerifier``), whose refusal is a recorded 401.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import Scope

from bastion.gateway.errors import ApiError

if TYPE_CHECKING:
    from bastion.gateway.runtime import Runtime

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


def _path_text(where: Location) -> str:
    return ".".join(str(p) for p in where)[:128]


async def refuse_non_unicode(request: Request) -> None:
    """An app-wide dependency: it runs once the route is known and the body read, before
    authentication and before any parameter is validated or used."""
    where = url_location(request.scope)
    if where is None:
        where = body_location(await request.body())
    if where is not None:
        runtime: Runtime = request.app.state.runtime
        raise await run_in_threadpool(_refusal, runtime, request, where)


def _refusal(rt: Runtime, request: Request, where: Location) -> ApiError:
    """Record the refusal (a recorded 401 if the token is refused) and return it to raise."""
    # Here, not at the top: auth imports this module (find_surrogate), and refusals auth.
    from bastion.gateway.auth import AuthError, bearer_token
    from bastion.gateway.recording import endpoint_of, new_request_id
    from bastion.gateway.refusals import record_auth_failure, reject

    rid = new_request_id(request)
    endpoint = endpoint_of(request)
    try:
        principal = rt.verifier.verify(bearer_token(request.headers.get("authorization")))
    except AuthError as exc:
        return record_auth_failure(rt, request, exc, endpoint)
    location = _path_text(where)
    # Named by its place (a JSON path, "path", "query.<name>"), never by the text itself; the
    # dataset of the path unless the path is what holds the bad text.
    field = _path_text(where[1:]) if where[0] == "body" and len(where) > 1 else location
    dataset = request.path_params.get("dataset") if where[0] != "path" else None
    return reject(
        rt,
        principal.actor(),
        request_id=rid,
        endpoint=endpoint,
        status=422,
        kind=KIND,
        message=f"{MESSAGE}, in {location}",
        dataset=str(dataset) if dataset is not None else None,
        field=field,
    )
