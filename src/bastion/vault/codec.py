"""Pure formats of the vault: value bytes, associated data, sealed-record layout, key derivation.

No I/O here, so each function is easy to test on its own and the hot loops stay short.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bastion.catalog import FieldType, Value
from bastion.errors import IntegrityError

NONCE_BYTES = 12
TAG_BYTES = 16
SEALED_FORMAT = 1

# --- values -------------------------------------------------------------------------------
# A value's plaintext is its canonical text in UTF-8. The empty plaintext means "no value":
# the catalog turns empty input into None, so no present value encodes to zero bytes. Nulls
# are sealed like any value, so the database does not show which fields a person left empty.


def _enc_geo(v: tuple[float, float]) -> bytes:
    return f"{v[0]!r},{v[1]!r}".encode()


def _enc_list(v: list[str]) -> bytes:
    return json.dumps(v, ensure_ascii=False, separators=(",", ":")).encode()


def _enc_ts(v: datetime) -> bytes:
    # validate_row already made it UTC; only a naive value (never from validate_row) is fixed.
    return (v if v.tzinfo is not None else v.replace(tzinfo=UTC)).isoformat().encode()


_ENCODERS: dict[FieldType, Callable[[object], bytes]] = {
    FieldType.STRING: lambda v: b"" if v is None else v.encode(),  # type: ignore[attr-defined]
    FieldType.INT: lambda v: b"" if v is None else str(v).encode(),
    FieldType.FLOAT: lambda v: b"" if v is None else repr(float(v)).encode(),  # type: ignore[arg-type]
    FieldType.BOOL: lambda v: b"" if v is None else (b"1" if v else b"0"),
    FieldType.DATE: lambda v: b"" if v is None else v.isoformat().encode(),  # type: ignore[attr-defined]
    FieldType.TIMESTAMP: lambda v: b"" if v is None else _enc_ts(v),  # type: ignore[arg-type]
    FieldType.STRING_LIST: lambda v: b"" if v is None else _enc_list(v),  # type: ignore[arg-type]
    FieldType.GEO: lambda v: b"" if v is None else _enc_geo(v),  # type: ignore[arg-type]
}


def _enc_column_string(values: Sequence[object]) -> list[bytes]:
    if None not in values:
        return list(map(str.encode, values))  # type: ignore[arg-type]
    return [b"" if v is None else v.encode() for v in values]  # type: ignore[attr-defined]


def _enc_column_int(values: Sequence[object]) -> list[bytes]:
    return [b"" if v is None else str(v).encode() for v in values]


def _enc_column_float(values: Sequence[object]) -> list[bytes]:
    return [b"" if v is None else repr(float(v)).encode() for v in values]  # type: ignore[arg-type]


def _enc_column_date(values: Sequence[object]) -> list[bytes]:
    return [b"" if v is None else v.isoformat().encode() for v in values]  # type: ignore[attr-defined]


def _enc_column_timestamp(values: Sequence[object]) -> list[bytes]:
    return [
        b"" if v is None else v.isoformat().encode() if v.tzinfo is not None else _enc_ts(v)  # type: ignore[attr-defined, arg-type]
        for v in values
    ]


# Characters json.dumps escapes; text without them is its own JSON string body.
_JSON_ESCAPED = re.compile(r'[\x00-\x1f"\\]')


def _enc_column_string_list(values: Sequence[object]) -> list[bytes]:
    out: list[bytes] = []
    add = out.append
    escaped = _JSON_ESCAPED.search
    for v in values:
        if v is None:
            add(b"")
        elif not v:
            add(b"[]")
        else:
            body = '","'.join(v)  # type: ignore[arg-type]
            # The same text json.dumps gives when no item needs escaping (checked at once).
            add(('["' + body + '"]').encode() if not escaped(body) else _enc_list(v))  # type: ignore[arg-type]
    return out


def _enc_column_geo(values: Sequence[object]) -> list[bytes]:
    return [b"" if v is None else f"{v[0]!r},{v[1]!r}".encode() for v in values]  # type: ignore[index]


# Whole columns at once, for ingest: the same bytes as ``value_encoder`` gives value by value.
_COLUMN_ENCODERS: dict[FieldType, Callable[[Sequence[object]], list[bytes]]] = {
    FieldType.STRING: _enc_column_string,
    FieldType.INT: _enc_column_int,
    FieldType.FLOAT: _enc_column_float,
    FieldType.DATE: _enc_column_date,
    FieldType.TIMESTAMP: _enc_column_timestamp,
    FieldType.STRING_LIST: _enc_column_string_list,
    FieldType.GEO: _enc_column_geo,
}


def column_encoder(ftype: FieldType) -> Callable[[Sequence[object]], list[bytes]]:
    """Encode a column of values of one field type (None encodes to the empty plaintext)."""
    found = _COLUMN_ENCODERS.get(ftype)
    if found is not None:
        return found
    encode = _ENCODERS[ftype]
    return lambda values: [encode(v) for v in values]


def _dec_geo(text: str) -> tuple[float, float]:
    lat, lon = text.split(",")
    return (float(lat), float(lon))


def _dec_list(text: str) -> list[str]:
    out = json.loads(text)
    if not isinstance(out, list):
        raise ValueError("not a list")
    return [str(x) for x in out]


_DECODERS: dict[FieldType, Callable[[str], Value]] = {
    FieldType.STRING: str,
    FieldType.INT: int,
    FieldType.FLOAT: float,
    FieldType.BOOL: lambda s: s == "1",
    FieldType.DATE: date.fromisoformat,
    FieldType.TIMESTAMP: datetime.fromisoformat,
    FieldType.STRING_LIST: _dec_list,
    FieldType.GEO: _dec_geo,
}


def value_encoder(ftype: FieldType) -> Callable[[object], bytes]:
    """The encoder for one field type (None encodes to the empty plaintext)."""
    return _ENCODERS[ftype]


def encode_value(ftype: FieldType, value: Value) -> bytes:
    return value_encoder(ftype)(value)


def decode_value(ftype: FieldType, data: bytes) -> Value:
    return value_decoder(ftype)(data)


def _decode_string(data: bytes) -> Value:
    try:
        return data.decode() if data else None
    except UnicodeDecodeError:
        raise IntegrityError("an opened value is not UTF-8 text") from None


def value_decoder(ftype: FieldType) -> Callable[[bytes], Value]:
    """The decoder for one field type (the empty plaintext decodes to None)."""
    if ftype is FieldType.STRING:
        return _decode_string
    parse = _DECODERS[ftype]

    def decode(data: bytes) -> Value:
        if not data:
            return None
        try:
            return parse(data.decode())
        except (ValueError, UnicodeDecodeError):
            # Only reachable if an authenticated value was written with another type: a bug
            # or a changed catalog, never tampering (the AEAD already passed).
            raise IntegrityError(f"an opened value does not parse as {ftype}") from None

    return decode


def column_decoder(ftype: FieldType) -> Callable[[list[bytes]], list[Value]]:
    """Decode a column of plaintexts of one field type: ``value_decoder`` on each, with the
    common types decoded by C-level maps."""
    one = value_decoder(ftype)

    def each(data: list[bytes]) -> list[Value]:
        return [one(d) for d in data]

    if ftype is FieldType.STRING:

        def strings(data: list[bytes]) -> list[Value]:
            try:
                text: list[Value] = list(map(bytes.decode, data))
            except UnicodeDecodeError:
                raise IntegrityError("an opened value is not UTF-8 text") from None
            return [t or None for t in text] if b"" in data else text

        return strings
    parse: Callable[[bytes], Value] | None = {
        FieldType.INT: int,
        FieldType.FLOAT: float,
    }.get(ftype)
    if parse is None:
        return each
    convert = parse

    def numbers(data: list[bytes]) -> list[Value]:
        try:
            # int() and float() read the ASCII bytes directly, as they would the text.
            if b"" in data:
                return [convert(d) if d else None for d in data]
            return list(map(convert, data))
        except ValueError:
            return each(data)  # raises the IntegrityError for the culprit

    return numbers


# --- associated data ---------------------------------------------------------------------


def _lp(part: bytes) -> bytes:
    if len(part) > 0xFFFF:
        raise ValueError("associated-data component too long")
    return len(part).to_bytes(2, "big") + part


def dataset_aad(dataset: str) -> bytes:
    return b"bastion/field/v1\x00" + _lp(dataset.encode())


def subject_aad(subject: str, dek_version: int) -> bytes:
    return _lp(subject.encode()) + dek_version.to_bytes(4, "big")


def record_aad_prefix(dataset: str, record_key: str, subject: str, dek_version: int) -> bytes:
    """The part of every field's AAD that names the record; the field name is appended."""
    return dataset_aad(dataset) + _lp(record_key.encode()) + subject_aad(subject, dek_version)


