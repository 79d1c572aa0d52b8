"""``cli.py simulate``: replay a trace window against one policy or all of them."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import click

from infadapter import paths
from infadapter.commands.common import err_console, json_option, out_console, print_json, profile_option
from infadapter.commands.options import control_options, load_options, load_replay
from infadapter.commands.simulate_services import SERVICE_WINDOW_HELP
from infadapter.commands.sweep import SWEEP_HELP, parse_sweep
from infadapter.commands.whatif import WHAT_IF_HELP, parse_what_if
from infadapter.core.control import ControlConfig
from infadapter.core.policies import POLICY_HELP, compare_specs
from infadapter.errors import BadInput
from infadapter.sim.frontier import Sweep

EPILOG = """\b
Examples:
  python cli.py simulate --window paper --policy infadapter
  python cli.py simulate --window paper --policy all --forecaster learned
  python cli.py simulate --window paper --policy vpa:resnet18 --json
  python cli.py simulate --window day16 --policy infadapter --in-place-resize
  python cli.py simulate --window paper --policy infadapter,msplus --react
  python cli.py simulate --window 1380000:1800 --policy all --plot sim.png
  python cli.py simulate --trace rates.csv --window all --policy static:resnet50=8
  python cli.py simulate --window paper --min-budget --max-violations 0.01 --json
  python cli.py simulate --window paper --what-if traffic=1.5 --what-if budget=16
  python cli.py simulate --window paper --policy all --sweep alpha=0.01,0.05,0.2 --plot frontier.png
  python cli.py simulate --profile profiles/services.yaml --policy infadapter,infadapter-split --json
  python cli.py simulate --profile profiles/services.yaml --policy infadapter,infadapter-split,vpa:resnet18
  python cli.py simulate --profile profiles/services.yaml --sweep budget=16,20,24,28,32 \
      --policy infadapter,infadapter-split,infadapter-split-peak --plot budget-sweep.png
  python cli.py simulate --window paper --what-if slo=500 --what-if slo=1000,budget=12 --plot what-if.png
  python cli.py simulate --profile profiles/local.yaml --window paper --scale 0.1 \
      --policy infadapter,vpa:resnet50 --react --in-place-resize \
      --service-model cfs --service-cv 0.2 --queue-bound --observe-lag 2
