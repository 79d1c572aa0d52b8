"""The integer program: which variants run, on how many cores, with which share of traffic.

For a load ``L`` (req/s), a profile and the cores each variant runs on now, choose for every variant
``v`` either 0 cores or one core count ``k`` of the grid (``min_cores .. budget`` in ``core_step``)
and a traffic share ``s_v``:

    maximize   sum_v s_v * acc_v  -  alpha * sum_v cores_v / budget  -  beta * T / max_load_time
    subject to sum_v cores_v <= budget
               s_v * L <= capacity(v, cores_v)          (0 when v does not run)
               sum_v s_v = 1,  s_v = 0 unless v runs,  at least one variant runs
               T >= load_time_v  for every v that starts or changes cores (stopping costs nothing)

Binary ``y[v,k]`` (v runs on k cores) make it a MILP; the share form (instead of assigned req/s)
keeps load 0 well defined: the plan then is the best single variant at its cheapest cores. When even
the whole budget cannot serve ``L`` the result is the highest-capacity plan, marked infeasible.

Several services (``Profile.services``) are one program: the same constraints per service (its shares
sum to 1, one of its variants runs, ``s_v * L_service <= capacity``, its traffic-weighted accuracy >= its
floor), one budget and one transition term, objective ``sum_service weight * sum_v s_v * acc_v - alpha
* cost - beta * transition``. When that is infeasible the rules give way in a fixed order, one more
solve each (:func:`_relaxations`): floors in reverse order of weight, then the lowest-weight service
sheds load first (the least it must), then the next; a program that the services' fewest cores prove
infeasible is skipped, not searched (:class:`_Fewest`). One service is the same program with weight 1, no
floor and no shedding: the same model, the same plans.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pulp

from infadapter.core.decompose import (
    decomposed,
    fewest_cores,
    greedy_shares,
    most_capacity,
    most_served,
    one_service,
    variant_options,
)
from infadapter.core.plan import Allocation, Plan, ServiceOutcome
from infadapter.core.profile import LinearCapacity, Profile
from infadapter.errors import BadInput

SOLVERS = ("highs", "cbc", "exhaustive")
#: Our models have a few dozen columns: HiGHS's primal heuristics, sub-MIPs and restarts cost more
#: than the search they save (bench/solver.py: p50 16 -> 9 ms, p99 59 -> 24 ms on the paper
#: profile, measured side by side). Exactness is unaffected: the gap is still closed to zero.
HIGHS_OPTIONS: dict[str, bool | float] = {
    "mip_allow_restart": False,
    "mip_heuristic_effort": 0.0,
    "mip_heuristic_run_feasibility_jump": False,
    "mip_heuristic_run_rins": False,
    "mip_heuristic_run_rens": False,
    "mip_heuristic_run_root_reduced_cost": False,
    "mip_heuristic_run_zi_round": False,
    "mip_heuristic_run_shifting": False,
}
#: Several services: no strong branching to rank the first branchings (pseudo-costs from the start). On the
#: 10-service benchmark's slowest programs (the decomposition's start given, CPU time) it took 797 -> 452 ms
#: where a floor gives way, 387 -> 226 and 311 -> 191 ms on two others, 395 -> 555 ms on a fourth.
HIGHS_SERVICES_OPTIONS: dict[str, int] = {"mip_pscost_minreliable": 0}
_EPS = 1e-9


@dataclass(frozen=True)
class Options:
    """Solver settings."""

    solver: str = "highs"
    time_limit_s: float = 5.0
    # 0 gap: the objective's transition term is ~1e-3 and must not be lost to a MIP gap.
    gap_abs: float = 1e-9
    #: HiGHS only: first try :func:`screen`, which returns the MILP's own plan without running it when that plan
    #: is provably one variant alone; False runs the MILP every time (the tests compare the two).
    screen: bool = True

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise BadInput(f"--solver: must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if not self.time_limit_s > 0:
            raise BadInput(f"--time-limit: must be > 0 seconds, got {self.time_limit_s}")


@dataclass(frozen=True)
class Result:
    """A solved plan plus how it was found."""

    plan: Plan
    solver: str
    status: str  # optimal | time-limit | infeasible-load
    solve_s: float
    warnings: tuple[str, ...] = field(default=())
    #: ``other_set(names)``: the best plan whose running variants are not ``names`` (``explain``'s runner-up),
    #: re-run on this solve's own HiGHS model with the no-good cut (no model built again); None when
    #: the solve kept no model (CBC, enumeration, an infeasible load): then ``solve(..., exclude_set=...)``.
    other_set: Callable[[frozenset[str]], Plan | None] | None = field(default=None, compare=False, repr=False)


def objective_value(
    profile: Profile, shares: Mapping[str, float], cores: Mapping[str, float], current: Mapping[str, float]
) -> float:
    """The objective of a candidate plan, computed directly (used to check every solver).

    With services, ``shares`` are of each service's forecast (less than 1 in all where it sheds) and each
    accuracy counts its service's weight."""
    acc = sum(s * profile.variant(n).accuracy * _weight(profile, n) for n, s in shares.items())
    total = sum(cores.values())
    return acc - profile.alpha * total / profile.budget_cores - profile.beta * transition_penalty(
        profile, cores, current
    )


def _weight(profile: Profile, name: str) -> float:
    svc = profile.service_of(name) if profile.services else ""
    return profile.service(svc).weight if svc else 1.0


def transition_penalty(profile: Profile, cores: Mapping[str, float], current: Mapping[str, float]) -> float:
    """Longest load time among variants that start or change cores, over the longest of all."""
    top = profile.max_load_time_s
    if top <= 0:
        return 0.0
    worst = 0.0
    for name, c in cores.items():
        if c > 0 and abs(current.get(name, 0.0) - c) > 1e-9:
            worst = max(worst, profile.variant(name).load_time_s)
    return worst / top


def solve(
    profile: Profile,
    load_rps: float,
    current: Mapping[str, float] | None = None,
    options: Options | None = None,
    exclude_set: frozenset[str] | None = None,
    loads: Mapping[str, float] | None = None,
) -> Result:
    """Solve the plan for ``load_rps``; never raises for an infeasible load (see module doc).

    ``exclude_set``: the best plan whose set of running variants is NOT this one (``explain``'s runner-up;
    one more constraint). When no other set serves the load the result is marked ``infeasible-load``.

    ``loads``: with a multi-service profile, the forecast of every service (req/s by service name);
    ``load_rps`` is then ignored. Without services it must be None.
    """
    options = options or Options()
    current = dict(current or {})
    unknown = sorted(set(current) - set(profile.names))
    if unknown:
        raise BadInput(f"--current: unknown variant {unknown[0]!r}, expected one of {', '.join(profile.names)}")
    if profile.services:
        return _solve_services(profile, _service_loads(profile, loads), current, options, exclude_set)
    if loads is not None:
        raise BadInput("--load: this profile has no services:, give one number of req/s")
    if math.isnan(load_rps) or load_rps < 0:
        raise BadInput(f"--load: must be a number >= 0 req/s, got {load_rps}")
    started = time.perf_counter()
    if options.solver == "exhaustive":
        result = _solve_exhaustive(profile, load_rps, current, exclude_set)
    elif (options.screen and options.solver == "highs" and exclude_set is None
          and (plan := screen(profile, load_rps, current)) is not None):
        # explain's runner-up is searched on the model the MILP would have solved: it is built (and solved,
        # for the same starting point) only when asked for.
        result = Result(plan, "highs", "optimal", 0.0, (),
                        functools.partial(_other_set_of_table, profile, load_rps, dict(current), options))
    else:
        result = _solve_milp(profile, load_rps, current, options, exclude_set)
    return Result(result.plan, result.solver, result.status, time.perf_counter() - started, result.warnings,
                  result.other_set)


