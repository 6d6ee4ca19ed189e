"""Which records a release is about: record ids, structured filters or a page of a listing.

Selecting decrypts nothing: ids and filters resolve to vault record keys and each record's
subject token through the vault's clear index (``VaultLookup``), and a shredded subject's
records are dropped. A principal that sees identifiers only as pseudonyms names records by
the tokens it was given (:class:`Addressing`): otherwise a batch of raw ids would map each
account to its pseudonym, and ``missing`` would say which accounts exist.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from bastion.catalog import DatasetSpec
from bastion.errors import InputError
from bastion.gateway.models import Filter
from bastion.vault import Vault
from bastion.vault.lookup import VaultLookup
from bastion.vault.stored import StoredRecords

MAX_FILTER_VALUES = 100


@dataclass(frozen=True)
class Selection:
    """Which records a request is about. Exactly one way of choosing is used."""

    record_ids: tuple[str, ...] = ()
    filters: tuple[Filter, ...] = ()
    page_size: int = 0
    page_token: str | None = None


@dataclass(frozen=True)
class Addressing:
    """Whether a request may name records by raw identifiers (else by pseudonym tokens)."""

    raw_record_ids: bool
    raw_subject_ids: bool


RAW_IDS = Addressing(raw_record_ids=True, raw_subject_ids=True)


@dataclass(frozen=True)
class Resolved:
    """Records resolved to vault keys, with each one's subject token and its row as the vault
    read it (values still sealed: they open only once the release is recorded); ``missing``
    are the requested ids that do not exist (or belong to a shredded subject)."""

    keys: list[str]
    subjects: dict[str, str]
    stored: StoredRecords
    missing: list[str]
    next_page_token: str | None = None


def encode_page_token(last_key: str) -> str:
    return base64.urlsafe_b64encode(b"after\x00" + last_key.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise InputError("page_token is not one this gateway issued", field="page_token") from None
    prefix, sep, key = raw.partition(b"\x00")
    if prefix != b"after" or not sep:
        raise InputError("page_token is not one this gateway issued", field="page_token")
    try:
        return key.decode()
    except UnicodeDecodeError:
        raise InputError("page_token is not one this gateway issued", field="page_token") from None


def filter_values(f: Filter) -> list[str]:
    if f.op == "eq":
        if not isinstance(f.value, str):
            raise InputError("'eq' takes one string value", field=f"filters.{f.field}")
        return [f.value]
    if not isinstance(f.value, list) or not f.value:
        raise InputError("'in' takes a non-empty list of strings", field=f"filters.{f.field}")
    if len(f.value) > MAX_FILTER_VALUES:
        raise InputError(
            f"'in' takes at most {MAX_FILTER_VALUES} values", field=f"filters.{f.field}"
        )
    return list(f.value)


def check_selection(selection: Selection) -> None:
    """Refuse malformed filters and page tokens (InputError) before anything is decided."""
    for f in selection.filters:
        filter_values(f)
    if selection.page_token is not None:
        decode_page_token(selection.page_token)


def resolve(
    vault: Vault,
    lookup: VaultLookup,
    spec: DatasetSpec,
    selection: Selection,
    addressing: Addressing = RAW_IDS,
    *,
    values: bool = False,
) -> Resolved:
    """The selected records' vault keys, subject tokens and (with ``values``) rows, in one
    read of the vault's records once the candidates are known; nothing is decrypted."""
    if selection.record_ids:
        ids = list(dict.fromkeys(selection.record_ids))
        if not addressing.raw_record_ids:
            # Pseudonym tokens only: a token names a record key, and nothing says whether
            # a raw id (an account) exists, so there is no `missing` to report.
            stored = lookup.records(spec.name, ids, values=values)
            return Resolved([k for k in ids if k in stored], stored.subjects(), stored, [])
        # One read transaction in the vault: ids -> keys -> live records.
        by_id, stored = lookup.resolve_records(spec.name, ids, values=values)
        keys = [by_id[rid] for rid in ids if rid in by_id]
        missing = [rid for rid in ids if rid not in by_id]
        return Resolved(keys, stored.subjects(), stored, missing)
    # Search / export: structured filters on identifying keys only.
    candidates: list[str] | None = None
    for f in selection.filters:
        found = _matching(vault, spec, f, addressing)
        candidates = found if candidates is None else sorted(set(candidates) & set(found))
    after = decode_page_token(selection.page_token) if selection.page_token else None
    size = selection.page_size
    if candidates is None:
        page = vault.list_records(spec.name, after=after, limit=size + 1)
    else:
        page = [k for k in candidates if after is None or k > after][: size + 1]
    more = len(page) > size
    page = page[:size]
    stored = lookup.records(spec.name, page, values=values)
    token = encode_page_token(page[-1]) if more and page else None
    return Resolved([k for k in page if k in stored], stored.subjects(), stored, [], token)


def _matching(vault: Vault, spec: DatasetSpec, f: Filter, addressing: Addressing) -> list[str]:
    """Record keys one filter matches, sorted."""
    values = filter_values(f)
    if f.field == "subject" and not addressing.raw_subject_ids:
        found = vault.records_of_subject_tokens(values, spec.name, limit=100_000)
    elif f.field == "subject":
        found = []
        for subject in values:
            found += [r.record for r in vault.subject_records(subject, spec.name, limit=100_000)]
    elif not addressing.raw_record_ids:
        found = list(values)  # record keys (tokens); unknown ones match nothing
    else:
        found = [k for v in values if (k := vault.record_key(spec.name, v)) is not None]
    return sorted(set(found))
