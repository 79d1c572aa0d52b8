"""Policies: (profile, observed history, forecast, current plan, state) -> Decision.

Every policy has one signature, ``decide(ctx) -> Decision``, is pure (time comes in ``ctx.now_s``,
state goes out in ``Decision.state`` and comes back in the next ``ctx.state``), and is shared by the
simulator and the live loop. Scale-down stabilization is one wrapper (:class:`Stabilized`) around any
policy, so every policy is compared on the same terms.

- ``infadapter``: the integer program of :mod:`infadapter.core.solver`.
- ``msplus``: model switching (the paper's MS+): one variant, the cores with the best objective.
- ``vpa:NAME``: the Kubernetes VPA recommender for CPU on one fixed variant (see :mod:`infadapter.core.vpa`).
- ``static:NAME=CORES[,...]``: a fixed plan.
- ``oracle``: the integer program on the true future peak (simulator only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from infadapter.core import solver as solver_mod
from infadapter.core.plan import Allocation, Plan
from infadapter.core.profile import Profile, service_profile
from infadapter.core.vpa import VpaConfig, VpaState, recommend
from infadapter.errors import BadInput


@dataclass(frozen=True)
class Context:
    """Everything a policy may look at for one decision."""

    profile: Profile
    now_s: float
    forecast_rps: float
    current: Plan | None = None
    history_rps: Sequence[float] = ()
    #: CPU usage samples per variant since the last decision: (time_s, cores_used).
    cpu_usage: Mapping[str, Sequence[tuple[float, float]]] = field(default_factory=dict)
    #: The true peak of the next interval; only the simulator knows it (oracle policy).
    true_peak_rps: float | None = None
    state: Any = None
    solver: solver_mod.Options = field(default_factory=solver_mod.Options)
    #: Per-second request rates before the run (the trace's preceding day, at the run's scale): what a
    #: policy that had been running would have seen. Read once, on the first decision (warm VPA).
    rates_before: Sequence[float] = ()
    #: A multi-service profile's forecasts, req/s by service (``forecast_rps`` is then their sum); empty
    #: for one service.
    forecast_by_service: Mapping[str, float] = field(default_factory=dict)
    #: The rates observed now, req/s by service (at most the forecast): what the forecasts' headroom gives way
    #: to when they do not all fit (:func:`joint_solve`); empty: no headroom to give (``plan --load``).
    observed_by_service: Mapping[str, float] = field(default_factory=dict)

    @property
    def current_cores(self) -> dict[str, float]:
        return self.current.cores_by_name() if self.current is not None else {}


@dataclass(frozen=True)
class Decision:
    """A policy's answer: the plan to run, the state to pass back, and why."""

    plan: Plan
    state: Any = None
    reason: str = ""
    solve_s: float = 0.0
    solver: str = ""
    #: The wrapped policy's own plan when a wrapper (stabilization, min-gain) changed it; for ``explain``.
    proposed: Plan | None = None
    #: Which wrapper changed the proposed plan: "stabilization" (scale-down held), "stabilization-window" (the
    #: most generous plan of the window applied), "min_gain" (current variants kept) or "" (none).
    held_by: str = ""
    #: The solver's :attr:`~infadapter.core.solver.Result.other_set` for the proposed plan (``explain``'s
    #: runner-up on the model already solved); None: ``explain`` solves afresh.
    other_set: Any = field(default=None, compare=False, repr=False)


class Policy(Protocol):
    name: str

    def decide(self, ctx: Context) -> Decision: ...


# -- infadapter ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InfAdapter:
    """The integer program on the forecast load."""

    name: str = "infadapter"

    def decide(self, ctx: Context) -> Decision:
        if ctx.profile.services:
            res, solve_s = joint_solve(ctx.profile, ctx.forecast_by_service, ctx.observed_by_service,
                                       ctx.current_cores, ctx.solver)
            loads = ", ".join(f"{o.name} {o.load_rps:.1f}" for o in res.plan.services)
            why = f"{res.solver} {res.status}: {_describe(res.plan)} for {loads} req/s"
            return Decision(res.plan, ctx.state, why, solve_s, res.solver, other_set=res.other_set)
        res = solver_mod.solve(ctx.profile, ctx.forecast_rps, ctx.current_cores, ctx.solver)
        why = f"{res.solver} {res.status}: {_describe(res.plan)} for {ctx.forecast_rps:.1f} req/s"
        return Decision(res.plan, ctx.state, why, res.solve_s, res.solver, other_set=res.other_set)


#: The static splits of a profile with services: independent adapters, each on a fixed share of the budget in
#: proportion to its service's mean (or peak) load over its window (the joint solve's comparison).
SPLIT_POLICIES: dict[str, Callable[[Any], Any]] = {"infadapter-split": np.mean, "infadapter-split-peak": np.max}


def split_budget(profile: Profile, mean_rps: Mapping[str, float]) -> dict[str, float]:
    """The static split: each service's share of the budget in proportion to its load (``mean_rps``: its mean,
    or its peak for the split by peak), rounded down to the core step, at least ``min_cores``; what rounding
    leaves goes a step at a time to the largest remainders."""
    step, mn, budget = profile.core_step, profile.min_cores, profile.budget_cores
    total = sum(mean_rps.values())
    names = list(profile.service_names)
    want = {n: (budget * mean_rps[n] / total if total > 0 else budget / len(names)) for n in names}
    out = {n: max(mn, math.floor(want[n] / step + 1e-9) * step) for n in names}
    while sum(out.values()) > budget + 1e-9:  # min_cores pushed it over: take from the largest
        n = max(out, key=lambda k: out[k])
        out[n] -= step
    for n in sorted(names, key=lambda k: want[k] - out[k], reverse=True):
        if sum(out.values()) + step <= budget + 1e-9:
            out[n] += step
    return {n: round(c, 9) for n, c in out.items()}


