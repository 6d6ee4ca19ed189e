"""What the public log carries for the names, references and ids a caller typed.

A caller chooses more than free text: the dataset in a path, the field names of a request, an
export's destination, a ticket, a grant id, an ``X-Request-Id``. Each can be a person
("jane.doe@example.com" as a dataset, "Jane_Doe" as a ticket, a raw subject id as a ticket),
so none of them reaches the log as sent unless it has a shape that cannot carry one:

* a dataset, a field or a request-schema path is in clear when the catalog (or the API's own
  schema) names it; a name nobody declared is typed text;
* a ticket is in clear when it is a ticket id (``SUP-1042``: capitals, a dash, digits);
* a grant or access-request id is in clear when it is one Bastion issues (``gr_<32 hex>``);
* an export destination is always typed text;
* a client's request id is kept when it is a UUID or 16 to 64 hex digits, else replaced by a
  fresh one (it is an id, not a text: nothing of it is kept).

Typed text goes through :class:`~bastion.policy.PublicText` like any other: a keyed
commitment by default, the text itself under ``free_text = "publish"`` (which also keeps the
looser request-id pattern of old).
"""

from __future__ import annotations

import importlib
import json
import re
import uuid
from functools import cache

from pydantic import BaseModel

from bastion.extras import installed
from bastion.gateway.runtime import Runtime
from bastion.home import FreeTextMode

# Structured references the log carries in clear. Anything else a caller typed is text.
TICKET_ID = re.compile(r"^[A-Z][A-Z0-9]{1,15}-[0-9]{1,10}$")
ISSUED_ID = re.compile(r"^[a-z]{2}_[0-9a-f]{32}$")
CLIENT_REQUEST_ID = re.compile(
    r"^(?:[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
    r"|[0-9A-Fa-f]{16,64})$"
)
# What ``free_text = "publish"`` accepts, as before.
LEGACY_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{8,128}$")
# The gateway's own datasets (not in the catalog): access histories and the policy set.
GATEWAY_DATASETS = frozenset({"@access-history", "@policy"})
# Parts of a validation error's location that are not model fields: where, the query and path
# parameters of the routes, and the member tags of a union.
_LOCATION_WORDS = frozenset(
    {"body", "query", "path", "header", "cookie", "str", "int", "list[str]"}
    | {"limit", "before", "scope", "status", "dataset", "subject_id"}
    | {"request_id", "grant_id", "review_id"}
)
_INDEX = re.compile(r"^[0-9]{1,9}$")
# module -> the extra it needs (bastion/extras.py).
_OPTIONAL_SCHEMA_MODULES = {"bastion.cleanroom.templates": "analytics"}
_SCHEMA_MODULES = (
    "bastion.gateway.models",
    *(
        f"bastion.gateway.routes.{name}"
        for name in ("access", "cleanroom", "data", "policy", "public", "transparency")
    ),
    "bastion.cleanroom.templates",
)


def client_request_id(given: str | None, mode: FreeTextMode) -> str:
    """The request id for a request whose caller sent ``given`` as ``X-Request-Id``."""
    pattern = LEGACY_REQUEST_ID if mode == "publish" else CLIENT_REQUEST_ID
    if given and pattern.match(given):
        return given
    return uuid.uuid4().hex


def public_ticket(rt: Runtime, ticket: str | None) -> str | None:
    """A ticket id in clear; anything else given as a ticket as typed text."""
    if not ticket:
        return None
    if TICKET_ID.match(ticket):
        return ticket
    return rt.public_text.publish(ticket)


def public_id(rt: Runtime, value: str | None) -> str | None:
    """An id Bastion issued (a grant, an access request) in clear; any other as typed text."""
    if not value:
        return value
    if ISSUED_ID.match(value):
        return value
    return rt.public_text.publish(value)


def known_dataset(rt: Runtime, name: str) -> bool:
    return name in GATEWAY_DATASETS or name in rt.catalog.names


def public_dataset(rt: Runtime, name: str | None) -> str | None:
    """A dataset the catalog declares in clear; any other name as typed text."""
    if not name or known_dataset(rt, name):
        return name
    return rt.public_text.publish(name)


@cache
def _schema_names() -> frozenset[str]:
    """Every field name (and alias) of Bastion's own models: the words a request's schema
    is made of, and so the words a validation error's location may name."""
    # The request schemas themselves, whatever was imported first (the routes load with the
    # app; the clean room's query on first use).
    for module in _SCHEMA_MODULES:
        if module in _OPTIONAL_SCHEMA_MODULES and not installed(_OPTIONAL_SCHEMA_MODULES[module]):
            continue  # not installed: no request can name its fields
        importlib.import_module(module)

    names: set[str] = set()
    stack: list[type[BaseModel]] = list(BaseModel.__subclasses__())
    seen: set[type[BaseModel]] = set()
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        stack.extend(cls.__subclasses__())
        if not cls.__module__.startswith("bastion."):
            continue
        for name, info in cls.model_fields.items():
            names.add(name)
            if info.alias:
                names.add(info.alias)
    return frozenset(names)


def known_field(rt: Runtime, path: str) -> bool:
    """Whether every part of ``path`` (a field, or a dotted location in a request) is a name
    the catalog or the API schema declares, or an index."""
    catalog_fields = {f.name for d in rt.catalog.datasets for f in d.fields}
    schema = _schema_names()
    return all(
        part in catalog_fields
        or part in schema
        or part in _LOCATION_WORDS
        or _INDEX.match(part) is not None
        for part in path.split(".")
    )


def public_field(rt: Runtime, path: str | None) -> str | None:
    """A declared field or request path in clear; any other as typed text (all of it: a
    dotted email is one text, not several names)."""
    if not path or known_field(rt, path):
        return path
    return rt.public_text.publish(path)


def scrub(message: str, replacements: dict[str, str]) -> str:
    """``message`` with each typed ``raw`` it quotes (as Python or JSON quote it, or bare
    between non-word characters) replaced by what the log carries for it."""
    for raw, public in replacements.items():
        if not raw or raw == public:
            continue
        for quoted in (repr(raw), json.dumps(raw), json.dumps(raw, ensure_ascii=False)):
            message = message.replace(quoted, repr(public))
        bare = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(raw)}(?![A-Za-z0-9_])")
        # Split and joined, not re.sub: the replacement is taken literally.
        message = public.join(bare.split(message))
    return message
