"""The simulator on tiny synthetic traces whose answers are known by hand."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pytest

from infadapter.core.plan import Allocation, Plan
from infadapter.core.policies import Context, Decision
from infadapter.core.profile import profile_from_dict
from infadapter.sim.simulation import PAPER_SETTING, fifo, make_arrivals, service_rate, simulate, swrr_sequence
from infadapter.sim.simulation import SimConfig as _SimConfig


def SimConfig(**kw: object) -> _SimConfig:
    """The queueing model's tests run in the paper's setting unless they name a field."""
    return _SimConfig.of(**{**PAPER_SETTING, **kw})

# Two variants; capacity(fast, c) = 20 c req/s, capacity(slow, c) = 10 c req/s; SLO 500 ms.
PROFILE = profile_from_dict({
    "name": "tiny", "slo_ms": 500, "budget_cores": 8, "core_step": 1, "min_cores": 1,
    "variants": [
        {"name": "fast", "accuracy": 0.70, "load_time_s": 5,
         "capacity": {"kind": "linear", "slope": 20, "intercept": 0}},
        {"name": "slow", "accuracy": 0.80, "load_time_s": 5,
         "capacity": {"kind": "linear", "slope": 10, "intercept": 0}},
    ],
})


def test_service_rate_puts_p99_at_the_slo() -> None:
    # M/M/1 sojourn ~ Exp(mu - lambda): p99 = ln(100) / (mu - lambda) = SLO when lambda = capacity.
    mu = service_rate(PROFILE, "fast", 2)
    assert mu == pytest.approx(40 + math.log(100) / 0.5)


def test_measured_p99_at_capacity_matches_the_slo() -> None:
    # A static plan at exactly its capacity (fast on 2 cores = 40 req/s) for 20 minutes.
    res = simulate(PROFILE, np.full(1200, 40.0), "static:fast=2", SimConfig(warmup_s=1e9, seed=3))
    assert res.p99_ms == pytest.approx(500, rel=0.12)
    assert res.slo_violation_rate == pytest.approx(0.01, abs=0.004)


def test_enough_capacity_has_no_violations() -> None:
    # 20 req/s on 40 req/s of capacity: P(sojourn > 0.5 s) = exp(-(49.2 - 20) * 0.5) ~ 5e-7.
    res = simulate(PROFILE, np.full(300, 20.0), "static:fast=2", SimConfig(warmup_s=1e9))
    assert res.requests > 5000
    assert res.violations == 0 and res.dropped == 0
    assert res.mean_cores == pytest.approx(2.0)
    assert res.mean_accuracy == pytest.approx(0.70)


def test_half_the_needed_capacity_violates() -> None:
    # 80 req/s on mu = 49.2: the queue overflows; about 1 - mu/lambda ~ 38% are dropped, and the
    # served ones wait ~ the 1 s timeout, far past the SLO: nearly everything violates.
    res = simulate(PROFILE, np.full(300, 80.0), "static:fast=2", SimConfig(warmup_s=1e9))
    assert res.dropped / res.requests == pytest.approx(1 - 49.2 / 80, abs=0.05)
    assert res.slo_violation_rate > 0.9


def test_swrr_splits_by_share() -> None:
    seq = swrr_sequence((700, 300))
    assert seq.size == 1000 and (seq == 0).sum() == 700
    # smooth: never more than 3 picks of the small weight's opposite in a row
    assert max(len(run) for run in "".join(map(str, seq)).split("1")) <= 3
    res = simulate(PROFILE, np.full(200, 30.0), "static:fast=2,slow=2", SimConfig(warmup_s=1e9))
    # Shares follow capacity (40 : 20), so accuracy = (2 * 0.70 + 0.80) / 3.
    assert res.mean_accuracy == pytest.approx((2 * 0.70 + 0.80) / 3, abs=0.005)


def test_fifo_vectorized_equals_the_loop() -> None:
    rng = np.random.default_rng(1)
    a = np.sort(rng.random(3000) * 30)
    s = rng.exponential(1 / 95, size=a.size)  # rho ~ 1.05: drops and idle periods both occur
    got, free = fifo(a, s, 0.0, 0.3)
    ref, t_free = [], 0.0
    for ai, si in zip(a, s, strict=True):
        if t_free - ai > 0.3:
            ref.append(np.nan)
            continue
        t_free = max(t_free, ai) + si
        ref.append(t_free)
    np.testing.assert_allclose(got, ref, equal_nan=True)
    assert np.isnan(got).any() and free == pytest.approx(t_free)


@dataclass(frozen=True)
class SwitchAt:
    """A test policy: the slow variant until ``at_s``, then the fast one (a forced transition)."""

    at_s: float
    name: str = "switch"

    def decide(self, ctx: Context) -> Decision:
        v = "fast" if ctx.now_s >= self.at_s else "slow"
        cap = PROFILE.capacity_rps(v, 4)
        return Decision(Plan((Allocation(v, 4, 1.0, cap),), ctx.forecast_rps))


@pytest.mark.parametrize("mbb", [True, False])
def test_transition_gap_shows_only_without_make_before_break(mbb: bool) -> None:
    # 20 req/s; the switch at t=60 starts `fast` (load time 5 s). Make-before-break keeps `slow`
    # serving: no violations. Break-before-make sends traffic to the loading instance: ~5 s x 20 req/s fail.
    cfg = SimConfig(warmup_s=30, interval_s=30, make_before_break=mbb, initial={"slow": 4})
    res = simulate(PROFILE, np.full(120, 20.0), SwitchAt(60), cfg)
    if mbb:
        assert res.violations == 0
        assert res.mean_cores > 4  # both instances were allocated while `fast` loaded
    else:
        assert res.dropped == pytest.approx(100, abs=35)
    assert res.transitions == 1


def test_in_place_resize_has_no_load_time() -> None:
    # Start too small (1 core, 10 req/s of slow) for 30 req/s: infadapter resizes at t=10.
    # In place the new cores serve at once; with make-before-break they serve 5 s later.
    rates = np.full(60, 30.0)
    base = dict(warmup_s=10, interval_s=30, initial={"slow": 1}, forecaster="last", stabilization_intervals=1)
    slow = simulate(PROFILE, rates, "infadapter", SimConfig(**base))
    fast = simulate(PROFILE, rates, "infadapter", SimConfig(**base, in_place_resize=True))
    assert fast.violations < slow.violations


def test_vpa_scales_down_on_low_usage_and_records_decisions() -> None:
    # 10 req/s on fast x8 (mu ~ 169): usage ~ 8 * 10 / 169 ~ 0.5 cores, so VPA goes to its 1-core floor
    # after the 4-interval stabilization.
    cfg = SimConfig(warmup_s=120, vpa_sample_s=30)
    res = simulate(PROFILE, np.full(600, 10.0), "vpa:fast", cfg)
    last = res.decisions[-1].plan_after
    assert [(a["name"], a["cores"]) for a in last["variants"]] == [("fast", 1.0)]
    assert res.violations == 0
    assert res.as_dict()["decisions"] == len(res.decisions) == 16


def test_same_seed_same_arrivals() -> None:
    a, b = make_arrivals(np.full(50, 7.0), seed=5), make_arrivals(np.full(50, 7.0), seed=5)
    np.testing.assert_array_equal(a.times, b.times)
    assert a.counts.sum() == a.times.size


def test_oracle_sees_the_burst_and_the_forecaster_does_not() -> None:
    rates = np.r_[np.full(300, 10.0), np.full(300, 60.0)]
    cfg = SimConfig(warmup_s=60, forecaster="ewma")
    oracle = simulate(PROFILE, rates, "oracle", cfg)
    online = simulate(PROFILE, rates, "infadapter", cfg)
    assert oracle.violations < online.violations
    assert np.isnan(oracle.timeline["accuracy"]).sum() == 0
    assert oracle.as_dict(timeline=True)["timeline"]["requests"][0] >= 0


def test_reactive_replanning_catches_a_step_between_decisions() -> None:
    # 10 req/s for 130 s, then 60 req/s. Decisions at 120 s and 150 s (interval 30 s). The step at
    # 130 s overloads the 10 req/s plan; with --react a decision at ~131 s starts more capacity,
    # ready 5 s later (load time), so ~14 s of overload shrink to ~6 s.
    rates = np.concatenate([np.full(130, 10.0), np.full(70, 60.0)])
    base = SimConfig(forecaster="last", stabilization_intervals=1, seed=1)
    slow = simulate(PROFILE, rates, "infadapter", base)
    fast = simulate(PROFILE, rates, "infadapter", replace(base, control=replace(base.control, react=True)))
    assert fast.violations < 0.7 * slow.violations
    assert any(r.reason.startswith("overload re-plan") for r in fast.decisions)
    assert not any(r.reason.startswith("overload re-plan") for r in slow.decisions)


# -- the live-fidelity options (docs/adapt.md, "Simulator fidelity") -------------------------------
def test_gamma_service_curve_reproduces_the_mm1_closed_form() -> None:
    # The numeric M/G/1 curve at CV 1 is M/M/1: rho = x / (x + ln 100) with x = capacity x SLO.
    from infadapter.core.service import _p99_sojourn_curve

    rhos, g = _p99_sojourn_curve(1.0)
    for x in (0.5, 2.0, 8.0, 30.0):
        assert float(np.interp(x, g, rhos)) == pytest.approx(x / (x + math.log(100)), rel=0.03)


@pytest.mark.parametrize("cv", [0.3, 0.5])
def test_gamma_service_puts_p99_at_the_slo_and_needs_a_slower_server(cv: float) -> None:
    # Less variable service meets the same p99 with a smaller rate, so it saturates sooner under overload.
    mu = service_rate(PROFILE, "fast", 2, cv)
    assert 40 < mu < service_rate(PROFILE, "fast", 2)
    res = simulate(PROFILE, np.full(1200, 40.0), "static:fast=2", SimConfig(warmup_s=1e9, seed=3, service_cv=cv))
    assert res.p99_ms == pytest.approx(500, rel=0.12)
    assert res.slo_violation_rate == pytest.approx(0.01, abs=0.005)


def test_work_cpu_model_charges_a_fixed_cpu_time_per_request() -> None:
    from infadapter.sim.simulation import cpu_per_request

    # One thread's worth of work: 20 req/s on 1 core, only 30 on 4 (the extra cores mostly idle).
    prof = profile_from_dict({
        "slo_ms": 500, "budget_cores": 4, "core_step": 1, "min_cores": 1,
        "variants": [{"name": "one", "accuracy": 0.7, "load_time_s": 1,
                      "capacity": {"kind": "points", "points": {1: 20, 4: 30}}}],
    })
    assert cpu_per_request(prof, "one") == pytest.approx(0.05)
    cfg = dict(warmup_s=1e9, seed=2)
    busy = simulate(prof, np.full(300, 10.0), "static:one=4", SimConfig(**cfg))
    work = simulate(prof, np.full(300, 10.0), "static:one=4", SimConfig(**cfg, cpu_model="work"))
    # busy: 4 cores x 10 / mu(4) = 4 x 10 / 39.2 ~ 1.0 core; work: 10 req/s x 0.05 = 0.5 core.
    assert busy.mean_cpu_usage_cores == pytest.approx(4 * 10 / service_rate(prof, "one", 4), rel=0.1)
    assert work.mean_cpu_usage_cores == pytest.approx(0.5, rel=0.1)


@dataclass
class Recorder:
    """A test policy: records what it is shown and always plans ``fast`` on ``cores``."""

    cores: float = 2
    name: str = "recorder"
    seen: list = None  # type: ignore[assignment]

    def decide(self, ctx: Context) -> Decision:
        if self.seen is None:
            self.seen = []
        self.seen.append((ctx.now_s, ctx.forecast_rps, ctx.current, np.asarray(ctx.history_rps).copy()))
        return Decision(Plan((Allocation("fast", self.cores, 1.0, PROFILE.capacity_rps("fast", self.cores)),),
                             ctx.forecast_rps))


def test_first_plan_ready_serves_from_the_start_and_is_decided_from_nothing() -> None:
    rec = Recorder()
    cfg = SimConfig(warmup_s=0, interval_s=10, forecaster="last", first_plan_ready=True, initial_forecast_rps=25)
    res = simulate(PROFILE, np.full(30, 20.0), rec, cfg)
    t0, forecast, current, _ = rec.seen[0]
    assert t0 == 0 and forecast == 25 and current is None
    # fast on 2 cores serves 20 req/s from t=0 (no load time, no initial R-whatever plan first).
    assert res.dropped == 0 and res.mean_cores == pytest.approx(2.0)
    assert res.transitions == 1  # the first plan counts, as the live loop counts it
    plain = simulate(PROFILE, np.full(30, 20.0), Recorder(), SimConfig(warmup_s=0, interval_s=10, forecaster="last"))
    assert plain.mean_cores > 2.0  # the paper's initial state (whole budget) serves while fast loads


def test_history_stretch_and_observe_lag_shape_what_the_forecaster_sees() -> None:
    rates = np.arange(40, dtype=float)  # counts are Poisson around these: only lengths are exact
    rec = Recorder()
    cfg = SimConfig(warmup_s=20, interval_s=100, forecaster="last", history_stretch=5, observe_lag_s=2)
    arr = make_arrivals(rates, seed=0)
    simulate(PROFILE, rates, rec, cfg, arrivals=arr)
    _, _, _, hist = rec.seen[0]
    # 18 observed seconds (lag 2 at t=20), each repeated 5 times.
    assert hist.size == 18 * 5
    np.testing.assert_array_equal(hist[-5:], np.full(5, arr.counts[17]))


def test_observe_lag_delays_the_overload_replan() -> None:
    rates = np.concatenate([np.full(60, 10.0), np.full(40, 60.0)])
    base = dict(warmup_s=0, interval_s=100, forecaster="last", react=True, stabilization_intervals=1,
                initial={"fast": 1}, seed=4, in_place_resize=True, replan_gap_s=1)
    now = simulate(PROFILE, rates, "infadapter", SimConfig(**base))
    late = simulate(PROFILE, rates, "infadapter", SimConfig(**base, observe_lag_s=3))

    def first_replan(res) -> float:
        return min(r.time_s for r in res.decisions if r.trigger == "overload")

    assert first_replan(late) - first_replan(now) == pytest.approx(3, abs=1)
    assert late.violations > now.violations


def test_arrivals_from_times_replays_a_schedule() -> None:
    from infadapter.sim.simulation import arrivals_from_times

    times = np.array([0.1, 0.5, 1.2, 3.9, 3.95, 7.0])
    arr = arrivals_from_times(times, 5, seed=1)
    np.testing.assert_array_equal(arr.counts, [2, 1, 0, 2, 0])  # 7.0 is past the 5 s window
    assert arr.times.size == arr.work.size == 5
    with pytest.raises(Exception, match="arrivals"):
        arrivals_from_times(times, 0)


def test_cfs_server_runs_at_full_speed_until_its_quota_is_spent() -> None:
    from infadapter.sim.simulation import fifo_cfs

    # 28 ms of CPU per request, 0.25 core = 25 ms per 100 ms period, one thread.
    a = np.array([0.0, 0.001, 0.5])
    f, free = fifo_cfs(a, np.full(3, 0.028), 0.0, 10.0, 0.25, 1, 0.1, [-1, 0.0])
    # 25 ms, throttled to 0.1, 3 ms more; the second starts at 0.103 with 22 ms left in that period
    # (to 0.125), throttled to 0.2, 6 ms more; the third arrives to a fresh period.
    np.testing.assert_allclose(f, [0.103, 0.206, 0.603])
    assert free == pytest.approx(0.603)
    # On a whole core nothing throttles: back-to-back 28 ms services.
    f, _ = fifo_cfs(a, np.full(3, 0.028), 0.0, 10.0, 1.0, 1, 0.1, [-1, 0.0])
    np.testing.assert_allclose(f, [0.028, 0.056, 0.528])
    # A wait longer than the timeout is dropped on arrival, as in fifo().
    f, _ = fifo_cfs(np.zeros(3), np.full(3, 0.028), 0.0, 0.05, 0.25, 1, 0.1, [-1, 0.0])
    assert not np.isnan(f[0]) and np.isnan(f[1:]).all()  # both would wait 103 ms for the first


def test_cfs_model_is_calibrated_to_the_profile_at_whole_cores() -> None:
    from infadapter.sim.simulation import cpu_per_request, load_at_slo

    # fast: 20 req/s per core; at 1 core the calibrated CPU time puts p99 at the SLO at 20 req/s.
    w = cpu_per_request(PROFILE, "fast", 0.3)
    assert w == pytest.approx(load_at_slo(20 * 0.5, 0.3) / 20)
    assert w < cpu_per_request(PROFILE, "fast") == pytest.approx(0.05)
    cfg = SimConfig(warmup_s=1e9, seed=5, service_model="cfs", service_cv=0.3)
    res = simulate(PROFILE, np.full(1200, 20.0), "static:fast=1", cfg)
    assert res.p99_ms == pytest.approx(500, rel=0.15)
    # Under overload a quota-bound server serves at most cores / w, unlike the M/M/1 model's mu.
    over = simulate(PROFILE, np.full(300, 40.0), "static:fast=1", cfg)
    served = over.requests - over.dropped
    assert served / 300 == pytest.approx(1 / w, rel=0.1)


def test_busy_accounting_on_the_covered_seconds_equals_a_whole_window_count() -> None:
    # The simulator adds each served stretch's busy time and shed CPU into the per-second usage touching only
    # the seconds the stretch covers (a whole-window array per stretch made a day's replay quadratic). The
    # sums must be those of the whole-window bincount, to the last bit, stretch after stretch.
    from infadapter.core.queues import add_busy, add_per_second

    rng = np.random.default_rng(5)
    size = 50
    ours, whole = np.zeros(size), np.zeros(size)
    free = 0.0
    for _ in range(40):  # back-to-back busy intervals, some spanning several seconds, some past the end
        start = free + rng.exponential(0.3, 30).cumsum()
        finish = start + rng.exponential(0.2, 30)
        start[1:] = np.maximum(start[1:], finish[:-1])
        finish = np.maximum(finish, start)
        free = float(finish[-1]) if finish[-1] < size + 2 else 0.0
        add_busy(ours, start, finish, 1.5)
        ref, lo, fin = np.zeros(size + 1), start, finish
        while lo.size:  # the whole-window count, as before
            sec = np.floor(lo).astype(np.int64)
            keep = sec < size
            ref += np.bincount(sec[keep], weights=(np.minimum(fin, sec + 1.0) - lo)[keep], minlength=size + 1)
            more = fin > sec + 1.0
            lo, fin = (sec + 1.0)[more], fin[more]
        whole += ref[:size] * 1.5
        at = rng.integers(0, size, 7)
        w = rng.random(7)
        add_per_second(ours, at, w)
        whole += np.bincount(at, weights=w, minlength=size)
    assert ours.sum() > 0 and np.array_equal(ours, whole)


def test_the_simulators_memo_keeps_no_solved_model() -> None:
    # A solve keeps its HiGHS model for explain's runner-up (Decision.other_set); the simulator records no
    # explanation, so its memo of decisions must not keep thousands of models alive (a day: about 1 GB).
    from infadapter.core.policies import InfAdapter
    from infadapter.sim.simulation import Simulation, _Memo

    rates = np.concatenate([np.full(60, 30.0), np.full(60, 90.0)])
    run = Simulation(PROFILE, rates, "infadapter", _SimConfig.of(forecaster="ewma", interval_s=5.0))
    run.run()
    memo = getattr(run.policy, "inner", run.policy)
    assert isinstance(memo, _Memo) and len(memo.cache) > 5
    assert all(d.other_set is None for d in memo.cache.values())
    ctx = Context(profile=PROFILE, now_s=0.0, forecast_rps=50.0)
    assert InfAdapter().decide(ctx).other_set is not None  # what the memo drops is there to drop
