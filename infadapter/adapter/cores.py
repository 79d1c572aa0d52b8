"""Where a run's cores went: each decision's plan against the load that then came, and what each layer of
headroom between them cost in cores and in accuracy (``explain --cores``; issue 27's first question).

A decision's plan serves from its time to the next decision's. Against the requests that arrived in that
span (the run's ``requests.csv``), the plan is re-solved offline on the decision's own replay inputs
(:func:`infadapter.adapter.explain.replay_profile`) with one layer of headroom taken away at a time:

1. **as served**: the plan the run applied (with what stabilization, min-gain and keep-warm added or held);
2. **solver: target**: the solver's plan for the load the decision planned for (forecast, overload bump),
   without those wrappers;
3. **solver: arrivals**: the same solve for the busiest second that arrived in the span;
4. **no safety factor**: the same, every variant's profiled capacity without its ``safety`` factor;
5. **no calibration**: the same, without the local backend's start-up calibration (``capacity_scale``).

Each row's mean cores over time and served accuracy over the requests (each span's plan counts with the
requests that arrived in it), and the step from the row before, say what that layer cost. The busiest
second is a wall's view (a plan that serves it never queues): what a queue
absorbs within the SLO is in the per-variant table (the rates each variant got and the share late).

A run of several services (a profile with ``services:``) gets the same ladder for the whole plan and one per
service (that service's part of each plan: its cores and served accuracy), each request judged at its own
service's SLO; the solver rows re-solve the joint program (:func:`infadapter.core.policies.joint_solve` for
the target, each service's own busiest second for the arrivals rows). A static split's spans show their
plans as served only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infadapter.errors import BadInput
from infadapter.observe.requestlog import REQUESTS_FILE

#: The ladder's rows, in order (see the module doc).
LAYERS = ("as served", "solver: target", "solver: arrivals", "no safety factor", "no calibration")


@dataclass(frozen=True)
class Sent:
    """The requests of a run: send times (unix seconds), whether each was late or failed, its variant, and
    its service ("" for one service)."""

    times: tuple[float, ...]
    bad: tuple[bool, ...]
    variants: tuple[str, ...]
    services: tuple[str, ...] = ()


def read_requests(run_dir: Path, slo_ms: float | Mapping[str, float]) -> Sent:
    """The run's ``requests.csv`` (written by the load generator), each request judged at ``slo_ms`` (or, for
    several services, at its service's SLO: {service: ms}); BadInput when there is none."""
    import numpy as np

    from infadapter.observe import requestlog

    log = requestlog.read(Path(run_dir) / REQUESTS_FILE)
    if log is None:
        raise BadInput(f"--cores: no {REQUESTS_FILE} in {run_dir}; it needs a run that sent its own load "
                       "(adapt or experiment on the local backend, or --traffic live)")
    if isinstance(slo_ms, Mapping):
        bad = np.zeros(len(log), dtype=bool)
        of = np.asarray(log.service, dtype=object)
        for name, ms in slo_ms.items():
            bad[of == name] = log.only(name).violated(ms)  # only() keeps the file's order
    else:
        bad = log.violated(slo_ms)
    return Sent(tuple(log.sent_unix.tolist()), tuple(bad.tolist()), log.variant, log.service)


@dataclass
class Layer:
    """One row of the ladder over the spans it could be had: mean cores over time, and served accuracy weighted
    by the requests that arrived in each span (by time where none did), as the run's summary counts them."""

    name: str
    core_s: float = 0.0
    accuracy_s: float = 0.0
    seconds: float = 0.0
    requests: float = 0.0
    accuracy_r: float = 0.0

    def add(self, cores: float, accuracy: float, seconds: float, requests: float) -> None:
        self.core_s += cores * seconds
        self.accuracy_s += accuracy * seconds
        self.seconds += seconds
        self.requests += requests
        self.accuracy_r += accuracy * requests

    @property
    def cores(self) -> float:
        return self.core_s / self.seconds if self.seconds else 0.0

    @property
    def accuracy(self) -> float:
        if self.requests > 0:
            return self.accuracy_r / self.requests
        return self.accuracy_s / self.seconds if self.seconds else 0.0


