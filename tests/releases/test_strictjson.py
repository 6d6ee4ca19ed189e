"""Strict JSON for release documents: bounded bytes and nesting, no key twice, never a crash."""

from __future__ import annotations

import json
import time

import pytest

from bastion.releases.strictjson import JsonRefused, exceeds_depth, loads


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("{}", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('["[[[[", "{{{{"]', 1),  # brackets inside strings do not count
        (r'["\"[[[[", "\\", [[]]]', 3),  # nor after an escaped quote; \\ ends its escape
        (r'{"k\"{": "v\\"}', 1),
    ],
)
def test_depth_counts_only_structure(text: str, depth: int) -> None:
    assert json.loads(text) is not None
    assert not exceeds_depth(text, depth)
    assert exceeds_depth(text, depth - 1)


def test_100000_levels_are_refused_quickly_and_without_recursion() -> None:
    started = time.perf_counter()
    for deep in ("[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000):
        with pytest.raises(JsonRefused, match="nested more than 64 levels"):
            loads(deep, max_bytes=None)
        with pytest.raises(JsonRefused, match="nested"):
            loads(deep.encode(), max_bytes=None)
    assert time.perf_counter() - started < 5


def test_depth_limit_is_inclusive() -> None:
    assert loads("[" * 64 + "]" * 64, max_bytes=None) is not None
    with pytest.raises(JsonRefused):
        loads("[" * 65 + "]" * 65, max_bytes=None)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"a": 1, "a": 2}', "twice"),
        ('{"x": {"a": 1, "b": 2, "a": 3}}', "twice"),
        ('{"a": NaN}', "NaN is not JSON"),
        ('{"a": Infinity}', "Infinity is not JSON"),
        ("{not json", "not JSON"),
        ("", "not JSON"),
    ],
)
def test_ambiguous_or_invalid_json_is_refused(text: str, reason: str) -> None:
    with pytest.raises(JsonRefused, match=reason):
        loads(text, max_bytes=None)


def test_size_and_encoding_limits() -> None:
    assert loads(b'{"a": "xx"}', max_bytes=11) == {"a": "xx"}
    with pytest.raises(JsonRefused, match="limit of 10"):
        loads(b'{"a": "xx"}', max_bytes=10)
    with pytest.raises(JsonRefused, match="not UTF-8"):
        loads(b'{"a": "\xff"}', max_bytes=None)
    with pytest.raises(JsonRefused, match="not UTF-8"):
        loads('{"a": "\ud800"}', max_bytes=None)


def test_refusal_is_a_value_error() -> None:
    # Callers that already catch ValueError for "not JSON" keep failing closed.
    assert issubclass(JsonRefused, ValueError)