def lp(part: bytes) -> bytes:
    """Length-prefixed component (2-byte big-endian length), as every AAD part is written."""
    return _lp(part)


def field_aad_suffix(field: str) -> bytes:
    return _lp(field.encode())


def field_aad(dataset: str, record_key: str, subject: str, dek_version: int, field: str) -> bytes:
    """AAD binding a sealed value to dataset, record, subject, data-key version and field."""
    return record_aad_prefix(dataset, record_key, subject, dek_version) + field_aad_suffix(field)


def dek_aad(subject: str, dek_version: int) -> bytes:
    """AAD of a wrapped data key: whose key it is and which version."""
    return b"bastion/dek/v1\x00" + _lp(subject.encode()) + dek_version.to_bytes(4, "big")


# --- sealed record layout ----------------------------------------------------------------
# version(1) then, per field: name_len(1) name ciphertext_len(4) nonce||ciphertext||tag


def field_header(field: str) -> bytes:
    name = field.encode()
    if not 0 < len(name) < 256:
        raise ValueError("field name must be 1..255 bytes")
    return bytes([len(name)]) + name


def pack_sealed(parts: list[bytes]) -> bytes:
    """Join ``[header, len+blob, header, len+blob, ...]`` built by the caller's hot loop."""
    return bytes([SEALED_FORMAT]) + b"".join(parts)


