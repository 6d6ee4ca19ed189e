"""Pure formats: value encoding, AAD, sealed layout, key derivation."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from bastion.catalog import FieldType
from bastion.errors import IntegrityError
from bastion.vault import codec


@pytest.mark.parametrize(
    ("ftype", "value"),
    [
        (FieldType.STRING, "Zoë O'Brien, 日本"),
        (FieldType.INT, -123456789012),
        (FieldType.FLOAT, 0.1 + 0.2),
        (FieldType.BOOL, True),
        (FieldType.BOOL, False),
        (FieldType.DATE, date(1990, 5, 17)),
        (FieldType.TIMESTAMP, datetime(2026, 1, 3, 10, 11, 12, 345678, tzinfo=UTC)),
        (FieldType.STRING_LIST, ["a", "b;c", "日本"]),
        (FieldType.STRING_LIST, []),
        (FieldType.GEO, (37.774929, -122.419416)),
    ],
)
def test_values_round_trip(ftype: FieldType, value: object) -> None:
    data = codec.encode_value(ftype, value)  # type: ignore[arg-type]
    assert data  # only None encodes to nothing
    assert codec.decode_value(ftype, data) == value


@pytest.mark.parametrize("ftype", list(FieldType))
def test_none_is_the_empty_plaintext(ftype: FieldType) -> None:
    assert codec.encode_value(ftype, None) == b""
    assert codec.decode_value(ftype, b"") is None


def test_aad_separates_every_component() -> None:
    base = codec.field_aad("users", "r1", "s1", 1, "email")
    variants = [
        codec.field_aad("videos", "r1", "s1", 1, "email"),
        codec.field_aad("users", "r2", "s1", 1, "email"),
        codec.field_aad("users", "r1", "s2", 1, "email"),
        codec.field_aad("users", "r1", "s1", 2, "email"),
        codec.field_aad("users", "r1", "s1", 1, "phone"),
        # Length prefixes: moving a character between components changes the AAD.
        codec.field_aad("user", "sr1", "s1", 1, "email"),
    ]
    assert all(v != base for v in variants)
    assert len(set(variants)) == len(variants)


def test_sealed_layout_round_trip_and_malformed() -> None:
    blob_a, blob_b = b"n" * 12 + b"c" * 20, b"m" * 12 + b"d" * 16
    packed = codec.pack_sealed(
        [
            codec.field_header("email"),
            codec.blob_part(blob_a),
            codec.field_header("phone"),
            codec.blob_part(blob_b),
        ]
    )
    assert codec.unpack_sealed(packed) == {"email": blob_a, "phone": blob_b}
    for bad in (b"", b"\x07" + packed[1:], packed[:-1], packed[:8]):
        with pytest.raises(IntegrityError):
            codec.unpack_sealed(bad)


def test_field_key_needs_both_secrets() -> None:
    dek, erasure = b"d" * 32, b"e" * 32
    key = codec.derive_field_key(dek, erasure, "s", 1)
    assert len(key) == 32
    assert codec.derive_field_key(dek, b"f" * 32, "s", 1) != key
    assert codec.derive_field_key(b"x" * 32, erasure, "s", 1) != key
    assert codec.derive_field_key(dek, erasure, "t", 1) != key
