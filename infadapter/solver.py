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
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import pulp

from infadapter.errors import BadInput
from infadapter.plan import Allocation, Plan
from infadapter.profile import Profile

SOLVERS = ("highs", "cbc", "exhaustive")
_EPS = 1e-9


@dataclass(frozen=True)
class Options:
    """Solver settings."""

    solver: str = "highs"
    time_limit_s: float = 5.0
    # 0 gap: the objective's transition term is ~1e-3 and must not be lost to a MIP gap.
    gap_abs: float = 1e-9

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


def objective_value(
    profile: Profile, shares: Mapping[str, float], cores: Mapping[str, float], current: Mapping[str, float]
) -> float:
    """The objective of a candidate plan, computed directly (used to check every solver)."""
    acc = sum(s * profile.variant(n).accuracy for n, s in shares.items())
    total = sum(cores.values())
    return acc - profile.alpha * total / profile.budget_cores - profile.beta * transition_penalty(
        profile, cores, current
    )


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


def _options(profile: Profile) -> dict[str, list[tuple[float, float]]]:
    """(cores, capacity) choices per variant; a core count with negative capacity cannot run."""
    grid = profile.core_options()
    out: dict[str, list[tuple[float, float]]] = {}
    for v in profile.variants:
        out[v.name] = [(k, cap) for k in grid if (cap := v.capacity.rps(k)) >= 0]
    return out


def solve(
    profile: Profile,
    load_rps: float,
    current: Mapping[str, float] | None = None,
    options: Options | None = None,
) -> Result:
    """Solve the plan for ``load_rps``; never raises for an infeasible load (see module doc)."""
    options = options or Options()
    current = dict(current or {})
    if math.isnan(load_rps) or load_rps < 0:
        raise BadInput(f"--load: must be a number >= 0 req/s, got {load_rps}")
    unknown = sorted(set(current) - set(profile.names))
    if unknown:
        raise BadInput(f"--current: unknown variant {unknown[0]!r}, expected one of {', '.join(profile.names)}")
    started = time.perf_counter()
    if options.solver == "exhaustive":
        result = _solve_exhaustive(profile, load_rps, current)
    else:
        result = _solve_milp(profile, load_rps, current, options)
    return Result(result.plan, result.solver, result.status, time.perf_counter() - started, result.warnings)


# -- MILP -------------------------------------------------------------------------------------------
def _pulp_solver(options: Options, time_limit_s: float) -> tuple[pulp.LpSolver, str]:
    if options.solver == "highs":
        highs = pulp.HiGHS(msg=False, timeLimit=time_limit_s, gapRel=0.0, gapAbs=options.gap_abs, threads=1)
        if highs.available():
            return highs, "highs"
    cbc = pulp.PULP_CBC_CMD(msg=False, timeLimit=max(1, math.ceil(time_limit_s)), gapRel=0.0, gapAbs=options.gap_abs)
    if cbc.available():
        return cbc, "cbc"
    raise BadInput("--solver: neither HiGHS (pip install highspy) nor CBC is available")


