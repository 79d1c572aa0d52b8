"""``explain --cores``: where a run's cores went, each layer of headroom taken away in turn.

A hand-made run folder (one decision on profiles/local.yaml, a known second-by-second load) checks each
layer against a direct solve; ``test_explain.py``'s local run with real model servers checks the ladder
against its own ``requests.csv`` and decisions (the same run as its ``--replay`` check).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from infadapter.adapter.cores import LAYERS, read_requests, where_cores_went
from infadapter.adapter.records import read_log
from infadapter.core.profile import load_profile
from infadapter.core.solver import solve
from tests.cli_helpers import ROOT, run_cli

LOCAL = ROOT / "profiles" / "local.yaml"
T0 = 1_800_000_000.0


def _folder(tmp_path: Path, counts: list[int], scale: float = 1.0, late_every: int = 0,
            profile: Path = LOCAL) -> Path:
    """One decision at T0 serving resnet50 on 1 core, a second one ``len(counts)`` s later; the requests."""
    prof = load_profile(profile)
    plan = solve(prof.scaled_capacity(scale), 40.0).plan.as_dict()
    replay = {"profile": str(profile), "profile_sha256": hashlib.sha256(profile.read_bytes()).hexdigest(),
              "alpha": prof.alpha, "budget": prof.budget_cores, "policy": "infadapter", "capacity_scale": scale,
              "stabilization_intervals": 1, "min_gain": 0.0, "load_rps": 40.0, "policy_state": None}
    recs = [{"seq": 1, "time_s": T0, "policy": "infadapter", "forecast_rps": 40.0, "plan_before": None,
             "plan_after": plan, "replay": replay},
            {"seq": 2, "time_s": T0 + len(counts), "policy": "infadapter", "forecast_rps": 40.0,
             "plan_before": plan, "plan_after": plan, "replay": {**replay}}]
    (tmp_path / "decisions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    serving = [v["name"] for v in plan["variants"] if v["share"] > 0]
    with (tmp_path / "requests.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "scheduled_s", "sent_s", "sent_unix", "latency_ms", "status", "outcome", "variant",
                    "error", "service"])
        i = 0
        for s, n in enumerate(counts):
            for k in range(n):
                bad = late_every and i % late_every == 0
                w.writerow([i, s, s, T0 + s + k / (n + 1), 400.0 if bad else 50.0, 200, "ok",
                            serving[i % len(serving)], "", ""])
                i += 1
    return tmp_path


def test_each_layer_is_the_solve_with_that_headroom_taken_away(tmp_path):
    # local.yaml as measured, with its safety factor 0.8 (the committed one has 1.0: no such layer to take away)
    measured = tmp_path / "measured.yaml"
    measured.write_text(LOCAL.read_text().replace("safety: 1.0", "safety: 0.8"))
    run = _folder(tmp_path, [30] * 9 + [45], scale=0.5, late_every=10, profile=measured)
    records = read_log(run / "decisions.jsonl").records
    rep = where_cores_went(records, read_requests(run, 300.0)).as_dict()
    assert [r["layer"] for r in rep["layers"]] == list(LAYERS)
    assert rep["requests"] == 9 * 30 + 45 and rep["mean_busiest_second_rps"] == 45.0
    assert rep["late_share"] == pytest.approx(32 / 315, abs=1e-4)  # every tenth request 400 ms against 300
    prof = load_profile(measured)
    half = prof.scaled_capacity(0.5)
    raw = prof.model_copy(update={"variants": tuple(
        v.model_copy(update={"capacity": v.capacity.model_copy(update={"safety": 1.0})}) for v in prof.variants)})
    want = [solve(half, 40.0).plan, solve(half, 45.0).plan, solve(raw.scaled_capacity(0.5), 45.0).plan,
            solve(raw, 45.0).plan]
    for row, plan in zip(rep["layers"][1:], want, strict=True):
        assert row["mean_cores"] == pytest.approx(plan.cores, abs=1e-4), row
        assert row["accuracy"] == pytest.approx(plan.accuracy, abs=1e-4), row
    # Taking the safety factor and a 2x slower calibration away leaves the solver more capacity per core.
    served, came, unsafe, uncal = (rep["layers"][i] for i in (0, 2, 3, 4))
    assert (unsafe["mean_cores"], -unsafe["accuracy"]) < (came["mean_cores"], -came["accuracy"])
    assert (uncal["mean_cores"], -uncal["accuracy"]) < (unsafe["mean_cores"], -unsafe["accuracy"])
    assert served["mean_cores"] == pytest.approx(want[0].cores, abs=1e-4)
    assert sum(v["requests"] for v in rep["variants"]) == rep["requests"]
    assert max(v["busiest_second_rps"] for v in rep["variants"]) <= 45


def test_a_run_without_its_requests_is_a_one_line_error(tmp_path):
    run = _folder(tmp_path, [10] * 3)
    (run / "requests.csv").unlink()
    r = run_cli("explain", "--run-dir", str(run), "--cores")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--cores: no requests.csv" in r.stderr and "Traceback" not in r.stderr


def test_cores_does_not_mix_with_one_decision(tmp_path):
    run = _folder(tmp_path, [10] * 3)
    r = run_cli("explain", "--run-dir", str(run), "--cores", "--decision", "1")
    assert r.returncode == 2 and "--cores" in r.stderr and "Traceback" not in r.stderr


# -- several services ------------------------------------------------------------------------------
SERVICES_LOCAL = ROOT / "profiles" / "services-local.yaml"


def test_a_run_of_several_services_gets_a_ladder_per_service_judged_at_its_own_slo(tmp_path):
    from infadapter.core.policies import joint_solve
    from infadapter.core.solver import Options

    prof = load_profile(SERVICES_LOCAL)
    forecast = {"live": 12.0, "batch": 40.0}
    plan = joint_solve(prof, forecast, forecast, {}, Options())[0].plan.as_dict()
    replay = {"profile": str(SERVICES_LOCAL), "profile_sha256": hashlib.sha256(SERVICES_LOCAL.read_bytes()).hexdigest(),
              "alpha": prof.alpha, "budget": prof.budget_cores, "policy": "infadapter", "capacity_scale": 1.0,
              "stabilization_intervals": 1, "min_gain": 0.0, "load_rps": 52.0, "policy_state": None,
              "load_by_service": forecast, "observed_by_service": forecast}
    recs = [{"seq": 1, "time_s": T0, "policy": "infadapter", "forecast_rps": 52.0, "plan_before": None,
             "plan_after": plan, "replay": replay},
            {"seq": 2, "time_s": T0 + 5, "policy": "infadapter", "forecast_rps": 52.0, "plan_before": plan,
             "plan_after": plan, "replay": {**replay}}]
    (tmp_path / "decisions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    serving = {s: [v["name"] for v in plan["variants"] if v["service"] == s and v["share"] > 0] for s in forecast}
    counts = {"live": [10, 10, 25, 10, 10], "batch": [30, 30, 30, 30, 30]}
    with (tmp_path / "requests.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "scheduled_s", "sent_s", "sent_unix", "latency_ms", "status", "outcome", "variant",
                    "error", "service"])
        i = 0
        for svc, per_s in counts.items():
            for s, n in enumerate(per_s):
                for k in range(n):  # every request takes 400 ms: late at live's 300 ms SLO, on time at batch's 600
                    w.writerow([i, s, s, T0 + s + k / (n + 1), 400.0, 200, "ok", serving[svc][k % len(serving[svc])],
                                "", svc])
                    i += 1
    rep = where_cores_went(read_log(tmp_path / "decisions.jsonl").records,
                           read_requests(tmp_path, {"live": 300.0, "batch": 600.0})).as_dict()
    by = {s["name"]: s for s in rep["services"]}
    assert (by["live"]["requests"], by["live"]["late_share"]) == (65, 1.0)
    assert (by["batch"]["requests"], by["batch"]["late_share"]) == (150, 0.0)
    assert rep["late_share"] == pytest.approx(65 / 215, abs=1e-4)
    # Each row's services add up to the row; the arrivals row is the joint solve for each one's busiest second.
    for i, row in enumerate(rep["layers"]):
        assert sum(by[s]["layers"][i]["mean_cores"] for s in by) == pytest.approx(row["mean_cores"], abs=1e-3), row
    # (the second decision's span ends with the requests: the first span alone, solved from no running plan)
    busiest = solve(prof, 0.0, {}, loads={"live": 25.0, "batch": 30.0}).plan
    for s in by:
        cores = sum(a.cores for a in busiest.allocations if a.service == s)
        assert by[s]["layers"][2]["mean_cores"] == pytest.approx(cores, abs=1e-4), (s, by[s]["layers"])
    assert by["live"]["layers"][0]["mean_cores"] == pytest.approx(
        sum(v["cores"] for v in plan["variants"] if v["service"] == "live"), abs=1e-4)
    text = run_cli("explain", "--run-dir", str(tmp_path), "--cores")
    assert text.returncode == 0, text.stderr
    assert "Per service" in text.stdout and "live" in text.stdout and "batch" in text.stdout


def test_a_rows_cores_are_over_time_and_its_accuracy_over_the_requests():
    from infadapter.adapter.cores import Layer

    row = Layer("as served")
    row.add(1.0, 0.78, 60.0, 60)  # a quiet minute on an accurate variant
    row.add(0.5, 0.70, 20.0, 1000)  # a busy stretch on a fast one
    assert row.cores == pytest.approx((60 * 1.0 + 20 * 0.5) / 80)
    assert row.accuracy == pytest.approx((60 * 0.78 + 1000 * 0.70) / 1060)
    quiet = Layer("as served")
    quiet.add(1.0, 0.78, 30.0, 0)
    assert quiet.accuracy == pytest.approx(0.78)  # no request came: the plan's accuracy over time
