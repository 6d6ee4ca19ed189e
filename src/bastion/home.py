"""BASTION_HOME: the config file, the local keyring, the SQLite database and the log's tiles.

The file's schema is ``bastion.settings``; environment variables override it, so one home
can point at a shared PostgreSQL database in production (``BASTION_DATABASE_URL``).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError, NotInitialized
from bastion.settings import (
    FREE_TEXT_MODES,
    Bounds,
    FreeTextMode,
    Pkcs11Settings,
    Settings,
    load_settings,
)

__all__ = [
    "FREE_TEXT_MODES",
    "Bounds",
    "FreeTextMode",
    "Home",
    "Pkcs11Settings",
    "Settings",
    "default_home_path",
    "settings_from",
]

CONFIG_NAME = "bastion.toml"

ENV_HOME = "BASTION_HOME"
ENV_FREE_TEXT = "BASTION_FREE_TEXT"


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
        return Home(root, settings_from(data, os.environ, source=str(cfg)))


def settings_from(
    data: Mapping[str, Any], env: Mapping[str, str], *, source: str = CONFIG_NAME
) -> Settings:
    """Merge the config file with environment overrides. Pure, so it is easy to test."""
    return load_settings(data, env, source=source)


DEFAULT_CONFIG = """\
# Bastion configuration. Every setting, its meaning and its range is declared in one schema
# (bastion/settings.py); a key it does not know stops Bastion with the file, section and key
# named. `bastion config show` prints the settings in force and where each came from.
# Environment variables override any setting: BASTION_<SECTION>_<KEY>, e.g.
#   BASTION_DATABASE_URL, BASTION_KEYS_PROVIDER, BASTION_GATEWAY_MAX_BATCH,
#   BASTION_BOUNDS_STATEMENT_TIMEOUT_S (lists and tables as JSON).

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
# Where the log lives: "database" (its tables, the default) or "files": the C2SP tlog-tiles
# layout as static files in `directory` (default <home>/log), which any web server can serve.
# storage = "database"
# directory = "log"

[bounds]
# How long anything may wait, in seconds (docs/ARCHITECTURE.md, "Bounds"). A request whose
# database stops answering gets its 503 within the largest of connect_timeout_s,
# statement_timeout_s + network_grace_s and commit_wait_s.
# connect_timeout_s = 5
# statement_timeout_s = 10
# lock_timeout_s = 8
# idle_in_transaction_s = 5
# network_grace_s = 2
# tcp_user_timeout_s = 10
# sqlite_busy_timeout_s = 10
# commit_wait_s = 20
# Revoking keys (removing the local key files, destroying the HSM key) stops all releases
# within this many seconds.
# revocation_check_s = 10
"""
