"""Decisions that explain themselves, ``cli.py explain`` (story, one decision, --json, --replay), and a
decision log that survives a crash (a torn last line, a SIGKILL mid-run, a restart in the same folder).

The runs are real: ``cli.py adapt --backend dry-run`` replaying a small step trace (20 -> 150 -> 20 req/s,
compressed 40x), and one local run on the tiny ONNX profile (real model servers).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infadapter.adapter.explain import one_line_why
from infadapter.adapter.records import DecisionLog, read_log
from infadapter.core import explain, solver
from infadapter.core.plan import Plan
from tests.cli_helpers import ROOT, STEP_LOOP, run_cli, write_step_trace
from tests.tiny_profile import tiny_setup


@pytest.fixture(scope="module")
def step_trace(tmp_path_factory) -> Path:
    return write_step_trace(tmp_path_factory.mktemp("trace"))


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, step_trace) -> Path:
    out = tmp_path_factory.mktemp("explain") / "dry"
    r = run_cli("adapt", "--backend", "dry-run", "--out", str(out), "--trace", str(step_trace), *STEP_LOOP, "--json")
    assert r.returncode == 0, r.stderr
    return out


def _lines(path: Path) -> list[str]:
    return path.read_text().split("\n")


# -- the explanation in each record ---------------------------------------------------------------
@pytest.mark.slow
def test_json_has_binding_and_runner_up_on_every_decision(dry_run):
    r = run_cli("explain", "--run-dir", str(dry_run), "--json")
    assert r.returncode == 0, r.stderr
    docs = json.loads(r.stdout)
    assert isinstance(docs, list) and len(docs) >= 5
    changed = [d for d in docs if d["changed"]]
    assert len(changed) >= 3  # up to the step, and back down
    assert all(d["binding"] for d in changed)
    for d in docs:
        assert d["runner_up"] is not None and d["runner_up"]["gap"] >= 0, d["seq"]
        # The run searched other variant sets only on changes; explain --json completed the others on reading.
        assert "different_variants" in d["runner_up"]["alternatives"] and "note" not in d["runner_up"], d["seq"]
        assert d["runner_up"].get("searched_on_read", False) == (not d["changed"]), d["seq"]
        # Against the solver's own plan (idle warm variants left out), every alternative is no better.
        assert all(a["gap"] >= 0 for a in d["runner_up"]["alternatives"].values()), d["seq"]
        t = d["terms"]
        assert t["objective"] == pytest.approx(t["accuracy"] - t["cost"] - t["transition"], abs=1e-8)
        assert d["inputs"]["history"]["len"] >= 0 and d["inputs"]["trigger"] == d["trigger"]
    # Scale-downs wait (--stabilization 2): a held decision names stabilization and the solver's plan.
    # (A "held" decision whose only change was dropping an idle warm variant holds nothing back.)
    held = [d for d in docs if "scale-down held" in d["reason"] and "optimum" in d["terms"]]
    assert held and all(d["binding"][0]["kind"] == "stabilization" for d in held)
    assert all(d["terms"]["optimum"]["plan"]["cores"] < d["plan_after"]["cores"] for d in held)


@pytest.mark.slow
def test_replay_reproduces_every_dry_run_decision(dry_run):
    r = run_cli("explain", "--run-dir", str(dry_run), "--replay")
    assert r.returncode == 0, r.stdout + r.stderr
    n = len(read_log(dry_run / "decisions.jsonl").records)
    assert f"{n} of {n} decisions reproduced (every decision)" in r.stdout


@pytest.mark.slow
def test_replay_reports_a_decision_that_does_not_reproduce(dry_run, tmp_path):
    recs = read_log(dry_run / "decisions.jsonl").records
    victim = next(r for r in recs if r["diff"].startswith("resize"))
    victim["plan_after"]["variants"][0]["cores"] += 1  # as if the solver had chosen one core more
    (tmp_path / "decisions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    r = run_cli("explain", "--run-dir", str(tmp_path), "--replay")
    assert r.returncode == 1
    name = victim["plan_after"]["variants"][0]["name"]
    assert f"decision #{victim['seq']} does not reproduce: {name}: recorded" in r.stdout
    assert f"{len(recs) - 1} of {len(recs)} decisions reproduced" in r.stdout


@pytest.mark.slow
def test_story_and_one_decision(dry_run):
    story = run_cli("explain", "--run-dir", str(dry_run))
    assert story.returncode == 0, story.stderr
    lines = story.stdout.strip().splitlines()
    assert lines[0].startswith("run ") and any(" create " in ln or ": create " in ln for ln in lines)
    seq = json.loads(run_cli("explain", "--run-dir", str(dry_run), "--json").stdout)[1]["seq"]
    one = run_cli("explain", "--run-dir", str(dry_run), "--decision", str(seq))
    assert one.returncode == 0, one.stderr
    assert one.stdout.startswith(f"Decision #{seq} (") and "Runner-up" in one.stdout and "objective" in one.stdout
    bad = run_cli("explain", "--run-dir", str(dry_run), "--decision", "9999")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--decision: no decision 9999" in bad.stderr
    none = run_cli("explain", "--run-dir", str(dry_run / "nope"))
    assert none.returncode == 2 and "--run-dir: no decisions.jsonl" in none.stderr


@pytest.mark.slow
def test_status_shows_the_last_decisions_why(dry_run):
    doc = json.loads(run_cli("status", "--run-dir", str(dry_run), "--json").stdout)
    last = read_log(dry_run / "decisions.jsonl").records[-1]
    assert doc["last_decision"]["seq"] == last["seq"]
    assert doc["last_decision"]["why"] == one_line_why(last) and doc["last_decision"]["why"].startswith(
        last["binding"][0]["text"])
    text = run_cli("status", "--run-dir", str(dry_run)).stdout
    assert "why: " in text


# -- the explanation, in process ------------------------------------------------------------------
def test_capacity_binding_and_runner_up_at_a_known_load(paper):
    # resnet50 serves 0.8 * (10.32 c - 3.79) req/s: 8 cores 63.02, 9 cores 71.28. At 63.15 req/s from
    # resnet50 on 8 cores the plan is resnet50 on 9 cores, held there by the capacity of 8 (63.02 < 63.15).
    current = Plan.from_dict({"load": 62, "variants": [{"name": "resnet50", "cores": 8, "share": 1}]})
    res = solver.solve(paper, 63.15, current.cores_by_name())
    assert res.plan.cores_by_name() == {"resnet50": 9.0}
    ex = explain.explain(paper, "infadapter", 63.15, current, res.plan)
    cap = next(b for b in ex.binding if b["kind"] == "capacity")
    assert cap["variant"] == "resnet50" and cap["capacity_one_step_less_rps"] == pytest.approx(63.022, abs=1e-3)
    ru = ex.runner_up
    assert ru is not None and ru["gap"] >= 0
    assert set(Plan.from_dict(ru["alternatives"]["different_variants"]["plan"]).names) != {"resnet50"}
    t = ex.terms
    assert t["cost"] == pytest.approx(0.05 * 9 / 20) and t["transition"] == pytest.approx(0.001 * 1.0, rel=0.5)


@pytest.mark.parametrize("load", [5.0, 63.15, 190.0, 300.0])
def test_other_variant_set_is_the_exhaustive_best(paper, load):
    """The runner-up's no-good cut against enumeration of every plan with another variant set."""
    current = {"resnet152": 20.0}
    best = solver.solve(paper, load, current)
    names = frozenset(best.plan.cores_by_name())
    milp = solver.solve(paper, load, current, exclude_set=names)
    ref = solver.solve(paper, load, current, solver.Options(solver="exhaustive"), exclude_set=names)
    assert set(milp.plan.cores_by_name()) != names
    assert milp.plan.objective == pytest.approx(ref.plan.objective, abs=1e-6)
    assert milp.plan.objective <= best.plan.objective + 1e-9
    # The same search on the model the solve kept (one row added, then removed): the same plan, twice.
    for _ in range(2):
        again = best.other_set(names)
        assert again is not None and again.cores_by_name() == milp.plan.cores_by_name()
        assert again.objective == pytest.approx(milp.plan.objective, abs=1e-9)


