"""The egress CLI tests' one way to call ``bastion ... --json``: exit code, then the JSON."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from bastion.cli.main import app

runner = CliRunner()


def run(*args: str, code: int = 0) -> dict[str, Any]:
    """``bastion ARGS --json``; asserts the exit code and returns the parsed output."""
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == code, result.output
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed
