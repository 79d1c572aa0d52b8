"""Adaptation quality with the defaults (docs/adaptation.md): on the paper window and two public busy
windows, infadapter keeps <= 1 % SLO violations at <= 1.10x the oracle's cores and >= its accuracy - 1 pt,
with no flag but the window, as a new user would run it."""

from __future__ import annotations

import json

import pytest

from tests.cli_helpers import run_cli

# Starts real servers, clusters or subprocesses: not in the edit-test loop (pytest -m "not slow").
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("window", ["paper", "1768200:1260", "1554600:1260"])
def test_defaults_meet_the_targets_against_the_oracle(window: str) -> None:
    r = run_cli("simulate", "--window", window, "--policy", "infadapter,oracle", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no warning on a fresh machine: the learned forecaster is committed
    doc = json.loads(r.stdout)
    ia, oracle = doc["results"]
    assert (ia["policy"], oracle["policy"]) == ("infadapter", "oracle")
    assert ia["forecaster"] not in ("ewma+10%", "last")
    assert ia["slo_violation_rate"] <= 0.01
    assert ia["mean_cores"] <= 1.10 * oracle["mean_cores"]
    assert ia["mean_accuracy"] >= oracle["mean_accuracy"] - 0.01


def test_the_paper_setting_is_one_flag_and_the_defaults_beat_it() -> None:
    args = ("simulate", "--window", "paper", "--policy", "infadapter", "--json")
    paper = json.loads(run_cli(*args, "--paper", timeout=300).stdout)
    ours = json.loads(run_cli(*args, timeout=300).stdout)
    assert paper["forecaster"] == "ewma+10%"
    assert paper["slo_violation_rate"] > 10 * ours["slo_violation_rate"]
    # An explicit flag still wins over --paper's setting.
    learned = json.loads(run_cli(*args, "--paper", "--forecaster", "learned", timeout=300).stdout)
    assert learned["forecaster"] == "learned"
