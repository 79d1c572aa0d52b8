"""The control loop: observe -> forecast -> plan -> diff -> apply (routing included).

The loop never sits on the data path: the dispatcher keeps serving with the last weights it was
given while a decision is computed and applied. Time is injected (``clock`` and ``sleep``), so tests
drive the loop with a fake clock and a fake backend and the live adapter uses the wall clock.

Per interval (``LoopConfig.interval_s``) the loop decides once. Between decisions it checks every
``check_s`` seconds:

- **overload**: the observed rate runs above the serving plan's capacity (by ``overload_tolerance``):
  plan again at once, with the forecast raised to at least the observed rate;
- **crash**: a variant of the serving plan has no live, ready server: degrade at once to the
  survivors (shares proportional to capacity; the dispatcher stops sending to the dead one), say so,
  then plan again;
- **retry**: an apply failed with a temporary error: keep the old plan and try again when told.

A backend that cannot be read back (the Kubernetes API server does not answer) is an outage, not a crash
(:mod:`infadapter.adapter.outage`): the loop holds the plan, decides nothing and says so once, until it
answers again.

Scale-down stabilization is the policy wrapper's job (:class:`infadapter.core.policies.Stabilized`);
scale-up is applied at once. Every decision leaves a :class:`~infadapter.adapter.records.DecisionRecord`.

Several services (a profile with ``services:``): one decision for all of them, as the simulator's joint
policy takes it (:mod:`infadapter.sim.services`): each service's observed counts
(``Observation.history_by_service``) give its own observed rate and forecast (its own forecaster and control
rules: its window's history before), and the policy (``infadapter``) solves them jointly with the observed
rates as the headroom that gives way first. Between decisions a service whose rate runs above its own part of
the plan triggers an overload re-plan of all of them (that service's load raised by the overload rule, the
others' as at an interval); ``--no-react`` turns it off, as the simulator's joint policy runs.
While new variants load, a service that waits for them has its running variants grown in place on the cores the
others leave (:func:`~infadapter.core.control.services_bridge_plan`); after a crash each service's survivors keep
their shares in proportion until the decision that follows at once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from infadapter.adapter.outage import Outages
from infadapter.adapter.records import DecisionLog, DecisionRecord, StepTimer, decision_record
from infadapter.adapter.runstate import LoopSnapshot
from infadapter.backends.base import ApplyResult, Backend, BackendState
from infadapter.core import control
from infadapter.core import explain as explain_mod
from infadapter.core.control import ControlConfig, Forecaster
from infadapter.core.cpusamples import CpuReadings, CpuSampler
from infadapter.core.plan import Plan, diff, plan_from_cores
from infadapter.core.policies import Policy
from infadapter.core.policies import entry as policy_entry
from infadapter.core.profile import Profile
from infadapter.observe.monitor import Observation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopConfig:
    """The control rules (:class:`infadapter.core.control.ControlConfig`, composed) plus what only a live loop
    reports and what its policies warm up on."""

    #: When to decide and on which load: the same rules (and the same object) as the simulator's.
    control: ControlConfig = field(default_factory=ControlConfig)
    #: SLO attainment is reported over this window.
    slo_window_s: float = 300.0
    #: Per-second rates of the day before the run, for policies that warm up on it (policies.Context).
    rates_before: tuple[float, ...] = ()


@dataclass
class Totals:
    """Time-integrated figures of what served (for the end-of-run summary).

    Cores are a mean over time (what the run paid for); accuracy is traffic-weighted, as the simulator's and
    docs/core.md define it: each stretch of time counts with the requests the loop observed in it (the observed
    rate x the stretch), so a quiet hour on an accurate variant does not outweigh a busy minute on a fast one.
    With no traffic observed at all it falls back to the mean over time."""

    seconds: float = 0.0
    core_seconds: float = 0.0
    accuracy_seconds: float = 0.0
    #: Requests observed (the observed rate integrated over time) and their served accuracy summed.
    observed_requests: float = 0.0
    accuracy_requests: float = 0.0
    transitions: int = 0
    decisions: int = 0
    applies: int = 0  # plans the backend applied (a decision that changed nothing applies none)
    failed_applies: int = 0
    crashes: int = 0

    @property
    def mean_cores(self) -> float:
        return self.core_seconds / self.seconds if self.seconds > 0 else 0.0

    @property
    def mean_accuracy(self) -> float:
        return _weighted(self.accuracy_requests, self.observed_requests, self.accuracy_seconds, self.seconds)

    #: Several services: [core-seconds, accuracy-seconds, observed requests, accuracy-requests] of each, over the
    #: same seconds.
    by_service: dict[str, list[float]] = field(default_factory=dict)

    def services(self) -> list[dict[str, Any]]:
        """Each service's time-averaged cores and traffic-weighted accuracy ([] for one service)."""
        t = self.seconds
        return [{"name": n, "mean_cores": round(c / t, 4) if t > 0 else 0.0,
                 "mean_accuracy": round(_weighted(ar, r, a, t), 5)} for n, (c, a, r, ar) in self.by_service.items()]

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "mean_cores": round(self.mean_cores, 4),
            "mean_accuracy": round(self.mean_accuracy, 5),
            "transitions": self.transitions,
            "decisions": self.decisions,
            "applies": self.applies,
            "failed_applies": self.failed_applies,
            "crashes": self.crashes,
            **({"services": self.services()} if self.by_service else {}),
        }


