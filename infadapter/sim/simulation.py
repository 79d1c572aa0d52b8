"""The trace-driven, request-level simulator: replay per-second rates against a policy's plans.

Model (docs/simulator.md derives and discusses it):

- **Arrivals**: Poisson within each second (``N_t ~ Poisson(rate_t)``, times uniform in the second),
  drawn once per seed so that every policy sees the very same requests and service demands.
- **Dispatcher**: smooth weighted round robin (nginx's algorithm) over integer quotas
  ``round(1000 * share)`` of the serving plan; the sequence restarts when the plan changes.
- **Variant on c cores**: one FIFO server with exponential service times of rate
  ``mu(v, c) = capacity(v, c) + ln(100) / SLO``. An M/M/1 queue's sojourn time is exponential with
  rate ``mu - lambda``, so at ``lambda = capacity(v, c)`` its p99 is exactly the SLO: the profile
  is reproduced by construction. A request whose wait would exceed ``timeout_s`` is dropped (in a
  FIFO queue the wait is known on arrival, so dropping then equals giving up at the timeout).
  Waits follow Lindley's recursion, vectorized with numpy (a running maximum); only stretches with
  drops fall back to a Python loop.
- **CPU usage** of an instance (the signal VPA and HPA read) = the CPU it used plus the CPU the requests
  it shed would have used (so the signal shows the demand, as the local backend's does), where the
  CPU used = cores x its busy fraction of each second (``cpu_model="busy"``, the
  default: a request keeps every core of its server busy, so usage <= cores), or (``"work"``, for
  servers whose requests use a fixed amount of CPU, as the local backend's ONNX servers with
  ``floor(cores)`` threads) busy fraction x ``min(cores, mu x w_v)`` with ``w_v`` the fewest
  core-seconds per request the profile implies (``cpu_per_request``); VPA and HPA get samples of it by
  the live loop's rule (:mod:`infadapter.core.cpusamples`: VPA's recommender reads metrics-server's
  15-second mean once a minute, HPA every 15 s).
- **Control**: a decision every ``interval_s`` from ``warmup_s`` on; the forecaster sees the last
  ``history_s`` seconds of *observed* per-second counts; the oracle gets the true peak count of the
  period the new plan will serve. Scale-down stabilization is :class:`infadapter.core.policies.Stabilized`.
- **Transitions**: a new or resized variant is a new instance that serves after its load time.
  Make-before-break (default; also how the paper's VPA rolling update of a 1-replica Deployment
  behaves: maxSurge 1, maxUnavailable 0): the old plan serves until every new instance is ready,
  then traffic switches at once. Break-before-make (``make_before_break=False``, or
  ``vpa_update="recreate"`` for VPA runs: eviction then re-creation): the new plan takes traffic
  at once and requests sent to a loading instance fail. ``in_place_resize``: a resize changes the
  cores of the running instance immediately, with no load time and no queue loss.
- **Cost**: allocated cores of every instance that exists, loading ones included (both the old and
  the new instance count during a make-before-break transition).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from infadapter.adapter.records import DecisionRecord, StepTimer, decision_record
from infadapter.core import control, slo
from infadapter.core import solver as solver_mod
from infadapter.core.cpusamples import CpuSampler
from infadapter.core.forecast import Forecaster, make_forecaster
from infadapter.core.plan import Plan, diff, plan_from_cores
from infadapter.core.policies import (
    DEFAULT_MIN_GAIN,
    DEFAULT_STABILIZATION,
    Context,
    Decision,
    Policy,
    Stabilized,
    make_policy,
    unwrap,
)
from infadapter.core.policies import entry as policy_entry
from infadapter.core.profile import Profile, threads_for_cores
from infadapter.core.queues import (
    add_busy,
    add_interval,
    add_per_second,
    busy_per_second,
    fifo,
    fifo_cfs,
    swrr_sequence,
)
from infadapter.core.service import cpu_per_request, load_at_slo, service_rate
from infadapter.errors import BadInput

SWRR_QUOTA = 1000

#: The queue kernels and the service model live in their own modules; these names stay importable here.
__all__ = [
    "PAPER_SETTING", "TIMELINE_FIELDS", "Arrivals", "SimConfig", "SimResult", "Simulation", "arrivals_from_times",
    "busy_per_second", "cpu_per_request", "fifo", "fifo_cfs", "initial_plan", "load_at_slo", "make_arrivals",
    "service_rate", "simulate", "swrr_sequence",
]


@dataclass(frozen=True)
class SimConfig:
    """Simulation settings. The defaults are the adapter's (the live loop's) defaults; :data:`PAPER_SETTING`
    gives the paper's setting. The control rules are one :class:`infadapter.core.control.ControlConfig`, the
    live loop's (``control``); :meth:`of` builds both from one flat set of settings."""

    #: When to decide and on which load: the live loop's rules, composed (interval, checks, reaction, history).
    control: control.ControlConfig = field(default_factory=control.ControlConfig)
    warmup_s: float = 0.0  # the first decision's time (the paper: 120 s)
    stabilization_intervals: int = DEFAULT_STABILIZATION  # scale-down after this many decisions want less
    min_gain: float = DEFAULT_MIN_GAIN  # keep the current mix unless a new one beats it by this much
    forecaster: str = "auto"  # see infadapter.core.forecast.make_forecaster
    forecaster_model: str | None = None  # model file of the learned forecaster
    make_before_break: bool = True
    in_place_resize: bool = True  # resize a running server's cores without a restart (the paper: off)
    vpa_update: str = "rolling"  # rolling (surge, make-before-break) | recreate (evict, then start)
    seed: int = 0
    timeout_s: float | None = None  # longest wait before a request is dropped; None: 2 x SLO
    # VPA's CPU samples: one every vpa_sample_s, the mean over vpa_sample_window_s; None: the policy
    # entry's (upstream's recommender: a minute, metrics-server's 15-s window), as the live loop samples.
    vpa_sample_s: float | None = None
    vpa_sample_window_s: float | None = None
    initial: Mapping[str, float] | None = None  # initial cores by variant; None: per-policy default
    memoize: bool = True  # reuse a stateless policy's decision for a repeated (load, current plan)
    solver: solver_mod.Options = field(default_factory=solver_mod.Options)
    # The first decision's plan serves from its start, decided with no current plan: the adapter brings its
    # first servers up before the load reaches them. Off: the paper's initial state serves first.
    first_plan_ready: bool = True
    # Per-second rates of the day before the window (the replay's time scale): what a VPA that had been
    # running would have seen (policies.Context.rates_before). None: policies start cold.
    rates_before: Sequence[float] | None = None
    # busy: a busy server uses all its cores; work: a request needs a fixed CPU time (see the module doc).
    cpu_model: str = "busy"
    # Coefficient of variation of service times: 1 = exponential (M/M/1, the closed form); below 1
    # gamma-distributed, for servers whose inference time varies little (see service_rate).
    service_cv: float = 1.0
    # Seconds the monitor lags behind the arrivals (a live monitor reading Prometheus sees complete
    # seconds only after a scrape: about 2 s on the local backend); 0: the simulator sees at once.
    observe_lag_s: int = 0
    # Refuse a request when max(2, ceil(capacity x SLO)) are already waiting, as our model servers and
    # the dispatcher do (a fast 503 instead of a backlog that makes every later request late): in a
    # FIFO queue, a wait longer than that many services. Off (the paper's TF Serving): only the
    # timeout drops requests.
    queue_bound: bool = True
    # queue: one FIFO server of rate mu (the paper's model, see the module doc). cfs: the local
    # backend's server as it runs under a CFS quota: one request at a time on floor(cores) threads
    # (at least 1), each needing cpu_per_request x its demand core-seconds, at full speed while the
    # cgroup has quota left in the current cfs_period_s and throttled until the next period after.
    service_model: str = "queue"
    cfs_period_s: float = 0.1

    def __post_init__(self) -> None:
        if self.warmup_s < 0:
            raise BadInput(f"--warmup: must be >= 0 seconds, got {self.warmup_s:g}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise BadInput(f"--timeout: must be > 0 seconds, got {self.timeout_s:g}")
        if self.vpa_update not in ("rolling", "recreate"):
            raise BadInput(f"--vpa-update: must be rolling or recreate, got {self.vpa_update!r}")
        if any(v is not None and not v > 0 for v in (self.vpa_sample_s, self.vpa_sample_window_s)):
            raise BadInput("--vpa-sample: sample period and window must be > 0 seconds")
        if not 0.05 <= self.service_cv <= 1.0:
            raise BadInput(f"--service-cv: must be between 0.05 and 1, got {self.service_cv:g}")
        if self.cpu_model not in ("busy", "work"):
            raise BadInput(f"cpu_model: must be busy or work, got {self.cpu_model!r}")
        if self.service_model not in ("queue", "cfs"):
            raise BadInput(f"--service-model: must be queue or cfs, got {self.service_model!r}")
        if not self.cfs_period_s > 0:
            raise BadInput(f"cfs_period_s: must be > 0, got {self.cfs_period_s:g}")
        if self.observe_lag_s < 0:
            raise BadInput(f"--observe-lag: must be >= 0 seconds, got {self.observe_lag_s}")

    @classmethod
    def of(cls, **settings: Any) -> SimConfig:
        """A config from one flat set of settings: ControlConfig's field names go to ``control`` (None: its
        default), the rest are this class's (e.g. ``SimConfig.of(**PAPER_SETTING, seed=3)``)."""
        names = {f.name for f in fields(control.ControlConfig)}
        ctl = {k: settings.pop(k) for k in list(settings) if k in names}
        ctl = {k: v for k, v in ctl.items() if v is not None or k == "replan_gap_s"}
        if "history_before" in ctl:
            ctl["history_before"] = tuple(float(x) for x in ctl["history_before"])
        return cls(control=control.ControlConfig(**ctl), **settings)


#: The paper's setting (``simulate --paper``): 30-s decisions on ewma+10% from a 2-minute warm-up, the
#: initial plan serving first, new instances for every change (make-before-break), no reaction.
PAPER_SETTING: dict[str, Any] = dict(
    interval_s=30.0, warmup_s=120.0, forecaster="ewma", make_before_break=True, in_place_resize=False,
    react=False, first_plan_ready=False, history_before=None, queue_bound=False, min_gain=0.0, demand="peak",
)


@dataclass(frozen=True)
class Arrivals:
    """Request arrival times (s, sorted) and unit-mean exponential service demands, one per request."""

    times: np.ndarray
    work: np.ndarray
    counts: np.ndarray  # requests per second (what a monitor observes)

    @property
    def duration_s(self) -> int:
        return int(self.counts.size)


def make_arrivals(rates_rps: Sequence[float] | np.ndarray, seed: int = 0) -> Arrivals:
    """Poisson arrivals within each second of ``rates_rps``; the same seed gives the same requests."""
    rates = np.asarray(rates_rps, dtype=float)
    if rates.ndim != 1 or rates.size == 0:
        raise BadInput("rates: need a non-empty sequence of per-second rates")
    if np.any(rates < 0) or not np.all(np.isfinite(rates)):
        raise BadInput("rates: must be finite numbers >= 0")
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rates)
    sec = np.repeat(np.arange(rates.size, dtype=float), counts)
    times = np.sort(sec + rng.random(sec.size))
    work = rng.exponential(1.0, size=sec.size)
    return Arrivals(times, work, counts.astype(float))


