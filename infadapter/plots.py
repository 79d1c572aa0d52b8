"""Run plots: offered load vs planned capacity, cores, accuracy and SLO violations over time (one PNG);
and the frontier of ``simulate --sweep`` (:func:`plot_frontier`: accuracy against cores, violations as colour).

One drawing for ``cli.py adapt`` (one run, ``adapt.png`` in its run folder) and ``cli.py experiment``
(one line per policy, ``experiment.png``). The data come from the run folder: the decision log
(``decisions.jsonl``: what each decision served, at which load) and, when a load was driven,
``requests.csv`` (each request's send time, latency and outcome). Without requests (a dry-run or a
replayed observation) the violations panel shows the share of the observed load above the planned
capacity, an estimate, and says so. matplotlib runs headless (Agg).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from infadapter.adapter.records import read_records
from infadapter.adapter.state import DECISIONS_FILE, read_state, state_path
from infadapter.observe import requestlog

#: Width of the bins of the violation-rate panel, in seconds.
VIOLATION_BIN_S = 10.0


@dataclass(frozen=True)
class RunSeries:
    """What one run contributes to the plot: its label, decision timeline and violations over time."""

    label: str
    timeline: tuple[dict[str, Any], ...]
    #: (bin start seconds, violation rate) from the run's requests; None: estimate from the timeline.
    violations: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    #: Unix time of second 0 of the offered load (None: the first decision's time).
    start_s: float | None = None


def decision_timeline(run_dir: Path, service: str | None = None) -> list[dict[str, Any]]:
    """One point per decision of a run folder: time, forecast, observed load, and what then served; ``service``:
    that service's part of each decision of a run of several services (its inputs and its variants)."""
    out = []
    for r in read_records(Path(run_dir) / DECISIONS_FILE):
        serving = r.get("serving") or {}
        if service is None:
            out.append({"time_s": r["time_s"], "forecast_rps": r["forecast_rps"], "observed_rps": r["observed_rps"],
                        "cores": serving.get("cores"), "accuracy": serving.get("accuracy"),
                        "capacity": sum(v.get("capacity", 0) for v in serving.get("variants", [])),
                        "p99_ms": r.get("p99_ms"), "trigger": r["trigger"]})
            continue
        seen = (((r.get("inputs") or {}).get("services") or {}).get(service)) or {}
        mine = [v for v in serving.get("variants", []) if v.get("service") == service]
        outcome = next((o for o in serving.get("services", []) if o.get("name") == service), {})
        out.append({"time_s": r["time_s"], "forecast_rps": seen.get("forecast_rps", 0.0),
                    "observed_rps": seen.get("observed_rps", 0.0), "cores": sum(v.get("cores", 0) for v in mine),
                    "accuracy": outcome.get("accuracy"), "capacity": sum(v.get("capacity", 0) for v in mine),
                    "p99_ms": None, "trigger": r["trigger"]})
    return out


def violation_rates(requests_csv: Path, slo_ms: float, start_s: float,
                    bin_s: float = VIOLATION_BIN_S, service: str | None = None
                    ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Share of requests per ``bin_s`` bin that missed the SLO or failed; None without a requests file.
    ``service``: only that service's requests (the file's service column)."""
    try:
        log = requestlog.read(Path(requests_csv))
    except OSError:
        return None
    if log is not None and service is not None:
        log = log.only(service)
    if log is None or not len(log):
        return None
    t = log.sent_unix - start_s
    bad = log.violated(slo_ms).astype(float)
    idx = np.floor(np.maximum(t, 0.0) / bin_s).astype(int)
    sent = np.bincount(idx)
    missed = np.bincount(idx, weights=bad)
    keep = sent > 0
    starts = np.arange(sent.size)[keep] * bin_s
    return tuple(float(x) for x in starts), tuple(float(x) for x in missed[keep] / sent[keep])


def run_series(run_dir: Path, label: str, slo_ms: float | None, service: str | None = None) -> RunSeries:
    """A run folder as a :class:`RunSeries` (requests.csv used when present and ``slo_ms`` is known); ``service``:
    one service's part of a run of several."""
    run_dir = Path(run_dir)
    timeline = tuple(decision_timeline(run_dir, service))
    load = (read_state(state_path(run_dir)) or {}).get("load") or {}
    start = load.get("started_s")
    start = float(start) if start is not None else (timeline[0]["time_s"] if timeline else None)
    violations = None
    if slo_ms is not None and start is not None:
        violations = violation_rates(run_dir / requestlog.REQUESTS_FILE, slo_ms, start, service=service)
    return RunSeries(label, timeline, violations, start)