def test_other_set_is_none_when_no_other_set_serves_the_load(paper):
    # 380 req/s: only resnet18 on the whole budget serves it (0.8 * (24.45 x 20 - 6.17) = 386.2).
    best = solver.solve(paper, 380.0, {})
    assert best.plan.cores_by_name() == {"resnet18": 20.0}
    assert best.other_set(frozenset({"resnet18"})) is None
    assert not solver.solve(paper, 380.0, {}, exclude_set=frozenset({"resnet18"})).plan.feasible


def test_a_decision_that_keeps_its_plan_skips_the_other_set_search(paper):
    current = Plan.from_dict({"load": 62, "variants": [{"name": "resnet50", "cores": 9, "share": 1}]})
    res = solver.solve(paper, 63.15, current.cores_by_name())
    assert res.plan.cores_by_name() == current.cores_by_name()  # kept: no solve for another set
    kept = explain.explain(paper, "infadapter", 63.15, current, res.plan)
    assert set(kept.runner_up["alternatives"]) == {"different_cores"} and kept.runner_up["note"] == explain.NOT_SEARCHED
    full = explain.explain(paper, "infadapter", 63.15, current, res.plan, other_sets=True)
    assert "different_variants" in full.runner_up["alternatives"] and "note" not in full.runner_up
    # explain (the command) completes such a record on reading it: the same runner-up as a full search.
    read = explain.with_other_sets(paper, "infadapter", 63.15, current, res.plan, kept.runner_up)
    assert read.pop("searched_on_read") and read == full.runner_up
    # When no plan one step away serves the load, a kept plan records no runner-up and explain searches the other
    # sets on reading (decision #25 of the paper window's dry run: stabilization held resnet18x12 + resnet50x7 at
    # 234.6 req/s; from the solver's resnet18x12 + resnet50x8 on the full budget, -1 core on either no longer
    # carries 234.6 req/s).
    held = Plan.from_dict({"load": 234.581, "variants": [{"name": "resnet18", "cores": 12, "share": 0.8059},
                                                         {"name": "resnet50", "cores": 7, "share": 0.1941}]})
    optimum = solver.solve(paper, 234.581, held.cores_by_name()).plan
    assert optimum.cores_by_name() != held.cores_by_name()
    ex = explain.explain(paper, "infadapter", 234.581, held, held, optimum, "stabilization")
    assert ex.runner_up is None and ex.binding[0]["kind"] == "stabilization"
    read = explain.with_other_sets(paper, "infadapter", 234.581, held, optimum, ex.runner_up)
    assert read is not None and set(read["alternatives"]) == {"different_variants"} and read["gap"] >= 0
    # A decision that changes the plan searches, on the policy's own model when the decision carries it.
    from infadapter.core.policies import Context, make_policy

    d = make_policy("infadapter", paper, 1).decide(Context(profile=paper, now_s=0.0, forecast_rps=120.0))
    assert d.other_set is not None
    mine = explain.explain(paper, "infadapter", 120.0, None, d.plan, other_set=d.other_set)
    fresh = explain.explain(paper, "infadapter", 120.0, None, d.plan)
    assert mine.runner_up == fresh.runner_up and "different_variants" in mine.runner_up["alternatives"]


