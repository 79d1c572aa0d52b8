"""The ideal plans and the accuracy ceiling (``infadapter/sim/ideal.py``): hand-derived cases on the local profile."""

from __future__ import annotations

import pytest

from infadapter.commands.sweep import parse_sweep
from infadapter.core import solver
from infadapter.core.profile import load_profile
from infadapter.sim.frontier import Point, frontier
from infadapter.sim.ideal import accuracy_ceiling, ideal_point, ideal_points, with_ideal
from tests.cli_helpers import ROOT

LOCAL = load_profile(ROOT / "profiles" / "local.yaml")  # safety 1.0, core step 0.25


def _acc(name: str) -> float:
    return LOCAL.variant(name).accuracy


def _burst_mix() -> float:
    """Requests x accuracy of one second of 60 req/s on 0.75 core at best (worked out in the test below)."""
    return 10.68 * _acc("resnet50") + (60 - 10.68) * _acc("resnet18")


def test_a_steady_rate_gets_the_solvers_plan_for_it():
    plan = solver.solve(LOCAL.with_overrides(beta=0.0), 30.0).plan
    got = ideal_point(LOCAL, [30.0] * 50)
    assert got.mean_cores == pytest.approx(plan.cores)
    assert got.mean_accuracy == pytest.approx(plan.accuracy)
    assert got.unserved_share == 0.0


def test_the_ceiling_on_a_cap_is_worked_out_by_hand():
    # On 0.75 core: 10 req/s fits ResNet-152 alone (20.1 req/s), the most accurate variant; 60 req/s needs
    # ResNet-18 on 0.5 (53.5) beside ResNet-50 on 0.25 filled to its 10.68 (ResNet-34 there would add fewer
    # points: 14.54 x 3.6 < 10.68 x 6.4; ResNet-101 on 0.25 leaves 60 unserved, 53.5 + 4.7).
    rates = [10.0] * 30 + [60.0] * 10
    got = accuracy_ceiling(LOCAL.tuned(budget=0.75), rates)
    want = (10 * 30 * _acc("resnet152") + 10 * _burst_mix()) / (10 * 30 + 60 * 10)
    assert got.mean_accuracy == pytest.approx(want, abs=1e-6)
    assert got.mean_cores == pytest.approx(0.75)
    assert got.unserved_share == 0.0
    assert got.label == "ceiling at 0.75 cores"


def test_more_cores_never_lower_the_ceiling_and_a_dearer_core_buys_fewer():
    rates = [8.0, 15.0, 33.0, 52.0, 70.0, 41.0, 12.0] * 5
    ceilings = [accuracy_ceiling(LOCAL.tuned(budget=b), rates).mean_accuracy for b in (0.75, 1.0, 1.25, 1.75)]
    assert ceilings == sorted(ceilings) and ceilings[-1] > ceilings[0]
    points = [ideal_point(LOCAL.tuned(alpha=a), rates) for a in (0.02, 0.05, 0.2, 1.0)]
    assert [p.mean_cores for p in points] == sorted((p.mean_cores for p in points), reverse=True)
    assert all(p.mean_accuracy <= ceilings[-1] + 1e-9 for p in points)  # no objective beats the ceiling


def test_load_beyond_the_budget_is_counted_unserved():
    # 0.25 core serves at most ResNet-18's 19.4 req/s: of 10 + 40 req/s, 10 + 19.4 are served
    got = accuracy_ceiling(LOCAL.tuned(budget=0.25), [10.0, 40.0])
    assert got.unserved_share == pytest.approx(1 - (10 + 19.4) / 50, abs=1e-3)


def test_a_baseline_above_the_ceiling_at_its_cores_is_marked():
    rates = [10.0] * 30 + [60.0] * 10
    sweep = parse_sweep("alpha=0.05,0.2")
    swept = [Point("infadapter alpha=0.05", "infadapter", 1.0, 0.76, 0.0, value=0.05),
             Point("infadapter alpha=0.2", "infadapter", 0.6, 0.74, 0.0, value=0.2)]
    # one baseline above the ceiling at 0.75 core (hand-derived above: 73.4 %), one under it
    high = Point("hpa:resnet50", "hpa", 0.75, _acc("resnet50"), 0.02)
    low = Point("static:resnet18", "static", 0.75, _acc("resnet18"), 0.0)
    doc = with_ideal(frontier(swept, [high, low], "alpha"), LOCAL, rates, ideal_points(LOCAL, rates, sweep))
    rows = {b["label"]: b for b in doc["baselines"]}
    assert rows["hpa:resnet50"]["over_ceiling"] and not rows["static:resnet18"]["over_ceiling"]
    assert rows["hpa:resnet50"]["ceiling_accuracy"] == pytest.approx(
        (300 * _acc("resnet152") + 10 * _burst_mix()) / 900, abs=1e-6)
    assert [p["label"] for p in doc["ideal"]] == ["ideal alpha=0.05", "ideal alpha=0.2"]
    assert doc["ideal"][0]["mean_cores"] >= doc["ideal"][1]["mean_cores"]