def _solve_milp(profile: Profile, load: float, current: Mapping[str, float], options: Options) -> Result:
    opts = _options(profile)
    prob = pulp.LpProblem("infadapter", pulp.LpMaximize)
    y = {
        (n, i): pulp.LpVariable(f"y_{j}_{i}", cat=pulp.LpBinary)
        for j, (n, choices) in enumerate(opts.items())
        for i in range(len(choices))
    }
    s = {n: pulp.LpVariable(f"s_{j}", lowBound=0, upBound=1) for j, n in enumerate(opts)}
    t = pulp.LpVariable("transition", lowBound=0, upBound=1)
    top = profile.max_load_time_s
    cores_expr = pulp.lpSum(k * y[n, i] for n, ch in opts.items() for i, (k, _) in enumerate(ch))
    prob += (
        pulp.lpSum(profile.variant(n).accuracy * s[n] for n in opts)
        - (profile.alpha / profile.budget_cores) * cores_expr
        - profile.beta * t
    )
    prob += cores_expr <= profile.budget_cores + _EPS, "budget"
    prob += pulp.lpSum(s.values()) == 1, "shares"
    prob += pulp.lpSum(y.values()) >= 1, "one_runs"
    for n, ch in opts.items():
        runs = pulp.lpSum(y[n, i] for i in range(len(ch)))
        prob += runs <= 1, f"one_size_{n}"
        # s_v * L <= capacity and s_v <= 1 option by option: the LP relaxation's convex hull, which
        # is what keeps HiGHS's branch and bound short.
        prob += s[n] <= pulp.lpSum(_share_cap(cap, load) * y[n, i] for i, (_, cap) in enumerate(ch)), f"capacity_{n}"
        lt = profile.variant(n).load_time_s / top if top > 0 else 0.0
        changed = [y[n, i] for i, (k, _) in enumerate(ch) if abs(current.get(n, 0.0) - k) > 1e-9]
        if lt > 0 and changed:
            prob += t >= lt * pulp.lpSum(changed), f"transition_{n}"
    solver, name = _pulp_solver(options, options.time_limit_s)
    prob.solve(solver)
    if prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        cores = {n: k for (n, i), var in y.items() if (var.value() or 0) > 0.5 for k in [opts[n][i][0]]}
        shares = {n: max(0.0, s[n].value() or 0.0) for n in cores}
        plan = _make_plan(profile, load, current, cores, shares, feasible=True)
        status = "optimal" if prob.sol_status == pulp.LpSolutionOptimal else "time-limit"
        notes = () if status == "optimal" else (f"{name} hit the {options.time_limit_s:g} s limit: best plan found",)
        if notes:
            plan = Plan(plan.allocations, plan.load_rps, True, plan.objective, plan.accuracy, False, notes)
        return Result(plan, name, status, 0.0, notes)
    return _max_capacity(profile, load, current, options)


def _share_cap(capacity_rps: float, load: float) -> float:
    """The largest share of ``load`` that ``capacity_rps`` serves (1 at load 0)."""
    return 1.0 if load <= 0 else min(1.0, capacity_rps / load)


def _max_capacity(profile: Profile, load: float, current: Mapping[str, float], options: Options) -> Result:
    """The plan with the most capacity (fewest cores among those), for loads nothing can serve."""
    opts = _options(profile)
    prob = pulp.LpProblem("infadapter_max_capacity", pulp.LpMaximize)
    y = {
        (n, i): pulp.LpVariable(f"y_{j}_{i}", cat=pulp.LpBinary)
        for j, (n, ch) in enumerate(opts.items())
        for i in range(len(ch))
    }
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


def greedy_shares(profile: Profile, load: float, cores: Mapping[str, float]) -> dict[str, float] | None:
    """Optimal shares for fixed cores: fill the most accurate variants first (fractional knapsack)."""
    shares = {n: 0.0 for n in cores}
    left = 1.0
    for n in sorted(cores, key=lambda x: -profile.variant(x).accuracy):
        cap = profile.capacity_rps(n, cores[n])
        take = left if load <= 0 else min(left, cap / load)
        shares[n] = take
        left -= take
        if left <= 1e-12:
            return shares
    return None if left > 1e-9 else shares


def _solve_exhaustive(profile: Profile, load: float, current: Mapping[str, float]) -> Result:
    opts = _options(profile)
    best: tuple[float, dict[str, float], dict[str, float]] | None = None
    for cores in _assignments(opts, profile.budget_cores):
        if not cores:
            continue
        shares = greedy_shares(profile, load, cores)
        if shares is None:
            continue
        obj = objective_value(profile, shares, cores, current)
        if best is None or obj > best[0] + 1e-12:
            best = (obj, cores, shares)
    if best is None:
        return _max_capacity(profile, load, current, Options())
    plan = _make_plan(profile, load, current, best[1], best[2], feasible=True)
    return Result(plan, "exhaustive", "optimal", 0.0)


def count_assignments(profile: Profile) -> int:
    """How many core assignments exhaustive enumeration visits (for benchmarks)."""
    return sum(1 for _ in itertools.islice(_assignments(_options(profile), profile.budget_cores), 10_000_000))
