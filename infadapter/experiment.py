"""The local backend's preparation step, and experiments: policies live on the same load vs the simulator.

:class:`LocalSetup` is what ``cli.py adapt`` (the one runner, :class:`~infadapter.runner.AdapterRun`)
prepares on this machine: model files (built when missing), the router and the model servers
(:class:`~infadapter.backends.local.LocalBackend`, adopting the servers a killed adapter left), the
adapter's metrics endpoint, Prometheus (started from the rendered scrape config when the binary
exists, or given by URL) and, with a load, the load generator that the runner drives in the main
thread (so Ctrl-C stops it cleanly).

:func:`run_experiment` is ``cli.py experiment``: one run per policy on the same load, one after
another, plus the simulator on the same rates, written as a table, a JSON file and a plot.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from infadapter import paths
from infadapter.errors import BadInput
from infadapter.loop import LoopConfig, LoopMetrics
from infadapter.monitor import Monitor, PrometheusServer, free_port, prometheus_binary, write_server_targets
from infadapter.plots import decision_timeline, plot_experiment
from infadapter.policies import make_policy
from infadapter.profile import Profile, load_profile
from infadapter.runner import AdapterConfig, AdapterRun, Prepared
from infadapter.state import pid_alive

if TYPE_CHECKING:
    from infadapter.backends.local import LocalBackend

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RunConfig(AdapterConfig):
    """A run on the local backend: the shared flags plus this machine's (models, CPU limits, the load)."""

    backend: str = "local"
    run_dir: Path = paths.DEFAULT_RUN_DIR
    model_dir: Path = paths.MODELS
    prometheus: str | None = None  # URL of an existing server; "off" disables; None: start one if present
    limit_mode: str = "auto"
    resolution: int | None = None  # model input and load JPEG size; None: the profile's, else 224
    warmup: int = 3
    seed: int = 0
    timeout_s: float = 10.0
    drain_s: float = 3.0  # after the load, keep adapting this long so in-flight requests finish
    server_args: tuple[str, ...] = ()
    requests_csv: bool = True
    router: str = "dispatcher"  # dispatcher | haproxy (infadapter/serving/router.py, docs/routing.md)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend != "local":
            raise BadInput(f"--backend: this configuration is for the local backend, got {self.backend!r}")
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


def resolution_of(cfg: RunConfig, profile: Profile) -> int:
    """The models' input size: the flag, else the one the profile was measured at, else 224."""
    return cfg.resolution or profile.resolution or 224


class LocalSetup:
    """The local backend's preparation step (see the module doc and :class:`~infadapter.runner.BackendSetup`)."""

    #: A restarted adapter adopts the servers, router and Prometheus the previous one left.
    keep_state = ("servers", "dispatcher", "router", "backend_plan", "prometheus")

    def prepare(self, run: AdapterRun) -> Prepared:
        from infadapter.backends import backend_class
        from infadapter.backends.local import LocalConfig

        cfg = run.config
        if not isinstance(cfg, RunConfig):
            raise BadInput("--backend local: expected the local backend's flags")
        assert run.store is not None
        profile, store, messages = run.profile, run.store, run.messages
        resolution = resolution_of(cfg, profile)
        built = ensure_models(profile, cfg.model_dir, resolution)
        if built:
            messages.append(f"built models: {', '.join(built)} ({resolution} px)")
        closers: list[Callable[[], None]] = []
        backend: LocalBackend = backend_class("local")(profile, LocalConfig(
            model_dir=cfg.model_dir, run_dir=cfg.run_dir, limit_mode=cfg.limit_mode, warmup=cfg.warmup,
            slo_ms=profile.slo_ms, server_args=cfg.server_args, router=cfg.router), store)
        try:
            backend.start_router()
            adopted = backend.adopt()
            if adopted:
                messages.append(f"adopted running servers: {', '.join(adopted)}")
            messages.append(f"cpu limit: {backend.limit_mode}")
            metrics = LoopMetrics()
            metrics_port = free_port()
            metrics.serve(metrics_port)
            closers.append(metrics.close)
            prom_url, prometheus = self._start_prometheus(cfg, store, messages, backend, metrics_port)
            if prometheus is not None:
                closers.insert(0, prometheus.stop)
                targets = prometheus.servers_file
                backend.watch_targets(lambda t: write_server_targets(targets, t))
        except BaseException:  # the runner never saw these: stop them here
            backend.stop()
            for close in closers:
                with contextlib.suppress(Exception):
                    close()
            raise
        store.update(metrics={"port": metrics_port, "url": f"http://127.0.0.1:{metrics_port}/metrics"})
        # Servers a killed adapter left have served for a while: their counters are real history.
        monitor = Monitor(backend.client.stats, prom_url, start_s=run.started_s - (600 if adopted else 0),
                          rate_query=backend.router.rate_query, p99_query=backend.router.p99_query)
        return Prepared(
            backend=backend, observe=monitor.observe, limit_mode=backend.limit_mode, initial_plan=backend.plan,
            observation=(f"prometheus {prom_url}, else the {cfg.router}'s counters" if prom_url
                         else f"the {cfg.router}'s counters"),
            metrics=metrics, closers=closers, drain_s=cfg.drain_s,
            drive_load=(lambda: self._drive_load(cfg, profile, store, backend)) if cfg.rates_rps else None,
            summary=lambda load: self._summary(cfg, load),
        )

    @staticmethod
    def _start_prometheus(cfg: RunConfig, store: Any, messages: list[str], backend: LocalBackend,
                          metrics_port: int) -> tuple[str | None, PrometheusServer | None]:
        if cfg.prometheus and cfg.prometheus != "off":
            store.update(prometheus={"url": cfg.prometheus, "owned": False})
            return cfg.prometheus, None
        if cfg.prometheus == "off":
            messages.append("Prometheus off: observing through the dispatcher's counters")
            store.update(prometheus=None)
            return None, None
        if prometheus_binary() is None:
            messages.append("no prometheus binary: observing through the dispatcher's counters "
                            "(apt-get install prometheus)")
            store.update(prometheus=None)
            return None, None
        saved = store.get("prometheus") or {}
        if saved.get("owned") and pid_alive(saved.get("pid")):
            # A previous adapter's Prometheus keeps the history; stop it anyway, its config names old ports.
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(saved["pid"]), signal.SIGTERM)
        prometheus = PrometheusServer(cfg.run_dir, backend.metrics_target, f"127.0.0.1:{metrics_port}")
        try:
            url = prometheus.start()
        except (RuntimeError, OSError) as exc:
            messages.append(f"Prometheus did not start ({exc}): observing through the dispatcher")
            store.update(prometheus=None)
            return None, None
        store.update(prometheus={"url": url, "pid": prometheus.pid, "owned": True})
        return url, prometheus

    @staticmethod
    def _drive_load(cfg: RunConfig, profile: Profile, store: Any, backend: LocalBackend) -> Any:
        from infadapter.loadgen import run_load

        rates = np.asarray(cfg.rates_rps, dtype=float)
        if cfg.duration_s is not None:
            rates = rates[: max(math.ceil(cfg.duration_s), 1)]
        out = cfg.run_dir / "requests.csv" if cfg.requests_csv else None
        store.update(load={"seconds": int(rates.size), "mean_rps": float(rates.mean()), "started_s": time.time()})
        summary = run_load(f"{backend.dispatcher_url}/v1/models/resnet:predict", rates, out_path=out,
                           slo_ms=profile.slo_ms, seed=cfg.seed, timeout_s=cfg.timeout_s,
                           resolution=resolution_of(cfg, profile))
        store.update(load_summary=summary.as_dict())
        return summary

    @staticmethod
    def _summary(cfg: RunConfig, load: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"router": cfg.router}
        if load is not None:
            out.update({
                "requests": load.sent, "ok": load.ok, "errors": load.errors, "timeouts": load.timeouts,
                "slo_violation_rate": load.slo_violation_rate, "p50_ms": load.p50_ms, "p99_ms": load.p99_ms,
                "by_variant": load.by_variant,
            })
        return out


