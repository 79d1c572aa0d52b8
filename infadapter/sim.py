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
  core-seconds per request the profile implies (``cpu_per_request``); VPA gets samples of it every
  ``vpa_sample_s`` seconds, each the mean over the preceding ``vpa_sample_window_s`` (the
  recommender's 1-minute loop reading metrics-server's 15-second window).
- **Control**: a decision every ``interval_s`` from ``warmup_s`` on; the forecaster sees the last
  ``history_s`` seconds of *observed* per-second counts; the oracle gets the true peak count of the
  period the new plan will serve. Scale-down stabilization is :class:`infadapter.policies.Stabilized`.
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
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np

from infadapter import control
from infadapter import solver as solver_mod
from infadapter.errors import BadInput
from infadapter.forecast import Forecaster, make_forecaster
from infadapter.plan import Plan, diff, plan_from_cores
from infadapter.policies import (
    DEFAULT_MIN_GAIN,
    DEFAULT_STABILIZATION,
    Context,
    Decision,
    Policy,
    Stabilized,
    make_policy,
    unwrap,
)
from infadapter.policies import entry as policy_entry
from infadapter.profile import Profile, threads_for_cores
from infadapter.records import DecisionRecord

SWRR_QUOTA = 1000
LN100 = math.log(100.0)


