"""One typed schema for bastion.toml: unknown keys and bad values are refused, by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bastion.cli.home_cmd import init_home
from bastion.cli.main import app
from bastion.errors import ConfigError
from bastion.home import DEFAULT_CONFIG, Home, settings_from
from bastion.settings import Settings, effective_settings

runner = CliRunner()


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"gateway": {"max_bach": 3}}, "[gateway] max_bach is not a known setting"),
        ({"gatway": {}}, "[gatway] is not a known setting"),
        ({"keys": {"pkcs11": {"libary": "x"}}}, "[keys] pkcs11.libary is not a known"),
        (
            {"gateway": {"issuers": [{"issuer": "i", "jwks_fil": "j.json"}]}},
            "[gateway] issuers[0].jwks_fil is not a known setting",
        ),
        ({"cleanroom": {"epsilon": 1.0}}, "[cleanroom] epsilon is not a known setting"),
        ({"approvals": {"default_max_use": 2}}, "[approvals] default_max_use is not"),
    ],
)
def test_an_unknown_key_is_refused_with_file_section_and_key(
    data: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigError) as err:
        settings_from(data, {}, source="/etc/bastion.toml")
    assert str(err.value).startswith("/etc/bastion.toml: ")
    assert named in str(err.value)


def test_a_misspelt_key_gets_the_closest_known_one() -> None:
    with pytest.raises(ConfigError, match="did you mean 'max_batch'"):
        settings_from({"gateway": {"max_bach": 3}}, {})


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"gateway": {"max_batch": True}}, "[gateway] max_batch: Input should be a valid int"),
        ({"gateway": {"max_batch": "5"}}, "[gateway] max_batch: Input should be a valid int"),
        ({"gateway": {"max_batch": 10**7}}, "[gateway] max_batch: Input should be less"),
        ({"bounds": {"commit_wait_s": 0}}, "[bounds] commit_wait_s: Input should be greater"),
        ({"keys": {"provider": "cloud"}}, "[keys] provider: Input should be 'local' or"),
        ({"ledger": {"witnesses": "https://w"}}, "[ledger] witnesses: "),
        ({"gateway": {"bulk_thresholds": {"health": -1}}}, "[gateway] bulk_thresholds.health"),
        ({"approvals": {"default_max_uses": 500, "max_uses_limit": 100}}, "exceeds max_uses"),
        ({"gateway": {"issuers": [{"issuer": "i"}]}}, "give 'jwks_file' or 'jwks_url'"),
        ({"gateway": "on"}, "[gateway]: Input should be a valid dictionary"),
    ],
)
def test_a_bad_value_is_refused_with_its_place(data: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_from(data, {}, source="bastion.toml")
    assert named in str(err.value), str(err.value)


def test_the_environment_overrides_any_scalar_and_says_so() -> None:
    s = settings_from(
        {"gateway": {"max_batch": 200}, "cleanroom": {"confidence": 0.9}},
        {
            "BASTION_GATEWAY_MAX_BATCH": "42",
            "BASTION_KEYS_PKCS11_LIBRARY": "/opt/hsm.so",
            "BASTION_PKCS11_PIN": "1234",  # an older name, kept as an alias
            "BASTION_LEDGER_WITNESSES": '["https://w.example/ vkey"]',
        },
    )
    assert s.gateway.max_batch == 42
    assert s.keys.pkcs11.library == "/opt/hsm.so" and s.pkcs11.pin == "1234"
    assert s.witnesses == ("https://w.example/ vkey",)
    assert s.cleanroom.confidence == 0.9
    assert s.source_of("gateway.max_batch") == "env BASTION_GATEWAY_MAX_BATCH"
    assert s.source_of("keys.pkcs11.pin") == "env BASTION_PKCS11_PIN"
    assert s.source_of("cleanroom.confidence") == "file"
    assert s.source_of("gateway.max_page_size") == "default"


def test_a_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="environment variable BASTION_GATEWAY_MAX_BATCH"):
        settings_from({}, {"BASTION_GATEWAY_MAX_BATCH": "lots"})
    # In range is checked with the whole model, and the variable is still the one named.
    with pytest.raises(ConfigError, match="environment variable BASTION_BOUNDS_COMMIT_WAIT_S"):
        settings_from({}, {"BASTION_BOUNDS_COMMIT_WAIT_S": "-1"})


def test_the_shipped_config_file_is_valid_and_changes_no_default() -> None:
    import tomllib

    data = tomllib.loads(DEFAULT_CONFIG.format(origin="bastion.example/log"))
    assert settings_from(data, {}).model_dump() == Settings().model_dump()


def test_a_home_with_an_unknown_key_does_not_load(tmp_path: Path) -> None:
    home = init_home(tmp_path / "h", origin="settings.test/log")
    with home.config_file.open("a") as f:
        f.write('\n[gateway]\nprincipal = "any"\n')
    with pytest.raises(ConfigError, match=r"bastion.toml: \[gateway\] principal is not"):
        Home.load(home.path)
    result = runner.invoke(app, ["config", "show", "--home", str(home.path), "--json"])
    assert result.exit_code == 2
    out = json.loads(result.stdout)
    assert out["ok"] is False and "principal is not a known setting" in out["message"]


def test_config_show_lists_every_setting_with_its_source_and_hides_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = init_home(tmp_path / "h", origin="settings.test/log")
    monkeypatch.setenv("BASTION_DATABASE_URL", "postgresql://app:s3cret@db.example:5432/b")
    monkeypatch.setenv("BASTION_PKCS11_PIN", "0000-pin")
    result = runner.invoke(app, ["config", "show", "--home", str(home.path), "--json"])
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.stdout and "0000-pin" not in result.stdout
    rows = {r["key"]: r for r in json.loads(result.stdout)["settings"]}
    assert set(rows) == {k for k, _, _ in effective_settings(Settings())}
    assert rows["database.url"] == {
        "key": "database.url",
        "value": "postgresql://app:<redacted>@db.example:5432/b",
        "source": "env BASTION_DATABASE_URL",
    }
    assert rows["keys.pkcs11.pin"]["value"] == "<redacted>"
    assert rows["ledger.origin"] == {
        "key": "ledger.origin",
        "value": "settings.test/log",
        "source": "file",
    }
    assert rows["gateway.max_batch"]["source"] == "default"
    text = runner.invoke(app, ["config", "show", "--home", str(home.path)])
    assert text.exit_code == 0 and "gateway.max_batch" in text.stdout
    assert "s3cret" not in text.stdout


def test_the_schema_and_the_policy_agree_on_the_most_approvers() -> None:
    from bastion.policy.vocabulary import MAX_APPROVERS
    from bastion.settings import MAX_APPROVERS as SETTINGS_MAX

    assert SETTINGS_MAX == MAX_APPROVERS