@dataclass
class VariantUse:
    """What one variant on one core count got while it served: seconds, its planned capacity, the rates of
    its busiest seconds, and the share of its requests that were late or failed."""

    variant: str
    cores: float
    capacity_rps: float
    seconds: int = 0
    counts: list[int] = field(default_factory=list)
    requests: int = 0
    bad: int = 0

    def as_dict(self) -> dict[str, Any]:
        counts = sorted(self.counts)
        p95 = counts[min(len(counts) - 1, int(0.95 * len(counts)))] if counts else 0
        return {"variant": self.variant, "cores": self.cores, "capacity_rps": round(self.capacity_rps, 3),
                "seconds": self.seconds, "p95_second_rps": p95, "busiest_second_rps": counts[-1] if counts else 0,
                "seconds_over_capacity": sum(1 for c in counts if c > self.capacity_rps),
                "requests": self.requests, "late_or_failed": self.bad,
                "late_share": round(self.bad / self.requests, 5) if self.requests else 0.0}


@dataclass
class CoresReport:
    """``explain --cores``: the ladder, the load against the plans, and each variant's use."""

    layers: list[Layer]
    decisions: int
    spans_solved: int
    mean_target_rps: float
    mean_arrived_rps: float
    mean_busiest_second_rps: float
    mean_planned_capacity_rps: float
    requests: int
    late_share: float
    variants: list[VariantUse]
    notes: list[str]
    #: Several services: each one's ladder (its part of every plan) and its requests, late at its own SLO.
    services: list[ServiceLadder] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"decisions": self.decisions, "spans_solved": self.spans_solved,
                "mean_target_rps": round(self.mean_target_rps, 3),
                "mean_arrived_rps": round(self.mean_arrived_rps, 3),
                "mean_busiest_second_rps": round(self.mean_busiest_second_rps, 3),
                "mean_planned_capacity_rps": round(self.mean_planned_capacity_rps, 3),
                "requests": self.requests, "late_share": round(self.late_share, 5), "layers": _rows(self.layers),
                "variants": [v.as_dict() for v in self.variants], "notes": self.notes,
                **({"services": [s.as_dict() for s in self.services]} if self.services else {})}


@dataclass
class ServiceLadder:
    """One service's ladder in a run of several: its part of each row's plans, its requests and late share."""

    name: str
    layers: list[Layer]
    requests: int = 0
    bad: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "requests": self.requests,
                "late_share": round(self.bad / self.requests, 5) if self.requests else 0.0,
                "layers": _rows(self.layers)}


def _rows(layers: list[Layer]) -> list[dict[str, Any]]:
    """The ladder's rows: each layer's mean cores and accuracy, and the step from the row before."""
    rows = []
    for i, layer in enumerate(layers):
        before = layers[i - 1] if i else None
        rows.append({"layer": layer.name, "mean_cores": round(layer.cores, 4),
                     "accuracy": round(layer.accuracy, 5), "seconds": round(layer.seconds, 1),
                     "cores_step": round(before.cores - layer.cores, 4) if before else None,
                     "accuracy_step": round(layer.accuracy - before.accuracy, 5) if before else None})
    return rows


def _service_part(plan: Any, name: str) -> tuple[float, float]:
    """One service's cores and served accuracy in a plan of several services."""
    cores = sum(a.cores for a in plan.allocations if a.service == name)
    accuracy = next((o.accuracy for o in plan.services if o.name == name), 0.0)
    return cores, accuracy


def _without_safety(profile: Any) -> Any:
    variants = tuple(v.model_copy(update={"capacity": v.capacity.model_copy(update={"safety": 1.0})})
                     for v in profile.variants)
    return profile.model_copy(update={"variants": variants})


def _unscaled(profile: Any, scale: float) -> Any:
    return profile.scaled_capacity(1.0 / scale) if scale != 1.0 else profile


