"""Several services, one budget, replayed: one :class:`~infadapter.sim.simulation.Simulation` per service (its
own window, SLO and queueing servers), planned either jointly or by independent adapters on a static split.

- ``infadapter``: one integer program for all services (:func:`infadapter.core.solver.solve` with ``loads``)
  at every decision, through the live loop's policy (:class:`infadapter.core.policies.InfAdapter`, whose
  :func:`~infadapter.core.policies.joint_solve` lets the forecasts' headroom over the observed rates give way
  first when they do not all fit, and only then does a service shed); each service's simulation applies its
  part of the joint plan.
- ``infadapter-split``: an independent adapter per service on a fixed share of the budget, split by the
  services' mean load over their windows (whole core steps, at least ``min_cores`` each, never more than the
  budget in all); ``infadapter-split-peak``: the same, split by their peak load. Both run the live loop's
  policy too (:class:`infadapter.core.policies.StaticSplit`: each service's own solve on its share).
- ``vpa:VARIANT``, ``hpa:VARIANT[=POD_CORES]``: that baseline per service on its variant ``VARIANT``, capped
  at the service's share of the split by mean load.

All decide periodically at the same times (no reaction to overload between decisions: the services'
decisions must fall together for one joint solve) and without scale-down stabilization (a held scale-down
of one service could take cores another was just given), so they are judged on the same terms.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from infadapter.core import control
from infadapter.core import solver as solver_mod
from infadapter.core.plan import Allocation, Plan
from infadapter.core.policies import SPLIT_POLICIES, Context, Decision, Policy, joint_policy, split_budget
from infadapter.core.profile import Profile, service_profile
from infadapter.errors import BadInput
from infadapter.sim.simulation import SimConfig, SimResult, Simulation, make_arrivals

#: The policies of a profile with services, beside the per-service baselines ``vpa:`` and ``hpa:``.
POLICIES = ("infadapter", "infadapter-split", "infadapter-split-peak")
#: How each static split shares the budget: by the services' mean or peak load over their windows.
SPLITS = SPLIT_POLICIES
#: Single-service baselines that run per service on the split by mean load.
PER_SERVICE = ("vpa", "hpa")


@dataclass(frozen=True)
class ServiceRun:
    """One service's replay: its per-second rates and its simulation settings (its window's history)."""

    rates_rps: Sequence[float]
    config: SimConfig


@dataclass
class _Joint:
    """One plan for every service at each decision time, shared by every service's simulation (they decide
    together): ``policy`` is the live loop's (:func:`~infadapter.core.policies.joint_policy`), the joint solve
    or a static split."""

    profile: Profile
    policy: Policy
    sims: dict[str, Simulation] = field(default_factory=dict)
    plans: dict[float, Plan] = field(default_factory=dict)
    bridges: dict[float, Plan] = field(default_factory=dict)
    serving: Plan | None = None
    solve_s: float = 0.0
    state: Any = None

    def plan_at(self, now_s: float, solver: solver_mod.Options) -> Plan:
        key = round(now_s, 6)
        if key not in self.plans:
            loads, observed = {}, {}
            for name, sim in self.sims.items():
                seen = control.seen(sim.observed(now_s), sim.ctl)
                trigger = "start" if not self.plans else "interval"
                loads[name] = control.decision_load(trigger, sim.forecaster, seen.history, seen.rate_rps, sim.ctl)
                observed[name] = seen.rate_rps
            # The live loop's call (for the joint solve, the forecasts' headroom gives way first when they do
            # not all fit).
            ctx = Context(self.profile, now_s, sum(loads.values()), solver=solver, forecast_by_service=loads,
                          observed_by_service=observed, current=self.serving, state=self.state)
            decision = self.policy.decide(ctx)
            self.solve_s += decision.solve_s
            self.state = decision.state
            # The live loop's growth in place for several services (one copy of the rule): which cores each
            # service's own growth may take while its new variants load.
            bridge = control.services_bridge_plan(self.profile, self.serving, decision.plan, loads)
            if bridge is not None:
                self.bridges[key] = bridge
            self.plans[key] = self.serving = decision.plan
        return self.plans[key]

    def bridge_limit(self, service: str, now_s: float) -> float:
        """The most cores ``service``'s growth in place may take at ``now_s``: the budget less what the other
        services hold meanwhile (their parts of the joint growth, else of the plan)."""
        key = round(now_s, 6)
        held = self.bridges.get(key) or self.plans[key]
        return self.profile.budget_cores - sum(a.cores for a in held.allocations if a.service != service)


@dataclass(frozen=True)
class _JointPart:
    """The policy a service's simulation runs: its part of the plan of every service."""

    joint: _Joint
    service: str
    name: str = "infadapter"

    def decide(self, ctx: Context) -> Decision:
        plan = self.joint.plan_at(ctx.now_s, ctx.solver)
        mine = [a for a in plan.allocations if a.service == self.service]
        out = next(o for o in plan.services if o.name == self.service)
        if not mine:
            # Shed entirely this interval: the fastest variant on the fewest cores stays up (it is over the
            # budget by min_cores; a service is never switched off in the simulator).
            p = ctx.profile
            fastest = max(p.variants, key=lambda v: v.capacity.rps(p.min_cores))
            mine = [Allocation(fastest.name, p.min_cores, 1.0, p.capacity_rps(fastest.name, p.min_cores))]
        allocs = tuple(replace(a, service="") for a in mine)
        part = Plan(allocs, out.load_rps, feasible=out.shed_rps <= 1e-6, objective=plan.objective,
                    accuracy=out.accuracy, notes=tuple(n for n in plan.notes if f"service {self.service}:" in n))
        return Decision(part, ctx.state, f"joint: {self.service} {out.served_rps:.1f} of {out.load_rps:.1f} req/s")