@dataclass(frozen=True)
class StaticSplit:
    """Independent adapters on a static split of the budget: each service's one-service integer program on
    its share (``budgets``: :func:`split_budget`), its plan never taking another service's cores; the parts
    joined into one plan of several services. The live runner, the simulator (:mod:`infadapter.sim.services`)
    and ``explain --replay`` all run this policy."""

    profile: Profile
    budgets: Mapping[str, float]
    name: str = "infadapter-split"

    def decide(self, ctx: Context) -> Decision:
        cores: dict[str, float] = {}
        shares: dict[str, float] = {}
        spent, parts = 0.0, []
        current = ctx.current_cores
        for svc in self.profile.service_names:
            sub = service_profile(self.profile, svc, self.budgets[svc])
            load = ctx.forecast_by_service[svc]
            res = solver_mod.solve(sub, load, {n: c for n, c in current.items() if n in sub.names}, ctx.solver)
            spent += res.solve_s
            plan = res.plan
            # Shares of the forecast (what they add up to is the part served), as the joint solve's.
            served = 1.0 if plan.feasible or load <= 0 else min(1.0, plan.capacity_rps / load)
            for a in plan.allocations:
                cores[a.name] = a.cores
                shares[a.name] = a.share * served
            parts.append(f"{svc} {self.budgets[svc]:g} cores: {_describe(plan)}")
        plan = solver_mod.services_plan(self.profile, dict(ctx.forecast_by_service), current, cores, shares)
        loads = ", ".join(f"{o.name} {o.load_rps:.1f}" for o in plan.services)
        return Decision(plan, ctx.state, f"static split: {'; '.join(parts)} for {loads} req/s", spent, "highs")


def joint_solve(profile: Profile, forecast: Mapping[str, float], observed: Mapping[str, float],
                current: Mapping[str, float], options: solver_mod.Options, steps: int = 4
                ) -> tuple[solver_mod.Result, float]:
    """The joint plan of several services for their forecasts, and the solver's seconds over every solve.

    When the forecasts do not all fit (a service sheds), the forecasts' headroom over the ``observed`` rates
    gives way first: the largest fraction of it (bisected in ``steps`` halvings, the same for every service)
    whose plan sheds nothing, else the plan at the observed rates (which then sheds by the solver's rules).
    A service missing from ``observed`` has no headroom to give (its forecast stands). The one copy of this
    rule: the live loop and the simulator both reach it through :class:`InfAdapter`.
    """
    seen = {n: min(observed.get(n, forecast[n]), forecast[n]) for n in forecast}
    spent = [0.0]

    def at(frac: float) -> solver_mod.Result:
        loads = {n: seen[n] + frac * (forecast[n] - seen[n]) for n in forecast}
        res = solver_mod.solve(profile, 0.0, current, options, loads=loads)
        spent[0] += res.solve_s
        return res

    full = at(1.0)
    if full.plan.feasible or all(forecast[n] - seen[n] <= 1e-9 for n in forecast):
        return full, spent[0]
    low, best = at(0.0), None
    if not low.plan.feasible:
        return low, spent[0]
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        cand = at(mid)
        if cand.plan.feasible:
            lo, best = mid, cand
        else:
            hi = mid
    return best or low, spent[0]


@dataclass(frozen=True)
class Oracle:
    """The integer program on the true future peak: the bound on what forecasting can reach."""

    name: str = "oracle"

    def decide(self, ctx: Context) -> Decision:
        load = ctx.true_peak_rps if ctx.true_peak_rps is not None else ctx.forecast_rps
        res = solver_mod.solve(ctx.profile, load, ctx.current_cores, ctx.solver)
        return Decision(res.plan, ctx.state, f"oracle: {_describe(res.plan)} for true peak {load:.1f} req/s",
                        res.solve_s, res.solver)


# -- MS+ --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MsPlus:
    """Model switching: the single variant and core count with the best objective that serves the load."""

    name: str = "msplus"

    def decide(self, ctx: Context) -> Decision:
        p = ctx.profile
        cur = ctx.current_cores
        best: tuple[float, str, float] | None = None
        for v in p.variants:
            for k in p.core_options():
                cap = v.capacity.rps(k)
                if cap < 0 or cap + 1e-9 < ctx.forecast_rps:
                    continue
                obj = solver_mod.objective_value(p, {v.name: 1.0}, {v.name: k}, cur)
                if best is None or obj > best[0] + 1e-12:
                    best = (obj, v.name, k)
        if best is None:
            # Nothing serves it alone: the single variant with the most capacity on the whole budget.
            top = p.core_options()[-1]
            v = max(p.variants, key=lambda x: (x.capacity.rps(top), x.accuracy))
            plan = single_variant_plan(p, v.name, top, ctx.forecast_rps, cur)
            plan = replace(plan, feasible=False, notes=(f"no single variant serves {ctx.forecast_rps:.1f} req/s",))
            return Decision(plan, ctx.state, f"msplus: infeasible, largest single variant {_describe(plan)}")
        plan = single_variant_plan(p, best[1], best[2], ctx.forecast_rps, cur)
        return Decision(plan, ctx.state, f"msplus: {_describe(plan)} for {ctx.forecast_rps:.1f} req/s")


def single_variant_plan(
    profile: Profile, name: str, cores: float, load_rps: float, current: Mapping[str, float]
) -> Plan:
    """A plan that runs one variant with all the traffic."""
    cap = profile.capacity_rps(name, cores)
    obj = solver_mod.objective_value(profile, {name: 1.0}, {name: cores}, current)
    return Plan(
        (Allocation(name, cores, 1.0, cap),),
        load_rps,
        feasible=cap + 1e-9 >= load_rps,
        objective=obj,
        accuracy=profile.variant(name).accuracy,
    )


