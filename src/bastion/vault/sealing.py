"""Sealing rows into records and opening planned values: the vault's two hot loops.

A record is one row of ``vault_records``: public values and pseudonym tokens as JSON in
``clear``, every other field sealed on its own with AES-256-GCM under the subject's field key,
its AAD binding dataset, record, subject, data-key version and field name.

Ingest seals a batch column by column where it can (value encoding, pseudonym tokens, clear
JSON), so the per-value loop is left with what must be per value: a fresh nonce, the AAD
and one AES-GCM call.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from operator import call, itemgetter

from cryptography.exceptions import InvalidTag

from bastion.catalog import (
    Classification,
    DatasetSpec,
    FieldSpec,
    FieldType,
    Value,
    coerce_value,
    to_jsonable,
)
from bastion.catalog.compiled import ValidBatch
from bastion.errors import InputError, IntegrityError
from bastion.vault import codec
from bastion.vault.plan import FieldRef
from bastion.vault.subject_keys import FieldKey

_NONCE = codec.NONCE_BYTES
_TAG = codec.TAG_BYTES
_pack_len = struct.Struct(">I").pack
_FORMAT = bytes([codec.SEALED_FORMAT])

# dataset, record_key, subject token, clear JSON, sealed blob
RecordRow = tuple[str, str, str, str, bytes]
RECORD_COLUMNS = ("dataset", "record_key", "subject", "clear", "sealed")
ValidRow = dict[str, Value]


def _json_default(value: object) -> object:
    return to_jsonable(value)  # type: ignore[arg-type]


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_json_default)


def json_value(value: Value) -> str:
    """One value as JSON: dates as ISO 8601, timestamps in UTC with ``Z``, points as lists."""
    return _JSON.encode(value)


def _json_column(values: Sequence[Value]) -> list[str]:
    """``json_value`` of each value, written once per distinct value."""
    try:
        distinct = set(values)
    except TypeError:  # lists: no sharing
        return [json_value(v) for v in values]
    if any(v.__class__ is float for v in distinct):  # 0.0 == -0.0, but not as text
        return [json_value(v) for v in values]
    written = {v: json_value(v) for v in distinct}
    return list(map(written.__getitem__, values))


@dataclass(frozen=True)
class _SealedField:
    name: str
    header: bytes
    aad_suffix: bytes
    encode_column: Callable[[Sequence[object]], list[bytes]]
    decode: Callable[[bytes], Value]
    decode_column: Callable[[list[bytes]], list[Value]]


class _OtherOrder(Exception):
    """A sealed blob does not hold its fields in the layout's order."""


# One field of a route: bytes from the field's start to its body (header and length), AAD
# suffix, the index of its planned item in the record's list (-1: not planned, only
# skipped), and where its planned items and plaintexts go (decoded a column at a time).
_OpenStep = tuple[int, bytes, int, Callable[[FieldRef], None], Callable[[bytes], None]]
_OpenRoute = tuple[_OpenStep, ...]
_unpack_len = struct.Struct(">I").unpack_from
_NONCE_SLICES: dict[int, list[slice]] = {}


def _nonce_slices(n: int) -> list[slice]:
    """Slices cutting ``n`` nonces out of one buffer (kept per batch size)."""
    found = _NONCE_SLICES.get(n)
    if found is None:
        if len(_NONCE_SLICES) > 64:
            _NONCE_SLICES.clear()
        found = _NONCE_SLICES[n] = [slice(i, i + _NONCE) for i in range(0, _NONCE * n, _NONCE)]
    return found


@dataclass(frozen=True)
class _ClearField:
    name: str
    pseudonymized: bool
    is_list: bool


