"""The ideal plans of a trace: what the integer program gives when it knows every second's rate in advance.

A policy decides every interval on a forecast, holds cores while it waits to scale down, and pays for every
transition. The *ideal* policy does none of that: each second of the trace gets the solver's plan for that
second's rate (the Poisson rate the profile's capacities are measured in), with no transition cost and
nothing running before. Its mean cores and traffic-weighted accuracy are the point the same objective
reaches with perfect knowledge and free transitions: a policy's frontier lies at or below the ideal one,
apart from what a server's queue absorbs above its profiled capacity within the SLO (which the profile's
capacity, a p99 at a steady rate, does not credit).

:func:`accuracy_ceiling` asks the sharper question: the most accuracy *any* plan within the budget gives
those seconds (cost weight ~0). When a baseline's accuracy is above it, no plan on that budget as a cap
reaches the baseline at the profile's capacities; the physics, not a policy, is the reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from infadapter.core import solver
from infadapter.core.profile import Profile
from infadapter.sim.frontier import Sweep

#: The ceiling's cost weight: ~0, only enough to prefer fewer cores between plans of equal accuracy.
_TIE_ALPHA = 1e-6


@dataclass(frozen=True)
class IdealPoint:
    """The ideal plans' totals over a trace: mean cores, traffic-weighted accuracy, and the load no plan within
    the budget serves at the profile's capacities (as a share of all requests)."""

    label: str
    mean_cores: float
    mean_accuracy: float
    unserved_share: float
    value: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "mean_cores": round(self.mean_cores, 4),
                               "mean_accuracy": round(self.mean_accuracy, 6),
                               "unserved_share": round(self.unserved_share, 6)}
        if self.value is not None:
            out["value"] = self.value
        return out


def ideal_point(profile: Profile, rates: Sequence[float] | np.ndarray, label: str = "ideal",
                value: float | None = None) -> IdealPoint:
    """The ideal plans of ``rates`` (req/s, one a second) under ``profile``'s objective, without its ``beta``.

    Rates are rounded down to 0.01 req/s so that equal seconds share one solve (the point errs towards more
    accuracy, as an upper bound should)."""
    prof = profile.with_overrides(beta=0.0) if profile.beta else profile
    arr = np.asarray(rates, dtype=float)
    keys = np.floor(np.maximum(arr, 0.0) * 100.0 + 1e-9) / 100.0
    uniq, inverse = np.unique(keys, return_inverse=True)
    cores = np.empty(uniq.size)
    acc = np.empty(uniq.size)
    served = np.empty(uniq.size)
    for i, r in enumerate(uniq):
        plan = solver.solve(prof, float(r)).plan
        cores[i], acc[i] = plan.cores, plan.accuracy
        served[i] = min(float(r), plan.capacity_rps)
    mean_cores = float(cores[inverse].mean()) if arr.size else 0.0
    total = float(keys.sum())
    if not (total > 0 and math.isfinite(total)):
        return IdealPoint(label, mean_cores, 0.0, 0.0, value)
    return IdealPoint(label, mean_cores, float((acc[inverse] * keys).sum() / total),
                      float(max(0.0, 1.0 - served[inverse].sum() / total)), value)


def accuracy_ceiling(profile: Profile, rates: Sequence[float] | np.ndarray) -> IdealPoint:
    """The most traffic-weighted accuracy any plan within ``profile``'s budget gives ``rates``, second by second
    (cost weight ~0; fewer cores only between plans of equal accuracy)."""
    return ideal_point(profile.tuned(alpha=_TIE_ALPHA), rates,
                       label=f"ceiling at {profile.budget_cores:g} cores", value=profile.budget_cores)


def ideal_points(profile: Profile, rates: Sequence[float] | np.ndarray, sweep: Sweep) -> list[dict[str, Any]]:
    """The ideal point of each swept value (same objective), as a frontier document's ``ideal`` rows."""
    return [ideal_point(prof, rates, label=f"ideal {sweep.key}={v:g}", value=v).as_dict()
            for v, prof in zip(sweep.values, sweep.profiles(profile), strict=True)]


def with_ideal(doc: dict[str, Any], profile: Profile, rates: Sequence[float] | np.ndarray,
               ideal: list[dict[str, Any]]) -> dict[str, Any]:
    """A frontier document (:func:`infadapter.sim.frontier.frontier`) with the ideal plans beside it.

    Adds ``ideal`` (:func:`ideal_points` of the sweep) and, on each baseline row, ``ceiling_accuracy``: the most
    accuracy any plan capped at that baseline's mean cores gives the same seconds (None under the profile's
    minimum cores), and ``over_ceiling``: its accuracy is above that ceiling, so no policy given its mean cores
    as a budget matches it at the profile's capacities."""
    rows = []
    by_top: dict[float, IdealPoint] = {}  # caps that allow the same largest allocation have the same ceiling
    for b in doc["baselines"]:
        cap = float(b["mean_cores"])
        ceiling = None
        if cap >= profile.min_cores:
            capped = profile.tuned(budget=cap)
            top = capped.core_options()[-1]
            if top not in by_top:
                by_top[top] = accuracy_ceiling(capped, rates)
            ceiling = by_top[top]
        rows.append({**b, "ceiling_accuracy": None if ceiling is None else round(ceiling.mean_accuracy, 6),
                     "over_ceiling": ceiling is not None and b["mean_accuracy"] > ceiling.mean_accuracy + 1e-9})
    return {**doc, "baselines": rows, "ideal": ideal}
