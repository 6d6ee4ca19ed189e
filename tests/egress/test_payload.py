"""Chunks: Parquet with a fixed schema, and HPKE (RFC 9180, through ``cryptography``) bound to
the manifest digest, index and count. Every binding has a test that tries to break it."""

from __future__ import annotations

import datetime
import hashlib
import struct

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from bastion.egress.errors import EgressInputError, EgressRejected
from bastion.egress.payload import (
    ENC_BYTES,
    TAG_BYTES,
    arrow_schema,
    chunk_info,
    chunk_schema,
    columns_of,
    count_ops,
    encode_chunk,
    encode_chunks,
    generate_recipient_key,
    open_chunk,
    private_key_from_pem,
    private_key_to_pem,
    public_key_from_b64,
    public_key_to_b64,
    seal_chunk,
    split_table,
    to_table,
)

KEY = generate_recipient_key()
DIGEST = hashlib.sha256(b"a manifest payload").digest()
PLAIN = b"PAR1 pretend this is a chunk PAR1"
FIELDS = [("video", "string"), ("month", "date32[day]"), ("views", "int64")]


def test_a_sealed_chunk_opens_with_the_same_binding() -> None:
    sealed = seal_chunk(PLAIN, KEY.public_key(), DIGEST, 2, 5)
    assert open_chunk(sealed, KEY, DIGEST, 2, 5) == PLAIN
    # RFC 9180 single-shot: enc (32 bytes for X25519) then the AEAD output (plaintext + tag).
    assert len(sealed) == ENC_BYTES + len(PLAIN) + TAG_BYTES
    # A fresh ephemeral key per seal: the same chunk never encrypts the same way twice.
    assert seal_chunk(PLAIN, KEY.public_key(), DIGEST, 2, 5) != sealed


def test_the_context_is_exactly_prefix_digest_index_count() -> None:
    assert chunk_info(DIGEST, 2, 5) == b"bastion-egress-chunk/v1\n" + DIGEST + struct.pack(
        ">II", 2, 5
    )
    with pytest.raises(ValueError):
        chunk_info(DIGEST, 5, 5)
    with pytest.raises(ValueError):
        chunk_info(DIGEST[:31], 0, 1)


@pytest.mark.parametrize(
    "change",
    ["flipped byte", "flipped enc byte", "swapped index", "other digest", "other count", "key"],
)
def test_any_change_fails_to_open(change: str) -> None:
    sealed = bytearray(seal_chunk(PLAIN, KEY.public_key(), DIGEST, 2, 5))
    key, digest, index, count = KEY, DIGEST, 2, 5
    if change == "flipped byte":
        sealed[-1] ^= 0x80
    elif change == "flipped enc byte":
        sealed[3] ^= 0x01
    elif change == "swapped index":
        index = 3
    elif change == "other digest":
        digest = hashlib.sha256(b"another manifest").digest()
    elif change == "other count":
        count = 4
    else:
        key = X25519PrivateKey.generate()
    with pytest.raises(EgressRejected) as info:
        open_chunk(bytes(sealed), key, digest, index, count)
    assert info.value.code == "egress.chunk.tampered"


def test_a_truncated_chunk_is_refused() -> None:
    with pytest.raises(EgressRejected, match="truncated"):
        open_chunk(b"short", KEY, DIGEST, 0, 1)


def _rows(n: int) -> list[dict[str, object]]:
    return [
        {
            "_row": f"t{i}",
            "_op": "upsert",
            "video": f"v{i}",
            "month": datetime.date(2026, 1, 1),
            "views": i,
        }
        for i in range(n)
    ] + [{"_row": "gone", "_op": "delete", "video": None, "month": None, "views": None}]


def test_rows_become_parquet_with_the_fixed_schema() -> None:
    schema = arrow_schema(FIELDS)
    assert [f.name for f in schema] == ["_row", "_op", "video", "month", "views"]
    assert all(f.nullable for f in schema)
    plaintext = encode_chunk(_rows(3), schema)
    got, n = chunk_schema(plaintext)
    assert got.equals(schema) and n == 4
    assert count_ops(plaintext) == (3, 1)
    assert pq.read_table(pa.BufferReader(plaintext)).to_pylist() == _rows(3)
    assert pq.ParquetFile(pa.BufferReader(plaintext)).metadata.row_group(0).column(
        0
    ).compression == ("ZSTD")
    assert [(c.name, c.type) for c in columns_of(schema)][2:] == FIELDS


def test_chunking_by_row_count() -> None:
    schema = arrow_schema(FIELDS)
    table = to_table(_rows(9), schema)  # 10 rows
    assert [t.num_rows for t in split_table(table, 4)] == [4, 4, 2]
    chunks = list(encode_chunks(table, schema, 4))
    assert [chunk_schema(c)[1] for c in chunks] == [4, 4, 2]
    empty = to_table([], schema)
    assert [chunk_schema(c)[1] for c in encode_chunks(empty, schema, 4)] == [0]
    with pytest.raises(ValueError):
        list(split_table(table, 0))


def test_a_table_of_another_schema_is_refused_not_reshaped() -> None:
    schema = arrow_schema(FIELDS)
    wider = arrow_schema([*FIELDS, ("email", "string")])
    with pytest.raises(ValueError, match="not the chunk schema"):
        encode_chunk(to_table([], wider), schema)


def test_an_unknown_type_is_refused_naming_the_column() -> None:
    with pytest.raises(EgressInputError) as info:
        arrow_schema([("views", "decimal")])
    assert info.value.code == "egress.schema.type" and info.value.field == "schema.views"


def test_a_chunk_that_is_not_parquet_is_refused() -> None:
    with pytest.raises(EgressRejected) as info:
        chunk_schema(b"not parquet at all")
    assert info.value.code == "egress.chunk.format"


def test_recipient_keys_round_trip_and_bad_ones_name_the_field() -> None:
    text = public_key_to_b64(KEY.public_key())
    assert public_key_from_b64(text).public_bytes_raw() == KEY.public_key().public_bytes_raw()
    for bad, reason in (("", "required"), ("@@@", "base64"), ("AAAA", "32 bytes")):
        with pytest.raises(EgressInputError) as info:
            public_key_from_b64(bad, field="flows.video-stats.recipient.public_key")
        assert info.value.code == "egress.key.malformed" and reason in str(info.value)
        assert info.value.field == "flows.video-stats.recipient.public_key"
    pem = private_key_to_pem(KEY)
    assert private_key_from_pem(pem).private_bytes_raw() == KEY.private_bytes_raw()
    ed = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    for bad_pem in (ed, b"garbage"):
        with pytest.raises(EgressInputError) as info:
            private_key_from_pem(bad_pem, file="recipient.key")
        assert info.value.code == "egress.key.malformed" and info.value.file == "recipient.key"
