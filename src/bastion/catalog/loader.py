"""Load a catalog from YAML and validate it, with errors that name the file, dataset and field.

Shape of the file::

    version: 1
    datasets:
      users:
        record_id: user_id
        subject_key: user_id
        public_dimensions: [age_band]
        private_keys: []
        fields:
          user_id: {type: string, classification: interoperable, pseudonymize: true, ...}
          age_band: {type: string, classification: public, domain: ["18-24", "25-34"]}

A domain is either a list of values or an inclusive range ``{from: X, to: Y}`` of ints or dates.
"""

from __future__ import annotations

import re
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from bastion.catalog.model import (
    Catalog,
    Classification,
    DatasetSpec,
    Domain,
    DomainValue,
    FieldSpec,
    FieldType,
    SensitiveCategory,
)
from bastion.errors import InputError

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
MAX_FIELD_BYTES = 1 << 20
MAX_DOMAIN_SIZE = 100_000
SUPPORTED_VERSIONS = (1,)

_KEYS_OF = {
    "catalog": ("version", "datasets"),
    "dataset": (
        "description",
        "record_id",
        "subject_key",
        "fields",
        "public_dimensions",
        "private_keys",
        "retention_days",
    ),
}
# The longest retention period a dataset may declare (100 years): a bound, not a policy.
MAX_RETENTION_DAYS = 36_500


class _DuplicateKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys, which plain YAML silently overwrites."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise _DuplicateKey(f"duplicate key {key!r} at line {line}")
        seen[key] = loader.construct_object(value_node)
    return seen


_DuplicateKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


class _DuplicateKey(Exception):
    pass


