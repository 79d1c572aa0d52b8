"""CPU usage samples for VPA and HPA: the one rule the live loop and the simulator both follow.

Upstream, metrics-server reports a container's CPU as the mean over a short window (15 s) and VPA's
recommender reads it once a minute; HPA's controller reads it every 15 s. A policy's registry entry
(:class:`infadapter.core.policies.PolicyEntry`) says its period and window. :class:`CpuSampler` takes a
sample every ``period_s`` from the start, each the mean CPU (cores) over the ``window_s`` before it,
computed from cumulative CPU seconds. The live loop reads those counters from its backend every check
(:class:`CpuReadings` keeps them); the simulator adds up its per-second usage. A sampler that took
one sample every check would weigh a burst 60 times more than upstream's VPA does against its day
of history. A replay compressed K times (``--speedup K``) samples K times as often, so that a sample
still stands for a trace minute.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping

#: Cumulative CPU seconds of a variant at a time (None: unknown then, e.g. before its server started).
Cumulative = Callable[[str, float], "float | None"]


class CpuSampler:
    """Samples one every ``period_s`` after ``start_s``, each the mean over the preceding ``window_s``."""

    def __init__(self, period_s: float, window_s: float, start_s: float = 0.0) -> None:
        if not period_s > 0 or not window_s > 0:
            raise ValueError("CPU sample period and window must be > 0 seconds")
        self.period_s = period_s
        self.window_s = window_s
        self.start_s = start_s
        self.last_s = start_s

    @classmethod
    def upstream(cls, period_s: float, window_s: float, stretch: int = 1, start_s: float = 0.0) -> CpuSampler:
        """Upstream's cadence in a replay compressed ``stretch`` times: a sample per trace minute stays one."""
        return cls(period_s / stretch, window_s / stretch, start_s)

    def take(self, now_s: float, names: Iterable[str], cumulative: Cumulative) -> dict[str, list[tuple[float, float]]]:
        """Samples due since the last call, as ``{variant: [(time, cores), ...]}``.

        A window that would begin before the start begins at the start (the first samples are means over
        what there is); a variant whose counter is unknown at either end of a window has no sample then.
        """
        names = list(names)
        out: dict[str, list[tuple[float, float]]] = {}
        ts = self.last_s + self.period_s
        while ts <= now_s + 1e-9:
            lo = max(self.start_s, ts - self.window_s)
            if ts > lo:
                for n in names:
                    a, b = cumulative(n, lo), cumulative(n, ts)
                    if a is not None and b is not None and b >= a:
                        out.setdefault(n, []).append((ts, (b - a) / (ts - lo)))
            self.last_s = ts
            ts += self.period_s
        return out


class CpuReadings:
    """A live backend's cumulative CPU seconds per variant, read every check; the value at any time between."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self._readings: dict[str, deque[tuple[float, float]]] = {}

    def add(self, now_s: float, used: Mapping[str, float]) -> None:
        """Record one reading per variant; a counter that went down (a new server) starts afresh."""
        for name, secs in used.items():
            q = self._readings.setdefault(name, deque())
            if q and now_s <= q[-1][0]:
                continue
            if q and secs < q[-1][1]:
                q.clear()
            q.append((now_s, secs))
            while len(q) > 2 and now_s - q[1][0] >= self.keep_s:
                q.popleft()

    def names(self) -> list[str]:
        return list(self._readings)

    def at(self, name: str, t: float) -> float | None:
        """Cumulative CPU seconds at ``t``, linear between the readings around it; None outside them."""
        q = self._readings.get(name)
        if not q or t < q[0][0] - 1e-9 or t > q[-1][0] + 1e-9:
            return None
        prev = q[0]
        for cur in q:
            if cur[0] >= t:
                if cur[0] - prev[0] <= 0:
                    return cur[1]
                return prev[1] + (cur[1] - prev[1]) * (t - prev[0]) / (cur[0] - prev[0])
            prev = cur
        return q[-1][1]