def _config(run: ServiceRun) -> SimConfig:
    ctl = replace(run.config.control, react=False)
    return replace(run.config, control=ctl, stabilization_intervals=1, min_gain=0.0, memoize=False)


def simulate_services(profile: Profile, runs: Mapping[str, ServiceRun], policy: str) -> dict[str, Any]:
    """Replay every service's window against ``policy`` (:data:`POLICIES`, or ``vpa:``/``hpa:`` per service);
    the ``simulate --json`` result: per service and in total."""
    kind, _, arg = policy.partition(":")
    if policy not in POLICIES and kind not in PER_SERVICE:
        raise BadInput(f"--policy: with services: one of {', '.join(POLICIES)}, vpa:VARIANT or "
                       f"hpa:VARIANT[=POD_CORES], got {policy!r}")
    names = profile.service_names
    budgets: dict[str, float] = {}
    if policy != "infadapter":
        share = SPLITS.get(policy, np.mean)
        budgets = split_budget(profile, {n: float(share(runs[n].rates_rps)) for n in names})
    if policy in POLICIES:
        # The policy the live loop runs (one copy): min-gain for the joint solve, none for a split's parts.
        gain = max(runs[n].config.min_gain for n in names) if policy == "infadapter" else 0.0
        joint = _Joint(profile, joint_policy(profile, gain, policy, budgets or None))
        sims = {}
        for n in names:
            cfg = _config(runs[n])
            sims[n] = Simulation(service_profile(profile, n, budgets.get(n)), runs[n].rates_rps,
                                 _JointPart(joint, n, policy), cfg, arrivals=make_arrivals(runs[n].rates_rps, cfg.seed),
                                 bridge_limit=functools.partial(joint.bridge_limit, n) if not budgets else None)
        joint.sims = sims
        return _report(profile, policy, {n: sims[n].run() for n in names}, budgets)
    results: dict[str, SimResult] = {}
    for n in names:
        cfg = _config(runs[n])
        arr = make_arrivals(runs[n].rates_rps, cfg.seed)
        spec = f"{kind}:{_qualified(profile, n, arg)}"
        results[n] = Simulation(service_profile(profile, n, budgets[n]), runs[n].rates_rps, spec, cfg,
                                arrivals=arr).run()
    return _report(profile, policy, results, budgets)


