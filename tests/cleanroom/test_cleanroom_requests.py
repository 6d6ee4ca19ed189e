"""Bad input: every malformed request gets a clear InputError, and nothing is charged or run."""

from __future__ import annotations

from typing import Any

import pytest

from bastion.catalog import default_catalog
from bastion.cleanroom import CleanRoomConfig, Template, compile_plan
from bastion.cleanroom.templates import parse_request
from bastion.errors import InputError

CAT = default_catalog()
CFG = CleanRoomConfig()


def plan(**req: Any) -> Any:
    return compile_plan(parse_request(req), CAT, CFG)


def bad(message: str, **req: Any) -> InputError:
    with pytest.raises(InputError) as exc:
        plan(**req)
    assert message in str(exc.value), str(exc.value)
    return exc.value


def test_good_plans() -> None:
    p = plan(template="count", epsilon=1.0, group_by=["age_band", "region"])
    assert p.template is Template.COUNT and p.public_group_count == 56 and not p.private_keys
    assert p.delta == 0.0
    p = plan(template="ctr", epsilon=1.0, group_by=["campaign_id"], max_groups_per_user=4)
    assert p.private_keys and p.delta == CFG.delta_per_query and p.max_groups == 4
    assert ("event_type", ("ad_click", "ad_impression")) in p.where
    p = plan(template="quantiles", epsilon=1, group_by=["region"], measure="watch_time_s")
    assert p.quantiles == (0.5, 0.9) and p.bins == CFG.default_quantile_bins
    assert p.clamp_units == (0, 3000)


def test_unknown_template() -> None:
    bad("unknown template 'select'", template="select", epsilon=1)


def test_free_sql_is_not_a_parameter() -> None:
    bad("unknown parameter 'sql'", template="count", epsilon=1, sql="SELECT * FROM events")


@pytest.mark.parametrize("eps", [0, -1, float("nan"), float("-inf")])
def test_epsilon_not_positive(eps: float) -> None:
    err = bad("epsilon must be greater than 0", template="count", epsilon=eps)
    assert err.field == "epsilon"


def test_epsilon_above_cap() -> None:
    err = bad("epsilon must be at most 2 per query", template="count", epsilon=2.5)
    assert err.field == "epsilon"
    bad("epsilon must be at most", template="count", epsilon=float("inf"))


@pytest.mark.parametrize("column", ["user_id", "watch_time_s", "device_id", "ssn", "ts"])
def test_group_by_non_public_dimension(column: str) -> None:
    err = bad("cannot group by this field", template="count", epsilon=1, group_by=[column])
    assert err.field == column and err.dataset == "events"


def test_filter_outside_domain() -> None:
    err = bad(
        "outside the declared domain",
        template="count",
        epsilon=1,
        where={"region": ["atlantis"]},
    )
    assert err.field == "region"
    bad("outside the declared domain", template="count", epsilon=1, where={"day": ["2025-12-31"]})
    bad("only use public dimensions", template="count", epsilon=1, where={"user_id": ["u1"]})
    bad("the ctr template fixes", template="ctr", epsilon=1, where={"event_type": ["view"]})
    bad("cannot be grouped by event type", template="ctr", epsilon=1, group_by=["event_type"])
    bad("at least one value", template="count", epsilon=1, where={"region": []})


@pytest.mark.parametrize(
    ("req", "message"),
    [
        ({"max_groups_per_user": 0}, "between 1 and 64"),
        ({"max_groups_per_user": 65}, "between 1 and 64"),
        ({"max_rows_per_group": 1001}, "between 1 and 1000"),
        ({"measure": "watch_time_s"}, "does not apply to template 'count'"),
        ({"confidence": 1.0}, "confidence must be in"),
        ({"group_by": ["region", "region"]}, "named twice"),
        ({"group_by": ["region", "age_band", "day", "event_type"]}, "at most 3"),
    ],
)
def test_count_parameters_out_of_domain(req: dict[str, Any], message: str) -> None:
    bad(message, template="count", epsilon=1, **req)


@pytest.mark.parametrize(
    ("req", "message"),
    [
        ({}, "needs a measure"),
        ({"measure": "revenue"}, "unknown measure"),
        ({"measure": "watch_time_s", "clamp": [-5, 10]}, "clamp must satisfy"),
        ({"measure": "watch_time_s", "clamp": [10, 5]}, "clamp must satisfy"),
        ({"measure": "watch_time_s", "clamp": [0, 1e9]}, "clamp must satisfy"),
        ({"measure": "watch_time_s", "quantiles": [0.5, 1.0]}, "strictly between 0 and 1"),
        ({"measure": "watch_time_s", "bins": 1}, "bins must be between 2"),
        ({"measure": "watch_time_s", "bins": 100_000}, "bins must be between 2"),
        ({"measure": "watch_time_s", "clamp": [0, 0.05]}, "narrower than the measure's unit"),
    ],
)
def test_measure_parameters_out_of_domain(req: dict[str, Any], message: str) -> None:
    bad(message, template="quantiles", epsilon=1, **req)


def test_wrong_types_are_clear() -> None:
    with pytest.raises(InputError) as exc:
        parse_request({"template": "count", "epsilon": "lots"})
    assert "epsilon" in str(exc.value)
    with pytest.raises(InputError) as exc:
        parse_request({"epsilon": 1})
    assert "missing parameter 'template'" in str(exc.value)
