"""``adapt``/``status`` on the non-local backends: dry-run here, and flag errors for both.

The control loop is the real one, run through ``cli.py`` as a user runs it. The load is a replayed
observation of a small step trace (20 -> 150 -> 20 req/s, compressed 40x into 15 s), so the plans must
follow it up and back down. ``adapt --backend kubernetes`` runs against a real API server in
tests/test_k8s_real.py (the same step trace, with a real dispatcher).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from infadapter.backends.kubernetes.setup import GuardedObserver, ReplayedLoad
from infadapter.core.control import ControlConfig, observed_rate
from infadapter.render import RenderConfig, render_platform
from tests.cli_helpers import STEP_LOOP, run_cli, write_step_trace

# Starts real servers, clusters or subprocesses: not in the edit-test loop (pytest -m "not slow").
pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def step_trace(tmp_path_factory) -> Path:
    return write_step_trace(tmp_path_factory.mktemp("trace"))


def _plans(out: Path) -> list[dict]:
    return [json.loads((d / "plan.json").read_text())["plan"] for d in sorted(out.glob("gen-*"))]


def _capacity(plan: dict) -> float:
    return sum(v["capacity"] for v in plan["variants"])


def _cores(plan: dict) -> float:
    return sum(v["cores"] for v in plan["variants"])


# -- observation sources (in process) ------------------------------------------------------------
def test_replayed_load_is_the_trace_as_history():
    replay = ReplayedLoad([1, 2, 3, 4, 5, 6], "step", start_s=100.0)
    assert replay.observe(100.4).history_rps == ()
    obs = replay.observe(104.5)  # seconds 0..3 are complete
    assert obs.history_rps == (1, 2, 3, 4)
    # the observed rate: the mean of the last 3 complete seconds, (2 + 3 + 4) / 3
    assert observed_rate(obs.history_rps, ControlConfig()) == pytest.approx(3.0)
    assert obs.source == "replay" and "not live traffic" in obs.warning
    assert replay.observe(108.0).history_rps == (1, 2, 3, 4, 5, 6, 0, 0)  # after its end the load is 0


def test_guarded_observer_keeps_the_last_good_observation():
    replay = ReplayedLoad([10, 10, 10], "flat", start_s=0.0)
    calls = {"n": 0}

    def flaky(now_s: float):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError("connection refused")
        return replay.observe(now_s)

    guarded = GuardedObserver(flaky)
    good = guarded(3.0)
    stale = guarded(13.0)
    assert stale.history_rps == good.history_rps and observed_rate(stale.history_rps, ControlConfig()) == 10
    assert stale.source == "stale replay" and "10 s ago" in stale.warning and "connection refused" in stale.warning
    first = GuardedObserver(lambda now: (_ for _ in ()).throw(OSError("down")))(1.0)
    assert first.history_rps == () and first.source == "none"


# -- dry-run ---------------------------------------------------------------------------------------
def test_dry_run_plans_follow_the_replayed_load(tmp_path, step_trace):
    out = tmp_path / "dry"
    r = run_cli("adapt", "--backend", "dry-run", "--out", str(out), "--trace", str(step_trace), *STEP_LOOP, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["backend"] == "dry-run" and summary["replay"] is True
    assert summary["observation"].startswith("replay of trace window 0:600") and "not live" in summary["observation"]
    plans = _plans(out)
    assert [d.name for d in sorted(out.glob("gen-*"))] == summary["generations"]
    assert len(plans) >= 3, [p["load"] for p in plans]
    # Up: the first plan is for the low load, a later one serves the step to 150 req/s with more cores.
    assert plans[0]["load"] == pytest.approx(20) and _capacity(plans[0]) < 150
    high = max(range(len(plans)), key=lambda i: plans[i]["load"])
    assert high > 0 and plans[high]["load"] >= 150 and _capacity(plans[high]) >= 150
    assert _cores(plans[high]) > _cores(plans[0])
    # Down: after the step the last plan is for the low load again, with fewer cores than at the peak.
    assert high < len(plans) - 1
    assert plans[-1]["load"] == pytest.approx(20) and _cores(plans[-1]) < _cores(plans[high])
    assert summary["plan"]["variants"] == plans[-1]["variants"]
    # Every generation has manifests and a diff against the one before.
    assert all(list(d.glob("*.deployment.yaml")) and (d / "changes.diff").exists() for d in out.glob("gen-*"))
    # Decisions are recorded as made on a replay, and held scale-downs say so.
    records = [json.loads(line) for line in (out / "decisions.jsonl").read_text().splitlines()]
    assert {rec["monitor_source"] for rec in records} == {"replay"}
    assert any("scale-down held" in rec["reason"] for rec in records)
    # status on the run folder: not running any more, the observation labelled as a replay.
    st = run_cli("status", "--run-dir", str(out), "--json")
    assert st.returncode == 0, st.stderr
    doc = json.loads(st.stdout)
    assert doc["running"] is False and doc["backend"] == "dry-run" and "replay" in doc["observation"]
    assert doc["plan"]["variants"] == plans[-1]["variants"]


# -- kubernetes against the FAKE API server --------------------------------------------------------
# -- bad flags -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "flag", "code"),
    [
        (["adapt", "--backend", "dry-run", "--rate", "5", "--duration", "3"], "--out", 2),
        (["adapt", "--backend", "dry-run", "--out", "{tmp}/d"], "--window", 2),
        (["adapt", "--backend", "kubernetes", "--kubeconfig", "{tmp}/kc"], "--dispatcher-url", 2),
        (["adapt", "--backend", "local", "--kubeconfig", "{tmp}/kc"], "--kubeconfig", 2),
        (["adapt", "--backend", "dry-run", "--out", "{tmp}/d", "--rate", "5", "--duration", "3", "--models", "m"],
         "--models", 2),
        (["adapt", "--backend", "kubernetes", "--dispatcher-url", "http://127.0.0.1:9", "--rate", "1",
          "--duration", "1"], "--admin-token-file", 2),
        (["adapt", "--backend", "kubernetes", "--namespace", "Bad_NS", "--rate", "1", "--duration", "1"],
         "--namespace", 2),
        (["adapt", "--backend", "dry-run", "--out", "{tmp}/d", "--rate", "1", "--duration", "1",
          "--k8s-config", "{tmp}/missing.yaml"], "--k8s-config", 2),
        (["adapt", "--backend", "kubernetes", "--kubeconfig", "{tmp}/missing", "--rate", "1", "--duration", "1"],
         "--kubeconfig", 4),
        (["status", "--namespace", "x"], "--namespace", 2),
        (["adapt", "--backend", "kubernetes", "--kubeconfig", "{tmp}/kc", "--traffic", "live"], "--traffic live", 2),
    ],
    ids=["dry-run-no-out", "dry-run-no-load", "k8s-nothing-to-observe", "local-kubeconfig", "dry-run-models",
         "no-admin-token", "bad-namespace", "missing-k8s-config", "missing-kubeconfig", "status-local-namespace",
         "live-without-load"],
)
def test_bad_flags_are_one_line_errors(tmp_path, args, flag, code):
    env = {k: v for k, v in os.environ.items() if k != "INFADAPTER_ADMIN_TOKEN" and k != "KUBERNETES_SERVICE_HOST"}
    r = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args], env={**env, "INFADAPTER_ADMIN_TOKEN": ""})
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}:"), r.stderr
    assert not (tmp_path / "d").exists() or not list((tmp_path / "d").glob("gen-*"))


# -- the adapter Deployment's command line --------------------------------------------------------
def test_adapter_template_command_line_is_accepted():
    """The rendered in-cluster adapter runs `cli.py adapt` with flags this command accepts."""
    from infadapter.commands.adapt import adapt

    cfg = RenderConfig.model_validate({"namespace": "ml", "adapter": {
        "prometheus_url": "http://prometheus.monitoring.svc:9090", "extra_args": ["--interval=15"]}})
    dep = next(m for m in render_platform(cfg) if m.kind == "Deployment" and m.name == cfg.adapter.name)
    container = dep.obj["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/opt/infadapter/venv/bin/python", "/opt/infadapter/app/cli.py", "adapt"]
    ctx = adapt.make_context("adapt", list(container["args"]))
    p = ctx.params
    assert p["backend"] == "kubernetes" and p["namespace"] == "ml" and p["interval_s"] == 15
    assert p["dispatcher_url"] == "http://infadapter-dispatcher.ml.svc:8500"
    assert p["prometheus"] == "http://prometheus.monitoring.svc:9090"  # --prometheus-url is --prometheus
    # The run folder is the writable emptyDir the template mounts.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(p["run_dir"]) in mounts
    assert any(e["name"] == "INFADAPTER_ADMIN_TOKEN" for e in container["env"])
