"""Live runs: bring up the local stack, adapt, drive a load, summarize; and policy comparisons.

:class:`LiveRun` is what ``cli.py adapt`` does: model files (built when missing), the dispatcher and
the model servers (:class:`~infadapter.backends.local.LocalBackend`), Prometheus (started from the
rendered scrape config when the binary exists, or given by URL), the adapter's metrics endpoint, the
control loop in a worker thread and, with a load, the load generator in the main thread (so Ctrl-C
stops it cleanly). Everything it starts is stopped on every exit path, Ctrl-C and SIGTERM included; a
SIGKILLed adapter leaves its servers recorded in the state file and the next run adopts them.

:func:`run_experiment` is ``cli.py experiment``: one :class:`LiveRun` per policy on the same load, one
after another, plus the simulator on the same rates, written as a table, a JSON file and a plot.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from infadapter import control
from infadapter.control import ControlConfig
from infadapter.errors import BadInput
from infadapter.loop import ControlLoop, LoopConfig, LoopMetrics
from infadapter.monitor import Monitor, PrometheusServer, free_port, prometheus_binary, write_server_targets
from infadapter.plots import decision_timeline, plot_experiment
from infadapter.policies import DEFAULT_MIN_GAIN, DEFAULT_STABILIZATION, make_policy
from infadapter.profile import Profile, load_profile
from infadapter.records import DecisionLog
from infadapter.state import DECISIONS_FILE, StateStore, pid_alive, read_state, state_path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUN_DIR = ROOT / "runs" / "adapt"
DEFAULT_MODELS = ROOT / "models"


@dataclass(frozen=True)
class RunConfig:
    """One live adaptation run (the flags of ``cli.py adapt``)."""

    profile_path: Path
    policy: str = "infadapter"
    run_dir: Path = DEFAULT_RUN_DIR
    model_dir: Path = DEFAULT_MODELS
    duration_s: float | None = None  # None: until the load ends, or until Ctrl-C without a load
    interval_s: float = ControlConfig.interval_s
    check_s: float = ControlConfig.check_s
    stabilization_intervals: int = DEFAULT_STABILIZATION
    min_gain: float = DEFAULT_MIN_GAIN  # see policies.Stabilized.min_gain
    alpha: float | None = None  # overrides the profile's cost weight
    forecaster: str = "auto"
    rates_rps: tuple[float, ...] | None = None  # per-second load to drive through the dispatcher
    prometheus: str | None = None  # URL of an existing server; "off" disables; None: start one if present
    limit_mode: str = "auto"
    resolution: int | None = None  # model input and load JPEG size; None: the profile's, else 224
    initial_forecast_rps: float | None = None  # default: control.initial_forecast
    history_before: tuple[float, ...] = ()  # counts before the replayed window (see ControlConfig)
    rates_before: tuple[float, ...] = ()  # the day before the window, for warm VPA (policies.Context)
    warmup: int = 3
    seed: int = 0
    timeout_s: float = 10.0
    drain_s: float = 3.0  # after the load, keep adapting this long so in-flight requests finish
    server_args: tuple[str, ...] = ()
    requests_csv: bool = True
    history_stretch: int = 1  # the load's --speedup (see LoopConfig.history_stretch)
    router: str = "dispatcher"  # dispatcher | haproxy (infadapter/serving/router.py, docs/routing.md)

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise BadInput(f"--interval: must be > 0 seconds, got {self.interval_s}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise BadInput(f"--duration: must be > 0 seconds, got {self.duration_s}")
        if self.limit_mode not in ("auto", "cgroup", "threads"):
            raise BadInput(f"--cpu-limit: expected auto, cgroup or threads, got {self.limit_mode!r}")


def ensure_models(profile: Profile, model_dir: Path, resolution: int) -> list[str]:
    """Build the profile's model files that are missing (serving engineer's builder); names built."""
    from infadapter.serving import resnet

    built = []
    for v in profile.variants:
        name = v.model or v.name
        path = resnet.model_path(model_dir, name)
        built_at = resnet.built_resolution(model_dir, name)
        if not path.exists() or (built_at is not None and built_at != resolution):
            log.info("building %s at %d px into %s", name, resolution, model_dir)
            resnet.write_model(model_dir, name, resolution=resolution)
            built.append(name)
    return built


def running_adapter(run_dir: Path) -> dict[str, Any] | None:
    """The adapter section of the run's state when its process is alive, else None."""
    st = read_state(state_path(run_dir))
    adapter = (st or {}).get("adapter") or {}
    return adapter if pid_alive(adapter.get("pid")) else None


