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

from infadapter.core.control import (
    ControlConfig,
    decision_load,
    expected_max_normal,
    for_profile,
    minute_seconds,
    rate_of_peak,
)
from infadapter.core.forecast import Last
from infadapter.core.profile import load_profile
from infadapter.errors import BadInput
from infadapter.sim.simulation import PAPER_SETTING, SimConfig, Simulation

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


def test_the_demand_is_the_profiles_unless_a_flag_sets_it() -> None:
    local, paper = load_profile(ROOT / "profiles/local.yaml"), load_profile(ROOT / "profiles/paper.yaml")
    # local.yaml's capacities are measured Poisson rates at the SLO's p99; the paper's profile plans for the peak.
    assert (local.demand, paper.demand) == ("rate", "peak")
    assert for_profile(ControlConfig(), local).demand == "rate"
    assert for_profile(ControlConfig(), paper).demand == "peak"
    assert for_profile(ControlConfig(demand="peak"), local).demand == "peak"
    # The simulator (and the live loop, the same call) resolves it; the paper's setting plans for the peak.
    rates = np.full(5, 10.0)
    assert Simulation(local, rates, "infadapter", SimConfig()).ctl.demand == "rate"
    assert Simulation(local, rates, "infadapter", SimConfig.of(**PAPER_SETTING)).ctl.demand == "peak"


def test_an_unknown_demand_is_one_line_naming_the_flag_or_the_field(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="--demand: must be one of peak, rate"):
        ControlConfig(demand="mean")
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "profiles/local.yaml").read_text().replace("demand: rate", "demand: mean"))
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "plan", "--load", "5", "--profile", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {bad}: demand: Input should be 'peak' or 'rate'"


@pytest.mark.slow
def test_simulated_on_a_busy_window_the_profiles_rate_buys_accuracy_for_fewer_cores(tmp_path: Path) -> None:
    def run(profile: Path, *extra: str) -> dict:
        out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "simulate", "--profile", str(profile),
                              "--window", "1768200:1260", "--scale", "0.25", "--speedup", "5", "--interval", "6",
                              "--budget", "1.5", "--json", *extra],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)

    local = ROOT / "profiles/local.yaml"
    # local.yaml as it was until 2026-12-05: planned for the peak, capacities times 0.8
    before = tmp_path / "before.yaml"
    before.write_text(local.read_text().replace("safety: 1.0", "safety: 0.8").replace("demand: rate", "demand: peak"))
    old, new, peak = run(before), run(local), run(local, "--demand", "peak")
    assert new["mean_cores"] <= old["mean_cores"] - 0.1, (old, new)
    assert new["mean_accuracy"] >= old["mean_accuracy"] + 0.01, (old, new)
    assert new["slo_violation_rate"] <= 0.01
    assert peak["mean_cores"] >= new["mean_cores"] + 0.1  # the flag wins over the profile; the rate saves cores