# -- experiments -----------------------------------------------------------------------------------
# The local backend as the simulator models it (docs/adapt.md, "Simulator fidelity"): servers under
# a CFS quota, one request at a time on floor(cores) threads (service_model "cfs"), whose CPU time per
# request varies little (CV 0.2: at whole-core allocations the live latency's CV was 0.17-0.33, the
# larger values at 0.25 core come from the quota, which the model itself reproduces), and a monitor
# that sees every complete second at once: the newest seconds come from the router's exact counts
# (monitor.Monitor); with Prometheus's alone it saw them 1.5-2 s late (decisions' observed rates against
# the request logs: least error 0.05 req/s at no lag now, 1.39 req/s at 2 s before).
LOCAL_SERVICE_CV = 0.2
LOCAL_OBSERVE_LAG_S = 0


def loop_config(cfg: AdapterConfig) -> LoopConfig:
    """The control rules of a live run (the simulator's :func:`simulate_same` uses the same ones)."""
    return cfg.loop_config()


def simulate_same(profile: Profile, cfg: RunConfig, arrival_times_s: np.ndarray | None = None,
                  service_cv: float = LOCAL_SERVICE_CV, observe_lag_s: int = LOCAL_OBSERVE_LAG_S,
                  service_model: str = "cfs") -> dict[str, Any]:
    """The simulator on the same load, with the live run's control rules (:func:`loop_config`) and clock.

    Simulated in wall time, as the live run happened: the servers' queues, start-up times and the
    loop's checks and decisions run on the same clock as live. The control settings are the live
    run's (one :class:`~infadapter.control.ControlConfig`); what differs is only what models the
    local backend: servers follow ``service_model`` ("cfs": one request at a time under a CPU quota,
    CPU time per request of CV ``service_cv``), and the monitor lags ``observe_lag_s`` behind (VPA's
    CPU samples follow the loop's rule, :mod:`infadapter.cpusamples`). ``arrival_times_s`` (seconds from
    the load's start, e.g. a live run's schedule) replays exactly those requests instead of a fresh
    Poisson draw.
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
        seed=cfg.seed, cpu_model="work",
        service_cv=service_cv, observe_lag_s=observe_lag_s, service_model=service_model,
    )
    profile = cfg.tuned(profile)
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
    profile = base.tuned(load_profile(base.profile_path))
    for pol in policies:  # a bad name fails now, not after the policies before it ran for minutes
        make_policy(pol, profile, base.stabilization_intervals, min_gain=base.min_gain)
    out_dir.mkdir(parents=True, exist_ok=True)
    rates = np.asarray(base.rates_rps, dtype=float)
    results = []
    for pol in policies:
        run_dir = out_dir / _safe(pol)
        cfg = replace(base, policy=pol, run_dir=run_dir)
        live = AdapterRun(cfg, on_update=on_update).run()
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
