"""The simulator on tiny synthetic traces whose answers are known by hand."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from infadapter.plan import Allocation, Plan
from infadapter.policies import Context, Decision
from infadapter.profile import profile_from_dict
from infadapter.sim import SimConfig, fifo, make_arrivals, service_rate, simulate, swrr_sequence

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
    last = res.decisions[-1].plan
    assert last.cores_by_name() == {"fast": 1.0}
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
    fast = simulate(PROFILE, rates, "infadapter", SimConfig(**{**base.__dict__, "react": True}))
    assert fast.violations < 0.7 * slow.violations
    assert any(r.reason.startswith("overload re-plan") for r in fast.decisions)
    assert not any(r.reason.startswith("overload re-plan") for r in slow.decisions)
