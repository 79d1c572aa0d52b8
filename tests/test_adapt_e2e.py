"""``cli.py adapt`` end to end on the local backend: real model servers (32 px ResNets), real
dispatcher, real Prometheus, real load; then restarts (SIGKILL: adoption without duplicates; SIGINT:
no orphans).

The profile is tiny (1 core budget, 0.25-core steps) with conservative capacities, so the plans change
with small loads: 3 req/s fits resnet50 on 0.25 cores (4 req/s); 18 req/s needs at least 1 core.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infadapter.adapter.state import read_state
from infadapter.processes import pid_alive
from tests.tiny_profile import TINY_PROFILE, tiny_setup

ROOT = Path(__file__).resolve().parents[1]
PROFILE = TINY_PROFILE
INTERVAL_S = 3.0
SPEEDUP = 10
# Trace seconds (compressed 10x: 20 s low, 30 s high, 30 s low in real time; the scale-down after the
# step needs a trace minute (6 s) to leave the forecaster's input and 2 held decisions (6 s)).
LOW, HIGH = 3.0, 18.0
PHASES = [(LOW, 200), (HIGH, 300), (LOW, 300)]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("adapt"), "tiny.yaml")


def _cli(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), *args]


def _adapt_args(base: Path, run_dir: Path, *extra: str) -> list[str]:
    return _cli("adapt", "--profile", str(base / "tiny.yaml"), "--models", str(base / "models"), "--resolution",
                "32", "--interval", str(INTERVAL_S), "--stabilization", "2", "--forecaster", "last",
                "--run-dir", str(run_dir), *extra)


def _status(run_dir: Path) -> dict:
    out = subprocess.run(_cli("status", "--json", "--run-dir", str(run_dir)), capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _procs_with(marker: str) -> list[int]:
    """Pids whose command line mentions ``marker`` (our run folder or model folder)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmd and pid_alive(int(d.name)):
            pids.append(int(d.name))
    return pids


def _servers(models: Path) -> list[int]:
    return [p for p in _procs_with(f"--model-dir {models}") if "serve-model" in Path(f"/proc/{p}/cmdline").read_text()]


