"""A fluid estimate of the fewest cores a trace needs: where ``simulate --min-budget`` starts looking.

On a budget ``B`` the most the servers can complete is ``M(B)`` req/s: the largest sum of service rates
``mu(v, c_v)`` (:func:`infadapter.core.service.service_rate`) over plans whose cores fit in ``B``, one
instance a variant. Requests that arrive in the whole seconds of an interval ``I`` and finish within the
SLO finish within ``|I| + SLO`` seconds, so at most ``M(B) * (|I| + SLO)`` of them; the rest are late.
Summed over disjoint intervals (the best such set, by a linear scan), that is a count of violations no
plan on ``B`` avoids when every instance runs at once and serves at full rate. A real run also forecasts,
loads variants and moves traffic, so it misses more: the estimate is a starting point, and every budget
``--min-budget`` reports is checked by simulation.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from infadapter.core.profile import Profile
from infadapter.core.service import service_rate


def max_service_rps(profile: Profile, budget_cores: float, service_cv: float = 1.0) -> float:
    """``M(B)``: the largest total service rate of a plan within ``budget_cores`` (a knapsack over the grid)."""
    return service_rps_by_steps(profile, budget_cores, service_cv)[-1]


def service_rps_by_steps(profile: Profile, budget_cores: float, service_cv: float = 1.0) -> list[float]:
    """``M(i x core_step)`` for ``i = 0 .. budget_cores / core_step``: the largest total service rate of a plan
    within that many cores (one instance a variant; a knapsack over the grid), rising with ``i``."""
    grid = profile.core_options()
    step = profile.core_step
    slots = round(budget_cores / step + 1e-9)
    best = [0.0] + [-1.0] * slots  # best[i]: the most req/s on exactly i core steps
    for v in profile.variants:
        rates = [(round(k / step), service_rate(profile, v.name, k, service_cv)) for k in grid]
        nxt = list(best)
        for used, r in enumerate(best):
            if r < 0:
                continue
            for k, mu in rates:
                if used + k <= slots and r + mu > nxt[used + k]:
                    nxt[used + k] = r + mu
        best = nxt
    return list(itertools.accumulate(best, max))


def unavoidable_violations(counts: Sequence[float], service_rps: float, slo_s: float) -> float:
    """The most of ``sum_I (arrivals in I - service_rps * (|I| + slo_s))`` over disjoint intervals of whole
    seconds (each term counted only when positive): requests no server of that total rate answers in time."""
    best = g = prefix = 0.0  # g: the best of (best up to s) - (prefix_s - service_rps * s) over starts s
    for t, a in enumerate(counts, start=1):
        prefix += float(a)
        base = prefix - service_rps * t
        best = max(best, base - service_rps * slo_s + g)
        g = max(g, best - base)
    return best


def fluid_min_budget(profile: Profile, counts: Sequence[float], target: float, low: float, high: float,
                     service_cv: float = 1.0) -> float:
    """The smallest budget on the grid ``low, low + step, ... <= high`` whose unavoidable violations stay at or
    under ``target`` (a fraction of the requests); ``high`` when none does."""
    total = float(sum(counts))
    step = profile.core_step
    n = round((high - low) / step)
    for i in range(n + 1):
        b = round(low + i * step, 9)
        bound = unavoidable_violations(counts, max_service_rps(profile, b, service_cv), profile.slo_ms / 1000.0)
        if total <= 0 or bound / total <= target:
            return b
    return high
