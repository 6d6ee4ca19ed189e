"""The core install runs the embedded default; each optional part says which extra it needs.

The scenario runs in a fresh interpreter in which every optional package is made
unimportable (a meta-path finder that refuses them, as if they were not installed).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from bastion.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[1]
# pyproject's distribution names -> the module each one installs.
MODULE_OF = {
    "duckdb": "duckdb",
    "polars": "polars",
    "opendp": "opendp",
    "pyspark": "pyspark",
    "matplotlib": "matplotlib",
    "python-pkcs11": "pkcs11",
    "nats-py": "nats",
}


def _name(requirement: str) -> str:
    for stop in "[<>=;! ":
        requirement = requirement.split(stop)[0]
    return requirement


def test_pyproject_extras_are_the_ones_the_code_names() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        declared = {MODULE_OF[_name(r)] for r in optional[extra] if not r.startswith("bastion[")}
        assert set(modules) <= declared | {
            m for r in optional[extra] if r.startswith("bastion[") for m in EXTRAS["analytics"]
        }, extra
    core = {_name(r) for r in project["dependencies"]}
    assert not core & set(MODULE_OF), "an optional package is back in the core"
    assert "bastion[all]" in optional["dev"]  # make test installs everything


SCENARIO = textwrap.dedent(
    """
    import json, sys
    BLOCKED = set(sys.argv[1].split(","))

    class NotInstalled:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
    home_dir = sys.argv[2]

    from datetime import timedelta
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from bastion.cli.home_cmd import init_home
    from bastion.cli.main import app
    from bastion.clock import SystemClock
    from bastion.demo.platform import PRINCIPALS, bootstrap, ingest, sample_user
    from bastion.errors import KeyUnavailable
    from bastion.gateway.app import create_app
    from bastion.gateway.client import Context
    from bastion.gateway.models import ReadRequest
    from bastion.home import Home, settings_from
    from bastion.keys.factory import open_key_provider
    from bastion.store import open_database

    out = {}
    runner = CliRunner()
    home = init_home(__import__("pathlib").Path(home_dir))
    db = open_database(home.database_url)
    rt = bootstrap(home, db, SystemClock())
    ingest(rt, "users", [sample_user(n) for n in range(1, 4)])
    with TestClient(create_app(rt)) as http:
        def token(name):
            attrs = PRINCIPALS[name]
            jwt = rt.issuer.issue(name, attrs, ttl=timedelta(hours=1))
            return {"Authorization": "Bearer " + jwt}
        body = ReadRequest(
            record_id="u00001", fields=["country"], context=Context(purpose="support")
        ).model_dump(mode="json")
        read = http.post("/datasets/users/read", json=body, headers=token("alice"))
        out["read"] = [read.status_code, "receipt" in read.json()]
        dp = http.post("/cleanroom/queries", json={"template": "count", "epsilon": 0.1},
                       headers=token("adco"))
        out["cleanroom"] = [dp.status_code, dp.json().get("detail", dp.text)]
    rt.close()
    db.close()
    cli = runner.invoke(app, ["cleanroom", "query", "count", "-e", "0.1", "--org", "adco",
                              "--home", home_dir, "--json"])
    out["cli_cleanroom"] = [cli.exit_code, json.loads(cli.stdout)["message"]]
    synth = runner.invoke(app, ["synth", "--out", home_dir + "/synth", "--json"])
    out["cli_synth"] = [synth.exit_code, json.loads(synth.stdout)["message"]]
    status = runner.invoke(app, ["ledger", "status", "--home", home_dir, "--json"])
    out["ledger_status"] = [status.exit_code, json.loads(status.stdout)["tree_size"]]
    hsm_home = Home(home.path, settings_from({"keys": {"provider": "pkcs11"}}, {}))
    try:
        open_key_provider(hsm_home)
        out["hsm"] = "opened"
    except KeyUnavailable as exc:
        out["hsm"] = str(exc)
    out["loaded"] = sorted(m for m in BLOCKED if m in sys.modules)
    print(json.dumps(out))
    """
)


def test_the_embedded_default_runs_without_any_extra(tmp_path: Path) -> None:
    blocked = sorted({m for modules in EXTRAS.values() for m in modules})
    done = subprocess.run(
        [sys.executable, "-c", SCENARIO, ",".join(blocked), str(tmp_path / "home")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["read"] == [200, True]  # decided, recorded and released as ever
    code, size = out["ledger_status"]
    assert code == 0 and size >= 2  # the policy pack and the read, at least
    status, detail = out["cleanroom"]
    assert status == 503 and "pip install 'bastion[analytics]'" in json.dumps(detail)
    for name in ("cli_cleanroom", "cli_synth"):
        code, message = out[name]
        assert code == 2 and "pip install 'bastion[analytics]'" in message, name
    assert "pip install 'bastion[hsm]'" in out["hsm"]
    assert out["loaded"] == []
