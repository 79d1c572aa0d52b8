"""A bounded soak: the real dispatcher (``cli.py dispatch``) at twice its admitted capacity for 12 s.

Capacity: one backend that answers after 50 ms, at most 4 requests admitted at once (--max-in-flight),
so 80 req/s; offered 160 req/s open loop. Every request sent is accounted for exactly once (ok, shed
with 503, or another error: none here), nobody waits for a timeout, the admitted ones keep a latency
near the backend's own, and the dispatcher's memory and open files stay flat. The 60 s figure is
`python bench/dispatcher.py soak --seconds 60` (docs/reliability.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from infadapter.observe.loadgen import make_jpegs, predict_body, run_load
from infadapter.ports import free_port
from tests.test_admin_token import _wait_healthy
from tests.test_dispatcher_support import TOKEN, Cluster, http

# Starts real servers, clusters or subprocesses: not in the edit-test loop (pytest -m "not slow").
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DELAY_S, MAX_IN_FLIGHT, SECONDS = 0.05, 4, 12
CAPACITY = MAX_IN_FLIGHT / DELAY_S  # 80 req/s


def _usage(pid: int) -> tuple[int, int]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(int(x.split()[1]) for x in lines if x.startswith("VmRSS:")), len(os.listdir(f"/proc/{pid}/fd"))


def test_twice_the_capacity_is_shed_with_503_and_nothing_is_lost() -> None:
    cluster = Cluster()
    backend = cluster.backend("fake", delay_s=DELAY_S)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "dispatch", "--port", str(port), "--max-in-flight", str(MAX_IN_FLIGHT),
         "--backend", f"fake={backend.url}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "INFADAPTER_ADMIN_TOKEN": TOKEN},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    samples: list[tuple[int, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(1.0):
            usage = _usage(proc.pid)
            answer = http("GET", f"{base}/admin/stats", token=TOKEN)
            assert answer.status == 200  # cheap, answers under load
            if answer.body["requests_total"] > 0:  # under load (in CI the generator once started 5 s late)
                samples.append(usage)

    try:
        _wait_healthy(base)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        body = predict_body(make_jpegs(1, 32, seed=0)[0])
        s = run_load(f"{base}/v1/models/resnet:predict", np.full(SECONDS, 2 * CAPACITY), slo_ms=1000, seed=1,
                     timeout_s=10, payloads=[body])  # fmt: skip
        stop.set()
        watcher.join(10)
        stats = http("GET", f"{base}/admin/stats", token=TOKEN).body
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        cluster.close()
    assert proc.returncode == 0, err
    shed = s.by_status.get("503", 0)
    assert s.sent == s.ok + shed  # exactly: nothing lost, no other error, no timeout
    assert s.sent >= 0.9 * 2 * CAPACITY * SECONDS  # the generator offered (about) twice the capacity
    assert shed > 0 and s.ok > 0
    assert stats["requests_total"] == s.sent  # the dispatcher counted every one too
    assert stats["by_code"].get("503", 0) == shed
    # Admitted requests are not queued behind the shed ones: their latency stays near the backend's
    # 50 ms (a generous bound: a busy 2-core machine; the bench reports the figure).
    assert s.p50_ms is not None and s.p50_ms < 10 * DELAY_S * 1000
    # Flat under load: a third into the load against its end. Not against a sample before the load: the open
    # client connections (about 40 at this rate) are a plateau, not a leak (CI saw 21 -> 61 and 18 -> 56 fds
    # across the generator's late start). A leak of one file or 16 kB per request would add hundreds of files
    # or megabytes in the last two thirds.
    assert len(samples) >= 6, samples
    (rss0, fd0), (rss1, fd1) = samples[len(samples) // 3], samples[-1]
    assert rss1 - rss0 < 20 * 1024 and fd1 <= fd0 + 16, samples