# -- MILP -------------------------------------------------------------------------------------------
@functools.cache
def _silence_highs_banner() -> None:
    """HiGHS prints a banner on stdout at its first instance in a process; ``--json`` must print
    nothing but JSON, so the first instance is made with stdout pointed at /dev/null."""
    try:
        import highspy
    except ImportError:
        return
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        highspy.Highs()
        libc.fflush(None)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _pulp_solver(options: Options, time_limit_s: float) -> tuple[pulp.LpSolver, str]:
    if options.solver == "highs":
        _silence_highs_banner()
        highs = pulp.HiGHS(msg=False, timeLimit=time_limit_s, gapRel=0.0, gapAbs=options.gap_abs, threads=1,
                           **HIGHS_OPTIONS)
        if highs.available():
            return highs, "highs"
    with warnings.catch_warnings():
        # PuLP 3.x deprecates its bundled CBC in favour of a separate package; it still works.
        warnings.simplefilter("ignore", DeprecationWarning)
        # CBC's default objective increment prunes nodes that improve by less than ~1e-5: too coarse
        # for the transition term (bench/solver.py found one load off by 1.5e-6 without this).
        cbc = pulp.PULP_CBC_CMD(msg=False, timeLimit=max(1, math.ceil(time_limit_s)), gapRel=0.0,
                                gapAbs=options.gap_abs, options=[f"increment {options.gap_abs:g}"])
    if cbc.available():
        return cbc, "cbc"
    raise BadInput("--solver: neither HiGHS (pip install highspy) nor CBC is available")


def _run_from(start: Mapping[pulp.LpVariable, float], lp: pulp.LpProblem) -> None:
    """Run HiGHS on ``lp`` from a starting solution (a MIP start, its columns by PuLP variable): the search
    prunes with its objective from the first node. HiGHS drops a start that breaks a row and searches as
    without one."""
    set_start(lp.solverModel, start)
    lp.solverModel.run()


def set_start(h: Any, start: Mapping[pulp.LpVariable, float]) -> None:
    """Give a built HiGHS model (``highspy.Highs``) a starting solution, its columns by PuLP variable."""
    import numpy as np

    h.setSolution(len(start), np.fromiter((v.index for v in start), dtype=np.int32, count=len(start)),
                  np.fromiter(start.values(), dtype=np.float64, count=len(start)))


def services_start(profile: Profile, loads: Mapping[str, float], groups: tuple[_Group, ...],
                   opts: Mapping[str, list[tuple[float, float]]]) -> tuple[dict[str, float], dict[str, float]] | None:
    """The decomposition's plan for one program of the relaxations (its floors as the program holds them),
    the joint solve's start; None when the program sheds or the decomposition finds nothing."""
    if any(g.shed != "none" for g in groups):
        return None
    return decomposed(profile, loads, {g.name: g.floor for g in groups}, _penalty(profile), opts)


def _solve_milp(profile: Profile, load: float, current: Mapping[str, float], options: Options,
                exclude_set: frozenset[str] | None = None) -> Result:
    # Replicas (profile.max_pod_cores) make capacity piecewise in cores: the option model handles it.
    prob, extract, runs = _model(profile, (_Group("", profile.names, load),), current)
    if exclude_set is not None:
        # A no-good cut: at least one variant of the set stops or one outside it starts.
        inside = [runs[n] for n in profile.names if n in exclude_set]
        outside = [runs[n] for n in profile.names if n not in exclude_set]
        prob += pulp.lpSum(inside) - pulp.lpSum(outside) <= len(inside) - 1, "other_variant_set"
    solver, name = _pulp_solver(options, options.time_limit_s)
    prob.solve(solver)
    if prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        cores, shares = extract()
        plan = _make_plan(profile, load, current, cores, shares, feasible=True)
        status = "optimal" if prob.sol_status == pulp.LpSolutionOptimal else "time-limit"
        notes = () if status == "optimal" else (f"{name} hit the {options.time_limit_s:g} s limit: best plan found",)
        if notes:
            plan = Plan(plan.allocations, plan.load_rps, True, plan.objective, plan.accuracy, False, notes)
        other = None
        if name == "highs" and exclude_set is None and status == "optimal":
            # Read off the screen's table where there is one (the same best other set, no second search).
            other = (functools.partial(_other_set_of_table, profile, load, dict(current), options)
                     if options.screen and load > 0 and _table_of(profile) is not None
                     else functools.partial(_other_set, profile, load, dict(current), prob, extract, runs))
        return Result(plan, name, status, 0.0, notes, other)
    if exclude_set is not None:
        return Result(Plan((), load, feasible=False), name, "infeasible-load", 0.0,
                      ("no other variant set serves the load",))
    return _max_capacity(profile, load, current, options)


@dataclass(frozen=True)
class _Group:
    """One service's part of the program: its variants, its load and how its rules hold this solve.

    ``floor``: "hard" (a constraint), "soft" (may give way, at a penalty far above any objective gain),
    "off"; ``shed``: "none" (all its load is served), "soft" (it may serve less, at such a penalty), "all"
    (it gets nothing this solve). One service: weight 1, no floor, no shedding: today's program."""

    name: str
    names: tuple[str, ...]
    load: float
    weight: float = 1.0
    floor_value: float | None = None
    floor: str = "off"
    shed: str = "none"


def _model(profile: Profile, groups: tuple[_Group, ...], current: Mapping[str, float]
           ) -> tuple[pulp.LpProblem, Extract, Runs]:
    return (_compact_model if _is_compact(profile) else _option_model)(profile, groups, current)


def _is_compact(profile: Profile) -> bool:
    """Whether the program is :func:`_compact_model` (else :func:`_option_model`)."""
    # Replicas (profile.max_pod_cores) make capacity piecewise in cores: the option model handles it.
    return all(isinstance(v.capacity, LinearCapacity) for v in profile.variants) and not profile.splits_pods


def _penalty(profile: Profile) -> float:
    """Cost of one unit of floor slack or shed share: more than the whole objective can gain."""
    weights = sum(s.weight for s in profile.services or ())
    return 100.0 * (1.0 + weights + profile.alpha + profile.beta)