def arrivals_from_times(times_s: Sequence[float] | np.ndarray, duration_s: int, seed: int = 0) -> Arrivals:
    """Arrivals at given times (s from the start, e.g. a live run's schedule), with fresh service demands.

    Lets the simulator replay exactly the requests a live run sent, so that a live-vs-simulated
    comparison does not also compare two Poisson draws.
    """
    times = np.sort(np.asarray(times_s, dtype=float))
    if times.ndim != 1 or duration_s < 1:
        raise BadInput("arrivals: need a 1-D array of times and a duration of at least 1 second")
    times = times[(times >= 0) & (times < duration_s)]
    counts = np.bincount(times.astype(np.int64), minlength=duration_s)[:duration_s].astype(float)
    work = np.random.default_rng(seed).exponential(1.0, size=times.size)
    return Arrivals(times, work, counts)


# -- the simulation state ------------------------------------------------------------------------------
@dataclass
class _Instance:
    """One running (or loading) model server."""

    name: str
    cores: float
    mu: float
    ready_at: float
    free_at: float = 0.0
    quota: list[float] = field(default_factory=lambda: [-1.0, 0.0])  # cfs: [period index, CPU used in it]
    threads: int = 0  # cfs: fixed when the server starts (0: from the cores it started on)

    def __post_init__(self) -> None:
        if not self.threads:
            self.threads = threads_for_cores(self.cores)


