"""The service model of a variant on some cores: the rate that reproduces its profiled capacity at the
SLO (M/M/1 closed form, or M/G/1 with gamma service times by simulation), and the CPU one request needs.
docs/simulator.md derives it."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from infadapter.core import slo
from infadapter.core.profile import Profile
from infadapter.core.queues import fifo

#: The SLO percentile's factor for an exponential sojourn time (ln 100 for p99): infadapter.core.slo's.
LN100 = slo.EXP_QUANTILE_FACTOR


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
        g[i] = rho * float(np.percentile(finish - arrivals, slo.PERCENTILE))
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
