"""BASTION_HOME: the config file, the local keyring, the SQLite database and the log's tiles.

Environment variables override the config file, so one home can point at a shared
PostgreSQL database in production (``BASTION_DATABASE_URL``).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

from bastion.errors import ConfigError, NotInitialized

CONFIG_NAME = "bastion.toml"

ENV_HOME = "BASTION_HOME"
ENV_DATABASE_URL = "BASTION_DATABASE_URL"
ENV_KEY_PROVIDER = "BASTION_KEY_PROVIDER"
ENV_PKCS11_LIB = "BASTION_PKCS11_LIB"
ENV_PKCS11_TOKEN = "BASTION_PKCS11_TOKEN"
ENV_PKCS11_PIN = "BASTION_PKCS11_PIN"
ENV_FREE_TEXT = "BASTION_FREE_TEXT"
# What the public log carries for text a principal types (justification details, reasons,
# review notes, purposes): "commit" a keyed commitment, the text kept in the database; or
# "publish" the text itself (see bastion/policy/freetext.py).
FreeTextMode = Literal["commit", "publish"]
FREE_TEXT_MODES: tuple[str, ...] = get_args(FreeTextMode)


@dataclass(frozen=True)
class Pkcs11Settings:
    library: str = "/usr/lib/softhsm/libsofthsm2.so"
    token_label: str = "bastion"
    pin: str = ""


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    key_provider: str = "local"
    pkcs11: Pkcs11Settings = field(default_factory=Pkcs11Settings)
    log_origin: str = "bastion.example/log"
    witnesses: tuple[str, ...] = ()
    witness_quorum: int = 0
    free_text: FreeTextMode = "commit"
    raw: dict[str, Any] = field(default_factory=dict)


def default_home_path() -> Path:
    return Path(os.environ.get(ENV_HOME, "./.bastion")).expanduser()


@dataclass(frozen=True)
class Home:
    path: Path
    settings: Settings

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def keyring_dir(self) -> Path:
        return self.path / "keys"

    @property
    def sqlite_path(self) -> Path:
        return self.path / "bastion.db"

    @property
    def tiles_dir(self) -> Path:
        return self.path / "log"

    @property
    def database_url(self) -> str:
        """The DSN in force: PostgreSQL if configured, else the embedded SQLite file."""
        return self.settings.database_url or f"sqlite:///{self.sqlite_path}"

    @staticmethod
    def load(path: Path | None = None) -> Home:
        root = (path or default_home_path()).resolve()
        cfg = root / CONFIG_NAME
        if not cfg.is_file():
            raise NotInitialized(
                f"{root} is not an initialized Bastion home (no {CONFIG_NAME}); "
                f"run `bastion init` first or set {ENV_HOME}"
            )
        try:
            data = tomllib.loads(cfg.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{cfg}: invalid TOML: {exc}") from None
        return Home(root, settings_from(data, os.environ))


def settings_from(data: dict[str, Any], env: os._Environ[str] | dict[str, str]) -> Settings:
    """Merge the config file with environment overrides. Pure, so it is easy to test."""
    db = data.get("database", {})
    keys = data.get("keys", {})
    p11 = keys.get("pkcs11", {})
    ledger = data.get("ledger", {})
    if not isinstance(db, dict) or not isinstance(keys, dict) or not isinstance(ledger, dict):
        raise ConfigError("config sections [database], [keys] and [ledger] must be tables")
    provider = env.get(ENV_KEY_PROVIDER) or keys.get("provider", "local")
    if provider not in ("local", "pkcs11"):
        raise ConfigError(f"keys.provider must be 'local' or 'pkcs11', not {provider!r}")
    witnesses = ledger.get("witnesses", [])
    if not isinstance(witnesses, list) or not all(isinstance(w, str) for w in witnesses):
        raise ConfigError("ledger.witnesses must be a list of witness URLs")
    free_text = env.get(ENV_FREE_TEXT) or ledger.get("free_text", "commit")
    if free_text not in FREE_TEXT_MODES:
        raise ConfigError(f"ledger.free_text must be 'commit' or 'publish', not {free_text!r}")
    return Settings(
        database_url=env.get(ENV_DATABASE_URL) or db.get("url") or None,
        key_provider=str(provider),
        pkcs11=Pkcs11Settings(
            library=env.get(ENV_PKCS11_LIB) or p11.get("library", Pkcs11Settings.library),
            token_label=env.get(ENV_PKCS11_TOKEN) or p11.get("token", Pkcs11Settings.token_label),
            pin=env.get(ENV_PKCS11_PIN) or p11.get("pin", ""),
        ),
        log_origin=str(ledger.get("origin", Settings.log_origin)),
        witnesses=tuple(witnesses),
        witness_quorum=int(ledger.get("witness_quorum", 0)),
        free_text=cast(FreeTextMode, free_text),
        raw=data,
    )


DEFAULT_CONFIG = """\
# Bastion configuration. Environment variables override these values:
#   BASTION_DATABASE_URL, BASTION_KEY_PROVIDER, BASTION_PKCS11_LIB,
#   BASTION_PKCS11_TOKEN, BASTION_PKCS11_PIN, BASTION_FREE_TEXT.

[database]
# Empty means the embedded SQLite file bastion.db in this home.
# url = "postgresql://postgres@127.0.0.1:5432/test"

[keys]
# "local" (files under keys/, mode 0600) or "pkcs11" (an HSM such as SoftHSM2).
provider = "local"

[keys.pkcs11]
library = "/usr/lib/softhsm/libsofthsm2.so"
token = "bastion"

[ledger]
origin = "{origin}"
# Each witness is "<add-checkpoint URL prefix> <its C2SP cosignature vkey>"; the log submits
# every new checkpoint and publishes it with the cosignatures that verify.
witnesses = []
witness_quorum = 0
# Text a principal types (justification details, reasons, review notes, purposes) can name
# a person, and the log is public: "commit" (default) records a keyed commitment
# hmac-sha256:<hex> and keeps the text in the database; "publish" records the text itself.
free_text = "commit"
"""
