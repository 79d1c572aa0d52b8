"""``cli.py adapt`` with several services (profiles/services-local.yaml: live and batch sharing 1.75 cores): one
joint decision per interval, each service's window replayed at once, each under its own model name.

The local run is short (40 s of the windows at --speedup 30, a fifth of the trace's rates) and asserts what
holds whatever the CPU does: each service's requests went to its own variants only, both were served, every
plan's shares sum to 1 per service and its cores stay within the budget. It does not judge SLO attainment
(docs/core.md has a measured run), so it is slow but not quiet. The dry-run replays the windows as the
observed load (no servers)."""

from __future__ import annotations

import csv
import json
import shlex
from collections import defaultdict
from pathlib import Path

import pytest

from infadapter.adapter.records import read_records
from infadapter.core.profile import load_profile
from tests.cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "services-local.yaml"
BUDGET = 1.75

pytestmark = pytest.mark.slow

# docs/core.md, "Several services, live": the page's command, run here with --speedup 30 --duration 40 appended
# (a later flag wins in click), so the 40 s cover 20 minutes of both windows.
ADAPT_SERVICES = ("python cli.py adapt --profile profiles/services-local.yaml --scale 0.2 --speedup 6 --interval 5 "
                  "--json")


def _check_plans(run_dir: Path) -> list[dict]:
    """Every decision's plan: variants of a service carry it, shares sum to 1 per service, cores within the
    budget (the applied plan too); the records."""
    prof = load_profile(PROFILE)
    records = list(read_records(run_dir / "decisions.jsonl"))
    assert records
    for rec in records:
        for key in ("plan_after", "serving"):
            plan = rec[key]
            if plan is None:
                continue
            assert sum(v["cores"] for v in plan["variants"]) <= BUDGET + 1e-9
            shares: dict[str, float] = defaultdict(float)
            for v in plan["variants"]:
                assert v["service"] == prof.service_of(v["name"])
                shares[v["service"]] += v["share"]
            assert all(abs(s - 1.0) < 1e-4 for s in shares.values()), shares
        inputs = rec["inputs"]["services"]
        assert set(inputs) == {"live", "batch"}
        # One decision for both: the total forecast is the services' forecasts added up.
        assert rec["forecast_rps"] == pytest.approx(sum(x["forecast_rps"] for x in inputs.values()), abs=0.01)
    return records


