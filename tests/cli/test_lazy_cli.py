"""``bastion`` imports a part only when one of its commands runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from bastion.cli import groups
from bastion.cli.main import COMMANDS, app, load_command

runner = CliRunner()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_the_table_matches_what_each_module_defines(name: str) -> None:
    command = load_command(name)
    assert command.name == name
    assert command.get_short_help_str(limit=500) == COMMANDS[name].help


def test_every_command_group_is_reachable() -> None:
    mounted = {COMMANDS[n].group for n in COMMANDS if COMMANDS[n].group}
    defined = {name for name, value in vars(groups).items() if value in groups.ALL_GROUPS}
    assert defined == mounted


def test_help_lists_every_command_and_an_unknown_one_is_refused() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name, entry in COMMANDS.items():
        assert name in result.stdout
        assert entry.help.split()[0] in result.stdout
    wrong = runner.invoke(app, ["ledgr"])
    assert wrong.exit_code == 2 and "No such command 'ledgr'" in wrong.output


def _modules_after(args: list[str]) -> list[str]:
    code = (
        "import sys, json\n"
        "from bastion.cli.main import app\n"
        "try:\n"
        f"    app({args!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded: list[str] = json.loads(done.stderr.strip().splitlines()[-1])
    return loaded


def test_help_imports_no_part_and_no_heavy_library() -> None:
    loaded = _modules_after(["--help"])
    ours = [m for m in loaded if m.startswith("bastion")]
    assert ours == ["bastion", "bastion.cli", "bastion.cli.main"]
    for heavy in ("pydantic", "cedarpy", "fastapi", "duckdb", "rich", "cryptography"):
        assert heavy not in loaded


def test_a_command_imports_its_part_only() -> None:
    loaded = _modules_after(["ledger", "--help"])
    assert "bastion.cli.ledger_verify" in loaded and "bastion.ledger.verifier" in loaded
    for other in ("bastion.cleanroom", "bastion.releases", "bastion.cli.cleanroom", "duckdb"):
        assert other not in loaded
