"""Every setting of bastion.toml in one typed schema, with environment overrides.

This is the one place a setting is declared: its section, type, default and range. A home's
file is validated against it when the home is loaded, so a misspelt key or a value out of
range stops the program at start-up with the file, the section and the key named, instead of
being ignored (or, worse, silently falling back to a default). ``bastion config show``
prints the effective settings and where each came from.

Any scalar setting can be overridden by an environment variable named after its place:
``BASTION_<SECTION>_<KEY>`` (``BASTION_GATEWAY_MAX_BATCH=100``,
``BASTION_KEYS_PKCS11_LIBRARY=...``); lists and tables take JSON. A few older names are kept
as aliases (``LEGACY_ENV``). The parts read their typed section (``settings.gateway``,
``settings.cleanroom``, ...) and turn it into their own runtime objects; value checks that
need a part's own vocabulary (a 28 CFR 202 category, an issuer's JWKS) stay in that part.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from bastion.errors import ConfigError

ENV_PREFIX = "BASTION_"

# Strict: a TOML ``true`` is not the number 1, and "5" in the file is not an integer. Values
# from the environment are strings; they are parsed with the same types (validate_strings).
Text = Annotated[str, Strict()]
Positive = Annotated[float, Strict(), Field(gt=0)]
PositiveInt = Annotated[int, Strict(), Field(gt=0)]

# What the public log carries for text a principal types (justification details, reasons,
# review notes, purposes): "commit" a keyed commitment, the text kept in the database; or
# "publish" the text itself (see bastion/policy/freetext.py).
FreeTextMode = Literal["commit", "publish"]
FREE_TEXT_MODES: tuple[str, ...] = get_args(FreeTextMode)

# The most approvers any grant can need (policy.approvals.MAX_APPROVERS says why).
MAX_APPROVERS = 9
HARD_MAX_PAGE = 1000


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(Section):
    # Empty means the embedded SQLite file bastion.db in the home.
    url: Text | None = None


class Pkcs11Settings(Section):
    library: Text = "/usr/lib/softhsm/libsofthsm2.so"
    token: Text = "bastion"
    pin: Text = ""


class KeysSettings(Section):
    # "local" (files under keys/, mode 0600) or "pkcs11" (an HSM such as SoftHSM2).
    provider: Literal["local", "pkcs11"] = "local"
    pkcs11: Pkcs11Settings = Field(default_factory=Pkcs11Settings)


class LedgerSettings(Section):
    origin: Text = "bastion.example/log"
    # Each witness is "<add-checkpoint URL prefix> <its C2SP cosignature vkey>".
    witnesses: tuple[Text, ...] = ()
    witness_quorum: Annotated[int, Strict(), Field(ge=0)] = 0
    free_text: FreeTextMode = "commit"
    # Where the log lives: "database" (its tables) or "files" (static C2SP tlog-tiles files
    # that any web server can serve, in `directory`: default <home>/log, relative to the home).
    storage: Literal["database", "files"] = "database"
    directory: Text | None = None


class Bounds(Section):
    """How long anything may wait, in seconds: ``[bounds]`` in the config file.

    Nothing on a request's path waits without one of these bounds, so a database that stops
    answering (or a key holder who revokes) is a 503 within a stated time, never a hang.
    ``docs/ARCHITECTURE.md`` ("Bounds") says what each one limits and what a request's
    worst case adds up to.
    """

    # PostgreSQL, per connection (libpq parameters and server settings).
    connect_timeout_s: Positive = 5.0  # libpq connect_timeout (whole seconds, at least 2)
    statement_timeout_s: Positive = 10.0  # the server cancels a statement that runs longer
    lock_timeout_s: Positive = 8.0  # ... and one that waits longer for a lock
    # The server ends a session left this long inside a transaction without a word: the
    # locks a partitioned gateway held (the ledger's, a bulk counter's) are then released.
    idle_in_transaction_s: Positive = 5.0
    # The client drops a connection that does not answer a round trip within
    # statement_timeout_s + network_grace_s (a path that stopped forwarding but stays open).
    network_grace_s: Positive = 2.0
    tcp_user_timeout_s: Positive = 10.0  # unacknowledged data: the kernel declares it dead
    keepalives_idle_s: PositiveInt = 5  # TCP keepalives on an idle connection: first probe
    keepalives_interval_s: PositiveInt = 2  # ... then one every
    keepalives_count: PositiveInt = 3  # ... and dead after this many unanswered
    # SQLite: how long a writer waits for the file's write lock.
    sqlite_busy_timeout_s: Positive = 10.0
    # How long a request waits for work another thread does for it: the ledger's group
    # commit (which also runs the bulk count, as its side write).
    commit_wait_s: Positive = 20.0
    # Key material held in memory (KEKs, data keys, erasure secrets, keys derived from them)
    # is re-validated against its provider at least this often: revocation takes effect
    # within this bound.
    revocation_check_s: Positive = 10.0

    @property
    def round_trip_s(self) -> float:
        """The longest the client waits for one answer from PostgreSQL before it gives up."""
        return self.statement_timeout_s + self.network_grace_s

    @property
    def request_s(self) -> float:
        """The longest any single wait of a request lasts: its 503 comes within this."""
        return max(self.connect_timeout_s, self.round_trip_s, self.commit_wait_s)


class IssuerSettings(Section):
    """One ``[[gateway.issuers]]`` entry: an external OIDC issuer trusted by its JWKS."""

    issuer: Annotated[str, Strict(), Field(min_length=1)]
    audience: Text | None = None
    # Bastion attribute -> the IdP's claim name.
    claims: dict[Text, Text] = Field(default_factory=dict)
    # Attribute -> the values this issuer may assert (gateway.auth.ALLOWABLE names them).
    allow: dict[Text, list[Text]] = Field(default_factory=dict)
    jwks_file: Text | None = None  # relative to BASTION_HOME
    jwks_url: Text | None = None
    jwks: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_key_source(self) -> IssuerSettings:
        if not (self.jwks_file or self.jwks_url or self.jwks):
            raise ValueError("give 'jwks_file' or 'jwks_url' for this issuer")
        return self


class GatewaySettings(Section):
    issuer: Text = "bastion"  # iss of tokens from `bastion principals issue`
    audience: Text = "bastion-gateway"  # aud every accepted token must carry
    max_page_size: Annotated[int, Strict(), Field(ge=1, le=HARD_MAX_PAGE)] = 500
    max_batch: Annotated[int, Strict(), Field(ge=1, le=HARD_MAX_PAGE)] = 500
    max_export: Annotated[int, Strict(), Field(ge=1, le=1_000_000)] = 10_000
    # Records in one POST /datasets/{dataset}/records (all or nothing; docs/WRITES.md).
    max_write_batch: Annotated[int, Strict(), Field(ge=1, le=HARD_MAX_PAGE)] = 500
    # How long GET /datasets/{dataset}/changes may hold a request open for new changes.
    max_change_wait_s: Annotated[float, Strict(), Field(ge=0, le=60)] = 30.0
    # category -> limit of distinct subjects per 12 months, for each employer and principal;
    # empty: the legal thresholds of 28 CFR 202.205.
    bulk_thresholds: dict[Text, Annotated[int, Strict(), Field(ge=0)]] = Field(default_factory=dict)
    # "registered": only principals in the registry, within their registered attributes;
    # "any": any signed sub (the behaviour before the registry).
    principals: Literal["registered", "any"] = "registered"
    # "registered": a read under a ticket names an open ticket a ticketing service
    # registered, and its rows are that ticket's subjects; "caller": the reader's own.
    tickets: Literal["registered", "caller"] = "registered"
    issuers: tuple[IssuerSettings, ...] = ()


class ApprovalSettings(Section):
    # 0 keeps policy's count of approvers for all-subject grants.
    all_subjects_extra_approvers: Annotated[int, Strict(), Field(ge=0, le=MAX_APPROVERS)] = 1
    # Uses of a grant when the request names none, and the most a request may ask for.
    default_max_uses: Annotated[int, Strict(), Field(ge=1, le=1_000_000)] = 1
    break_glass_default_uses: Annotated[int, Strict(), Field(ge=1, le=1_000_000)] = 10
    max_uses_limit: Annotated[int, Strict(), Field(ge=1, le=1_000_000)] = 100

    @model_validator(mode="after")
    def _defaults_within_limit(self) -> ApprovalSettings:
        if max(self.default_max_uses, self.break_glass_default_uses) > self.max_uses_limit:
            raise ValueError("a default number of uses exceeds max_uses_limit")
        return self


class PolicySettings(Section):
    # A YAML file of invariants (relative to the home) that replaces the shipped ones.
    invariants: Text | None = None


class CleanRoomSettings(Section):
    max_epsilon_per_query: Annotated[float, Strict(), Field(gt=0, le=100)] = 2.0
    # Delta spent by a query whose groups come from DP partition selection.
    delta_per_query: Annotated[float, Strict(), Field(gt=0, lt=1e-3)] = 1e-7
    # Share of a query's epsilon spent on selecting private keys.
    selection_share: Annotated[float, Strict(), Field(gt=0, lt=1)] = 1.0 / 3.0
    confidence: Annotated[float, Strict(), Field(gt=0, lt=1)] = 0.95
    # Pad each answer to a multiple of this many seconds (0: off). See docs/CLEANROOM.md.
    response_quantum_s: Annotated[float, Strict(), Field(ge=0)] = 0.0
    # Where the clean room's snapshot lives; empty: <home>/cleanroom.
    data_dir: Text | None = None
    # How often `bastion serve` refreshes the snapshot from the vault's change feed (0: never;
    # then `bastion cleanroom snapshot` must run, e.g. from cron).
    snapshot_refresh_seconds: Annotated[float, Strict(), Field(ge=0, le=86_400)] = 30.0
    # The clean room refuses to answer from a snapshot whose change-feed read is older than
    # this: a shred or a record delete stops counting at most this long after it committed.
    max_snapshot_age_seconds: Annotated[float, Strict(), Field(gt=0, le=7 * 86_400)] = 300.0

    @model_validator(mode="after")
    def _refresh_within_age(self) -> CleanRoomSettings:
        if self.snapshot_refresh_seconds >= self.max_snapshot_age_seconds:
            raise ValueError(
                "snapshot_refresh_seconds must be below max_snapshot_age_seconds, or every "
                "snapshot would be refused as stale before the next refresh"
            )
        return self


class SubjectsSettings(Section):
    """Data-subject rights (docs/SUBJECTS.md)."""

    # Seconds between an erasure request and its execution (0: at once). A request may be
    # withdrawn in between; a legal hold delays it further, until released.
    erasure_cooling_off_seconds: Annotated[int, Strict(), Field(ge=0, le=400 * 86400)] = 0
    # How often `bastion serve` executes the erasures that are due (0: never there; run
    # `bastion subjects process-erasures` instead).
    executor_interval_s: Annotated[float, Strict(), Field(ge=0)] = 10.0


class RetentionSettings(Section):
    """The retention sweeper (docs/SUBJECTS.md, "Retention")."""

    # How often `bastion serve` deletes records past their dataset's retention (0: never
    # there; run `bastion vault sweep` instead).
    sweep_interval_s: Annotated[float, Strict(), Field(ge=0)] = 3600.0
    # Records deleted per transaction (each batch holds the vault lock, with its ledger entry).
    batch_size: Annotated[int, Strict(), Field(ge=1, le=5000)] = 500


class EgressSettings(Section):
    """Declared flows to outside recipients (docs/EGRESS.md)."""

    # Where a run's chunks and manifest wait until delivered (relative: under BASTION_HOME).
    spool_dir: Text = "egress/spool"
    # Rows per payload chunk (a chunk is one Parquet file, sealed to the recipient).
    chunk_rows: Annotated[int, Strict(), Field(ge=1, le=5_000_000)] = 500_000
    # How often `bastion serve` (and `bastion egress worker`) looks for a flow that is due
    # (0: never in serve; run `bastion egress worker` or `bastion egress run` instead).
    scheduler_interval_s: Annotated[float, Strict(), Field(ge=0, le=86_400)] = 60.0


class Settings(Section):
    """The whole of bastion.toml, every section optional."""

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    keys: KeysSettings = Field(default_factory=KeysSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    bounds: Bounds = Field(default_factory=Bounds)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    approvals: ApprovalSettings = Field(default_factory=ApprovalSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    cleanroom: CleanRoomSettings = Field(default_factory=CleanRoomSettings)
    subjects: SubjectsSettings = Field(default_factory=SubjectsSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    egress: EgressSettings = Field(default_factory=EgressSettings)
    # Where each setting in force came from: "<section>.<key>" -> "file" (the home's
    # bastion.toml) or "env <NAME>"; a key that is absent took its default.
    sources: dict[str, str] = Field(default_factory=dict, exclude=True)

    # ---- the shortcuts the parts used before the schema (kept: they read well) ----------

    @property
    def database_url(self) -> str | None:
        return self.database.url or None

    @property
    def key_provider(self) -> str:
        return self.keys.provider

    @property
    def pkcs11(self) -> Pkcs11Settings:
        return self.keys.pkcs11

    @property
    def log_origin(self) -> str:
        return self.ledger.origin

    @property
    def witnesses(self) -> tuple[str, ...]:
        return self.ledger.witnesses

    @property
    def witness_quorum(self) -> int:
        return self.ledger.witness_quorum

    @property
    def free_text(self) -> FreeTextMode:
        return self.ledger.free_text

    def source_of(self, key: str) -> str:
        return self.sources.get(key, "default")


# Older variable names, kept so existing deployments keep working.
LEGACY_ENV: dict[str, tuple[str, ...]] = {
    "BASTION_KEY_PROVIDER": ("keys", "provider"),
    "BASTION_PKCS11_LIB": ("keys", "pkcs11", "library"),
    "BASTION_PKCS11_TOKEN": ("keys", "pkcs11", "token"),
    "BASTION_PKCS11_PIN": ("keys", "pkcs11", "pin"),
    "BASTION_FREE_TEXT": ("ledger", "free_text"),
}


def _leaves(model: type[BaseModel], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every setting's place: nested sections are walked, everything else is a leaf."""
    for name, info in model.model_fields.items():
        if info.exclude:
            continue
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            yield from _leaves(annotation, (*path, name))
        else:
            yield (*path, name)