"""


def _specs(profile: Any, policy_spec: str, sweep: bool, other_question: bool) -> list[str]:
    """The policies of ``--policy`` for a one-service profile (``all``: every baseline), checked against ``--sweep``
    (it sweeps infadapter, and alone: not with ``--what-if`` or ``--min-budget``, the ``other_question``)."""
    specs = compare_specs(profile) if policy_spec.strip() == "all" else [
        s.strip() for s in policy_spec.split(",") if s.strip()]
    if not specs:
        raise BadInput(f"--policy: expected {POLICY_HELP} or all")
    if sweep and other_question:
        raise BadInput("--sweep: give it without --what-if and --min-budget (each is its own question)")
    if sweep and "infadapter" not in specs:
        raise BadInput("--sweep: it sweeps infadapter; add infadapter to --policy (e.g. --policy all)")
    return specs


def _simulate_services(profile: Any, profile_path: Path, specs: list[str], service_window: tuple[str, ...],
                       replay_of: Callable[[str], Any], config_of: Callable[[Any], Any], sweep: Any, min_budget: bool,
                       max_violations: float, what_if: tuple[str, ...], plot_path: Path | None, seed: int,
                       as_json: bool) -> None:
    """``simulate`` on a profile with services: each service replays its own window (``replay_of(window)``, run
    with ``config_of(replay)``)."""
    from infadapter.commands.simulate_services import parse_service_windows, run_services, what_if_services
    from infadapter.sim.services import ServiceRun

    if min_budget and sweep is not None:
        raise BadInput("--sweep: give it without --min-budget (each is its own question)")
    if what_if and (sweep is not None or min_budget):
        raise BadInput("--what-if: give it without --sweep and --min-budget (each is its own question)")

    def make_runs(windows: dict[str, str]) -> dict[str, ServiceRun]:
        runs = {}
        for name, svc_window in windows.items():
            svc_load = replay_of(svc_window)
            runs[name] = ServiceRun(svc_load.rates, config_of(svc_load))
        return runs

    windows = parse_service_windows(service_window, profile.service_names)
    if min_budget:
        _min_budget_services(profile, profile_path, specs, make_runs, windows, max_violations, seed, as_json)
        return
    if what_if:
        if len(specs) != 1:
            raise BadInput("--what-if: give one --policy; the scenarios run beside it")
        what_if_services(profile, profile_path, specs[0], make_runs, windows, parse_what_if(what_if), seed,
                         as_json)
        return
    run_services(profile, profile_path, specs, make_runs, windows, sweep, plot_path, seed, as_json)


def _run_policies(profile: Any, rates: Any, specs: list[str], policies: list[Any], config: Any, arrivals: Any,
                  fc: Any, as_json: bool) -> list[Any]:
    """Simulate each policy on the same arrivals, with a progress bar on a terminal."""
    from infadapter.sim import simulation as sim

    results = []
    with _progress(sys.stderr.isatty() and not as_json) as bar:
        for spec, pol in zip(specs, policies, strict=True):
            task = bar.add_task(spec, total=1.0) if bar is not None else None
            cb = (lambda f, task=task: bar.update(task, completed=f)) if bar is not None else None
            results.append(sim.simulate(profile, rates, pol, config, arrivals=arrivals, forecaster=fc, progress=cb))
    return results


@click.command(epilog=EPILOG)
@profile_option()
@load_options("paper")
@click.option("--policy", "policy_spec", default="infadapter", show_default=True,
              help=f"{POLICY_HELP} | all | a comma list of them.")
@click.option("--paper", is_flag=True,
              help="The paper's setting: 30 s interval, ewma+10%%, 2-minute warm-up from a cold start, "
                   "make-before-break replacement, no reaction, planned for the forecast peak "
                   "(flags given explicitly still win).")
@control_options
@click.option("--warmup", type=float, default=0.0, show_default=True, help="Seconds before the first decision.")
@click.option("--warm-start/--cold-start", default=True, show_default=True,
              help="Every policy has been running before the window: the adapter has seen its last 10 minutes "
                   "(and its first plan serves from the first second), VPA the day before; cold: no history, "
                   "the initial plan first.")
@click.option("--timeout", type=float, default=None, help="Longest queue wait before a drop, s [default: 2 x SLO].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the arrivals and service times.")
@click.option("--arrivals", "arrivals_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A live run's requests.csv: replay exactly the requests it sent (when each was due) instead "
                   "of a Poisson draw of the window's rates, to compare policies on the same arrivals.")
@click.option("--in-place-resize/--no-in-place-resize", default=True, show_default=True,
              help="Resize cores in place (no load time), as Kubernetes >= 1.33 and the local backend do.")
@click.option("--make-before-break/--break-before-make", default=True, show_default=True,
              help="Keep the old plan serving until new instances are ready.")
@click.option("--vpa-update", type=click.Choice(["rolling", "recreate"]), default="rolling", show_default=True,
              help="VPA applies its target by a surge rolling update or by eviction and re-creation.")
@click.option("--service-model", type=click.Choice(["queue", "cfs"]), default="queue", show_default=True,
              help="queue: one FIFO server per variant (the paper's setting); cfs: the local backend's "
                   "server under a CPU quota (one request at a time, throttled per 100 ms period).")
@click.option("--service-cv", type=float, default=1.0, show_default=True,
              help="Coefficient of variation of service times (1: exponential; local backend: 0.2).")
@click.option("--queue-bound/--no-queue-bound", default=True, show_default=True,
              help="Servers refuse requests beyond capacity x SLO waiting (a fast 503), as ours do.")
@click.option("--observe-lag", type=int, default=0, show_default=True,
              help="Seconds the monitor lags behind the arrivals (local backend with Prometheus: 2).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a PNG: load vs capacity, cores, accuracy and violations over time (with --sweep: "
                   "the frontier, accuracy against mean cores; with --what-if: one plot of today and the scenarios, "
                   "default runs/what-if.png).")
@click.option("--min-budget", is_flag=True,
              help="Find the smallest budget (in the profile's core steps) whose simulation keeps the SLO "
                   "violations at or under --max-violations (bisection; one policy); with services, the shared "
                   "budget at which every service's violations do.")
@click.option("--max-violations", type=float, default=0.01, show_default=True,
              help="With --min-budget: the target SLO violation rate (a fraction: 0.01 is 1%%).")
@click.option("--sweep", "sweep_spec", default=None, metavar="KEY=V1,V2,...", help=SWEEP_HELP)
@click.option("--service-window", "service_window", multiple=True, metavar="NAME=WINDOW",
              help=SERVICE_WINDOW_HELP)
@click.option("--what-if", "what_if", multiple=True, help=WHAT_IF_HELP + " One policy; a table of scenarios.")
@click.option("--jobs", type=click.IntRange(1), default=None,
              help="With --what-if: simulations at once, one process each [default: the CPU cores this process "
                   "may use; 1: one after another in this process]. The results do not depend on it.")
@click.option("--timeline", "timeline_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the per-second timeline of every policy as CSV.")
@json_option
def simulate(
    profile_path: Path, window: str, trace: Path | None, scale: float, speedup: float, policy_spec: str,
    paper: bool, forecaster: str, control: ControlConfig, alpha: float | None, budget: float | None,
    warmup: float,
    warm_start: bool, stabilization: int, timeout: float | None, seed: int, arrivals_path: Path | None,
    in_place_resize: bool, min_gain: float, make_before_break: bool, vpa_update: str,
    service_model: str, service_cv: float, queue_bound: bool, observe_lag: int,
    min_budget: bool, max_violations: float, sweep_spec: str | None, service_window: tuple[str, ...],
    what_if: tuple[str, ...], jobs: int | None,
    plot_path: Path | None, timeline_path: Path | None, as_json: bool,
) -> None:
    """Replay a workload trace against policies and report SLO violations, cost and accuracy.

    Requests arrive as a Poisson process within each second of the trace, are split by smooth
    weighted round robin, and queue at each variant, whose service model reproduces the profile's
    capacity at the SLO. --policy all runs infadapter, msplus, vpa on every variant, static on the
    most accurate variant and the oracle on the same arrivals. With --json: one object for one
    policy, or {"policy": "all", "results": [...], "comparison": [...]} for several. --sweep alpha=...
    or budget=...: infadapter once per value and every other policy once, as points of accuracy against
    mean cores, each baseline judged against infadapter's frontier (docs/simulator.md#a-frontier-not-a-point---sweep).
    """
    import numpy as np

    from infadapter.core.forecast import make_forecaster
    from infadapter.core.policies import make_policy
    from infadapter.core.profile import load_profile
    from infadapter.observe.trace import parse_window
    from infadapter.sim import simulation as sim

    profile = load_profile(profile_path).tuned(alpha=alpha, budget=budget)
    sweep = parse_sweep(sweep_spec) if sweep_spec is not None else None
    if sweep is not None:
        sweep.profiles(profile)  # a budget under the minimum fails before the trace loads
    parse_window(window)  # a bad window fails before the trace loads

    sim_config = partial(_sim_config, control=control, paper=paper, warm_start=warm_start, warmup=warmup,
                         stabilization=stabilization, forecaster=forecaster, make_before_break=make_before_break,
                         in_place_resize=in_place_resize, vpa_update=vpa_update, seed=seed, timeout=timeout,
                         min_gain=min_gain, service_model=service_model, service_cv=service_cv,
                         queue_bound=queue_bound, observe_lag=observe_lag)
    if profile.services:
        if arrivals_path or timeline_path:
            raise BadInput("--arrivals/--timeline: one-service profiles only so far")
        _simulate_services(profile, profile_path, [s.strip() for s in policy_spec.split(",") if s.strip()],
                           service_window, lambda w: load_replay(w, trace, scale, speedup), sim_config, sweep,
                           min_budget, max_violations, what_if, plot_path, seed, as_json)
        return
    if service_window:
        raise BadInput("--service-window: for a profile with services: (one-service profiles replay --window)")

    load = load_replay(window, trace, scale, speedup)
    rates = np.asarray(load.rates, dtype=float)
    specs = _specs(profile, policy_spec, sweep is not None, bool(what_if or min_budget))
    config = sim_config(load)
    policies = [make_policy(s, profile, stabilization, min_gain=min_gain) for s in specs]  # BadInput first
    fc = make_forecaster(config.forecaster)
    extra = {"window": window, "profile": profile.name, "seed": seed}
    if what_if:
        if len(specs) != 1 or min_budget:
            raise BadInput("--what-if: give one --policy (and no --min-budget); the scenarios run beside it")
        if arrivals_path is not None:
            _live_arrivals(arrivals_path, rates, seed)  # a bad file fails as without --what-if
        _what_if(profile, rates, specs[0], parse_what_if(what_if), config, seed, stabilization, min_gain, fc,
                 extra, as_json, plot_path=plot_path or paths.RUNS / "what-if.png",
                 plot_title=f"{profile_path.name}: {parse_window(window).label}", origin=str(profile_path), jobs=jobs)
        return
    arrivals = sim.make_arrivals(rates, seed) if arrivals_path is None else _live_arrivals(arrivals_path, rates, seed)
    if sweep is not None:
        _sweep(profile, rates, sweep, [(s, p) for s, p in zip(specs, policies, strict=True) if s != "infadapter"],
               config, arrivals, fc, stabilization, min_gain, plot_path, extra,
               f"simulated: profile {profile.name}, {parse_window(window).label}", as_json)
        return
    if min_budget:
        _min_budget(profile_path, profile, rates, specs, config, arrivals, fc, alpha, stabilization, min_gain,
                    max_violations, extra, as_json)
        return
    results = _run_policies(profile, rates, specs, policies, config, arrivals, fc, as_json)
    _report(profile, profile_path, rates, results, window, policy_spec, seed, fc.name, timeline_path, plot_path,
            as_json)


def _report(profile: Any, profile_path: Path, rates: Any, results: list[Any], window: str, policy_spec: str,
            seed: int, forecaster: str, timeline_path: Path | None, plot_path: Path | None, as_json: bool) -> None:
    """``simulate``'s output: the timeline and plot files when asked, then the JSON or the table."""
    from infadapter.observe.trace import parse_window

    label = parse_window(window).label
    comparison = compare(profile, rates, results)
    if timeline_path is not None:
        write_timeline(timeline_path, results)
    if plot_path is not None:
        plot(plot_path, rates, results, title=f"{profile_path.name}: {label}")
    if as_json:
        extra = {"window": window, "profile": profile.name, "seed": seed}
        if len(results) == 1:
            print_json({**results[0].as_dict(), **extra})
        else:
            print_json({"policy": "all" if policy_spec.strip() == "all" else policy_spec, **extra,
                        "results": [r.as_dict() for r in results], "comparison": comparison})
        return
    _print_table(results, comparison, f"{profile_path.name}: {label}, {rates.size} s, forecaster {forecaster}")


