"""``cli.py explain`` on a run of several services (profiles/services-local.yaml: live and batch sharing 1.75
cores, one joint solve per decision): every decision replays from its record, a tampered record does not, and
the story, one decision and ``--json`` say per service what each decision planned.

The runs are real dry-runs (each service's window replayed as the observed load, no servers), at two scales:
0.2, where the forecasts fit the budget and min-gain keeps the current cores now and then, and 0.5, where they
do not (the forecasts' headroom gives way, batch sheds): both paths of ``policies.joint_solve``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infadapter.adapter.explain import replay
from infadapter.adapter.records import read_log
from infadapter.core import explain
from infadapter.core.plan import Plan
from infadapter.core.policies import Context, joint_policy
from infadapter.core.profile import load_profile
from tests.cli_helpers import ROOT, run_cli

PROFILE = ROOT / "profiles" / "services-local.yaml"
SCALES = (0.2, 0.5)


def _adapt_args(out: Path, scale: float) -> list[str]:
    # tests/test_adapt_services.py's dry-run flags: each service replays its own window (--scale/--speedup).
    return ["adapt", "--backend", "dry-run", "--out", str(out), "--profile", str(PROFILE), "--scale", f"{scale:g}",
            "--speedup", "60", "--duration", "8", "--interval", "1", "--json"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[float, Path]:
    out = {}
    for scale in SCALES:
        run_dir = tmp_path_factory.mktemp("explain-services") / f"dry-{scale:g}"
        r = run_cli(*_adapt_args(run_dir, scale), timeout=120)
        assert r.returncode == 0, r.stderr[-3000:]
        out[scale] = run_dir
    return out


@pytest.mark.slow
@pytest.mark.parametrize("scale", SCALES)
def test_replay_reproduces_every_decision_of_a_services_run(runs, scale):
    run_dir = runs[scale]
    n = len(read_log(run_dir / "decisions.jsonl").records)
    assert n >= 5
    r = run_cli("explain", "--run-dir", str(run_dir), "--replay", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout) == {"decisions": n, "reproduced": n, "ok": True, "differ": [], "skipped": []}
    text = run_cli("explain", "--run-dir", str(run_dir), "--replay")
    assert text.returncode == 0 and f"{n} of {n} decisions reproduced (every decision)" in text.stdout


@pytest.mark.slow
def test_a_tampered_services_record_does_not_reproduce(runs, tmp_path):
    recs = read_log(runs[0.2] / "decisions.jsonl").records
    load_victim, plan_victim, old_victim = recs[1], recs[2], recs[3]
    # As if live had been forecast at three times its load: the joint plan (and the load it is made for) changes.
    load_victim["replay"]["load_by_service"]["live"] *= 3
    # As if the solver had given batch's first variant one core step more.
    batch = next(v for v in plan_victim["plan_after"]["variants"] if v["service"] == "batch")
    batch["cores"] += 0.25
    # A record written before the per-service loads were recorded.
    del old_victim["replay"]["load_by_service"]
    (tmp_path / "decisions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    r = run_cli("explain", "--run-dir", str(tmp_path), "--replay")
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    load_line = next(x for x in lines if x.startswith(f"decision #{load_victim['seq']} does not reproduce: "))
    assert "service live: recorded plan for" in load_line
    assert f"decision #{plan_victim['seq']} does not reproduce: {batch['name']}: recorded" in r.stdout
    assert (f"decision #{old_victim['seq']} not replayed: the record has no per-service loads (written before "
            "explain replayed several services)") in r.stdout
    assert f"{len(recs) - 3} of {len(recs)} decisions reproduced" in r.stdout
    doc = json.loads(run_cli("explain", "--run-dir", str(tmp_path), "--replay", "--json").stdout)
    assert [d["seq"] for d in doc["differ"]] == [load_victim["seq"], plan_victim["seq"]]
    assert [d["seq"] for d in doc["skipped"]] == [old_victim["seq"]] and not doc["ok"]


@pytest.mark.slow
@pytest.mark.parametrize("scale", SCALES)
def test_json_says_per_service_what_each_decision_planned(runs, scale):
    r = run_cli("explain", "--run-dir", str(runs[scale]), "--json")
    assert r.returncode == 0, r.stderr
    docs = json.loads(r.stdout)
    for d in docs:
        services = {s["name"]: s for s in d["services"]}
        assert set(services) == {"live", "batch"}, d["seq"]
        for name, s in services.items():
            assert s["variants"] and all(v["name"].startswith(f"{name}-") for v in s["variants"])
            assert abs(sum(v["share"] for v in s["variants"]) - 1) < 1e-6
            assert s["forecast_rps"] == d["inputs"]["services"][name]["forecast_rps"]
            # The plan is made for the forecast, or for less where the forecasts' headroom gave way.
            assert s["planned_rps"] <= s["forecast_rps"] + 1e-3 and s["shed_rps"] >= 0
        assert sum(s["cores"] for s in services.values()) == pytest.approx(d["plan_after"]["cores"])
        # The terms are the joint objective's (weight x accuracy), the same number the solver's plan carries.
        t = d["terms"]
        assert t["objective"] == pytest.approx(t["accuracy"] - t["cost"] - t["transition"], abs=1e-8)
        assert t["objective"] == pytest.approx(d["plan_after"]["objective"], abs=1e-8)
        assert d["binding"] and all(b["text"] for b in d["binding"])
        # No runner-up search for a joint plan: the record says so instead of leaving it silently empty.
        assert d["runner_up"] is None and d["explain_note"] == explain.SERVICES_NOTE
        if "kept the current cores" in d["reason"]:
            assert d["binding"][0]["kind"] == "min_gain" and "optimum" in t
    if scale == 0.5:
        # The first decision (the windows' history before) cannot plan both forecasts: the headroom gives way.
        first = docs[0]
        assert first["binding"][0]["kind"] == "headroom", first["binding"]
        assert any(s["planned_rps"] < s["forecast_rps"] for s in first["services"])


@pytest.mark.slow
def test_story_and_one_decision_of_a_services_run(runs):
    run_dir = runs[0.2]
    story = run_cli("explain", "--run-dir", str(run_dir))
    assert story.returncode == 0, story.stderr
    changes = [x for x in story.stdout.splitlines() if x.startswith("#")]
    assert changes and all(" -> live: live-" in x and "; batch: batch-" in x for x in changes)
    one = run_cli("explain", "--run-dir", str(run_dir), "--decision", "2")
    assert one.returncode == 0, one.stderr
    text = " ".join(one.stdout.split())
    assert "Per service: live saw" in text and "; batch saw" in text
    assert "Bound by:" in text and "no runner-up is searched for a joint plan" in text
    assert "weight x accuracy" in text  # the table's accuracy column is the joint objective's term


def test_min_gain_holding_a_joint_plan_is_a_binding_constraint():
    # A decision of a dry-run at --scale 0.2: the current cores re-shared for the forecasts are 0.0007 below the
    # solver's plan (batch-resnet50 instead of batch-resnet34), under the run's --min-gain of 0.005.
    profile = load_profile(PROFILE)
    current = Plan.from_dict({"load": 98.5, "variants": [
        {"name": "live-resnet152", "cores": 0.5, "share": 1.0, "service": "live"},
        {"name": "batch-resnet18", "cores": 0.75, "share": 0.7, "service": "batch"},
        {"name": "batch-resnet34", "cores": 0.5, "share": 0.3, "service": "batch"}]})
    loads, observed = {"live": 9.312, "batch": 89.218}, {"live": 8.833, "batch": 48.391}
    ctx = Context(profile=profile, now_s=0.0, forecast_rps=sum(loads.values()), current=current,
                  forecast_by_service=loads, observed_by_service=observed)
    decision = joint_policy(profile, 0.005).decide(ctx)
    assert decision.held_by == "min_gain"
    f = explain.services_decision_fields(profile, "interval", 57.2, (), None, loads, observed, current, decision,
                                         None)
    held = f["binding"][0]
    assert held["kind"] == "min_gain" and 0 < held["gain"] < 0.005
    assert f["terms"]["objective"] == pytest.approx(decision.plan.objective, abs=1e-8)
    assert f["terms"]["optimum"]["terms"]["objective"] - f["terms"]["objective"] == pytest.approx(held["gain"])
    assert f["replay"]["load_by_service"] == loads and f["replay"]["observed_by_service"] == observed
    assert f["inputs"]["services"]["batch"] == {"observed_rps": 48.391, "forecast_rps": 89.218}
    # Without min-gain the solver's plan serves: nothing held back.
    free = joint_policy(profile, 0.0).decide(ctx)
    f0 = explain.services_decision_fields(profile, "interval", 57.2, (), None, loads, observed, current, free, None)
    assert all(b["kind"] != "min_gain" for b in f0["binding"]) and "optimum" not in f0["terms"]


def test_a_record_whose_services_are_not_the_profiles_says_why():
    rec = {"seq": 1, "time_s": 0.0, "plan_before": None, "plan_after": {"variants": []},
           "replay": {"profile": str(PROFILE), "alpha": 0.05, "budget": 1.75, "policy": "infadapter",
                      "load_rps": 10.0, "load_by_service": {"live": 5.0, "feed": 5.0}}}
    report = replay([rec])
    assert not report.ok and report.skipped == [
        {"seq": 1, "why": "the record's services (feed, live) are not the profile's (live, batch)"}]


def test_a_floor_the_budget_cannot_hold_is_named():
    # live at 110 req/s (batch 5) on 1.75 cores: the most accurate mix that carries it is 71.23 %,
    # under live's floor of 72 %; the budget binds too.
    profile = load_profile(PROFILE)
    loads = {"live": 110.0, "batch": 5.0}
    ctx = Context(profile=profile, now_s=0.0, forecast_rps=115.0, forecast_by_service=loads,
                  observed_by_service=loads)
    decision = joint_policy(profile, 0.0).decide(ctx)
    f = explain.services_decision_fields(profile, "start", 0.0, (), None, loads, loads, None, decision, None)
    kinds = [b["kind"] for b in f["binding"]]
    assert "budget" in kinds and "floor" in kinds
    floor = next(b for b in f["binding"] if b["kind"] == "floor")
    assert floor["service"] == "live" and floor["accuracy"] < floor["accuracy_floor"] == 0.72
    assert "below its floor 72.00%" in floor["text"]