def overload_estimate(t: Sequence[float], timeline: Sequence[dict[str, Any]], rates: np.ndarray | None
                      ) -> tuple[list[float], list[float]]:
    """Share of the load above the capacity in force, per second of ``rates`` (else per decision).

    Without requests this is the best guess at violations: the load a plan could not serve. With
    ``rates``, each second's offered load meets the capacity of the last decision before it; without,
    each decision's observed load meets the capacity planned at the decision before.
    """
    caps = [x["capacity"] for x in timeline]
    if rates is not None and len(rates):
        secs = np.arange(len(rates), dtype=float)
        idx = np.searchsorted(np.asarray(t, dtype=float), secs, side="right") - 1
        cap = np.where(idx >= 0, np.asarray(caps, dtype=float)[np.maximum(idx, 0)], 0.0)
        load = np.asarray(rates, dtype=float)
        over = np.where(load > 0, np.maximum(load - cap, 0.0) / np.maximum(load, 1e-9), 0.0)
        return list(secs), [float(v) for v in over]
    out = [0.0]
    for prev, x in pairwise(timeline):
        rps = x["observed_rps"]
        out.append(max(rps - prev["capacity"], 0.0) / rps if rps > 0 else 0.0)
    return list(t), out


def plot_runs(runs: Sequence[RunSeries], rates: np.ndarray | None, path: Path, title: str = "") -> Path:
    """Four panels over time: load vs capacity, cores, accuracy, SLO violations; written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(9, 9), sharex=True)
    if rates is not None and len(rates):
        axes[0].plot(np.arange(len(rates)), rates, color="black", lw=0.8, label="offered load")
    estimated = False
    for i, run in enumerate(runs):
        tl = run.timeline
        if not tl:
            continue
        t0 = run.start_s if run.start_s is not None else tl[0]["time_s"]
        t = [x["time_s"] - t0 for x in tl]
        # Several runs (policies, or services): one colour per run, its observed load dotted.
        own = {"color": f"C{i}"} if len(runs) > 1 else {}
        if rates is None or not len(rates):
            axes[0].plot(t, [x["observed_rps"] for x in tl], marker=".", lw=0.8, label=f"{run.label} observed",
                         **({**own, "ls": ":"} if own else {}))
        axes[0].step(t, [x["capacity"] for x in tl], where="post", label=f"{run.label} capacity", **own)
        axes[1].step(t, [x["cores"] or 0 for x in tl], where="post", label=run.label)
        axes[2].step(t, [100 * (x["accuracy"] or 0) for x in tl], where="post", label=run.label)
        if run.violations is not None:
            starts, rate = run.violations
            axes[3].step(starts, [100 * v for v in rate], where="post", label=run.label)
        else:
            estimated = True
            ts, over = overload_estimate(t, tl, rates)
            axes[3].step(ts, [100 * v for v in over], where="post", label=f"{run.label} (est.)")
    labels = ("req/s", "cores", "accuracy %",
              "load over capacity % (est.)" if estimated and not any(r.violations for r in runs)
              else f"SLO violations % ({VIOLATION_BIN_S:g} s)")
    for ax, label in zip(axes, labels, strict=True):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    axes[-1].set_xlabel("seconds")
    if title:
        axes[0].set_title(title, fontsize=10)
    return _save(fig, path, dpi=80)


def plot_experiment(doc: dict[str, Any], rates: np.ndarray, path: Path, slo_ms: float | None = None) -> Path:
    """``cli.py experiment``'s plot: one line per policy of ``doc["results"]`` on the same load."""
    runs = []
    for r in doc["results"]:
        run_dir = (r.get("live") or {}).get("run_dir")
        if run_dir:
            s = run_series(Path(run_dir), r["policy"], slo_ms)
            runs.append(RunSeries(r["policy"], tuple(r.get("timeline") or s.timeline), s.violations, s.start_s))
        else:
            runs.append(RunSeries(r["policy"], tuple(r.get("timeline") or ())))
    return plot_runs(runs, rates, path, title=f"experiment: {Path(str(doc.get('profile', ''))).name}")


def plot_adapt_run(run_dir: Path, policy: str, rates: Sequence[float] | None, slo_ms: float | None,
                   path: Path | None = None, title: str = "",
                   services: Sequence[tuple[str, float]] = ()) -> Path:
    """``cli.py adapt``'s plot of one run folder, written as ``adapt.png`` in it unless ``path`` says.
    ``services`` (name, SLO ms): a run of several services, one line per service in every panel (each one's
    observed load, capacity, cores, accuracy and violations at its own SLO)."""
    if services:
        runs = [run_series(Path(run_dir), name, slo, service=name) for name, slo in services]
        return plot_runs(runs, None, path or Path(run_dir) / "adapt.png", title=title)
    series = run_series(Path(run_dir), policy, slo_ms)
    arr = np.asarray(rates, dtype=float) if rates else None
    return plot_runs([series], arr, path or Path(run_dir) / "adapt.png", title=title)


#: Violation rates under this floor are drawn at it on the frontier's log colour scale.
FRONTIER_MIN_VIOLATIONS = 1e-4
_BASELINE_MARKERS = {"vpa": "s", "vpa-requests": "P", "vpa-cold": "X", "hpa": "^", "msplus": "D", "static": "v",
                     "oracle": "*"}


