"""What every egress destination is: the protocol the runner calls, its error, its config.

A destination transports one :class:`~bastion.egress.delivery.Delivery` (the layout of
docs/EGRESS-PROTOCOL.md: manifest, ledger entry, proof, chunks) and a ``COMPLETE`` marker,
always last. Two promises, which the runner relies on to retry a failed run safely:

- ``deliver`` is idempotent by manifest id: delivering the same manifest again leaves exactly
  one copy, and a delivery cut short (the process killed, the destination gone) is finished,
  not duplicated, by the next call;
- ``delivered`` is true only once the ``COMPLETE`` marker is there, so a half delivery is never
  reported as done.

A destination that cannot be reached raises :class:`DestinationUnavailable` quickly (every
network call has a bounded timeout) and the run fails cleanly: nothing is marked delivered.
(The error and the name checks live in ``common``, which the destinations import; this module
builds them from a flow's config and re-exports both.)
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from bastion.egress.destinations.common import (
    COMPLETE,
    DestinationUnavailable,
    check_file_name,
    check_flow,
    check_manifest_id,
    layout,
)
from bastion.egress.destinations.files import DirectoryDestination
from bastion.egress.destinations.http import HttpDestination
from bastion.errors import InputError
from bastion.extras import require

if TYPE_CHECKING:
    from bastion.egress.delivery import Delivery

__all__ = [
    "COMPLETE",
    "Destination",
    "DestinationUnavailable",
    "FilesConfig",
    "HttpConfig",
    "NatsConfig",
    "check_file_name",
    "check_flow",
    "check_manifest_id",
    "destination_from_config",
    "layout",
    "parse_config",
]

_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A JetStream stream name and a subject prefix (dot-separated tokens, no wildcard).
_STREAM = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


@runtime_checkable
class Destination(Protocol):
    """Where a flow's deliveries go. See the module docstring for the two promises."""

    name: str

    def deliver(self, delivery: Delivery) -> None: ...

    def delivered(self, flow: str, manifest_id: str) -> bool: ...


# ---- config ----------------------------------------------------------------------------------


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FilesConfig(_Config):
    """A directory: ``<path>/<flow>/<manifest_id>/...``. Relative paths are under the home."""

    type: Literal["files"]
    path: str = Field(min_length=1)


class NatsConfig(_Config):
    type: Literal["nats"]
    url: str = "nats://127.0.0.1:4222"
    stream: str = "BASTION_EGRESS"
    subject_prefix: str = "bastion.egress"
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in {"nats", "tls"} or not parts.hostname:
            raise ValueError("a NATS url is nats://host:port or tls://host:port")
        return v

    @field_validator("stream")
    @classmethod
    def _stream(cls, v: str) -> str:
        if not _STREAM.fullmatch(v):
            raise ValueError("a stream name is 1-64 letters, digits, '-' or '_'")
        return v

    @field_validator("subject_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not _PREFIX.fullmatch(v):
            raise ValueError("a subject prefix is dot-separated tokens, no wildcard or space")
        return v


class HttpConfig(_Config):
    type: Literal["http"]
    url: str
    token_env: str | None = None
    timeout_s: float = Field(default=10.0, gt=0, le=120)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("an HTTP destination url is https://host[:port][/path]")
        if parts.query or parts.fragment:
            raise ValueError("an HTTP destination url has no query or fragment")
        # A bearer token and the delivery's metadata must not cross a network in clear:
        # plain http is for this machine only.
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise ValueError("plain http is allowed only to localhost; use https")
        return v.rstrip("/")

    @field_validator("token_env")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        if v is not None and not _ENV.fullmatch(v):
            raise ValueError("token_env is the name of an environment variable")
        return v


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


DestinationConfig = Annotated[FilesConfig | NatsConfig | HttpConfig, Field(discriminator="type")]
_ADAPTER: TypeAdapter[FilesConfig | NatsConfig | HttpConfig] = TypeAdapter(DestinationConfig)
TYPES = ("files", "nats", "http")


def parse_config(cfg: Mapping[str, Any]) -> FilesConfig | NatsConfig | HttpConfig:
    """Validate a flow's ``destination`` mapping; InputError names the field."""
    if not isinstance(cfg, Mapping):
        raise InputError("a destination is a mapping with a 'type'", field="destination")
    kind = cfg.get("type")
    if kind not in TYPES:
        raise InputError(
            f"unknown destination type {kind!r} (expected one of {', '.join(TYPES)})",
            field="destination.type",
        )
    try:
        return _ADAPTER.validate_python(dict(cfg))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"] if str(p) not in TYPES]
        where = ".".join(["destination", *loc])
        message = str(err["msg"]).removeprefix("Value error, ")
        raise InputError(message, field=where) from None


def destination_from_config(cfg: Mapping[str, Any], *, home: Path) -> Destination:
    """The destination a flow declares. A relative ``files`` path is under ``home``."""
    config = parse_config(cfg)
    if isinstance(config, FilesConfig):
        path = Path(config.path).expanduser()
        return DirectoryDestination(path if path.is_absolute() else home / path)
    if isinstance(config, NatsConfig):
        require("egress", "the NATS egress destination")
        # Deferred: nats-py is an optional extra (and nats.py never imports this module).
        from bastion.egress.destinations.nats import NatsDestination

        return NatsDestination(
            config.url,
            stream=config.stream,
            subject_prefix=config.subject_prefix,
            connect_timeout_s=config.connect_timeout_s,
        )
    return HttpDestination(config.url, token_env=config.token_env, timeout_s=config.timeout_s)