def env_name(path: tuple[str, ...]) -> str:
    return ENV_PREFIX + "_".join(path).upper()


def _field_info(path: tuple[str, ...]) -> Any:
    model: type[BaseModel] = Settings
    for part in path[:-1]:
        annotation = model.model_fields[part].annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
        model = annotation
    return model.model_fields[path[-1]]


def _parse_env(path: tuple[str, ...], name: str, raw: str) -> Any:
    annotation = _field_info(path).annotation
    # The type alone: ranges and strictness are checked with the whole model, as for the file.
    adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    try:
        if get_origin(annotation) in (dict, tuple, list):
            return adapter.validate_json(raw)
        return adapter.validate_strings(raw)
    except ValidationError as exc:
        raise ConfigError(
            f"environment variable {name} ({'.'.join(path)}): {exc.errors()[0]['msg']}"
        ) from None


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        inner = data.get(part)
        if not isinstance(inner, dict):
            inner = {}
            data[part] = inner
        data = inner
    data[path[-1]] = value


def _has(data: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = data
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _where(loc: tuple[int | str, ...]) -> str:
    section, *rest = loc or ("?",)
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest).lstrip(".")
    return f"[{section}] {key}" if key else f"[{section}]"


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """The closest known key at that place, for a misspelt one."""
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        inner = _section_type(info.annotation) if info else None
        if inner is None:
            return ""
        model = inner
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds: a section, or the entries of a list of sections."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _copy_tables(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy_tables(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def load_settings(
    data: Mapping[str, Any], env: Mapping[str, str], *, source: str = "bastion.toml"
) -> Settings:
    """The file's tables with the environment's overrides, validated. Pure, for tests.

    Errors name the file (or the environment variable), the section and the key.
    """
    merged = _copy_tables(data)
    sources = {".".join(p): "file" for p in _leaves(Settings) if _has(data, p)}
    env_paths = {env_name(p): p for p in _leaves(Settings)}
    env_paths.update(LEGACY_ENV)
    for name, path in env_paths.items():
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        _set(merged, path, _parse_env(path, name, raw))
        sources[".".join(path)] = f"env {name}"
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        place = ".".join(str(p) for p in loc[:2])
        origin = sources.get(place, "file")
        where = source if origin == "file" else f"environment variable {origin[4:]}"
        if first["type"] == "extra_forbidden":
            what = " is not a known setting" + _did_you_mean(loc)
        else:
            what = f": {first['msg']}"
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(f"{where}: {_where(loc)}{what}{more}") from None
    return settings.model_copy(update={"sources": sources})


def effective_settings(settings: Settings) -> list[tuple[str, object, str]]:
    """Every setting as (key, value, source), secrets redacted: ``bastion config show``."""
    dumped = settings.model_dump(mode="json")
    rows: list[tuple[str, object, str]] = []
    for path in _leaves(Settings):
        node: Any = dumped
        for part in path:
            node = node[part]
        key = ".".join(path)
        if path[-1] in ("pin",) and node:
            node = "<redacted>"
        elif key == "database.url" and isinstance(node, str):
            node = _redact_dsn(node)
        rows.append((key, node, settings.source_of(key)))
    return rows


def _redact_dsn(url: str) -> str:
    """A DSN's password is a secret; the rest of it says where the data lives."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{scheme}://{creds.split(':', 1)[0]}:<redacted>@{host}"
