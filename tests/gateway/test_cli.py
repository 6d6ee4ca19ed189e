"""`bastion principals issue | jwks | add-issuer`: tokens the gateway accepts, external issuers."""

from __future__ import annotations

import json
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from bastion.cli.home_cmd import init_home
from bastion.cli.main import app
from bastion.clock import SystemClock, to_unix
from bastion.gateway.auth import TokenVerifier, public_jwk
from bastion.gateway.config import GatewayConfig, gateway_config, load_external_issuers
from bastion.gateway.runtime import own_issuer
from bastion.home import Home

runner = CliRunner()


def _home(tmp_path: Path) -> Home:
    return init_home(tmp_path / "home")


def _register(home: Home, sub: str, *args: str) -> None:
    out = runner.invoke(
        app, ["principals", "register", sub, *args, "--home", str(home.path), "--json"]
    )
    assert out.exit_code == 0, out.output


def test_issue_and_jwks(tmp_path: Path) -> None:
    home = _home(tmp_path)
    _register(
        home, "alice", "--role", "engineer", "--employer", "custodian", "--employer-country", "US"
    )
    _register(home, "bob", "--role", "auditor")
    result = runner.invoke(
        app,
        [
            "principals",
            "issue",
            "alice",
            "--role",
            "engineer",
            "--employer",
            "custodian",
            "--employer-country",
            "US",
            "--location-country",
            "US",
            "--amr",
            "pwd,mfa",
            "--ttl",
            "30m",
            "--home",
            str(home.path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    token = json.loads(result.output)["token"]
    jwks = runner.invoke(app, ["principals", "jwks", "--home", str(home.path), "--json"])
    assert jwks.exit_code == 0
    keys = json.loads(jwks.output)["keys"]
    assert keys[0]["kty"] == "OKP" and keys[0]["crv"] == "Ed25519"
    # The token verifies with the published JWKS alone.
    claims = jwt.decode(
        token, jwt.PyJWK(keys[0]).key, algorithms=["EdDSA"], audience="bastion-gateway"
    )
    assert claims["sub"] == "alice" and claims["amr"] == ["pwd", "mfa"]
    assert claims["exp"] - claims["iat"] == 1800
    plain = runner.invoke(
        app, ["principals", "issue", "bob", "--role", "auditor", "--home", str(home.path)]
    )
    assert plain.exit_code == 0 and plain.output.count(".") == 2


def test_issue_bad_input(tmp_path: Path) -> None:
    home = _home(tmp_path)
    for args, where in (
        (["--role", "engineer", "--employer-country", "USA"], "employer_country"),
        (["--role", "engineer", "--ttl", "forever"], "ttl"),
        (["--role", "engineer", "--clearance", "cosmic"], "clearance"),
    ):
        result = runner.invoke(
            app, ["principals", "issue", "x", *args, "--home", str(home.path), "--json"]
        )
        assert result.exit_code == 2, result.output
        assert where in json.loads(result.output)["message"]
    missing = runner.invoke(
        app, ["principals", "issue", "x", "--role", "r", "--home", str(tmp_path / "nope")]
    )
    assert missing.exit_code != 0 and "bastion init" in missing.output


def test_register_list_disable_and_issue_refusals(tmp_path: Path) -> None:
    home = _home(tmp_path)

    def issue(sub: str, *args: str) -> tuple[int, dict[str, object]]:
        out = runner.invoke(
            app, ["principals", "issue", sub, *args, "--home", str(home.path), "--json"]
        )
        return out.exit_code, json.loads(out.output)

    code, doc = issue("carol", "--role", "engineer")
    assert code == 2 and "not registered" in str(doc["message"])
    _register(
        home,
        "carol",
        "--role",
        "engineer",
        "--employer",
        "custodian",
        "--employer-country",
        "US",
        "--max-clearance",
        "internal",
    )
    code, doc = issue(
        "carol",
        "--role",
        "engineer",
        "--employer",
        "custodian",
        "--employer-country",
        "US",
        "--clearance",
        "restricted",
    )
    assert code == 2 and "clearance" in str(doc["message"])
    code, doc = issue(
        "carol",
        "--role",
        "engineer",
        "--employer",
        "custodian",
        "--employer-country",
        "US",
        "--clearance",
        "internal",
    )
    assert code == 0 and doc["token"]
    listed = runner.invoke(app, ["principals", "list", "--home", str(home.path), "--json"])
    entries = json.loads(listed.output)["principals"]
    assert [e["sub"] for e in entries] == ["carol"] and entries[0]["max_clearance"] == "internal"
    off = runner.invoke(app, ["principals", "disable", "carol", "--home", str(home.path), "--json"])
    assert off.exit_code == 0 and json.loads(off.output)["status"] == "disabled"
    code, doc = issue(
        "carol", "--role", "engineer", "--employer", "custodian", "--employer-country", "US"
    )
    assert code == 2 and "disabled" in str(doc["message"])
    bad = runner.invoke(
        app,
        [
            "principals",
            "register",
            "dan",
            "--role",
            "engineer",
            "--max-clearance",
            "cosmic",
            "--home",
            str(home.path),
            "--json",
        ],
    )
    assert bad.exit_code == 2 and "max_clearance" in json.loads(bad.output)["message"]


def test_add_issuer_from_a_jwks_file(tmp_path: Path) -> None:
    home = _home(tmp_path)
    idp = Ed25519PrivateKey.generate()
    jwks_file = tmp_path / "idp-jwks.json"
    jwks_file.write_text(json.dumps({"keys": [public_jwk(idp.public_key())]}))
    result = runner.invoke(
        app,
        [
            "principals",
            "add-issuer",
            "https://idp.partner.example",
            "--jwks-file",
            str(jwks_file),
            "--claim",
            "employer=org",
            "--home",
            str(home.path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    jwks_file.unlink()  # the home keeps its own copy
    home = Home.load(home.path)
    trusted = load_external_issuers(home, gateway_config(home.settings))
    own = own_issuer(home, SystemClock())
    verifier = TokenVerifier([*trusted], audience=GatewayConfig().audience, clock=SystemClock())
    now = to_unix(SystemClock().now())
    token = jwt.encode(
        {
            "iss": "https://idp.partner.example",
            "sub": "p1",
            "aud": "bastion-gateway",
            "exp": now + 60,
            "iat": now,
            "org": "adpartner",
            "role": "ad_partner",
        },
        idp,
        algorithm="EdDSA",
    )
    principal = verifier.verify(token)
    assert principal.employer == "adpartner" and principal.issuer == "https://idp.partner.example"
    assert own.issuer != principal.issuer
    bad = runner.invoke(
        app,
        [
            "principals",
            "add-issuer",
            "x",
            "--jwks-file",
            str(tmp_path / "none.json"),
            "--home",
            str(home.path),
            "--json",
        ],
    )
    assert bad.exit_code == 2
