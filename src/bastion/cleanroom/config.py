"""The clean room's declared limits: per-query caps, default bounds, and the numeric measures.

Everything here is public and data-independent. Bounds and domains that a query uses come
from this file and the catalog, never from the data, so they cannot leak anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bastion.errors import ConfigError
from bastion.settings import Settings


@dataclass(frozen=True)
class Measure:
    """A numeric column a template may sum, average or take quantiles of.

    Values are clamped to ``[low, high]`` and rounded to a multiple of ``unit`` (fixed point),
    so every engine computes the same integer aggregates and the release layer only ever adds
    integer (discrete) noise.
    """

    column: str
    low: float
    high: float
    unit: float
    default_clamp: tuple[float, float]
    label: str

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.high or self.unit <= 0:
            raise ConfigError(f"measure {self.column}: need 0 <= low < high and unit > 0")

    def to_units(self, value: float) -> int:
        return round(value / self.unit)


DEFAULT_MEASURES: dict[str, dict[str, Measure]] = {
    "events": {
        "watch_time_s": Measure("watch_time_s", 0.0, 3600.0, 0.1, (0.0, 300.0), "watch time (s)"),
        "revenue_usd": Measure("revenue_usd", 0.0, 100.0, 0.00001, (0.0, 3.0), "revenue (USD)"),
    }
}


@dataclass(frozen=True)
class BoundLimits:
    """Contribution bounds: defaults, and the largest an analyst may ask for."""

    default_max_groups: int = 1
    default_max_rows: int = 10
    max_groups: int = 64
    max_rows: int = 1000


@dataclass(frozen=True)
class CleanRoomConfig:
    max_epsilon_per_query: float = 2.0
    # Delta spent by a query whose groups come from DP partition selection (private keys).
    delta_per_query: float = 1e-7
    # Share of a query's epsilon spent on selecting private keys (the rest on the statistic).
    selection_share: float = 1.0 / 3.0
    confidence: float = 0.95
    max_group_by: int = 3
    max_public_groups: int = 20_000
    max_quantile_bins: int = 4_000
    default_quantile_bins: int = 1_000
    # Fixed-point weight of one row: rows beyond the per-group bound count as fractions.
    row_weight: int = 1_000
    bounds: BoundLimits = field(default_factory=BoundLimits)
    measures: dict[str, dict[str, Measure]] = field(default_factory=lambda: DEFAULT_MEASURES)
    # Pad each answer to a multiple of this many seconds (0: off). See docs/CLEANROOM.md.
    response_quantum_s: float = 0.0
    dataset: str = "events"

    def __post_init__(self) -> None:
        if not 0 < self.max_epsilon_per_query <= 100:
            raise ConfigError("cleanroom max_epsilon_per_query must be in (0, 100]")
        if not 0 < self.delta_per_query < 1e-3:
            raise ConfigError("cleanroom delta_per_query must be in (0, 1e-3)")
        if not 0 < self.selection_share < 1:
            raise ConfigError("cleanroom selection_share must be in (0, 1)")

    @classmethod
    def from_settings(cls, settings: Settings) -> CleanRoomConfig:
        """The ``[cleanroom]`` table of bastion.toml, already checked by ``bastion.settings``."""
        section = settings.cleanroom
        return cls(
            max_epsilon_per_query=section.max_epsilon_per_query,
            delta_per_query=section.delta_per_query,
            selection_share=section.selection_share,
            confidence=section.confidence,
            response_quantum_s=section.response_quantum_s,
        )