def _group_rules(prob: pulp.LpProblem, profile: Profile, groups: tuple[_Group, ...], s: Mapping[str, pulp.LpVariable],
                 runs: Mapping[str, pulp.LpAffineExpression | pulp.LpVariable], obj: dict[pulp.LpVariable, float]
                 ) -> dict[str, pulp.LpVariable]:
    """Per group: shares (plus what it sheds) sum to 1, one of its variants runs, its floor. Adds the
    penalties to ``obj``; returns the shed variables. One group without rules: today's two constraints."""
    sheds: dict[str, pulp.LpVariable] = {}
    prob.slacks = {}  # type: ignore[attr-defined]
    for g in groups:
        tag = f"_{g.name}" if g.name else ""
        if g.shed == "all":
            continue
        shares = dict.fromkeys((s[n] for n in g.names), 1.0)
        if g.shed == "soft":
            sheds[g.name] = prob.add_variable(f"shed{tag}", 0, 1)
            shares[sheds[g.name]] = 1.0
            obj[sheds[g.name]] = -_penalty(profile)
        prob += _expr(shares) == 1, f"shares{tag}"
        terms: dict[pulp.LpVariable, float] = {}
        for n in g.names:
            terms.update({v: terms.get(v, 0.0) + c for v, c in pulp.LpAffineExpression(runs[n]).items()})
        prob += _expr(terms) >= 1, f"one_runs{tag}"
        if g.floor != "off" and g.floor_value is not None:
            # sum_v s_v * (acc_v - floor) >= 0: the served traffic's accuracy is at least the floor.
            floor = {s[n]: profile.variant(n).accuracy - g.floor_value for n in g.names}
            if g.floor == "soft":
                slack = prob.add_variable(f"floor_slack{tag}", 0, 1)
                prob.slacks[g.name] = slack  # type: ignore[attr-defined]
                floor[slack] = 1.0
                obj[slack] = -_penalty(profile)
            prob += _expr(floor) >= 0, f"floor{tag}"
    return sheds


def _group_of(groups: tuple[_Group, ...]) -> dict[str, _Group]:
    return {n: g for g in groups for n in g.names}


def _other_set(profile: Profile, load: float, current: Mapping[str, float], prob: pulp.LpProblem, extract: Extract,
               runs: Runs, names: frozenset[str]) -> Plan | None:
    """:attr:`Result.other_set`: the solved HiGHS model plus the no-good cut on ``names`` (the same row as
    ``exclude_set``), run again, then the row is removed so the model is as solved. None when no other set
    serves the load. It saves the model build, not the search: p50 3.2 vs 3.8 ms for a fresh
    ``solve(..., exclude_set=...)`` on the paper profile, loads 1..397 (load average 3 on 2 cores); without
    presolve the search took longer than the build saved."""
    import highspy

    h = prob.solverModel
    coef: dict[int, float] = {}
    for n in profile.names:
        sign = 1.0 if n in names else -1.0
        expr = runs[n]
        for var, c in (expr.items() if isinstance(expr, pulp.LpAffineExpression) else ((expr, 1.0),)):
            coef[var.index] = coef.get(var.index, 0.0) + sign * c
    inside = sum(1 for n in profile.names if n in names)
    row = h.getNumRow()
    h.addRow(-highspy.kHighsInf, inside - 1.0, len(coef), list(coef), list(coef.values()))
    try:
        h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return None
        values = h.getSolution().col_value
        for var in prob.variables():
            var.varValue = values[var.index]
        cores, shares = extract()
    finally:
        h.deleteRows(1, [row])
    if not cores:
        return None
    return _make_plan(profile, load, current, cores, shares, feasible=True)


def _other_set_later(profile: Profile, load: float, current: Mapping[str, float], options: Options,
                     names: frozenset[str]) -> Plan | None:
    """:attr:`Result.other_set` of a screened plan: the MILP the screen stood in for, solved, then its own
    :func:`_other_set` (so explain's runner-up is the one it was before the screen)."""
    other = _solve_milp(profile, load, current, replace(options, screen=False)).other_set  # the MILP's own
    return other(names) if other is not None else None


def _other_set_of_table(profile: Profile, load: float, current: Mapping[str, float], options: Options,
                        names: frozenset[str]) -> Plan | None:
    """:attr:`Result.other_set` of a one-service plan (screened or the MILP's) at a load > 0: the best plan whose
    running variants are not ``names``, read off the screen's table (every plan of the profile, each scored as
    :func:`_solve_exhaustive` scores it: shares filled most accurate first, :func:`objective_value`) instead
    of a solve with the no-good cut: the same objective (``tests/test_solver.py``), ~1 ms against 4-10 ms.
    None when no other set serves the load. A plan past the compact model's step bound
    (:func:`_useful_steps`), which the MILP could not pick, goes to the MILP instead."""
    import numpy as np

    tab = _table_of(profile)
    if tab is None:
        return _other_set_later(profile, load, current, options, names)
    # Only the plans that can serve the load are scored (a superset: the exact test is on their shares).
    chosen = sum(1 << j for j, n in enumerate(tab.names) if n in names)
    rows = np.flatnonzero((tab.total >= load * (1 - 1e-6)) & (tab.variant_set != chosen))
    take = np.clip(load - tab.ahead[rows], 0.0, tab.capacity[rows]) / load  # the screen plans only loads > 0
    value = (take @ tab.accuracy) - tab.cost[rows] - tab.transition(current, profile.beta)[rows]
    value[take.sum(axis=1) < 1 - 1e-9] = -np.inf
    if not rows.size or not np.isfinite(value[i := int(np.argmax(value))]):
        return None
    best = int(rows[i])
    running, take = tab.cores[best] > 0, take[i]
    cores = {n: float(tab.cores[best, j]) for j, n in enumerate(tab.names) if running[j]}
    if _is_compact(profile):
        n_max = math.floor((profile.budget_cores - profile.min_cores) / profile.core_step + _EPS)
        if any(round((k - profile.min_cores) / profile.core_step)
               > _useful_steps(profile, n, load, current.get(n, 0.0), n_max) for n, k in cores.items()):
            return _other_set_later(profile, load, current, options, names)
    shares = {n: float(take[j]) for j, n in enumerate(tab.names) if running[j]}
    return _make_plan(profile, load, current, cores, shares, feasible=True)


Extract = Callable[[], tuple[dict[str, float], dict[str, float]]]
#: Per variant, the expression that is 1 when it runs (the no-good cut of ``exclude_set`` uses it).
Runs = Mapping[str, pulp.LpAffineExpression | pulp.LpVariable]


def _expr(terms: Mapping[pulp.LpVariable, float]) -> pulp.LpAffineExpression:
    # Building from a dict is several times faster than lpSum over products.
    return pulp.LpAffineExpression(terms)


