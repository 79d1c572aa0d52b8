"""The one adapter runner: a backend added in the test alone (one package, ``tests/toy_backend``, and one
registry entry) runs through the same lifecycle, state file and summary as the shipped ones, and through
``cli.py adapt`` and ``status`` with its own flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import toy_backend
from click.testing import CliRunner
from toy_backend.backend import ToySetup

import cli
from infadapter.adapter.runner import AdapterConfig, AdapterRun
from infadapter.adapter.state import read_state, state_path
from infadapter.backends import BACKENDS, backend_class, backend_setup
from infadapter.core.control import ControlConfig
from infadapter.errors import BadInput

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(BACKENDS, "toy", toy_backend.ENTRY)  # the one registry line


@pytest.mark.slow
def test_a_backend_added_in_the_test_runs_through_the_one_runner(toy_registered, tmp_path):
    cfg = AdapterConfig(backend="toy", profile_path=ROOT / "profiles" / "paper.yaml", run_dir=tmp_path / "run",
                        control=ControlConfig(interval_s=1.0, check_s=0.25),
                        rates_rps=(40.0,) * 2 + (160.0,) * 2, forecaster="ewma")
    summary = AdapterRun(cfg, backend_setup("toy")).run()
    backend = ToySetup.last
    assert backend is not None and backend.stopped
    assert summary["backend"] == "toy" and summary["observation"] == "a toy replay"
    assert summary["applies"] == summary["toy_applied"] >= 1 and summary["failed_applies"] == 0
    assert summary["plan"]["variants"] == backend.plan.as_dict()["variants"]
    # The replayed step from 40 to 160 req/s was seen and planned for.
    assert backend.plan.served_capacity_rps() >= 160
    state = read_state(state_path(cfg.run_dir))
    assert state["adapter"] is None and state["summary"]["backend"] == "toy"  # released on exit
    decisions = [json.loads(line) for line in (cfg.run_dir / "decisions.jsonl").read_text().splitlines()]
    assert decisions[0]["trigger"] == "start" and decisions[0]["policy"] == "infadapter"


def test_the_shipped_backends_resolve_and_an_unknown_one_is_one_line():
    for name in ("local", "kubernetes", "dry-run"):
        assert backend_class(name).name == name
        assert isinstance(backend_setup(name).keep_state, tuple)
    with pytest.raises(BadInput, match=r"--backend: unknown backend 'nope'; expected one of local, kubernetes"):
        backend_setup("nope")


def _invoke(*args: str):
    """``cli.py ARGS`` in this process (the toy's registry line is this process's); known errors raise."""
    return CliRunner().invoke(cli.main, list(args), standalone_mode=False, terminal_width=120)


def test_a_toy_backend_runs_through_adapt_and_status(toy_registered, tmp_path):
    run_dir = tmp_path / "run"
    help_text = _invoke("adapt", "--help").output
    assert "--backend toy options:" in help_text and "--toy-note" in help_text
    res = _invoke("adapt", "--backend", "toy", "--toy-note", "hello", "--rate", "40", "--duration", "3",
                  "--interval", "1", "--check", "0.25", "--forecaster", "ewma", "--run-dir", str(run_dir), "--json")
    assert res.exception is None, res.output
    summary = json.loads(res.stdout)
    # The toy's own flag reached its config (from_flags) and its preparation (the summary says so).
    assert summary["backend"] == "toy" and summary["toy_note"] == "hello"
    assert summary["applies"] == summary["toy_applied"] >= 1 and summary["failed_applies"] == 0
    assert ToySetup.last is not None and ToySetup.last.stopped
    res = _invoke("status", "--backend", "toy", "--run-dir", str(run_dir), "--json")
    assert res.exception is None, res.output
    doc = json.loads(res.stdout)
    assert doc["toy"] is True and doc["running"] is False  # the toy collector answered, from the run folder
    assert doc["plan"]["variants"] == summary["plan"]["variants"]
    res = _invoke("status", "--backend", "toy", "--toy-shout", "--run-dir", str(run_dir))
    assert res.exception is None and res.stdout.startswith("TOY BACKEND: NO ADAPTER RUNS"), res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["adapt", "--backend", "toy", "--kubeconfig", "kc"], "--kubeconfig: only with --backend kubernetes, not "
                                                              "with --backend toy"),
        (["adapt", "--backend", "local", "--toy-note", "x"], "--toy-note: only with --backend toy, not with "
                                                            "--backend local"),
        (["status", "--toy-shout"], "--toy-shout: only with --backend toy, not with --backend local"),
    ],
    ids=["kubernetes-flag-on-toy", "toy-flag-on-local", "toy-status-flag-on-local"],
)
def test_another_backends_flag_is_refused(toy_registered, args, message):
    res = _invoke(*args)
    assert isinstance(res.exception, BadInput) and str(res.exception) == message


@pytest.mark.slow
def test_a_run_that_ends_during_an_apply_reports_the_plan_that_apply_left(toy_registered, tmp_path, monkeypatch):
    """The load ends while an apply waits (a cluster's pods becoming ready): the runner gives the loop the
    backend's apply timeout to finish it, so the summary's plan is the one the backend serves (a 30 s grace
    alone left a Kubernetes run's summary one plan behind its cluster)."""
    from infadapter.adapter import runner

    monkeypatch.setattr(runner, "STOP_GRACE_S", 0.5)
    monkeypatch.setattr(ToySetup, "apply_delay_s", 4.0)
    monkeypatch.setattr(ToySetup, "apply_timeout_s", 6.0)
    monkeypatch.setattr(ToySetup, "drive_s", 3.5)  # the load ends during the step's apply (2 s -> 6 s)
    cfg = AdapterConfig(backend="toy", profile_path=ROOT / "profiles" / "paper.yaml", run_dir=tmp_path / "run",
                        control=ControlConfig(interval_s=1.0, check_s=0.25),
                        rates_rps=(40.0,) * 2 + (160.0,) * 2, forecaster="ewma")
    summary = AdapterRun(cfg, backend_setup("toy")).run()
    backend = ToySetup.last
    assert backend is not None and len(backend.applied) >= 2  # the step's plan was applied, slowly
    assert summary["plan"]["variants"] == backend.plan.as_dict()["variants"]


def test_the_registry_says_which_backends_run_experiments_and_the_clusters_own_autoscalers(toy_registered):
    """``experiment`` asks the registry, not a backend's name: which backends it runs on (the toy's entry has no
    ``experiment`` flags: not among them), the flags it sets on each (a cluster sends the load to the pods), and
    which run the cluster's own HPA and VPA."""
    from infadapter.backends import BACKENDS, experiment_backends

    assert experiment_backends() == ("local", "kubernetes")
    assert BACKENDS["kubernetes"].experiment == {"traffic": "live"} and BACKENDS["local"].experiment == {}
    assert [n for n, e in BACKENDS.items() if e.upstream] == ["kubernetes"]
    res = _invoke("experiment", "--backend", "local", "--policies", "vpa-upstream:resnet50", "--rate", "10",
                  "--duration", "2")
    assert isinstance(res.exception, BadInput) and str(res.exception) == (
        "--policies: vpa-upstream:resnet50 is the cluster's own VPA: only with --backend kubernetes (the "
        "simulator's model of it: vpa-updater:resnet50)")