def test_policies_that_do_not_solve_say_so(paper):
    plan = Plan.from_dict({"load": 10, "variants": [{"name": "resnet50", "cores": 4, "share": 1}]})
    ex = explain.explain(paper, "vpa:resnet50", 10.0, plan, plan)
    assert ex.binding == () and ex.runner_up is None and "does not solve" in ex.note


# -- a log that survives a crash ------------------------------------------------------------------
@pytest.mark.slow
def test_torn_line_then_restart(tmp_path, step_trace, dry_run):
    out = tmp_path / "run"
    out.mkdir()
    good = (dry_run / "decisions.jsonl").read_text()
    first = good.splitlines()[0]
    # A kill mid-write leaves the start of a record and no newline.
    (out / "decisions.jsonl").write_text(good + first[:37])
    log = DecisionLog(out / "decisions.jsonl")
    assert log.last_seq == max(json.loads(x)["seq"] for x in good.splitlines())
    r = run_cli("adapt", "--backend", "dry-run", "--out", str(out), "--trace", str(step_trace), *STEP_LOOP, "--json")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in _lines(out / "decisions.jsonl") if ln]
    torn_at = len(good.splitlines()) + 1
    assert lines[torn_at - 1] == first[:37]  # the torn line stays alone, nothing glued onto it
    found = read_log(out / "decisions.jsonl")
    assert [n for n, _ in found.damaged] == [torn_at]
    assert len(found.records) == len(lines) - 1 and not found.torn_tail
    seqs = [rec["seq"] for rec in found.records]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # one order across the restart
    runs = [rec["run_id"] for rec in found.records]
    assert len(set(runs)) == 2 and runs[0] != runs[-1]
    ex = run_cli("explain", "--run-dir", str(out))
    assert ex.returncode == 0
    assert f"1 damaged line skipped (line {torn_at};" in ex.stderr
    assert sum(ln.startswith("run ") for ln in ex.stdout.splitlines()) == 2
    st = json.loads(run_cli("status", "--run-dir", str(out), "--json").stdout)
    assert st["decisions_damaged"] == [torn_at] and "1 damaged line" in st["decisions_warning"]