def _service_ladders(names: list[str], sent: Sent) -> dict[str, ServiceLadder]:
    """An empty ladder for each service of ``names``, with its requests and those late or failed counted."""
    ladders = {n: ServiceLadder(n, [Layer(x) for x in LAYERS]) for n in names}
    for k, svc in enumerate(sent.services if names else ()):
        if svc in ladders:
            ladders[svc].requests += 1
            ladders[svc].bad += int(sent.bad[k])
    return ladders


def _span_arrivals(sent: Sent, t0: float, t1: float, names: list[str]) -> tuple[int, int, float, dict[str, float]]:
    """The requests sent from ``t0`` to ``t1`` (``sent.times[lo:hi]``), the busiest whole second of them, and of each
    service of ``names``."""
    import bisect

    lo, hi = bisect.bisect_left(sent.times, t0), bisect.bisect_left(sent.times, t1)
    whole = int(t1 - t0)
    counts = [0] * whole
    by_service = {n: [0] * whole for n in names}
    for k in range(lo, hi):
        s = int(sent.times[k] - t0)
        if s < whole:
            counts[s] += 1
            if names and sent.services[k] in by_service:
                by_service[sent.services[k]][s] += 1
    busiest = float(max(counts)) if counts else 0.0
    return lo, hi, busiest, {n: float(max(c)) if c else 0.0 for n, c in by_service.items()}


def _replay_profile(rec: dict[str, Any], cache: dict[Any, Any], why_not: set[str]) -> Any:
    """The profile a solving policy's decision ``rec`` planned with (:func:`.explain.replay_profile`); None, with the
    reason added to ``why_not``, when it cannot be re-solved."""
    from infadapter.adapter.explain import replay_profile
    from infadapter.core import explain as core
    from infadapter.core.policies import SPLIT_POLICIES, entry

    ctx_rec = rec.get("replay") or {}
    if str(ctx_rec.get("policy", "")) in SPLIT_POLICIES:
        why_not.add("a static split: its plans as served only (the solver rows would be the joint solve's)")
        return None
    try:
        solving = entry(str(ctx_rec.get("policy", ""))).name in core.SOLVING
    except BadInput:
        solving = False
    if not solving or "load_rps" not in ctx_rec:
        why_not.add(f"policy {rec.get('policy')!r} does not solve (only its plan as served is shown)"
                    if not solving else "records written before explain have no replay inputs")
        return None
    try:
        profile = replay_profile(ctx_rec, cache)
    except (ValueError, BadInput) as exc:
        profile = str(exc)
    if isinstance(profile, str):
        why_not.add(profile)
        return None
    return profile


