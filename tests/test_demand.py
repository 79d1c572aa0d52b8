"""``--demand rate``: a forecast of the busiest second turned into the Poisson rate behind it, the unit
in which a profile's capacity is measured (issue 27: planning for the peak of the counts planned their
second-to-second scatter twice)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from infadapter.core.control import ControlConfig, decision_load, expected_max_normal, minute_seconds, rate_of_peak
from infadapter.core.forecast import Last
from infadapter.errors import BadInput

ROOT = Path(__file__).resolve().parents[1]


def test_expected_maximum_of_normals_matches_the_tables() -> None:
    assert expected_max_normal(1) == 0.0
    assert expected_max_normal(2) == pytest.approx(1 / math.sqrt(math.pi), abs=1e-6)
    assert expected_max_normal(12) == pytest.approx(1.6292, abs=1e-4)
    assert expected_max_normal(60) == pytest.approx(2.3193, abs=1e-4)


@pytest.mark.parametrize("rate", [8.0, 60.0, 240.0])
def test_rate_of_peak_inverts_the_busiest_second_of_poisson_counts(rate: float) -> None:
    # The busiest of 12 one-second Poisson counts, averaged over many minutes, against what
    # rate_of_peak takes back to a rate: within 3 % (the normal approximation, for a rate down to 8/s).
    counts = np.random.default_rng(0).poisson(rate, size=(20000, 12))
    peak = float(counts.max(axis=1).mean())
    assert rate_of_peak(peak, 12) == pytest.approx(rate, rel=0.03)
    assert rate_of_peak(peak, 1) == peak and rate_of_peak(0.0, 12) == 0.0


def test_a_decision_plans_for_the_rate_but_never_below_what_it_sees() -> None:
    stretched = ControlConfig(history_stretch=5, demand="rate")
    assert minute_seconds(stretched) == 12 and minute_seconds(ControlConfig()) == 60
    history = [73.0] * 120  # two minutes of observed seconds (ten trace minutes at speedup 5)
    peak = decision_load("interval", Last(), history, 50.0, ControlConfig(history_stretch=5))
    rate = decision_load("interval", Last(), history, 50.0, stretched)
    assert peak == 73.0 and rate == pytest.approx(rate_of_peak(73.0, 12)) and rate < 62.0
    assert decision_load("interval", Last(), history, 70.0, stretched) == 70.0  # the rate seen now is a floor
    # An overload re-plan serves the observed rate with its tolerance, as before (a 3 s mean, no scatter).
    over = decision_load("overload", Last(), [*history[:-3], 90.0, 90.0, 90.0], 90.0, stretched)
    assert over == pytest.approx(99.0)


def test_an_unknown_demand_is_one_line_naming_the_flag() -> None:
    with pytest.raises(BadInput, match="--demand: must be one of peak, rate"):
        ControlConfig(demand="mean")


@pytest.mark.slow
def test_simulated_on_a_busy_window_rate_buys_accuracy_at_the_same_cores_and_keeps_the_slo() -> None:
    def run(*extra: str) -> dict:
        out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "simulate", "--profile",
                              str(ROOT / "profiles/local.yaml"), "--window", "1768200:1260", "--scale", "0.25",
                              "--speedup", "5", "--interval", "6", "--budget", "1.5", "--json", *extra],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)

    peak, rate = run(), run("--demand", "rate")
    assert rate["mean_cores"] <= peak["mean_cores"] + 0.01
    assert rate["mean_accuracy"] >= peak["mean_accuracy"] + 0.005, (peak, rate)
    assert rate["slo_violation_rate"] <= 0.01
