"""Schemathesis against the live gateway's /openapi.json: no input makes it answer 5xx.

Bounded: a few dozen generated examples per operation, per backend, with a valid bearer
token (requests without one are covered by the auth tests).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings

from bastion.demo.platform import PRINCIPALS
from bastion.gateway.runtime import Runtime
from bastion.gateway.server import ThreadedServer

MAX_EXAMPLES = 25


def test_no_server_errors(runtime: Runtime, server: ThreadedServer) -> None:
    from bastion.synth import SynthSpec, generate

    generate(
        SynthSpec(seed=5, users=100, videos=10, events=800, campaigns=2),
        runtime.home.path / "cleanroom",
        "parquet",
    )
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    tokens = {
        who: runtime.issuer.issue(who, PRINCIPALS[who], ttl=timedelta(hours=1))
        for who in ("alice", "pat", "audra")
    }
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        who = "pat" if operation.path.startswith("/policy") else "alice"
        if operation.path.startswith("/subjects"):
            who = "audra"
        _check(operation, {"authorization": f"Bearer {tokens[who]}"}, failures)
    assert operations >= 15
    assert failures == []


def _check(operation: Any, headers: dict[str, str], failures: list[str]) -> None:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: Any) -> None:
        response = case.call(headers=headers, timeout=30)
        if response.status_code >= 500:
            failures.append(
                f"{case.method} {case.formatted_path} -> {response.status_code}: "
                f"{response.text[:200]}"
            )

    run()