def _sim_config(load: Any, control: ControlConfig, paper: bool, warm_start: bool, *, warmup: float,
                stabilization: int, forecaster: str, make_before_break: bool, in_place_resize: bool, vpa_update: str,
                seed: int, timeout: float | None, min_gain: float, service_model: str, service_cv: float,
                queue_bound: bool, observe_lag: int) -> Any:
    """The simulator's settings from the flags: ``--paper`` fills in the paper's setting for every flag not
    given on the command line; the replay sets the history stretch and (``--warm-start``) the history before."""
    from infadapter.sim import simulation as sim

    given = explicit_params(click.get_current_context())
    settings: dict[str, Any] = dict(
        warmup_s=warmup, stabilization_intervals=stabilization,
        forecaster=forecaster,
        make_before_break=make_before_break, in_place_resize=in_place_resize, vpa_update=vpa_update, seed=seed,
        timeout_s=timeout, min_gain=min_gain, service_model=service_model, service_cv=service_cv,
        queue_bound=queue_bound, observe_lag_s=observe_lag, cpu_model="work" if service_model == "cfs" else "busy",
    )
    if paper:
        flags = {"interval_s": "interval_s", "warmup_s": "warmup", "min_gain": "min_gain", "forecaster": "forecaster",
                 "make_before_break": "make_before_break", "in_place_resize": "in_place_resize", "react": "react",
                 "queue_bound": "queue_bound", "demand": "demand"}
        paper_setting = {k: v for k, v in sim.PAPER_SETTING.items() if flags.get(k) not in given}
        ctl_names = {f.name for f in fields(ControlConfig)}
        settings.update({k: v for k, v in paper_setting.items() if k not in ctl_names})
        control = replace(control, **{k: v for k, v in paper_setting.items() if k in ctl_names and v is not None})
        warm_start = warm_start and "warm_start" in given
    # A compressed replay: each simulated second stands for K trace seconds, so the forecaster reads the
    # history stretched back to trace time, as adapt's and experiment's do (docs/simulator.md).
    control = load.control(control, warm=warm_start)
    settings.update(first_plan_ready=warm_start, rates_before=load.rates_before if warm_start else None)
    return sim.SimConfig(control=control, **settings)