def _compact_model(
    profile: Profile, groups: tuple[_Group, ...], current: Mapping[str, float]
) -> tuple[pulp.LpProblem, Extract, Runs]:
    """Linear capacity models: per variant a run binary, an integer number of core steps above the
    minimum, a share and a changed binary. About 5 integers a variant instead of one binary per core
    count, which keeps HiGHS's search short (see bench/solver.py)."""
    mn, st, budget = profile.min_cores, profile.core_step, profile.budget_cores
    n_max = math.floor((budget - mn) / st + _EPS)
    top = profile.max_load_time_s
    prob = pulp.LpProblem("infadapter", pulp.LpMaximize)
    run = {n: prob.add_variable(f"run_{j}", cat=pulp.LpBinary) for j, n in enumerate(profile.names)}
    group = _group_of(groups)
    # More steps than needed to serve the whole load alone only add cost, unless they keep the
    # current size (no transition): tighter bounds make a much smaller search tree.
    ub = {n: _useful_steps(profile, n, group[n].load, current.get(n, 0.0), n_max) for n in profile.names}
    steps = {n: prob.add_variable(f"steps_{j}", 0, ub[n], cat=pulp.LpInteger) for j, n in enumerate(profile.names)}
    s = {n: prob.add_variable(f"s_{j}", 0, 1) for j, n in enumerate(profile.names)}
    ch = {n: prob.add_variable(f"changed_{j}", cat=pulp.LpBinary) for j, n in enumerate(profile.names)}
    t = prob.add_variable("transition", 0, 1)
    for n in profile.names:
        if group[n].shed == "all":
            run[n].upBound = 0
            s[n].upBound = 0
    cores = {**{run[n]: mn for n in run}, **{steps[n]: st for n in steps}}
    obj = {s[n]: profile.variant(n).accuracy * group[n].weight for n in s}
    obj.update({v: -profile.alpha / budget * c for v, c in cores.items()})
    obj[t] = -profile.beta
    prob += _expr(cores) <= budget + _EPS, "budget"
    sheds = _group_rules(prob, profile, groups, s, run, obj)
    prob.setObjective(_expr(obj))
    for n in profile.names:
        load = group[n].load
        cap = profile.variant(n).capacity
        a, b = cap.safety * cap.slope, cap.safety * cap.intercept  # type: ignore[union-attr]
        at_min = a * mn + b
        prob += _expr({steps[n]: 1.0, run[n]: -float(ub[n])}) <= 0, f"steps_only_if_running_{n}"
        prob += _expr({s[n]: 1.0, run[n]: -1.0}) <= 0, f"share_only_if_running_{n}"
        prob += _expr({s[n]: load, run[n]: -at_min, steps[n]: -a * st}) <= 0, f"capacity_{n}"
        prob += _expr({run[n]: at_min, steps[n]: a * st}) >= 0, f"capacity_not_negative_{n}"
        c0 = current.get(n, 0.0)
        if c0 <= 0:
            prob += _expr({ch[n]: 1.0, run[n]: -1.0}) >= 0, f"starts_{n}"
        else:
            n0 = (c0 - mn) / st
            big = n_max + 1 + abs(n0)
            prob += _expr({steps[n]: 1.0, ch[n]: -big}) <= n0, f"grows_{n}"
            prob += _expr({steps[n]: -1.0, ch[n]: -big, run[n]: big}) <= big - n0, f"shrinks_{n}"
        lt = profile.variant(n).load_time_s / top if top > 0 else 0.0
        if lt > 0:
            prob += _expr({ch[n]: lt, t: -1.0}) <= 0, f"transition_{n}"

    def extract() -> tuple[dict[str, float], dict[str, float]]:
        chosen = {
            n: round(mn + st * round(steps[n].value() or 0.0), 9) for n in run if (run[n].value() or 0.0) > 0.5
        }
        return chosen, {n: max(0.0, s[n].value() or 0.0) for n in chosen}

    def start(chosen: Mapping[str, float], shares: Mapping[str, float]) -> dict[pulp.LpVariable, float]:
        out: dict[pulp.LpVariable, float] = {}
        for n in run:
            c = chosen.get(n, 0.0)
            out[run[n]] = 1.0 if c > 0 else 0.0
            out[steps[n]] = float(round((c - mn) / st)) if c > 0 else 0.0
            out[s[n]] = float(shares.get(n, 0.0)) if c > 0 else 0.0
        return out

    prob.sheds = sheds  # type: ignore[attr-defined]
    prob.start = start  # type: ignore[attr-defined]
    prob.cores_of = {n: {run[n]: mn, steps[n]: st} for n in run}  # type: ignore[attr-defined]
    return prob, extract, run


def _useful_steps(profile: Profile, name: str, load: float, current_cores: float, n_max: int) -> int:
    """The most core steps above the minimum that can be part of an optimal plan for ``name``."""
    cap = profile.variant(name).capacity
    a, b = cap.safety * cap.slope, cap.safety * cap.intercept  # type: ignore[union-attr]
    need = 0 if a <= 0 else math.ceil(((load - b) / a - profile.min_cores) / profile.core_step - 1e-9)
    keep = round((current_cores - profile.min_cores) / profile.core_step) if current_cores > 0 else 0
    return max(0, min(n_max, max(need, keep)))


def _useful_options(choices: list[tuple[float, float]], load: float, current_cores: float
                    ) -> list[tuple[float, float]]:
    """The core options of one variant that can be part of an optimal plan (the option model's counterpart of
    :func:`_useful_steps`): those that serve a larger share of ``load`` than every smaller option, and the
    variant's current core count. Any other option is dominated by a smaller one that serves as much: the
    same shares stay feasible on fewer cores (less cost, less of the budget), the variant runs either way,
    and the transition term only asks whether the cores changed (the current count is kept). With pod fit
    this drops the options above what the load needs, most of the 63 per variant at 64 cores."""
    out: list[tuple[float, float]] = []
    best = -1.0
    for k, cap in choices:
        share = _share_cap(cap, load)
        if share > best + 1e-12 or abs(k - current_cores) <= 1e-9:
            out.append((k, cap))
            best = max(best, share)
    return out


def _option_binaries(
    prob: pulp.LpProblem, opts: Mapping[str, list[tuple[float, float]]]
) -> dict[tuple[str, int], pulp.LpVariable]:
    """One binary per (variant, index of its core option): 1 when the variant runs on that option."""
    return {
        (n, i): prob.add_variable(f"y_{j}_{i}", cat=pulp.LpBinary)
        for j, (n, choices) in enumerate(opts.items())
        for i in range(len(choices))
    }