# -- VPA --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Vpa:
    """The VPA recommender's CPU target on one fixed variant.

    ``warm``: the recommender has been running; on its first decision it is fed one usage sample a
    minute of the day before the run (``Context.rates_before``), each the CPU the variant needs for
    that minute's mean rate (:meth:`Profile.cores_for` x rate / capacity), as a VPA that had watched
    that day would hold. ``limited`` False: VPA manages requests only, there is no CPU limit, so a
    server may use CPU beyond its request (the simulator lets it use the whole budget) and its usage
    shows the demand; cost is still the request.

    ``updater``: upstream's updater rule instead of the paper's "apply the target every decision": the first
    decision sizes the variant at the target (a VPA that had been running: its admission controller sized the
    pods), later ones change the cores only when they fall outside the recommendation's [lower, upper] bounds
    (``vpa-updater``, the simulator's model of the cluster's own VPA, ``vpa-upstream``).
    """

    variant: str
    config: VpaConfig = field(default_factory=VpaConfig)
    initial_cores: float | None = None
    warm: bool = True
    limited: bool = True
    updater: bool = False

    @property
    def name(self) -> str:
        if self.updater:
            return f"vpa-updater:{self.variant}"
        kind = "vpa" if self.limited else "vpa-requests"
        return f"{kind}:{self.variant}" if self.warm or not self.limited else f"vpa-cold:{self.variant}"

    def decide(self, ctx: Context) -> Decision:
        p = ctx.profile
        p.variant(self.variant)  # BadInput for an unknown name
        request = ctx.current_cores.get(self.variant, self.initial_cores or p.core_options()[-1])
        first = not isinstance(ctx.state, VpaState)
        if not first:
            state = ctx.state
        else:
            state = VpaState.empty(self.config)
            if self.warm:
                state = warm_vpa_state(state, p, self.variant, ctx.rates_before, ctx.now_s, request)
        for t, used in ctx.cpu_usage.get(self.variant, ()):
            state = state.add_sample(t, used, request)
        rec = recommend(state, self.config)
        if rec is None:
            cores = request
            why = "vpa: no usage samples yet, keeping the current request"
        else:
            cores = clamp_cores(p, rec.target_cores, self.config.min_cores, self.config.max_cores)
            why = (
                f"vpa: target {rec.target_cores:.2f} cores (p90 x 1.15) -> {cores:g}; "
                f"bounds [{rec.lower_cores:.2f}, {rec.upper_cores:.2f}]"
            )
            if self.updater and not first and rec.lower_cores <= request <= rec.upper_cores:
                cores = request
                why += f"; {request:g} cores within them: the updater leaves the pod"
        plan = single_variant_plan(p, self.variant, cores, ctx.forecast_rps, ctx.current_cores)
        return Decision(plan, state, why)


def warm_vpa_state(state: VpaState, profile: Profile, variant: str, rates_before: Sequence[float], now_s: float,
                   request: float) -> VpaState:
    """``state`` with one sample a minute of ``rates_before`` (ending at ``now_s``): the CPU each minute needed."""
    rates = list(rates_before)
    minutes = len(rates) // 60
    start = now_s - minutes * 60.0
    for m in range(minutes):
        rate = sum(rates[m * 60:(m + 1) * 60]) / 60.0
        state = state.add_sample(start + (m + 1) * 60.0, cpu_needed(profile, variant, rate), request)
    return state


def cpu_needed(profile: Profile, variant: str, rate_rps: float) -> float:
    """The CPU ``variant`` uses at ``rate_rps``: the cores it needs for that rate, busy in proportion to the rate
    over their capacity (a warm VPA's history, simulated and written as upstream's checkpoint)."""
    cores = profile.cores_for(variant, rate_rps)
    cap = profile.capacity_rps(variant, cores)
    return min(cores, cores * rate_rps / cap) if cap > 0 else cores


def upstream_vpa_history(profile: Profile, variant: str, rates_before: Sequence[float], stretch: int,
                         now_s: float) -> VpaState:
    """What a VPA that had been running on ``variant`` through ``rates_before`` (per replayed second, each
    ``stretch`` trace seconds; the last ends at ``now_s``, Unix seconds) holds: upstream's one sample a minute
    and its 24-hour half-life, both compressed as the live recommender runs (``local-cluster.sh autoscalers
    --speedup``); the CPU each sample's rate needs, as :func:`warm_vpa_state` (the simulator's warm VPA)."""
    stretch = max(int(stretch), 1)
    step = max(60 // stretch, 1)  # replayed seconds per trace minute
    state = VpaState.empty(VpaConfig(half_life_s=86400.0 / stretch))
    rates = list(rates_before)
    samples = len(rates) // step
    for m in range(samples):
        rate = sum(rates[m * step:(m + 1) * step]) / step
        state = state.add_sample(now_s - (samples - m - 1) * step, cpu_needed(profile, variant, rate), 0.0)
    return state


@dataclass(frozen=True)
class HpaState:
    """Replica recommendations of the last ``stabilization_s`` seconds: (time, replicas)."""

    recommendations: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True)
