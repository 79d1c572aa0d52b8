"""Queue kernels of the simulator: FIFO servers (plain and under a CFS CPU quota), smooth weighted round
robin, and per-second accounting. Pure numpy functions on arrays of times; no policy, no plan."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


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


def add_interval(arr: np.ndarray, t0: float, t1: float, value: float) -> None:
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


def add_per_second(arr: np.ndarray, seconds: np.ndarray, weights: np.ndarray) -> None:
    """Add each of ``weights`` into ``arr`` at its second (integers in ``[0, arr.size)``), touching only the
    bins between the first and the last of them (see :func:`add_busy` for why); the same sums as a
    whole-window ``np.bincount``."""
    if seconds.size == 0:
        return
    s0 = int(seconds.min())
    counts = np.bincount(seconds - s0, weights=weights)
    arr[s0 : s0 + counts.size] += counts


def busy_per_second(start: np.ndarray, finish: np.ndarray, size: int) -> np.ndarray:
    """Seconds of busy time in each second bin, from non-overlapping busy intervals [start, finish)."""
    out = np.zeros(size)
    add_busy(out, start, finish)
    return out


def add_busy(arr: np.ndarray, start: np.ndarray, finish: np.ndarray, scale: float = 1.0) -> None:
    """Add ``scale`` x the busy seconds of the non-overlapping intervals [start, finish) into the per-second
    array ``arr`` (seconds past its end are dropped).

    Only the bins the intervals cover are touched: the simulator calls this every served stretch, and a
    whole-window array per call made a day's replay quadratic in its length. Each bin gets the same sums
    in the same order as a whole-window count would, so the values are identical to the last bit.
    """
    size = arr.size
    if start.size == 0:
        return
    s0 = min(math.floor(float(start.min())), size)
    s1 = min(math.floor(float(finish.max())) + 1, size)
    if s0 >= s1:
        return
    out = np.zeros(s1 - s0 + 1)
    lo = start
    while lo.size:
        sec = np.floor(lo).astype(np.int64)
        hi = np.minimum(finish, sec + 1.0)
        keep = sec < size
        out += np.bincount(sec[keep] - s0, weights=(hi - lo)[keep], minlength=out.size)[: out.size]
        more = finish > sec + 1.0
        lo, finish = (sec + 1.0)[more], finish[more]
    arr[s0:s1] += out[: s1 - s0] * scale
