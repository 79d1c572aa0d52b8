"""Policies: (profile, observed history, forecast, current plan, state) -> Decision.

Every policy has one signature, ``decide(ctx) -> Decision``, is pure (time comes in ``ctx.now_s``,
state goes out in ``Decision.state`` and comes back in the next ``ctx.state``), and is shared by the
simulator and the live loop. Scale-down stabilization is one wrapper (:class:`Stabilized`) around any
policy, so every policy is compared on the same terms.

- ``infadapter``: the integer program of :mod:`infadapter.solver`.
- ``msplus``: model switching (the paper's MS+): one variant, the cores with the best objective.
- ``vpa:NAME``: the Kubernetes VPA recommender for CPU on one fixed variant (see :mod:`infadapter.vpa`).
- ``static:NAME=CORES[,...]``: a fixed plan.
- ``oracle``: the integer program on the true future peak (simulator only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from infadapter import solver as solver_mod
from infadapter.errors import BadInput
from infadapter.plan import Allocation, Plan
from infadapter.profile import Profile
from infadapter.vpa import VpaConfig, VpaState, recommend


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


class Policy(Protocol):
    name: str

    def decide(self, ctx: Context) -> Decision: ...


# -- infadapter ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InfAdapter:
    """The integer program on the forecast load."""

    name: str = "infadapter"

    def decide(self, ctx: Context) -> Decision:
        res = solver_mod.solve(ctx.profile, ctx.forecast_rps, ctx.current_cores, ctx.solver)
        why = f"{res.solver} {res.status}: {_describe(res.plan)} for {ctx.forecast_rps:.1f} req/s"
        return Decision(res.plan, ctx.state, why, res.solve_s, res.solver)


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
    """The VPA recommender's CPU target on one fixed variant, applied by replacement."""

    variant: str
    config: VpaConfig = field(default_factory=VpaConfig)
    initial_cores: float | None = None

    @property
    def name(self) -> str:
        return f"vpa:{self.variant}"

    def decide(self, ctx: Context) -> Decision:
        p = ctx.profile
        p.variant(self.variant)  # BadInput for an unknown name
        state: VpaState = ctx.state if isinstance(ctx.state, VpaState) else VpaState.empty(self.config)
        request = ctx.current_cores.get(self.variant, self.initial_cores or p.core_options()[-1])
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
        plan = single_variant_plan(p, self.variant, cores, ctx.forecast_rps, ctx.current_cores)
        return Decision(plan, state, why)


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
#: Keep the current cores unless a new plan's objective beats them by this much: forecast noise must not
#: swap equal plans back and forth (measured against plan churn in live runs; docs/adapt.md).
DEFAULT_MIN_GAIN = 0.005


@dataclass(frozen=True)
class StabilizedState:
    inner: Any = None
    #: Plans proposed by consecutive decisions that wanted fewer cores than the current plan.
    pending_down: tuple[Plan, ...] = ()


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

    @property
    def name(self) -> str:
        return self.inner.name

    def decide(self, ctx: Context) -> Decision:
        st = ctx.state if isinstance(ctx.state, StabilizedState) else StabilizedState()
        d = self.inner.decide(replace(ctx, state=st.inner))
        cur = ctx.current
        kept = _keep_if_close(ctx, d, self.min_gain) if self.min_gain > 0 else None
        if kept is not None:
            return replace(kept, state=StabilizedState(d.state, st.pending_down))
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
            return replace(d, state=StabilizedState(d.state, ()))
        pending = (*st.pending_down, d.plan)
        if len(pending) >= self.intervals:
            chosen = max(pending[-self.intervals :], key=lambda p: p.cores)
            return replace(d, plan=chosen.with_load(ctx.forecast_rps), state=StabilizedState(d.state, ()),
                           reason=f"{d.reason}; scale-down after {self.intervals} intervals")
        keep = cur.with_load(ctx.forecast_rps)  # type: ignore[union-attr]
        return replace(d, plan=keep, state=StabilizedState(d.state, pending),
                       reason=f"{d.reason}; scale-down held ({len(pending)}/{self.intervals})")


def _keep_if_close(ctx: Context, d: Decision, min_gain: float) -> Decision | None:
    """The current cores re-shared for the forecast, when ``d`` gains less than ``min_gain`` over them."""
    cur = ctx.current
    if cur is None or not cur.allocations or not d.plan.feasible:
        return None
    cores = cur.cores_by_name()
    if d.plan.cores_by_name() == cores:
        return None
    shares = solver_mod.greedy_shares(ctx.profile, ctx.forecast_rps, cores)
    if shares is None:
        return None  # the current plan cannot serve the forecast: change
    obj = solver_mod.objective_value(ctx.profile, shares, cores, cores)
    gain = d.plan.objective - obj
    if gain >= min_gain:
        return None
    p = ctx.profile
    allocs = tuple(Allocation(n, c, shares[n], p.capacity_rps(n, c)) for n, c in cores.items())
    acc = sum(shares[n] * p.variant(n).accuracy for n in cores)
    plan = Plan(allocs, ctx.forecast_rps, feasible=True, objective=obj, accuracy=acc)
    return replace(d, plan=plan, reason=f"{d.reason}; kept the current cores (gain {gain:.4f} < {min_gain:g})")


# -- registry ---------------------------------------------------------------------------------------
POLICY_HELP = "infadapter | msplus | vpa:VARIANT | static:NAME=CORES[,...] | oracle"


def make_policy(
    spec: str,
    profile: Profile,
    stabilization_intervals: int = DEFAULT_STABILIZATION,
    vpa_config: VpaConfig | None = None,
    min_gain: float = 0.0,
) -> Policy:
    """Build a policy from its name, wrapped in the shared stabilization (``intervals`` <= 1 disables it).

    ``min_gain`` > 0 also keeps the current cores when a new plan of an objective-maximizing policy
    (infadapter, msplus, oracle) beats them by less than that (see :class:`Stabilized`)."""
    name, _, arg = spec.partition(":")
    factories: dict[str, Callable[[], Policy]] = {
        "infadapter": InfAdapter,
        "oracle": Oracle,
        "msplus": MsPlus,
        "ms+": MsPlus,
        "vpa": lambda: Vpa(_vpa_variant(arg, profile), vpa_config or VpaConfig(
            min_cores=profile.min_cores, max_cores=profile.budget_cores)),
        "static": lambda: Static(_static_cores(arg, profile), name=f"static:{arg}"),
    }
    if name not in factories:
        raise BadInput(f"--policy: unknown policy {spec!r}, expected {POLICY_HELP}")
    policy = factories[name]()
    gain = min_gain if name in ("infadapter", "oracle", "msplus", "ms+") else 0.0
    if stabilization_intervals > 1 or gain > 0:
        return Stabilized(policy, max(stabilization_intervals, 1), gain)
    return policy


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