def test_adapt_follows_a_load_step_up_and_down(setup, tmp_path):
    trace = tmp_path / "steps.txt"
    trace.write_text("\n".join(str(r) for r, n in PHASES for _ in range(n)) + "\n")
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        _adapt_args(setup, run_dir, "--trace", str(trace), "--window", f"0:{sum(n for _, n in PHASES)}",
                    "--speedup", str(SPEEDUP), "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        # (d) status --json reports the running plan while adapt runs.
        seen = None
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None:
            st = _status(run_dir)
            if st.get("running") and st.get("plan") and st.get("variants") and all(v["ready"] for v in st["variants"]):
                seen = st
                break
            time.sleep(1)
        assert seen is not None, "status never showed a running plan"
        plan_names = {v["name"] for v in seen["plan"]["variants"]}
        assert plan_names <= {v["name"] for v in seen["variants"]}
        assert seen["last_decision"]["reason"]
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(30)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out)
    state = read_state(run_dir / "state.json")
    load_start = state["load"]["started_s"]
    t_up = load_start + PHASES[0][1] / SPEEDUP
    t_down = t_up + PHASES[1][1] / SPEEDUP
    recs = [json.loads(line) for line in (run_dir / "decisions.jsonl").read_text().splitlines()]

    def capacity(r: dict) -> float:
        v = (r["serving"] or {}).get("variants", [])
        shares = [x["capacity"] / x["share"] for x in v if x["share"] > 1e-6]
        return min(shares) if shares else 0.0

    # (a) Within two intervals of the step up, a decision adds capacity; within three, one serves the
    # high load. (The monitor sees the rate 1.5-2 s late over a 3 s window, and a decision that starts
    # a server holds the loop for its start-up, so the first decision after the step may see only
    # part of it: measured, 17 of 18 req/s planned at +3.6 s, 24 at +8.7 s.)
    trail = [(round(r["time_s"] - t_up, 1), capacity(r), r["trigger"]) for r in recs]
    before = max(capacity(r) for r in recs if r["time_s"] < t_up and r["apply_ok"])
    up2 = [r for r in recs if t_up <= r["time_s"] <= t_up + 2 * INTERVAL_S + 1.0 and r["apply_ok"]]
    assert any(capacity(r) > before for r in up2), trail
    up3 = [r for r in recs if t_up <= r["time_s"] <= t_up + 3 * INTERVAL_S + 1.0 and r["apply_ok"]]
    assert any(capacity(r) >= HIGH for r in up3), trail
    # (b) After the step down, fewer cores, but only once the stabilization window (2 decisions) passed.
    # The reference is what served when the load fell, not the most the high phase ever held: a noisy
    # "last" reading above HIGH may size a bigger plan that a legitimate scale-down already trimmed
    # before the step down (CI, stop 20: the first decision after the step down was held, as it should
    # be, yet served fewer cores than the high phase's peak, so the old comparison took it for the cut).
    # Idle warm variants (share 0) come and go by their own count, so only serving cores are compared. A held
    # decision keeps the current cores re-shared for the forecast, which may leave a variant idle and so warm on
    # fewer cores (CI, 2026-12-04: "resnet50x1@100% ...; scale-down held (1/2)" left ResNet-18 idle): that is the
    # warm rule, not the cut, so held decisions are not taken for it.
    def active_cores(r: dict) -> float:
        return sum(x["cores"] for x in (r["serving"] or {}).get("variants", []) if x["share"] > 1e-6)

    at_down = [r for r in recs if r["time_s"] <= t_down and r["apply_ok"]][-1]
    trail_down = [(round(r["time_s"] - t_down, 1), r["forecast_rps"], active_cores(r), r["reason"])
                  for r in recs if r["time_s"] > t_down - INTERVAL_S]
    down = [r for r in recs if r["time_s"] > t_down and r["forecast_rps"] < HIGH
            and active_cores(r) < active_cores(at_down) - 1e-9 and "scale-down held" not in r["reason"]]
    assert down, ("no scale-down after the step down", trail_down)
    assert "scale-down after 2 intervals" in down[0]["reason"], trail_down
    # The decision before it wanted the same and was held (it may fall just before the step down, when
    # the rate the monitor reads already dropped).
    held = recs[recs.index(down[0]) - 1]
    assert "scale-down held (1/2)" in held["reason"], ("the scale-down was not held", trail_down)
    # (c) Nothing lost: every request sent has exactly one outcome, errors only where the plan was short.
    assert summary["requests"] == summary["ok"] + summary["errors"] + summary["timeouts"] > 0
    with (run_dir / "requests.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == summary["requests"]
    bad = [float(r["sent_unix"]) for r in rows if r["outcome"] != "ok"]
    for t in bad:
        before = [r for r in recs if r["time_s"] <= t]
        offered = HIGH if t_up <= t < t_down + 2 else LOW
        # A failure is acceptable only while the serving plan was short of the offered load.
        assert before and capacity(before[-1]) < offered * 1.5, (t, capacity(before[-1]) if before else None)
    assert summary["mean_cores"] > 0 and summary["transitions"] >= 2
    # Everything stopped: no server, dispatcher or Prometheus of this run remains.
    assert _procs_with(str(run_dir)) == []
    assert _servers(setup / "models") == []


def test_restart_adopts_servers_and_sigint_leaves_no_orphans(setup, tmp_path):
    # A name of its own: cgroups are named after the run folder, and another run may be live on the machine.
    run_dir = tmp_path / f"run-{os.getpid()}"
    first = subprocess.Popen(_adapt_args(setup, run_dir, "--duration", "120", "--prometheus", "off"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        st: dict = {}
        while time.time() < deadline:
            st = _status(run_dir)
            if st.get("running") and st.get("variants") and all(v["ready"] for v in st["variants"]):
                break
            time.sleep(0.5)
        assert st.get("variants"), st
        servers_before = sorted(v["pid"] for v in st["variants"])
        dispatcher_before = read_state(run_dir / "state.json")["dispatcher"]["pid"]
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        # A SIGKILLed adapter cannot clean up: its servers live on, recorded in the state file.
        assert all(pid_alive(p) for p in servers_before)
        assert not _status(run_dir)["running"]

        second = subprocess.Popen(_adapt_args(setup, run_dir, "--duration", "60", "--prometheus", "off", "--json"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True)
        try:
            deadline = time.time() + 30
            while time.time() < deadline:
                st = _status(run_dir)
                if st.get("running") and st["adapter"]["pid"] == second.pid and st.get("plan"):
                    break
                time.sleep(0.5)
            assert st["adapter"]["pid"] == second.pid
            # Adopted: the same server and dispatcher processes, no duplicates started.
            assert sorted(v["pid"] for v in st["variants"]) == servers_before
            assert sorted(_servers(setup / "models")) == servers_before
            assert read_state(run_dir / "state.json")["dispatcher"]["pid"] == dispatcher_before
            second.send_signal(signal.SIGINT)
            out, err = second.communicate(timeout=60)
        finally:
            if second.poll() is None:
                second.kill()
                second.wait(10)
        assert second.returncode in (0, 130), err[-2000:]
        assert json.loads(out)["interrupted"] is True, out[-2000:]  # stopped by Ctrl-C, not by its --duration
        # Ctrl-C stopped every process it ran or adopted.
        time.sleep(0.5)
        assert not any(pid_alive(p) for p in servers_before)
        assert not pid_alive(dispatcher_before)
        assert _procs_with(str(run_dir)) == []
        assert not _status(run_dir)["running"]
        groups = Path("/sys/fs/cgroup/cpu/infadapter")
        if groups.exists():
            assert not [g for g in groups.iterdir() if g.name.startswith(f"infadapter-{run_dir.name}-")]
    finally:
        if first.poll() is None:
            first.kill()
        for p in _procs_with(str(run_dir)) + _servers(setup / "models"):
            os.killpg(p, signal.SIGKILL) if p == os.getpgid(p) else os.kill(p, signal.SIGKILL)


def test_status_says_clearly_when_nothing_runs(tmp_path):
    out = subprocess.run(_cli("status", "--run-dir", str(tmp_path / "none")), capture_output=True, text=True)
    assert out.returncode == 0
    assert "no adapter state" in out.stdout
    doc = _status(tmp_path / "none")
    assert doc["running"] is False


def test_local_backend_honours_the_registrys_in_place_and_cpu_limited_flags(setup, tmp_path):
    """The registry's flags held live as the simulator models them. HPA (``in_place=False``): a change of
    cores starts a new server make-before-break, never a resize in place; its server is held to its cores.
    vpa-requests (``cpu_limited=False``, requests only): its server is held to the budget, not to the cores
    it pays for (quota and threads of the budget). Real servers, real cgroups when writable."""
    from infadapter.adapter.state import StateStore, state_path
    from infadapter.backends.local.backend import LocalBackend, LocalConfig
    from infadapter.core.policies import REGISTRY, single_variant_plan
    from infadapter.core.profile import load_profile

    profile = load_profile(setup / "tiny.yaml")

    def backend_for(policy: str) -> LocalBackend:
        e = REGISTRY[policy]
        run_dir = tmp_path / policy
        run_dir.mkdir()
        return LocalBackend(profile, LocalConfig(model_dir=setup / "models", run_dir=run_dir, slo_ms=profile.slo_ms,
                                                 in_place=e.in_place, cpu_limited=e.cpu_limited),
                            StateStore(state_path(run_dir)))

    hpa = backend_for("hpa")
    try:
        first = hpa.apply(single_variant_plan(profile, "resnet18", 0.25, 1.0, {}))
        assert first.ok, first.error
        sp = hpa.servers["resnet18"]
        if sp.group is not None:
            assert hpa.in_place_resize is False  # cgroups here, yet no resize in place for HPA
            assert sp.group.cores == pytest.approx(0.25)  # held to its cores
        second = hpa.apply(single_variant_plan(profile, "resnet18", 0.5, 1.0, {}))
        assert second.ok, second.error
        assert any(a.startswith("replace resnet18 0.25 -> 0.5") for a in second.actions), second.actions
        assert not any("in place" in a for a in second.actions)
        assert hpa.servers["resnet18"].pid != sp.pid
    finally:
        hpa.stop()

    requests_only = backend_for("vpa-requests")
    try:
        assert requests_only.apply(single_variant_plan(profile, "resnet18", 0.25, 1.0, {})).ok
        sp = requests_only.servers["resnet18"]
        assert sp.cores == 0.25 and sp.threads == 1  # pays for 0.25; threads of the 1-core budget
        if sp.group is not None:
            assert sp.group.cores == pytest.approx(profile.budget_cores)  # held to the budget, not 0.25
            grown = requests_only.apply(single_variant_plan(profile, "resnet18", 0.5, 1.0, {}))
            assert any("in place" in a for a in grown.actions), grown.actions  # in_place: a resize
            assert sp.group.cores == pytest.approx(profile.budget_cores)
    finally:
        requests_only.stop()
    assert not _servers(setup / "models")


def test_an_apply_asked_to_stop_waiting_removes_its_new_server_and_the_old_plan_serves_as_it_was(setup, tmp_path):
    """``abandon_when`` (the loop's check while servers load) gives a reason: the apply stops waiting, kills the
    server it started, lowers the in-place growth it made back, leaves the routes as they were, and says why;
    the same plan applies in full once nothing objects. Real servers, real cgroups."""
    from infadapter.adapter.state import StateStore, state_path
    from infadapter.backends.local.backend import LocalBackend, LocalConfig
    from infadapter.core.plan import plan_from_cores
    from infadapter.core.policies import single_variant_plan
    from infadapter.core.profile import load_profile

    profile = load_profile(setup / "tiny.yaml")
    backend = LocalBackend(profile, LocalConfig(model_dir=setup / "models", run_dir=tmp_path, slo_ms=profile.slo_ms),
                           StateStore(state_path(tmp_path)))
    try:
        first = single_variant_plan(profile, "resnet18", 0.25, 1.0, {})
        assert backend.apply(first).ok
        old = backend.servers["resnet18"]
        routes = list(backend._last_routes)
        cores = {"resnet18": 0.5, "resnet50": 0.25}
        both = plan_from_cores(cores, 2.0, {n: profile.capacity_rps(n, c) for n, c in cores.items()},
                               {n: profile.variant(n).accuracy for n in cores})
        asked: list[str] = []
        backend.abandon_when = lambda plan: asked.append(",".join(plan.names)) or "80 req/s arrived"
        res = backend.apply(both)
        assert res.abandoned == "80 req/s arrived" and not res.ok and res.serving == first, res
        assert asked == ["resnet18,resnet50"]
        assert any(a.startswith("abandoned: 80 req/s arrived; stopped resnet50") for a in res.actions), res.actions
        assert set(backend.servers) == {"resnet18"} and backend.servers["resnet18"].pid == old.pid
        assert old.cores == 0.25 and (old.group is None or old.group.cores == pytest.approx(0.25))
        assert backend._last_routes == routes
        assert len(_servers(setup / "models")) == 1  # the new server is gone
        assert [sv["pid"] for sv in read_state(state_path(tmp_path))["servers"]] == [old.pid]  # none recorded
        backend.abandon_when = lambda plan: ""
        done = backend.apply(both)
        assert done.ok and set(backend.servers) == {"resnet18", "resnet50"}, done
    finally:
        backend.stop()
    assert not _servers(setup / "models")


def test_a_server_with_no_share_loads_without_the_startup_boost(setup, tmp_path):
    """A new server loads under a quota of one core per thread (the startup boost) when it will carry traffic,
    from the CPUs the other servers leave idle; a standby (no share) loads under its own quota, so it takes no
    CPU from the servers carrying a burst."""
    from infadapter.adapter.state import StateStore, state_path
    from infadapter.backends.local.backend import LocalBackend, LocalConfig
    from infadapter.core.profile import load_profile

    profile = load_profile(setup / "tiny.yaml")
    backend = LocalBackend(profile, LocalConfig(model_dir=setup / "models", run_dir=tmp_path, slo_ms=profile.slo_ms),
                           StateStore(state_path(tmp_path)))
    try:
        boosted = backend._start_server("resnet18", 0.25)
        standby = backend._start_server("resnet50", 0.25, boost=False)
        assert boosted.group is not None, "no writable cgroup (tests/test_cgroups.py requires one)"
        assert boosted.group.cores == pytest.approx(1.0)  # one thread: a whole core while it loads
        assert standby.group is not None and standby.group.cores == pytest.approx(0.25)
        # A boost comes from CPUs the other servers' quotas leave idle (1.25 cores are taken now).
        third = backend._start_server("resnet18", 0.25)
        cpus = len(os.sched_getaffinity(0))
        assert third.group is not None and third.group.cores == pytest.approx(max(0.25, min(1.0, cpus - 1.25)))
    finally:
        backend.stop()
        for sp in list(backend.starting.values()):
            backend._terminate(sp, drain=False)
    assert not _servers(setup / "models")
