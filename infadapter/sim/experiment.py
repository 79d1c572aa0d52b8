"""Experiments: policies live on the same load vs the simulator.

:func:`run_experiment` is ``cli.py experiment``: one run per policy on the same load, one after
another, plus the simulator on the same rates, written as a table, a JSON file and a plot.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from infadapter.adapter.loop import LoopConfig
from infadapter.adapter.runner import AdapterConfig, AdapterRun
from infadapter.backends import backend_setup
from infadapter.backends.local.setup import RunConfig
from infadapter.core.policies import live_entry, make_policy, simulated_spec
from infadapter.core.profile import Profile, load_profile
from infadapter.errors import BadInput
from infadapter.observe.requestlog import REQUESTS_FILE
from infadapter.plots import decision_timeline, plot_experiment, plot_frontier
from infadapter.sim.frontier import Point, Sweep, frontier
from infadapter.sim.ideal import ideal_points, with_ideal

log = logging.getLogger(__name__)


LOCAL_SERVICE_CV = 0.2
LOCAL_OBSERVE_LAG_S = 0


def loop_config(cfg: AdapterConfig) -> LoopConfig:
    """The control rules of a live run (the simulator's :func:`simulate_same` uses the same ones)."""
    return cfg.loop_config()


def simulate_same(profile: Profile, cfg: RunConfig, arrival_times_s: np.ndarray | None = None,
                  service_cv: float = LOCAL_SERVICE_CV, observe_lag_s: int = LOCAL_OBSERVE_LAG_S,
                  service_model: str = "cfs", capacity_scale: float = 1.0) -> dict[str, Any]:
    """The simulator on the same load, with the live run's control rules (:func:`loop_config`) and clock.

    Simulated in wall time, as the live run happened: the servers' queues, start-up times and the
    loop's checks and decisions run on the same clock as live. The control settings are the live
    run's (one :class:`~infadapter.core.control.ControlConfig`); what differs is only what models the
    local backend: servers follow ``service_model`` ("cfs": one request at a time under a CPU quota,
    CPU time per request of CV ``service_cv``), and the monitor lags ``observe_lag_s`` behind (VPA's
    CPU samples follow the loop's rule, :mod:`infadapter.core.cpusamples`). ``arrival_times_s`` (seconds from
    the load's start, e.g. a live run's schedule) replays exactly those requests instead of a fresh
    Poisson draw. ``capacity_scale``: the live run's start-up calibration (the local backend found the
    machine ``1 / capacity_scale`` times slower than the profile): the simulated machine is that one too, its
    servers as slow and the policy planning on the same scaled capacities as live.
    """
    from infadapter.sim import simulation as sim

    rates = np.asarray(cfg.rates_rps or (), dtype=float)
    live = loop_config(cfg)
    sim_cfg = sim.SimConfig(
        control=live.control, rates_before=live.rates_before,
        stabilization_intervals=cfg.stabilization_intervals,
        min_gain=cfg.min_gain, forecaster=cfg.forecaster, warmup_s=0, first_plan_ready=True,
        seed=getattr(cfg, "seed", 0), cpu_model="work",
        service_cv=service_cv, observe_lag_s=observe_lag_s, service_model=service_model,
    )
    profile = cfg.tuned(profile)
    if capacity_scale != 1.0:
        profile = profile.scaled_capacity(capacity_scale)
    arrivals = None
    if arrival_times_s is not None:
        arrivals = sim.arrivals_from_times(arrival_times_s, int(rates.size), getattr(cfg, "seed", 0))
    # An upstream baseline (the cluster's own HPA or VPA) is simulated as our model of it.
    policy = make_policy(simulated_spec(cfg.policy), profile, cfg.stabilization_intervals, min_gain=cfg.min_gain)
    res = sim.simulate(profile, rates, policy, sim_cfg, arrivals=arrivals)
    return {"requests": res.requests, "slo_violation_rate": res.slo_violation_rate, "mean_cores": res.mean_cores,
            "mean_planned_cores": res.mean_planned_cores, "mean_accuracy": res.mean_accuracy,
            "transitions": res.transitions, "dropped": res.dropped,
            "arrivals": "live schedule" if arrivals is not None else "poisson", "capacity_scale": capacity_scale}


def live_arrival_times(requests_csv: Path) -> np.ndarray | None:
    """When each request of a live run was due (``scheduled_s``), from its requests.csv; None if absent."""
    from infadapter.observe import requestlog

    log = requestlog.read(requests_csv)
    return log.scheduled_s if log is not None and len(log) else None


def experiment_runs(base: RunConfig, policies: list[str], sweep: Sweep | None = None
                    ) -> list[tuple[str, float | None, RunConfig]]:
    """(label, swept value or None, settings) of each run: one per policy, infadapter once per ``sweep`` value."""
    runs: list[tuple[str, float | None, RunConfig]] = []
    for pol in policies:
        if sweep is not None and pol == "infadapter":
            runs += [(sweep.label(v), v, replace(base, policy=pol, **{sweep.key: v})) for v in sweep.values]
        else:
            runs.append((pol, None, replace(base, policy=pol)))
    return runs


def run_experiment(base: RunConfig, policies: list[str], out_dir: Path,
                   on_update: Callable[[dict[str, Any]], None] | None = None,
                   sweep: Sweep | None = None) -> dict[str, Any]:
    """One live run per policy on the same load, plus the simulator on it; writes JSON, table and plot.

    ``sweep``: infadapter runs once per value (each labelled ``infadapter KEY=VALUE``), and the document
    gains ``frontier``: the live and the simulated frontier (:func:`infadapter.sim.frontier.frontier`),
    the live one drawn as ``frontier.png``.
    """
    import json

    if not base.rates_rps:
        raise BadInput("experiment: a load is required (--window ... or --rate R --duration S)")
    profile = base.tuned(load_profile(base.profile_path).single_service("experiment"))
    if sweep is not None:
        if "infadapter" not in policies:
            raise BadInput("--sweep: it sweeps infadapter; add infadapter to --policies")
        sweep.profiles(profile)
    for pol in policies:  # a bad name fails now, not after the policies before it ran for minutes
        live_entry(pol, "--policies")
        make_policy(pol, profile, base.stabilization_intervals, min_gain=base.min_gain, backend=base.backend)
    out_dir.mkdir(parents=True, exist_ok=True)
    rates = np.asarray(base.rates_rps, dtype=float)
    results = []
    for label, value, run in experiment_runs(base, policies, sweep):
        run_dir = out_dir / _safe(label)
        cfg = replace(run, run_dir=run_dir)
        if cfg.backend == "kubernetes":
            _clear_namespace(cfg, profile)  # each policy starts from nothing, as on the local backend
        live = AdapterRun(cfg, backend_setup(cfg.backend), on_update=on_update).run()
        sim_res = None
        try:
            sim_res = simulate_same(load_profile(base.profile_path), cfg,
                                    arrival_times_s=live_arrival_times(run_dir / REQUESTS_FILE),
                                    capacity_scale=float((live.get("calibration") or {}).get("capacity_scale", 1.0)))
        except Exception as exc:  # the comparison must not lose the live figures
            log.warning("simulator failed for %s: %s", label, exc)
        results.append({"policy": label, "live": live, "simulated": sim_res,
                        "timeline": decision_timeline(run_dir),
                        **({"sweep": {sweep.key: value}} if sweep is not None and value is not None else {})})
        if live.get("interrupted"):
            break
    doc = {"profile": str(base.profile_path), "seconds": int(rates.size), "mean_rps": float(rates.mean()),
           "interval_s": base.control.interval_s, "results": results}
    if sweep is not None:
        ideal = ideal_points(profile, rates, sweep)  # the same for both sides: the load and the profile's
        doc["frontier"] = {side: with_ideal(experiment_frontier(results, sweep, side), profile, rates, ideal)
                           for side in ("live", "simulated")}
    (out_dir / "experiment.json").write_text(json.dumps(doc, indent=1, default=str))
    (out_dir / "experiment.md").write_text(comparison_table(doc))
    with contextlib.suppress(Exception):
        plot_experiment(doc, rates, out_dir / "experiment.png", slo_ms=profile.slo_ms)
    if sweep is not None:
        with contextlib.suppress(Exception):
            plot_frontier(doc["frontier"]["live"], out_dir / "frontier.png",
                          title=f"live: {Path(str(doc['profile'])).name}, {base.load_label or 'the load'}")
    return doc


def _clear_namespace(cfg: Any, profile: Profile) -> None:
    """Delete the variants, HPAs and VPAs the run before left in the namespace (the next policy must not resume
    from them); the dispatcher stays."""
    from infadapter.backends.kubernetes.setup import build_backend

    backend = build_backend(replace(cfg, policy="infadapter"), profile)
    try:
        gone = backend.teardown()
    finally:
        backend.stop()
    if gone:
        log.info("experiment: cleared %s", ", ".join(gone))


def experiment_frontier(results: list[dict[str, Any]], sweep: Sweep, side: str) -> dict[str, Any]:
    """The frontier of one side ("live" or "simulated") of an experiment's results."""
    swept, baselines = [], []
    for r in results:
        got = r.get(side) or {}
        value = (r.get("sweep") or {}).get(sweep.key)
        p = Point(label=r["policy"], policy=r["policy"].split(" ")[0],
                  mean_cores=float(got.get("mean_cores") or 0.0), mean_accuracy=float(got.get("mean_accuracy") or 0.0),
                  slo_violation_rate=float(got.get("slo_violation_rate") or 0.0),
                  requests=int(got.get("requests") or 0), value=value)
        (swept if value is not None else baselines).append(p)
    return frontier(swept, baselines, sweep.key)


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