def _option_model(
    profile: Profile, groups: tuple[_Group, ...], current: Mapping[str, float]
) -> tuple[pulp.LpProblem, Extract, Runs]:
    """Any capacity model: one binary per (variant, core count)."""
    group = _group_of(groups)
    opts = {n: ([] if group[n].shed == "all" else _useful_options(ch, group[n].load, current.get(n, 0.0)))
            for n, ch in variant_options(profile).items()}
    prob = pulp.LpProblem("infadapter", pulp.LpMaximize)
    y = _option_binaries(prob, opts)
    s = {n: prob.add_variable(f"s_{j}", 0, 1) for j, n in enumerate(opts)}
    t = prob.add_variable("transition", 0, 1)
    top = profile.max_load_time_s
    for n in opts:
        if group[n].shed == "all":
            s[n].upBound = 0
    cores = {y[n, i]: k for n, ch in opts.items() for i, (k, _) in enumerate(ch)}
    obj = {s[n]: profile.variant(n).accuracy * group[n].weight for n in opts}
    obj.update({v: -profile.alpha / profile.budget_cores * k for v, k in cores.items()})
    obj[t] = -profile.beta
    runs = {n: _expr({y[n, i]: 1.0 for i in range(len(ch))}) for n, ch in opts.items()}
    prob += _expr(cores) <= profile.budget_cores + _EPS, "budget"
    sheds = _group_rules(prob, profile, groups, s, runs, obj)
    prob.setObjective(_expr(obj))
    for n, ch in opts.items():
        load = group[n].load
        if not ch:
            s[n].upBound = 0  # no core count serves anything with it: it takes no traffic
            continue
        prob += _expr({y[n, i]: 1.0 for i in range(len(ch))}) <= 1, f"one_size_{n}"
        # s_v * L <= capacity and s_v <= 1, option by option (the tighter of the two per option).
        terms = {y[n, i]: -_share_cap(cap, load) for i, (_, cap) in enumerate(ch)}
        prob += _expr({s[n]: 1.0, **terms}) <= 0, f"capacity_{n}"
        lt = profile.variant(n).load_time_s / top if top > 0 else 0.0
        changed = {y[n, i]: lt for i, (k, _) in enumerate(ch) if abs(current.get(n, 0.0) - k) > 1e-9}
        if lt > 0 and changed:
            prob += _expr({**changed, t: -1.0}) <= 0, f"transition_{n}"

    def extract() -> tuple[dict[str, float], dict[str, float]]:
        chosen = {n: opts[n][i][0] for (n, i), var in y.items() if (var.value() or 0.0) > 0.5}
        return chosen, {n: max(0.0, s[n].value() or 0.0) for n in chosen}

    def start(chosen: Mapping[str, float], shares: Mapping[str, float]) -> dict[pulp.LpVariable, float]:
        out: dict[pulp.LpVariable, float] = {}
        for (n, i), var in y.items():
            out[var] = 1.0 if n in chosen and abs(opts[n][i][0] - chosen[n]) <= 1e-9 else 0.0
        for n in opts:
            out[s[n]] = float(shares.get(n, 0.0)) if n in chosen else 0.0
        return out

    prob.sheds = sheds  # type: ignore[attr-defined]
    prob.start = start  # type: ignore[attr-defined]
    prob.cores_of = {n: {y[n, i]: k for i, (k, _) in enumerate(ch)} for n, ch in opts.items()}  # type: ignore[attr-defined]
    return prob, extract, runs


def _share_cap(capacity_rps: float, load: float) -> float:
    """The largest share of ``load`` that ``capacity_rps`` serves (1 at load 0)."""
    return 1.0 if load <= 0 else min(1.0, capacity_rps / load)


def _max_capacity(profile: Profile, load: float, current: Mapping[str, float], options: Options) -> Result:
    """The plan with the most capacity (fewest cores among those), for loads nothing can serve."""
    opts = variant_options(profile)
    prob = pulp.LpProblem("infadapter_max_capacity", pulp.LpMaximize)
    y = _option_binaries(prob, opts)
    cap_expr = pulp.lpSum(cap * y[n, i] for n, ch in opts.items() for i, (_, cap) in enumerate(ch))
    cores_expr = pulp.lpSum(k * y[n, i] for n, ch in opts.items() for i, (k, _) in enumerate(ch))
    acc_expr = pulp.lpSum(profile.variant(n).accuracy * y[n, i] for n, ch in opts.items() for i in range(len(ch)))
    # Lexicographic by weights: capacity first, then fewer cores, then accuracy.
    prob += cap_expr - 1e-4 * cores_expr + 1e-6 * acc_expr
    prob += cores_expr <= profile.budget_cores + _EPS
    for n, ch in opts.items():
        prob += pulp.lpSum(y[n, i] for i in range(len(ch))) <= 1
    solver, name = _pulp_solver(options, options.time_limit_s)
    prob.solve(solver)
    cores = {n: opts[n][i][0] for (n, i), var in y.items() if (var.value() or 0) > 0.5}
    if not cores:
        # No variant has a non-negative capacity anywhere on the grid: run the fastest at min cores.
        best = max(profile.variants, key=lambda v: v.capacity.rps(profile.min_cores))
        cores = {best.name: profile.min_cores}
    caps = {n: max(profile.capacity_rps(n, c), 0.0) for n, c in cores.items()}
    total = sum(caps.values())
    shares = {n: (caps[n] / total if total > 0 else 1.0 / len(cores)) for n in cores}
    warning = (
        f"load {load:g} req/s exceeds the most the budget of {profile.budget_cores:g} cores can serve "
        f"({total:.1f} req/s): planned the highest-capacity mix"
    )
    plan = _make_plan(profile, load, current, cores, shares, feasible=False, notes=(warning,))
    return Result(plan, name, "infeasible-load", 0.0, (warning,))


def _make_plan(
    profile: Profile,
    load: float,
    current: Mapping[str, float],
    cores: Mapping[str, float],
    shares: Mapping[str, float],
    feasible: bool,
    notes: tuple[str, ...] = (),
) -> Plan:
    total = sum(shares.values())
    shares = {n: (v / total if total > 0 else 1.0 / len(shares)) for n, v in shares.items()}
    order = sorted(cores, key=profile.names.index)
    allocs = tuple(Allocation(n, cores[n], shares[n], profile.capacity_rps(n, cores[n])) for n in order)
    acc = sum(shares[n] * profile.variant(n).accuracy for n in cores)
    obj = objective_value(profile, shares, cores, current)
    return Plan(allocs, load, feasible=feasible, objective=obj, accuracy=acc, notes=notes)


# -- exhaustive enumeration (the reference the MILP is tested against) --------------------------
def _assignments(opts: Mapping[str, list[tuple[float, float]]], budget: float) -> Iterator[dict[str, float]]:
    names = list(opts)

    def rec(i: int, left: float, acc: dict[str, float]) -> Iterator[dict[str, float]]:
        if i == len(names):
            yield dict(acc)
            return
        yield from rec(i + 1, left, acc)
        for k, _ in opts[names[i]]:
            if k <= left + _EPS:
                acc[names[i]] = k
                yield from rec(i + 1, left - k, acc)
                del acc[names[i]]

    yield from rec(0, budget, {})


def _count_assignments(opts: Mapping[str, list[tuple[float, float]]], budget: float, stop: int) -> int:
    """How many plans :func:`_assignments` yields, counted by cores left (a dynamic program, not a walk); past
    ``stop`` it returns as soon as it knows."""
    left: dict[float, int] = {round(budget, 9): 1}
    for choices in opts.values():
        nxt = dict(left)
        for rest, ways in left.items():
            for k, _ in choices:
                if k <= rest + _EPS:
                    r = round(rest - k, 9)
                    nxt[r] = nxt.get(r, 0) + ways
        left = nxt
        if sum(left.values()) > stop:
            return sum(left.values())
    return sum(left.values())