def _qualified(profile: Profile, service: str, arg: str) -> str:
    """``VARIANT[=POD_CORES]`` of a per-service baseline with the variant named as in the service's profile."""
    name, sep, rest = arg.partition("=")
    svc = profile.service(service)
    if name not in {v.name for v in svc.variants}:
        raise BadInput(f"--policy: service {service} has no variant {name!r}; give one of "
                       f"{', '.join(v.name for v in svc.variants)} (e.g. vpa:{svc.variants[0].name})")
    return svc.qualified(name) + sep + rest


def _report(profile: Profile, policy: str, results: Mapping[str, SimResult], budgets: Mapping[str, float]
            ) -> dict[str, Any]:
    requests = sum(r.requests for r in results.values())
    violations = sum(r.violations for r in results.values())
    served = {n: r.requests - r.dropped for n, r in results.items()}
    acc = sum(r.mean_accuracy * served[n] for n, r in results.items())
    services = []
    for n, r in results.items():
        row = {"name": n, "slo_violation_rate": round(r.slo_violation_rate, 6), "mean_cores": round(r.mean_cores, 4),
               "mean_accuracy": round(r.mean_accuracy, 6), "requests": r.requests, "dropped": r.dropped,
               "p99_ms": round(r.p99_ms, 2), "slo_ms": profile.service(n).slo_ms, "transitions": r.transitions}
        if budgets:
            row["budget_cores"] = budgets[n]
        services.append(row)
    return {
        "policy": policy,
        "requests": requests,
        "slo_violation_rate": round(violations / requests, 6) if requests else 0.0,
        # The services' windows have one length (checked by the caller): the means add up.
        "mean_cores": round(sum(r.mean_cores for r in results.values()), 4),
        "mean_accuracy": round(acc / sum(served.values()), 6) if sum(served.values()) else 0.0,
        "dropped": sum(r.dropped for r in results.values()),
        "services": services,
    }


def pooled_bound(profile: Profile, rates: Mapping[str, Sequence[float]], service_cv: float = 1.0,
                 shares: Mapping[str, float] | None = None) -> float:
    """The pooled lower bound on the share of requests served late: every second, the load that the budget
    cannot serve however it is shared between the services at that second (each service's most req/s on
    ``c`` cores, :func:`infadapter.sim.fluid.service_rps_by_steps` at its SLO: its fastest variant in
    practice), over all the requests. Per second, as a fluid: no queue carries load into the next second and
    nothing is lost to forecasting, loading or moving traffic. ``shares``: each service held to its own
    cores instead (the same bound for a static split)."""
    from infadapter.sim.fluid import service_rps_by_steps

    names = list(profile.service_names)
    slots = round(profile.budget_cores / profile.core_step + 1e-9)
    r = np.vstack([np.asarray(rates[n], dtype=float) for n in names])  # services x seconds
    total = float(r.sum())
    if total <= 0:
        return 0.0
    served = np.zeros((r.shape[1], slots + 1))  # served[t, j]: the most the services so far serve on j steps
    for i, n in enumerate(names):
        top = slots if shares is None else round(shares[n] / profile.core_step + 1e-9)
        m = np.asarray(service_rps_by_steps(service_profile(profile, n), top * profile.core_step, service_cv))
        own = np.minimum(r[i][:, None], m[None, :])  # seconds x (0..top steps)
        if shares is not None:
            served[:, 0] += own[:, -1]
            continue
        nxt = np.zeros_like(served)
        for k in range(top + 1):
            nxt[:, k:] = np.maximum(nxt[:, k:], served[:, :slots + 1 - k] + own[:, k:k + 1])
        served = nxt
    best = served[:, 0] if shares is not None else served[:, -1]
    return float((r.sum(axis=0) - best).sum() / total)
