"""A fast plan for several services: each service's best plans alone, then a knapsack over the shared budget.

The joint integer program (:mod:`infadapter.core.solver`) is exact, but for ten services its search can take
a second or more (``bench/solver.py --services 10``). Most of that search is spent finding and proving a
plan that this decomposition finds in tens of milliseconds: per service, its best plan at every core count
among plans of one variant, or one variant at full capacity plus one that carries the rest on the fewest
cores (shares filled most accurate first, its accuracy floor held); then a multiple-choice knapsack over the
budget (dynamic programming on the core grid). The solver gives that plan to HiGHS as a starting solution
(a MIP start): the search prunes with its objective from the first node and still proves the optimum, so
the plans are the exact solve's, found sooner.

It is a heuristic and is only ever a start: it leaves out mixes of three or more variants in a service and
the shared transition term (a plan's objective is computed with it afterwards), and finds nothing when the
budget cannot hold every service's load (the solver's relaxations decide those).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from infadapter.core.profile import Profile

#: One service's candidate plan: (weighted accuracy minus cost, cores by variant, shares by variant).
Candidate = tuple[float, dict[str, float], dict[str, float]]


def variant_options(profile: Profile) -> dict[str, list[tuple[float, float]]]:
    """(cores, capacity) choices per variant; a core count with negative capacity cannot run."""
    grid = profile.core_options()
    out: dict[str, list[tuple[float, float]]] = {}
    for v in profile.variants:
        out[v.name] = [(k, cap) for k in grid if (cap := profile.variant_capacity_rps(v, k)) >= 0]
    return out


def greedy_shares(profile: Profile, load: float, cores: Mapping[str, float]) -> dict[str, float] | None:
    """Optimal shares for fixed cores: fill the most accurate variants first (fractional knapsack)."""
    order = sorted(cores, key=lambda x: -profile.variant(x).accuracy)
    return _fill(order, [profile.capacity_rps(n, cores[n]) for n in order], load)


def _fill(order: list[str], caps: list[float], load: float) -> dict[str, float] | None:
    """:func:`greedy_shares` with the variants already in order (most accurate first) and their capacities."""
    shares = dict.fromkeys(order, 0.0)
    left = 1.0
    for n, cap in zip(order, caps, strict=True):
        take = left if load <= 0 else min(left, cap / load)
        shares[n] = take
        left -= take
        if left <= 1e-12:
            return shares
    return None if left > 1e-9 else shares


def service_candidates(profile: Profile, service: str, load: float, floor: float | None,
                       opts: Mapping[str, list[tuple[float, float]]], soft_penalty: float | None = None
                       ) -> dict[float, Candidate]:
    """A service's best plan at each total core count (see the module doc), by ``weight * accuracy -
    alpha * cores / budget``; ``floor``: the least accuracy its plans keep (None: none), or with
    ``soft_penalty``, what each point of accuracy below it costs (the solver's soft floor)."""
    names = profile.service_variants(service)
    weight = profile.service(service).weight
    acc = {n: profile.variant(n).accuracy for n in names}
    best: dict[float, Candidate] = {}

    def consider(cores: dict[str, float], caps: dict[str, float]) -> None:
        order = sorted(cores, key=lambda x: -acc[x])
        shares = _fill(order, [caps[n] for n in order], load)
        if shares is None:
            return
        mix = sum(shares[n] * acc[n] for n in cores)
        short = 0.0 if floor is None else max(0.0, floor - mix)
        if short > 1e-9 and soft_penalty is None:
            return
        k = sum(cores.values())
        value = weight * mix - profile.alpha * k / profile.budget_cores - (soft_penalty or 0.0) * short
        if k not in best or value > best[k][0] + 1e-12:
            best[k] = (value, cores, shares)

    for v in names:
        for k, cap in opts[v]:
            if cap >= load:
                consider({v: k}, {v: cap})
                break  # more cores on one variant alone only cost
            for u in names:
                if u == v:
                    continue
                rest = next(((ku, cu) for ku, cu in opts[u] if cu >= load - cap), None)
                if rest is not None:
                    consider({v: k, u: rest[0]}, {v: cap, u: rest[1]})
    return best


def decomposed(profile: Profile, loads: Mapping[str, float], floors: Mapping[str, str] | None = None,
               soft_penalty: float = 0.0, opts: Mapping[str, list[tuple[float, float]]] | None = None
               ) -> tuple[dict[str, float], dict[str, float]] | None:
    """The decomposition's plan for a profile with services: (cores, shares) by variant, each service's
    shares adding up to 1; None when no pick of the services' plans fits the budget. ``floors``: how a
    service's accuracy floor holds, as in the solver's relaxations: "hard" (the default), "soft" (each
    point below it costs ``soft_penalty``) or "off". ``opts``: :func:`variant_options` when the caller has them."""
    opts = variant_options(profile) if opts is None else opts
    step = profile.core_step
    budget_steps = math.floor(profile.budget_cores / step + 1e-9)
    dp: dict[int, float] = {0: 0.0}  # core steps used so far -> best value
    back: list[dict[int, tuple[int, dict[str, float], dict[str, float]]]] = []
    for svc in profile.services or ():
        rule = "hard" if floors is None else floors.get(svc.name, "hard")
        found = service_candidates(profile, svc.name, loads[svc.name],
                                   None if rule == "off" else svc.accuracy_floor, opts,
                                   soft_penalty if rule == "soft" else None)
        cand: dict[int, Candidate] = {}
        top = -math.inf
        for k in sorted(found):  # a plan on more cores that is worth no more is never picked
            if found[k][0] > top + 1e-12:
                cand[round(k / step)], top = found[k], found[k][0]
        nxt: dict[int, float] = {}
        how: dict[int, tuple[int, dict[str, float], dict[str, float]]] = {}
        for used, val in dp.items():
            for k, (v, cores, shares) in cand.items():
                total = used + k
                if total <= budget_steps and (total not in nxt or val + v > nxt[total] + 1e-12):
                    nxt[total] = val + v
                    how[total] = (used, cores, shares)
        if not nxt:
            return None
        dp = nxt
        back.append(how)
    if not back:
        return None
    used = max(dp, key=lambda t: dp[t])
    cores: dict[str, float] = {}
    shares: dict[str, float] = {}
    for how in reversed(back):
        used, c, sh = how[used]
        cores.update(c)
        shares.update(sh)
    return cores, shares


def most_capacity(profile: Profile, service: str, opts: Mapping[str, list[tuple[float, float]]]) -> list[float]:
    """The most capacity (req/s) any pick of ``service``'s variants reaches on each total core count: entry i
    is for ``i * core_step`` cores, each variant on at most one of its core counts, at least one running
    (-inf where no pick adds up to that many cores; entry 0 always, as nothing running serves nothing).

    Without an accuracy floor a pick serves a load exactly when its capacities add up to it (shares of at
    most capacity / load each, adding up to 1), so this one table answers the fewest cores and the most
    served share on few cores for every load: a multiple-choice knapsack on the core grid, in a millisecond,
    where an integer program per question took 2-10 ms."""
    import numpy as np

    step = profile.core_step
    names = profile.service_variants(service)
    top = sum(max((round(k / step) for k, _ in opts[n]), default=0) for n in names)
    best = np.full(top + 1, -np.inf)
    best[0] = 0.0
    for n in names:
        after = best.copy()  # the variant not running
        for k, cap in opts[n]:
            u = round(k / step)
            np.maximum(after[u:], best[: top + 1 - u] + cap, out=after[u:])
        best = after
    best[0] = -np.inf
    return [float(x) for x in best]


def _serves(capacity: float, load: float) -> bool:
    # The tolerance of greedy shares (_fill): what is left unserved below 1e-9 of the load is rounding.
    return capacity > -math.inf and capacity >= load * (1 - 1e-9)


def fewest_cores(profile: Profile, service: str, load: float, floor: float | None,
                 opts: Mapping[str, list[tuple[float, float]]], ladder: list[float] | None = None) -> float:
    """The fewest cores on which ``service`` serves all of ``load`` with its traffic-weighted accuracy at
    least ``floor`` (None: no floor), mixes of any of its variants included; inf when none does.

    Services share only the budget, so a program of the solver's relaxations is feasible exactly when the
    services' fewest cores (each under its rules there) add up to at most the budget: the solver skips the
    programs this proves infeasible instead of searching them (proving a program infeasible was most of an
    overloaded solve's time), and in the programs it searches each service's cores are bounded below by them.
    Without a floor it reads :func:`most_capacity` (``ladder``, when the caller has it); with one, the
    shares' accuracy matters and it solves :func:`one_service`."""
    if floor is not None:
        return one_service(profile, service, load, opts, "cores", floor=floor)
    ladder = most_capacity(profile, service, opts) if ladder is None else ladder
    return next((round(i * profile.core_step, 9) for i, cap in enumerate(ladder) if _serves(cap, load)), math.inf)


def most_served(profile: Profile, service: str, load: float, opts: Mapping[str, list[tuple[float, float]]],
                max_cores: float, ladder: list[float] | None = None) -> float:
    """The largest share of ``load`` that ``service`` serves on at most ``max_cores`` (shares within capacity,
    at most 1); 0 when no variant fits in ``max_cores``: :func:`one_service`'s "served" goal, read off
    :func:`most_capacity` (``ladder``, when the caller has it)."""
    ladder = most_capacity(profile, service, opts) if ladder is None else ladder
    if len(ladder) == 1:
        return -math.inf  # no variant of it has a core count that runs
    cap = max(ladder[: math.floor(max_cores / profile.core_step + 1e-9) + 1])
    if cap == -math.inf:
        return 0.0
    return 1.0 if load <= 0 else min(1.0, cap / load)


def one_service(profile: Profile, service: str, load: float, opts: Mapping[str, list[tuple[float, float]]],
                goal: Literal["cores", "accuracy", "served"], floor: float | None = None,
                max_cores: float | None = None) -> float:
    """One service alone, solved exactly: a one-service integer program over the joint program's options,
    capacity rows and floor row (mixes of any number of its variants). ``goal``: "cores", the fewest cores
    that serve all of ``load`` (inf when none do); "accuracy", the highest traffic-weighted accuracy that
    serves all of it on at most ``max_cores`` (-inf when none does); "served", the largest share of it served
    on at most ``max_cores`` (shares within capacity, at most 1). The solver's bounds on each service in the
    joint program come from these: 2-10 ms each."""
    import highspy
    import numpy as np

    names = profile.service_variants(service)
    # One share column per variant first (what a share is worth to the goal; HiGHS minimizes), then the options.
    cost: list[float] = [-profile.variant(n).accuracy if goal == "accuracy" else -1.0 if goal == "served" else 0.0
                         for n in names]
    cores: dict[int, float] = {}
    rows: list[tuple[float, float, dict[int, float]]] = []
    inf = highspy.kHighsInf
    for j, n in enumerate(names):
        ys = {}
        for k, cap in opts[n]:
            ys[len(cost)] = 1.0 if load <= 0 else min(1.0, cap / load)
            cores[len(cost)] = k
            cost.append(k if goal == "cores" else 0.0)
        if ys:
            rows.append((-inf, 1.0, dict.fromkeys(ys, 1.0)))  # one core count a variant
        rows.append((-inf, 0.0, {j: 1.0, **{c: -share for c, share in ys.items()}}))  # its share within capacity
    worst = -math.inf if goal != "cores" else math.inf
    if len(cost) == len(names):
        return worst
    # All of the load is served, or with "served" at most all of it.
    rows.append((-inf if goal == "served" else 1.0, 1.0, dict.fromkeys(range(len(names)), 1.0)))
    if floor is not None:
        rows.append((0.0, inf, {j: profile.variant(n).accuracy - floor for j, n in enumerate(names)}))
    if max_cores is not None:
        rows.append((-inf, max_cores + 1e-9, cores))
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = len(cost), len(rows)
    lp.col_cost_ = np.array(cost)
    lp.col_lower_ = np.zeros(len(cost))
    lp.col_upper_ = np.ones(len(cost))
    lp.row_lower_ = np.array([r[0] for r in rows])
    lp.row_upper_ = np.array([r[1] for r in rows])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = np.cumsum([0] + [len(r[2]) for r in rows], dtype=np.int32)
    lp.a_matrix_.index_ = np.array([c for r in rows for c in r[2]], dtype=np.int32)
    lp.a_matrix_.value_ = np.array([v for r in rows for v in r[2].values()])
    lp.integrality_ = [highspy.HighsVarType.kContinuous] * len(names) + \
        [highspy.HighsVarType.kInteger] * (len(cost) - len(names))
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("mip_rel_gap", 0.0)  # exact, as the bounds built on it must be
    h.passModel(lp)
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return worst
    if goal == "cores":
        return round(h.getInfo().objective_function_value, 9)
    # The dual bound, never below the optimum: what the solver bounds with it stays valid.
    return -h.getInfo().mip_dual_bound
