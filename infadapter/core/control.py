"""When to decide and on which load: the one copy of the control rules.

The live loop (:mod:`infadapter.adapter.loop`) and the simulator (:mod:`infadapter.sim.simulation`) both call these
functions, so a rule changed here changes in both places, and the simulator imitates the loop by
construction. Everything here is pure: time, the observed history and the observed rate come in
as arguments.

The rules (docs/adapt.md explains the measurements behind each default):

- **Triggers**: ``start`` (the first decision, before the load is seen), ``interval`` (every
  ``interval_s`` after the last decision ended), ``overload`` (the rate observed over the last
  ``rate_window_s`` seconds exceeds the serving plan's capacity by ``overload_tolerance``; at most
  once per ``replan_gap_s``), ``crash`` and ``retry`` (the live loop only: a dead server, a failed
  apply).
- **What a decision sees** (:func:`seen`): observers (the live monitor, a replayed load, the
  simulator's arrivals) return per-second *counts* only; this module alone turns them into the observed
  rate (:func:`observed_rate`: the mean of the last ``rate_window_s`` complete seconds, what the
  overload trigger compares, live and simulated alike) and the history a decision keeps
  (:func:`history_cut`: the last ``ceil(history_s / history_stretch)`` seconds).
- **Forecast input**: the last ``history_s`` seconds of observed per-second counts; a replay
  compressed ``history_stretch`` times repeats each observed second that often, so the forecaster's
  minutes are trace minutes. The policy's :class:`~infadapter.core.policies.Context` gets the same
  series (:func:`context`), so a policy and the forecaster read one history in trace time.
- **The load a decision plans for**: the forecast (with ``demand: rate``, turned from the busiest count
  of a minute into the Poisson rate behind it: :func:`rate_of_peak`; the demand is the profile's unless a
  flag sets it: :func:`for_profile`), and never less than the rate
  observed now; on
  ``start`` at least ``initial_forecast_rps``;
  on ``overload`` at least the highest rate of the last ``rate_window_s`` seconds times
  ``1 + overload_tolerance`` (the forecaster looks at minutes; an overload seen now must be served
  now), plus, while the rate rises, ``overload_trend`` times its rise over the last window (a burst is
  still rising when it is seen, and the servers that will serve it take seconds to load: planning
  for where it was when seen makes a second transition a few seconds later, each one costing CPU
  that serving needs).
- **Grow in place first, re-mix after** (:func:`bridge_plan`): when a plan needs variants that are
  not running yet, the variants that run now are first grown in place (no load time) to serve the
  load as far as the budget allows, while the new ones load; the planned mix takes over when they
  are ready.
- **An outgrown plan is dropped** (:func:`outgrown`): while a plan's new variants load, the loop keeps
  observing; once a service's rate runs above both the load the plan was made for and what it serves, the
  backend stops waiting, the old plan keeps serving, and the next check decides again on the rate seen now
  (a burst that arrives during a load would otherwise meet the plan of the rate before it, seconds late).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, get_args

import numpy as np

from infadapter.core.plan import Plan, plan_from_cores
from infadapter.core.policies import Context, Decision, Policy, Stabilized
from infadapter.core.profile import Demand, Profile
from infadapter.errors import BadInput

#: Ten minutes of per-second history: the paper's forecaster input.
HISTORY_S = 600
#: Seconds in a day: the trace's and the forecaster's training days are counted in them.
DAY_S = 86400

TRIGGERS = ("start", "interval", "overload", "crash", "retry")
#: ``ControlConfig.demand``'s values: the profile's (one list of them).
DEMANDS: tuple[str, ...] = get_args(Demand)
#: Seconds in a forecaster minute (the forecasters predict the busiest second of the next one).
MINUTE_S = 60


class Forecaster(Protocol):
    def predict(self, history_rps: Sequence[float]) -> float: ...


@dataclass(frozen=True)
class ControlConfig:
    """Timing and thresholds of the control rules: the one config of them, composed into the live loop's
    (:class:`~infadapter.adapter.loop.LoopConfig`), the runner's (:class:`~infadapter.adapter.runner.AdapterConfig`)
    and the simulator's (:class:`~infadapter.sim.simulation.SimConfig`) as their ``control`` field; the CLI
    binds each of its flags to one field here (:data:`infadapter.commands.options.CONTROL_FLAGS`)."""

    #: Seconds between periodic decisions.
    interval_s: float = 10.0
    #: Seconds between mid-interval checks (overload, crashes, CPU samples).
    check_s: float = 1.0
    #: Re-plan at once when the observed rate runs above the plan's capacity (off: the paper's setting).
    react: bool = True
    #: Seconds of observed counts averaged into the rate that the overload check compares.
    rate_window_s: int = 3
    #: The overload check fires above capacity x (1 + this); the re-plan serves rate x (1 + this).
    overload_tolerance: float = 0.10
    #: An overload re-plan adds this many windows of the rate's rise (0: plan for the rate seen now).
    overload_trend: float = 0.0
    #: What a forecast is turned into before it is planned for (:data:`DEMANDS`): ``peak``, the forecaster's
    #: busiest second as it is (the paper's target); ``rate``, the Poisson rate whose busiest second that is
    #: (:func:`rate_of_peak`). None: the profile's (``Profile.demand``, the unit its capacities were measured
    #: in), filled in by :func:`for_profile`; left unresolved it plans for the peak.
    demand: str | None = None
    #: No two overload re-plans closer than this (seconds); None: a tenth of the interval, at least check_s.
    replan_gap_s: float | None = None
    #: The forecaster sees at most this many (trace-time) seconds of history.
    history_s: int = HISTORY_S
    #: Replays compressed K times (``--speedup K``): each observed second stands for K trace seconds.
    history_stretch: int = 1
    #: The first decision plans for at least this load (req/s).
    initial_forecast_rps: float = 0.0
    #: Per-second counts seen before the run (at the replay's time scale): an adapter that was already
    #: running saw them, so the forecaster's first inputs include them.
    history_before: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise BadInput(f"--interval: must be > 0 seconds, got {self.interval_s:g}")
        if not self.check_s > 0:
            raise BadInput(f"--check: must be > 0 seconds, got {self.check_s:g}")
        if self.rate_window_s < 1:
            raise BadInput(f"--rate-window: must be >= 1 second, got {self.rate_window_s}")
        if not self.overload_tolerance >= 0:
            raise BadInput(f"--overload-tolerance: must be >= 0, got {self.overload_tolerance:g}")
        if not (self.overload_trend >= 0 and math.isfinite(self.overload_trend)):
            raise BadInput(f"--overload-trend: must be a finite number >= 0, got {self.overload_trend:g}")
        if self.demand is not None and self.demand not in DEMANDS:
            raise BadInput(f"--demand: must be one of {', '.join(DEMANDS)}, got {self.demand!r}")
        if self.replan_gap_s is not None and self.replan_gap_s < 0:
            raise BadInput(f"replan_gap_s: must be >= 0 seconds, got {self.replan_gap_s:g}")
        if self.history_s < 1:
            raise BadInput(f"history_s: must be >= 1 second, got {self.history_s}")
        if self.history_stretch < 1:
            raise BadInput(f"history_stretch: must be >= 1, got {self.history_stretch}")
        if not (self.initial_forecast_rps >= 0 and math.isfinite(self.initial_forecast_rps)):
            raise BadInput(f"initial_forecast_rps: must be a finite rate >= 0, got {self.initial_forecast_rps}")

    @property
    def gap_s(self) -> float:
        """The effective minimum gap between two overload re-plans."""
        if self.replan_gap_s is not None:
            return self.replan_gap_s
        return max(self.interval_s / 10.0, self.check_s)


@dataclass(frozen=True)
class Seen:
    """What one decision observed, computed from per-second counts by :func:`seen` (live and simulated)."""

    #: The per-second counts a decision keeps (:func:`history_cut`), oldest first.
    history: tuple[float, ...]
    #: The observed rate (:func:`observed_rate`): what the overload trigger compares with capacity.
    rate_rps: float


def kept_s(config: ControlConfig) -> int:
    """Observed seconds a decision keeps: enough for ``history_s`` trace seconds once stretched."""
    return math.ceil(config.history_s / config.history_stretch)


def history_cut(counts: Sequence[float], config: ControlConfig) -> tuple[float, ...]:
    """The last :func:`kept_s` per-second counts of ``counts`` (oldest first): a decision's history."""
    k = kept_s(config)
    tail = counts[max(len(counts) - k, 0):]
    # An array's tolist() gives the same Python floats as float() of each element, about 20x sooner (the
    # simulator cuts 600 seconds at each of a day's ~8,700 decisions).
    return tuple(tail.tolist()) if isinstance(tail, np.ndarray) and tail.dtype.kind == "f" else tuple(
        float(x) for x in tail)