@dataclass(frozen=True)
class SimConfig:
    """Simulation settings. The defaults are the adapter's (the live loop's) defaults; :func:`paper_config`
    gives the paper's setting. The control fields mean what :class:`infadapter.control.ControlConfig`'s do."""

    interval_s: float = control.ControlConfig.interval_s  # seconds between decisions
    warmup_s: float = 0.0  # the first decision's time (the paper: 120 s)
    stabilization_intervals: int = DEFAULT_STABILIZATION  # scale-down after this many decisions want less
    min_gain: float = DEFAULT_MIN_GAIN  # keep the current mix unless a new one beats it by this much
    forecaster: str = "auto"  # see infadapter.forecast.make_forecaster
    forecaster_model: str | None = None  # model file of the learned forecaster
    make_before_break: bool = True
    in_place_resize: bool = True  # resize a running server's cores without a restart (the paper: off)
    vpa_update: str = "rolling"  # rolling (surge, make-before-break) | recreate (evict, then start)
    seed: int = 0
    timeout_s: float | None = None  # longest wait before a request is dropped; None: 2 x SLO
    history_s: int = control.HISTORY_S  # observed history handed to the forecaster
    vpa_sample_s: float = 60.0
    vpa_sample_window_s: float = 15.0
    initial: Mapping[str, float] | None = None  # initial cores by variant; None: per-policy default
    memoize: bool = True  # reuse a stateless policy's decision for a repeated (load, current plan)
    # Reactive re-planning (control.trigger_due): every check_s, if the rate of the last rate_window_s
    # seconds runs above the plan's capacity by overload_tolerance, decide at once on
    # max(forecast, rate * (1 + tolerance)). The paper decided only every interval.
    react: bool = True
    check_s: float = 1.0
    rate_window_s: int = 3
    overload_tolerance: float = 0.10
    replan_gap_s: float | None = None
    solver: solver_mod.Options = field(default_factory=solver_mod.Options)
    # A replay compressed K times (the live loop's --speedup K): each observed second stands for K
    # trace seconds, so the forecaster sees every second repeated K times (LoopConfig.history_stretch).
    history_stretch: int = 1
    # The first decision's forecast is at least this (the live loop's initial forecast); None: off.
    initial_forecast_rps: float | None = None
    # The first decision's plan serves from its start, decided with no current plan: the adapter brings its
    # first servers up before the load reaches them. Off: the paper's initial state serves first.
    first_plan_ready: bool = True
    # Per-second counts observed before the window (the replay's time scale): an adapter that was already
    # running has seen them, so its first forecast uses them. None: it starts with no history.
    history_before: Sequence[float] | None = None
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
        if not self.interval_s > 0:
            raise BadInput(f"--interval: must be > 0 seconds, got {self.interval_s:g}")
        if self.warmup_s < 0:
            raise BadInput(f"--warmup: must be >= 0 seconds, got {self.warmup_s:g}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise BadInput(f"--timeout: must be > 0 seconds, got {self.timeout_s:g}")
        if self.vpa_update not in ("rolling", "recreate"):
            raise BadInput(f"--vpa-update: must be rolling or recreate, got {self.vpa_update!r}")
        if not self.vpa_sample_s > 0 or not self.vpa_sample_window_s > 0:
            raise BadInput("--vpa-sample: sample period and window must be > 0 seconds")
        if self.react and not (self.check_s > 0 and self.rate_window_s >= 1 and self.overload_tolerance >= 0):
            raise BadInput("--react: check_s and rate_window_s must be > 0 and the tolerance >= 0")
        if self.history_s < 1:
            raise BadInput(f"history_s: must be >= 1 second, got {self.history_s}")
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
        if self.history_stretch < 1:
            raise BadInput(f"history_stretch: must be >= 1, got {self.history_stretch}")
        self.control  # noqa: B018 - validates the control fields once, with their flag names

    @property
    def control(self) -> control.ControlConfig:
        """The control rules of this run, shared with the live loop."""
        return control.ControlConfig(
            interval_s=self.interval_s, check_s=self.check_s, react=self.react, rate_window_s=self.rate_window_s,
            overload_tolerance=self.overload_tolerance, replan_gap_s=self.replan_gap_s, history_s=self.history_s,
            history_stretch=self.history_stretch, initial_forecast_rps=self.initial_forecast_rps or 0.0,
            history_before=tuple(float(x) for x in self.history_before or ()))


#: The paper's setting (``simulate --paper``): 30-s decisions on ewma+10% from a 2-minute warm-up, the
#: initial plan serving first, new instances for every change (make-before-break), no reaction.
PAPER_SETTING: dict[str, Any] = dict(
    interval_s=30.0, warmup_s=120.0, forecaster="ewma", make_before_break=True, in_place_resize=False,
    react=False, first_plan_ready=False, history_before=None, queue_bound=False, min_gain=0.0,
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


def cpu_per_request(profile: Profile, name: str, service_cv: float | None = None) -> float:
    """Core-seconds one request needs, from the profile's capacities (before its safety factor).

    Without ``service_cv``: the least ``cores / capacity`` over the allowed allocations, an upper
    bound (a server at its capacity is not quite busy all the time). With it, the ``cfs`` model's
    calibration: on a whole-core allocation (as many threads as cores, so the quota never throttles)
    the server is an M/G/1 queue of mean service ``w / cores``, so the measured capacity has its p99
    at the SLO when ``w = rho x cores / capacity`` with ``rho = load_at_slo(capacity x SLO, cv)``;
    the least over whole-core allocations (the upper bound if there is none). For ResNet-50 of
    profiles/local.yaml: 31 ms as the bound, 24 ms calibrated (CV 0.2); live, one request took 27-29
    ms at low load on one thread.
    """
    v = profile.variant(name)
    safety = getattr(v.capacity, "safety", 1.0) or 1.0
    slo_s = profile.slo_ms / 1000.0
    raw = {c: profile.capacity_rps(name, c) / safety for c in profile.core_options()}
    bound = [c / cap for c, cap in raw.items() if cap > 0]
    if service_cv is not None:
        whole = [load_at_slo(cap * slo_s, service_cv) * c / cap for c, cap in raw.items()
                 if cap > 0 and c >= 1 and abs(c - round(c)) < 1e-9]
        if whole:
            return min(whole)
    return min(bound) if bound else 0.0


def service_rate(profile: Profile, name: str, cores: float, service_cv: float = 1.0) -> float:
    """mu(v, c) in req/s: the rate whose M/G/1 sojourn p99 equals the SLO at capacity(v, c).

    Exponential service (``service_cv`` 1, the default) has the closed form ``capacity + ln(100)/SLO``;
    other coefficients of variation use gamma-distributed service times and :func:`load_at_slo`.
    """
    cap = max(profile.capacity_rps(name, cores), 0.0)
    slo_s = profile.slo_ms / 1000.0
    if abs(service_cv - 1.0) < 1e-12:
        return cap + LN100 / slo_s
    if cap <= 0:
        return 1.0 / slo_s  # serves nothing by the profile; any small rate keeps the queue defined
    return cap / load_at_slo(cap * slo_s, service_cv)


@lru_cache(maxsize=16)
def _p99_sojourn_curve(service_cv: float, n: int = 100_000, seed: int = 12345) -> tuple[np.ndarray, np.ndarray]:
    """``(rho, rho * T99(rho))`` of an M/G/1 FIFO queue with unit-mean gamma service of CV ``service_cv``.

    ``T99`` is the sojourn p99 in mean service times, by simulation with common random numbers (the
    same draws at every load, so the curve is smooth and increasing).
    """
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0, n)
    shape = 1.0 / (service_cv * service_cv)
    service = rng.gamma(shape, 1.0 / shape, n)
    rhos = np.concatenate([np.linspace(0.01, 0.9, 60), np.linspace(0.905, 0.995, 19)])
    g = np.empty(rhos.size)
    for i, rho in enumerate(rhos):
        arrivals = np.cumsum(gaps / rho)
        finish, _ = fifo(arrivals, service, 0.0, math.inf)
        g[i] = rho * float(np.percentile(finish - arrivals, 99))
    return rhos, np.maximum.accumulate(g)


def load_at_slo(capacity_x_slo: float, service_cv: float) -> float:
    """The utilization at which an M/G/1 queue's sojourn p99 is the SLO, given ``capacity x SLO``.

    With service rate mu and utilization rho = capacity/mu, ``p99 = T99(rho)/mu = SLO`` is
    ``rho * T99(rho) = capacity x SLO``: one increasing curve per CV, inverted by interpolation.
    """
    if abs(service_cv - 1.0) < 1e-12:
        return capacity_x_slo / (capacity_x_slo + LN100)
    rhos, g = _p99_sojourn_curve(round(float(service_cv), 6))
    return float(np.interp(capacity_x_slo, g, rhos, left=rhos[0], right=rhos[-1]))


# -- queues -------------------------------------------------------------------------------------------
def fifo(arrivals: np.ndarray, service: np.ndarray, free_at: float, timeout_s: float) -> tuple[np.ndarray, float]:
    """Finish times of a FIFO single server (NaN = dropped: its wait would exceed ``timeout_s``).

    ``free_at`` is when the server finishes the work it already holds; returns the new one.
    Without drops, ``finish_n - C_n = max(finish_{n-1} - C_{n-1}, a_n - C_{n-1})`` (``C`` the cumulative
    service), a running maximum; a drop breaks that chain, so the stretch after the first drop runs
    in a loop until an arrival finds the server idle again.
    """
    n = arrivals.size
    finish = np.full(n, np.nan)
    i = 0
    while i < n:
        a, s = arrivals[i:], service[i:]
        c = np.cumsum(s)
        g = np.maximum.accumulate(np.maximum(a - (c - s), free_at))
        f = g + c
        wait = f - s - a
        bad = np.flatnonzero(wait > timeout_s)
        if bad.size == 0:
            finish[i:] = f
            return finish, float(f[-1])
        j = int(bad[0])
        finish[i : i + j] = f[:j]
        if j:
            free_at = float(f[j - 1])
        i += j
        # Loop over the congested stretch in chunks of plain floats.
        idle = False
        while i < n and not idle:
            chunk = min(n, i + 4096)
            out: list[float] = []
            for ak, sk in zip(arrivals[i:chunk].tolist(), service[i:chunk].tolist(), strict=True):
                w = free_at - ak
                if w <= 0:
                    idle = True  # the server is idle again: back to the vectorized recursion
                    break
                if w > timeout_s:
                    out.append(math.nan)
                else:
                    free_at += sk
                    out.append(free_at)
            finish[i : i + len(out)] = out
            i += len(out)
    return finish, free_at


def swrr_sequence(weights: Sequence[int]) -> np.ndarray:
    """One period of nginx's smooth weighted round robin over integer weights (indexes of the picks)."""
    total = sum(weights)
    current = [0] * len(weights)
    out = np.empty(total, dtype=np.int64)
    for t in range(total):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda i: current[i])
        current[best] -= total
        out[t] = best
    return out