class Hpa:
    """Kubernetes HPA on one variant: replicas of a fixed pod size, CPU utilization target.

    Upstream's algorithm: ``desired = ceil(replicas x usage / (requests x target))``, no change
    within a 10 % tolerance of the target, scale-up at once, scale-down to the highest
    recommendation of the last 300 s (the default stabilization window). Usage is the mean of the
    CPU samples since the last decision (metrics-server's window). Replicas run as one allocation of
    ``replicas x pod_cores`` cores.
    """

    variant: str
    pod_cores: float
    target_utilization: float = 0.7
    tolerance: float = 0.1
    stabilization_s: float = 300.0

    @property
    def name(self) -> str:
        return f"hpa:{self.variant}"

    def decide(self, ctx: Context) -> Decision:
        p = ctx.profile
        p.variant(self.variant)
        st = ctx.state if isinstance(ctx.state, HpaState) else HpaState()
        top = max(1, math.floor(p.budget_cores / self.pod_cores + 1e-9))
        current = ctx.current_cores.get(self.variant)
        replicas = max(1, round(current / self.pod_cores)) if current else top
        samples = [used for _, used in ctx.cpu_usage.get(self.variant, ())]
        if not samples:  # no new metric since the last decision: nothing to recommend
            plan = single_variant_plan(p, self.variant, replicas * self.pod_cores, ctx.forecast_rps,
                                       ctx.current_cores)
            return Decision(plan, st, "hpa: no new CPU samples, keeping the replicas")
        desired = replicas
        if samples:
            ratio = (sum(samples) / len(samples)) / (replicas * self.pod_cores) / self.target_utilization
            if abs(ratio - 1.0) > self.tolerance:
                desired = min(top, max(1, math.ceil(replicas * ratio - 1e-9)))
            why = f"hpa: utilization {ratio * self.target_utilization:.0%} of requests, target " \
                  f"{self.target_utilization:.0%} -> {desired} replicas"
        recent = tuple((t, r) for t, r in st.recommendations if ctx.now_s - t < self.stabilization_s)
        recent = (*recent, (ctx.now_s, desired))
        chosen = desired if desired >= replicas else max(r for _, r in recent)
        if chosen != desired:
            why += f"; scale-down held to {chosen} (highest of the last {self.stabilization_s:g} s)"
        plan = single_variant_plan(p, self.variant, chosen * self.pod_cores, ctx.forecast_rps, ctx.current_cores)
        return Decision(plan, HpaState(recent), why)


@dataclass(frozen=True)
class Upstream:
    """The cluster's own HPA or VPA on one variant (``hpa-upstream:VARIANT[=POD_CORES]``, ``vpa-upstream:VARIANT``):
    Kubernetes decides, infadapter only deploys the variant and records what runs.

    The first decision is the simulated policy's initial plan (the variant on the whole budget), which the
    Kubernetes backend creates with the autoscaler object beside it (:class:`~infadapter.render.UpstreamAutoscaler`);
    every later decision is the plan read back from the cluster (``ctx.current``: the cores its pods hold now),
    so nothing is applied over the autoscaler's changes. ``model`` is the policy the simulator runs in its place
    (``hpa:VARIANT`` or ``vpa:VARIANT``)."""

    kind: str  # "hpa" or "vpa"
    variant: str
    model: Policy

    @property
    def name(self) -> str:
        return f"{self.kind}-upstream:{self.variant}"

    def decide(self, ctx: Context) -> Decision:
        p = ctx.profile
        cores = ctx.current_cores.get(self.variant)
        if not cores:
            plan = single_variant_plan(p, self.variant, _upstream_initial(p, self).cores, ctx.forecast_rps, {})
            return Decision(plan, ctx.state, f"{self.kind}-upstream: the variant on the whole budget; the "
                                             f"cluster's {self.kind.upper()} decides from here")
        plan = single_variant_plan(p, self.variant, cores, ctx.forecast_rps, ctx.current_cores)
        return Decision(plan, ctx.state, f"{self.kind}-upstream: the cluster's {self.kind.upper()} runs "
                                         f"{self.variant} on {cores:g} cores")


def clamp_cores(
    profile: Profile, cores: float, min_cores: float | None = None, max_cores: float | None = None
) -> float:
    """Round up to the core grid and clamp to [min, max] (defaults: profile min and budget)."""
    low = max(profile.min_cores, min_cores or 0.0)
    high = min(profile.budget_cores, max_cores or profile.budget_cores)
    steps = math.ceil((cores - 1e-9) / profile.core_step)
    value = round(steps * profile.core_step, 9)
    options = [k for k in profile.core_options() if low - 1e-9 <= k <= high + 1e-9]
    if not options:
        return profile.min_cores
    return min((k for k in options if k >= value - 1e-9), default=options[-1])


# -- static -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Static:
    """A fixed plan: shares proportional to capacity."""

    cores: Mapping[str, float]
    name: str = "static"

    def decide(self, ctx: Context) -> Decision:
        p = ctx.profile
        for n in self.cores:
            p.variant(n)
        caps = {n: max(p.capacity_rps(n, c), 0.0) for n, c in self.cores.items() if c > 0}
        total = sum(caps.values())
        shares = {n: (c / total if total > 0 else 1.0 / len(caps)) for n, c in caps.items()}
        cores = {n: c for n, c in self.cores.items() if c > 0}
        obj = solver_mod.objective_value(p, shares, cores, ctx.current_cores)
        allocs = tuple(Allocation(n, cores[n], shares[n], p.capacity_rps(n, cores[n])) for n in cores)
        acc = sum(shares[n] * p.variant(n).accuracy for n in cores)
        plan = Plan(allocs, ctx.forecast_rps, feasible=total + 1e-9 >= ctx.forecast_rps, objective=obj, accuracy=acc)
        return Decision(plan, ctx.state, f"static: {_describe(plan)}")


# -- the shared stabilization wrapper
#: Decisions that must want less before a scale-down (HPA's stabilization window, in decisions).
DEFAULT_STABILIZATION = 4
#: Keep the current variants unless a new mix's objective beats them by this much: forecast noise must not
#: swap equal mixes back and forth (measured against plan churn in live runs; docs/adapt.md). Resizes of
#: the same variants are never held back.
DEFAULT_MIN_GAIN = 0.005