def _check_min_budget(specs: list[str], max_violations: float) -> None:
    """``--min-budget``'s flags, for one service or several (one-line BadInput naming the flag)."""
    if len(specs) != 1:
        raise BadInput("--min-budget: give one --policy (the budget is searched for that policy)")
    if not 0 <= max_violations < 1:
        raise BadInput(f"--max-violations: must be a fraction in [0, 1), got {max_violations:g}")


def _min_budget(profile_path: Path, profile: Any, rates: Any, specs: list[str], config: Any, arrivals: Any, fc: Any,
                alpha: float | None, stabilization: int, min_gain: float, max_violations: float,
                extra: dict[str, Any], as_json: bool) -> None:
    """``--min-budget``: the smallest budget (bisection in the profile's core step) whose simulated violations
    stay at or under ``max_violations``, on the very arrivals of the run."""
    from infadapter.core.policies import make_policy
    from infadapter.core.profile import load_profile
    from infadapter.sim import simulation as sim
    from infadapter.sim.fluid import fluid_min_budget

    _check_min_budget(specs, max_violations)
    base = load_profile(profile_path).single_service("simulate --min-budget").tuned(alpha=alpha)

    requests = int(arrivals.times.size)
    stop_above = math.floor(max_violations * requests + 1e-9)  # more violations than this fail the target

    def violations(budget_cores: float) -> tuple[float, bool]:
        prof = base.tuned(budget=budget_cores)
        pol = make_policy(specs[0], prof, stabilization, min_gain=min_gain)
        run = sim.Simulation(prof, rates, pol, config, arrivals=arrivals, forecaster=fc)
        bad, exact = run.violations(stop_above=stop_above)
        return (bad / requests if requests else 0.0), exact

    guess = fluid_min_budget(base, arrivals.counts, max_violations, base.min_cores, profile.budget_cores,
                             config.service_cv)
    found = search_min_budget(violations, base.min_cores, profile.budget_cores, base.core_step, max_violations,
                              guess=guess)
    found["fluid_budget"] = guess
    found = {"policy": specs[0], **extra, **found}
    if as_json:
        print_json(found)
    elif found["budget"] is None:
        out_console().print(f"no budget up to {found['searched_up_to']:g} cores keeps the violations at or "
                            f"under {max_violations:.2%} ({found['simulations']} simulations)", highlight=False)
    else:
        below = found["below"]
        out_console().print(
            f"{specs[0]}: {found['budget']:g} cores keep the SLO violations at {found['slo_violation_rate']:.2%}"
            f" (target {max_violations:.2%})"
            + (f"; {below['budget']:g} cores give {'at least ' if below.get('stopped_early') else ''}"
               f"{below['slo_violation_rate']:.2%}" if below else "")
            + f"; {found['simulations']} simulations (from the fluid estimate {found['fluid_budget']:g} cores; "
            f"{found['runs_stopped_early']} stopped once over the target)", highlight=False)