class _RawRange(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    low: int | date = Field(alias="from")
    high: int | date = Field(alias="to")


class _RawField(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)

    type: FieldType
    classification: Classification
    category: SensitiveCategory | None = None
    pseudonymize: bool = False
    max_bytes: int = Field(default=256, gt=0, le=MAX_FIELD_BYTES)
    nullable: bool = True
    description: str = ""
    domain: list[str | int | date] | _RawRange | None = None


def _describe(err: ErrorDetails) -> str:
    """One pydantic error as an operator-readable sentence."""
    loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
    attr = loc.split(".")[0] if loc else ""
    value = err.get("input")
    kind = err["type"]
    if kind == "enum":
        allowed = err.get("ctx", {}).get("expected", "")
        return f"unknown {attr} {value!r} (expected {allowed})"
    if kind == "extra_forbidden":
        return f"unknown key {attr!r}"
    if kind == "missing":
        return f"missing required key {attr!r}"
    return f"{loc or 'value'}: {err['msg'].lower()}"


def _fail(
    reason: str, file: str, dataset: str | None = None, field: str | None = None
) -> InputError:
    return InputError(reason, file=file, dataset=dataset, field=field)


def _check_keys(obj: dict[str, Any], kind: str, file: str, dataset: str | None = None) -> None:
    for key in obj:
        if key not in _KEYS_OF[kind]:
            raise _fail(f"unknown key {key!r} in the {kind}", file, dataset)


def _domain_for(raw: _RawField, ftype: FieldType, file: str, ds: str, name: str) -> Domain | None:
    if raw.domain is None:
        return None
    if isinstance(raw.domain, _RawRange):
        low, high = raw.domain.low, raw.domain.high
        if type(low) is not type(high):
            raise _fail("domain range ends must have the same type", file, ds, name)
        expected = date if ftype is FieldType.DATE else int
        if ftype not in (FieldType.DATE, FieldType.INT) or not isinstance(low, expected):
            raise _fail(f"a domain range does not fit a field of type {ftype}", file, ds, name)
        if high < low:  # type: ignore[operator]
            raise _fail("domain range is empty ('to' is before 'from')", file, ds, name)
        domain = Domain(low=low, high=high)
    else:
        values: list[DomainValue] = list(raw.domain)
        if not values:
            raise _fail("domain is empty", file, ds, name)
        if len(set(values)) != len(values):
            raise _fail("domain lists a value twice", file, ds, name)
        want: type = {FieldType.STRING: str, FieldType.INT: int, FieldType.DATE: date}.get(
            ftype, type(None)
        )
        for v in values:
            if not isinstance(v, want) or isinstance(v, bool):
                raise _fail(f"domain value {v!r} is not a {ftype}", file, ds, name)
        domain = Domain(values=tuple(values))
    if len(domain) > MAX_DOMAIN_SIZE:
        raise _fail(f"domain has more than {MAX_DOMAIN_SIZE} values", file, ds, name)
    return domain


def _field_from(raw_obj: Any, file: str, ds: str, name: str) -> FieldSpec:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _fail("field names must be lower-case identifiers (a-z, 0-9, _)", file, ds, str(name))
    if not isinstance(raw_obj, dict):
        raise _fail("a field must be a mapping of its properties", file, ds, name)
    try:
        raw = _RawField.model_validate(raw_obj)
    except ValidationError as exc:
        raise _fail(_describe(exc.errors()[0]), file, ds, name) from None
    if raw.pseudonymize:
        if raw.classification is not Classification.INTEROPERABLE:
            raise _fail("only interoperable fields can be pseudonymized", file, ds, name)
        if raw.type not in (FieldType.STRING, FieldType.STRING_LIST):
            raise _fail("only string and string_list fields can be pseudonymized", file, ds, name)
    if raw.classification is Classification.PUBLIC and raw.category is not None:
        raise _fail(
            f"a public field cannot carry the sensitive category {raw.category.value!r}",
            file,
            ds,
            name,
        )
    domain = _domain_for(raw, raw.type, file, ds, name)
    return FieldSpec(
        name=name,
        type=raw.type,
        classification=raw.classification,
        category=raw.category,
        pseudonymize=raw.pseudonymize,
        max_bytes=raw.max_bytes,
        nullable=raw.nullable,
        description=raw.description,
        domain=domain,
    )


def _name_list(obj: dict[str, Any], key: str, file: str, ds: str) -> tuple[str, ...]:
    value = obj.get(key, [])
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(f"{key!r} must be a list of field names", file, ds)
    if len(set(value)) != len(value):
        raise _fail(f"{key!r} names a field twice", file, ds)
    return tuple(value)


def _dataset_from(obj: Any, file: str, name: Any) -> DatasetSpec:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _fail("dataset names must be lower-case identifiers (a-z, 0-9, _)", file, str(name))
    if not isinstance(obj, dict):
        raise _fail("a dataset must be a mapping", file, name)
    _check_keys(obj, "dataset", file, name)
    for key in ("record_id", "subject_key", "fields"):
        if key not in obj:
            raise _fail(f"missing required key {key!r}", file, name)
    raw_fields = obj["fields"]
    if not isinstance(raw_fields, dict) or not raw_fields:
        raise _fail("'fields' must be a non-empty mapping of field name to properties", file, name)
    fields = tuple(_field_from(v, file, name, k) for k, v in raw_fields.items())
    by_name = {f.name: f for f in fields}
    for role in ("record_id", "subject_key"):
        ref = obj[role]
        if not isinstance(ref, str) or ref not in by_name:
            raise _fail(f"{role} names a field that is not declared", file, name, str(ref))
        if by_name[ref].nullable:
            raise _fail(f"the {role} field must not be nullable", file, name, ref)
        if by_name[ref].type not in (FieldType.STRING, FieldType.INT):
            raise _fail(f"the {role} field must be a string or an int", file, name, ref)
    dims = _name_list(obj, "public_dimensions", file, name)
    for dim in dims:
        spec = by_name.get(dim)
        if spec is None:
            raise _fail("public dimension names a field that is not declared", file, name, dim)
        if spec.classification is not Classification.PUBLIC:
            raise _fail("a public dimension must be a public field", file, name, dim)
        if spec.domain is None:
            raise _fail("a public dimension must declare its domain", file, name, dim)
    keys = _name_list(obj, "private_keys", file, name)
    for key in keys:
        spec = by_name.get(key)
        if spec is None:
            raise _fail("private key names a field that is not declared", file, name, key)
        if spec.classification is Classification.PROTECTED:
            raise _fail("a protected field cannot be a grouping key", file, name, key)
        if spec.type not in (FieldType.STRING, FieldType.INT):
            raise _fail("a private key must be a string or an int", file, name, key)
        if key in dims:
            raise _fail(
                "a field cannot be both a public dimension and a private key", file, name, key
            )
    description = obj.get("description", "")
    if not isinstance(description, str):
        raise _fail("'description' must be text", file, name)
    retention = obj.get("retention_days")
    if retention is not None and (
        isinstance(retention, bool)
        or not isinstance(retention, int)
        or not 1 <= retention <= MAX_RETENTION_DAYS
    ):
        raise _fail(
            f"'retention_days' must be a whole number of days, 1 to {MAX_RETENTION_DAYS}",
            file,
            name,
        )
    return DatasetSpec(
        name=name,
        record_id=obj["record_id"],
        subject_key=obj["subject_key"],
        fields=fields,
        description=description,
        public_dimensions=dims,
        private_keys=keys,
        retention_days=retention,
    )


def parse_catalog(text: str, file: str) -> Catalog:
    """Parse and validate catalog YAML text; ``file`` names it in errors."""
    try:
        doc = yaml.load(text, Loader=_DuplicateKeyLoader)  # a SafeLoader subclass
    except _DuplicateKey as exc:
        raise _fail(str(exc), file) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise _fail(f"not valid YAML{where}", file) from None
    if not isinstance(doc, dict):
        raise _fail("a catalog must be a mapping with 'version' and 'datasets'", file)
    _check_keys(doc, "catalog", file)
    version = doc.get("version")
    if version not in SUPPORTED_VERSIONS:
        raise _fail(f"unsupported catalog version {version!r} (supported: 1)", file)
    datasets = doc.get("datasets")
    if not isinstance(datasets, dict) or not datasets:
        raise _fail("'datasets' must be a non-empty mapping", file)
    return Catalog(tuple(_dataset_from(v, file, k) for k, v in datasets.items()), source=file)


def load_catalog(path: str | Path) -> Catalog:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("catalog file not found", file=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the catalog ({type(exc).__name__})", file=str(p)) from None
    return parse_catalog(text, str(p))


_DEFAULT: Catalog | None = None


def default_catalog() -> Catalog:
    """The shipped catalog of the synthetic social video platform."""
    global _DEFAULT
    if _DEFAULT is None:
        text = resources.files("bastion.catalog").joinpath("platform.yaml").read_text("utf-8")
        _DEFAULT = parse_catalog(text, "platform.yaml")
    return _DEFAULT
