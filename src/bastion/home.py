"""BASTION_HOME: the config file, the local keyring, the SQLite database and the log's tiles.

Environment variables override the config file, so one home can point at a shared
PostgreSQL database in production (``BASTION_DATABASE_URL``).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
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
# BASTION_BOUNDS_<NAME> overrides [bounds] <name>, e.g. BASTION_BOUNDS_STATEMENT_TIMEOUT_S=5.
ENV_BOUNDS_PREFIX = "BASTION_BOUNDS_"
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
class Bounds:
    """How long anything may wait, in seconds: ``[bounds]`` in the config file.

    Nothing on a request's path waits without one of these bounds, so a database that stops
    answering (or a key holder who revokes) is a 503 within a stated time, never a hang.
    ``docs/ARCHITECTURE.md`` ("Bounds") says what each one limits and what a request's
    worst case adds up to.
    """

    # PostgreSQL, per connection (libpq parameters and server settings).
    connect_timeout_s: float = 5.0  # libpq connect_timeout (whole seconds, at least 2)
    statement_timeout_s: float = 10.0  # the server cancels a statement that runs longer
    lock_timeout_s: float = 8.0  # ... and one that waits longer for a lock
    # The server ends a session left this long inside a transaction without a word: the
    # locks a partitioned gateway held (the ledger's, a bulk counter's) are then released.
    idle_in_transaction_s: float = 5.0
    # The client drops a connection that does not answer a round trip within
    # statement_timeout_s + network_grace_s (a path that stopped forwarding but stays open).
    network_grace_s: float = 2.0
    tcp_user_timeout_s: float = 10.0  # unacknowledged data: the kernel declares the link dead
    keepalives_idle_s: int = 5  # TCP keepalives on an idle connection: first probe after
    keepalives_interval_s: int = 2  # ... then one every
    keepalives_count: int = 3  # ... and dead after this many unanswered
    # SQLite: how long a writer waits for the file's write lock (was 60 s).
    sqlite_busy_timeout_s: float = 10.0
    # How long a request waits for work another thread does for it: the ledger's group
    # commit and the bulk counter's group reservation.
    commit_wait_s: float = 20.0
    # Key material held in memory (KEKs, data keys, erasure secrets, keys derived from them)
    # is re-validated against its provider at least this often: revocation takes effect
    # within this bound.
    revocation_check_s: float = 10.0

    @property
    def round_trip_s(self) -> float:
        """The longest the client waits for one answer from PostgreSQL before it gives up."""
        return self.statement_timeout_s + self.network_grace_s

    @property
    def request_s(self) -> float:
        """The longest any single wait of a request lasts: its 503 comes within this."""
        return max(self.connect_timeout_s, self.round_trip_s, self.commit_wait_s)

    @staticmethod
    def from_config(data: object, env: os._Environ[str] | dict[str, str]) -> Bounds:
        """``[bounds]`` with ``BASTION_BOUNDS_<NAME>`` overrides; every value positive."""
        if not isinstance(data, dict):
            raise ConfigError("config section [bounds] must be a table")
        names = {f.name: f for f in fields(Bounds)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"bounds.{unknown[0]} is not a known bound")
        values: dict[str, Any] = {}
        for name, f in names.items():
            raw = env.get(ENV_BOUNDS_PREFIX + name.upper(), data.get(name))
            if raw is None:
                continue
            kind = int if f.type == "int" else float
            try:
                if isinstance(raw, bool):
                    raise ValueError
                value = kind(raw)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"bounds.{name} must be a number of seconds, not {raw!r}"
                ) from None
            if not value > 0:
                raise ConfigError(f"bounds.{name} must be positive, not {raw!r}")
            values[name] = value
        return replace(Bounds(), **values)


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    key_provider: str = "local"
    pkcs11: Pkcs11Settings = field(default_factory=Pkcs11Settings)
    bounds: Bounds = field(default_factory=Bounds)
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
        bounds=Bounds.from_config(data.get("bounds", {}), env),
        raw=data,
    )


DEFAULT_CONFIG = """\
# Bastion configuration. Environment variables override these values:
#   BASTION_DATABASE_URL, BASTION_KEY_PROVIDER, BASTION_PKCS11_LIB,
#   BASTION_PKCS11_TOKEN, BASTION_PKCS11_PIN, BASTION_FREE_TEXT,
#   BASTION_BOUNDS_<NAME> (e.g. BASTION_BOUNDS_STATEMENT_TIMEOUT_S).

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
