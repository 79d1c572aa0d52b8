"""``cli.py plan``: the plan for one load, as a table or the JSON contract object."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import click
from rich.table import Table

from infadapter.commands.common import (
    err_console,
    json_option,
    out_console,
    parse_cores_map,
    print_json,
    profile_option,
    warn,
)
from infadapter.commands.whatif import WHAT_IF_HELP, parse_what_if
from infadapter.core import policies, solver
from infadapter.core.plan import Plan, plan_from_cores
from infadapter.core.profile import Profile, load_profile
from infadapter.errors import BadInput, Infeasible

# Policies that make sense without history (VPA needs CPU usage samples, the oracle a future).

EXAMPLES = """
\b
Examples:
  python cli.py plan --load 120
  python cli.py plan --load 274 --current resnet152=20 --json
  python cli.py plan --load 50 --alpha 0.2 --budget 10 --policy msplus
  python cli.py plan --load 80 --policy static:resnet50=8
  python cli.py plan --load 30 --profile profiles/local.yaml --solver cbc
  python cli.py plan --load 120 --what-if budget=16 --what-if traffic=1.5
  python cli.py plan --profile profiles/services.yaml --load live=100,feed=50,archive=20 --json
  python cli.py plan --load 120 --what-if budget=16,slo=500


Exit codes: 0 feasible plan, 2 bad input, 3 load above what the budget serves
(the highest-capacity plan is still printed, with "feasible": false).
With --what-if, --json prints {"today": PLAN, "what_if": [{"scenario", "load", "slo_ms", "plan"}, ...]}.
A profile with services: takes --load NAME=RPS,... (one per service); each variant of the plan
names its "service", and "services" says what each service got (exit 3 when one got less than its load).
"""


@click.command(epilog=EXAMPLES)
@click.option("--load", "load_text", required=True,
              help="Load to plan for, in req/s; with a services: profile NAME=RPS,... for every service.")
@profile_option()
@click.option("--current", default="", help="Cores each variant runs on now: NAME=CORES,... (transition cost).")
@click.option("--alpha", type=float, default=None, help="Override the profile's cost weight.")
@click.option("--beta", type=float, default=None, help="Override the profile's transition weight.")
@click.option("--budget", type=float, default=None, help="Override the profile's core budget.")
@click.option(
    "--policy",
    default="infadapter",
    show_default=True,
    help="infadapter | msplus | static:NAME=CORES[,...] (policies that need no history).",
)
@click.option("--solver", "solver_name", type=click.Choice(solver.SOLVERS), default="highs", show_default=True)
@click.option("--time-limit", type=float, default=5.0, show_default=True, help="Solver time limit in seconds.")
@click.option("--what-if", "what_if", multiple=True, help=WHAT_IF_HELP)
@json_option
def plan(
    load_text: str,
    profile_path: Path,
    current: str,
    alpha: float | None,
    beta: float | None,
    budget: float | None,
    policy: str,
    solver_name: str,
    time_limit: float,
    what_if: tuple[str, ...],
    as_json: bool,
) -> None:
    """Plan which variants run, on how many cores, with which share of LOAD."""
    prof = load_profile(profile_path).tuned(alpha=alpha, budget=budget).with_overrides(beta=beta)
    by_service = _parse_load(load_text, prof)
    load_rps = sum(by_service.values()) if prof.services else float(load_text)
    if load_rps < 0 or load_rps != load_rps:
        raise BadInput(f"--load: must be a number >= 0 req/s, got {load_rps}")
    if prof.services and policy != "infadapter":
        raise BadInput("--policy: a profile with services plans with --policy infadapter")
    cur_cores = parse_cores_map(current)
    unknown = [n for n in cur_cores if n not in prof.names]
    if unknown:
        raise BadInput(f"--current: unknown variant {unknown[0]!r}, expected one of {', '.join(prof.names)}")
    if not policies.entry(policy).from_load:
        usable = ", ".join(e.name for e in policies.REGISTRY.values() if e.from_load)
        raise BadInput(f"--policy: plan supports {usable}; use simulate for {policy!r}")
    for line in prof.extrapolation_warnings():
        warn(line)
    pol = policies.make_policy(policy, prof, stabilization_intervals=1)
    cur_plan = _plan_from_current(cur_cores, prof) if any(cur_cores.values()) else None
    ctx = policies.Context(
        profile=prof,
        now_s=0.0,
        forecast_rps=load_rps,
        current=cur_plan,
        solver=solver.Options(solver=solver_name, time_limit_s=time_limit),
        forecast_by_service=by_service,
    )
    decision = pol.decide(ctx)
    result = decision.plan
    for note in result.notes:
        warn(note)
    if what_if:
        rows = [("today", by_service or load_rps, prof.slo_ms, result)]
        for sc, prof_s in [(sc, sc.profile(prof, str(profile_path))) for sc in parse_what_if(what_if)]:
            loads_s = sc.loads(by_service)
            load_s = sum(loads_s.values()) if prof.services else load_rps * sc.factor()
            pol_s = policies.make_policy(policy, prof_s, stabilization_intervals=1)
            decided = pol_s.decide(replace(ctx, profile=prof_s, forecast_rps=load_s, forecast_by_service=loads_s))
            rows.append((sc.label, loads_s or load_s, prof_s.slo_ms, decided.plan))
        if as_json:
            print_json({"today": result.as_dict(),
                        "what_if": [{"scenario": lab, **_load_fields(ld, slo), "plan": p.as_dict()}
                                    for lab, ld, slo, p in rows[1:]]})
        else:
            _print_what_if(rows)
    elif as_json:
        print_json(result.as_dict())
    else:
        _print_table(result, prof.budget_cores, decision)
    if not result.feasible:
        err_console().print("[red]infeasible:[/] the budget cannot serve this load; planned the most it can")
        raise click.exceptions.Exit(Infeasible.exit_code)


def _parse_load(text: str, prof: Profile) -> dict[str, float]:
    """``--load``: one number (one service), or NAME=RPS,... for a profile with services (empty dict
    for one service). A mismatch between the two is one line naming the flag."""
    text = text.strip()
    if not prof.services:
        if "=" in text:
            raise BadInput("--load: this profile has no services:, give one number of req/s")
        try:
            float(text)
        except ValueError:
            raise BadInput(f"--load: must be a number >= 0 req/s, got {text!r}") from None
        return {}
    if "=" not in text:
        raise BadInput(f"--load: this profile has services; give NAME=RPS for each of {', '.join(prof.service_names)}")
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            rps = float(value) if sep else math.nan
        except ValueError:
            rps = math.nan
        if not sep or not rps >= 0:
            raise BadInput(f"--load: expected NAME=RPS with RPS a number >= 0, got {part!r}")
        out[name.strip()] = rps
    return out


def _load_fields(load: float | dict[str, float], slo_ms: float) -> dict[str, object]:
    """A scenario's load in ``plan --what-if --json``: its total, and each service's (with services), or its
    SLO (one service: a scenario may change it)."""
    if isinstance(load, dict):
        return {"load": sum(load.values()), "load_by_service": load}
    return {"load": load, "slo_ms": slo_ms}


def _print_what_if(rows: list[tuple[str, float | dict[str, float], float, Plan]]) -> None:
    from infadapter.core.explain import describe

    table = Table(title="Today's plan beside each --what-if", title_justify="left")
    services = isinstance(rows[0][1], dict)
    for col in ("scenario", "load req/s", *(() if services else ("SLO ms",)), "plan", "cores", "accuracy",
                "objective", "feasible"):
        table.add_column(col, justify="left" if col in ("scenario", "plan", "load req/s") else "right")
    for label, load, slo_ms, p in rows:
        shown = "\n".join(f"{n}={v:g}" for n, v in load.items()) if isinstance(load, dict) else f"{load:g}"
        table.add_row(label, shown, *(() if services else (f"{slo_ms:g}",)), describe(p), f"{p.cores:g}",
                      f"{p.accuracy:.4f}", f"{p.objective:.5f}", "yes" if p.feasible else "NO")
    con = out_console()
    if not con.is_terminal:
        con.width = 120  # piped output: keep the plans whole
    con.print(table)


def _plan_from_current(cores: dict[str, float], prof: Profile) -> Plan:
    caps = {n: prof.capacity_rps(n, c) for n, c in cores.items()}
    accs = {n: prof.variant(n).accuracy for n in cores}
    return plan_from_cores(cores, 0.0, caps, accs)


def _print_table(result: Plan, budget: float, decision: policies.Decision) -> None:
    table = Table(title=f"Plan for {result.load_rps:g} req/s", title_justify="left")
    for col, kw in (("variant", {}), ("cores", {"justify": "right"}), ("share", {"justify": "right"}),
                    ("capacity req/s", {"justify": "right"}), ("assigned req/s", {"justify": "right"})):
        table.add_column(col, **kw)
    served = {s.name: s.served_rps for s in result.services}
    for a in result.allocations:
        assigned = a.share * served.get(a.service, result.load_rps)
        table.add_row(a.name, f"{a.cores:g}", f"{a.share:.1%}", f"{a.capacity_rps:.1f}", f"{assigned:.1f}")
    console = out_console()
    console.print(table)
    for s in result.services:
        met = "" if s.floor_met else " (NOT met)"
        floor = "" if s.accuracy_floor is None else f"   floor {s.accuracy_floor:g}{met}"
        console.print(f"service {s.name} (weight {s.weight:g}): served {s.served_rps:.1f} of {s.load_rps:.1f} req/s   "
                      f"accuracy {s.accuracy:.4f}{floor}", highlight=False)
    console.print(
        f"feasible: {'yes' if result.feasible else 'NO'}   accuracy: {result.accuracy:.4f}   "
        f"cores: {result.cores:g}/{budget:g}   objective: {result.objective:.6f}   "
        f"({decision.solver or decision.reason.split(':')[0]}, {decision.solve_s * 1000:.1f} ms)",
        highlight=False,
    )