def observed_rate(counts: Sequence[float], config: ControlConfig) -> float:
    """The observed rate: the mean per-second count of the last ``rate_window_s`` complete seconds.

    The one copy of this rule: the live loop (any observer) and the simulator both call it, so
    ``rate_window_s`` moves the live overload trigger and the simulated one alike.
    """
    window = counts[max(len(counts) - config.rate_window_s, 0):]
    return float(sum(window)) / len(window) if len(window) else 0.0


def seen(counts: Sequence[float], config: ControlConfig) -> Seen:
    """What a decision sees in the per-second ``counts`` an observer returned (complete seconds, oldest first)."""
    return Seen(history=history_cut(counts, config), rate_rps=observed_rate(counts, config))


def forecast_input(history_rps: Sequence[float], config: ControlConfig) -> list[float]:
    """What the forecaster sees: the last ``history_s`` trace-time seconds of the observed counts."""
    hist = list(history_rps)
    k = config.history_stretch
    if k > 1:
        hist = [x for x in hist[-kept_s(config):] for _ in range(k)]
    return hist[-config.history_s:]


def rate_rise(history_rps: Sequence[float], config: ControlConfig) -> float:
    """How much the mean rate of the last ``rate_window_s`` seconds exceeds the window's before (0 when
    it fell, or when less than two windows were seen)."""
    w = config.rate_window_s
    if len(history_rps) < 2 * w:
        return 0.0
    now = sum(history_rps[-w:]) / w
    before = sum(history_rps[-2 * w:-w]) / w
    return max(float(now - before), 0.0)


