"""The Plan value object: its JSON contract, validation and diffs."""

from __future__ import annotations

import json

import pytest

from infadapter.core.plan import Allocation, Plan, diff
from infadapter.errors import BadInput

PLAN = Plan((Allocation("a", 2.0, 0.25, 10.0), Allocation("b", 4.0, 0.75, 40.0)), 40.0, objective=0.5, accuracy=0.7)


def test_json_contract_keys_and_roundtrip():
    d = PLAN.as_dict()
    assert list(d) == ["feasible", "load", "objective", "accuracy", "cores", "variants"]
    assert d["variants"][0] == {"name": "a", "cores": 2.0, "share": 0.25, "capacity": 10.0}
    assert Plan.from_json(json.dumps(d)) == PLAN


def test_served_capacity_is_the_tightest_variant():
    # a serves 10 req/s at 25% -> 40 req/s total; b serves 40 at 75% -> 53.3: the plan serves 40.
    assert PLAN.served_capacity_rps() == pytest.approx(40.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [("{", "not valid JSON"), ("[]", "must be a JSON object"), ('{"variants": 3}', "variants: must be a list"),
     ('{"variants": [{"cores": 1}]}', "variants\\[0\\]: needs 'name' and 'cores'"),
     ('{"variants": [{"name": "a", "cores": "x"}]}', "variants\\[0\\].cores: must be a number"),
     ('{"variants": [{"name": "a", "cores": 1, "share": 0.5}]}', "shares must sum to 1")],
)
def test_bad_plan_json(text, message):
    with pytest.raises(BadInput, match=message):
        Plan.from_json(text, origin="plan.json")


def test_diff_names_create_resize_delete():
    new = Plan((Allocation("b", 6.0, 0.5, 60.0), Allocation("c", 2.0, 0.5, 20.0)), 40.0)
    d = diff(PLAN, new)
    assert (d.create, d.resize, d.delete, d.unchanged) == (("c",), ("b",), ("a",), ())
    assert d.summary() == "create c; resize b; delete a"
    assert diff(PLAN, PLAN).empty
