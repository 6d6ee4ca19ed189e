"""The catalog: the shipped platform catalog and every malformed-catalog error."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import yaml

from bastion.catalog import (
    Classification,
    FieldType,
    SensitiveCategory,
    default_catalog,
    load_catalog,
)
from bastion.errors import InputError

GOOD = {
    "version": 1,
    "datasets": {
        "users": {
            "record_id": "user_id",
            "subject_key": "user_id",
            "public_dimensions": ["age_band"],
            "fields": {
                "user_id": {
                    "type": "string",
                    "classification": "interoperable",
                    "pseudonymize": True,
                    "nullable": False,
                },
                "email": {
                    "type": "string",
                    "classification": "protected",
                    "category": "covered_personal_identifiers",
                },
                "age_band": {
                    "type": "string",
                    "classification": "public",
                    "domain": ["18-24", "25-34"],
                },
            },
        }
    },
}


def _write(tmp_path: Path, doc: object, name: str = "catalog.yaml") -> Path:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc), encoding="utf-8")
    return p


def _variant(path: list[str], value: object) -> dict[str, object]:
    import copy

    doc = copy.deepcopy(GOOD)
    node: dict[str, object] = doc
    for key in path[:-1]:
        node = node[key]  # type: ignore[assignment]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


_DELETE = object()
F = ["datasets", "users", "fields"]


def test_good_catalog_loads(tmp_path: Path) -> None:
    cat = load_catalog(_write(tmp_path, GOOD))
    users = cat.dataset("users")
    assert users.subject_key == "user_id"
    assert [f.name for f in users.protected_fields] == ["email"]
    assert users.field("email").category is SensitiveCategory.COVERED_PERSONAL_IDENTIFIERS
    assert users.field("user_id").pseudonymize
    assert users.dimension("age_band").domain is not None
    assert list(users.field("age_band").domain.members()) == ["18-24", "25-34"]  # type: ignore[union-attr]


def test_shipped_platform_catalog() -> None:
    cat = default_catalog()
    assert cat.names == ["users", "videos", "events"]
    users = cat.dataset("users")
    protected = {f.name for f in users.protected_fields}
    assert {"name", "email", "phone", "birth_date", "ip_address", "location"} <= protected
    assert users.field("location").type is FieldType.GEO
    assert users.field("location").category is SensitiveCategory.PRECISE_GEOLOCATION
    assert users.field("device_ids").type is FieldType.STRING_LIST
    assert users.field("device_ids").pseudonymize
    events = cat.dataset("events")
    assert set(events.public_dimensions) == {"event_type", "age_band", "region", "day"}
    assert events.private_keys == ("campaign_id",)
    day = events.field("day").domain
    assert day is not None and len(day) == 28 and date(2026, 1, 1) in day
    assert "ad_click" in events.field("event_type").domain  # type: ignore[operator]
    by_class = events.by_classification()
    assert set(by_class) == set(Classification)


def test_unknown_dataset_and_field() -> None:
    cat = default_catalog()
    with pytest.raises(InputError) as exc:
        cat.dataset("payments")
    assert exc.value.dataset == "payments" and "unknown dataset" in str(exc.value)
    with pytest.raises(InputError) as exc:
        cat.dataset("users").field("ssn")
    assert exc.value.dataset == "users" and exc.value.field == "ssn"
    with pytest.raises(InputError):
        cat.dataset("events").dimension("user_id")


def test_error_names_file_dataset_field(tmp_path: Path) -> None:
    doc = _variant([*F, "email", "classification"], "secret")
    path = _write(tmp_path, doc)
    with pytest.raises(InputError) as exc:
        load_catalog(path)
    err = exc.value
    assert err.file == str(path) and err.dataset == "users" and err.field == "email"
    assert "unknown classification 'secret'" in str(err)
    assert str(path) in str(err) and "'users'" in str(err) and "'email'" in str(err)


MALFORMED = [
    ("unknown type", [*F, "email", "type"], "varchar", "email", "unknown type 'varchar'"),
    (
        "unknown category",
        [*F, "email", "category"],
        "genetic",
        "email",
        "unknown category 'genetic'",
    ),
    ("missing type", [*F, "email", "type"], _DELETE, "email", "missing required key 'type'"),
    ("unknown key", [*F, "email", "colour"], "red", "email", "unknown key 'colour'"),
    ("bad max_bytes", [*F, "email", "max_bytes"], 0, "email", "max_bytes"),
    (
        "pseudonymize protected",
        [*F, "email", "pseudonymize"],
        True,
        "email",
        "only interoperable fields can be pseudonymized",
    ),
    (
        "public with category",
        [*F, "age_band", "category"],
        "health",
        "age_band",
        "public field cannot carry",
    ),
    ("empty domain", [*F, "age_band", "domain"], [], "age_band", "domain is empty"),
    ("wrong domain type", [*F, "age_band", "domain"], [1, 2], "age_band", "is not a string"),
    (
        "dimension without domain",
        [*F, "age_band", "domain"],
        _DELETE,
        "age_band",
        "must declare its domain",
    ),
    (
        "subject key undeclared",
        ["datasets", "users", "subject_key"],
        "account",
        "account",
        "subject_key names a field that is not declared",
    ),
    (
        "nullable record id",
        [*F, "user_id", "nullable"],
        True,
        "user_id",
        "must not be nullable",
    ),
    (
        "bad field name",
        [*F, "Email Address"],
        {"type": "string", "classification": "public"},
        "Email Address",
        "lower-case identifiers",
    ),
    (
        "dimension not public",
        ["datasets", "users", "public_dimensions"],
        ["email"],
        "email",
        "must be a public field",
    ),
    (
        "private key protected",
        ["datasets", "users", "private_keys"],
        ["email"],
        "email",
        "protected field cannot be a grouping key",
    ),
]


@pytest.mark.parametrize(("case", "path", "value", "field", "message"), MALFORMED)
def test_malformed_field(
    tmp_path: Path, case: str, path: list[str], value: object, field: str, message: str
) -> None:
    p = _write(tmp_path, _variant(path, value))
    with pytest.raises(InputError) as exc:
        load_catalog(p)
    assert exc.value.file == str(p), case
    assert exc.value.dataset == "users", case
    assert exc.value.field == field, case
    assert message in str(exc.value), case


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("version: 1\ndatasets: [\n", "not valid YAML"),
        ("- a\n- b\n", "must be a mapping"),
        ({"version": 2, "datasets": GOOD["datasets"]}, "unsupported catalog version 2"),
        ({"version": 1, "datasets": {}}, "non-empty"),
        ({"version": 1, "datasets": GOOD["datasets"], "extra": 1}, "unknown key 'extra'"),
        (
            "version: 1\nversion: 1\ndatasets: {}\n",
            "duplicate key 'version' at line 2",
        ),
    ],
)
def test_malformed_file(tmp_path: Path, doc: object, message: str) -> None:
    p = _write(tmp_path, doc)
    with pytest.raises(InputError) as exc:
        load_catalog(p)
    assert exc.value.file == str(p)
    assert message in str(exc.value)


def test_duplicate_field_is_refused(tmp_path: Path) -> None:
    text = yaml.safe_dump(GOOD).replace(
        "      email:\n", "      email:\n        type: string\n      email:\n", 1
    )
    assert text.count("      email:\n") == 2
    with pytest.raises(InputError) as exc:
        load_catalog(_write(tmp_path, text))
    assert "duplicate key 'email'" in str(exc.value)


def test_dataset_level_errors(tmp_path: Path) -> None:
    doc = _variant(["datasets", "users", "record_id"], _DELETE)
    with pytest.raises(InputError) as exc:
        load_catalog(_write(tmp_path, doc))
    assert exc.value.dataset == "users" and "missing required key 'record_id'" in str(exc.value)

    doc = _variant(["datasets", "users", "owner"], "x")
    with pytest.raises(InputError) as exc:
        load_catalog(_write(tmp_path, doc))
    assert exc.value.dataset == "users" and "unknown key 'owner'" in str(exc.value)


def test_missing_catalog_file(tmp_path: Path) -> None:
    with pytest.raises(InputError) as exc:
        load_catalog(tmp_path / "nope.yaml")
    assert "not found" in str(exc.value) and exc.value.file is not None


def test_date_range_domain(tmp_path: Path) -> None:
    doc = _variant(
        [*F, "day"],
        {
            "type": "date",
            "classification": "public",
            "domain": {"from": "2026-01-01", "to": "2026-01-03"},
        },
    )
    doc["datasets"]["users"]["public_dimensions"] = ["age_band", "day"]  # type: ignore[index]
    cat = load_catalog(_write(tmp_path, doc))
    dom = cat.dataset("users").field("day").domain
    assert dom is not None and dom.members() == [date(2026, 1, d) for d in (1, 2, 3)]
    backwards = {
        "type": "date",
        "classification": "public",
        "domain": {"from": "2026-01-03", "to": "2026-01-01"},
    }
    with pytest.raises(InputError) as exc:
        load_catalog(_write(tmp_path, _variant([*F, "day"], backwards)))
    assert exc.value.field == "day" and "empty" in str(exc.value)