@functools.cache
def expected_max_normal(n: int) -> float:
    """E[max of ``n`` independent standard normals] (0 for n = 1; 1.63 for 12, 2.32 for 60)."""
    if n <= 1:
        return 0.0
    x = np.linspace(-9.0, 9.0, 36001)
    cdf = 0.5 * (1.0 + np.array([math.erf(v / math.sqrt(2.0)) for v in x]))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return float(np.sum(x * n * pdf * cdf ** (n - 1)) * (x[1] - x[0]))


def rate_of_peak(peak_rps: float, seconds: int) -> float:
    """The Poisson rate whose busiest of ``seconds`` one-second counts is expected to be ``peak_rps``.

    A forecaster predicts the busiest second of a minute of counts; at a steady rate r those counts
    scatter by sqrt(r) and their busiest lies about ``expected_max_normal(seconds)`` of that above r. A
    profile's capacity is a Poisson rate whose own second-to-second scatter its p99 measurement already
    absorbed, so planning a capacity for the busiest count plans that scatter twice. Solves
    ``r + z * sqrt(r) = peak`` for r (z from :func:`expected_max_normal`)."""
    if peak_rps <= 0:
        return max(peak_rps, 0.0)
    z = expected_max_normal(seconds)
    if z == 0.0:
        return peak_rps  # one count a minute: its busiest is itself
    root = (-z + math.sqrt(z * z + 4.0 * peak_rps)) / 2.0
    return root * root