@dataclass(frozen=True)
class StabilizedState:
    inner: Any = None
    #: Plans proposed by consecutive decisions that wanted fewer cores than the current plan.
    pending_down: tuple[Plan, ...] = ()
    #: Variants the plans dropped, kept warm: (name, consecutive decisions that left it out).
    warm: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Stabilized:
    """Scale-up at once; scale-down only after ``intervals`` consecutive decisions want less.

    A decision "wants less" when its plan has fewer cores or less capacity than the current one while
    the current plan still serves the forecast. When the window is full, the most generous of the pending plans is
    applied (Kubernetes HPA's stabilization window semantics).
    """

    inner: Policy
    intervals: int = 4
    #: Keep the current cores when the new plan's objective beats them by less than this (the current
    #: plan re-shared for the forecast, no transition): forecast noise must not swap equal plans back
    #: and forth. Only for policies that maximize the objective; 0 turns it off.
    min_gain: float = 0.0
    #: Keep the budget the plan leaves idle as a standby: the fastest variant, no share, on those cores
    #: (``infadapter:standby``). The dispatcher retries there what a full server sheds (503), so a burst
    #: is served from the first second instead of after the overload re-plan; the cores count as used.
    standby: bool = False

    @property
    def name(self) -> str:
        return self.inner.name

    def decide(self, ctx: Context) -> Decision:
        return self.settle(ctx, self.propose(ctx))

    @staticmethod
    def _state(ctx: Context) -> StabilizedState:
        return ctx.state if isinstance(ctx.state, StabilizedState) else StabilizedState()

    def propose(self, ctx: Context) -> Decision:
        """The inner policy's plan (its own state passed back), before the stabilization rules."""
        return self.inner.decide(replace(ctx, state=self._state(ctx).inner))

    def settle(self, ctx: Context, proposed: Decision) -> Decision:
        """``proposed`` after the stabilization rules (hold a scale-down, keep dropped variants warm, add
        the standby)."""
        if not self.standby:
            return self._keep_warm(ctx, self._decide(ctx, self._state(ctx), proposed))
        name = standby_variant(ctx.profile)
        cur = ctx.current
        if cur is not None:  # the standby is not part of what the plans compare: it only fills idle cores
            cur = replace(cur, allocations=tuple(a for a in cur.allocations if a.share > 1e-9 or a.name != name))
        bare = replace(ctx, current=cur)
        return with_standby(ctx.profile, self._keep_warm(bare, self._decide(bare, self._state(ctx), proposed)))

    def _keep_warm(self, ctx: Context, d: Decision) -> Decision:
        """A variant the plan drops stays, idle on the fewest cores, until ``intervals`` decisions in a row
        have left it out: if the load comes back it grows in place at once instead of loading again."""
        st: StabilizedState = d.state
        cur = ctx.current
        if self.intervals <= 1 or cur is None:
            return d
        p = ctx.profile
        # Idle allocations (no share) are not wanted: a held plan or a kept one may carry them along.
        allocs = [a for a in d.plan.allocations if a.share > 1e-9]
        wanted = {a.name for a in allocs}
        counts = dict(st.warm)
        warm = []
        for a in cur.allocations:
            if a.name in wanted:
                continue
            n = counts.get(a.name, 0) + 1
            cores = p.min_cores
            if n >= self.intervals or sum(x.cores for x in allocs) + cores > p.budget_cores + 1e-9:
                continue
            warm.append((a.name, n))
            allocs.append(Allocation(a.name, cores, 0.0, p.capacity_rps(a.name, cores)))
        plan = replace(d.plan, allocations=tuple(allocs)) if len(allocs) < len(d.plan.allocations) else d.plan
        if not warm:
            return replace(d, plan=plan, state=replace(st, warm=()))
        plan = replace(d.plan, allocations=tuple(allocs))
        names = ", ".join(f"{n} ({k}/{self.intervals})" for n, k in warm)
        return replace(d, plan=plan, state=replace(st, warm=tuple(warm)), reason=f"{d.reason}; kept warm: {names}")

    def _decide(self, ctx: Context, st: StabilizedState, d: Decision) -> Decision:
        d = replace(d, proposed=d.plan)
        cur = ctx.current
        kept = _keep_if_close(ctx, d, self.min_gain) if self.min_gain > 0 else None
        if kept is not None:
            return replace(kept, state=StabilizedState(d.state, st.pending_down, st.warm), held_by="min_gain")
        # Less is fewer cores or less capacity: swapping to slower, more accurate variants on the same
        # cores is a scale-down too, and waits like one.
        wants_less = (
            cur is not None
            and cur.allocations
            and (d.plan.cores < cur.cores - 1e-9
                 or d.plan.served_capacity_rps() < cur.served_capacity_rps() * (1 - 1e-6) - 1e-9)
            and cur.served_capacity_rps() + 1e-9 >= ctx.forecast_rps
        )
        if not wants_less or self.intervals <= 1:
            return replace(d, state=StabilizedState(d.state, (), st.warm))
        pending = (*st.pending_down, d.plan)
        if len(pending) >= self.intervals:
            chosen = max(pending[-self.intervals :], key=lambda p: p.cores)
            return replace(d, plan=chosen.with_load(ctx.forecast_rps), state=StabilizedState(d.state, (), st.warm),
                           reason=f"{d.reason}; scale-down after {self.intervals} intervals",
                           held_by="stabilization-window")
        keep = cur.with_load(ctx.forecast_rps)  # type: ignore[union-attr]
        return replace(d, plan=keep, state=StabilizedState(d.state, pending, st.warm),
                       reason=f"{d.reason}; scale-down held ({len(pending)}/{self.intervals})",
                       held_by="stabilization")


def standby_variant(profile: Profile) -> str:
    """The variant a standby runs: the one that serves the most on the smallest pod."""
    return max(profile.variants, key=lambda v: profile.capacity_rps(v.name, profile.min_cores)).name


def with_standby(profile: Profile, d: Decision) -> Decision:
    """``d`` with the budget its plan leaves idle given to the standby variant (no share), when it is not
    serving already and at least one pod fits (see :attr:`Stabilized.standby`)."""
    name = standby_variant(profile)
    plan = d.plan
    if name in plan.names or not plan.allocations:
        return d
    idle = profile.budget_cores - plan.cores
    cores = max((k for k in profile.core_options() if k <= idle + 1e-9), default=None)
    if cores is None:
        return d
    allocs = (*plan.allocations, Allocation(name, cores, 0.0, profile.capacity_rps(name, cores)))
    return replace(d, plan=replace(plan, allocations=allocs), reason=f"{d.reason}; standby: {name} on {cores:g} cores")