def _solve_exhaustive(profile: Profile, load: float, current: Mapping[str, float],
                      exclude_set: frozenset[str] | None = None) -> Result:
    opts = variant_options(profile)
    best: tuple[float, dict[str, float], dict[str, float]] | None = None
    for cores in _assignments(opts, profile.budget_cores):
        if not cores or (exclude_set is not None and set(cores) == exclude_set):
            continue
        shares = greedy_shares(profile, load, cores)
        if shares is None:
            continue
        obj = objective_value(profile, shares, cores, current)
        if best is None or obj > best[0] + 1e-12:
            best = (obj, cores, shares)
    if best is None:
        if exclude_set is not None:
            return Result(Plan((), load, feasible=False), "exhaustive", "infeasible-load", 0.0,
                          ("no other variant set serves the load",))
        return _max_capacity(profile, load, current, Options())
    plan = _make_plan(profile, load, current, best[1], best[2], feasible=True)
    return Result(plan, "exhaustive", "optimal", 0.0)



# -- the screen: the MILP's plan without the MILP, where it is provably one variant alone ----------------
#: How far past an exact bound a plan HiGHS returns may be, judged generously: HiGHS accepts rows violated by
#: up to its feasibility tolerance (1e-7, on scaled rows) and closes the gap to 1e-9, so the screen counts a
#: plan as a rival when it serves the load with every capacity raised by this share plus this many req/s ...
SCREEN_SLACK = 1e-6
#: ... and gives up (the MILP decides) unless its plan beats every rival by more than this. A core costs
#: alpha / budget (0.0025 on the paper profile) and a transition beta x load-time share (~1e-4): real
#: differences are far larger, so only true near-ties go to the MILP.
SCREEN_MARGIN = 1e-6


@dataclass(frozen=True)
class _Table:
    """Every plan of a one-service profile (each variant off or on a core count of its grid, within the
    budget: :func:`_assignments`) as arrays, the variants in order of accuracy (most accurate first), the plans
    in order of :attr:`bound`, highest first. What does not depend on the load is computed once; ``_slack``:
    with every capacity raised by :data:`SCREEN_SLACK`."""

    names: tuple[str, ...]
    accuracy: Any  # (V,) accuracy
    load_time: Any  # (V,) load time over the longest (0 when no variant loads)
    cores: Any  # (N, V) cores, 0 = off
    capacity: Any  # (N, V) capacity, req/s (0 = off)
    ahead: Any  # (N, V) capacity of the more accurate variants of the plan
    variant_set: Any  # (N,) the running variants as bits (bit j: column j runs)
    total: Any  # (N,) capacity of the plan
    total_slack: Any
    #: (N,) the most capacity ahead of one of the plan's variants: at a load no more than this, a variant of the
    #: plan gets no traffic, and the plan without it is worth more
    ahead_slack: Any
    #: (N,) where every variant gets traffic, all but the least accurate are full: accuracy x capacity summed
    #: over those, the capacity ahead of the least accurate and its accuracy
    head_slack: Any
    last_before_slack: Any
    last_accuracy: Any
    cost: Any  # (N,) alpha x cores / budget
    bound: Any  # (N,) the most the plan's objective can be: its best accuracy minus its cost
    singles: Any  # indexes of the plans of one variant alone, and that variant's column
    single_of: Any
    #: (N,) transition term of every plan by current cores (a run has a few dozen distinct current plans)
    transitions: dict[tuple[float, ...], Any] = field(default_factory=dict, compare=False)  # by (beta, cores...)

    def transition(self, current: Mapping[str, float], beta: float) -> Any:
        """beta x the transition penalty of every plan from ``current`` (:func:`transition_penalty`)."""
        import numpy as np

        key = (beta, *(float(current.get(n, 0.0)) for n in self.names))
        if key not in self.transitions:
            if len(self.transitions) >= 1024:
                self.transitions.clear()
            changed = (self.cores > 0) & (np.abs(self.cores - np.array(key[1:])) > 1e-9)
            self.transitions[key] = beta * (changed * self.load_time).max(axis=1)
        return self.transitions[key]


@functools.lru_cache(maxsize=16)
def _table(options: tuple[tuple[str, float, float, tuple[tuple[float, float], ...]], ...], budget: float,
           alpha: float) -> _Table:
    import numpy as np

    opts = {n: list(ch) for n, _, _, ch in options}
    caps = {n: dict(ch) for n, ch in opts.items()}
    names = tuple(n for n, *_ in options)
    accuracy = np.array([a for _, a, _, _ in options])
    rows = list(_assignments(opts, budget))
    cores = np.array([[r.get(n, 0.0) for n in names] for r in rows]).reshape(len(rows), len(names))
    capacity = np.array([[caps[n][r[n]] if n in r else 0.0 for n in names] for r in rows]).reshape(cores.shape)
    running = cores > 0
    cost = alpha * cores.sum(axis=1) / budget
    bound = np.where(running, accuracy, -np.inf).max(axis=1, initial=-np.inf) - cost
    order = np.argsort(-bound, kind="stable")
    cores, capacity, running, cost, bound = cores[order], capacity[order], running[order], cost[order], bound[order]
    slack = np.where(running, capacity * (1 + SCREEN_SLACK) + SCREEN_SLACK, 0.0)
    before = np.cumsum(slack, axis=1) - slack
    # The least accurate running variant: the last running column (0 for a plan of none; it serves nothing).
    last = running.shape[1] - 1 - running[:, ::-1].argmax(axis=1)
    at = np.arange(len(rows))
    head = (slack * accuracy).sum(axis=1) - slack[at, last] * accuracy[last]
    singles = np.flatnonzero(running.sum(axis=1) == 1)
    bits = (running * (1 << np.arange(len(names), dtype=np.int64))).sum(axis=1)
    return _Table(names, accuracy, np.array([t for _, _, t, _ in options]), cores, capacity,
                  np.cumsum(capacity, axis=1) - capacity, bits, capacity.sum(axis=1),
                  slack.sum(axis=1), np.where(running, before, 0.0).max(axis=1, initial=0.0), head, before[at, last],
                  accuracy[last], cost, bound, singles, running[singles].argmax(axis=1))


#: The last profiles' tables by identity (each held, so its id is not reused while it is here): a simulation asks
#: for one profile's table ~8,700 times, and its key (:func:`variant_options`) costs a fifth of a screen.
_TABLES: dict[int, tuple[Profile, _Table | None]] = {}
#: The most plans a table holds (the paper profile has 20,529: 2.5 MB of arrays a column); a profile with more
#: (20 variants on 200 cores has ~10^22) is not screened: every solve is the MILP's.
SCREEN_MAX_PLANS = 100_000


def _table_of(profile: Profile) -> _Table | None:
    held = _TABLES.get(id(profile))
    if held is not None and held[0] is profile:
        return held[1]
    opts = variant_options(profile)
    order = sorted(profile.names, key=lambda n: -profile.variant(n).accuracy)
    top = profile.max_load_time_s
    key = tuple((n, profile.variant(n).accuracy,
                 profile.variant(n).load_time_s / top if top > 0 else 0.0, tuple(opts[n])) for n in order)
    small = _count_assignments(opts, profile.budget_cores, SCREEN_MAX_PLANS) <= SCREEN_MAX_PLANS
    tab = _table(key, profile.budget_cores, profile.alpha) if small else None
    if len(_TABLES) >= 16:
        _TABLES.clear()
    _TABLES[id(profile)] = (profile, tab)
    return tab


