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

from cryptography.exceptions import InvalidTag

from bastion.catalog import Classification, DatasetSpec, FieldSpec, Value, to_jsonable
from bastion.errors import InputError, IntegrityError
from bastion.vault import codec
from bastion.vault.plan import FieldRef
from bastion.vault.subject_keys import FieldKey

_NONCE = codec.NONCE_BYTES
_pack_len = struct.Struct(">I").pack

# dataset, record_key, subject token, clear JSON, sealed blob
RecordRow = tuple[str, str, str, str, bytes]
ValidRow = dict[str, Value]


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
        """Seal a batch. ``subjects[i]`` is row i's subject id; tokens and keys are resolved."""
        sealed_fields = self.sealed
        # One urandom call per batch: each value still gets its own 96 random nonce bits.
        nonces = os.urandom(_NONCE * len(sealed_fields) * len(batch))
        offset = 0
        dataset = self.spec.name
        record_id = self.spec.record_id
        head = self.aad_head
        public = self.public
        pseudo = self.pseudonymized
        rid_pseudo = self.record_id_pseudonymized
        lp = codec.lp
        subject_parts: dict[str, bytes] = {}
        seen: dict[str, int] = {}
        out: list[RecordRow] = []
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
            aead, dek_version = keys[token]
            subject_part = subject_parts.get(token)
            if subject_part is None:
                subject_part = subject_parts[token] = codec.subject_aad(token, dek_version)
            prefix = head + lp(record_key.encode()) + subject_part
            encrypt = aead.encrypt
            parts: list[bytes] = []
            for sf in sealed_fields:
                nonce = nonces[offset : offset + _NONCE]
                offset += _NONCE
                ct = encrypt(nonce, sf.encode(row[sf.name]), prefix + sf.aad_suffix)
                parts += (sf.header, _pack_len(_NONCE + len(ct)), nonce, ct)
            clear: dict[str, object] = {name: to_jsonable(row[name]) for name in public}
            for f in pseudo:
                v = row[f.name]
                if v is None:
                    clear[f.name] = None
                elif isinstance(v, list):
                    clear[f.name] = [tokens[str(x)] for x in v]
                else:
                    clear[f.name] = tokens[str(v)]
            out.append(
                (
                    dataset,
                    record_key,
                    token,
                    json.dumps(clear, separators=(",", ":"), ensure_ascii=False),
                    codec.pack_sealed(parts),
                )
            )
        return out

    def open_items(
        self,
        items: Sequence[FieldRef],
        rows: dict[str, tuple[str, str, bytes]],
        keys: dict[str, FieldKey],
    ) -> dict[FieldRef, Value]:
        """Open exactly ``items``. ``rows``: record key -> (subject token, clear, sealed)."""
        spec = self.spec
        dataset = spec.name
        opened: dict[FieldRef, Value] = {}
        unpacked: dict[str, tuple[dict[str, bytes], bytes]] = {}
        clears: dict[str, dict[str, object]] = {}
        for item in items:
            f = spec.field(item.field)
            subject, clear_text, sealed = rows[item.record]
            if f.classification is Classification.PUBLIC:
                clear = clears.get(item.record)
                if clear is None:
                    clear = clears[item.record] = json.loads(clear_text)
                opened[item] = clear.get(item.field)  # type: ignore[assignment]
                continue
            aead, dek_version = keys[subject]
            entry = unpacked.get(item.record)
            if entry is None:
                prefix = codec.record_aad_prefix(dataset, item.record, subject, dek_version)
                entry = unpacked[item.record] = (codec.unpack_sealed(sealed), prefix)
            parts, prefix = entry
            blob = parts.get(item.field)
            if blob is None:
                raise IntegrityError(
                    f"record {item.record!r} of dataset {dataset!r} has no sealed value for "
                    f"field {item.field!r}"
                )
            try:
                plain = aead.decrypt(
                    blob[:_NONCE], blob[_NONCE:], prefix + codec.field_aad_suffix(item.field)
                )
            except InvalidTag:
                raise IntegrityError(
                    f"sealed value failed authentication (dataset {dataset!r}, record "
                    f"{item.record!r}, field {item.field!r})"
                ) from None
            opened[item] = codec.decode_value(f.type, plain)
        return opened