def _keep_if_close(ctx: Context, d: Decision, min_gain: float) -> Decision | None:
    """The current cores re-shared for the forecast, when ``d`` gains less than ``min_gain`` over them."""
    cur = ctx.current
    if cur is None or not cur.allocations or not d.plan.feasible:
        return None
    cores = cur.cores_by_name()
    if set(d.plan.cores_by_name()) == set(cores):
        return None  # the same variants resized: in place and cheap, never held back
    p = ctx.profile
    if p.services:
        plan = _kept_services(p, ctx.forecast_by_service, cores)
        if plan is None or (_floor_missed(plan) and not _floor_missed(d.plan)):
            return None  # the current cores cannot serve every service (or hold a floor the new plan holds)
    else:
        shares = solver_mod.greedy_shares(p, ctx.forecast_rps, cores)
        if shares is None:
            return None  # the current plan cannot serve the forecast: change
        obj = solver_mod.objective_value(p, shares, cores, cores)
        allocs = tuple(Allocation(n, c, shares[n], p.capacity_rps(n, c)) for n, c in cores.items())
        acc = sum(shares[n] * p.variant(n).accuracy for n in cores)
        plan = Plan(allocs, ctx.forecast_rps, feasible=True, objective=obj, accuracy=acc)
    gain = d.plan.objective - plan.objective
    if gain >= min_gain:
        return None
    return replace(d, plan=plan, reason=f"{d.reason}; kept the current cores (gain {gain:.4f} < {min_gain:g})")


def _floor_missed(plan: Plan) -> bool:
    return not all(o.floor_met for o in plan.services)


def _kept_services(profile: Profile, forecast: Mapping[str, float], cores: Mapping[str, float]) -> Plan | None:
    """The current cores of a multi-service plan re-shared for each service's forecast (most accurate variants
    first, as :func:`_keep_if_close` does for one service), or None when one service's forecast does not fit
    its current variants: keeping them cannot take cores from a service that needs them, since every service
    is served on what it has."""
    shares: dict[str, float] = {}
    for svc in profile.service_names:
        mine = {n: c for n, c in cores.items() if profile.service_of(n) == svc}
        got = solver_mod.greedy_shares(profile, float(forecast.get(svc, 0.0)), mine) if mine else None
        if got is None:
            return None
        shares.update(got)
    return solver_mod.services_plan(profile, dict(forecast), cores, cores, shares)


# -- registry ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyEntry:
    """What a policy is and what it needs; every caller (CLI, simulator, loop) asks this, never the type."""

    name: str
    usage: str  # how it is written on the command line
    build: Callable[[str, Profile, VpaConfig | None], Policy]
    #: Decides from the load alone (``cli.py plan`` can run it without history or CPU samples).
    from_load: bool = False
    #: Gets CPU usage samples of its variants, every ``cpu_sample_s`` (a mean over ``cpu_window_s``).
    needs_cpu: bool = False
    cpu_sample_s: float = 60.0
    cpu_window_s: float = 15.0
    #: Maximizes the objective (``min_gain`` hysteresis applies).
    maximizes_objective: bool = False
    #: Stateless: the simulator may reuse its decision for a repeated input.
    stateless: bool = False
    #: Its changes of cores may happen in place (HPA adds pods instead).
    in_place: bool = True
    #: Its servers are held to their cores (False: requests only, a server may use the free budget).
    cpu_limited: bool = True
    #: The pod size of a policy that scales by replicas (HPA's ``pod_cores``), None otherwise: the Kubernetes
    #: backend runs its cores as replicas of pods of exactly that size.
    pod_cores: Callable[[Policy], float | None] = lambda policy: None
    #: Wrapped in the shared scale-down stabilization (HPA has its own time window).
    stabilized: bool = True
    #: Needs the true future load: the simulator only.
    simulator_only: bool = False
    #: The plan that serves before its first decision (the paper: the most accurate variant, whole budget).
    initial_plan: Callable[[Profile, Policy], Plan] | None = None
    #: What ``--policy all`` runs of it.
    compare: Callable[[Profile], list[str]] = lambda profile: []
    #: The cluster's own autoscaler decides ("hpa" or "vpa"): live on the Kubernetes backend only; the
    #: simulator runs :attr:`Upstream.model` (its spec: :func:`simulated_spec`).
    upstream: str = ""


def _most_accurate_on_budget(profile: Profile, policy: Policy) -> Plan:
    best = max(profile.variants, key=lambda v: v.accuracy)
    return single_variant_plan(profile, best.name, profile.core_options()[-1], 0.0, {})


def _own_variant_on_budget(profile: Profile, policy: Policy) -> Plan:
    inner = unwrap(policy)
    name = inner.variant  # type: ignore[attr-defined]
    top = profile.core_options()[-1]
    if isinstance(inner, Vpa) and inner.config.max_cores:
        top = min(top, inner.config.max_cores)
    return single_variant_plan(profile, name, top, 0.0, {})


def _infadapter(arg: str) -> Policy:
    if arg not in ("", "standby"):
        raise BadInput(f"--policy: infadapter takes no argument or :standby, got infadapter:{arg}")
    return InfAdapter()  # the standby is the stabilization wrapper's (make_policy)


def _static_initial(profile: Profile, policy: Policy) -> Plan:
    return unwrap(policy).decide(Context(profile, 0.0, 0.0)).plan


def _vpa(warm: bool, limited: bool) -> Callable[[str, Profile, VpaConfig | None], Policy]:
    def build(arg: str, profile: Profile, config: VpaConfig | None) -> Policy:
        cfg = config or VpaConfig(min_cores=profile.min_cores, max_cores=profile.budget_cores)
        return Vpa(_vpa_variant(arg, profile), cfg, warm=warm, limited=limited)
    return build


