"""The flow tokens as columns: the batched and dictionary-encoded paths a run takes give
exactly the tokens of the one-value definition (HMAC-SHA256, 16 bytes, base64url, ``ft_``),
nulls stay null, and a filtered page keeps its row tokens aligned with its records."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pyarrow as pa
import yaml

from bastion.catalog import default_catalog
from bastion.egress.model import parse_flows
from bastion.egress.tokens import FlowTokens
from bastion.egress.transforms import build_table, output_schema, transform_column

KEY = bytes(range(32))
PUBLIC = base64.b64encode(bytes(range(1, 33))).decode()


def reference(label: bytes, value: str) -> str:
    """The token as tokens.py defines it, written out independently."""
    digest = hmac.new(KEY, label + value.encode("utf-8"), hashlib.sha256).digest()[:16]
    return "ft_" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


# Values whose digests put '+' and '/' in standard base64: the url-safe alphabet must show.
VALUES = [f"ps_{n}" for n in range(400)] + ["", "é-ü", "ps_with,comma", "x" * 300]


def test_row_and_value_tokens_equal_the_one_value_definition() -> None:
    tokens = FlowTokens(KEY)
    rows = tokens.rows(VALUES)
    assert rows == [reference(b"bastion/egress-row/v1\x00", v) for v in VALUES]
    assert rows == [tokens.row(v) for v in VALUES]
    assert [tokens.token(v) for v in VALUES] == [
        reference(b"bastion/egress-token/v1\x00", v) for v in VALUES
    ]
    bodies = "".join(t[3:] for t in rows)
    assert "-" in bodies and "_" in bodies and "+" not in bodies and "/" not in bodies
    assert all(len(t) == 3 + 22 and not t.endswith("=") for t in rows)


def test_a_pseudonymized_column_is_tokenized_value_by_value_nulls_kept() -> None:
    tokens = FlowTokens(KEY)
    spec = default_catalog().dataset("events").field("device_id")
    values = ["ps_a", None, "ps_b", "ps_a", None, "ps_c", "ps_b"]
    (flow,) = parse_flows(_flow_text(), source="flows.yaml")
    for col in (pa.array(values, pa.string()), pa.chunked_array([values[:3], values[3:]])):
        out = transform_column(spec, flow.fields["device_id"], col, tokens)
        assert out.type == pa.string()
        assert out.to_pylist() == [None if v is None else tokens.token(v) for v in values]
    everything_null = pa.array([None, None], pa.string())
    out = transform_column(spec, flow.fields["device_id"], everything_null, tokens)
    assert out.to_pylist() == [None, None]


def test_a_filtered_page_keeps_row_tokens_with_their_records() -> None:
    (flow,) = parse_flows(_flow_text(filtered=True), source="flows.yaml")
    ds = default_catalog().dataset("events")
    tokens = FlowTokens(KEY)
    keys = [f"e{n}" for n in range(6)]
    columns = {
        "user_id": ["ps_1", "ps_2", "ps_1", "ps_3", "ps_2", "ps_1"],
        "device_id": ["d1", None, "d1", "d3", "d2", "d1"],
        "event_type": ["view", "like", "view", "share", "view", "like"],
    }
    table, kept = build_table(flow, ds, keys, columns, tokens, output_schema(flow, ds))
    assert kept == [True, False, True, False, True, False]
    got = table.to_pylist()
    assert [r["_row"] for r in got] == [tokens.row(k) for k in ("e0", "e2", "e4")]
    assert [r["user_id"] for r in got] == [tokens.token(u) for u in ("ps_1", "ps_1", "ps_2")]
    assert [r["device_id"] for r in got] == [tokens.token(d) for d in ("d1", "d1", "d2")]
    assert {r["_op"] for r in got} == {"upsert"}


def _flow_text(filtered: bool = False) -> str:
    source: dict[str, object] = {"dataset": "events"}
    if filtered:
        source["filter"] = [{"field": "event_type", "op": "eq", "value": "view"}]
    flow = {
        "name": "engagement-us",
        "version": 1,
        "kind": "records",
        "recipient": {
            "id": "us-measurement",
            "employer": "measure-co",
            "employer_country": "US",
            "location_country": "US",
            "public_key": PUBLIC,
        },
        "source": source,
        "fields": {"user_id": "pseudonymize", "device_id": "pseudonymize", "event_type": "keep"},
        "schedule": {"every": "6h"},
        "destination": {"type": "files", "path": "outbox"},
    }
    return yaml.safe_dump({"flows": [flow]})