def blob_part(blob: bytes) -> bytes:
    return struct.pack(">I", len(blob)) + blob


def unpack_sealed(data: bytes) -> dict[str, bytes]:
    """Field name to ``nonce || ciphertext || tag``. A malformed layout is an IntegrityError."""
    if not data or data[0] != SEALED_FORMAT:
        raise IntegrityError("sealed record has an unknown format")
    out: dict[str, bytes] = {}
    i, n = 1, len(data)
    from_bytes = int.from_bytes
    try:
        while i < n:
            end = i + 1 + data[i]
            name = data[i + 1 : end].decode()
            i = end + 4
            blob_len = from_bytes(data[end:i], "big")
            if i + blob_len > n or blob_len < NONCE_BYTES + TAG_BYTES or i > n:
                raise IntegrityError("sealed record is truncated")
            out[name] = data[i : i + blob_len]
            i += blob_len
    except (UnicodeDecodeError, IndexError):
        raise IntegrityError("sealed record is malformed") from None
    return out


def sealed_spans(data: bytes) -> dict[bytes, tuple[int, int]]:
    """Field name (UTF-8) to the ``(start, end)`` of its ``nonce || ciphertext || tag``.

    What ``unpack_sealed`` finds, as offsets instead of copies, for the open loop. A
    malformed layout is an IntegrityError.
    """
    if not data or data[0] != SEALED_FORMAT:
        raise IntegrityError("sealed record has an unknown format")
    out: dict[bytes, tuple[int, int]] = {}
    i, n = 1, len(data)
    from_bytes = int.from_bytes
    smallest = NONCE_BYTES + TAG_BYTES
    while i < n:
        end = i + 1 + data[i]
        start = end + 4
        stop = start + from_bytes(data[end:start], "big")
        if start > n or stop > n or stop - start < smallest:
            raise IntegrityError("sealed record is truncated")
        out[data[i + 1 : end]] = (start, stop)
        i = stop
    return out


# --- keys --------------------------------------------------------------------------------


def derive_field_key(dek: bytes, erasure_secret: bytes, subject: str, dek_version: int) -> bytes:
    """The key that seals a subject's values: needs BOTH the data key and the erasure secret.

    The wrapped data key lives in the database; the erasure secret lives only with the keys.
    A shred destroys the erasure secret, so a copy of the database taken earlier, though it
    still holds the wrapped data key, can no longer produce this key.
    """
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=erasure_secret,
        info=b"bastion/field-key/v1\x00" + _lp(subject.encode()) + dek_version.to_bytes(4, "big"),
    ).derive(dek)


def derive_vault_key(identity_secret: bytes, purpose: str) -> bytes:
    """Sub-keys of the vault's identity secret: the pseudonym index key, the receipt key."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"bastion/vault-key/v1\x00" + purpose.encode(),
    ).derive(identity_secret)