@dataclass
class LiveRun:
    """One live run; call :meth:`run` once (see the module doc)."""

    config: RunConfig
    on_update: Callable[[dict[str, Any]], None] | None = None
    profile: Profile = field(init=False)
    loop: ControlLoop | None = field(default=None, init=False)
    backend: Any = field(default=None, init=False)
    store: StateStore = field(init=False)
    prometheus: PrometheusServer | None = field(default=None, init=False)
    metrics: LoopMetrics | None = field(default=None, init=False)
    messages: list[str] = field(default_factory=list, init=False)
    _cleaned: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.profile = load_profile(self.config.profile_path).with_overrides(alpha=self.config.alpha)

    @property
    def resolution(self) -> int:
        """The models' input size: the flag, else the one the profile was measured at, else 224."""
        return self.config.resolution or self.profile.resolution or 224

    # -- bring-up ----------------------------------------------------------------------------------
    def start(self) -> None:
        from infadapter.backends.local import LocalBackend, LocalConfig
        from infadapter.forecast import make_forecaster
        from infadapter.policies import make_policy

        cfg = self.config
        try:
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInput(f"--run-dir: cannot create {cfg.run_dir} ({exc.strerror or exc}); "
                           "pass a writable folder") from None
        other = running_adapter(cfg.run_dir)
        if other is not None and other.get("pid") != os.getpid():
            raise BadInput(f"--run-dir: an adapter (pid {other['pid']}) already runs on {cfg.run_dir}; "
                           "stop it or pick another --run-dir")
        previous = read_state(state_path(cfg.run_dir)) or {}
        keep = {k: previous[k] for k in ("servers", "dispatcher", "router", "backend_plan", "prometheus")
                if k in previous}
        self.store = StateStore(state_path(cfg.run_dir), keep)
        policy = make_policy(cfg.policy, self.profile, cfg.stabilization_intervals, min_gain=cfg.min_gain)
        forecaster = make_forecaster(cfg.forecaster)
        built = ensure_models(self.profile, cfg.model_dir, self.resolution)
        if built:
            self.messages.append(f"built models: {', '.join(built)} ({self.resolution} px)")
        self.store.update(adapter={"pid": os.getpid(), "started_s": time.time(), "policy": cfg.policy,
                                   "run_dir": str(cfg.run_dir), "interval_s": cfg.interval_s,
                                   "profile": str(cfg.profile_path), "slo_ms": self.profile.slo_ms})
        atexit.register(self.cleanup)

        self.backend = LocalBackend(self.profile, LocalConfig(
            model_dir=cfg.model_dir, run_dir=cfg.run_dir, limit_mode=cfg.limit_mode, warmup=cfg.warmup,
            slo_ms=self.profile.slo_ms, server_args=cfg.server_args, router=cfg.router), self.store)
        self.backend.start_router()
        adopted = self.backend.adopt()
        if adopted:
            self.messages.append(f"adopted running servers: {', '.join(adopted)}")
        self.messages.append(f"cpu limit: {self.backend.limit_mode}")

        self.metrics = LoopMetrics()
        metrics_port = free_port()
        self.metrics.serve(metrics_port)
        prom_url = self._start_prometheus(metrics_port)
        if self.prometheus is not None:
            targets = self.prometheus.servers_file
            self.backend.on_targets = lambda t: write_server_targets(targets, t)
            self.backend.on_targets({sp.name: [f"127.0.0.1:{sp.port}"] for sp in self.backend.servers.values()})
        started = float((self.store.get("adapter") or {}).get("started_s", time.time()))
        monitor = Monitor(self.backend.client.stats, prom_url, start_s=started if not adopted else started - 600,
                          rate_query=self.backend.router.rate_query, p99_query=self.backend.router.p99_query)
        self.loop = ControlLoop(
            self.profile, policy, forecaster, self.backend, monitor.observe, loop_config(cfg),
            records=DecisionLog(cfg.run_dir / DECISIONS_FILE),
            metrics=self.metrics,
            on_snapshot=self._snapshot,
            policy_name=cfg.policy,
            initial_plan=self.backend.plan,
        )
        self.store.update(metrics={"port": metrics_port, "url": f"http://127.0.0.1:{metrics_port}/metrics"},
                          messages=self.messages)
        for m in self.messages:
            log.info("%s", m)

    def _start_prometheus(self, metrics_port: int) -> str | None:
        cfg = self.config
        if cfg.prometheus and cfg.prometheus != "off":
            self.store.update(prometheus={"url": cfg.prometheus, "owned": False})
            return cfg.prometheus
        if cfg.prometheus == "off":
            self.messages.append("Prometheus off: observing through the dispatcher's counters")
            self.store.update(prometheus=None)
            return None
        if prometheus_binary() is None:
            self.messages.append("no prometheus binary: observing through the dispatcher's counters "
                                 "(apt-get install prometheus)")
            self.store.update(prometheus=None)
            return None
        saved = self.store.get("prometheus") or {}
        if saved.get("owned") and pid_alive(saved.get("pid")):
            # A previous adapter's Prometheus keeps the history; stop it anyway, its config names old ports.
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(saved["pid"]), signal.SIGTERM)
        self.prometheus = PrometheusServer(cfg.run_dir, self.backend.metrics_target,
                                           f"127.0.0.1:{metrics_port}")
        try:
            url = self.prometheus.start()
        except (RuntimeError, OSError) as exc:
            self.messages.append(f"Prometheus did not start ({exc}): observing through the dispatcher")
            self.prometheus = None
            self.store.update(prometheus=None)
            return None
        self.store.update(prometheus={"url": url, "pid": self.prometheus.pid, "owned": True})
        return url

    def _snapshot(self, snap: dict[str, Any]) -> None:
        snap["limit_mode"] = self.backend.limit_mode if self.backend else ""
        self.store.update(loop=snap, updated_s=time.time())
        if self.on_update is not None:
            with contextlib.suppress(Exception):
                self.on_update(snap)

    # -- running -----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Start, adapt (and drive the load), stop everything; the run's summary."""
        cfg = self.config
        load_summary = None
        interrupted = False
        try:
            self.start()
            assert self.loop is not None
            self.loop.tick()  # the first decision brings the servers up before any load arrives
            worker = threading.Thread(target=self._run_loop, name="control-loop", daemon=True)
            worker.start()
            if cfg.rates_rps:
                load_summary = self._drive_load()
                interrupted = bool(load_summary.interrupted)
                if not interrupted:
                    self.loop.stop_event.wait(cfg.drain_s)
            else:
                self._wait(cfg.duration_s)
            self.loop.stop()
            worker.join(timeout=max(cfg.interval_s, 30.0))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self.cleanup()
        return self.summary(load_summary, interrupted)

    def _run_loop(self) -> None:
        assert self.loop is not None
        try:
            self.loop.run(None)
        except Exception:
            log.exception("control loop failed; stopping")
            self.loop.stop_event.set()

    def _wait(self, duration_s: float | None) -> None:
        assert self.loop is not None
        stop = self.loop.stop_event
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM,):
                handlers[sig] = signal.signal(sig, lambda *_: stop.set())
        try:
            deadline = None if duration_s is None else time.monotonic() + duration_s
            while not stop.is_set():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                stop.wait(0.5 if left is None else min(left, 0.5))
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)

    def _drive_load(self) -> Any:
        from infadapter.loadgen import run_load

        cfg = self.config
        rates = np.asarray(cfg.rates_rps, dtype=float)
        if cfg.duration_s is not None:
            rates = rates[: max(math.ceil(cfg.duration_s), 1)]
        out = cfg.run_dir / "requests.csv" if cfg.requests_csv else None
        self.store.update(load={"seconds": int(rates.size), "mean_rps": float(rates.mean()), "started_s": time.time()})
        summary = run_load(f"{self.backend.dispatcher_url}/v1/models/resnet:predict", rates, out_path=out,
                           slo_ms=self.profile.slo_ms, seed=cfg.seed, timeout_s=cfg.timeout_s,
                           resolution=self.resolution)
        self.store.update(load_summary=summary.as_dict())
        return summary

    def cleanup(self) -> None:
        """Stop everything this run started; idempotent (also run at exit)."""
        if self._cleaned:
            return
        self._cleaned = True
        # Ctrl-C during cleanup must not leave servers behind: ignore it until done.
        old = None
        if threading.current_thread() is threading.main_thread():
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if self.loop is not None:
                self.loop.stop()
            if self.backend is not None:
                self.backend.stop()
            if self.prometheus is not None:
                self.prometheus.stop()
            if self.metrics is not None:
                self.metrics.close()
            if hasattr(self, "store"):
                self.store.update(adapter=None, prometheus=None, stopped_s=time.time())
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)

    def summary(self, load: Any, interrupted: bool) -> dict[str, Any]:
        totals = self.loop.totals.as_dict() if self.loop else {}
        out: dict[str, Any] = {
            "policy": self.config.policy,
            "interrupted": interrupted,
            "mean_cores": totals.get("mean_cores"),
            "mean_accuracy": totals.get("mean_accuracy"),
            "transitions": totals.get("transitions"),
            "decisions": totals.get("decisions"),
            "failed_applies": totals.get("failed_applies"),
            "crashes": totals.get("crashes"),
            "seconds": totals.get("seconds"),
            "limit_mode": self.backend.limit_mode if self.backend else "",
            "router": self.config.router,
            "run_dir": str(self.config.run_dir),
        }
        if load is not None:
            out.update({
                "requests": load.sent, "ok": load.ok, "errors": load.errors, "timeouts": load.timeouts,
                "slo_violation_rate": load.slo_violation_rate, "p50_ms": load.p50_ms, "p99_ms": load.p99_ms,
                "by_variant": load.by_variant,
            })
        with contextlib.suppress(Exception):
            self.store.update(summary=out)
        return out


