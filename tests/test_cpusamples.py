"""The CPU sampling rule that VPA and HPA see, live and simulated (infadapter.core.cpusamples)."""

import numpy as np
import pytest

from infadapter.core.cpusamples import CpuReadings, CpuSampler


def test_one_sample_per_period_each_the_mean_of_its_window():
    usage = np.zeros(200)
    usage[50:60] = 1.5  # a 10-s burst inside the first sample's 15-s window
    usage[100:110] = 1.5  # one that no window covers (windows: 45-60, 105-120, 165-180)
    cum = np.concatenate([[0.0], np.cumsum(usage)])
    sampler = CpuSampler(60.0, 15.0)
    got = sampler.take(199.0, ["a"], lambda n, t: float(cum[round(t)]))
    assert [t for t, _ in got["a"]] == [60.0, 120.0, 180.0]
    assert [c for _, c in got["a"]] == pytest.approx([1.0, 0.5, 0.0])
    assert sampler.take(199.5, ["a"], lambda n, t: 0.0) == {}  # nothing new before 240 s


def test_window_before_the_start_begins_at_the_start():
    sampler = CpuSampler(10.0, 15.0, start_s=100.0)
    got = sampler.take(110.0, ["a"], lambda n, t: 0.5 * (t - 100.0))
    assert got == {"a": [(110.0, pytest.approx(0.5))]}


def test_bad_period_is_refused():
    with pytest.raises(ValueError, match="period and window"):
        CpuSampler(0.0, 15.0)


def test_readings_interpolate_and_restart_with_a_new_server():
    r = CpuReadings(keep_s=100.0)
    r.add(0.0, {"a": 0.0})
    r.add(2.0, {"a": 1.0})
    assert r.at("a", 1.0) == pytest.approx(0.5)
    assert r.at("a", 3.0) is None and r.at("b", 1.0) is None
    r.add(3.0, {"a": 0.2})  # the counter went down: a new server, its history starts now
    assert r.at("a", 1.0) is None and r.at("a", 3.0) == pytest.approx(0.2)


def test_live_readings_give_the_samples_the_simulator_gives():
    """The loop reads cumulative counters every check; the simulator sums per-second usage: same samples."""
    rng = np.random.default_rng(0)
    usage = rng.uniform(0.0, 1.75, 400)
    cum = np.concatenate([[0.0], np.cumsum(usage)])
    sim = CpuSampler(60.0, 15.0).take(400.0, ["a"], lambda n, t: float(cum[round(t)]))
    readings, live, out = CpuReadings(keep_s=85.0), CpuSampler(60.0, 15.0), {}
    for t in range(401):
        readings.add(float(t), {"a": float(cum[t])})
        for n, s in live.take(float(t), readings.names(), readings.at).items():
            out.setdefault(n, []).extend(s)
    assert len(sim["a"]) == 6
    assert out["a"] == pytest.approx(sim["a"])


def test_a_compressed_replay_samples_once_per_trace_minute():
    sampler = CpuSampler.upstream(60.0, 15.0, stretch=10)
    assert (sampler.period_s, sampler.window_s) == (6.0, 1.5)
    assert [t for t, _ in sampler.take(18.0, ["a"], lambda n, t: t)["a"]] == [6.0, 12.0, 18.0]
