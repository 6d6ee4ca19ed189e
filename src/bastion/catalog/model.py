"""The catalog's typed model: datasets, fields, classifications and declared domains.

Pure data. Loading from YAML lives in ``loader``; checking one input row lives in ``rows``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum

from bastion.errors import InputError


class Classification(StrEnum):
    """How far a field may travel."""

    PROTECTED = "protected"  # never leaves in clear without policy
    INTEROPERABLE = "interoperable"  # may flow to the global platform, pseudonymized
    PUBLIC = "public"


class SensitiveCategory(StrEnum):
    """Categories of sensitive personal data in 28 CFR 202.212 (the US bulk-data rule)."""

    COVERED_PERSONAL_IDENTIFIERS = "covered_personal_identifiers"
    PRECISE_GEOLOCATION = "precise_geolocation"
    BIOMETRIC = "biometric"
    HEALTH = "health"
    FINANCIAL = "financial"
    HUMAN_OMIC = "human_omic"


class FieldType(StrEnum):
    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    DATE = "date"
    TIMESTAMP = "timestamp"  # timezone-aware UTC
    STRING_LIST = "string_list"
    GEO = "geo"  # (latitude, longitude) in degrees, WGS 84


DomainValue = str | int | date


@dataclass(frozen=True)
class Domain:
    """The declared set of values a public dimension may take.

    Either an explicit list (``values``) or an inclusive range (``low``..``high``) of ints or
    dates. The clean room groups by these values without looking at the data, so a group's
    existence never depends on any one person.
    """

    values: tuple[DomainValue, ...] = ()
    low: int | date | None = None
    high: int | date | None = None

    @property
    def is_range(self) -> bool:
        return self.low is not None

    def members(self) -> list[DomainValue]:
        if not self.is_range:
            return list(self.values)
        if isinstance(self.low, date) and isinstance(self.high, date):
            days = (self.high - self.low).days
            return [self.low + timedelta(days=i) for i in range(days + 1)]
        assert isinstance(self.low, int) and isinstance(self.high, int)
        return list(range(self.low, self.high + 1))

    def __contains__(self, value: object) -> bool:
        if not self.is_range:
            return value in self.values
        if isinstance(self.low, date) and isinstance(self.high, date):
            return isinstance(value, date) and self.low <= value <= self.high
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        assert isinstance(self.low, int) and isinstance(self.high, int)
        return self.low <= value <= self.high

    def __len__(self) -> int:
        if not self.is_range:
            return len(self.values)
        if isinstance(self.low, date) and isinstance(self.high, date):
            return (self.high - self.low).days + 1
        assert isinstance(self.low, int) and isinstance(self.high, int)
        return self.high - self.low + 1


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: FieldType
    classification: Classification
    category: SensitiveCategory | None = None
    pseudonymize: bool = False
    max_bytes: int = 256
    nullable: bool = True
    description: str = ""
    domain: Domain | None = None

    @property
    def is_protected(self) -> bool:
        return self.classification is Classification.PROTECTED


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    record_id: str
    subject_key: str
    fields: tuple[FieldSpec, ...]
    description: str = ""
    # Fields the clean room may group by without partition selection: each has a domain.
    public_dimensions: tuple[str, ...] = ()
    # Fields the clean room may group by only through DP partition selection.
    private_keys: tuple[str, ...] = ()
    # Records are deleted this many days after they were first stored (None: kept until
    # deleted or their subject is erased). The vault's retention sweeper enforces it.
    retention_days: int | None = None
    _by_name: dict[str, FieldSpec] = dataclasses.field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self._by_name.update({f.name: f for f in self.fields})

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def has_field(self, name: str) -> bool:
        return name in self._by_name

    def field(self, name: str) -> FieldSpec:
        try:
            return self._by_name[name]
        except KeyError:
            raise InputError(
                "no such field in the catalog", dataset=self.name, field=name
            ) from None

    def _with(self, classification: Classification) -> list[FieldSpec]:
        return [f for f in self.fields if f.classification is classification]

    @property
    def protected_fields(self) -> list[FieldSpec]:
        return self._with(Classification.PROTECTED)

    @property
    def interoperable_fields(self) -> list[FieldSpec]:
        return self._with(Classification.INTEROPERABLE)

    @property
    def public_fields(self) -> list[FieldSpec]:
        return self._with(Classification.PUBLIC)

    @property
    def pseudonymized_fields(self) -> list[FieldSpec]:
        return [f for f in self.fields if f.pseudonymize]

    def by_classification(self) -> dict[Classification, list[FieldSpec]]:
        return {c: self._with(c) for c in Classification}

    def dimension(self, name: str) -> FieldSpec:
        """A public dimension with its declared domain, or an InputError."""
        if name not in self.public_dimensions:
            raise InputError("not a public dimension of the catalog", dataset=self.name, field=name)
        return self.field(name)


@dataclass(frozen=True)
class Catalog:
    datasets: tuple[DatasetSpec, ...]
    source: str = "<memory>"

    @classmethod
    def of(cls, datasets: Iterable[DatasetSpec], source: str = "<memory>") -> Catalog:
        return cls(tuple(datasets), source)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.datasets]

    def dataset(self, name: str) -> DatasetSpec:
        for d in self.datasets:
            if d.name == name:
                return d
        known = ", ".join(self.names) or "none"
        raise InputError(f"unknown dataset (the catalog declares: {known})", dataset=name)
