"""The catalog: which datasets exist, their fields, and how sensitive each field is."""

from bastion.catalog.compiled import validate_row
from bastion.catalog.loader import default_catalog, load_catalog, parse_catalog
from bastion.catalog.model import (
    Catalog,
    Classification,
    DatasetSpec,
    Domain,
    FieldSpec,
    FieldType,
    SensitiveCategory,
)
from bastion.catalog.values import Value, coerce_value, to_jsonable, value_size

__all__ = [
    "Catalog",
    "Classification",
    "DatasetSpec",
    "Domain",
    "FieldSpec",
    "FieldType",
    "SensitiveCategory",
    "Value",
    "coerce_value",
    "default_catalog",
    "load_catalog",
    "parse_catalog",
    "to_jsonable",
    "validate_row",
    "value_size",
]