def _min_budget_services(profile: Any, profile_path: Path, specs: list[str], make_runs: Any,
                         windows: dict[str, str], max_violations: float, seed: int, as_json: bool) -> None:
    """``--min-budget`` on a profile with services: the smallest shared budget at which every service's
    simulated violations stay at or under ``max_violations`` (the worst service is the one searched on), each
    service's figures at that budget beside it."""
    from infadapter.commands.simulate_services import service_runs
    from infadapter.sim.services import simulate_services

    _check_min_budget(specs, max_violations)
    chosen, runs = service_runs(profile, profile_path, make_runs, windows)
    results: dict[float, dict[str, Any]] = {}

    def violations(budget_cores: float) -> tuple[float, bool]:
        res = simulate_services(profile.tuned(budget=budget_cores), runs, specs[0])
        results[budget_cores] = res
        return max(s["slo_violation_rate"] for s in res["services"]), True

    # Every service needs its smallest pod: the grid starts there (a split gives each at least min_cores too).
    step = profile.core_step
    low = math.ceil(profile.min_cores * len(profile.services) / step - 1e-9) * step
    if low > profile.budget_cores + 1e-9:
        raise BadInput(f"--budget: {profile.budget_cores:g} cores cannot hold {len(profile.services)} services "
                       f"at min_cores {profile.min_cores:g} each; give at least {low:g}")
    found = search_min_budget(violations, low, profile.budget_cores, step, max_violations)
    at = results.get(found["budget"]) if found["budget"] is not None else None
    found = {"policy": specs[0], "profile": profile.name, "seed": seed, "windows": chosen,
             "searched_on": "the worst service's violations", **found,
             "services": [{k: s[k] for k in ("name", "slo_violation_rate", "mean_cores", "mean_accuracy")}
                          for s in at["services"]] if at else []}
    if as_json:
        print_json(found)
    elif found["budget"] is None:
        out_console().print(f"no budget up to {found['searched_up_to']:g} cores keeps every service's violations "
                            f"at or under {max_violations:.2%} ({found['simulations']} simulations)", highlight=False)
    else:
        below = found["below"]
        each = ", ".join(f"{s['name']} {s['slo_violation_rate']:.2%}" for s in found["services"])
        out_console().print(
            f"{specs[0]}: {found['budget']:g} shared cores keep every service's SLO violations at or under "
            f"{max_violations:.2%} ({each})"
            + (f"; {below['budget']:g} cores give {below['slo_violation_rate']:.2%} for the worst service"
               if below else "")
            + f"; {found['simulations']} simulations", highlight=False)