class LoopMetrics:
    """The adapter's ``infadapter_*`` Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.accuracy = Gauge("infadapter_accuracy", "Traffic-weighted accuracy of the serving plan", registry=r)
        self.cost = Gauge("infadapter_cost_cores", "CPU cores allocated to model servers", registry=r)
        self.forecast = Gauge("infadapter_forecast_rps", "Forecast peak load of the next interval", registry=r)
        self.observed = Gauge("infadapter_observed_rps", "Observed request rate", registry=r)
        self.capacity = Gauge("infadapter_planned_capacity_rps", "Load the serving plan serves within the SLO",
                              registry=r)
        self.variant_cores = Gauge("infadapter_variant_cores", "Cores per variant", ["variant"], registry=r)
        self.variant_share = Gauge("infadapter_variant_share", "Traffic share per variant", ["variant"], registry=r)
        self.duration = Histogram("infadapter_decision_duration_seconds", "Time of each decision step",
                                  ["step"], registry=r,
                                  buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.transitions = Counter("infadapter_transitions_total", "Applied plan changes (create/resize/delete)",
                                   registry=r)
        self.decisions = Counter("infadapter_decisions_total", "Decisions taken", ["trigger"], registry=r)
        self.degraded = Gauge("infadapter_degraded", "1 while a crashed server forced a degraded plan", registry=r)
        # For the alert rules (templates/prometheus/slo-rules.yml.j2): not deciding, infeasible, fallback.
        self.last_decision = Gauge("infadapter_last_decision_timestamp_seconds",
                                   "Unix time of the last decision", registry=r)
        self.feasible = Gauge("infadapter_plan_feasible",
                              "1 when the last plan serves the forecast load within the budget, else 0", registry=r)
        self.fallback = Gauge("infadapter_monitor_fallback",
                              "1 while the loop reads the dispatcher's counters instead of Prometheus", registry=r)
        self._server: Any = None

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        from prometheus_client import start_http_server

        self._server, _ = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def show_plan(self, plan: Plan, profile: Profile) -> None:
        self.accuracy.set(plan_accuracy(profile, plan))
        self.cost.set(plan.cores)
        self.capacity.set(plan.served_capacity_rps())
        for name in profile.names:
            a = plan.get(name)
            self.variant_cores.labels(name).set(a.cores if a else 0.0)
            self.variant_share.labels(name).set(a.share if a else 0.0)


def _weighted(by_traffic: float, traffic: float, by_time: float, seconds: float) -> float:
    """A traffic-weighted mean, or the mean over time when no traffic was observed (0 with neither)."""
    if traffic > 1e-9:
        return by_traffic / traffic
    return by_time / seconds if seconds > 0 else 0.0


def plan_accuracy(profile: Profile, plan: Plan) -> float:
    """The serving plan's traffic-weighted accuracy: of its shares (one service), or of its services' accuracies
    weighted by the load each was planned for (equally when the plan says none)."""
    by = profile.accuracy_by_service(plan.shares_by_name())
    if not by:
        return profile.served_accuracy(plan.shares_by_name())
    loads = {o.name: o.load_rps for o in plan.services}
    total = sum(loads.get(n, 0.0) for n in by)
    if total <= 0:
        return sum(by.values()) / len(by)
    return sum(acc * loads.get(n, 0.0) for n, acc in by.items()) / total


def _without(plan: Plan, crashed: list[str]) -> Plan:
    """A multi-service plan without the ``crashed`` variants, each service's survivors keeping their shares in
    proportion (evenly when none had one); a service left with no variant is left out until the next decision."""
    keep = [a for a in plan.allocations if a.name not in crashed]
    out = []
    for svc in dict.fromkeys(a.service for a in keep):
        mine = [a for a in keep if a.service == svc]
        total = sum(a.share for a in mine)
        out += [replace(a, share=a.share / total if total > 1e-9 else 1.0 / len(mine)) for a in mine]
    return replace(plan, allocations=tuple(out), feasible=False)


def _routed_around(plan: Plan, crashed: list[str]) -> Plan:
    """``plan`` with the ``crashed`` variants' shares moved to their services' other variants (in proportion to
    their shares) and their cores kept: nothing is deleted while the platform restarts them."""
    rest = {a.name: a for a in _without(plan, crashed).allocations}
    out = [rest.get(a.name) or replace(a, share=0.0) for a in plan.allocations
           if a.name in rest or a.name in crashed]
    return replace(plan, allocations=tuple(out), feasible=False)


class ControlLoop:
    """Runs decisions against one backend; see the module doc for when it decides."""

    def __init__(
        self,
        profile: Profile,
        policy: Policy,
        forecaster: Forecaster,
        backend: Backend,
        observe: Callable[[float], Observation],
        config: LoopConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], bool] | None = None,
        records: DecisionLog | None = None,
        metrics: LoopMetrics | None = None,
        on_snapshot: Callable[[dict[str, Any]], None] | None = None,
        policy_name: str | None = None,
        initial_plan: Plan | None = None,
        initial_state: Any = None,
        service_forecasters: Mapping[str, Forecaster] | None = None,
        service_controls: Mapping[str, ControlConfig] | None = None,
    ) -> None:
        self.profile = profile
        self.policy = policy
        self.forecaster = forecaster
        self.backend = backend
        self._observe = observe
        self.config = config or LoopConfig()
        self.ctl = control.for_profile(self.config.control, profile)
        self.clock = clock
        self.stop_event = threading.Event()
        self.sleep = sleep or self.stop_event.wait
        self.records = records if records is not None else DecisionLog(None)
        self.metrics = metrics
        self.on_snapshot = on_snapshot
        self.policy_name = policy_name or getattr(policy, "name", "policy")
        self.serving: Plan | None = initial_plan
        self.policy_state: Any = initial_state
        self.totals = Totals()
        self.last_obs: Observation | None = None
        self.last_forecast_rps = 0.0
        self.last_observed_rps: float | None = None
        #: Several services: each one's observed rate at the last check (what its accuracy is weighted by).
        self._rates_by_service: dict[str, float] = {}
        self.next_decision_s: float | None = None
        self.retry_at_s: float | None = None
        self.degraded: str = ""
        self.last_apply_error: str = ""
        #: The backend's last answer to ``health()`` (None: not asked yet); asked after each apply.
        self.backend_healthy: bool | None = None
        #: When the backend could not be read back: the loop holds meanwhile (see the module doc).
        self.outages = Outages(backend.name)
        self._last_tick_s: float | None = None
        self._last_decision_s: float = -math.inf
        kind = policy_entry(policy)
        #: The policy's changes of cores may happen in place (HPA's may not: it adds pods).
        self._in_place = kind.in_place
        #: The cluster's own autoscaler decides (an upstream policy): the serving plan is read back at every check.
        self._follows = bool(kind.upstream)
        # VPA and HPA read CPU samples at their upstream cadence (cpusamples: the simulator's rule too).
        self._cpu_sampler: CpuSampler | None = None
        self._cpu_period = (kind.cpu_sample_s, kind.cpu_window_s) if kind.needs_cpu else None
        self._cpu_readings = CpuReadings(keep_s=kind.cpu_sample_s + kind.cpu_window_s + 10.0)
        self._cpu_samples: dict[str, list[tuple[float, float]]] = {}
        self._slo_samples: deque[tuple[float, int, int, int]] = deque()
        # A restarted run numbers on from the log's last record (one log, one seq order).
        self._seq = self.records.last_seq
        # Several services: each one's forecaster (default: ``forecaster`` for all) and control rules (default:
        # the loop's; a replay gives each its own window's history before).
        names = profile.service_names
        self.service_forecasters = {n: (service_forecasters or {}).get(n, forecaster) for n in names}
        self.service_controls = {n: control.for_profile((service_controls or {}).get(n, self.ctl), profile)
                                 for n in names}
        #: Each service's last observed and forecast rate (status).
        self.last_by_service: dict[str, dict[str, float]] = {}
        #: The services the last check found overloaded (their loads are raised by an overload re-plan).
        self._overloaded: set[str] = set()
        # A plan outgrown while its new variants load is dropped (control.outgrown), where the loop reacts to
        # overload at all: a backend that can stop waiting asks the loop.
        if hasattr(backend, "abandon_when") and self.ctl.react and not self._follows:
            backend.abandon_when = self._outgrown
        #: A plan was just dropped for the rate seen: check again at once, not a check later.
        self._recheck = False

    # -- one decision ------------------------------------------------------------------------------
    def decide(self, trigger: str, obs: Observation | None = None) -> DecisionRecord:
        """One decision as named, timed steps (observe, forecast, plan, stabilize, apply, record), the
        record holding each step's time; the rules of each step are :mod:`infadapter.core.control`'s."""
        steps = StepTimer()
        now = self.clock()
        with steps.step("observe"):
            if obs is None:
                obs = self._observe(now)
                self.last_obs = obs
            observed = control.seen(obs.history_rps, self.ctl)
            self.last_observed_rps = observed.rate_rps
        per_service: dict[str, Any] = {}
        with steps.step("forecast"):
            if self.profile.services:
                per_service = self._service_loads(trigger, obs)
                forecast = sum(per_service["loads"].values())
            else:
                forecast = control.decision_load(trigger, self.forecaster, observed.history, observed.rate_rps,
                                                 self.ctl)
            self.last_forecast_rps = forecast
        ctx = control.context(self.profile, now, forecast, self.serving, observed, self.ctl,
                              cpu_usage={k: tuple(v) for k, v in self._cpu_samples.items()},
                              state=self.policy_state, rates_before=self.config.rates_before,
                              forecast_by_service=per_service.get("loads", {}),
                              observed_by_service=per_service.get("observed", {}))
        with steps.step("plan"):
            proposed = control.propose(self.policy, ctx)
            self._cpu_samples = {}
        with steps.step("stabilize"):
            decision = control.stabilize(self.policy, ctx, proposed)
        with steps.step("explain"):
            if self.profile.services:
                why = explain_mod.services_decision_fields(
                    self.profile, trigger, observed.rate_rps, observed.history, self.forecaster, per_service["loads"],
                    per_service["observed"], self.serving, decision, self.policy_state)
            else:
                why = explain_mod.decision_fields(self.profile, self.policy_name, trigger, observed.rate_rps,
                                                  observed.history, forecast, self.forecaster, self.serving,
                                                  decision, self.policy_state)
        before = self.serving
        d = diff(before, decision.plan)
        with steps.step("apply"):
            applied, result = self._apply(decision.plan, before, d.empty, forecast)
        self._settle(applied, result, before, d.create or d.resize or d.delete)
        self.policy_state = decision.state
        self._seq += 1
        self.totals.decisions += 1
        with steps.step("record"):
            rec = decision_record(
                seq=self._seq, time_s=now, trigger=trigger, policy=self.policy_name, observed=observed,
                forecast_rps=forecast, decision=decision, before=before, change=d, serving=self.serving,
                monitor_source=obs.source, p99_ms=obs.p99_ms, degraded=self.degraded, actions=tuple(result.actions),
                apply_ok=result.ok, apply_error=result.error, timings_s=steps.timings_s, explanation=why)
        timings = steps.finish()
        self.records.append(rec)
        self._last_decision_s = now
        # The next decision comes one interval after this one ended (the paper: 30 s plus decision time).
        self.next_decision_s = self.clock() + self.ctl.interval_s
        if self.metrics:
            for step, secs in timings.items():
                self.metrics.duration.labels(step).observe(secs)
            self.metrics.decisions.labels(trigger).inc()
            self.metrics.forecast.set(forecast)
            self.metrics.last_decision.set(time.time())  # wall time for the alert's time() - x
            self.metrics.feasible.set(1 if decision.plan.feasible else 0)
            self.metrics.fallback.set(0 if obs.source == "prometheus" else 1)
            if self.serving is not None:
                self.metrics.show_plan(self.serving, self.profile)
        log.info("decision %d (%s): %s -> %s [%s]", rec.seq, trigger, rec.diff, rec.reason,
                 "ok" if rec.apply_ok else f"failed: {rec.apply_error}")
        return rec

    def _overloaded_services(self, rates: Mapping[str, float]) -> set[str]:
        """The services whose observed rate (``rates``, :meth:`_service_rates`) runs above their own part of the
        serving plan (the one-service rule, :func:`~infadapter.core.control.overloaded`, per service); remembered
        for the overload decision."""
        plan = self.serving
        over = set()
        for name, rate in rates.items():
            ctl = self.service_controls[name]
            mine = plan is not None and any(a.service == name for a in plan.allocations)
            cap = plan.served_capacity_rps(name) if mine else None  # type: ignore[union-attr]
            if control.overloaded(rate, cap, ctl):
                over.add(name)
        self._overloaded = over
        return over

    def _service_loads(self, trigger: str, obs: Observation) -> dict[str, dict[str, float]]:
        """Each service's observed rate and the load its decision plans for: the one-service rules
        (:func:`~infadapter.core.control.seen`, :func:`~infadapter.core.control.decision_load`) on its own counts,
        forecaster and control rules, as the simulator's joint policy computes them."""
        loads, observed = {}, {}
        for name in self.profile.service_names:
            ctl = self.service_controls[name]
            seen = control.seen(obs.history_by_service.get(name, ()), ctl)
            # An overload re-plan raises only the overloaded services' loads (the others plan as at an interval).
            own = "interval" if trigger == "overload" and name not in self._overloaded else trigger
            loads[name] = control.decision_load(own, self.service_forecasters[name], seen.history, seen.rate_rps,
                                                ctl)
            observed[name] = seen.rate_rps
        self.last_by_service = {n: {"observed_rps": observed[n], "forecast_rps": loads[n]} for n in loads}
        return {"loads": loads, "observed": observed}

    def _apply(self, plan: Plan, before: Plan | None, unchanged: bool, load_rps: float) -> tuple[bool, ApplyResult]:
        """The apply step: grow in place first when new variants must load, then the plan; (applied, result)."""
        if unchanged and before is not None:
            return False, ApplyResult(serving=plan, actions=())
        try:
            bridged = self._bridge(plan, load_rps)
            result = self.backend.apply(plan)
            if bridged:
                result = replace(result, actions=(*bridged, *result.actions))
        except Exception as exc:  # a backend bug must not stop the loop: keep serving the old plan
            log.exception("apply failed")
            result = ApplyResult(serving=before or plan, ok=False, error=f"{type(exc).__name__}: {exc}")
        if not result.ok and not result.abandoned:
            self._read_state(self.clock())  # a backend gone away is an outage, said once (not per failure)
        # A decision that changed nothing asked nothing of it.
        self._check_health(failed=not result.ok and not result.abandoned)
        return True, result

    def _outgrown(self, target: Plan) -> str:
        """Asked by the backend while ``target``'s new variants load: why the rate seen now has outgrown it (''
        when it has not; :func:`~infadapter.core.control.outgrown`, each service's rate by its own rule)."""
        obs = self._observe(self.clock())
        rates = (self._service_rates(obs) if self.profile.services
                 else {"": control.observed_rate(obs.history_rps, self.ctl)})
        return control.outgrown(target, self.serving, rates, self.ctl)

    def _service_rates(self, obs: Observation) -> dict[str, float]:
        """Each service's observed rate, by its own control rules (:func:`~infadapter.core.control.observed_rate`)."""
        return {n: control.observed_rate(obs.history_by_service.get(n, ()), self.service_controls[n])
                for n in self.profile.service_names}

    def _settle(self, applied: bool, result: ApplyResult, before: Plan | None, changed: bool) -> None:
        """Take what the backend says serves; on a failed apply keep the previous plan and schedule a retry."""
        if result.ok:
            self.serving = result.serving
            self.retry_at_s = None
            if applied:
                self.totals.applies += 1
                self.last_apply_error = ""
            if changed:
                self.totals.transitions += 1
                if self.metrics:
                    self.metrics.transitions.inc()
            return
        if result.abandoned:  # not a failure: the load outgrew the plan; the next check decides on what it sees
            self.serving = result.serving
            self.retry_at_s = None
            self.last_apply_error = result.error
            self._recheck = True
            log.warning("%s; the previous plan serves, deciding again on the rate seen now", result.error)
            return
        self.totals.failed_applies += 1
        self.last_apply_error = result.error
        # A failed apply keeps the previous plan serving; the backend says what serves.
        self.serving = result.serving if result.serving is not None else before
        delay = result.retry_after_s if result.retry_after_s is not None else self.ctl.interval_s
        self.retry_at_s = self.clock() + delay
        # During an outage its one line says it all; the record keeps the error.
        log.log(logging.DEBUG if self.outages.active else logging.WARNING,
                "apply failed (%s); still serving the previous plan, retry in %.1f s", result.error, delay)

    # -- between decisions -------------------------------------------------------------------------
    def tick(self) -> DecisionRecord | None:
        """One check: account time, sample CPU, detect crashes and overload, decide when due."""
        now = self.clock()
        self._account(now)
        self._sample_cpu(now)
        if self._follows and self.next_decision_s is not None:
            self._follow(now)
        try:  # e.g. a router that died comes back before we observe through it
            healed = self.backend.heal()
        except Exception as exc:  # the next tick tries again; the loop itself must go on
            log.warning("backend not repaired yet: %s", exc)
        else:
            if healed:
                log.warning("%s", healed)
        rec: DecisionRecord | None = None
        if self.next_decision_s is None:
            rec = self.decide("start")
        else:
            crashed = self._crashed(now)
            if crashed:
                rec = self._degrade(crashed)
            else:
                obs = self._observe(now)
                self.last_obs = obs
                self._note_slo(obs)
                rate = control.observed_rate(obs.history_rps, self.ctl)
                self.last_observed_rps = rate
                if self.profile.services:
                    self._rates_by_service = self._service_rates(obs)
                if self.metrics:
                    self.metrics.observed.set(rate)
                    self.metrics.fallback.set(0 if obs.source == "prometheus" else 1)
                cap = self.serving.served_capacity_rps() if self.serving and self.serving.allocations else None
                over = self._overloaded_services(self._rates_by_service) if self.profile.services else None
                if self._follows:  # the cluster's autoscaler reacts to overload, not us
                    over = set()
                due = control.trigger_due(now, self.next_decision_s, self._last_decision_s, rate, cap,
                                          self.ctl, self.retry_at_s, overloaded_now=bool(over) if over is not None
                                          else None)
                if due is not None and not self.outages.active:  # an outage holds the plan
                    rec = self.decide(due, obs)
        if self.on_snapshot is not None:
            self.on_snapshot(self.snapshot().as_dict())
        return rec

    def run(self, duration_s: float | None = None) -> Totals:
        """Tick every ``check_s`` until ``duration_s`` passed or :meth:`stop` was called."""
        start = self.clock()
        while not self.stop_event.is_set():
            self.tick()
            if duration_s is not None and self.clock() - start >= duration_s:
                break
            # Sleep to the next check, or to the next decision when that comes first (during an outage the
            # decision that is due waits for the backend: check at the check pace, not in a busy loop).
            wait = self.ctl.check_s
            if self.next_decision_s is not None and not self.outages.active:
                wait = min(wait, max(self.next_decision_s - self.clock(), 0.0))
            if self._recheck:
                self._recheck, wait = False, 0.0
            if self.sleep(max(wait, 0.01)):
                break
        self._account(self.clock())
        return self.totals

    def stop(self) -> None:
        self.stop_event.set()

    # -- helpers -----------------------------------------------------------------------------------
    def _bridge(self, target: Plan, load_rps: float) -> tuple[str, ...]:
        """Grow the running variants in place first when ``target`` must wait for new ones to load."""
        if not (self.backend.in_place_resize and self._in_place):
            return ()
        room = getattr(self.backend, "surge_room_cores", None)
        if self.profile.services:
            loads = {n: v["forecast_rps"] for n, v in self.last_by_service.items()}
            bridge = control.services_bridge_plan(self.profile, self.serving, target, loads,
                                                  self.backend.in_place_max_cores(), room)
        else:
            bridge = control.bridge_plan(self.profile, self.serving, target, load_rps,
                                         self.backend.in_place_max_cores(), room)
        if bridge is None:
            return ()
        res = self.backend.apply(bridge)
        if not res.ok:
            log.warning("growing in place first failed (%s); applying the plan", res.error)
            return ()
        self.serving = res.serving
        grown = ", ".join(f"{a.name}x{a.cores:g}" for a in bridge.allocations)
        return (f"grown in place while new variants load: {grown}",)

    def _follow(self, now: float) -> None:
        """An upstream policy's serving plan is what the cluster runs now (its autoscaler changed it, not us):
        read back at every check, so that cores are accounted as they change between decisions."""
        st = self._read_state(now)
        if st is None or st.plan is None or not st.plan.allocations:
            return
        if self.serving is None or st.plan.cores_by_name() != self.serving.cores_by_name():
            log.info("the cluster's autoscaler runs %s", ", ".join(
                f"{a.name} on {a.cores:g} cores" for a in st.plan.allocations))
        self.serving = st.plan

    def _check_health(self, failed: bool) -> None:
        """Ask the backend whether it answers (after each apply); say so when that changes (during an outage
        :class:`~infadapter.adapter.outage.Outages` says it, once)."""
        if self.outages.active:
            self.backend_healthy = False
            return
        try:
            healthy = bool(self.backend.health())
        except Exception as exc:
            log.debug("health check failed: %s", exc)
            healthy = False
        if healthy != self.backend_healthy and (self.backend_healthy is not None or not healthy):
            if healthy:
                log.warning("backend %s answers again", self.backend.name)
            else:
                log.warning("backend %s does not answer%s", self.backend.name,
                            "; the apply failed" if failed else "")
        self.backend_healthy = healthy

    def _crashed(self, now: float) -> list[str]:
        """The serving plan's variants without a live, ready server; none while the backend cannot be read
        (an outage: nothing is known to have crashed), and during an outage each check asks again."""
        if not self.outages.active and (self.serving is None or not self.serving.allocations):
            return []
        st = self._read_state(now)
        if st is None or self.serving is None:
            return []
        ready = {v.name for v in st.variants if v.ready}
        # Where the platform restarts crashed servers, one with no share is left to it: it takes no traffic, and
        # one routed around already waits there to be restarted.
        return [a.name for a in self.serving.allocations
                if a.name not in ready and (a.share > 0 or not self._platform_restarts)]

    @property
    def _platform_restarts(self) -> bool:
        """Whether the backend's platform restarts a crashed server by itself (``Backend.restarts_crashed``;
        backends that do not say: False)."""
        return bool(getattr(self.backend, "restarts_crashed", False))

    def _read_state(self, now: float) -> BackendState | None:
        """What the backend says runs; None when it cannot be read (the outage starts or goes on). The one
        place that turns the backend's answer into an outage's start or end."""
        try:
            st = self.backend.state()
        except Exception as exc:  # a backend that cannot say what runs is away, whatever the reason
            st = BackendState(unreachable=f"{type(exc).__name__}: {exc}")
        if st.unreachable:
            holding = ", ".join(f"{a.name} {a.cores:g} cores {a.share:.0%}" for a in self.serving.allocations) \
                if self.serving is not None else ""
            if self.outages.down(now, st.unreachable, st.unreachable_since_s, holding):
                self.backend_healthy = False
            return None
        if self.outages.up(now) is not None:
            self.backend_healthy = True
        return st

    def _degrade(self, crashed: list[str]) -> DecisionRecord:
        """Route around crashed servers at once, then plan again with the survivors as current."""
        assert self.serving is not None
        self.totals.crashes += 1
        restarts = self._platform_restarts
        survivors = {a.name: a.cores for a in self.serving.allocations
                     if a.name not in crashed and (a.share > 0 or not restarts)}
        self.degraded = f"server of {', '.join(crashed)} is down"
        if restarts and not survivors:
            # Nothing to route to and nothing to gain from starting it again: its platform restarts it.
            self.degraded += "; no survivor, holding the plan while its platform restarts it"
            log.warning("%s", self.degraded)
            return self.decide("crash")
        if survivors:
            if restarts:  # routed around with its cores kept: its platform restarts it in place
                safe = _routed_around(self.serving, crashed)
            elif self.profile.services:
                safe = _without(self.serving, crashed)
            else:
                caps = {n: self.profile.capacity_rps(n, c) for n, c in survivors.items()}
                acc = {n: self.profile.variant(n).accuracy for n in survivors}
                safe = plan_from_cores(survivors, self.serving.load_rps, caps, acc)
            safe = replace(safe, notes=(f"degraded: {self.degraded}",))
            try:
                res = self.backend.apply(safe)
                if res.ok:
                    self.totals.applies += 1
                    self.serving = res.serving
                    self.degraded += f"; traffic moved to {', '.join(survivors)}"
                    if restarts:
                        self.degraded += f" while its platform restarts it ({'; '.join(res.actions)})"
            except Exception as exc:
                log.warning("degraded apply failed: %s", exc)
        else:
            self.serving = None
            self.degraded += "; no survivor, starting servers again"
        log.warning("%s", self.degraded)
        if self.metrics:
            self.metrics.degraded.set(1)
        rec = self.decide("crash")
        if rec.apply_ok and self.metrics:
            self.metrics.degraded.set(0)
        return rec

    def _account(self, now: float) -> None:
        if self._last_tick_s is not None and self.serving is not None:
            dt = max(now - self._last_tick_s, 0.0)
            self.totals.seconds += dt
            self.totals.core_seconds += dt * self.serving.cores
            # From the profile, not the plan's own figure: a plan read back from a cluster on resume
            # carries the shares but no accuracy.
            acc_now = plan_accuracy(self.profile, self.serving)
            # The traffic of this stretch: the rate observed at the last check (a window of whole seconds
            # that ends at most one check before this one).
            seen = dt * max(self.last_observed_rps or 0.0, 0.0)
            self.totals.accuracy_seconds += dt * acc_now
            self.totals.observed_requests += seen
            self.totals.accuracy_requests += seen * acc_now
            shares = self.serving.shares_by_name()
            for name, acc in self.profile.accuracy_by_service(shares).items():
                cores = sum(a.cores for a in self.serving.allocations if self.profile.service_of(a.name) == name)
                own = dt * max(self._rates_by_service.get(name, 0.0), 0.0)
                tot = self.totals.by_service.setdefault(name, [0.0, 0.0, 0.0, 0.0])
                tot[0] += dt * cores
                tot[1] += dt * acc
                tot[2] += own
                tot[3] += own * acc
        elif self._last_tick_s is not None:
            self.totals.seconds += max(now - self._last_tick_s, 0.0)
        self._last_tick_s = now

    def _sample_cpu(self, now: float) -> None:
        """Read the variants' CPU counters; add the samples due (VPA: a 15-s mean once a minute)."""
        if self._cpu_period is None:
            return
        try:
            used: Mapping[str, float] = self.backend.cpu_seconds()
        except Exception as exc:
            log.debug("cpu usage unavailable: %s", exc)
            return
        self._cpu_readings.add(now, used)
        if self._cpu_sampler is None:
            self._cpu_sampler = CpuSampler.upstream(*self._cpu_period, self.ctl.history_stretch, start_s=now)
        for name, samples in self._cpu_sampler.take(now, self._cpu_readings.names(), self._cpu_readings.at).items():
            self._cpu_samples.setdefault(name, []).extend(samples)

    def _note_slo(self, obs: Observation) -> None:
        if obs.requests_total is None or obs.violations_total is None:
            return  # without a cumulative violation count, status asks Prometheus instead
        self._slo_samples.append(
            (obs.now_s, obs.requests_total, obs.violations_total or 0, obs.errors_total or 0)
        )
        while self._slo_samples and obs.now_s - self._slo_samples[0][0] > self.config.slo_window_s:
            self._slo_samples.popleft()

    def slo_attainment(self) -> float | None:
        """Share of requests within the SLO (not failed) over the last ``slo_window_s``."""
        if len(self._slo_samples) < 2:
            return None
        _, r0, v0, e0 = self._slo_samples[0]
        _, r1, v1, e1 = self._slo_samples[-1]
        sent = r1 - r0
        if sent <= 0:
            return None
        return max(0.0, 1.0 - ((v1 - v0) + (e1 - e0)) / sent)

    def snapshot(self) -> LoopSnapshot:
        """What status shows: the serving plan, load, forecast, SLO attainment, last decision."""
        last = self.records.last
        obs = self.last_obs
        return LoopSnapshot(
            time_s=self.clock(),
            policy=self.policy_name,
            interval_s=self.ctl.interval_s,
            plan=self.serving.as_dict() if self.serving is not None else None,
            observed_rps=round(self.last_observed_rps, 3) if self.last_observed_rps is not None else None,
            forecast_rps=round(self.last_forecast_rps, 3),
            p99_ms=obs.p99_ms if obs else None,
            monitor={"source": obs.source if obs else "", "warning": obs.warning if obs else ""},
            write_error=self.records.write_error,
            slo_attainment_5m=self.slo_attainment(),
            next_decision_s=self.next_decision_s,
            degraded=self.degraded,
            unreachable=self.outages.line(self.clock()),
            backend_healthy=self.backend_healthy,
            totals=self.totals.as_dict(),
            last_decision=last.as_dict() if last else None,
            services=self._services_now(),
        )

    def _services_now(self) -> list[dict[str, Any]]:
        """Each service's observed and forecast rate, cores and accuracy now (status; [] for one service)."""
        if not self.profile.services:
            return []
        plan = self.serving
        acc = self.profile.accuracy_by_service(plan.shares_by_name()) if plan is not None else {}
        out = []
        for name in self.profile.service_names:
            last = self.last_by_service.get(name, {})
            cores = sum(a.cores for a in plan.allocations if self.profile.service_of(a.name) == name) \
                if plan is not None else 0.0
            out.append({"name": name, "observed_rps": round(last.get("observed_rps", 0.0), 3),
                        "forecast_rps": round(last.get("forecast_rps", 0.0), 3), "cores": round(cores, 4),
                        "accuracy": round(acc.get(name, 0.0), 5)})
        return out