@dataclass
class _Config:
    """What the dispatcher sends traffic to: instances and their shares."""

    instances: list[_Instance]
    shares: list[float]
    plan: Plan
    seq: np.ndarray
    offset: int = 0


@dataclass(frozen=True)
class _Pending:
    """A plan waiting for its new instances (make-before-break), and the shrinks due when it takes over."""

    config: _Config
    ready_at: float
    shrinks: tuple[tuple[_Instance, float], ...]


@dataclass
class _Memo:
    """Reuses a stateless policy's decision for a repeated (load, true peak, current cores)."""

    inner: Policy
    cache: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.inner.name

    def decide(self, ctx: Context) -> Decision:
        key = (ctx.forecast_rps, ctx.true_peak_rps, tuple(sorted(ctx.current_cores.items())))
        hit = self.cache.get(key)
        if hit is None:
            # Cached without the solved model that ``other_set`` keeps for explain's runner-up: the simulator
            # records no explanation, and a day's ~8,700 models held about 1 GB (and slowed the collector).
            hit = self.cache[key] = replace(self.inner.decide(ctx), other_set=None)
        return replace(hit, state=ctx.state)


TIMELINE_FIELDS = ("requests", "violations", "dropped", "cores", "capacity_rps", "accuracy", "forecast_rps",
                   "cpu_usage_cores")