def _sweep(profile: Any, rates: Any, sweep: Sweep, baselines: list[tuple[str, Any]], config: Any, arrivals: Any,
           fc: Any, stabilization: int, min_gain: float, plot_path: Path | None, extra: dict[str, Any], title: str,
           as_json: bool) -> None:
    """``--sweep``: infadapter once per value, each baseline once, on the same arrivals; the frontier's points."""
    from infadapter.core.policies import make_policy
    from infadapter.plots import plot_frontier
    from infadapter.sim import simulation as sim
    from infadapter.sim.frontier import Point, frontier
    from infadapter.sim.ideal import ideal_points, with_ideal

    swept = []
    for value, prof in zip(sweep.values, sweep.profiles(profile), strict=True):
        pol = make_policy("infadapter", prof, stabilization, min_gain=min_gain)
        res = sim.simulate(prof, rates, pol, config, arrivals=arrivals, forecaster=fc)
        swept.append(Point.of(res, sweep.label(value), value))
    points = [Point.of(sim.simulate(profile, rates, pol, config, arrivals=arrivals, forecaster=fc))
              for _, pol in baselines]
    ideal = ideal_points(profile, rates, sweep)
    doc = {**extra, **with_ideal(frontier(swept, points, sweep.key), profile, rates, ideal)}
    if plot_path is not None:
        try:
            plot_frontier(doc, plot_path, title=title)
        except OSError as exc:
            raise BadInput(f"--plot: cannot write {plot_path}: {exc.strerror}") from None
    if as_json:
        print_json(doc)
        return
    from rich.table import Table

    table = Table(title=f"{title}: infadapter's {sweep.key} swept, each baseline against its frontier")
    for col in ("run", "SLO viol.", "mean cores", "accuracy", "frontier acc. at its cores", "above-left",
                "ceiling at its cores"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for p in doc["frontier"]:
        table.add_row(p["label"], f"{p['slo_violation_rate']:.2%}", f"{p['mean_cores']:.2f}",
                      f"{p['mean_accuracy']:.2%}", "", "", "")
    for p in doc["ideal"]:
        table.add_row(p["label"], "-", f"{p['mean_cores']:.2f}", f"{p['mean_accuracy']:.2%}", "", "", "")
    for b in doc["baselines"]:
        fa, ca = b["frontier_accuracy"], b["ceiling_accuracy"]
        table.add_row(b["label"], f"{b['slo_violation_rate']:.2%}", f"{b['mean_cores']:.2f}",
                      f"{b['mean_accuracy']:.2%}", "outside" if fa is None else f"{fa:.2%}",
                      "yes" if b["above_frontier"] else "no", "-" if ca is None else f"{ca:.2%}")
    con = out_console()
    if not con.is_terminal:
        con.width = 120
    con.print(table)
    above = doc["above_frontier"]
    con.print("above and to the left of infadapter's frontier (more accuracy at fewer cores, no more violations): "
              + (", ".join(above) if above else "none"), highlight=False)
    over = [b["label"] for b in doc["baselines"] if b["over_ceiling"]]
    con.print("ideal: every second's rate known in advance, plans change at once and for free; ceiling at its "
              "cores: the most accuracy any plan capped at that baseline's mean cores gives the same seconds"
              + (f"; above it, so no budget-capped plan matches them at the profile's capacities: {', '.join(over)}"
                 if over else ""), highlight=False)


def _what_if(profile: Any, rates: Any, spec: str, scenarios: list[Any], config: Any, seed: int,
             stabilization: int, min_gain: float, fc: Any, extra: dict[str, Any], as_json: bool,
             plot_path: Path | None = None, plot_title: str = "", origin: str = "the profile",
             jobs: int | None = None) -> None:
    """Today's settings and each scenario on the same trace and seed, side by side (``plot_path``: one plot of
    them all, a line per scenario); the scenarios are independent runs, up to ``jobs`` at once
    (:func:`infadapter.sim.pool.run_all`)."""
    import numpy as np

    from infadapter.commands.whatif import Scenario, scaled_config
    from infadapter.core.policies import make_policy
    from infadapter.sim.pool import Run, run_all

    runs, rows = [], []
    # Every scenario's profile first: a scenario the profile cannot express fails before any simulation.
    chosen = [(sc, sc.profile(profile, origin)) for sc in [Scenario("today"), *scenarios]]
    for sc, prof in chosen:
        scaled = np.asarray(rates, dtype=float) * sc.traffic
        runs.append(Run(prof, scaled, make_policy(spec, prof, stabilization, min_gain=min_gain),
                        scaled_config(config, sc.traffic), seed, fc))
    for (sc, prof), res in zip(chosen, run_all(runs, jobs), strict=True):
        rows.append((sc.label, res, prof.slo_ms))
    if plot_path is not None:
        plot(plot_path, rates, [r for _, r, _ in rows], title=f"{spec} on {plot_title}: today beside each --what-if",
             labels=[lab for lab, _, _ in rows])
    if as_json:
        print_json({"policy": spec, **extra, "plot": str(plot_path) if plot_path else None,
                    "scenarios": [{"scenario": lab, "slo_ms": slo_ms, **r.as_dict()} for lab, r, slo_ms in rows]})
        return
    from rich.table import Table

    table = Table(title=f"{spec} on {extra['window']}: today beside each --what-if (seed {seed})")
    for col in ("scenario", "requests", "SLO ms", "SLO viol.", "mean cores", "accuracy", "p99 ms", "transitions"):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for lab, r, slo_ms in rows:
        table.add_row(lab, str(r.requests), f"{slo_ms:g}", f"{r.slo_violation_rate:.2%}", f"{r.mean_cores:.2f}",
                      f"{r.mean_accuracy:.2%}", f"{r.p99_ms:.0f}", str(r.transitions))
    con = out_console()
    if not con.is_terminal:
        con.width = 120
    con.print(table)
    if plot_path is not None:
        con.print(f"plot: {plot_path}", highlight=False)


def search_min_budget(violations: Any, low: float, high: float, step: float, target: float,
                      guess: float | None = None) -> dict[str, Any]:
    """The smallest budget on the grid ``low, low + step, ... <= high`` with ``violations(b) <= target``.

    ``violations(b)`` returns the violation rate and whether it is exact (False: the simulation stopped once it
    was over the target, so the rate is a lower bound). Violations are taken to fall as the budget grows (more
    cores never plan less capacity). With a ``guess`` (the fluid estimate, :mod:`infadapter.sim.fluid`) the
    search simulates the budget one step below it, then the guess, then gallops up (1, 2, 4 steps) and
    bisects; without one it bisects the whole grid. Every answer's one-step-lower neighbour is simulated, so
    the result shows it fails. ``budget`` None when even ``high`` does not meet the target.
    """
    seen: dict[int, float] = {}
    stopped: set[int] = set()

    def at(i: int) -> float:
        if i not in seen:
            rate, exact = violations(round(low + i * step, 9))
            seen[i] = round(float(rate), 6)  # as simulate --json rounds
            if not exact:
                stopped.add(i)
        return seen[i]

    top = round((high - low) / step)
    lo, hi = -1, None  # at(lo) > target (lo -1: below the grid, fails by definition); at(hi) <= target
    if guess is not None:
        g = min(top, max(0, round((guess - low) / step)))
        if at(g) <= target:
            hi = g  # then one step below it (usually fails: the fluid estimate misses nothing a real run misses)
            if g > 0 and at(g - 1) > target:
                lo = g - 1
        else:  # gallop up: g + 1, g + 2, g + 4, ...
            lo, jump = g, 1
            while hi is None and lo < top:
                i = min(top, lo + jump)
                if at(i) <= target:
                    hi = i
                else:
                    lo, jump = i, jump * 2
    elif at(top) <= target:
        hi = top
    if hi is None:
        return {"budget": None, "searched_up_to": high, "max_violations": target, "simulations": len(seen),
                "tried": _tried(seen, stopped, low, step)}
    if lo < 0 < hi:  # nothing below hi known to fail: the grid's bottom first
        if at(0) > target:
            lo = 0
        else:
            hi = 0
    while hi - lo > 1:  # at(lo) > target >= at(hi)
        mid = (lo + hi) // 2
        if at(mid) <= target:
            hi = mid
        else:
            lo = mid
    below = None
    if lo >= 0:
        below = {"budget": round(low + lo * step, 9), "slo_violation_rate": seen[lo]}
        if lo in stopped:
            below["stopped_early"] = True  # a lower bound: the run stopped once over the target
    return {"budget": round(low + hi * step, 9), "slo_violation_rate": seen[hi], "max_violations": target,
            "below": below, "simulations": len(seen), "runs_stopped_early": len(stopped),
            "tried": _tried(seen, stopped, low, step)}


def _tried(seen: dict[int, float], stopped: set[int], low: float, step: float) -> list[dict[str, Any]]:
    return [{"budget": round(low + i * step, 9), "slo_violation_rate": v, **({"stopped_early": True} if i in stopped
                                                                            else {})} for i, v in sorted(seen.items())]


def explicit_params(ctx: click.Context) -> set[str]:
    """Names of the parameters given on the command line or in the environment (not defaults)."""
    from click.core import ParameterSource

    return {name for name in ctx.params
            if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}


def _progress(show: bool) -> Any:
    if not show:
        return nullcontext(None)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True,
                    console=err_console())