def plot_frontier(doc: dict[str, Any], path: Path, title: str = "") -> Path:
    """``simulate --sweep``'s plot: served accuracy against mean cores; infadapter's swept runs joined as a
    line, each baseline a labelled marker; colour: SLO violations (log scale); a red ring: a baseline above
    and to the left of the frontier (:mod:`infadapter.sim.frontier`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    swept = sorted(doc["frontier"], key=lambda p: p["mean_cores"])
    base = doc["baselines"]
    viol = [p["slo_violation_rate"] for p in [*swept, *base]]
    norm = LogNorm(vmin=FRONTIER_MIN_VIOLATIONS, vmax=max(max(viol, default=0.0), FRONTIER_MIN_VIOLATIONS * 10))

    def colour(v: float) -> float:
        return max(v, FRONTIER_MIN_VIOLATIONS)

    fig, ax = plt.subplots(figsize=(8, 5.5))
    xs, ys = [p["mean_cores"] for p in swept], [100 * p["mean_accuracy"] for p in swept]
    ax.plot(xs, ys, color="0.45", lw=1.2, zorder=1, label=f"infadapter, {doc['sweep']} swept")
    ideal = sorted(doc.get("ideal") or [], key=lambda p: p["mean_cores"])
    if ideal:
        ax.plot([p["mean_cores"] for p in ideal], [100 * p["mean_accuracy"] for p in ideal], color="0.45", lw=1.0,
                ls="--", marker="x", ms=5, zorder=1, label="ideal: every second's rate known, free transitions")
    sc = ax.scatter(xs, ys, c=[colour(p["slo_violation_rate"]) for p in swept], cmap="viridis", norm=norm,
                    s=70, marker="o", edgecolors="black", linewidths=0.6, zorder=3)
    xmax = max([p["mean_cores"] for p in [*swept, *base, *ideal]] + [1e-9])
    ys_all = [100 * p["mean_accuracy"] for p in [*swept, *base, *ideal]]
    ax.set_xlim(0, 1.25 * xmax)  # room for the labels right of the points
    ax.set_ylim(min(ys_all) - 0.9, max(ys_all) + 0.6)
    placed: list[tuple[float, float, float, float]] = []  # markers and label boxes drawn so far, in points
    for p in [*swept, *base]:
        mx, my = ax.transData.transform((p["mean_cores"], 100 * p["mean_accuracy"])) * 72 / fig.dpi
        placed.append((mx - 4, my - 4, mx + 4, my + 4))

    def label(text: str, x: float, y: float, dy: float, **kw: Any) -> None:
        """A label right of (x, y), moved up or down by a line until it overlaps no earlier one."""
        px, py = ax.transData.transform((x, y)) * 72 / fig.dpi
        w, h = 4.6 * len(text), 8.5
        for k in (0, -1, 1, -2, 2, -3, 3, -4, 4):
            box = (px + 6, py + dy + 9 * k, px + 6 + w, py + dy + 9 * k + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(6, box[1] - py), fontsize=7, **kw)

    for p in swept:
        label(f"{doc['sweep']}={p['value']:g}", p["mean_cores"], 100 * p["mean_accuracy"], -12, color="0.25")
    ringed = False
    for b in base:
        kind = b["policy"].split(":", 1)[0]
        x, y = b["mean_cores"], 100 * b["mean_accuracy"]
        ax.scatter([x], [y], c=[colour(b["slo_violation_rate"])], cmap="viridis", norm=norm, s=60,
                   marker=_BASELINE_MARKERS.get(kind, "o"), edgecolors="black", linewidths=0.4, zorder=3)
        if b["above_frontier"]:
            ax.scatter([x], [y], s=260, facecolors="none", edgecolors="red", linewidths=1.4, zorder=4,
                       label=None if ringed else "above-left of the frontier")
            ringed = True
        label(f"{b['label']} {100 * b['slo_violation_rate']:.2g}%", x, y, 4)
    cbar = fig.colorbar(sc, ax=ax)
    cbar.set_label(f"SLO violations (fraction; under {FRONTIER_MIN_VIOLATIONS:g} drawn at it)")
    ax.set_xlabel("mean cores allocated")
    ax.set_ylabel("served accuracy %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path, dpi=90)


def plot_budget_sweep(doc: dict[str, Any], path: Path, title: str = "") -> Path:
    """``simulate --sweep budget=...`` with services: total SLO violations against the shared budget, one line
    per policy (its mean cores beside each point) and the pooled lower bound dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = doc["points"]
    budgets = [p["budget"] for p in points]
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, spec in enumerate(r["policy"] for r in points[0]["results"]):
        rows = [p["results"][i] for p in points]
        ys = [100 * r["slo_violation_rate"] for r in rows]
        ax.plot(budgets, ys, marker="o", lw=1.3, label=spec)
        for b, y, r in zip(budgets, ys, rows, strict=True):
            ax.annotate(f"{r['mean_cores']:.1f}", (b, y), textcoords="offset points", xytext=(4, 4), fontsize=6,
                        color="0.35")
    ax.plot(budgets, [100 * p["pooled_bound"] for p in points], ls="--", color="black", lw=1.1,
            label="pooled lower bound")
    ax.set_xlabel("shared budget (cores)")
    ax.set_ylabel("total SLO violations % (labels: mean cores)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path, dpi=90)


def _save(fig: Any, path: str | Path, dpi: int) -> Path:
    """Lay out, write (creating the folder) and close a figure; the path written."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
