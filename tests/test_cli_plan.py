"""``cli.py plan`` and ``cli.py profile``: the JSON contract, tables, exit codes, one-line errors."""

from __future__ import annotations

import json

import pytest

from tests.cli_helpers import ROOT, run_cli

# Starts real servers, clusters or subprocesses: not in the edit-test loop (pytest -m "not slow").
pytestmark = pytest.mark.slow


def test_plan_json_is_exactly_the_contract_object():
    r = run_cli("plan", "--load", "274", "--current", "resnet152=20", "--json")
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)  # exactly one JSON value, nothing else on stdout
    assert set(obj) == {"feasible", "load", "objective", "accuracy", "cores", "variants"}
    assert obj["feasible"] is True and obj["load"] == 274.0 and obj["cores"] <= 20
    assert all(set(v) == {"name", "cores", "share", "capacity"} for v in obj["variants"])
    assert sum(v["share"] for v in obj["variants"]) == pytest.approx(1.0)


def test_plan_table_by_default():
    r = run_cli("plan", "--load", "45")
    assert r.returncode == 0 and "resnet50" in r.stdout and "objective" in r.stdout


def test_infeasible_load_prints_the_plan_and_exits_3():
    r = run_cli("plan", "--load", "1000", "--json")
    assert r.returncode == 3
    obj = json.loads(r.stdout)
    assert obj["feasible"] is False and obj["variants"][0]["name"] == "resnet18"
    assert "exceeds the most the budget" in r.stderr


def test_overrides_change_the_answer():
    cheap = json.loads(run_cli("plan", "--load", "60", "--json").stdout)
    costly = json.loads(run_cli("plan", "--load", "60", "--alpha", "2", "--json").stdout)
    assert costly["cores"] <= cheap["cores"]
    small = run_cli("plan", "--load", "200", "--budget", "6", "--json")
    assert small.returncode == 3 and json.loads(small.stdout)["cores"] <= 6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("plan", "--load", "-1"), "error: --load: must be a number >= 0"),
        (("plan", "--load", "5", "--current", "resnet18"), "error: --current: expected NAME=CORES"),
        (("plan", "--load", "5", "--current", "vgg=2"), "error: --current: unknown variant 'vgg'"),
        (("plan", "--load", "5", "--policy", "vpa:resnet18"), "error: --policy: plan supports"),
        (("plan", "--load", "5", "--profile", "/nonexistent.yaml"), "profile file not found"),
        (("plan", "--load", "5", "--alpha", "-3"), "error: overrides: alpha: must be >= 0, got -3"),
        (("plan", "--load", "5", "--budget", "0.1"), "error: --budget: got 0.1 cores; give"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    r = run_cli(*args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_invalid_profile_file_error(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text((ROOT / "profiles" / "paper.yaml").read_text().replace("accuracy: 0.7613", "accuracy: 76.13"))
    r = run_cli("plan", "--load", "5", "--profile", str(bad))
    assert r.returncode == 2
    assert f"{bad}: variants[2].accuracy: must be between 0 and 1, got 76.13" in r.stderr


def test_env_vars_feed_flags(tmp_path):
    r = run_cli("plan", "--load", "45", "--json", env={"INFADAPTER_PROFILE": "profiles/paper.yaml"})
    assert r.returncode == 0 and json.loads(r.stdout)["variants"]


def test_profile_import_paper_and_show(tmp_path):
    out = tmp_path / "p.yaml"
    r = run_cli("profile", "import-paper", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_text() == (ROOT / "profiles" / "paper.yaml").read_text()
    shown = run_cli("profile", "show", str(out), "--json")
    assert json.loads(shown.stdout)["capacity_rps"]["resnet18"]["20"] == pytest.approx(386.2, abs=0.1)