# -- experiments -----------------------------------------------------------------------------------
# The local backend as the simulator models it (docs/adapt.md, "Simulator fidelity"): servers under
# a CFS quota, one request at a time on floor(cores) threads (service_model "cfs"), whose CPU time per
# request varies little (CV 0.2: at whole-core allocations the live latency's CV was 0.17-0.33, the
# larger values at 0.25 core come from the quota, which the model itself reproduces), and a monitor
# that sees the rate 1.5-2 s late (Prometheus scrapes every second; only complete seconds count).
LOCAL_SERVICE_CV = 0.2
LOCAL_OBSERVE_LAG_S = 2


def loop_config(cfg: RunConfig) -> LoopConfig:
    """The control rules of a live run (the simulator's :func:`simulate_same` uses the same ones)."""
    return LoopConfig(
        interval_s=cfg.interval_s, check_s=cfg.check_s, history_stretch=cfg.history_stretch,
        history_before=cfg.history_before, rates_before=cfg.rates_before,
        initial_forecast_rps=control.initial_forecast(cfg.rates_rps, cfg.history_before, cfg.initial_forecast_rps,
                                                      cfg.interval_s))


def simulate_same(profile: Profile, cfg: RunConfig, arrival_times_s: np.ndarray | None = None,
                  service_cv: float = LOCAL_SERVICE_CV, observe_lag_s: int = LOCAL_OBSERVE_LAG_S,
                  service_model: str = "cfs") -> dict[str, Any]:
    """The simulator on the same load, with the live run's control rules (:func:`loop_config`) and clock.

    Simulated in wall time, as the live run happened: the servers' queues, start-up times and the
    loop's checks and decisions run on the same clock as live. The control settings are the live
    run's (one :class:`~infadapter.control.ControlConfig`); what differs is only what models the
    local backend: servers follow ``service_model`` ("cfs": one request at a time under a CPU quota,
    CPU time per request of CV ``service_cv``), the monitor lags ``observe_lag_s`` behind, and VPA
    gets one CPU sample per check. ``arrival_times_s`` (seconds from the load's start, e.g. a live
    run's schedule) replays exactly those requests instead of a fresh Poisson draw.
    """
    from infadapter import sim

    rates = np.asarray(cfg.rates_rps or (), dtype=float)
    ctl = loop_config(cfg)
    settings = {k: getattr(ctl, k) for k in ("interval_s", "check_s", "react", "rate_window_s",
                                             "overload_tolerance", "replan_gap_s", "history_s", "history_stretch",
                                             "initial_forecast_rps")}
    sim_cfg = sim.SimConfig(
        **settings, history_before=ctl.history_before, rates_before=ctl.rates_before,
        stabilization_intervals=cfg.stabilization_intervals,
        min_gain=cfg.min_gain, forecaster=cfg.forecaster, warmup_s=0, first_plan_ready=True,
        vpa_sample_s=cfg.check_s, vpa_sample_window_s=cfg.check_s, seed=cfg.seed, cpu_model="work",
        service_cv=service_cv, observe_lag_s=observe_lag_s, service_model=service_model,
    )
    profile = profile.with_overrides(alpha=cfg.alpha)
    arrivals = None
    if arrival_times_s is not None:
        arrivals = sim.arrivals_from_times(arrival_times_s, int(rates.size), cfg.seed)
    policy = make_policy(cfg.policy, profile, cfg.stabilization_intervals, min_gain=cfg.min_gain)
    res = sim.simulate(profile, rates, policy, sim_cfg, arrivals=arrivals)
    return {"requests": res.requests, "slo_violation_rate": res.slo_violation_rate, "mean_cores": res.mean_cores,
            "mean_planned_cores": res.mean_planned_cores, "mean_accuracy": res.mean_accuracy,
            "transitions": res.transitions, "dropped": res.dropped,
            "arrivals": "live schedule" if arrivals is not None else "poisson"}