def for_profile(config: ControlConfig, profile: Profile) -> ControlConfig:
    """``config`` with its demand resolved: a flag's, else the profile's (what its capacities measure: a
    profile measured as Poisson rates at the SLO's p99 plans for a rate, the paper's profile for the peak)."""
    return config if config.demand is not None else replace(config, demand=profile.demand)


def minute_seconds(config: ControlConfig) -> int:
    """Observed seconds in one of the forecaster's (trace-time) minutes: independent counts in a minute."""
    return max(1, math.ceil(MINUTE_S / config.history_stretch))


def decision_load(trigger: str, forecaster: Forecaster, history_rps: Sequence[float], observed_rps: float,
                  config: ControlConfig) -> float:
    """The load (req/s) a decision plans for (see the module doc)."""
    seen = list(history_rps)
    if config.history_before and len(seen) * config.history_stretch < config.history_s:
        seen = [*config.history_before, *seen]
    hist = forecast_input(seen, config)
    forecast = float(forecaster.predict(hist)) if hist else config.initial_forecast_rps
    if hist and config.demand == "rate":
        forecast = rate_of_peak(forecast, minute_seconds(config))
    if trigger == "start":
        forecast = max(forecast, config.initial_forecast_rps)
    if trigger == "overload":
        recent = max(history_rps[-config.rate_window_s:], default=0.0) if len(history_rps) else 0.0
        rise = rate_rise(history_rps, config) * config.overload_trend
        forecast = max(forecast, (max(observed_rps, float(recent)) + rise) * (1 + config.overload_tolerance))
    elif trigger != "start":
        forecast = max(forecast, observed_rps)  # a forecaster that lags a rise must not plan below it
    if not math.isfinite(forecast):
        forecast = observed_rps
    return max(forecast, 0.0)


def overloaded(observed_rps: float, capacity_rps: float | None, config: ControlConfig) -> bool:
    """The observed rate runs above the serving plan's capacity (None: nothing serves)."""
    if capacity_rps is None:
        return observed_rps > 0
    return observed_rps > capacity_rps * (1 + config.overload_tolerance)


def trigger_due(now_s: float, next_decision_s: float | None, last_decision_s: float, observed_rps: float,
                capacity_rps: float | None, config: ControlConfig, retry_at_s: float | None = None,
                overloaded_now: bool | None = None) -> str | None:
    """Which decision is due now, if any: start, interval, retry or overload (in that order).

    ``overloaded_now``: whether :func:`overloaded` holds, decided by the caller (several services: any one
    service's rate against its own capacity); None: ``observed_rps`` against ``capacity_rps``."""
    if next_decision_s is None:
        return "start"
    if now_s >= next_decision_s - 1e-9:
        return "interval"
    if retry_at_s is not None:
        # A failed apply waits for its backoff: re-planning sooner would hammer a backend in trouble.
        return "retry" if now_s >= retry_at_s - 1e-9 else None
    over = overloaded(observed_rps, capacity_rps, config) if overloaded_now is None else overloaded_now
    if config.react and now_s - last_decision_s >= config.gap_s - 1e-9 and over:
        return "overload"
    return None


def context(profile: Profile, now_s: float, forecast_rps: float, current: Plan | None, observed: Seen,
            config: ControlConfig, **extra: object) -> Context:
    """The policy's :class:`~infadapter.core.policies.Context` for one decision, live or simulated.

    ``history_rps`` is the forecaster's input (:func:`forecast_input`: trace-time seconds, stretched on a
    compressed replay), not the raw counts: a policy that reads the history must see the same minutes the
    forecaster saw, whatever ``--speedup`` the load ran at. ``extra``: the Context's other fields
    (cpu_usage, state, solver, rates_before, true_peak_rps).
    """
    return Context(profile=profile, now_s=now_s, forecast_rps=forecast_rps, current=current,
                   history_rps=tuple(forecast_input(observed.history, config)), **extra)  # type: ignore[arg-type]


