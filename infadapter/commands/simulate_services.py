"""``cli.py simulate`` on a profile with ``services:``: every service replays its own window, the policies share
one budget (:mod:`infadapter.sim.services`); ``--sweep budget=...`` runs them on each budget beside the pooled
lower bound."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from infadapter.commands.common import out_console, print_json
from infadapter.errors import BadInput
from infadapter.sim.frontier import Sweep

#: ``--service-window``'s help.
SERVICE_WINDOW_HELP = ("With services: replay NAME's traffic from WINDOW (paper, dayN or START:DURATION) instead "
                       "of its profile's window; repeat it per service (e.g. --service-window live=1641000:1260).")
#: A split violating at least this share of requests is compared with the joint solve (issue 25's goal).
COMPARE_ABOVE = 0.02


def parse_service_windows(specs: Sequence[str], names: Sequence[str]) -> dict[str, str]:
    """``--service-window NAME=WINDOW`` values as {service: window}; one line of BadInput naming the flag."""
    from infadapter.observe.trace import parse_window

    out: dict[str, str] = {}
    for spec in specs:
        name, sep, window = spec.partition("=")
        name = name.strip()
        if not sep or not window.strip():
            raise BadInput(f"--service-window: expected NAME=WINDOW (e.g. {names[0]}=1641000:1260), got {spec!r}")
        if name not in names:
            raise BadInput(f"--service-window: no service {name!r}; give one of {', '.join(names)}")
        parse_window(window)
        out[name] = window.strip()
    return out


def service_runs(profile: Any, profile_path: Path, make_runs: Callable[[dict[str, str]], Any],
                 windows: dict[str, str]) -> tuple[dict[str, str], Any]:
    """Each service's window (``windows`` overrides the profile's) and its replay (``make_runs``)."""
    missing = [s.name for s in profile.services if s.window is None and s.name not in windows]
    if missing:
        raise BadInput(f"{profile_path}: services[{missing[0]}].window: simulate replays each service's own window; "
                       f"give one (paper or START:DURATION) or --service-window {missing[0]}=WINDOW")
    chosen = {s.name: windows.get(s.name, s.window) for s in profile.services}
    runs = make_runs(chosen)
    if len({len(r.rates_rps) for r in runs.values()}) > 1:
        raise BadInput(f"{profile_path}: services' windows must have one length (the totals add them up)")
    return chosen, runs


def run_services(profile: Any, profile_path: Path, specs: list[str], make_runs: Callable[[dict[str, str]], Any],
                 windows: dict[str, str], sweep: Sweep | None, plot_path: Path | None, seed: int,
                 as_json: bool) -> None:
    """Run every policy of ``specs`` on the services' windows (``windows`` overrides the profile's), once, or
    on each budget of ``sweep``; print the table or the JSON, draw ``plot_path`` (a sweep's plot)."""
    from infadapter.sim.services import simulate_services

    chosen, runs = service_runs(profile, profile_path, make_runs, windows)
    head = {"policy": ",".join(specs), "profile": profile.name, "seed": seed, "windows": chosen}
    if sweep is None:
        if plot_path is not None:
            raise BadInput("--plot: with services, only with --sweep budget=... (violations against the budget)")
        out = {**head, "results": [simulate_services(profile, runs, spec) for spec in specs]}
        if as_json:
            print_json(out)
        else:
            _print_services(f"{profile.name}: one budget, every service's own window", "policy", out["results"])
        return
    if sweep.key != "budget":
        raise BadInput("--sweep: with services, sweep the shared budget (e.g. --sweep budget=16,20,24,28,32)")
    doc = {**head, **budget_sweep(profile, runs, specs, sweep)}
    if plot_path is not None:
        from infadapter.plots import plot_budget_sweep

        try:
            plot_budget_sweep(doc, plot_path, title=f"{profile_path.name}: "
                              + ", ".join(f"{k} {v}" for k, v in chosen.items()))
        except OSError as exc:
            raise BadInput(f"--plot: cannot write {plot_path}: {exc.strerror}") from None
    if as_json:
        print_json(doc)
    else:
        _print_sweep(doc)


def what_if_services(profile: Any, profile_path: Path, spec: str, make_runs: Callable[[dict[str, str]], Any],
                     windows: dict[str, str], scenarios: Sequence[Any], seed: int, as_json: bool) -> None:
    """``spec`` today and under each ``--what-if`` scenario (:class:`~infadapter.commands.whatif.Scenario`: the
    shared budget, alpha, beta, a factor on every service's traffic or on one's) on the same arrivals'
    windows and seed; per service and in total."""
    from dataclasses import replace

    import numpy as np

    from infadapter.commands.whatif import Scenario, scaled_config
    from infadapter.sim.services import simulate_services

    chosen, runs = service_runs(profile, profile_path, make_runs, windows)
    # Every scenario's profile first: one the profile cannot express fails before any simulation.
    cases = [(sc, sc.profile(profile, str(profile_path))) for sc in [Scenario("today"), *scenarios]]
    rows = []
    for sc, prof in cases:
        scaled = {n: replace(r, rates_rps=np.asarray(r.rates_rps, dtype=float) * sc.factor(n),
                             config=scaled_config(r.config, sc.factor(n))) for n, r in runs.items()}
        rows.append({"scenario": sc.label, "budget_cores": prof.budget_cores,
                     **simulate_services(prof, scaled, spec)})
    out = {"policy": spec, "profile": profile.name, "seed": seed, "windows": chosen, "scenarios": rows}
    if as_json:
        print_json(out)
    else:
        _print_services(f"{spec} on {profile.name}: today beside each --what-if (seed {seed})", "scenario", rows)


def budget_sweep(profile: Any, runs: Any, specs: list[str], sweep: Sweep) -> dict[str, Any]:
    """Every policy on each budget of ``sweep``, the pooled bound beside them, and at each budget where a split
    violates at least :data:`COMPARE_ABOVE` the joint solve's violations and mean cores against it."""
    from infadapter.sim.services import SPLITS, pooled_bound, simulate_services

    cv = next(iter(runs.values())).config.service_cv
    rates = {n: r.rates_rps for n, r in runs.items()}
    points = []
    for prof in sweep.profiles(profile):
        results = [simulate_services(prof, runs, spec) for spec in specs]
        by = {r["policy"]: r for r in results}
        bound = round(pooled_bound(prof, rates, cv), 6)
        point: dict[str, Any] = {"budget": prof.budget_cores, "pooled_bound": bound, "results": results,
                                 "comparison": []}
        joint = by.get("infadapter")
        for split in (s for s in SPLITS if s in by and joint is not None):
            v = by[split]["slo_violation_rate"]
            if v < COMPARE_ABOVE:
                continue
            point["comparison"].append({
                "split": split, "violation_ratio": round(joint["slo_violation_rate"] / v, 4),
                "bound_ratio": round(bound / v, 4), "joint_mean_cores": joint["mean_cores"],
                "split_mean_cores": by[split]["mean_cores"],
                "met": joint["slo_violation_rate"] <= 0.5 * v and joint["mean_cores"] <= by[split]["mean_cores"]})
        points.append(point)
    return {"sweep": "budget", "values": list(sweep.values), "points": points}


def _print_services(title: str, key: str, results: Sequence[dict[str, Any]]) -> None:
    """Each result's services and total, a row each, labelled by the result's ``key`` (its policy or scenario)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in (key, "service", "requests", "SLO violations", "mean cores", "mean accuracy"):
        table.add_column(col, justify="left" if col in (key, "service") else "right")
    for res in results:
        for row in [*res["services"], {**res, "name": "total"}]:
            table.add_row(res[key], row["name"], f"{row.get('requests', 0)}", f"{row['slo_violation_rate']:.2%}",
                          f"{row['mean_cores']:.2f}", f"{row['mean_accuracy']:.4f}")
    con = out_console()
    if not con.is_terminal:
        con.width = 120
    con.print(table)


def _print_sweep(doc: dict[str, Any]) -> None:
    from rich.table import Table

    specs = [r["policy"] for r in doc["points"][0]["results"]]
    table = Table(title=f"{doc['profile']}: total SLO violations (mean cores) by shared budget", title_justify="left")
    for col in ("budget", *specs, "pooled bound", "joint / split (cores)"):
        table.add_column(col, justify="right")
    for p in doc["points"]:
        ratios = "; ".join(f"{c['split']}: x{c['violation_ratio']:.2f}, bound x{c['bound_ratio']:.2f} "
                           f"({c['joint_mean_cores']:.1f} vs {c['split_mean_cores']:.1f})" for c in p["comparison"])
        table.add_row(f"{p['budget']:g}", *(f"{r['slo_violation_rate']:.2%} ({r['mean_cores']:.1f})"
                                            for r in p["results"]), f"{p['pooled_bound']:.2%}", ratios or "-")
    con = out_console()
    if not con.is_terminal:
        con.width = 160
    con.print(table)
