"""Log lines say where a failure happened and never what the data was."""

from __future__ import annotations

import json
import logging
import threading

from bastion.errors import StoreUnavailable
from bastion.logs import (
    JsonFormatter,
    RedactingTextFormatter,
    bind_request_id,
    request_scope,
    traceback_summary,
)

SECRET = "person1@example.com"


def _record(exc: BaseException | None, msg: str = "it failed") -> logging.LogRecord:
    return logging.LogRecord(
        "bastion.test",
        logging.ERROR,
        __file__,
        1,
        msg,
        (),
        (type(exc), exc, exc.__traceback__) if exc is not None else None,
    )


def _raise_with_local_secret() -> None:
    value = SECRET  # a local variable holding a protected value
    raise KeyError(value)


def _caught() -> BaseException:
    try:
        try:
            _raise_with_local_secret()
        except KeyError as inner:
            raise RuntimeError(f"while reading {SECRET}") from inner
    except RuntimeError as exc:
        return exc
    raise AssertionError("unreachable")


def test_a_json_line_names_type_and_frames_but_not_message_or_locals() -> None:
    exc = _caught()
    line = JsonFormatter().format(_record(exc))
    assert SECRET not in line
    doc = json.loads(line)
    assert doc["level"] == "error" and doc["message"] == "it failed"
    chain = doc["exception"]
    assert [c["type"] for c in chain] == ["builtins.RuntimeError", "builtins.KeyError"]
    assert any("in _raise_with_local_secret" in f for f in chain[1]["frames"])
    assert all("message" not in c for c in chain)


def test_a_bastion_error_keeps_its_operator_safe_message() -> None:
    try:
        raise StoreUnavailable("the database did not answer within 10s")
    except StoreUnavailable as exc:
        doc = json.loads(JsonFormatter().format(_record(exc)))
    assert doc["exception"][0]["message"] == "the database did not answer within 10s"


def test_the_text_formatter_redacts_the_same_way() -> None:
    exc = _caught()
    text = RedactingTextFormatter().format(_record(exc))
    assert SECRET not in text
    assert "builtins.RuntimeError at" in text and "caused by builtins.KeyError" in text
    assert SECRET not in traceback_summary(exc)


def test_lines_carry_the_request_id_even_from_a_worker_thread() -> None:
    seen: list[str | None] = []
    with request_scope():
        # The gateway chooses the id in a worker thread (a copy of the context)...
        import contextvars

        ctx = contextvars.copy_context()
        worker = threading.Thread(target=ctx.run, args=(bind_request_id, "rid-123"))
        worker.start()
        worker.join()
        # ... and the event loop's own line (a 500) carries it.
        seen.append(json.loads(JsonFormatter().format(_record(None))).get("request_id"))
    seen.append(json.loads(JsonFormatter().format(_record(None))).get("request_id"))
    assert seen == ["rid-123", None]
