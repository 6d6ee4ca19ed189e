"""Structured logs that say where a failure happened and never what the data was.

Every line is one JSON object: time (UTC), level, logger, message, the request id of the
request being served (when there is one), and for a failure its exception type and the
frames it passed through (file, line, function). Never the exception's message, unless it is
a ``BastionError`` (whose messages are written for operators and hold no protected value),
and never a frame's local variables: either can hold a value the request carried, and a log
is read by more people, for longer, than the data it came from.

``traceback_summary`` is the same redaction for code that logs a failure itself, so even a
plain-text handler receives nothing to leak.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from bastion.errors import BastionError

# The request being served: a holder the gateway opens per request and fills in once the
# request id is known. A holder (not the id itself) because the id is chosen in a worker
# thread, whose context is a copy: the copy shares the holder, so the event loop's own log
# lines for that request (a 500, a timeout) carry the id too.
_REQUEST: ContextVar[dict[str, str] | None] = ContextVar("bastion_request", default=None)

MAX_FRAMES = 30
# "<level>:<format>" for the worker processes of ``bastion serve --workers N``.
ENV_LOG = "BASTION_LOG"


@contextmanager
def request_scope() -> Iterator[dict[str, str]]:
    holder: dict[str, str] = {}
    token = _REQUEST.set(holder)
    try:
        yield holder
    finally:
        _REQUEST.reset(token)


def bind_request_id(request_id: str) -> None:
    holder = _REQUEST.get()
    if holder is not None:
        holder["request_id"] = request_id


def current_request_id() -> str | None:
    holder = _REQUEST.get()
    return holder.get("request_id") if holder else None


def _frames(tb: TracebackType | None) -> list[str]:
    frames = traceback.extract_tb(tb)[-MAX_FRAMES:]
    return [f"{_short(f.filename)}:{f.lineno} in {f.name}" for f in frames]


def _short(filename: str) -> str:
    """A path from the package root (``bastion/gateway/app.py``), not the host's layout."""
    parts = Path(filename).parts
    for anchor in ("bastion", "site-packages"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + (anchor == "site-packages") :])
    return Path(filename).name


def _safe_message(exc: BaseException) -> str | None:
    return str(exc) if isinstance(exc, BastionError) else None


def exception_summary(exc: BaseException) -> dict[str, object]:
    """Type, frames and (for BastionError only) message of an exception and its causes."""
    chain: list[dict[str, object]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(chain) < 5:
        seen.add(id(current))
        item: dict[str, object] = {
            "type": f"{type(current).__module__}.{type(current).__qualname__}",
            "frames": _frames(current.__traceback__),
        }
        message = _safe_message(current)
        if message is not None:
            item["message"] = message
        chain.append(item)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return {"exception": chain}


def traceback_summary(exc: BaseException) -> str:
    """The redacted traceback as text, for a message: ``KeyError at a.py:3 in f <- ...``."""
    out = []
    for item in exception_summary(exc)["exception"]:  # type: ignore[attr-defined]
        frames = " <- ".join(reversed(item["frames"])) or "?"
        out.append(f"{item['type']} at {frames}")
    return "; caused by ".join(out)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id and a redacted exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id is not None:
            line["request_id"] = request_id
        if record.exc_info and record.exc_info[1] is not None:
            line.update(exception_summary(record.exc_info[1]))
        if record.stack_info:
            line["stack"] = "(omitted)"
        return json.dumps(line, ensure_ascii=False, default=str)


class RedactingTextFormatter(logging.Formatter):
    """The plain-text twin, for a terminal: the same redaction of exceptions."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatException(self, ei: object) -> str:
        exc = ei[1] if isinstance(ei, tuple) else None
        return traceback_summary(exc) if isinstance(exc, BaseException) else ""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = current_request_id()
        return f"{text} [request {request_id}]" if request_id else text


def configure_from_environment(env: dict[str, str] | None = None) -> None:
    """A worker process's logging, as its parent ``bastion serve`` was told (ENV_LOG)."""
    value = (env if env is not None else dict(os.environ)).get(ENV_LOG)
    if value:
        level, _, fmt = value.partition(":")
        configure_logging(level, fmt or "json")


def configure_logging(level: str = "warning", fmt: str = "json") -> None:
    """Send every log line (Bastion's, uvicorn's) through one redacting handler."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else RedactingTextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.WARNING))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