def test_adapt_runs_both_services_live_each_on_its_own_variants(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*shlex.split(ADAPT_SERVICES)[2:], "--speedup", "30", "--duration", "40", "--interval", "3",
            "--run-dir", str(run_dir)]
    out = run_cli(*args, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    services = {s["name"]: s for s in summary["services"]}
    assert set(services) == {"live", "batch"}
    for name, s in services.items():
        assert s["ok"] > 0, (name, s)  # both services served
        assert set(s) >= {"requests", "ok", "slo_violation_rate", "mean_cores", "mean_accuracy"}
        assert all(v.startswith(f"{name}-") for v in s["by_variant"]), s["by_variant"]
    assert summary["requests"] == sum(s["requests"] for s in services.values())
    assert summary["mean_cores"] <= BUDGET + 1e-9
    assert summary["mean_cores"] == pytest.approx(sum(s["mean_cores"] for s in services.values()), abs=0.01)
    # Every request went to its own service's variants: requests.csv names the service and the variant.
    with (run_dir / "requests.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    answered = [r for r in rows if r["outcome"] == "ok"]
    assert {r["service"] for r in answered} == {"live", "batch"}
    assert all(r["variant"].startswith(f"{r['service']}-") for r in answered)
    first = _check_plans(run_dir)[0]
    # The first decision comes before the load: it plans from each window's history before (batch's ran at
    # ~46 req/s at this scale), not from the zeros of the seconds spent bringing the servers up (which once
    # made batch's first forecast 0.013 req/s and shed its first seconds).
    assert first["trigger"] == "start" and first["history_len"] == 0
    assert first["inputs"]["services"]["batch"]["forecast_rps"] > 20, first["inputs"]
    assert (run_dir / "adapt.png").stat().st_size > 0
    # Every joint decision re-solves from its record: overload re-plans and the start-up calibration included.
    rep = run_cli("explain", "--run-dir", str(run_dir), "--replay", "--json")
    assert rep.returncode == 0, rep.stdout
    assert json.loads(rep.stdout)["reproduced"] == len(read_records(run_dir / "decisions.jsonl"))
    # explain --cores: a ladder per service, its requests those the run sent it, judged at its own SLO.
    cores = run_cli("explain", "--run-dir", str(run_dir), "--cores", "--json")
    assert cores.returncode == 0, cores.stderr
    ladder = json.loads(cores.stdout)
    by = {s["name"]: s for s in ladder["services"]}
    assert {n: s["requests"] for n, s in by.items()} == {n: s["requests"] for n, s in services.items()}
    assert ladder["spans_solved"] > 0
    served = ladder["layers"][0]["mean_cores"]
    assert sum(s["layers"][0]["mean_cores"] for s in by.values()) == pytest.approx(served, abs=1e-3)


def test_adapt_dry_run_with_services(tmp_path: Path) -> None:
    out_dir = tmp_path / "dry"
    out = run_cli("adapt", "--backend", "dry-run", "--out", str(out_dir), "--profile", str(PROFILE), "--scale", "0.2",
                  "--speedup", "60", "--duration", "8", "--interval", "1", "--json", timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert [s["name"] for s in summary["services"]] == ["live", "batch"]
    for s in summary["services"]:
        assert s["requests"] is None and 0 < s["mean_cores"] <= BUDGET  # a replay: no requests, only plans
        assert 0.69 < s["mean_accuracy"] < 0.79
    records = _check_plans(out_dir)
    assert records[0]["trigger"] == "start" and all(r["trigger"] in ("start", "interval") for r in records)
    status = run_cli("status", "--run-dir", str(out_dir), "--json")
    assert status.returncode == 0
    assert [s["name"] for s in json.loads(status.stdout)["services"]] == ["live", "batch"]


# README "Results" and docs/core.md "Several services, live": the static split's live figure (40 s of it here).
ADAPT_SPLIT = ("python cli.py adapt --profile profiles/services-local.yaml --scale 0.2 --speedup 6 --interval 5 "
               "--budget 1.25 --policy infadapter-split")


def test_a_static_split_serves_live_each_service_on_its_share_of_the_budget(tmp_path: Path) -> None:
    run_dir = tmp_path / "split"
    args = [*shlex.split(ADAPT_SPLIT)[2:], "--speedup", "30", "--duration", "40", "--interval", "3",
            "--run-dir", str(run_dir), "--json"]
    out = run_cli(*args, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    services = {s["name"]: s for s in json.loads(out.stdout)["services"]}
    assert all(s["ok"] > 0 for s in services.values()), services  # both served, each on its own servers
    records = read_records(run_dir / "decisions.jsonl")
    budgets = records[0]["replay"]["split_budgets"]
    assert budgets == {"live": 0.25, "batch": 1.0}
    for rec in records:  # no plan gives a service more than its share (the joint solve would: live's burst)
        if rec["plan_after"] is None:
            continue
        for name, share in budgets.items():
            assert sum(v["cores"] for v in rec["plan_after"]["variants"] if v["service"] == name) <= share + 1e-9
    rep = run_cli("explain", "--run-dir", str(run_dir), "--replay", "--json")
    assert rep.returncode == 0, rep.stdout
    assert json.loads(rep.stdout)["reproduced"] == len(records)


def test_adapt_dry_run_with_a_static_split_keeps_each_service_in_its_share_and_replays(tmp_path: Path) -> None:
    # --budget 1.25 splits by the windows' mean loads: live 0.25, batch 1 (tests/test_services_sim.py: the rule).
    out_dir = tmp_path / "split"
    out = run_cli("adapt", "--backend", "dry-run", "--out", str(out_dir), "--profile", str(PROFILE), "--scale", "0.2",
                  "--speedup", "60", "--duration", "8", "--interval", "1", "--budget", "1.25", "--policy",
                  "infadapter-split", "--json", timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    records = read_records(out_dir / "decisions.jsonl")
    budgets = records[0]["replay"]["split_budgets"]
    assert budgets == {"live": 0.25, "batch": 1.0}
    for rec in records:
        assert rec["reason"].startswith("static split: ")
        for name, share in budgets.items():
            cores = sum(v["cores"] for v in rec["plan_after"]["variants"] if v["service"] == name)
            assert 0 < cores <= share + 1e-9, (name, rec["plan_after"])
    rep = run_cli("explain", "--run-dir", str(out_dir), "--replay", "--json")
    assert rep.returncode == 0, rep.stdout
    assert json.loads(rep.stdout)["reproduced"] == len(records)


@pytest.mark.parametrize("args, message", [
    (["--window", "paper"], "--window: "),
    (["--rate", "5", "--duration", "5"], "--rate: "),
    (["--policy", "msplus"], "--policy: "),
    (["--policy", "vpa:resnet50"], "--policy: "),
    (["--router", "haproxy"], "--router haproxy: several services are routed by the dispatcher"),
])
def test_bad_flags_with_services_are_one_line_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    out = run_cli("adapt", "--profile", str(PROFILE), "--run-dir", str(tmp_path / "run"), *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