def _hpa(arg: str, profile: Profile, config: VpaConfig | None) -> Policy:
    name, _, size = arg.partition("=")
    variant = _vpa_variant(name, profile)
    try:
        pod = float(size) if size else profile.min_cores
    except ValueError:
        raise BadInput(f"--policy: hpa pod cores must be a number, e.g. hpa:{variant}=2, got {size!r}") from None
    if not profile.min_cores - 1e-9 <= pod <= profile.budget_cores + 1e-9:
        raise BadInput(f"--policy: hpa pod cores must be between {profile.min_cores:g} and {profile.budget_cores:g}, "
                       f"got {pod:g}")
    return Hpa(variant, pod)


def _best(profile: Profile) -> str:
    return max(profile.variants, key=lambda v: v.accuracy).name


def _middle(profile: Profile) -> str:
    """The variant in the middle of the accuracy order (ResNet-50 of five): a typical single-model choice."""
    ranked = sorted(profile.variants, key=lambda v: v.accuracy)
    return ranked[len(ranked) // 2].name


def _vpa_updater(arg: str, profile: Profile, config: VpaConfig | None) -> Policy:
    return replace(_vpa(warm=True, limited=True)(arg, profile, config), updater=True)  # type: ignore[type-var]


def _upstream(kind: str) -> Callable[[str, Profile, VpaConfig | None], Policy]:
    def build(arg: str, profile: Profile, config: VpaConfig | None) -> Policy:
        model = _hpa(arg, profile, config) if kind == "hpa" else _vpa_updater(arg, profile, config)
        return Upstream(kind, unwrap(model).variant, model)  # type: ignore[attr-defined]
    return build


def _upstream_initial(profile: Profile, policy: Policy) -> Plan:
    """The simulated model's first plan; HPA's in whole pods within the budget (its replica limit)."""
    model = unwrap(unwrap(policy).model)  # type: ignore[attr-defined]
    plan = _own_variant_on_budget(profile, model)
    if isinstance(model, Hpa):
        top = max(1, math.floor(profile.budget_cores / model.pod_cores + 1e-9))
        plan = single_variant_plan(profile, model.variant, top * model.pod_cores, 0.0, {})
    return plan


def _upstream_pod_cores(policy: Policy) -> float | None:
    model = unwrap(policy).model  # type: ignore[attr-defined]
    return model.pod_cores if isinstance(model, Hpa) else None


REGISTRY: dict[str, PolicyEntry] = {e.name: e for e in (
    PolicyEntry("infadapter", "infadapter[:standby]", lambda a, p, c: _infadapter(a), from_load=True,
                maximizes_objective=True,
                stateless=True, initial_plan=_most_accurate_on_budget, compare=lambda p: ["infadapter"]),
    PolicyEntry("msplus", "msplus", lambda a, p, c: MsPlus(), from_load=True, maximizes_objective=True,
                stateless=True, initial_plan=_most_accurate_on_budget, compare=lambda p: ["msplus"]),
    PolicyEntry("vpa", "vpa:VARIANT", _vpa(warm=True, limited=True), needs_cpu=True,
                initial_plan=_own_variant_on_budget, compare=lambda p: [f"vpa:{n}" for n in p.names]),
    PolicyEntry("vpa-requests", "vpa-requests:VARIANT", _vpa(warm=True, limited=False), needs_cpu=True,
                cpu_limited=False, initial_plan=_own_variant_on_budget,
                compare=lambda p: [f"vpa-requests:{_middle(p)}"]),
    PolicyEntry("vpa-cold", "vpa-cold:VARIANT", _vpa(warm=False, limited=True), needs_cpu=True,
                initial_plan=_own_variant_on_budget, compare=lambda p: [f"vpa-cold:{_middle(p)}"]),
    PolicyEntry("vpa-updater", "vpa-updater:VARIANT", _vpa_updater, needs_cpu=True,
                initial_plan=_own_variant_on_budget, compare=lambda p: []),
    PolicyEntry("hpa", "hpa:VARIANT[=POD_CORES]", _hpa, needs_cpu=True, cpu_sample_s=15.0, in_place=False,
                pod_cores=lambda policy: unwrap(policy).pod_cores,  # type: ignore[attr-defined]
                stabilized=False, initial_plan=_own_variant_on_budget,
                compare=lambda p: [f"hpa:{n}" for n in p.names]),
    PolicyEntry("hpa-upstream", "hpa-upstream:VARIANT[=POD_CORES]", _upstream("hpa"), in_place=False,
                pod_cores=_upstream_pod_cores, stabilized=False, initial_plan=_upstream_initial, upstream="hpa"),
    PolicyEntry("vpa-upstream", "vpa-upstream:VARIANT", _upstream("vpa"), stabilized=False,
                initial_plan=_upstream_initial, upstream="vpa"),
    PolicyEntry("static", "static:NAME=CORES[,...]",
                lambda a, p, c: Static(_static_cores(a, p), name=f"static:{a}"), from_load=True,
                initial_plan=_static_initial, compare=lambda p: [f"static:{_best(p)}"]),
    PolicyEntry("oracle", "oracle", lambda a, p, c: Oracle(), maximizes_objective=True, stateless=True,
                simulator_only=True, initial_plan=_most_accurate_on_budget, compare=lambda p: ["oracle"]),
)}
ALIASES = {"ms+": "msplus"}
POLICY_HELP = " | ".join(e.usage for e in REGISTRY.values())


def register(e: PolicyEntry) -> None:
    """Add a policy to the registry: it is then known to ``plan``, ``simulate`` and ``adapt``."""
    REGISTRY[e.name] = e


def policy_help() -> str:
    return " | ".join(e.usage for e in REGISTRY.values())


def entry(spec: str | Policy) -> PolicyEntry:
    """The registry entry of a policy spec (``vpa:resnet50``) or of a built policy (by its name).

    A policy object that no entry names (a caller's own, passed as an object) gets the defaults.
    """
    text = spec if isinstance(spec, str) else unwrap(spec).name
    name = text.partition(":")[0].strip().lower()
    name = ALIASES.get(name, name)
    if name in REGISTRY:
        return REGISTRY[name]
    if name in SPLIT_POLICIES:  # its services' adapters are infadapter's: the same pods, in place
        return REGISTRY["infadapter"]
    if not isinstance(spec, str):
        return PolicyEntry(name, name, lambda a, p, c: spec, initial_plan=_most_accurate_on_budget)
    raise BadInput(f"--policy: unknown policy {text!r}, expected {policy_help()}")


def unwrap(policy: Policy) -> Policy:
    """The policy inside the shared wrappers (stabilization, the simulator's memo)."""
    while hasattr(policy, "inner"):
        policy = policy.inner  # type: ignore[attr-defined]
    return policy


def live_entry(spec: str, flag: str = "--policy") -> PolicyEntry:
    """The registry entry of a policy that may run live; BadInput naming it when it is simulator-only."""
    e = entry(spec)
    if e.simulator_only:
        raise BadInput(f"{flag}: {spec} needs the true future load and runs only in the simulator "
                       f"(python cli.py simulate --policy {spec}); pick another policy to run live")
    return e


def make_policy(
    spec: str,
    profile: Profile,
    stabilization_intervals: int = DEFAULT_STABILIZATION,
    vpa_config: VpaConfig | None = None,
    min_gain: float = 0.0,
    backend: str | None = None,
) -> Policy:
    """Build a policy from its spec, wrapped in the shared stabilization (``intervals`` <= 1 disables it).

    ``backend``: where it runs live (None: the simulator or ``plan``); an upstream policy (``hpa-upstream``,
    ``vpa-upstream``) is the cluster's own autoscaler and runs only on ``kubernetes`` (BadInput elsewhere).

    ``min_gain`` > 0 also keeps the current cores when a new plan of an objective-maximizing policy
    (infadapter, msplus, oracle) beats them by less than that (see :class:`Stabilized`)."""
    if spec in SPLIT_POLICIES:
        raise BadInput(f"--policy {spec}: a static split of the budget between services; it needs a profile "
                       "with services (e.g. --profile profiles/services-local.yaml)")
    e = entry(spec)
    if e.upstream and backend != "kubernetes":
        where = f"--backend {backend}" if backend else "the simulator and plan"
        raise BadInput(f"--policy {spec}: the cluster's own {e.upstream.upper()} runs only live on --backend "
                       f"kubernetes (not in {where}); the simulator's model of it is {simulated_spec(spec)}")
    arg = spec.partition(":")[2]
    policy = e.build(arg, profile, vpa_config)
    gain = min_gain if e.maximizes_objective else 0.0
    standby = e.name == "infadapter" and arg == "standby"
    if e.stabilized and (stabilization_intervals > 1 or gain > 0 or standby):
        return Stabilized(policy, max(stabilization_intervals, 1), gain, standby)
    return policy


def simulated_spec(spec: str) -> str:
    """The spec the simulator runs for a live policy: an upstream one's model (``hpa-upstream:resnet50`` ->
    ``hpa:resnet50``, ``vpa-upstream:resnet101`` -> ``vpa-updater:resnet101``), any other as given."""
    _, sep, arg = spec.partition(":")
    e = entry(spec)
    model = {"hpa": "hpa", "vpa": "vpa-updater"}.get(e.upstream, "")
    return f"{model}{sep}{arg}" if model else spec


def joint_policy(profile: Profile, min_gain: float, spec: str = "infadapter",
                 split_budgets: Mapping[str, float] | None = None) -> Policy:
    """The policy of one plan for every service of ``profile``, live (the adapter runner) and simulated
    (:mod:`infadapter.sim.services`): ``spec`` with min-gain and without scale-down stabilization (a held
    scale-down of one service could keep cores another was just given; min-gain keeps the current cores only
    while they serve every service's forecast, so it takes nothing from a service that needs it). A static
    split (:data:`SPLIT_POLICIES`) is :class:`StaticSplit` on ``split_budgets``: each service's plain solve, with
    neither min-gain nor stabilization, live and simulated alike."""
    if spec in SPLIT_POLICIES:
        if split_budgets is None:
            raise BadInput(f"--policy {spec}: the split needs each service's load over its window")
        return StaticSplit(profile, dict(split_budgets), spec)
    return make_policy(spec, profile, 1, min_gain=min_gain)


def compare_specs(profile: Profile) -> list[str]:
    """``--policy all``: every registered policy's comparison rows, in registry order."""
    return [s for e in REGISTRY.values() for s in e.compare(profile)]


def _vpa_variant(arg: str, profile: Profile) -> str:
    if not arg:
        raise BadInput(f"--policy: vpa needs a variant, e.g. vpa:{profile.names[-1]}")
    profile.variant(arg)
    return arg


def _static_cores(arg: str, profile: Profile) -> dict[str, float]:
    if not arg:
        raise BadInput(f"--policy: static needs cores, e.g. static:{profile.names[0]}={profile.min_cores:g}")
    out: dict[str, float] = {}
    for part in arg.split(","):
        n, sep, c = part.partition("=")
        if not sep:
            # A bare name means that variant on the whole budget.
            out[n] = profile.core_options()[-1]
            continue
        try:
            out[n] = float(c)
        except ValueError:
            raise BadInput(f"--policy: static cores of {n!r} must be a number, got {c!r}") from None
    for n in out:
        profile.variant(n)
    if sum(out.values()) > profile.budget_cores + 1e-9:
        raise BadInput(f"--policy: static plan uses {sum(out.values()):g} cores, over the budget of "
                       f"{profile.budget_cores:g}")
    return out


def _describe(plan: Plan) -> str:
    return ", ".join(f"{a.name}x{a.cores:g}@{a.share:.0%}" for a in plan.allocations) or "nothing"