@pytest.mark.slow
def test_sigkill_mid_run_then_restart(tmp_path, step_trace):
    out = tmp_path / "killed"
    args = [sys.executable, str(ROOT / "cli.py"), "adapt", "--backend", "dry-run", "--out", str(out), "--trace",
            str(step_trace), *STEP_LOOP]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        deadline = time.monotonic() + 60
        path = out / "decisions.jsonl"
        while time.monotonic() < deadline and (not path.exists() or len(path.read_text().splitlines()) < 3):
            time.sleep(0.1)
        assert proc.poll() is None, "adapt ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    before = read_log(path).records
    assert len(before) >= 3
    r = run_cli("adapt", "--backend", "dry-run", "--out", str(out), "--trace", str(step_trace), *STEP_LOOP, "--json")
    assert r.returncode == 0, r.stderr  # the dead adapter's state does not block the restart
    found = read_log(path)
    assert found.damaged == [] or [n for n, _ in found.damaged] == [len(before) + 1]
    seqs = [rec["seq"] for rec in found.records]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no seq starts again at 1
    assert len({rec["run_id"] for rec in found.records}) == 2


def test_corrupt_state_is_reported_as_corrupt(tmp_path):
    (tmp_path / "state.json").write_text('{"adapter": {"pid": 1')
    r = run_cli("status", "--run-dir", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["running"] is False and "is corrupt (line 1 column" in doc["message"]
    assert "no adapter state" not in doc["message"]
    text = run_cli("status", "--run-dir", str(tmp_path))
    assert "corrupt" in text.stdout and "move it away" in text.stdout


# -- a local run (real model servers) ------------------------------------------------------------
@pytest.mark.slow
def test_replay_and_cores_of_a_local_run(tmp_path_factory):
    base = tiny_setup(tmp_path_factory.mktemp("local"), "tiny.yaml")
    run_dir = base / "run"
    r = run_cli("adapt", "--profile", str(base / "tiny.yaml"), "--models", str(base / "models"), "--resolution",
                "32", "--rate", "8", "--duration", "12", "--interval", "2", "--forecaster", "last",
                "--run-dir", str(run_dir), "--json", timeout=180)
    assert r.returncode == 0, r.stderr
    n = len(read_log(run_dir / "decisions.jsonl").records)
    assert n >= 3
    rep = run_cli("explain", "--run-dir", str(run_dir), "--replay", "--json")
    assert rep.returncode == 0, rep.stdout
    doc = json.loads(rep.stdout)
    assert doc["ok"] and doc["reproduced"] == doc["decisions"] == n
    # explain --cores on the same run: the ladder adds up to its requests.csv and to the plans it applied.
    import csv

    out = run_cli("explain", "--run-dir", str(run_dir), "--cores", "--json")
    assert out.returncode == 0, out.stderr
    cores = json.loads(out.stdout)
    rows = list(csv.DictReader((run_dir / "requests.csv").open()))
    assert cores["requests"] == len(rows) > 50
    records = read_log(run_dir / "decisions.jsonl").records
    assert cores["decisions"] == len(records) and cores["spans_solved"] >= len(records) - 1
    times = [r["time_s"] for r in records] + [max(float(x["sent_unix"]) for x in rows)]
    spans = [(b - a, rec["plan_after"]["cores"]) for a, b, rec in zip(times, times[1:], records, strict=False)
             if b - a >= 1.0]
    assert cores["layers"][0]["mean_cores"] == pytest.approx(sum(s * c for s, c in spans) / sum(s for s, _ in spans),
                                                             rel=1e-3)
    assert all(row["seconds"] > 0 for row in cores["layers"])
    text = run_cli("explain", "--run-dir", str(run_dir), "--cores")
    assert text.returncode == 0 and "Where the cores went" in text.stdout and "no safety factor" in text.stdout


# -- capacity planning: the smallest budget that meets a violation target ----------------------------
@pytest.mark.slow
def test_min_budget_is_the_smallest_that_meets_the_target():
    r = run_cli("simulate", "--window", "paper", "--min-budget", "--max-violations", "0.01", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    budget, step = doc["budget"], 1.0  # profiles/paper.yaml: core_step 1
    assert budget is not None and doc["slo_violation_rate"] <= 0.01
    assert doc["below"]["budget"] == budget - step and doc["below"]["slo_violation_rate"] > 0.01
    # From the fluid estimate (11 cores on this window: infadapter.sim.fluid) the search needs 2 runs (11 fails,
    # 12 passes); bisection over 2..20 cores took 6. A failing run stops once over the target.
    assert 2 <= doc["simulations"] <= 4 and doc["fluid_budget"] <= budget
    assert doc["tried"] == sorted(doc["tried"], key=lambda t: t["budget"])
    # The same figures from plain simulate runs at B and B - core_step.
    at = {b: json.loads(run_cli("simulate", "--window", "paper", "--budget", f"{b:g}", "--json").stdout)
          for b in (budget, budget - step)}
    assert at[budget]["slo_violation_rate"] <= 0.01 < at[budget - step]["slo_violation_rate"]
    assert at[budget]["slo_violation_rate"] == pytest.approx(doc["slo_violation_rate"], abs=1e-6)


def test_min_budget_needs_one_policy():
    r = run_cli("simulate", "--window", "0:60", "--policy", "infadapter,msplus", "--min-budget")
    assert r.returncode == 2 and "--min-budget: give one --policy" in r.stderr


# -- what-if ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_plan_what_if_beside_today():
    r = run_cli("plan", "--load", "120", "--what-if", "budget=16", "--what-if", "traffic=1.5,alpha=0.1", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    plain = json.loads(run_cli("plan", "--load", "120", "--json").stdout)
    assert doc["today"] == plain
    budget, traffic = doc["what_if"]
    assert budget["scenario"] == "budget=16" and budget["plan"]["cores"] <= 16 and budget["load"] == 120
    # The same cores cost more on a smaller budget: alpha * cores / budget (paper: alpha 0.05).
    if budget["plan"]["variants"] == plain["variants"]:
        assert plain["objective"] - budget["plan"]["objective"] == pytest.approx(
            0.05 * plain["cores"] * (1 / 16 - 1 / 20), abs=1e-6)
    assert traffic["scenario"] == "traffic=1.5,alpha=0.1" and traffic["load"] == pytest.approx(180)
    assert sum(v["capacity"] * (v["share"] > 0) for v in traffic["plan"]["variants"]) >= 180
    table = run_cli("plan", "--load", "120", "--what-if", "budget=16")
    assert "today" in table.stdout and "budget=16" in table.stdout
    slo = json.loads(run_cli("plan", "--load", "120", "--what-if", "budget=16,slo=500", "--json").stdout)
    assert slo["what_if"][0]["slo_ms"] == 500 and slo["what_if"][0]["plan"]["cores"] <= 16
    for bad, words in (("slo=600", "slo=600: "), ("budget=x", "budget must be a number"),
                       ("cores=3", "unknown key 'cores'"), ("traffic=0", "traffic must be a finite number > 0")):
        e = run_cli("plan", "--load", "120", "--what-if", bad)
        assert e.returncode == 2 and e.stderr.count("\n") == 1 and f"--what-if: {words}" in e.stderr, e.stderr


@pytest.mark.slow
def test_simulate_what_if_runs_today_and_the_scenarios_on_the_same_trace(tmp_path):
    window = ["--window", "paper"]
    png = tmp_path / "what-if.png"
    r = run_cli("simulate", *window, "--what-if", "traffic=1.5", "--what-if", "budget=8", "--plot", str(png), "--json",
                timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["plot"] == str(png) and png.stat().st_size > 10_000  # one plot of the three
    rows = {s["scenario"]: s for s in doc["scenarios"]}
    assert list(rows) == ["today", "traffic=1.5", "budget=8"]
    plain = json.loads(run_cli("simulate", *window, "--json").stdout)
    assert rows["today"]["requests"] == plain["requests"]
    assert rows["today"]["slo_violation_rate"] == plain["slo_violation_rate"]
    assert rows["traffic=1.5"]["requests"] > 1.4 * plain["requests"]
    # Plans hold at most the budget (allocated cores may overlap it while a new variant loads, make-before-break).
    assert rows["budget=8"]["mean_planned_cores"] <= 8 + 1e-9 and rows["budget=8"]["requests"] == plain["requests"]


def test_a_decision_log_that_cannot_be_read_is_reported_not_raised(tmp_path):
    # A folder where the decisions file should be (as tests/test_faults.py's unwritable run folder makes):
    # status must say the log cannot be read, not crash with IsADirectoryError.
    from infadapter.adapter.records import read_log
    from infadapter.adapter.status import decision_log_health

    (tmp_path / "decisions.jsonl").mkdir()
    found = read_log(tmp_path / "decisions.jsonl")
    assert found.records == [] and found.unreadable
    health = decision_log_health(tmp_path)
    assert "cannot read the decision log" in health["decisions_warning"]


def test_a_kept_runner_up_is_completed_on_reading_against_the_solvers_plan(paper):
    # The paper window's decision #42: resnet50 on 11 cores kept, resnet18 idle on 2 (kept warm by the wrapper).
    # Read back, the other-set search runs against resnet50x11 alone, so no alternative beats it (gap >= 0).
    import hashlib

    from infadapter.adapter.explain import complete_runner_ups

    load = 83.191161591
    served = {"load": load, "variants": [{"name": "resnet50", "cores": 11, "share": 1.0},
                                         {"name": "resnet18", "cores": 2, "share": 0.0}]}
    plan = Plan.from_dict(served)
    solvers = solver.solve(paper, load, plan.cores_by_name()).plan
    assert solvers.cores_by_name() == {"resnet50": 11.0}
    ex = explain.explain(paper, "infadapter", load, plan, plan, solvers, "")
    assert ex.runner_up["note"] == explain.NOT_SEARCHED
    path = ROOT / "profiles" / "paper.yaml"
    rec = {"seq": 42, "plan_before": served, "plan_after": served, "runner_up": ex.runner_up, "terms": ex.terms,
           "replay": {"profile": str(path), "profile_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                      "alpha": paper.alpha, "budget": paper.budget_cores, "policy": "infadapter", "load_rps": load}}
    ru = complete_runner_ups([rec])[0]["runner_up"]
    assert ru["searched_on_read"] and "different_variants" in ru["alternatives"]
    assert all(a["gap"] >= 0 for a in ru["alternatives"].values()), ru["alternatives"]
    full = explain.explain(paper, "infadapter", load, plan, plan, solvers, "", other_sets=True).runner_up
    assert ru["alternatives"]["different_variants"] == full["alternatives"]["different_variants"]


def test_a_runner_up_completed_on_reading_uses_the_runs_calibrated_capacities(paper):
    # A local run on a machine slower than its profile solved every decision on capacities x capacity_scale;
    # the runner-up searched on reading must be searched on those, not on the profile as written.
    import hashlib

    from infadapter.adapter.explain import complete_runner_ups

    scale, load = 0.7, 60.0
    slow = paper.scaled_capacity(scale)
    # The plan solved against itself as the current one (as a decision that keeps its plan is).
    solvers = solver.solve(slow, load, solver.solve(slow, load).plan.cores_by_name()).plan
    served = solvers.as_dict()
    plan = Plan.from_dict(served)
    ex = explain.explain(slow, "infadapter", load, plan, plan, solvers, "")
    assert ex.runner_up["note"] == explain.NOT_SEARCHED
    path = ROOT / "profiles" / "paper.yaml"
    rec = {"seq": 1, "plan_before": served, "plan_after": served, "runner_up": ex.runner_up, "terms": ex.terms,
           "replay": {"profile": str(path), "profile_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                      "alpha": paper.alpha, "budget": paper.budget_cores, "policy": "infadapter", "load_rps": load,
                      "capacity_scale": scale}}
    ru = complete_runner_ups([rec])[0]["runner_up"]
    want = explain.explain(slow, "infadapter", load, plan, plan, solvers, "", other_sets=True).runner_up
    unscaled = explain.explain(paper, "infadapter", load, plan, plan, solvers, "", other_sets=True).runner_up
    assert ru["alternatives"]["different_variants"] == want["alternatives"]["different_variants"]
    assert want["alternatives"]["different_variants"] != unscaled["alternatives"]["different_variants"]