def compare(profile: Any, rates: Any, results: list[Any]) -> list[dict[str, Any]]:
    """infadapter against every VPA run and the oracle: ratios of violations and cost."""
    base = next((r for r in results if r.policy == "infadapter"), None)
    if base is None:
        return []
    peak = float(max(rates)) if len(rates) else 0.0
    out = []
    for r in results:
        if r is base or not (r.policy.startswith(("vpa", "hpa:")) or r.policy == "oracle"):
            continue
        row: dict[str, Any] = {
            "baseline": r.policy,
            "violation_ratio": _ratio(base.slo_violation_rate, r.slo_violation_rate),
            "cost_ratio": _ratio(base.mean_cores, r.mean_cores),
        }
        if r.policy.startswith(("vpa", "hpa:")):
            name = r.policy.split(":", 1)[1].split("=")[0]
            row["can_serve_peak"] = profile.capacity_rps(name, profile.core_options()[-1]) >= peak
            row["meets_paper_claim"] = bool(
                row["violation_ratio"] is not None and row["violation_ratio"] <= 0.35
                and row["cost_ratio"] is not None and row["cost_ratio"] <= 0.67)
        out.append(row)
    return out


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b > 0 else None


def _print_table(results: list[Any], comparison: list[dict[str, Any]], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("policy", "SLO viol.", "dropped", "mean cores", "planned cores", "accuracy", "p99 ms",
                "transitions"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for r in results:
        table.add_row(r.policy, f"{r.slo_violation_rate:.2%}", str(r.dropped), f"{r.mean_cores:.2f}",
                      f"{r.mean_planned_cores:.2f}", f"{r.mean_accuracy:.2%}", f"{r.p99_ms:.0f}", str(r.transitions))
    con = out_console()
    if not con.is_terminal:
        con.width = 120  # piped output: no terminal width to fit, keep the columns whole
    con.print(table)
    for row in comparison:
        v, c = row["violation_ratio"], row["cost_ratio"]
        note = "" if "can_serve_peak" not in row else (
            " (can serve the peak)" if row["can_serve_peak"] else " (cannot serve the peak on the budget)")
        con.print(f"infadapter vs {row['baseline']}: violations x{v if v is not None else 'n/a'}, "
                  f"cost x{c if c is not None else 'n/a'}{note}", highlight=False)


def write_timeline(path: Path, results: list[Any]) -> None:
    """One CSV row per (policy, second) with every timeline field."""
    import csv

    from infadapter.sim.simulation import TIMELINE_FIELDS

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["policy", "second", *TIMELINE_FIELDS])
            for r in results:
                cols = [r.timeline[k] for k in TIMELINE_FIELDS]
                for i in range(r.duration_s):
                    w.writerow([r.policy, i, *(f"{c[i]:.4g}" for c in cols)])
    except OSError as exc:
        raise BadInput(f"--timeline: cannot write {path}: {exc.strerror}") from None


def plot(path: Path, rates: Any, results: list[Any], title: str, labels: list[str] | None = None) -> None:
    """Load vs capacity, cores, accuracy and violations over time, one line per run (``labels``: the runs'
    names, default their policies; runs whose requests differ, as --what-if traffic= makes, each show theirs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    t = np.arange(len(rates)) / 60.0
    fig, axes = plt.subplots(4, 1, figsize=(11, 11), sharex=True)
    names = labels or [r.policy for r in results]
    axes[0].plot(t, results[0].timeline["requests"], color="0.6", lw=0.6, label="requests/s")
    for r, name in zip(results, names, strict=True):
        tl = r.timeline
        if not np.array_equal(tl["requests"], results[0].timeline["requests"]):
            axes[0].plot(t, tl["requests"], color="0.6", lw=0.6, ls=":", label=f"{name} requests/s")
        axes[0].plot(t, tl["capacity_rps"], lw=1.1, label=f"{name} capacity")
        axes[1].plot(t, tl["cores"], lw=1.1, label=name)
        axes[2].plot(t, tl["accuracy"] * 100, lw=1.1, label=name)
        kernel = np.ones(10)
        sent = np.maximum(np.convolve(tl["requests"], kernel, "same"), 1)
        viol = np.convolve(tl["violations"], kernel, "same") / sent
        axes[3].plot(t, viol * 100, lw=1.1, label=name)
    for ax, label in zip(axes, ("req/s", "cores allocated", "accuracy %", "SLO violations % (10 s)"), strict=True):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=3)
    axes[1].legend(fontsize=7, ncol=3)
    axes[-1].set_xlabel("minutes into the window")
    fig.suptitle(title)
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise BadInput(f"--plot: cannot write {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)


def _live_arrivals(path: Path, rates: Any, seed: int) -> Any:
    """The requests a live run sent (``--arrivals``), over the window's seconds; one line of BadInput if none."""
    from infadapter.sim import simulation as sim
    from infadapter.sim.experiment import live_arrival_times

    try:
        times = live_arrival_times(path)
    except (OSError, KeyError, ValueError) as exc:
        raise BadInput(f"--arrivals: cannot read {path} ({exc}); pass a live run's requests.csv") from None
    if times is None:
        raise BadInput(f"--arrivals: no requests in {path}; pass a live run's requests.csv")
    return sim.arrivals_from_times(times, len(rates), seed)