def screen(profile: Profile, load: float, current: Mapping[str, float]) -> Plan | None:
    """The plan the one-service MILP returns, without running it, when that plan is one variant alone; else None.

    Plans are scored as :func:`objective_value` scores them: the best accuracy mix for their cores
    (:func:`greedy_shares`' rule: most accurate first), minus cost, minus transition. The best plan of one
    variant alone that serves the load is the answer when every other plan of the profile (numpy over
    :func:`_assignments`, cached per profile; only those whose best accuracy minus cost could reach it) falls
    short of it by more than :data:`SCREEN_MARGIN`, even judged with :data:`SCREEN_SLACK` (so a plan HiGHS
    could accept within its tolerances is counted): then the MILP can return no other integer choice, and as
    one variant gets all traffic (share 1.0 however HiGHS rounds its share: :func:`_make_plan` normalizes),
    the plan is the MILP's to the last bit. Mixes, near-ties, loads the budget cannot serve, load 0 and profiles
    where a core costs (next to) nothing (alpha x min_cores / budget <= the margin) go to the MILP (None). On a
    day of the paper trace 94 % of decisions are one variant alone."""
    import numpy as np

    if (profile.services or load <= 0 or not math.isfinite(load)
            or profile.alpha * profile.min_cores / profile.budget_cores <= SCREEN_MARGIN):
        return None  # (the last: a variant that gets no traffic must cost more than the margin, see below)
    tab = _table_of(profile)
    if tab is None:
        return None
    transition = tab.transition(current, profile.beta)
    serves = tab.total[tab.singles] >= load
    single, column = tab.singles[serves], tab.single_of[serves]
    if single.size == 0:
        return None
    value = tab.accuracy[column] - tab.cost[single] - transition[single]
    i = int(np.argmax(value))
    best, top_value = int(single[i]), float(value[i])
    # Rivals: the plans whose bound reaches the best single plan's value (the plans are in order of bound), that
    # may serve the load and give every variant of theirs traffic. A plan with a variant that gets none is worth
    # less than the plan without it by that variant's cost (at least alpha x min_cores / budget, more than the
    # margin: checked above), and that plan is a rival or bounded. In a rival all but its least accurate variant
    # are full (greedy_shares), so its value needs no per-variant arrays.
    cut = int(np.searchsorted(-tab.bound, -(top_value - SCREEN_MARGIN), side="right"))
    value = ((tab.head_slack[:cut] + tab.last_accuracy[:cut] * (load - tab.last_before_slack[:cut])) / load
             - tab.cost[:cut] - transition[:cut])
    rival = (tab.total_slack[:cut] >= load) & (tab.ahead_slack[:cut] < load) & (value > top_value - SCREEN_MARGIN)
    if best < cut:
        rival[best] = False
    if rival.any():
        return None
    v = int(column[i])
    name, cores = tab.names[v], float(tab.cores[best, v])
    if _is_compact(profile):
        # The compact model bounds each variant's steps (the option model holds every core count): a plan past
        # the bound is not the MILP's to pick.
        n_max = math.floor((profile.budget_cores - profile.min_cores) / profile.core_step + _EPS)
        if round((cores - profile.min_cores) / profile.core_step) > _useful_steps(
                profile, name, load, current.get(name, 0.0), n_max):
            return None
    return _make_plan(profile, load, current, {name: cores}, {name: 1.0}, feasible=True)


# -- several services: one program, and the order in which its rules give way -------------------------
def _service_loads(profile: Profile, loads: Mapping[str, float] | None) -> dict[str, float]:
    """Every service's forecast from ``loads``; BadInput naming a missing, unknown or bad one."""
    names = profile.service_names
    if loads is None:
        raise BadInput(f"--load: this profile has services; give NAME=RPS for each of {', '.join(names)}")
    unknown = sorted(set(loads) - set(names))
    if unknown:
        raise BadInput(f"--load: unknown service {unknown[0]!r}, expected {', '.join(names)}")
    missing = [n for n in names if n not in loads]
    if missing:
        raise BadInput(f"--load: no load for service {missing[0]!r}; give NAME=RPS for each of {', '.join(names)}")
    for n, v in loads.items():
        if math.isnan(v) or v < 0:
            raise BadInput(f"--load: {n}: must be a number >= 0 req/s, got {v}")
    return {n: float(loads[n]) for n in names}


def _relaxations(profile: Profile, loads: Mapping[str, float]) -> Iterator[tuple[_Group, ...]]:
    """The programs to try, in order, until one is feasible: every rule; then each floor gives way in
    reverse order of weight (the lowest weight's first: it gives up only what it must, those before it all);
    then, with no floors, the lowest-weight service sheds (the least it must), then it sheds everything
    and the next sheds, and so on. Ties in weight: the later service in the file gives way first."""
    services = profile.services or ()
    order = sorted(range(len(services)), key=lambda i: (services[i].weight, -i))  # lowest weight first
    ranked = [services[i] for i in order]

    def groups(floor: Mapping[str, str], shed: Mapping[str, str]) -> tuple[_Group, ...]:
        return tuple(
            _Group(s.name, tuple(s.qualified(v.name) for v in s.variants), loads[s.name], s.weight,
                   s.accuracy_floor, floor.get(s.name, "hard"), shed.get(s.name, "none"))
            for s in services
        )

    yield groups({}, {})
    floored = [s for s in ranked if s.accuracy_floor is not None]
    for i, s in enumerate(floored):
        yield groups({**{x.name: "off" for x in floored[:i]}, s.name: "soft"}, {})
    no_floors = {s.name: "off" for s in services}
    for i, s in enumerate(ranked):
        yield groups(no_floors, {**{x.name: "all" for x in ranked[:i]}, s.name: "soft"})