def _add_interval(arr: np.ndarray, t0: float, t1: float, value: float) -> None:
    """Add ``value`` x (overlap of [t0, t1) with each second) into the per-second array ``arr``."""
    if t1 <= t0 or value == 0:
        return
    s0, s1 = math.floor(t0), math.ceil(t1)
    s1 = min(s1, arr.size)
    if s0 >= s1:
        return
    if s1 - s0 == 1:
        arr[s0] += value * (t1 - t0)
        return
    arr[s0] += value * (s0 + 1 - t0)
    arr[s0 + 1 : s1 - 1] += value
    arr[s1 - 1] += value * (t1 - (s1 - 1)) if t1 < s1 else value


def fifo_cfs(arrivals: np.ndarray, cpu_s: np.ndarray, free_at: float, timeout_s: float, cores: float,
             threads: int, period_s: float, quota: list[float]) -> tuple[np.ndarray, float]:
    """Finish times of one request-at-a-time server under a CFS CPU quota (NaN = dropped).

    Request ``i`` needs ``cpu_s[i]`` core-seconds and runs on ``threads`` CPUs while the cgroup has
    quota left in the current period (``cores x period_s`` core-seconds per period, periods aligned
    at multiples of ``period_s``), else it is throttled until the next period. A request whose wait
    would exceed ``timeout_s`` is dropped on arrival, as in :func:`fifo`. ``quota`` is the
    ``[period index, CPU used]`` state carried from segment to segment.
    """
    finish = np.full(arrivals.size, np.nan)
    budget = cores * period_s
    k, used = int(quota[0]), quota[1]
    for i in range(arrivals.size):
        a = float(arrivals[i])
        t = max(a, free_at)
        if t - a > timeout_s:
            continue
        k_t = math.floor(t / period_s + 1e-9)
        if k_t > k:
            k, used = k_t, 0.0
        left = float(cpu_s[i])
        while left > 1e-12:
            avail = budget - used
            room = ((k + 1) * period_s - t) * threads
            if avail <= 1e-12 or room <= 1e-12:
                # Throttled (or at the period's end): the next period brings a fresh quota.
                k, used = k + 1, 0.0
                t = max(t, k * period_s)
                continue
            run = min(left, avail, room)
            t += run / threads
            used += run
            left -= run
        finish[i] = t
        free_at = t
    quota[0], quota[1] = k, used
    return finish, free_at