@dataclass(frozen=True)
class SimResult:
    """Totals, a per-second timeline and the decisions of one simulated policy."""

    policy: str
    requests: int
    violations: int
    dropped: int
    late: int
    p50_ms: float
    p99_ms: float
    mean_cores: float
    mean_planned_cores: float
    mean_accuracy: float
    mean_cpu_usage_cores: float
    transitions: int
    decisions: tuple[DecisionRecord, ...]
    timeline: dict[str, np.ndarray]
    forecaster: str
    duration_s: int
    wall_s: float
    decide_s: float

    @property
    def slo_violation_rate(self) -> float:
        return self.violations / self.requests if self.requests else 0.0

    def as_dict(self, timeline: bool = False, decisions: bool = False) -> dict[str, Any]:
        """The ``simulate --json`` object (timeline and decisions only when asked)."""
        out: dict[str, Any] = {
            "policy": self.policy,
            "requests": self.requests,
            "slo_violation_rate": round(self.slo_violation_rate, 6),
            "mean_cores": round(self.mean_cores, 4),
            "mean_accuracy": round(self.mean_accuracy, 6),
            "mean_planned_cores": round(self.mean_planned_cores, 4),
            "dropped": self.dropped,
            "violations": self.violations,
            "late": self.late,
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "mean_cpu_usage_cores": round(self.mean_cpu_usage_cores, 4),
            "transitions": self.transitions,
            "decisions": len(self.decisions),
            "forecaster": self.forecaster,
            "duration_s": self.duration_s,
            "wall_s": round(self.wall_s, 3),
            "decide_s": round(self.decide_s, 3),
        }
        if timeline:
            out["timeline"] = {k: [None if math.isnan(x) else x for x in np.round(v, 4).tolist()]
                               for k, v in self.timeline.items()}
        if decisions:
            out["decision_log"] = [d.as_dict() for d in self.decisions]
        return out


# -- helpers -----------------------------------------------------------------------------------------
def _plan_of(profile: Profile, cores: Mapping[str, float]) -> Plan | None:
    """The plan of what serves now (shares by capacity), None when nothing does."""
    if not cores:
        return None
    caps = {n: profile.capacity_rps(n, c) for n, c in cores.items()}
    return plan_from_cores(cores, 0.0, caps, {n: profile.variant(n).accuracy for n in cores})


def initial_plan(profile: Profile, policy: Policy, config: SimConfig) -> Plan:
    """The starting plan: ``config.initial``, else the policy's own (REFERENCE.md: the most accurate
    variant, or VPA's own, on the whole budget)."""
    if config.initial:
        for n in config.initial:
            profile.variant(n)
        caps = {n: profile.capacity_rps(n, c) for n, c in config.initial.items()}
        acc = {v.name: v.accuracy for v in profile.variants}
        return plan_from_cores(config.initial, 0.0, caps, acc)
    make = policy_entry(policy).initial_plan
    return make(profile, policy) if make is not None else plan_from_cores({}, 0.0, {}, {})


def _build_policy(spec: str | Policy, profile: Profile, config: SimConfig) -> Policy:
    policy = (make_policy(spec, profile, config.stabilization_intervals, min_gain=config.min_gain)
              if isinstance(spec, str) else spec)
    if not config.memoize or not policy_entry(policy).stateless:
        return policy
    inner = unwrap(policy)
    if isinstance(policy, Stabilized) and policy.inner is inner:
        return replace(policy, inner=_Memo(inner))
    if policy is inner:
        return _Memo(inner)
    return policy