def where_cores_went(records: list[dict[str, Any]], sent: Sent) -> CoresReport:
    """The ladder of :data:`LAYERS` over the run's decisions and requests (see the module doc)."""
    from infadapter.adapter.explain import ReplayKey
    from infadapter.core.plan import Plan
    from infadapter.core.policies import joint_solve
    from infadapter.core.solver import Options, solve

    recs = [r for r in records if r.get("time_s") is not None and r.get("plan_after")]
    if not recs:
        raise BadInput("--cores: the run has no decision with a plan")
    names = [str(o.get("name")) for o in (recs[0]["plan_after"].get("services") or [])]
    ladders = _service_ladders(names, sent)
    if not sent.times:
        raise BadInput(f"--cores: {REQUESTS_FILE} holds no request")
    end = max(sent.times)
    layers = [Layer(n) for n in LAYERS]
    cache: dict[ReplayKey, Any] = {}
    notes: list[str] = []
    uses: dict[tuple[str, float], VariantUse] = {}
    solved = 0
    sums = defaultdict(float)
    why_not: set[str] = set()
    for i, rec in enumerate(recs):
        t0 = float(rec["time_s"])
        t1 = float(recs[i + 1]["time_s"]) if i + 1 < len(recs) else end
        if t1 - t0 < 1.0:
            continue  # a span under a second has no whole second of arrivals
        lo, hi, busiest, busiest_of = _span_arrivals(sent, t0, t1, names)
        whole, span = int(t1 - t0), t1 - t0
        plan = Plan.from_dict(rec["plan_after"], "plan_after")
        came = float(hi - lo)
        came_of = {n: float(sum(1 for k in range(lo, hi) if sent.services[k] == n)) for n in names}
        layers[0].add(plan.cores, plan.accuracy, span, came)
        for n in names:
            ladders[n].layers[0].add(*_service_part(plan, n), span, came_of[n])
        sums["target"] += float(rec.get("forecast_rps") or 0.0) * span
        sums["arrived"] += hi - lo
        sums["busiest"] += busiest * span
        sums["capacity"] += plan.served_capacity_rps() * span
        sums["seconds"] += span
        _count_use(uses, plan, sent, lo, hi, t0, whole)
        ctx_rec = rec.get("replay") or {}
        profile = _replay_profile(rec, cache, why_not)
        if profile is None:
            continue
        before = rec.get("plan_before")
        current = Plan.from_dict(before, "plan_before").cores_by_name() if before else {}
        scale = float(ctx_rec.get("capacity_scale", 1.0))
        raw = _without_safety(profile)
        if names:
            forecast = {n: float(v) for n, v in (ctx_rec.get("load_by_service") or {}).items()}
            if set(forecast) != set(names):
                why_not.add("records without per-service loads (written before explain replayed several services)")
                continue
            observed = {n: float(v) for n, v in (ctx_rec.get("observed_by_service") or {}).items()}
            rows = [(1, joint_solve(profile, forecast, observed, current, Options())[0].plan)]
            rows += [(i, solve(prof, 0.0, current, loads=busiest_of).plan)
                     for i, prof in ((2, profile), (3, raw), (4, _unscaled(raw, scale)))]
            for i, p in rows:
                layers[i].add(p.cores, p.accuracy, span, came)
                for n in names:
                    ladders[n].layers[i].add(*_service_part(p, n), span, came_of[n])
            solved += 1
            continue
        for layer, prof, load in ((layers[1], profile, float(ctx_rec["load_rps"])), (layers[2], profile, busiest),
                                  (layers[3], raw, busiest), (layers[4], _unscaled(raw, scale), busiest)):
            p = solve(prof, load, current).plan
            layer.add(p.cores, p.accuracy, span, came)
        solved += 1
    notes.extend(sorted(why_not))
    secs = sums["seconds"] or 1.0
    bad = sum(sent.bad)
    return CoresReport(layers=layers, decisions=len(recs), spans_solved=solved,
                       mean_target_rps=sums["target"] / secs, mean_arrived_rps=sums["arrived"] / secs,
                       mean_busiest_second_rps=sums["busiest"] / secs,
                       mean_planned_capacity_rps=sums["capacity"] / secs, requests=len(sent.times),
                       late_share=bad / len(sent.times), variants=sorted(uses.values(),
                                                                         key=lambda u: (u.variant, u.cores)),
                       notes=notes, services=list(ladders.values()))


def _count_use(uses: dict[tuple[str, float], VariantUse], plan: Any, sent: Sent, lo: int, hi: int, t0: float,
               whole: int) -> None:
    """Add one span's requests to each serving (variant, cores) of ``plan``: per-second counts, requests, bad."""
    serving = {a.name: a for a in plan.allocations if a.share > 1e-9}
    per = {name: [0] * whole for name in serving}
    for a in serving.values():
        uses.setdefault((a.name, a.cores), VariantUse(a.name, a.cores, a.capacity_rps)).seconds += whole
    for k in range(lo, hi):
        a = serving.get(sent.variants[k])
        if a is None:
            continue  # failed before a variant answered, or a variant the plan had just left
        use = uses[(a.name, a.cores)]
        use.requests += 1
        use.bad += int(sent.bad[k])
        s = int(sent.times[k] - t0)
        if s < whole:
            per[a.name][s] += 1
    for name, counts in per.items():
        uses[(name, serving[name].cores)].counts.extend(counts)