def live_arrival_times(requests_csv: Path) -> np.ndarray | None:
    """When each request of a live run was due (``scheduled_s``), from its requests.csv; None if absent."""
    import csv

    if not requests_csv.exists():
        return None
    with requests_csv.open(newline="") as fh:
        times = [float(row["scheduled_s"]) for row in csv.DictReader(fh) if row.get("scheduled_s")]
    return np.asarray(times, dtype=float) if times else None


def run_experiment(base: RunConfig, policies: list[str], out_dir: Path,
                   on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """One live run per policy on the same load, plus the simulator on it; writes JSON, table and plot."""
    import json

    if not base.rates_rps:
        raise BadInput("experiment: a load is required (--window ... or --rate R --duration S)")
    out_dir.mkdir(parents=True, exist_ok=True)
    profile = load_profile(base.profile_path).with_overrides(alpha=base.alpha)
    rates = np.asarray(base.rates_rps, dtype=float)
    results = []
    for pol in policies:
        run_dir = out_dir / _safe(pol)
        cfg = replace(base, policy=pol, run_dir=run_dir)
        live = LiveRun(cfg, on_update=on_update).run()
        sim_res = None
        try:
            sim_res = simulate_same(load_profile(base.profile_path), cfg,
                                    arrival_times_s=live_arrival_times(run_dir / "requests.csv"))
        except Exception as exc:  # the comparison must not lose the live figures
            log.warning("simulator failed for %s: %s", pol, exc)
        results.append({"policy": pol, "live": live, "simulated": sim_res,
                        "timeline": decision_timeline(run_dir)})
        if live.get("interrupted"):
            break
    doc = {"profile": str(base.profile_path), "seconds": int(rates.size), "mean_rps": float(rates.mean()),
           "interval_s": base.interval_s, "results": results}
    (out_dir / "experiment.json").write_text(json.dumps(doc, indent=1, default=str))
    (out_dir / "experiment.md").write_text(comparison_table(doc))
    with contextlib.suppress(Exception):
        plot_experiment(doc, rates, out_dir / "experiment.png", slo_ms=profile.slo_ms)
    return doc


def _safe(policy: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in policy)


def comparison_table(doc: dict[str, Any]) -> str:
    """A Markdown table: live vs simulated per policy, and the simulator's fidelity on each.

    Both cost columns count the cores of the plan in force (the live loop's figure); the simulator's
    cost with make-before-break overlaps is in the JSON (``mean_cores``).
    """
    rows = ["| policy | live SLO viol. | sim SLO viol. | viol. gap (pts) | live mean cores | sim mean cores | "
            "cores gap | live accuracy | sim accuracy | transitions | requests |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        live, sim_r = r["live"], r["simulated"] or {}
        lv, sv = live.get("slo_violation_rate"), sim_r.get("slo_violation_rate")
        lc, sc = live.get("mean_cores"), sim_r.get("mean_planned_cores", sim_r.get("mean_cores"))
        gap_v = "-" if lv is None or sv is None else f"{100 * (float(sv) - float(lv)):+.1f}"
        gap_c = "-" if not lc or sc is None else f"{100 * (float(sc) / float(lc) - 1):+.0f}%"
        rows.append(
            f"| {r['policy']} | {_pct(lv)} | {_pct(sv)} | {gap_v} | {_num(lc)} | {_num(sc)} | {gap_c} | "
            f"{_pct(live.get('mean_accuracy'))} | {_pct(sim_r.get('mean_accuracy'))} | {live.get('transitions')} | "
            f"{live.get('requests')} |"
        )
    return "\n".join(rows) + "\n"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.2f}%"


def _num(v: Any) -> str:
    return "-" if v is None else f"{float(v):.3f}"
