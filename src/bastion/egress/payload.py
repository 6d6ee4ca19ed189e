"""Payload chunks: rows as Parquet (pyarrow, zstd) and each chunk sealed to the recipient with
HPKE (RFC 9180) through ``cryptography.hazmat.primitives.hpke``.

Suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, single-shot: every chunk has its
own encapsulated key. The chunk's binding to its manifest, position and count is the HPKE
``info``::

    b"bastion-egress-chunk/v1\\n" || manifest digest (32 bytes) || index (u32 BE) || count (u32 BE)

``cryptography``'s single-shot API takes no separate AAD; RFC 9180 section 8.1 says
single-shot applications pass their auxiliary authenticated data as ``info``, which enters the
key schedule: a chunk opened with another index, count or manifest derives another key and
fails its AEAD tag. So a chunk cannot be reordered, dropped (the count), or moved to another
run. The ciphertext is ``enc`` (32 bytes) followed by the AEAD output.

Chunk columns: ``_row`` (the flow's token of the record key), ``_op`` (``upsert`` or
``delete``) and the flow's output fields, every one nullable: a tombstone is ``_op = delete``
with every other field null. Pure functions on bytes, no file I/O.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from bastion.egress.errors import EgressInputError, EgressRejected
from bastion.egress.manifest import OP_COLUMN, RESERVED_COLUMNS, ROW_COLUMN, Column

SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_128_GCM)
SUITE_NAME = "DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM"
INFO_PREFIX = b"bastion-egress-chunk/v1\n"
ENC_BYTES = 32
TAG_BYTES = 16
DEFAULT_CHUNK_ROWS = 500_000
OP_UPSERT = "upsert"
OP_DELETE = "delete"
_U32 = 0xFFFF_FFFF

_UNITS = ("s", "ms", "us", "ns")
_TYPES: dict[str, pa.DataType] = {
    str(t): t
    for t in (
        pa.string(),
        pa.bool_(),
        pa.int8(),
        pa.int16(),
        pa.int32(),
        pa.int64(),
        pa.uint8(),
        pa.uint16(),
        pa.uint32(),
        pa.uint64(),
        pa.float32(),
        pa.float64(),
        pa.date32(),
        *(pa.timestamp(u) for u in _UNITS),
        *(pa.timestamp(u, tz="UTC") for u in _UNITS),
    )
}
SUPPORTED_TYPES = tuple(_TYPES)


# --- HPKE ----------------------------------------------------------------------------------


def chunk_info(digest: bytes, index: int, count: int) -> bytes:
    """The HPKE ``info`` of chunk ``index`` of ``count`` under the manifest ``digest``."""
    if len(digest) != 32:
        raise ValueError("the manifest digest is 32 bytes (SHA-256)")
    if not 0 <= index < count <= _U32:
        raise ValueError(f"chunk index {index} is not in [0, {count})")
    return INFO_PREFIX + digest + struct.pack(">II", index, count)


def seal_chunk(
    plaintext: bytes, recipient_public: X25519PublicKey, digest: bytes, index: int, count: int
) -> bytes:
    """HPKE-encrypt one chunk to the recipient, bound to its manifest, index and count."""
    return SUITE.encrypt(plaintext, recipient_public, info=chunk_info(digest, index, count))


def open_chunk(
    ciphertext: bytes, recipient_private: X25519PrivateKey, digest: bytes, index: int, count: int
) -> bytes:
    """Decrypt chunk ``index``; ``egress.chunk.tampered`` if it was altered, is another
    position's or another manifest's chunk, or was sealed to another key."""
    info = chunk_info(digest, index, count)
    if len(ciphertext) < ENC_BYTES + TAG_BYTES:
        raise EgressRejected("egress.chunk.tampered", f"chunk {index} is truncated")
    try:
        return SUITE.decrypt(ciphertext, recipient_private, info=info)
    except (InvalidTag, ValueError):
        raise EgressRejected(
            "egress.chunk.tampered",
            f"chunk {index} of {count} does not open under this manifest with this key "
            "(altered, reordered, from another run, or sealed to another recipient)",
        ) from None


# --- recipient keys ------------------------------------------------------------------------


def generate_recipient_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_key_to_b64(key: X25519PublicKey) -> str:
    """The form a flow declaration holds: base64 of the raw 32 bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def public_key_from_b64(text: object, field: str = "recipient.public_key") -> X25519PublicKey:
    """Parse a recipient key; ``egress.key.malformed`` naming ``field`` when it is not one."""
    if not isinstance(text, str) or not text.strip():
        raise EgressInputError("egress.key.malformed", "a recipient key is required", field=field)
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise EgressInputError("egress.key.malformed", "not base64", field=field) from None
    if len(raw) != 32:
        raise EgressInputError(
            "egress.key.malformed", f"an X25519 key is 32 bytes, not {len(raw)}", field=field
        )
    return X25519PublicKey.from_public_bytes(raw)