# -- the simulation -----------------------------------------------------------------------------------
class Simulation:
    """One policy replayed against one set of arrivals: the state of a run and its steps.

    :meth:`run` advances time from event to event (a decision, a check, an instance becoming ready,
    the end); between events :meth:`serve` sends the arrivals to the serving instances. A decision
    (:meth:`decide`) follows :mod:`infadapter.core.control`, the live loop's rules, and starts its plan with
    :meth:`apply`. Each step reads and changes the attributes below, in this order only.
    """

    def __init__(self, profile: Profile, rates_rps: Sequence[float] | np.ndarray, policy: str | Policy,
                 config: SimConfig | None = None, *, arrivals: Arrivals | None = None,
                 forecaster: Forecaster | None = None, bridge_limit: Callable[[float], float] | None = None
                 ) -> None:
        cfg = self.config = config or SimConfig()
        self.profile = profile
        # The most cores the growth in place while new variants load may take at a decision time (a service
        # of several: what the other services hold of the shared budget, as the live loop's rule leaves it).
        self.bridge_limit = bridge_limit
        arr = arrivals if arrivals is not None else make_arrivals(rates_rps, cfg.seed)
        if abs(cfg.service_cv - 1.0) > 1e-12:
            # Same requests, gamma service demands of unit mean (a seed of their own: every policy of a
            # comparison still sees the very same demands).
            shape = 1.0 / (cfg.service_cv * cfg.service_cv)
            work = np.random.default_rng(cfg.seed + 7919).gamma(shape, 1.0 / shape, arr.times.size)
            arr = replace(arr, work=work)
        self.arr = arr
        self.duration = arr.duration_s
        self.policy = _build_policy(policy, profile, cfg)
        self.forecaster = forecaster if forecaster is not None else make_forecaster(cfg.forecaster,
                                                                                    cfg.forecaster_model)
        self.ctl = control.for_profile(cfg.control, profile)
        self.slo_s = profile.slo_ms / 1000.0
        self.timeout_s = cfg.timeout_s if cfg.timeout_s is not None else 2.0 * self.slo_s
        self.names = list(profile.names)
        self.vidx = {n: i for i, n in enumerate(self.names)}
        self.accuracy = np.array([v.accuracy for v in profile.variants])
        kind = self.kind = policy_entry(self.policy)
        vpa = kind.name.startswith("vpa")
        self.mbb = cfg.make_before_break and not (vpa and cfg.vpa_update == "recreate")
        self.in_place = cfg.in_place_resize and kind.in_place
        self.top = profile.core_options()[-1]
        self.sampler = CpuSampler.upstream(cfg.vpa_sample_s if vpa and cfg.vpa_sample_s else kind.cpu_sample_s,
                                           cfg.vpa_sample_window_s if vpa and cfg.vpa_sample_window_s
                                           else kind.cpu_window_s, self.ctl.history_stretch)
        self.cfs = cfg.service_model == "cfs"
        self.work_cpu = ([cpu_per_request(profile, n, cfg.service_cv if self.cfs else None) for n in self.names]
                         if cfg.cpu_model == "work" or self.cfs else None)
        # Per request and per second: what happened.
        n, d = arr.times.size, self.duration
        self.finish = np.full(n, np.nan)
        self.served_by = np.full(n, -1, dtype=np.int64)
        self.cores_ts, self.planned_ts, self.cap_ts, self.fc_ts = (np.zeros(d) for _ in range(4))
        self.usage = np.zeros((len(self.names), d))
        self._seqs: dict[tuple[int, ...], np.ndarray] = {}
        # The control state.
        plan0 = initial_plan(profile, self.policy, cfg)
        self.serving = self._config(plan0, [_Instance(a.name, a.cores, self._rate(a.name, a.cores), -math.inf)
                                            for a in plan0.allocations])
        self.target = plan0
        self.pending: _Pending | None = None
        self.state: Any = None
        self.records: list[DecisionRecord] = []
        self.transitions = 0
        self.decide_total = 0.0
        self.forecast_now = 0.0
        self.next_request = 0
        self.next_decision = cfg.warmup_s
        self.last_decision = -math.inf
        self.first = True

    # -- the service model ------------------------------------------------------------------------
    def _rate(self, name: str, cores: float) -> float:
        if not self.kind.cpu_limited:
            cores = self.top  # requests only: a server may use the free budget beyond its request
        if self.cfs:  # what the quota and the threads let through; also sets the queue bound's wait
            w = self.work_cpu[self.vidx[name]] if self.work_cpu is not None else 0.0
            return min(cores, threads_for_cores(cores)) / w if w > 0 else 1e-9
        return service_rate(self.profile, name, cores, self.config.service_cv)

    def _in_place_max(self, inst: _Instance) -> float:
        """The most cores ``inst`` can get in place: a local server's threads are fixed when it starts."""
        return self.profile.in_place_ceiling(inst.threads) if self.cfs else self.top

    def _queue_bound(self, inst: _Instance) -> int:
        """Requests a server lets wait: for the cores it has, or (a local server, whose bound is set when
        it starts) for the most it can get in place, as LocalBackend starts them."""
        if self.cfs:
            return self.profile.queue_bound(inst.name, max(inst.cores, self._in_place_max(inst)))
        return self.profile.queue_bound(inst.name, inst.cores)

    def _set_cores(self, inst: _Instance, cores: float) -> None:
        inst.cores, inst.mu = cores, self._rate(inst.name, cores)

    def _config(self, plan: Plan, instances: list[_Instance]) -> _Config:
        shares = [plan.get(i.name).share for i in instances]  # type: ignore[union-attr]
        weights = tuple(max(1, round(s * SWRR_QUOTA)) if s > 0 else 0 for s in shares)
        if sum(weights) == 0:
            weights = (1,) * len(weights)
        if weights not in self._seqs:
            self._seqs[weights] = swrr_sequence(weights)
        return _Config(instances, shares, plan, self._seqs[weights])

    # -- between events: requests are served ------------------------------------------------------
    def serve(self, t0: float, t1: float) -> None:
        """Send the arrivals of [t0, t1) to the serving instances; account cores, capacity, usage."""
        cfg, arr, d = self.config, self.arr, self.duration
        end = int(np.searchsorted(arr.times, t1, side="left"))
        idx = np.arange(self.next_request, end)
        self.next_request = end
        conf = self.serving
        allocated = sum(i.cores for i in conf.instances)
        add_interval(self.planned_ts, t0, t1, allocated)
        if self.pending is not None:
            allocated += sum(i.cores for i in self.pending.config.instances if i not in conf.instances)
        add_interval(self.cores_ts, t0, t1, allocated)
        add_interval(self.cap_ts, t0, t1, sum(self.profile.capacity_rps(i.name, i.cores) for i in conf.instances
                                              if i.ready_at <= t0))
        add_interval(self.fc_ts, t0, t1, self.forecast_now)
        if idx.size == 0:
            return
        period = conf.seq.size
        pick = conf.seq[(conf.offset + np.arange(idx.size)) % period]
        conf.offset = (conf.offset + idx.size) % period
        for k, inst in enumerate(conf.instances):
            sel = idx[pick == k]
            if sel.size == 0 or inst.ready_at > t0:
                continue  # a loading instance (break-before-make) fails its requests: finish stays NaN
            a = arr.times[sel]
            limit = self.timeout_s
            if cfg.queue_bound:
                limit = min(limit, self._queue_bound(inst) / inst.mu)
            v = self.vidx[inst.name]
            # The usage signal (what VPA and HPA read) counts shed requests with the CPU they would
            # have used, so it shows the demand, as the local backend's does (LocalBackend.cpu_seconds).
            if self.cfs:
                assert self.work_cpu is not None
                cpu = arr.work[sel] * self.work_cpu[v]
                f, inst.free_at = fifo_cfs(a, cpu, inst.free_at, limit, inst.cores, inst.threads,
                                           cfg.cfs_period_s, inst.quota)
                ok = ~np.isnan(f)
                used_at, used = np.minimum(f[ok].astype(np.int64), d - 1), cpu[ok]
                shed_cpu = cpu[~ok]
            else:
                s = arr.work[sel] / inst.mu
                f, inst.free_at = fifo(a, s, inst.free_at, limit)
                ok = ~np.isnan(f)
                usable = inst.cores if self.kind.cpu_limited else self.top
                per_busy_s = min(usable, inst.mu * self.work_cpu[v]) if self.work_cpu is not None else usable
                add_busy(self.usage[v], f[ok] - s[ok], f[ok], per_busy_s)
                used_at, used = np.zeros(0, dtype=np.int64), np.zeros(0)
                shed_cpu = s[~ok] * per_busy_s
            shed_at = np.minimum(a[~ok].astype(np.int64), d - 1)
            add_per_second(self.usage[v], np.concatenate([used_at, shed_at]), np.concatenate([used, shed_cpu]))
            self.finish[sel] = f
            self.served_by[sel[ok]] = v

    def cpu_samples(self, now: float) -> dict[str, list[tuple[float, float]]]:
        """Usage samples since the last call, by the live loop's rule
        (:class:`~infadapter.core.cpusamples.CpuSampler`)."""
        def cumulative(name: str, t: float) -> float:
            return float(self.usage[self.vidx[name], :max(0, round(t))].sum())
        return self.sampler.take(now, self.names, cumulative)

    # -- a decision -------------------------------------------------------------------------------
    def observed(self, now: float) -> np.ndarray:
        """The per-second counts the monitor has seen at ``now`` (complete seconds, ``observe_lag_s`` late)."""
        return self.arr.counts[:max(int(now) - self.config.observe_lag_s, 0)]

    def observed_rate(self, now: float) -> float:
        """The observed rate at ``now``: :func:`infadapter.core.control.observed_rate`, as the live loop's."""
        return control.observed_rate(self.observed(now), self.ctl)

    def decide(self, now: float, trigger: str) -> None:
        """One decision as the live loop's steps (observe, forecast, plan, stabilize, apply, record), by the
        control core's rules: the decision load, the policy's context, growth in place first when the plan must
        wait for new variants (control.bridge_plan), the record (records.decision_record)."""
        cfg, profile = self.config, self.profile
        steps = StepTimer()
        self.last_decision = now
        with steps.step("observe"):
            observed = control.seen(self.observed(now), self.ctl)
        with steps.step("forecast"):
            self.forecast_now = control.decision_load(trigger, self.forecaster, observed.history,
                                                      observed.rate_rps, self.ctl)
        horizon = int(now + self.ctl.interval_s + profile.max_load_time_s)
        future = self.arr.counts[int(now) : max(int(now) + 1, horizon)]
        true_peak = float(future.max()) if future.size else 0.0
        start = self.first and cfg.first_plan_ready
        ctx = control.context(profile, now, self.forecast_now, None if start else self.target, observed, self.ctl,
                              cpu_usage=self.cpu_samples(now) if self.kind.needs_cpu else {},
                              true_peak_rps=true_peak, state=self.state, solver=cfg.solver,
                              rates_before=cfg.rates_before or ())
        with steps.step("plan"):
            proposed = control.propose(self.policy, ctx)
        with steps.step("stabilize"):
            d = control.stabilize(self.policy, ctx, proposed)
        self.decide_total += steps.seconds("plan", "stabilize")
        self.state = d.state
        before = self.target
        change = diff(None if start else self.target, d.plan)
        if change.create or change.resize or change.delete:
            self.transitions += 1
        with steps.step("apply"):
            if not change.empty:
                loading = self.pending.config.instances if self.pending else ()
                if self.in_place and self.mbb and not start:
                    ready = [i for i in self.serving.instances if i.ready_at <= now]
                    bridge = control.bridge_plan(profile, _plan_of(profile, {i.name: i.cores for i in ready}),
                                                 d.plan, self.forecast_now,
                                                 {i.name: self._in_place_max(i) for i in ready},
                                                 limit_cores=self.bridge_limit(now) if self.bridge_limit else None)
                    if bridge is not None:
                        self.apply(bridge, now)
                self.apply(d.plan, now, immediate=start, loading=loading)
        self.target = d.plan
        self.first = False
        with steps.step("record"):
            rec = decision_record(
                seq=len(self.records) + 1, time_s=now, trigger=trigger, policy=self.policy.name, observed=observed,
                forecast_rps=self.forecast_now, decision=d, before=before, change=change, serving=None,
                monitor_source="sim", timings_s=steps.timings_s, true_peak_rps=true_peak)
        steps.finish()
        self.records.append(rec)

    def apply(self, plan: Plan, now: float, immediate: bool = False, loading: Sequence[_Instance] = ()) -> None:
        """Start the plan: in-place growth at once, new instances after their load time, and (when
        make-before-break waits for them) in-place shrinks only when the new plan takes the traffic,
        since the old shares still send the old load to the instance until then. ``loading``: instances
        of the plan being replaced that are still loading; one the new plan keeps is not restarted."""
        still_loading = {(i.name, i.cores): i for i in loading if i.ready_at > now}
        self.pending = None
        old = {i.name: i for i in self.serving.instances}
        instances, starting, shrinks = [], [], []
        for a in plan.allocations:
            inst = old.get(a.name)
            if inst is not None and abs(inst.cores - a.cores) < 1e-9:
                instances.append(inst)
            elif inst is not None and self.in_place and a.cores <= self._in_place_max(inst) + 1e-9:
                if a.cores > inst.cores:
                    self._set_cores(inst, a.cores)
                else:
                    shrinks.append((inst, a.cores))
                instances.append(inst)
            elif (a.name, a.cores) in still_loading and not immediate:
                new = still_loading[(a.name, a.cores)]
                instances.append(new)
                starting.append(new)
            else:
                ready = -math.inf if immediate else now + self.profile.variant(a.name).load_time_s
                new = _Instance(a.name, a.cores, self._rate(a.name, a.cores), ready, free_at=now)
                instances.append(new)
                starting.append(new)
        conf = self._config(plan, instances)
        if starting and self.mbb and not immediate:
            self.pending = _Pending(conf, max(i.ready_at for i in starting), tuple(shrinks))
        else:
            for inst, cores in shrinks:
                self._set_cores(inst, cores)
            self.serving = conf

    def _switch_if_ready(self, t: float) -> None:
        """Make-before-break: the pending plan takes the traffic once all its new instances are ready."""
        if self.pending is not None and self.pending.ready_at <= t + 1e-12:
            for inst, cores in self.pending.shrinks:
                self._set_cores(inst, cores)
            self.serving, self.pending = self.pending.config, None

    # -- the run ----------------------------------------------------------------------------------
    def _next_event(self, t: float) -> float:
        cfg = self.config
        # Checks fall on whole multiples of check_s from the first decision, as the loop's ticks.
        after = t - cfg.warmup_s
        ctl = self.ctl
        next_check = (cfg.warmup_s + (math.floor(after / ctl.check_s + 1e-9) + 1) * ctl.check_s
                      if ctl.react and not self.first else math.inf)
        candidates = [float(self.duration), cfg.warmup_s if self.first else self.next_decision, next_check]
        if self.pending is not None:
            candidates.append(self.pending.ready_at)
        candidates += [i.ready_at for i in self.serving.instances if i.ready_at > t]
        return min(candidates)

    def run(self, progress: Callable[[float], None] | None = None) -> SimResult:
        """Replay the whole window; ``progress`` is called with the fraction done."""
        started = time.perf_counter()
        self._replay(progress)
        return self.result(time.perf_counter() - started)

    def violations(self, stop_above: int | None = None) -> tuple[int, bool]:
        """Replay until more than ``stop_above`` requests have violated the SLO (None: the whole window).

        Returns the violations counted and whether the window ran to its end: then the count is exactly
        :meth:`result`'s ``violations``; else it is a lower bound (requests already served keep their
        latency, so the count only grows). ``simulate --min-budget`` stops a budget that fails early.
        """
        arr, counted, bad = self.arr, 0, 0

        def over() -> bool:
            nonlocal counted, bad
            j = self.next_request  # requests before it are served, dropped or failed: final
            if stop_above is None or j <= counted:
                return False
            f = self.finish[counted:j]
            bad += int(slo.violated(~np.isnan(f), f - arr.times[counted:j], self.slo_s).sum())
            counted = j
            return bad > stop_above

        if not self._replay(None, over):
            return bad, False
        return int(slo.violated(~np.isnan(self.finish), self.finish - arr.times, self.slo_s).sum()), True

    def _replay(self, progress: Callable[[float], None] | None, stop: Callable[[], bool] | None = None) -> bool:
        """The event loop of :meth:`run`; False when ``stop`` (asked after each served stretch) ended it early."""
        cfg, t = self.config, 0.0
        while True:
            self._switch_if_ready(t)
            if self.duration > t >= cfg.warmup_s - 1e-12:
                cap = self.target.served_capacity_rps() if self.target.allocations else None
                due = control.trigger_due(t, None if self.first else self.next_decision, self.last_decision,
                                          self.observed_rate(t) if self.ctl.react else 0.0, cap, self.ctl)
                if due is not None:
                    self.decide(t, due)
                    self.next_decision = t + self.ctl.interval_s
                    if progress is not None:
                        progress(min(1.0, t / self.duration))
                    continue  # a zero load time may make the new plan ready at once
            if t >= self.duration:
                break
            t_next = self._next_event(t)
            self.serve(t, t_next)
            t = t_next
            if stop is not None and stop():
                return False
        if progress is not None:
            progress(1.0)
        return True

    def result(self, wall_s: float) -> SimResult:
        """Totals and the per-second timeline of what happened."""
        arr, d, finish, accuracy = self.arr, self.duration, self.finish, self.accuracy
        ok = ~np.isnan(finish)
        latency = finish - arr.times
        late = ok & slo.late(latency, self.slo_s)
        bad = slo.violated(ok, latency, self.slo_s)  # late, failed or dropped
        dropped = ~ok
        sec = np.minimum(arr.times.astype(np.int64), d - 1)
        served_acc = np.where(ok, accuracy[np.maximum(self.served_by, 0)], 0.0)
        acc_sum = np.bincount(sec, weights=served_acc, minlength=d)
        served_n = np.bincount(sec[ok], minlength=d)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc_ts = np.where(served_n > 0, acc_sum / np.maximum(served_n, 1), np.nan)
        lat_ms = latency[ok] * 1000.0
        usage_ts = self.usage.sum(axis=0)
        timeline = {
            "requests": arr.counts.copy(),
            "violations": np.bincount(sec[bad], minlength=d).astype(float),
            "dropped": np.bincount(sec[dropped], minlength=d).astype(float),
            "cores": self.cores_ts, "capacity_rps": self.cap_ts, "accuracy": acc_ts, "forecast_rps": self.fc_ts,
            "cpu_usage_cores": usage_ts,
        }
        return SimResult(
            policy=self.policy.name,
            requests=int(arr.times.size),
            violations=int(bad.sum()),
            dropped=int(dropped.sum()),
            late=int(late.sum()),
            p50_ms=float(np.percentile(lat_ms, 50)) if lat_ms.size else 0.0,
            p99_ms=slo.judged_ms(lat_ms) or 0.0,
            mean_cores=float(self.cores_ts.mean()),
            mean_planned_cores=float(self.planned_ts.mean()),
            mean_accuracy=float(accuracy[self.served_by[ok]].mean()) if ok.any() else 0.0,
            mean_cpu_usage_cores=float(usage_ts.mean()),
            transitions=self.transitions,
            decisions=tuple(self.records),
            timeline=timeline,
            forecaster=self.forecaster.name,
            duration_s=d,
            wall_s=wall_s,
            decide_s=self.decide_total,
        )


def simulate(
    profile: Profile,
    rates_rps: Sequence[float] | np.ndarray,
    policy: str | Policy,
    config: SimConfig | None = None,
    *,
    arrivals: Arrivals | None = None,
    forecaster: Forecaster | None = None,
    progress: Callable[[float], None] | None = None,
) -> SimResult:
    """Replay ``rates_rps`` (req/s per second) against ``policy``; see the module doc for the model.

    ``arrivals`` lets several runs share one draw (``make_arrivals(rates, seed)``); ``forecaster``
    overrides ``config.forecaster``; ``progress`` is called with the fraction done.
    """
    return Simulation(profile, rates_rps, policy, config, arrivals=arrivals, forecaster=forecaster).run(progress)