def busy_per_second(start: np.ndarray, finish: np.ndarray, size: int) -> np.ndarray:
    """Seconds of busy time in each second bin, from non-overlapping busy intervals [start, finish)."""
    out = np.zeros(size + 1)
    lo = start
    while lo.size:
        sec = np.floor(lo).astype(np.int64)
        hi = np.minimum(finish, sec + 1.0)
        keep = sec < size
        out += np.bincount(sec[keep], weights=(hi - lo)[keep], minlength=size + 1)[: size + 1]
        more = finish > sec + 1.0
        lo, finish = (sec + 1.0)[more], finish[more]
    return out[:size]


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


@dataclass
class _Config:
    """What the dispatcher sends traffic to: instances and their shares."""

    instances: list[_Instance]
    shares: list[float]
    plan: Plan
    seq: np.ndarray
    offset: int = 0


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
            hit = self.cache[key] = self.inner.decide(ctx)
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


def _unwrap(policy: Policy) -> Policy:
    while isinstance(policy, (Stabilized, _Memo)):
        policy = policy.inner
    return policy


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
    cfg = config or SimConfig()
    started = time.perf_counter()
    arr = arrivals if arrivals is not None else make_arrivals(rates_rps, cfg.seed)
    if abs(cfg.service_cv - 1.0) > 1e-12:
        # Same requests, gamma service demands of unit mean (a seed of their own: every policy of a
        # comparison still sees the very same demands).
        shape = 1.0 / (cfg.service_cv * cfg.service_cv)
        work = np.random.default_rng(cfg.seed + 7919).gamma(shape, 1.0 / shape, arr.times.size)
        arr = replace(arr, work=work)
    duration = arr.duration_s
    pol = _build_policy(policy, profile, cfg)
    fc = forecaster if forecaster is not None else make_forecaster(cfg.forecaster, cfg.forecaster_model)
    slo_s = profile.slo_ms / 1000.0
    timeout_s = cfg.timeout_s if cfg.timeout_s is not None else 2.0 * slo_s
    names = list(profile.names)
    vidx = {n: i for i, n in enumerate(names)}
    accuracy = np.array([v.accuracy for v in profile.variants])
    kind = policy_entry(pol)
    mbb = cfg.make_before_break and not (kind.name.startswith("vpa") and cfg.vpa_update == "recreate")
    in_place = cfg.in_place_resize and kind.in_place
    top = profile.core_options()[-1]
    sample_s = cfg.vpa_sample_s if kind.name.startswith("vpa") else kind.cpu_sample_s
    sample_window_s = cfg.vpa_sample_window_s if kind.name.startswith("vpa") else kind.cpu_window_s

    n_req = arr.times.size
    finish = np.full(n_req, np.nan)
    served_by = np.full(n_req, -1, dtype=np.int64)
    cores_ts = np.zeros(duration)
    planned_ts = np.zeros(duration)
    cap_ts = np.zeros(duration)
    fc_ts = np.zeros(duration)
    usage = np.zeros((len(names), duration))
    seq_cache: dict[tuple[int, ...], np.ndarray] = {}
    cfs = cfg.service_model == "cfs"
    work_cpu = ([cpu_per_request(profile, n, cfg.service_cv if cfs else None) for n in names]
                if cfg.cpu_model == "work" or cfs else None)

    def rate(name: str, cores: float) -> float:
        if not kind.cpu_limited:
            cores = top  # requests only: a server may use the free budget beyond its request
        if cfs:  # what the quota and the threads let through; also sets the queue bound's wait
            w = work_cpu[vidx[name]] if work_cpu is not None else 0.0
            return min(cores, threads_for_cores(cores)) / w if w > 0 else 1e-9
        return service_rate(profile, name, cores, cfg.service_cv)

    def make_config(plan: Plan, instances: list[_Instance]) -> _Config:
        shares = [plan.get(i.name).share for i in instances]  # type: ignore[union-attr]
        weights = tuple(max(1, round(s * SWRR_QUOTA)) if s > 0 else 0 for s in shares)
        if sum(weights) == 0:
            weights = (1,) * len(weights)
        if weights not in seq_cache:
            seq_cache[weights] = swrr_sequence(weights)
        return _Config(instances, shares, plan, seq_cache[weights])

    plan0 = initial_plan(profile, pol, cfg)
    serving = make_config(plan0, [_Instance(a.name, a.cores, rate(a.name, a.cores),
                                            -math.inf)
                                  for a in plan0.allocations])
    target = plan0
    pending: tuple[_Config, float, tuple[tuple[_Instance, float], ...]] | None = None
    state: Any = None
    records: list[DecisionRecord] = []
    transitions = 0
    decide_total = 0.0
    forecast_now = 0.0
    ptr = 0
    t = 0.0
    next_decision = cfg.warmup_s
    last_sample = 0.0
    last_decision = -math.inf
    first = True

    def run_segment(t0: float, t1: float) -> None:
        nonlocal ptr
        end = int(np.searchsorted(arr.times, t1, side="left"))
        idx = np.arange(ptr, end)
        ptr = end
        conf = serving
        allocated = sum(i.cores for i in conf.instances)
        _add_interval(planned_ts, t0, t1, allocated)
        if pending is not None:
            allocated += sum(i.cores for i in pending[0].instances if i not in conf.instances)
        _add_interval(cores_ts, t0, t1, allocated)
        _add_interval(cap_ts, t0, t1, sum(profile.capacity_rps(i.name, i.cores) for i in conf.instances
                                          if i.ready_at <= t0))
        _add_interval(fc_ts, t0, t1, forecast_now)
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
            limit = timeout_s
            if cfg.queue_bound:
                limit = min(timeout_s, profile.queue_bound(inst.name, inst.cores) / inst.mu)
            v = vidx[inst.name]
            if cfs:
                assert work_cpu is not None
                cpu = arr.work[sel] * work_cpu[v]
                f, inst.free_at = fifo_cfs(a, cpu, inst.free_at, limit, inst.cores, threads_for_cores(inst.cores),
                                           cfg.cfs_period_s, inst.quota)
                ok = ~np.isnan(f)
                sec = np.minimum(f[ok].astype(np.int64), duration - 1)
                usage[v] += np.bincount(sec, weights=cpu[ok], minlength=duration)[:duration]
                shed = np.minimum(a[~ok].astype(np.int64), duration - 1)  # the demand it shed: see below
                usage[v] += np.bincount(shed, weights=cpu[~ok], minlength=duration)[:duration]
            else:
                s = arr.work[sel] / inst.mu
                f, inst.free_at = fifo(a, s, inst.free_at, limit)
                ok = ~np.isnan(f)
                busy = busy_per_second(f[ok] - s[ok], f[ok], duration)
                usable = inst.cores if kind.cpu_limited else top
                per_busy_s = min(usable, inst.mu * work_cpu[v]) if work_cpu is not None else usable
                usage[v] += busy * per_busy_s
                # Shed requests count with the CPU they would have used: the usage signal shows the
                # demand, as the local backend's does (LocalBackend.cpu_seconds).
                shed = np.minimum(a[~ok].astype(np.int64), duration - 1)
                usage[v] += np.bincount(shed, weights=s[~ok] * per_busy_s, minlength=duration)[:duration]
            finish[sel] = f
            served_by[sel[ok]] = v

    def cpu_samples(now: float) -> dict[str, list[tuple[float, float]]]:
        nonlocal last_sample
        out: dict[str, list[tuple[float, float]]] = {}
        ts = last_sample + sample_s
        while ts <= now + 1e-9:
            lo = max(0, round(ts - sample_window_s))
            hi = round(ts)
            if hi > lo:
                for n in names:
                    out.setdefault(n, []).append((ts, float(usage[vidx[n], lo:hi].mean())))
            last_sample = ts
            ts += sample_s
        return out

    def set_cores(inst: _Instance, cores: float) -> None:
        inst.cores, inst.mu = cores, rate(inst.name, cores)

    def apply(plan: Plan, now: float, immediate: bool = False, loading: Sequence[_Instance] = ()) -> None:
        """Start the plan: in-place growth at once, new instances after their load time, and (when
        make-before-break waits for them) in-place shrinks only when the new plan takes the traffic,
        since the old shares still send the old load to the instance until then."""
        nonlocal serving, pending
        still_loading = {(i.name, i.cores): i for i in loading if i.ready_at > now}
        pending = None
        old = {i.name: i for i in serving.instances}
        instances, starting, shrinks = [], [], []
        for a in plan.allocations:
            inst = old.get(a.name)
            if inst is not None and abs(inst.cores - a.cores) < 1e-9:
                instances.append(inst)
            elif inst is not None and in_place:
                if a.cores > inst.cores:
                    set_cores(inst, a.cores)
                else:
                    shrinks.append((inst, a.cores))
                instances.append(inst)
            elif (a.name, a.cores) in still_loading and not immediate:
                new = still_loading[(a.name, a.cores)]  # keeps loading: a re-plan does not restart it
                instances.append(new)
                starting.append(new)
            else:
                ready = -math.inf if immediate else now + profile.variant(a.name).load_time_s
                new = _Instance(a.name, a.cores, rate(a.name, a.cores), ready, free_at=now)
                instances.append(new)
                starting.append(new)
        conf = make_config(plan, instances)
        if starting and mbb and not immediate:
            pending = (conf, max(i.ready_at for i in starting), tuple(shrinks))
        else:
            for inst, cores in shrinks:
                set_cores(inst, cores)
            serving = conf

    def switch(ready: tuple[_Config, float, tuple[tuple[_Instance, float], ...]]) -> _Config:
        for inst, cores in ready[2]:
            set_cores(inst, cores)
        return ready[0]

    ctl = cfg.control

    def observed_rate(now: float) -> float:
        return control.windowed_rate(arr.counts, max(int(now) - cfg.observe_lag_s, 0), ctl)

    def decide(now: float, trigger: str) -> None:
        nonlocal state, forecast_now, decide_total, transitions, target, last_decision, first
        last_decision = now
        seen = max(int(now) - cfg.observe_lag_s, 0)
        lo = max(0, seen - cfg.history_s // cfg.history_stretch - 1)
        history = arr.counts[lo:seen] if seen > 0 else arr.counts[:0]
        observed = observed_rate(now)
        forecast_now = control.decision_load(trigger, fc, history, observed, ctl)
        horizon = int(now + cfg.interval_s + profile.max_load_time_s)
        future = arr.counts[int(now) : max(int(now) + 1, horizon)]
        true_peak = float(future.max()) if future.size else 0.0
        start = first and cfg.first_plan_ready
        ctx = Context(profile, now, forecast_now, current=None if start else target,
                      history_rps=control.forecast_input(history, ctl),
                      cpu_usage=cpu_samples(now) if kind.needs_cpu else {}, true_peak_rps=true_peak,
                      state=state, solver=cfg.solver, rates_before=cfg.rates_before or ())
        t0 = time.perf_counter()
        d = pol.decide(ctx)
        spent = time.perf_counter() - t0
        decide_total += spent
        state = d.state
        before = target
        change = diff(None if start else target, d.plan)
        if change.create or change.resize or change.delete:
            transitions += 1
        if not change.empty:
            loading = pending[0].instances if pending else ()
            if in_place and mbb and not start:
                now_cores = {i.name: i.cores for i in serving.instances if i.ready_at <= now}
                bridge = control.bridge_plan(profile, _plan_of(profile, now_cores), d.plan, forecast_now)
                if bridge is not None:
                    apply(bridge, now)
            apply(d.plan, now, immediate=start, loading=loading)
        target = d.plan
        first = False
        reason = f"overload re-plan; {d.reason}" if trigger == "overload" else d.reason
        records.append(DecisionRecord(
            seq=len(records) + 1, time_s=now, trigger=trigger, policy=pol.name, observed_rps=round(observed, 3),
            forecast_rps=round(forecast_now, 3), history_len=int(history.size), p99_ms=None, monitor_source="sim",
            plan_before=before.as_dict() if before is not None else None, plan_after=d.plan.as_dict(),
            serving=None, objective=d.plan.objective, solver=d.solver, solve_s=round(spent, 6), reason=reason,
            diff=change.summary(), true_peak_rps=round(true_peak, 3)))

    while True:
        if pending is not None and pending[1] <= t + 1e-12:
            serving, pending = switch(pending), None
        if t < duration and t >= cfg.warmup_s - 1e-12:
            cap = target.served_capacity_rps() if target.allocations else None
            nxt = None if first else next_decision
            due = control.trigger_due(t, nxt, last_decision, observed_rate(t) if cfg.react else 0.0, cap, ctl)
            if due is not None:
                decide(t, due)
                next_decision = t + cfg.interval_s
                if progress is not None:
                    progress(min(1.0, t / duration))
                continue  # a zero load time may make the new plan ready at once
        if t >= duration:
            break
        # Checks fall on whole multiples of check_s from the first decision, as the loop's ticks.
        after = t - cfg.warmup_s
        next_check = (cfg.warmup_s + (math.floor(after / cfg.check_s + 1e-9) + 1) * cfg.check_s
                      if cfg.react and not first else math.inf)
        candidates = [float(duration), cfg.warmup_s if first else next_decision, next_check]
        if pending is not None:
            candidates.append(pending[1])
        candidates += [i.ready_at for i in serving.instances if i.ready_at > t]
        t_next = min(candidates)
        run_segment(t, t_next)
        t = t_next
    if progress is not None:
        progress(1.0)

    ok = ~np.isnan(finish)
    latency = finish - arr.times
    late = ok & (latency > slo_s)
    dropped = ~ok
    sec = np.minimum(arr.times.astype(np.int64), duration - 1)
    viol_ts = np.bincount(sec[late | dropped], minlength=duration).astype(float)
    drop_ts = np.bincount(sec[dropped], minlength=duration).astype(float)
    served_acc = np.where(ok, accuracy[np.maximum(served_by, 0)], 0.0)
    acc_sum = np.bincount(sec, weights=served_acc, minlength=duration)
    served_n = np.bincount(sec[ok], minlength=duration)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc_ts = np.where(served_n > 0, acc_sum / np.maximum(served_n, 1), np.nan)
    lat_ms = latency[ok] * 1000.0
    usage_ts = usage.sum(axis=0)
    timeline = {
        "requests": arr.counts.copy(), "violations": viol_ts, "dropped": drop_ts, "cores": cores_ts,
        "capacity_rps": cap_ts, "accuracy": acc_ts, "forecast_rps": fc_ts, "cpu_usage_cores": usage_ts,
    }
    return SimResult(
        policy=pol.name,
        requests=int(n_req),
        violations=int((late | dropped).sum()),
        dropped=int(dropped.sum()),
        late=int(late.sum()),
        p50_ms=float(np.percentile(lat_ms, 50)) if lat_ms.size else 0.0,
        p99_ms=float(np.percentile(lat_ms, 99)) if lat_ms.size else 0.0,
        mean_cores=float(cores_ts.mean()),
        mean_planned_cores=float(planned_ts.mean()),
        mean_accuracy=float(accuracy[served_by[ok]].mean()) if ok.any() else 0.0,
        mean_cpu_usage_cores=float(usage_ts.mean()),
        transitions=transitions,
        decisions=tuple(records),
        timeline=timeline,
        forecaster=fc.name,
        duration_s=duration,
        wall_s=time.perf_counter() - started,
        decide_s=decide_total,
    )


