"""Sealing rows into records and opening planned values: the vault's two hot loops.

A record is one row of ``vault_records``: public values and pseudonym tokens as JSON in
``clear``, every other field sealed on its own with AES-256-GCM under the subject's field key,
its AAD binding dataset, record, subject, data-key version and field name.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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
from bastion.errors import InputError, IntegrityError
from bastion.vault import codec
from bastion.vault.plan import FieldRef
from bastion.vault.subject_keys import FieldKey

_NONCE = codec.NONCE_BYTES
_pack_len = struct.Struct(">I").pack
_FORMAT = bytes([codec.SEALED_FORMAT])
# One encoder for every record: json.dumps with options builds a new encoder per call.
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

# dataset, record_key, subject token, clear JSON, sealed blob
RecordRow = tuple[str, str, str, str, bytes]
ValidRow = dict[str, Value]


# How a public value becomes JSON (as catalog.to_jsonable does); None means "as it is".
_TO_JSON: dict[FieldType, Callable[[Any], object]] = {
    FieldType.DATE: lambda v: v.isoformat(),
    FieldType.TIMESTAMP: lambda v: to_jsonable(v),
    FieldType.GEO: lambda v: [v[0], v[1]],
}


@dataclass(frozen=True)
class _SealedField:
    name: str
    header: bytes
    aad_suffix: bytes
    encode: Callable[[object], bytes]


@dataclass(frozen=True)
class DatasetLayout:
    """How a dataset's fields are stored, computed once per ingest or open."""

    spec: DatasetSpec
    sealed: tuple[_SealedField, ...]
    public: tuple[str, ...]
    public_converters: tuple[tuple[str, Callable[[Any], object] | None], ...]
    pseudonymized: tuple[FieldSpec, ...]
    record_id_pseudonymized: bool
    aad_head: bytes

    @classmethod
    def of(cls, spec: DatasetSpec) -> DatasetLayout:
        return cls(
            spec=spec,
            sealed=tuple(
                _SealedField(
                    f.name,
                    codec.field_header(f.name),
                    codec.field_aad_suffix(f.name),
                    codec.value_encoder(f.type),
                )
                for f in spec.fields
                if f.classification is not Classification.PUBLIC
            ),
            public=tuple(
                f.name
                for f in spec.fields
                if f.classification is Classification.PUBLIC and not f.pseudonymize
            ),
            public_converters=tuple(
                (f.name, _TO_JSON.get(f.type))
                for f in spec.fields
                if f.classification is Classification.PUBLIC and not f.pseudonymize
            ),
            pseudonymized=tuple(spec.pseudonymized_fields),
            record_id_pseudonymized=spec.field(spec.record_id).pseudonymize,
            aad_head=codec.dataset_aad(spec.name),
        )

    def identifying_values(self, row: ValidRow) -> list[str]:
        """The values of this row's pseudonymized fields, as the text their index is over."""
        out: list[str] = []
        for f in self.pseudonymized:
            v = row[f.name]
            if v is None:
                continue
            if isinstance(v, list):
                out.extend(str(x) for x in v)
            else:
                out.append(str(v))
        return out

    def seal_batch(
        self,
        batch: Sequence[tuple[int, ValidRow]],
        subjects: Sequence[str],
        tokens: dict[str, str],
        keys: dict[str, FieldKey],
        source: str,
    ) -> list[RecordRow]:
        """Seal a batch. ``subjects[i]`` is row i's subject id; tokens and keys are resolved.

        The hot loop of ingest: locals only, tuples instead of attribute lookups, one
        urandom call per batch (each value still gets its own 96 random nonce bits).
        """
        sealed_fields = [(sf.name, sf.header, sf.aad_suffix, sf.encode) for sf in self.sealed]
        width = _NONCE * len(sealed_fields)
        nonces = os.urandom(width * len(batch))
        dataset = self.spec.name
        record_id = self.spec.record_id
        head = self.aad_head
        public = self.public_converters
        pseudo = [(f.name, f.type is FieldType.STRING_LIST) for f in self.pseudonymized]
        rid_pseudo = self.record_id_pseudonymized
        pack_len = _pack_len
        dumps = _JSON.encode
        subject_parts: dict[str, tuple[Callable[..., bytes], bytes]] = {}
        seen: dict[str, int] = {}
        out: list[RecordRow] = []
        base = 0
        for (row_number, row), subject in zip(batch, subjects, strict=True):
            token = tokens[subject]
            rid = row[record_id]
            record_key = tokens[str(rid)] if rid_pseudo else str(rid)
            if record_key in seen:
                raise InputError(
                    f"duplicate record id (first at row {seen[record_key]})",
                    file=source,
                    row=row_number,
                    dataset=dataset,
                    field=record_id,
                )
            seen[record_key] = row_number
            cached = subject_parts.get(token)
            if cached is None:
                aead, dek_version = keys[token]
                cached = subject_parts[token] = (
                    aead.encrypt,
                    codec.subject_aad(token, dek_version),
                )
            encrypt, subject_part = cached
            rk = record_key.encode()
            prefix = head + len(rk).to_bytes(2, "big") + rk + subject_part
            parts: list[bytes] = [_FORMAT]
            add = parts.append
            offset = base
            for name, header, suffix, encode in sealed_fields:
                nonce = nonces[offset : offset + _NONCE]
                offset += _NONCE
                ct = encrypt(nonce, encode(row[name]), prefix + suffix)
                add(header)
                add(pack_len(_NONCE + len(ct)))
                add(nonce)
                add(ct)
            base += width
            clear: dict[str, object] = {}
            for name, convert in public:
                v = row[name]
                clear[name] = v if convert is None or v is None else convert(v)
            for name, is_list in pseudo:
                v = row[name]
                if v is None:
                    clear[name] = None
                elif is_list:
                    clear[name] = [tokens[str(x)] for x in v]  # type: ignore[union-attr]
                else:
                    clear[name] = tokens[str(v)]
            out.append((dataset, record_key, token, dumps(clear), b"".join(parts)))
        return out

    def open_items(
        self,
        grouped: dict[str, list[FieldRef]],
        rows: dict[str, tuple[str, str, bytes]],
        keys: dict[str, FieldKey],
    ) -> dict[FieldRef, Value]:
        """Open exactly the planned items, grouped by record.

        ``rows``: record key -> (subject token, clear JSON, sealed blob); ``keys``: subject
        token -> field key. Each record's layout and AAD prefix are built once.
        """
        spec = self.spec
        dataset = spec.name
        how = {
            name: (
                f if f.classification is Classification.PUBLIC else None,
                codec.field_aad_suffix(name),
                codec.value_decoder(f.type),
            )
            for name in {item.field for items in grouped.values() for item in items}
            for f in (spec.field(name),)
        }
        head = self.aad_head
        opened: dict[FieldRef, Value] = {}
        for record, items in grouped.items():
            subject, clear_text, sealed = rows[record]
            aead, dek_version = keys[subject]
            decrypt = aead.decrypt
            rk = record.encode()
            prefix = (
                head + len(rk).to_bytes(2, "big") + rk + codec.subject_aad(subject, dek_version)
            )
            parts: dict[str, bytes] | None = None
            clear: dict[str, object] | None = None
            for item in items:
                name = item.field
                public, suffix, decode = how[name]
                if public is not None:
                    if clear is None:
                        clear = json.loads(clear_text)
                    # Public values are stored as JSON; give them back typed, like the others.
                    opened[item] = coerce_value(public, clear.get(name))
                    continue
                if parts is None:
                    parts = codec.unpack_sealed(sealed)
                blob = parts.get(name)
                if blob is None:
                    raise IntegrityError(
                        f"record {record!r} of dataset {dataset!r} has no sealed value for "
                        f"field {name!r}"
                    )
                try:
                    plain = decrypt(blob[:_NONCE], blob[_NONCE:], prefix + suffix)
                except InvalidTag:
                    raise IntegrityError(
                        f"sealed value failed authentication (dataset {dataset!r}, record "
                        f"{record!r}, field {name!r})"
                    ) from None
                opened[item] = decode(plain)
        return opened
