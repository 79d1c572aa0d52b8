"""The SLO rule, in one place: what a violation is and at which percentile the SLO is judged.

Everything that judges requests against the latency SLO asks this module: the profile and the profiler
(a variant's capacity is the highest rate whose :data:`PERCENTILE`-th percentile latency stays within the
SLO), the simulator's service model and its counts, the load generator's summary, the plots, the
dispatcher's violation counter and its quantile, the monitor's PromQL, and the Prometheus rules
(:func:`infadapter.observe.alerts.render_rules` renders ``templates/prometheus/slo-rules.yml.j2`` with
:data:`OBJECTIVE`).

- **A violation** is a request that was answered late (latency strictly above the SLO), that failed on the
  serving side (a 5xx answer, a timeout, a broken connection) or that was dropped (shed by a full queue,
  refused, never answered). A client's own 4xx is the client's fault, not the service's.
- **The percentile**: the SLO holds at the 99th percentile, so a run meets it when at most
  ``1 - OBJECTIVE`` (1 %) of its requests violate it; the alerts' error budget is that share.

Changing the percentile is one edit here (and the tests that pin figures derived from it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: The percentile of latency at which the SLO is judged (p99).
PERCENTILE = 99.0
#: The same as a quantile (0.99): PromQL's ``histogram_quantile`` and the dispatcher's window quantile.
QUANTILE = PERCENTILE / 100.0
#: The share of requests that must be good: the error budget is ``1 - OBJECTIVE``.
OBJECTIVE = QUANTILE
#: ``-ln(1 - QUANTILE)``: an exponential sojourn time of rate r has its QUANTILE at this / r (ln 100 for p99).
EXP_QUANTILE_FACTOR = math.log(100.0 / (100.0 - PERCENTILE))


def late(latency: Any, slo: float) -> Any:
    """Answered after the SLO (strictly above it); ``latency`` and ``slo`` in the same unit (scalars or arrays)."""
    return latency > slo


def server_failed(status_code: int) -> bool:
    """An answer that counts as failed: a server-side error (5xx); a 4xx is the client's own fault."""
    return status_code >= 500


def violated(ok: Any, latency: Any, slo: float) -> Any:
    """A violation: not answered well (``ok`` false: failed, timed out, dropped) or late. Scalars or arrays."""
    if isinstance(ok, np.ndarray) or isinstance(latency, np.ndarray):
        return ~np.asarray(ok, dtype=bool) | (np.asarray(ok, dtype=bool) & late(np.asarray(latency), slo))
    return (not ok) or bool(late(latency, slo))


def judged_ms(latencies_ms: Sequence[float] | np.ndarray, method: str = "linear") -> float | None:
    """The latency the SLO judges: the :data:`PERCENTILE`-th percentile (None without latencies)."""
    arr = np.asarray(latencies_ms, dtype=float)
    return float(np.percentile(arr, PERCENTILE, method=method)) if arr.size else None  # type: ignore[call-overload]


def met(judged_latency_ms: float, slo_ms: float) -> bool:
    """The SLO holds when the judged percentile latency is within it."""
    return judged_latency_ms <= slo_ms
