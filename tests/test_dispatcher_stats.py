"""/admin/stats' counters: a fixed-size per-second histogram ring (nothing grows with the request rate),
tail latency within one 5% bin of the exact percentile, violations counted, old seconds expired."""

from __future__ import annotations

import numpy as np
import pytest

from infadapter.serving.dispatcher import _BIN_GROWTH, _N_BINS, _STATS_WINDOW_S, RequestStats


def test_percentiles_are_within_one_bin_of_the_exact_ones() -> None:
    rng = np.random.default_rng(7)
    latencies = np.concatenate([rng.lognormal(np.log(20), 0.5, 20_000), rng.uniform(200, 900, 300)])
    stats = RequestStats(slo_ms=500, start_s=1000.0)
    for k, lat in enumerate(latencies):
        t = 1000.0 + 50.0 * k / len(latencies)  # all within the last minute
        stats.arrival(t)
        stats.done(t, float(lat), 200, "a")
    snap = stats.snapshot(1050.5)
    assert snap["requests_60s"] == len(latencies)
    for q, key in ((50, "latency_ms_p50_60s"), (99, "latency_ms_p99_60s")):
        exact = float(np.percentile(latencies, q))
        assert exact / _BIN_GROWTH <= snap[key] <= exact * _BIN_GROWTH, (q, exact, snap[key])
    assert snap["violations_60s"] == snap["violations_total"] == int((latencies > 500).sum())


def test_violations_are_slow_or_server_failures_not_client_errors() -> None:
    stats = RequestStats(slo_ms=100, start_s=0.0)
    for lat, code in ((10, 200), (150, 200), (10, 503), (10, 502), (10, 400), (500, 404)):
        stats.done(5.0, lat, code, "a")
    snap = stats.snapshot(6.0)
    # 150 ms (slow), 503 and 502 (failed), 500 ms 404 (slow): 4; the fast 400 is the client's fault.
    assert snap["violations_60s"] == snap["violations_total"] == 4


@pytest.mark.parametrize("rate", [10, 2000])
def test_memory_is_fixed_whatever_the_rate(rate: int) -> None:
    stats = RequestStats(slo_ms=100, start_s=0.0)
    for sec in range(300):  # five minutes
        for k in range(rate // 10):
            t = sec + k / (rate // 10)
            stats.arrival(t)
            stats.done(t, 5.0 + k % 50, 200, "a")
        if sec % 60 == 0:
            stats.snapshot(sec)
    assert len(stats._rows) == _STATS_WINDOW_S and all(len(r) == _N_BINS for r in stats._rows)
    snap = stats.snapshot(300.0)
    assert snap["requests_60s"] == 60 * (rate // 10)  # seconds 240..299
    assert sum(stats._win) == snap["requests_60s"]  # the running totals equal the live rows' sum
    assert sum(map(sum, stats._rows)) == snap["requests_60s"]


def test_rows_expire_and_late_completions_of_old_seconds_are_dropped() -> None:
    stats = RequestStats(slo_ms=100, start_s=0.0)
    stats.done(10.0, 50, 200, "a")
    stats.done(75.0, 50, 200, "a")  # same ring row as second 15? no: 75 % 60 = 15; second 10 stays
    assert stats.snapshot(76.0)["requests_60s"] == 1  # second 10 is older than 60 s
    stats.done(15.5, 50, 200, "a")  # completes "at" second 15, whose row now holds second 75: dropped
    assert stats.snapshot(76.0)["requests_60s"] == 1
    assert stats.snapshot(200.0)["requests_60s"] == 0
