"""``simulate --min-budget`` in process (fast): the search from the fluid estimate, the estimate itself, and a
simulation that stops once its violations are over the target. The CLI run over the paper window, checked
against plain ``simulate --budget`` runs: tests/test_explain.py::test_min_budget_is_the_smallest_that_meets_the_target.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from infadapter.commands.simulate import search_min_budget
from infadapter.sim.fluid import fluid_min_budget, max_service_rps, unavoidable_violations
from infadapter.sim.simulation import PAPER_SETTING, SimConfig, Simulation, make_arrivals
from tests.test_sim import PROFILE

# capacity(fast, c) = 20 c req/s, capacity(slow, c) = 10 c req/s; SLO 500 ms: tests/test_sim.py's profile.
LN100_OVER_SLO = math.log(100) / 0.5  # mu = capacity + ln(100) / SLO (infadapter.core.service)


def _steps(rates: dict[float, float], target: float, guess: float | None):
    """A violation curve by budget, and the budgets the search simulated."""
    calls: list[float] = []

    def violations(b: float) -> tuple[float, bool]:
        calls.append(b)
        return rates[b], rates[b] <= target  # failing runs "stop early", as the simulator's do

    return search_min_budget(violations, 2, 20, 1, target, guess=guess), calls


CURVE = {float(b): (0.5 if b < 12 else 0.001) for b in range(2, 21)}  # the answer: 12


@pytest.mark.parametrize(("guess", "calls"), [
    (11.0, [11.0, 12.0]),             # the paper window: the guess fails, one step up passes (2 runs)
    (12.0, [12.0, 11.0]),             # the guess is the answer: it and one step below
    (9.0, [9.0, 10.0, 12.0, 11.0]),   # gallop up 1, 2 steps, then bisect
    (16.0, [16.0, 15.0, 2.0, 9.0, 12.0, 10.0, 11.0]),  # too high a guess: bisect below it
    (None, [20.0, 2.0, 11.0, 15.0, 13.0, 12.0]),       # no guess: bisection over the grid
])
def test_search_finds_the_smallest_budget_and_simulates_the_one_below(guess, calls):
    found, seen = _steps(CURVE, 0.01, guess)
    assert found["budget"] == 12 and found["below"]["budget"] == 11 and found["below"]["stopped_early"]
    assert seen == calls and found["simulations"] == len(calls)


def test_search_says_when_no_budget_meets_the_target():
    found, seen = _steps({float(b): 0.2 for b in range(2, 21)}, 0.01, 15.0)
    assert found["budget"] is None and found["searched_up_to"] == 20 and seen == [15.0, 16.0, 18.0, 20.0]


def test_max_service_rate_is_the_best_plan_within_the_budget():
    # 3 cores: fast on 3 = 60 + ln(100)/0.5 = 69.2 beats fast on 2 + slow on 1 = 40 + 10 + 2 x 9.2 = 68.4.
    assert max_service_rps(PROFILE, 3) == pytest.approx(60 + LN100_OVER_SLO)
    assert max_service_rps(PROFILE, 1) == pytest.approx(20 + LN100_OVER_SLO)
    # Against every plan (each variant off or on 1..8 cores): the knapsack's answer.
    for budget in range(1, 9):
        best = max(20 * f + 10 * w + LN100_OVER_SLO * ((f > 0) + (w > 0))
                   for f in range(9) for w in range(9) if f + w <= budget)
        assert max_service_rps(PROFILE, budget) == pytest.approx(best)


def test_unavoidable_violations_count_what_no_server_answers_in_time():
    # 100 requests a second for 10 s on 60 req/s: in time at most 60 x (10 + 0.5) = 630 of 1000.
    assert unavoidable_violations([100.0] * 10, 60.0, 0.5) == pytest.approx(1000 - 630)
    # Two bursts far apart count apart: 2 x (100 - 60 x 1.5).
    assert unavoidable_violations([100, 0, 0, 0, 0, 100], 60.0, 0.5) == pytest.approx(20)
    assert unavoidable_violations([50.0] * 10, 60.0, 0.5) == 0


def test_fluid_budget_is_the_first_whose_unavoidable_violations_meet_the_target():
    # 90 req/s for 60 s (5400 requests). 3 cores complete at most 69.2 req/s: 5400 - 69.2 x 60.5 = 1214 late
    # (22%); 4 cores (fast on 4) 89.2 req/s: 5400 - 89.2 x 60.5 = 3.4 late (0.06%).
    counts = [90.0] * 60
    assert fluid_min_budget(PROFILE, counts, 0.01, 1, 8) == 4
    assert fluid_min_budget(PROFILE, counts, 0.3, 1, 8) == 3  # 2 cores, 49.2 req/s: 2423 late (45%)


def test_a_run_stopped_over_the_target_counts_a_lower_bound_and_a_full_run_its_exact_violations():
    rates = np.r_[np.full(60, 20.0), np.full(60, 80.0), np.full(60, 20.0)]  # a step past fast on 2 cores
    config = SimConfig.of(**{**PAPER_SETTING, "warmup_s": 0})  # a decision every 30 s: stretches to stop after
    arrivals = make_arrivals(rates, 0)

    def run() -> Simulation:
        return Simulation(PROFILE, rates, "static:fast=2", config, arrivals=arrivals)

    full = run().run()
    assert full.violations > 1000
    bad, exact = run().violations()
    assert exact and bad == full.violations
    bad, exact = run().violations(stop_above=100)
    assert not exact and 100 < bad < full.violations
    bad, exact = run().violations(stop_above=full.violations)
    assert exact and bad == full.violations