def propose(policy: Policy, ctx: Context) -> Decision:
    """The plan step: the policy's own plan, before scale-down stabilization."""
    return policy.propose(ctx) if isinstance(policy, Stabilized) else policy.decide(ctx)


def stabilize(policy: Policy, ctx: Context, proposed: Decision) -> Decision:
    """The stabilize step: the shared wrapper's hold/keep-warm rules applied to ``proposed``."""
    return policy.settle(ctx, proposed) if isinstance(policy, Stabilized) else proposed


def reason(trigger: str, policy_reason: str, degraded: str = "") -> str:
    """A decision record's reason: what forced an unscheduled decision, then the policy's reason.

    The same words live and simulated: an overload re-plan says so (the trigger alone does not say that
    the load ran above capacity), a crash says which server died and where its traffic went.
    """
    if trigger == "overload":
        return f"overload re-plan; {policy_reason}"
    if trigger == "crash" and degraded:
        return f"{degraded}; {policy_reason}"
    return policy_reason


def outgrown(target: Plan, serving: Plan | None, observed_by_service: Mapping[str, float],
             config: ControlConfig) -> str:
    """Why ``target``, whose new variants are still loading, is already too small ('' when it is not): a
    service's observed rate (``""``: the one service's) runs above the load ``target`` was planned for, above
    what it serves, and above what ``serving`` (the plan serving meanwhile) serves, each by more than
    ``overload_tolerance``: the overload re-plan would fire on it as soon as it took over, and it does already
    on what serves. A plan that serves less than its load by design (the budget cannot hold it) is outgrown
    only by a load above the one it was planned for; a rate that what serves now holds (a batch service's
    noise) outgrows nothing."""
    planned = {s.name: s.load_rps for s in target.services} if target.services else {"": target.load_rps}
    limit = 1 + config.overload_tolerance
    for name, rate in observed_by_service.items():
        if name not in planned:
            continue
        cap = target.served_capacity_rps(name or None)
        now = serving.served_capacity_rps(name or None) if serving is not None else 0.0
        if rate > planned[name] * limit and rate > cap * limit and rate > now * limit:
            who = f"{name}: " if name else ""
            return (f"{who}{rate:.1f} req/s observed while its new variants loaded, above the {planned[name]:.1f} "
                    f"req/s the plan was made for, the {cap:.1f} req/s it serves and the {now:.1f} req/s "
                    "served meanwhile")
    return ""


def bridge_plan(profile: Profile, serving: Plan | None, target: Plan, load_rps: float,
                max_cores: Mapping[str, float] | None = None,
                room_cores: Callable[[], float | None] | None = None,
                limit_cores: float | None = None) -> Plan | None:
    """The plan to serve while ``target``'s new variants load, or None when none is needed.

    None when ``target`` starts no new variant, or when ``serving`` already serves ``load_rps``.
    Otherwise the variants of ``serving`` with their cores grown in place (never shrunk), one core
    step at a time to the variant that gains the most capacity per step, until the load is served or
    the budget is used (the loading variants are the surge, as Kubernetes' ``maxSurge``), each
    variant at most ``max_cores[name]`` (what the backend can give it in place); shares are
    proportional to capacity. ``room_cores``: what the running and the new variants may hold together
    (a full node has no surge room; asked only when a growth is considered): the growth leaves the new
    variants their cores out of it. ``limit_cores``: the most the running variants may hold (default: the
    budget; :func:`services_bridge_plan` gives a service what the others leave).
    """
    if serving is None or not serving.allocations:
        return None
    cores = serving.cores_by_name()
    if not set(target.cores_by_name()) - set(cores) or serving.served_capacity_rps() + 1e-9 >= load_rps:
        return None
    top = profile.core_options()[-1]
    step = profile.core_step
    limit = profile.budget_cores if limit_cores is None else limit_cores
    surge_room = room_cores() if room_cores is not None else None
    if surge_room is not None:
        new_cores = sum(c for n, c in target.cores_by_name().items() if n not in cores)
        limit = min(limit, surge_room - new_cores)

    def cap(name: str, c: float) -> float:
        return max(profile.capacity_rps(name, c), 0.0)

    grown = dict(cores)
    while sum(cap(n, c) for n, c in grown.items()) < load_rps:
        room = [n for n, c in grown.items()
                if c + step <= min(top, (max_cores or {}).get(n, top)) + 1e-9]
        if not room or sum(grown.values()) + step > limit + 1e-9:
            break
        best = max(room, key=lambda n: cap(n, grown[n] + step) - cap(n, grown[n]))
        grown[best] = round(grown[best] + step, 9)
    if grown == cores:
        return None
    caps = {n: cap(n, c) for n, c in grown.items()}
    acc = {n: profile.variant(n).accuracy for n in grown}
    return plan_from_cores(grown, load_rps, caps, acc)


