"""Why a decision chose its plan: objective terms, binding constraints and the runner-up (pure).

For a policy that maximizes the objective (``infadapter``, ``msplus``) the answer is read off the plan
the policy's solver chose (its *optimum*, before stabilization or min-gain may have held it back):

- **terms**: accuracy, cost (``alpha * cores / budget``) and transition (``beta * T``) of the plan that
  serves, and of the optimum when they differ;
- **binding**: the constraints at their limit: the budget (no room for one more core step), a
  variant's capacity at the SLO (one step fewer would not carry its share), the minimum cores, the
  pod fit on the nodes (a variant split into replicas), and stabilization or min-gain holding the
  optimum back;
- **runner-up**: the best plan with a different set of variants (read off the solver's table of every
  plan where the profile has one, else one more solve with a no-good cut on the set; for msplus every
  other single variant) and the best plan one core step away on one variant
  (same variants), each with its objective gap to the optimum (>= 0: the optimum is optimal) and
  what it would have cost or given up.

Other policies (VPA, HPA, static) do not solve the objective: they get the terms and a note saying so.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from infadapter.core import solver as solver_mod
from infadapter.core.plan import Allocation, Plan
from infadapter.core.policies import StabilizedState, entry, single_variant_plan
from infadapter.core.profile import Profile
from infadapter.errors import BadInput

_EPS = 1e-9
#: Policies whose decisions explain themselves (they maximize the objective from the load alone).
SOLVING = ("infadapter", "msplus", "oracle")


@dataclass(frozen=True)
class Explanation:
    """What :func:`explain` finds; every field is JSON-ready."""

    terms: dict[str, Any]
    binding: tuple[dict[str, Any], ...] = ()
    runner_up: dict[str, Any] | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def describe(plan: Plan | Mapping[str, Any]) -> str:
    """``resnet34x4@40% + resnet50x8@60%`` (idle warm variants left out)."""
    allocs = plan.as_dict()["variants"] if isinstance(plan, Plan) else plan.get("variants", [])
    parts = [f"{a['name']}x{a['cores']:g}@{a['share']:.0%}" for a in allocs if a.get("share", 0) > 1e-9]
    return " + ".join(parts) or "nothing"


def objective_terms(profile: Profile, plan: Plan, current: Mapping[str, float]) -> dict[str, float]:
    """The plan's objective split in its terms (accuracy - cost - transition = objective).

    With several services the accuracy term is the objective's: each service's weight x its accuracy x the
    part of its forecast it is served (the plan's shares are of what it serves)."""
    cores = plan.cores_by_name()
    shares = plan.shares_by_name()
    if plan.services:
        acc = sum(o.weight * o.accuracy * (o.served_rps / o.load_rps if o.load_rps > 0 else 1.0)
                  for o in plan.services)
    else:
        acc = sum(s * profile.variant(n).accuracy for n, s in shares.items())
    cost = profile.alpha * sum(cores.values()) / profile.budget_cores
    trans = profile.beta * solver_mod.transition_penalty(profile, cores, current)
    return {"accuracy": round(acc, 9), "cost": round(cost, 9), "transition": round(trans, 9),
            "objective": round(acc - cost - trans, 9), "cores": round(sum(cores.values()), 9)}


def history_digest(history_rps: Sequence[float]) -> dict[str, Any]:
    """A short, checkable summary of the observed history: length, last, mean, peak and a hash."""
    vals = [float(x) for x in history_rps]
    h = hashlib.sha256(struct.pack(f"<{len(vals)}d", *vals)).hexdigest()[:16]
    if not vals:
        return {"len": 0, "sha256_16": h}
    return {"len": len(vals), "last": round(vals[-1], 3), "mean": round(sum(vals) / len(vals), 3),
            "peak": round(max(vals), 3), "sha256_16": h}


def explain(
    profile: Profile,
    policy: str,
    load_rps: float,
    current: Plan | None,
    chosen: Plan,
    proposed: Plan | None = None,
    held_by: str = "",
    options: solver_mod.Options | None = None,
    other_sets: bool | None = None,
    other_set: Callable[[frozenset[str]], Plan | None] | None = None,
) -> Explanation:
    """Explain ``chosen`` (the plan the decision serves) for ``load_rps`` given the ``current`` plan.

    ``proposed``: the policy's own plan before a wrapper held it back (None: ``chosen`` is it);
    ``held_by``: ``"stabilization"`` or ``"min_gain"`` when a wrapper did. ``other_sets``: search the best
    plan with another set of variants (one more solve); None: only on a decision that changes the plan
    (``chosen`` differs from ``current``); one that keeps its plan, held back by a wrapper or not, gets the
    one-step-away runner-up alone with a note, or none when no plan one step away serves the load
    (bench/solver.py's trace rows show what the solve costs on every decision); ``explain`` (the command)
    searches those on reading (:func:`with_other_sets`).
    ``other_set``: the policy's solve of ``proposed`` kept its model (:attr:`Decision.other_set`): the search
    re-runs it with one more row instead of building a new one (the same plan, without the build).
    """
    cur = current.cores_by_name() if current is not None else {}
    optimum = proposed if proposed is not None else chosen
    terms = objective_terms(profile, chosen, cur)
    try:
        name = entry(policy).name if policy else ""
    except BadInput:  # a caller's own policy object, named by nothing in the registry
        name = policy
    if name not in SOLVING:
        return Explanation(terms, note=f"{policy} does not solve the objective: no binding constraints or "
                                       "runner-up (its reason says what it followed)")
    binding = list(_binding(profile, optimum, load_rps))
    extra: dict[str, Any] = {}
    held = _held_back(profile, chosen, optimum, held_by, cur)
    if held is not None:
        binding.insert(0, held[0])
        extra["optimum"] = held[1]
    if other_sets is None:
        other_sets = current is None or chosen.cores_by_name() != cur
    runner = (_runner_up(profile, name, optimum, load_rps, cur, options, other_sets, other_set)
              if optimum.feasible else None)
    return Explanation(terms, tuple(binding), runner, extra=extra)


def _held_back(profile: Profile, chosen: Plan, optimum: Plan, held_by: str, cur: Mapping[str, float]
               ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The binding entry of a wrapper (stabilization, min-gain) that held the solver's ``optimum`` back, and the
    optimum with its terms; None when nothing was held (or the held plan runs the same cores)."""
    if not held_by or _cores(optimum) == _cores(chosen):
        return None
    gain = optimum.objective - objective_terms(profile, chosen, cur)["objective"]
    if held_by == "stabilization-window":
        text = (f"stabilization applied the most generous plan of its window, {describe(chosen)}, not the "
                f"solver's {describe(optimum)}")
    elif held_by == "stabilization":
        text = (f"the solver's plan {describe(optimum)} was held back: scale-down waits until enough "
                "decisions in a row want less")
    else:
        text = (f"the solver's plan {describe(optimum)} was held back: it beats the current variants by only "
                f"{gain:.4f} in objective (min gain)")
    kind = "stabilization" if held_by.startswith("stabilization") else held_by
    return ({"kind": kind, "text": text, "gain": round(gain, 9)},
            {"plan": optimum.as_dict(), "terms": objective_terms(profile, optimum, cur)})


def _cores(plan: Plan) -> dict[str, float]:
    return {a.name: a.cores for a in plan.allocations if a.share > 1e-9}


def _binding(profile: Profile, plan: Plan, load: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    step, mn, budget = profile.core_step, profile.min_cores, profile.budget_cores
    if not plan.feasible:
        short = [f"{o.name} short by {o.shed_rps:.1f} of {o.load_rps:.1f}" for o in plan.services if o.shed_rps > 1e-6]
        text = (f"the whole budget of {budget:g} cores cannot serve every service's forecast ({', '.join(short)} "
                "req/s)" if short else f"the whole budget of {budget:g} cores cannot serve {load:.1f} req/s: "
                "the highest-capacity mix runs")
        out.append({"kind": "budget", "text": text, "cores": plan.cores})
        return out
    if plan.cores + step > budget + _EPS:
        out.append({"kind": "budget", "text": f"uses {plan.cores:g} of the {budget:g}-core budget: no room for "
                                              f"one more {step:g}-core step", "cores": plan.cores})
    # Several services: a variant's share is of its own service's load, judged at that service's SLO.
    served = {o.name: o.served_rps for o in plan.services}
    for a in plan.allocations:
        if a.share <= 1e-9:
            continue
        need = a.share * served.get(a.service, load)
        slo_ms = profile.service(a.service).slo_ms if a.service else profile.slo_ms
        cap = profile.capacity_rps(a.name, a.cores)
        fewer = a.cores - step
        if cap <= need * (1 + 1e-6) + _EPS and a.share < 1 - 1e-9:
            out.append({"kind": "capacity", "variant": a.name, "cores": a.cores, "capacity_rps": round(cap, 3),
                        "assigned_rps": round(need, 3),
                        "text": f"{a.name} on {a.cores:g} cores is full at the {slo_ms:g} ms SLO "
                                f"({cap:.1f} req/s): the rest goes to other variants"})
        elif fewer < mn - _EPS:
            out.append({"kind": "min_cores", "variant": a.name, "cores": a.cores,
                        "text": f"{a.name} runs on the minimum {mn:g} cores ({cap:.1f} req/s at the SLO "
                                f"for {need:.1f} assigned)"})
        else:
            less = profile.capacity_rps(a.name, fewer)
            if less < need - _EPS:
                out.append({"kind": "capacity", "variant": a.name, "cores": a.cores,
                            "capacity_rps": round(cap, 3), "capacity_one_step_less_rps": round(less, 3),
                            "assigned_rps": round(need, 3),
                            "text": f"{a.name} needs {a.cores:g} cores for {need:.1f} req/s at the "
                                    f"{slo_ms:g} ms SLO: {fewer:g} cores serve only {max(less, 0):.1f}"})
        if profile.splits_pods and a.cores > (profile.max_pod_cores or math.inf) + _EPS:
            replicas, per_pod = profile.pod_layout(a.cores)
            out.append({"kind": "pod_fit", "variant": a.name, "replicas": replicas, "cores_per_pod": per_pod,
                        "text": f"{a.name} runs as {replicas} pods of {per_pod:g} cores (a node holds "
                                f"{profile.max_pod_cores:g})"})
    for o in plan.services:  # a service's accuracy floor holds its mix where it is (or cannot be held)
        if o.accuracy_floor is None or o.accuracy > o.accuracy_floor + 1e-6:
            continue
        text = (f"{o.name}'s accuracy is at its floor {o.accuracy_floor:.2%}: a faster mix would fall below it"
                if o.floor_met else f"{o.name}'s accuracy {o.accuracy:.2%} is below its floor "
                f"{o.accuracy_floor:.2%}: the budget cannot hold every floor at this load")
        out.append({"kind": "floor", "service": o.name, "accuracy": round(o.accuracy, 9),
                    "accuracy_floor": o.accuracy_floor, "text": text})
    if not out:
        out.append({"kind": "objective", "text": "every constraint has slack: the objective's accuracy/cost "
                                                 "trade-off alone chose this plan"})
    return out


def _candidate(profile: Profile, kind: str, optimum: Plan, alt: Plan, cur: Mapping[str, float]) -> dict[str, Any]:
    t_opt = objective_terms(profile, optimum, cur)
    t_alt = objective_terms(profile, alt, cur)
    gap = optimum.objective - alt.objective
    gap = 0.0 if -1e-9 < gap < 0 else gap
    d_cores = t_alt["cores"] - t_opt["cores"]
    d_acc = t_alt["accuracy"] - t_opt["accuracy"]
    d_trans = t_alt["transition"] - t_opt["transition"]
    words = [f"{d_cores:+g} cores"] if abs(d_cores) > _EPS else ["same cores"]
    words.append(f"{100 * d_acc:+.2f} pt accuracy" if abs(d_acc) > 1e-7 else "same accuracy")
    if abs(d_trans) > 1e-12:
        words.append("a slower transition" if d_trans > 0 else "a faster transition")
    return {"kind": kind, "plan": alt.as_dict(), "terms": t_alt, "objective": round(alt.objective, 9),
            "gap": round(gap, 9),
            "cores_delta": round(d_cores, 9), "accuracy_delta": round(d_acc, 9),
            "transition_delta": round(d_trans, 9),
            "text": f"{describe(alt)}: {', '.join(words)}, objective {gap_words(gap)} lower"}


def gap_words(gap: float) -> str:
    """An objective gap in words: 4 decimals, or 2 significant digits when smaller than that shows."""
    return f"{gap:.4f}" if gap >= 5e-5 or gap == 0 else f"{gap:.1e}"


#: Why a runner-up holds no ``different_variants`` alternative although one may exist.
NOT_SEARCHED = ("different variants not searched: the plan did not change (that search is one more solve; "
                "it runs on every decision that changes the plan)")


def _runner_up(profile: Profile, name: str, optimum: Plan, load: float, cur: Mapping[str, float],
               options: solver_mod.Options | None, other_sets: bool = True,
               other_set: Callable[[frozenset[str]], Plan | None] | None = None) -> dict[str, Any] | None:
    found: dict[str, dict[str, Any]] = {}
    other = _other_variants(profile, name, optimum, load, cur, options, other_set) if other_sets else None
    if other is not None:
        found["different_variants"] = _candidate(profile, "different_variants", optimum, other, cur)
    near = _other_cores(profile, name, optimum, load, cur)
    if near is not None:
        found["different_cores"] = _candidate(profile, "different_cores", optimum, near, cur)
    if not found:
        return None  # (not searched and none one step away: explain searches on reading, as for a note)
    best = min(found.values(), key=lambda c: c["gap"])
    return {**best, "alternatives": found, **({} if other_sets else {"note": NOT_SEARCHED})}


def with_other_sets(profile: Profile, policy: str, load_rps: float, current: Plan | None, optimum: Plan,
                    runner_up: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A recorded runner-up that skipped the other-set search (:data:`NOT_SEARCHED`, or none at all on a kept
    plan with no neighbour one step away) completed with it: what ``explain`` does on reading such a decision
    (the run saved the solve; the reader pays it once)."""
    runner_up = runner_up or {}
    cur = current.cores_by_name() if current is not None else {}
    try:
        name = entry(policy).name
    except BadInput:
        name = policy
    opt = _plan(profile, load_rps, cur, optimum.cores_by_name(), optimum.shares_by_name())
    found = {k: v for k, v in (runner_up.get("alternatives") or {}).items() if k != "different_variants"}
    other = _other_variants(profile, name, opt, load_rps, cur, None)
    if other is not None:
        found["different_variants"] = _candidate(profile, "different_variants", opt, other, cur)
    if not found:
        return dict(runner_up) or None
    best = min(found.values(), key=lambda c: c["gap"])
    return {**best, "alternatives": found, "searched_on_read": True}


def _other_variants(profile: Profile, name: str, optimum: Plan, load: float, cur: Mapping[str, float],
                    options: solver_mod.Options | None,
                    other_set: Callable[[frozenset[str]], Plan | None] | None = None) -> Plan | None:
    """The best plan whose running variants differ from the optimum's."""
    names = frozenset(optimum.cores_by_name())
    if name == "msplus":
        best: Plan | None = None
        for v in profile.variants:
            if v.name in names:
                continue
            for k in profile.core_options():
                cap = v.capacity.rps(k)
                if cap < 0 or cap + 1e-9 < load:
                    continue
                p = single_variant_plan(profile, v.name, k, load, cur)
                if best is None or p.objective > best.objective + 1e-12:
                    best = p
        return best
    # The exact best other set: the policy's solve gives it (read off the solver's table of every plan, or
    # one more solve with a no-good cut on the set). A cheaper local search (sets one variant away,
    # hill-climbed) cost +26% of a solve and missed the best set by up to 0.015 in objective at some loads
    # (measured in bench/solver.py's explain row), so exactness won.
    if other_set is not None:
        return other_set(names)
    res = solver_mod.solve(profile, load, cur, options, exclude_set=names)
    return res.plan if res.plan.feasible and res.plan.allocations else None


def _other_cores(profile: Profile, name: str, optimum: Plan, load: float, cur: Mapping[str, float]) -> Plan | None:
    """The best plan one core step away on one variant (same variants, shares refilled)."""
    cores = optimum.cores_by_name()
    total = sum(cores.values())
    best: Plan | None = None
    for n, c in cores.items():
        for k in (c - profile.core_step, c + profile.core_step):
            k = round(k, 9)
            if k < profile.min_cores - _EPS or total - c + k > profile.budget_cores + _EPS:
                continue
            if profile.capacity_rps(n, k) < 0:
                continue
            trial = {**cores, n: k}
            if name == "msplus":
                if profile.capacity_rps(n, k) + 1e-9 < load:
                    continue
                p = single_variant_plan(profile, n, k, load, cur)
            else:
                shares = solver_mod.greedy_shares(profile, load, trial)
                if shares is None:
                    continue
                p = _plan(profile, load, cur, trial, shares)
            if best is None or p.objective > best.objective + 1e-12:
                best = p
    return best


def _plan(profile: Profile, load: float, cur: Mapping[str, float], cores: Mapping[str, float],
          shares: Mapping[str, float]) -> Plan:
    allocs = tuple(Allocation(n, cores[n], shares[n], profile.capacity_rps(n, cores[n]))
                   for n in sorted(cores, key=profile.names.index))
    acc = sum(shares[n] * profile.variant(n).accuracy for n in cores)
    return Plan(allocs, load, feasible=True, objective=solver_mod.objective_value(profile, shares, cores, cur),
                accuracy=acc)


# -- policy state in a record (what ``explain --replay`` feeds back) -------------------------------
def state_to_dict(state: Any) -> dict[str, Any] | None:
    """The policy state before a decision, JSON-ready; None when there is none.

    Only the shared stabilization wrapper's state (around a stateless solver) is replayable; other
    states are named (``{"unsupported": TYPE}``) so replay can say why it skips them.
    """
    if state is None:
        return None
    if isinstance(state, StabilizedState) and state.inner is None:
        return {"stabilized": {"pending_down": [p.as_dict() | {"_load_exact": p.load_rps} for p in state.pending_down],
                               "warm": [[n, k] for n, k in state.warm]}}
    return {"unsupported": type(state).__name__}


def state_from_dict(data: Mapping[str, Any] | None) -> Any:
    """The inverse of :func:`state_to_dict` (ValueError for a state it cannot rebuild)."""
    if not data:
        return None
    if "stabilized" in data:
        s = data["stabilized"]
        pending = tuple(Plan.from_dict(p, "replay.state.pending_down").with_load(p.get("_load_exact", p["load"]))
                        for p in s.get("pending_down", []))
        return StabilizedState(None, pending, tuple((str(n), int(k)) for n, k in s.get("warm", [])))
    raise ValueError(f"policy state {data.get('unsupported', '?')} is not recorded in a replayable form")


def decision_fields(
    profile: Profile,
    policy: str,
    trigger: str,
    observed_rps: float,
    history_rps: Sequence[float],
    forecast_rps: float,
    forecaster: Any,
    before: Plan | None,
    decision: Any,
    state_before: Any,
    options: solver_mod.Options | None = None,
) -> dict[str, Any]:
    """The explanation fields of a :class:`~infadapter.adapter.records.DecisionRecord` for one decision.

    ``decision`` is the policy's :class:`~infadapter.core.policies.Decision`; ``state_before`` the state
    the policy was handed (recorded so that ``explain --replay`` can hand it again).
    """
    inputs = _inputs(trigger, observed_rps, history_rps, forecast_rps, forecaster)
    ex = explain(profile, policy, forecast_rps, before, decision.plan, decision.proposed, decision.held_by, options,
                 other_set=decision.other_set)
    terms = dict(ex.terms)
    if ex.extra.get("optimum"):
        terms["optimum"] = ex.extra["optimum"]
    return {
        "inputs": inputs,
        "terms": terms,
        "binding": ex.binding,
        "runner_up": ex.runner_up,
        "explain_note": ex.note,
        # Exact values (the record's rounded figures would not re-solve to the same plan at a boundary).
        "replay": {"load_rps": forecast_rps, "policy_state": state_to_dict(state_before)},
    }


def _inputs(trigger: str, observed_rps: float, history_rps: Sequence[float], forecast_rps: float,
            forecaster: Any) -> dict[str, Any]:
    """A record's ``inputs``: what the decision started from (one service, or the services' sums)."""
    headroom = getattr(forecaster, "headroom", None)
    return {
        "trigger": trigger,
        "observed_rps": round(observed_rps, 3),
        "history": history_digest(history_rps),
        "forecaster": str(getattr(forecaster, "name", type(forecaster).__name__)),
        "headroom": headroom if isinstance(headroom, (int, float)) else None,
        "forecast_rps": round(forecast_rps, 3),
        "forecast_over_observed": round(forecast_rps / observed_rps, 4) if observed_rps > 0 else None,
    }


#: Why a decision of several services holds no runner-up (its record's ``explain_note``).
SERVICES_NOTE = ("several services: no runner-up is searched for a joint plan (the other-variant-set and "
                 "one-core-step searches are one service's); the terms and binding constraints are the joint plan's")


def services_decision_fields(
    profile: Profile,
    trigger: str,
    observed_rps: float,
    history_rps: Sequence[float],
    forecaster: Any,
    loads_by_service: Mapping[str, float],
    observed_by_service: Mapping[str, float],
    before: Plan | None,
    decision: Any,
    state_before: Any,
) -> dict[str, Any]:
    """The explanation fields of a decision of several services (one joint solve), as :func:`decision_fields`
    for one: ``inputs`` (the sums, and each service's observed rate and forecast), the joint plan's ``terms``
    and ``binding`` constraints (the budget, each variant's capacity at its service's SLO, the forecasts'
    headroom giving way, min-gain holding the solver's plan back), no runner-up (:data:`SERVICES_NOTE`), and
    ``replay``: each service's exact forecast and observed rate, what the joint policy was handed."""
    forecast_rps = sum(loads_by_service.values())
    inputs = _inputs(trigger, observed_rps, history_rps, forecast_rps, forecaster)
    inputs["services"] = {n: {"observed_rps": round(observed_by_service.get(n, 0.0), 3),
                              "forecast_rps": round(f, 3)} for n, f in loads_by_service.items()}
    cur = before.cores_by_name() if before is not None else {}
    chosen = decision.plan
    optimum = decision.proposed if decision.proposed is not None else chosen
    terms = objective_terms(profile, chosen, cur)
    binding = _binding(profile, optimum, forecast_rps)
    # The forecasts did not all fit: joint_solve planned each service below its forecast, toward its observed rate.
    cut = [f"{o.name} {o.load_rps:.1f} of {loads_by_service[o.name]:.1f}" for o in optimum.services
           if o.name in loads_by_service and o.load_rps < loads_by_service[o.name] - 1e-6]
    if cut:
        binding.insert(0, {"kind": "headroom",
                           "text": f"the forecasts do not all fit the {profile.budget_cores:g}-core budget: their "
                                   f"headroom over the observed rates gave way (planned for {', '.join(cut)} req/s)"})
    held = _held_back(profile, chosen, optimum, decision.held_by, cur)
    if held is not None:
        binding.insert(0, held[0])
        terms["optimum"] = held[1]
    return {
        "inputs": inputs,
        "terms": terms,
        "binding": tuple(binding),
        "runner_up": None,
        "explain_note": SERVICES_NOTE,
        # Exact values: the joint policy's inputs (the rounded ones in ``inputs`` would not re-solve at a boundary).
        "replay": {"load_rps": forecast_rps, "load_by_service": dict(loads_by_service),
                   "observed_by_service": dict(observed_by_service), "policy_state": state_to_dict(state_before)},
    }