def private_key_to_pem(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_from_pem(data: bytes, file: str | None = None) -> X25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise EgressInputError(
            "egress.key.malformed", "not an unencrypted PEM private key", file=file
        ) from None
    if not isinstance(key, X25519PrivateKey):
        raise EgressInputError("egress.key.malformed", "not an X25519 private key", file=file)
    return key


# --- Parquet -------------------------------------------------------------------------------


def arrow_type(name: str, field: str = "type") -> pa.DataType:
    try:
        return _TYPES[name]
    except KeyError:
        raise EgressInputError(
            "egress.schema.type",
            f"type {name!r} is not one of {', '.join(SUPPORTED_TYPES)}",
            field=field,
        ) from None


def arrow_schema(columns: Sequence[Column] | Sequence[tuple[str, str]]) -> pa.Schema:
    """The chunk schema: ``_row``, ``_op``, then the output fields, all nullable. ``columns``
    are the output fields only, or the full list starting with ``_row``, ``_op``."""
    cols = [c if isinstance(c, Column) else Column(name=c[0], type=c[1]) for c in columns]
    if tuple(c.name for c in cols[:2]) != RESERVED_COLUMNS:
        cols = [
            Column(name=ROW_COLUMN, type="string"),
            Column(name=OP_COLUMN, type="string"),
            *cols,
        ]
    return pa.schema(
        [pa.field(c.name, arrow_type(c.type, f"schema.{c.name}"), nullable=True) for c in cols]
    )


def columns_of(schema: pa.Schema) -> list[Column]:
    """A schema as the manifest lists it."""
    return [Column(name=f.name, type=str(f.type)) for f in schema]


def to_table(rows: pa.Table | Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts, or an Arrow table) as a table of exactly ``schema``: same names, order and
    types. A table with other columns is refused (``ValueError``), never silently reshaped."""
    if isinstance(rows, pa.Table):
        if not rows.schema.remove_metadata().equals(schema):
            raise ValueError(f"table schema {rows.schema} is not the chunk schema {schema}")
        return rows
    return pa.Table.from_pylist(list(rows), schema=schema)


def encode_chunk(rows: pa.Table | Sequence[Mapping[str, Any]], schema: pa.Schema) -> bytes:
    """One chunk's plaintext: a Parquet file (zstd) of ``rows`` with ``schema``."""
    sink = pa.BufferOutputStream()
    pq.write_table(to_table(rows, schema), sink, compression="zstd")
    return bytes(sink.getvalue().to_pybytes())


def split_table(table: pa.Table, rows_per_chunk: int = DEFAULT_CHUNK_ROWS) -> Iterator[pa.Table]:
    """Zero-copy slices of at most ``rows_per_chunk`` rows; one empty slice for an empty table
    (a manifest always has at least one chunk, so a run without rows still carries its schema)."""
    if rows_per_chunk < 1:
        raise ValueError("rows_per_chunk must be at least 1")
    if table.num_rows == 0:
        yield table
        return
    for start in range(0, table.num_rows, rows_per_chunk):
        yield table.slice(start, rows_per_chunk)


def encode_chunks(
    table: pa.Table, schema: pa.Schema, rows_per_chunk: int = DEFAULT_CHUNK_ROWS
) -> Iterator[bytes]:
    """The table as chunk plaintexts, in order."""
    to_table(table, schema)
    for part in split_table(table, rows_per_chunk):
        yield encode_chunk(part, schema)


def chunk_schema(plaintext: bytes) -> tuple[pa.Schema, int]:
    """A chunk's Arrow schema and row count, from the Parquet footer only."""
    try:
        meta = pq.ParquetFile(pa.BufferReader(plaintext))
        return meta.schema_arrow.remove_metadata(), meta.metadata.num_rows
    except (pa.ArrowException, OSError, ValueError):
        raise EgressRejected("egress.chunk.format", "a chunk is not a Parquet file") from None


def count_ops(plaintext: bytes) -> tuple[int, int]:
    """``(upserts, deletes)`` in a chunk. Reads only the ``_op`` column, dictionary-encoded
    (as Parquet stores it), and counts the indices: a fraction of the cost of comparing
    strings, which matters because the recipient does it for every row."""
    try:
        table = pq.read_table(
            pa.BufferReader(plaintext), columns=[OP_COLUMN], read_dictionary=[OP_COLUMN]
        )
        column = table.column(OP_COLUMN)
    except (pa.ArrowException, OSError, ValueError, KeyError):
        raise EgressRejected("egress.chunk.format", "a chunk has no readable _op column") from None
    counts = {OP_UPSERT: 0, OP_DELETE: 0}
    for part in column.chunks:
        if not pa.types.is_dictionary(part.type) or not pa.types.is_string(part.type.value_type):
            raise EgressRejected("egress.chunk.format", "a chunk's _op column is not a string")
        for index, value in enumerate(part.dictionary.to_pylist()):
            if value in counts:
                counts[value] += int(pc.sum(pc.equal(part.indices, index)).as_py() or 0)
    return counts[OP_UPSERT], counts[OP_DELETE]