@dataclass(frozen=True)
class DatasetLayout:
    """How a dataset's fields are stored, computed once per ingest or open."""

    spec: DatasetSpec
    sealed: tuple[_SealedField, ...]
    clear: tuple[_ClearField, ...]
    # Pseudonymized fields other than the subject key: (name, holds a list).
    identifying: tuple[tuple[str, bool], ...]
    record_id_pseudonymized: bool
    aad_head: bytes
    # '{"name":%s,...}' over the clear fields, for one row's JSON texts.
    clear_template: str

    @classmethod
    def of(cls, spec: DatasetSpec) -> DatasetLayout:
        public = [
            _ClearField(f.name, False, False)
            for f in spec.fields
            if f.classification is Classification.PUBLIC and not f.pseudonymize
        ]
        pseudo = [
            _ClearField(f.name, True, f.type is FieldType.STRING_LIST)
            for f in spec.pseudonymized_fields
        ]
        return cls(
            spec=spec,
            sealed=tuple(
                _SealedField(
                    f.name,
                    codec.field_header(f.name),
                    codec.field_aad_suffix(f.name),
                    codec.column_encoder(f.type),
                    codec.value_decoder(f.type),
                    codec.column_decoder(f.type),
                )
                for f in spec.fields
                if f.classification is not Classification.PUBLIC
            ),
            clear=(*public, *pseudo),
            identifying=tuple(
                (f.name, f.type is FieldType.STRING_LIST)
                for f in spec.pseudonymized_fields
                if f.name != spec.subject_key
            ),
            record_id_pseudonymized=spec.field(spec.record_id).pseudonymize,
            aad_head=codec.dataset_aad(spec.name),
            clear_template="{"
            + ",".join(json.dumps(f.name).replace("%", "%%") + ":%s" for f in (*public, *pseudo))
            + "}",
        )

    def identifying_values(self, batch: ValidBatch, subjects: Sequence[str]) -> dict[str, str]:
        """Identifying values other than subject ids, each with the subject id of the first
        row (in row order) it appears in: that subject will own its pseudonym."""
        owners: dict[str, str] = {}
        own = owners.setdefault
        columns = [(batch.columns[name], is_list) for name, is_list in self.identifying]
        if len(columns) == 1:
            column, is_list = columns[0]
            if is_list:
                for subject, values in zip(subjects, column, strict=True):
                    if values:
                        for v in values:  # type: ignore[union-attr]
                            own(str(v), subject)
            else:
                for subject, value in zip(subjects, column, strict=True):
                    if value is not None:
                        own(str(value), subject)
            return owners
        for i, subject in enumerate(subjects):
            for column, is_list in columns:
                value = column[i]
                if value is None:
                    continue
                if is_list:
                    for v in value:  # type: ignore[union-attr]
                        own(str(v), subject)
                else:
                    own(str(value), subject)
        return owners

    def record_keys(self, batch: ValidBatch, tokens: dict[str, str], source: str) -> list[str]:
        """Each row's key in the vault (its record id, or that id's pseudonym); a record id
        given twice in the batch is an ``InputError`` at its second row."""
        ids = batch.columns[self.spec.record_id]
        keys = (
            [tokens[str(v)] for v in ids] if self.record_id_pseudonymized else list(map(str, ids))
        )
        if len(set(keys)) != len(keys):
            first: dict[str, int] = {}
            for number, key in zip(batch.numbers, keys, strict=True):
                if key in first:
                    raise InputError(
                        f"duplicate record id (first at row {first[key]})",
                        file=source,
                        row=number,
                        dataset=self.spec.name,
                        field=self.spec.record_id,
                    )
                first[key] = number
        return keys

    def clear_texts(
        self, batch: ValidBatch, subject_tokens: Sequence[str], tokens: dict[str, str]
    ) -> list[str]:
        """The clear JSON of every row: public values, and pseudonyms for identifying ones.

        Built column by column: each distinct public value of the batch is written as JSON
        once, each pseudonym is quoted (pseudonyms are URL-safe base64, nothing to escape),
        and each row is one ``%`` of a template made from the field names.
        """
        if not self.clear:
            return ["{}"] * len(batch)
        subject_key = self.spec.subject_key
        columns: list[Sequence[str]] = []
        for f in self.clear:
            column = batch.columns[f.name]
            if not f.pseudonymized:
                columns.append(_json_column(column))
            elif f.name == subject_key:
                columns.append(['"' + t + '"' for t in subject_tokens])
            elif f.is_list:
                columns.append(
                    [
                        "null"
                        if v is None
                        else "[" + ",".join(['"' + tokens[str(x)] + '"' for x in v]) + "]"  # type: ignore[union-attr]
                        for v in column
                    ]
                )
            else:
                columns.append(
                    ["null" if v is None else '"' + tokens[str(v)] + '"' for v in column]
                )
        return list(map(self.clear_template.__mod__, zip(*columns, strict=True)))

    def seal(
        self,
        batch: ValidBatch,
        subject_tokens: Sequence[str],
        tokens: dict[str, str],
        keys: dict[str, FieldKey],
        source: str,
    ) -> list[RecordRow]:
        """Seal a batch into records. ``subject_tokens[i]`` is row i's subject pseudonym;
        ``tokens`` and ``keys`` hold every pseudonym and field key the batch needs.

        The hot loop of ingest, run a field at a time over the whole batch: each value is
        one AES-GCM call under its row's field key, with its own 96 random nonce bits (one
        urandom call per field gives the batch its nonces) and its own AAD (the row's
        prefix and the field's name). The iteration runs in C (``map`` over
        ``operator.call``), so the per-value cost is the cipher's and the bytes' own.
        """
        n = len(batch)
        record_keys = self.record_keys(batch, tokens, source)
        clears = self.clear_texts(batch, subject_tokens, tokens)
        head = self.aad_head
        per_subject: dict[str, tuple[Callable[..., bytes], bytes]] = {}
        for token in set(subject_tokens):
            aead, dek_version = keys[token]
            per_subject[token] = (aead.encrypt, codec.subject_aad(token, dek_version))
        encrypts = [per_subject[t][0] for t in subject_tokens]
        prefixes = [
            head + len(rk).to_bytes(2, "big") + rk + per_subject[t][1]
            for rk, t in zip(map(str.encode, record_keys), subject_tokens, strict=True)
        ]
        nonce_at = _nonce_slices(n)
        overhead = _NONCE + _TAG
        columns: list[Iterable[bytes]] = [repeat(_FORMAT, n)]
        for f in self.sealed:
            plains = f.encode_column(batch.columns[f.name])
            lengths = list(map(len, plains))
            # Field header and body length, made once per distinct plaintext length.
            heads = {size: f.header + _pack_len(overhead + size) for size in set(lengths)}
            nonces = list(map(os.urandom(_NONCE * n).__getitem__, nonce_at))
            aads = map(bytes.__add__, prefixes, repeat(f.aad_suffix, n))
            columns += (
                map(heads.__getitem__, lengths),
                nonces,
                map(call, encrypts, nonces, plains, aads),
            )
        blobs = map(b"".join, zip(*columns, strict=True))
        return list(
            zip(repeat(self.spec.name, n), record_keys, subject_tokens, clears, blobs, strict=True)
        )

    def _open_route(
        self, names: tuple[str, ...], columns: list[tuple[list[FieldRef], list[bytes]]]
    ) -> _OpenRoute | None:
        """How to walk a blob in this layout's field order for a record planned for
        ``names`` (sealed fields only), collecting into ``columns`` (one per sealed field);
        None if a name is not a sealed field."""
        slots = {name: k for k, name in enumerate(names)}
        steps: list[_OpenStep] = []
        for f, (items, plains) in zip(self.sealed, columns, strict=True):
            k = slots.pop(f.name, -1)
            steps.append((len(f.header) + 4, f.aad_suffix, k, items.append, plains.append))
        if slots:
            return None
        while steps and steps[-1][2] < 0:  # fields after the last planned one: not read
            steps.pop()
        return tuple(steps)

    def _open_uniform(
        self,
        grouped: dict[str, list[FieldRef]],
        rows: dict[str, tuple[str, str | None, bytes]],
        keys: dict[str, FieldKey],
    ) -> dict[FieldRef, Value] | None:
        """``open_items`` for the bulk case: every record planned for the same sealed
        fields, in the same order. None if the plan is not of that shape.

        The plaintexts go into one flat list, record after record, so each field's values
        are a stride of it: decoded a column at a time and put in place by slice.
        """
        flat = list(chain.from_iterable(grouped.values()))
        first = next(iter(grouped.values()))
        width = len(first)
        if len(flat) != width * len(grouped) or set(map(len, grouped.values())) != {width}:
            return None
        by_name = {f.name: f for f in self.sealed}
        names = [item[1] for item in first]
        for q, name in enumerate(names):
            if name not in by_name or set(map(itemgetter(1), flat[q::width])) != {name}:
                return None
        # Blob order (the layout's), up to the last planned field; where each one goes.
        planned = {name: q for q, name in enumerate(names)}
        steps: list[tuple[int, bytes, bool]] = []
        order: list[tuple[_SealedField, int]] = []
        for f in self.sealed:
            if len(order) == width:
                break
            slot = planned.get(f.name)
            steps.append((len(f.header) + 4, f.aad_suffix, slot is not None))
            if slot is not None:
                order.append((f, slot))
        every = all(wanted for _, _, wanted in steps)
        dense = [(skip, suffix) for skip, suffix, _ in steps]
        subject_parts: dict[str, tuple[Callable[..., bytes], bytes]] = {}
        record_cipher = self._record_cipher
        length_at = _unpack_len
        plains: list[bytes] = []
        add = plains.append
        for record in grouped:
            subject, _, sealed = rows[record]
            decrypt, prefix = record_cipher(record, subject, sealed, keys, subject_parts)
            # No field name is checked on the way: a value read as the wrong field fails
            # authentication (its AAD names the field), and the record is then read again
            # by name, which also says what is wrong. Slices past the end come out short
            # and fail too.
            mark = len(plains)
            i = 1
            try:
                if every:
                    for skip, suffix in dense:
                        start = i + skip
                        i = start + length_at(sealed, start - 4)[0]
                        add(
                            decrypt(
                                sealed[start : start + _NONCE],
                                sealed[start + _NONCE : i],
                                prefix + suffix,
                            )
                        )
                else:
                    for skip, suffix, wanted in steps:
                        start = i + skip
                        i = start + length_at(sealed, start - 4)[0]
                        if wanted:
                            add(
                                decrypt(
                                    sealed[start : start + _NONCE],
                                    sealed[start + _NONCE : i],
                                    prefix + suffix,
                                )
                            )
            except (struct.error, InvalidTag, ValueError):  # ValueError: a short nonce
                del plains[mark:]
                plains += self._plains_by_name(
                    record, [f for f, _ in order], sealed, decrypt, prefix
                )
        values: list[Value] = [None] * len(flat)
        for column, (f, q) in enumerate(order):
            values[q::width] = f.decode_column(plains[column::width])
        return dict(zip(flat, values, strict=True))

    def open_items(
        self,
        grouped: dict[str, list[FieldRef]],
        rows: dict[str, tuple[str, str | None, bytes]],
        keys: dict[str, FieldKey],
    ) -> dict[FieldRef, Value]:
        """Open exactly the planned items, grouped by record.

        ``rows``: record key -> (subject token, clear JSON or None if no public field is
        planned, sealed blob); ``keys``: subject token -> field key. The hot loop of open:
        each record's AAD prefix is built once, and its sealed blob is walked once, in the
        order ingest writes fields, opening the planned ones as it meets them. A blob in
        another order (an older catalog) is walked by field name instead.
        """
        uniform = self._open_uniform(grouped, rows, keys)
        if uniform is not None:
            return uniform
        spec = self.spec
        public: dict[str, FieldSpec] = {
            f.name: f for f in spec.fields if f.classification is Classification.PUBLIC
        }
        subject_parts: dict[str, tuple[Callable[..., bytes], bytes]] = {}
        record_cipher = self._record_cipher
        routes: dict[tuple[str, ...], _OpenRoute | None] = {}
        columns: list[tuple[list[FieldRef], list[bytes]]] = [([], []) for _ in self.sealed]
        length_at = _unpack_len
        smallest = _NONCE + _TAG
        # Keys in the order of the plan's groups, whatever order the blobs hold fields in.
        opened: dict[FieldRef, Value] = dict.fromkeys(chain.from_iterable(grouped.values()))
        for record, items in grouped.items():
            subject, clear_text, sealed = rows[record]
            names = tuple(map(itemgetter(1), items))
            if names in routes:
                route = routes[names]
            else:
                for name in names:
                    spec.field(name)  # an unknown field is an InputError
                route = routes[names] = self._open_route(names, columns)
            if route is None:  # public values among them
                sealed_items = [item for item in items if item[1] not in public]
                clear = json.loads(clear_text or "{}")
                for item in items:
                    f = public.get(item[1])
                    if f is not None:
                        # Stored as JSON; given back typed, like the sealed values.
                        opened[item] = coerce_value(f, clear.get(f.name))
                if not sealed_items:
                    continue
                names = tuple(map(itemgetter(1), sealed_items))
                items = sealed_items
                if names not in routes:
                    routes[names] = self._open_route(names, columns)
                route = routes[names]
                assert route is not None
            decrypt, prefix = record_cipher(record, subject, sealed, keys, subject_parts)
            # The walk trusts the blob to be in layout order and checks no field name: a
            # value read as the wrong field fails authentication (the field name is in its
            # AAD), and then the record is read again by name, which says what is wrong.
            i, n = 1, len(sealed)
            try:
                for skip, suffix, k, add_item, add_plain in route:
                    start = i + skip
                    stop = start + length_at(sealed, start - 4)[0]
                    if k >= 0:
                        if stop > n or stop - start < smallest:
                            raise _OtherOrder
                        add_plain(
                            decrypt(
                                sealed[start : start + _NONCE],
                                sealed[start + _NONCE : stop],
                                prefix + suffix,
                            )
                        )
                        add_item(items[k])
                    i = stop
            except (_OtherOrder, struct.error, InvalidTag):
                self._open_by_name(record, items, sealed, decrypt, prefix, opened)
        for sf, (planned, plains) in zip(self.sealed, columns, strict=True):
            if planned:
                opened.update(zip(planned, sf.decode_column(plains), strict=True))
        return opened

    def _record_cipher(
        self,
        record: str,
        subject: str,
        sealed: bytes,
        keys: dict[str, FieldKey],
        subject_parts: dict[str, tuple[Callable[..., bytes], bytes]],
    ) -> tuple[Callable[..., bytes], bytes]:
        """A record's decrypt and AAD prefix for opening it: the subject's key and AAD part
        are looked up once per subject (kept in ``subject_parts``); a blob of unknown format
        is refused."""
        cached = subject_parts.get(subject)
        if cached is None:
            aead, dek_version = keys[subject]
            cached = (aead.decrypt, codec.subject_aad(subject, dek_version))
            subject_parts[subject] = cached
        if not sealed or sealed[0] != codec.SEALED_FORMAT:
            raise IntegrityError("sealed record has an unknown format")
        rk = record.encode()
        return cached[0], self.aad_head + len(rk).to_bytes(2, "big") + rk + cached[1]

    def _open_by_name(
        self,
        record: str,
        items: list[FieldRef],
        sealed: bytes,
        decrypt: Callable[..., bytes],
        prefix: bytes,
        opened: dict[FieldRef, Value],
    ) -> None:
        """Open a record's planned sealed items from a blob in any field order."""
        by_name = {f.name: f for f in self.sealed}
        fields = [by_name[item[1]] for item in items]
        plains = self._plains_by_name(record, fields, sealed, decrypt, prefix)
        for item, f, plain in zip(items, fields, plains, strict=True):
            opened[item] = f.decode(plain)

    def _plains_by_name(
        self,
        record: str,
        fields: list[_SealedField],
        sealed: bytes,
        decrypt: Callable[..., bytes],
        prefix: bytes,
    ) -> list[bytes]:
        """The plaintexts of ``fields`` of one record, found in its blob by name."""
        spans = codec.sealed_spans(sealed)
        out: list[bytes] = []
        for f in fields:
            span = spans.get(f.name.encode())
            if span is None:
                raise IntegrityError(
                    f"record {record!r} of dataset {self.spec.name!r} has no sealed value for "
                    f"field {f.name!r}"
                )
            start, stop = span
            try:
                out.append(
                    decrypt(
                        sealed[start : start + _NONCE],
                        sealed[start + _NONCE : stop],
                        prefix + f.aad_suffix,
                    )
                )
            except InvalidTag:
                raise IntegrityError(
                    f"sealed value failed authentication (dataset {self.spec.name!r}, record "
                    f"{record!r}, field {f.name!r})"
                ) from None
        return out