class _Fewest:
    """Which programs of the relaxations cannot be feasible, decided without searching them: services share
    only the budget, so a program is feasible exactly when the fewest cores each service needs under its
    rules there (:func:`fewest_cores`) add up to at most the budget. Each service's figure is computed once
    per rule, and only for programs the decomposition found no plan for (it finds one for most feasible ones)."""

    def __init__(self, profile: Profile, opts: Mapping[str, list[tuple[float, float]]]):
        self.profile, self.opts = profile, opts
        self.needed: dict[tuple[str, bool], float] = {}
        self.ladders: dict[str, list[float]] = {}  # most_capacity per service: load-independent, once a solve

    def _ladder(self, name: str) -> list[float]:
        if name not in self.ladders:
            self.ladders[name] = most_capacity(self.profile, name, self.opts)
        return self.ladders[name]

    def _need(self, g: _Group) -> float:
        if g.shed == "all":
            return 0.0
        if g.shed == "soft":  # it may serve nothing: one variant on its fewest cores
            return min((self.opts[n][0][0] for n in g.names if self.opts[n]), default=math.inf)
        floored = g.floor == "hard" and g.floor_value is not None
        if (g.name, floored) not in self.needed:
            _silence_highs_banner()
            self.needed[g.name, floored] = fewest_cores(self.profile, g.name, g.load,
                                                        g.floor_value if floored else None, self.opts,
                                                        None if floored else self._ladder(g.name))
        return self.needed[g.name, floored]

    def proves_infeasible(self, groups: tuple[_Group, ...]) -> bool:
        """True when ``groups`` cannot be feasible (False: it may be, so it is solved). The fewest cores without
        the floors (a table lookup) prove most overloaded programs infeasible before a floor's integer program
        is solved: a floor only raises a service's fewest cores."""
        unfloored = sum(self._need(replace(g, floor="off")) for g in groups)
        if unfloored > self.profile.budget_cores + _EPS:
            return True
        return sum(self._need(g) for g in groups) > self.profile.budget_cores + _EPS

    def bound(self, prob: pulp.LpProblem, groups: tuple[_Group, ...]) -> None:
        """Rows that every plan of ``groups`` meets, added to its program so that HiGHS's relaxation is tighter
        (they cut off only fractional points; the optimum is the same). Each service's cores are at least its
        fewest under its rules. A soft floor's shortfall and a soft shed are at least what the service's best
        plan leaves on the most cores the others leave it (the budget less their fewest): the penalty on
        those dwarfs the rest of the objective, so a loose relaxation of them made most of the search (on the
        10-service benchmark, 464 nodes and 1.7 s for a plan the decomposition had already found)."""
        need = {g.name: self._need(g) for g in groups}
        total = sum(need.values())
        for g in groups:
            if g.shed == "all" or not math.isfinite(need[g.name]):
                continue
            own = {v: c for n in g.names for v, c in prob.cores_of[n].items()}
            if need[g.name] > 0:
                prob += _expr(own) >= need[g.name] - 1e-6, f"fewest_cores_{g.name}"
            room = self.profile.budget_cores - (total - need[g.name])
            if g.floor == "soft" and g.floor_value is not None and g.name in prob.slacks:
                best = one_service(self.profile, g.name, g.load, self.opts, "accuracy", max_cores=room)
                if math.isfinite(best) and best < g.floor_value:
                    prob += _expr({prob.slacks[g.name]: 1.0}) >= g.floor_value - best - 1e-7, \
                        f"least_shortfall_{g.name}"
            if g.shed == "soft" and g.name in prob.sheds:
                served = most_served(self.profile, g.name, g.load, self.opts, room, self._ladder(g.name))
                if math.isfinite(served) and served < 1:
                    prob += _expr({prob.sheds[g.name]: 1.0}) >= 1 - served - 1e-7, f"least_shed_{g.name}"


def _solve_services(profile: Profile, loads: Mapping[str, float], current: Mapping[str, float], options: Options,
                    exclude_set: frozenset[str] | None) -> Result:
    if options.solver == "exhaustive":
        raise BadInput("--solver: exhaustive enumeration plans one service; use highs or cbc with services:")
    if exclude_set is not None:
        raise BadInput("explain: the runner-up plan is for one-service profiles")
    started = time.perf_counter()
    name = options.solver
    starts = True  # False once the decomposition found no plan even with every floor off
    opts = variant_options(profile)
    fewest = _Fewest(profile, opts)
    for groups in _relaxations(profile, loads):
        # The decomposition's plan as HiGHS's starting solution: the same optimum, found sooner.
        first = services_start(profile, loads, groups, opts) if name == "highs" and starts else None
        if name == "highs" and first is None and starts and all(g.floor == "hard" for g in groups):
            starts = decomposed(profile, loads, {g.name: "off" for g in groups}, opts=opts) is not None
        if first is None and fewest.proves_infeasible(groups):
            continue
        prob, extract, _ = _model(profile, groups, current)
        fewest.bound(prob, groups)
        solver, name = _pulp_solver(options, options.time_limit_s)
        if name == "highs":
            solver.optionsDict.update(HIGHS_SERVICES_OPTIONS)  # type: ignore[attr-defined]
            if first is not None:
                solver.callSolver = functools.partial(_run_from, prob.start(*first))  # type: ignore[attr-defined]
        prob.solve(solver)
        if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
            continue
        cores, shares = extract()
        plan = services_plan(profile, loads, current, cores, shares)
        status = "optimal" if prob.sol_status == pulp.LpSolutionOptimal else "time-limit"
        if status != "optimal":
            note = f"{name} hit the {options.time_limit_s:g} s limit: best plan found"
            plan = replace(plan, optimal=False, notes=(*plan.notes, note))
        return Result(plan, name, status if plan.feasible else "infeasible-load", time.perf_counter() - started,
                      plan.notes)
    # Unreachable while budget >= services x min_cores (Profile checks it): the last program sheds all but one.
    raise BadInput(f"budget_cores: {profile.budget_cores:g} cores cannot run one variant of each service")


def services_plan(profile: Profile, loads: Mapping[str, float], current: Mapping[str, float],
                   cores: Mapping[str, float], shares: Mapping[str, float]) -> Plan:
    """The plan of a multi-service solve: shares normalized per service (of what it serves), one outcome per
    service, a note for each service served less than its forecast or below its floor."""
    allocs: list[Allocation] = []
    outcomes: list[ServiceOutcome] = []
    notes: list[str] = []
    for svc in profile.services or ():
        names = [n for n in profile.service_variants(svc.name) if n in cores]
        load = loads[svc.name]
        served_share = min(1.0, sum(shares.get(n, 0.0) for n in names))
        # The solver's shares are of the forecast: what they add up to is the part served.
        served = load * served_share if served_share < 1 - 1e-9 else load
        total = sum(shares.get(n, 0.0) for n in names)
        acc = 0.0
        for n in names:
            share = shares.get(n, 0.0) / total if total > 0 else 1.0 / len(names)
            acc += share * profile.variant(n).accuracy
            allocs.append(Allocation(n, cores[n], share, profile.capacity_rps(n, cores[n]), svc.name))
        out = ServiceOutcome(svc.name, load, served, acc, svc.weight, svc.accuracy_floor)
        outcomes.append(out)
        if out.shed_rps > 1e-6:
            notes.append(f"service {svc.name}: served {served:.1f} of its {load:.1f} req/s forecast "
                         f"(short by {out.shed_rps:.1f} req/s, {out.shed_rps / load:.1%})")
        if not out.floor_met and names:
            notes.append(f"service {svc.name}: accuracy {acc:.4f} below its floor {svc.accuracy_floor:g} "
                         "(the budget cannot hold every floor at this load)")
    served_all = sum(o.served_rps for o in outcomes)
    running = [o for o in outcomes if any(a.service == o.name for a in allocs)]
    accuracy = (sum(o.served_rps * o.accuracy for o in outcomes) / served_all if served_all > 0
                else sum(o.accuracy for o in running) / max(1, len(running)))
    obj = objective_value(profile, {n: shares.get(n, 0.0) for n in cores}, cores, current)
    feasible = all(o.shed_rps <= 1e-6 for o in outcomes)
    return Plan(tuple(allocs), sum(loads.values()), feasible=feasible, objective=obj, accuracy=accuracy,
                notes=tuple(notes), services=tuple(outcomes))