def services_bridge_plan(profile: Profile, serving: Plan | None, target: Plan, loads: Mapping[str, float],
                         max_cores: Mapping[str, float] | None = None,
                         room_cores: Callable[[], float | None] | None = None) -> Plan | None:
    """:func:`bridge_plan` for several services sharing the budget, or None when no service grows.

    A service whose part of ``target`` starts no new variant takes that part at once (all of it runs already:
    resizes in place, routing, deletions); one whose part starts new variants has its running variants grown in
    place toward its load in ``loads`` on the cores the others leave of the budget (its new variants are the
    surge). Services in turn by name; a service with nothing running yet is left to the plan."""
    if serving is None or not serving.allocations:
        return None
    new = set(target.names) - set(serving.names)
    loading = sorted({a.service for a in target.allocations if a.name in new})
    if not loading:
        return None
    allocations = [a for a in target.allocations if a.service not in loading]
    held = {svc: sum(a.cores for a in serving.allocations if a.service == svc) for svc in loading}
    grew = False
    for i, svc in enumerate(loading):
        mine = tuple(a for a in serving.allocations if a.service == svc)
        if not mine:
            continue
        others = sum(a.cores for a in allocations) + sum(held[s] for s in loading[i + 1:])
        part = Plan(mine, loads.get(svc, 0.0))
        wanted = Plan(tuple(a for a in target.allocations if a.service == svc), loads.get(svc, 0.0))
        grown = bridge_plan(profile, part, wanted, loads.get(svc, 0.0), max_cores, room_cores,
                            limit_cores=profile.budget_cores - others)
        if grown is None:
            allocations += mine
        else:
            grew = True
            allocations += [replace(a, service=svc) for a in grown.allocations]
    if not grew:
        return None
    by = profile.accuracy_by_service({a.name: a.share for a in allocations})
    total = sum(loads.get(n, 0.0) for n in by)
    accuracy = sum(acc * loads.get(n, 0.0) for n, acc in by.items()) / total if total > 0 else 0.0
    return Plan(tuple(allocations), sum(loads.values()), accuracy=accuracy,
                notes=("grown in place while new variants load",))


def initial_forecast(rates_rps: Sequence[float] | None, history_before: Sequence[float] = (),
                     explicit: float | None = None, interval_s: float = ControlConfig.interval_s) -> float:
    """The first decision's floor: ``explicit`` when given; 0 when there is history before the load (the
    forecaster reads it); else the peak of a known load schedule over the first interval (a constant
    ``--rate`` is that rate), since with nothing observed yet the first plan would otherwise be the
    smallest one."""
    if explicit is not None:
        return float(explicit)
    if len(history_before) or not rates_rps:
        return 0.0
    return float(max(list(rates_rps)[: max(math.ceil(interval_s), 1)]))
