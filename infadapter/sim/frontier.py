"""A frontier, not a point: infadapter swept over its cost weight or budget, every baseline on the same axes.

One simulated run gives one point (mean cores, served accuracy, SLO violations). Sweeping infadapter's
``alpha`` (the price of a core) or its ``budget`` gives a curve: what accuracy each cost buys. A baseline
(each VPA, HPA, MS+, static, oracle run of ``--policy all``) is one point beside it. The question a user
asks is whether any baseline lies *above and to the left* of the curve: more accuracy at fewer cores with
no more violations. :func:`frontier` answers it for each baseline, from the points alone (pure; the runs
come from :func:`infadapter.sim.simulation.simulate`, the plot from :func:`infadapter.plots.plot_frontier`).

Above-left of the frontier, for a baseline B, means either

- B *dominates* a swept point P: ``B.cores <= P.cores``, ``B.accuracy >= P.accuracy`` and
  ``B.violations <= P.violations``, one of them strictly; or
- B lies within the swept range of cores and above the frontier there: its accuracy exceeds the frontier's
  accuracy at B's cores (linear between the neighbouring points of the frontier, the swept points that no
  other swept point beats on both cores and accuracy), and its violations are at most the frontier's there
  (linear between the same two points).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from infadapter.core.profile import Profile
from infadapter.errors import BadInput

#: What a sweep may vary, and what each means.
SWEEP_KEYS = {"alpha": "infadapter's cost weight (the price of a core in the objective)",
              "budget": "infadapter's core budget (the most cores its servers hold together)"}


@dataclass(frozen=True)
class Sweep:
    """One ``--sweep``: the setting it varies and its values, ascending."""

    key: str
    values: tuple[float, ...]

    def label(self, value: float) -> str:
        return f"infadapter {self.key}={value:g}"

    def profiles(self, base: Profile) -> list[Profile]:
        """``base`` with each value applied; BadInput naming --sweep for a budget under the minimum cores."""
        if self.key == "budget" and self.values[0] < base.min_cores:
            raise BadInput(f"--sweep: budget={self.values[0]:g} is under the profile's minimum of "
                           f"{base.min_cores:g} cores; give budgets of at least {base.min_cores:g}")
        return [base.tuned(**{self.key: v}) for v in self.values]


@dataclass(frozen=True)
class Point:
    """One simulated run on the frontier's axes."""

    label: str  # "infadapter alpha=0.05", "hpa:resnet50"
    policy: str
    mean_cores: float
    mean_accuracy: float
    slo_violation_rate: float
    requests: int = 0
    #: The swept setting's value (None: a baseline, run once at the profile's settings).
    value: float | None = None

    @classmethod
    def of(cls, result: Any, label: str | None = None, value: float | None = None) -> Point:
        """The point of a :class:`~infadapter.sim.simulation.SimResult` (or anything with its fields)."""
        return cls(label=label or result.policy, policy=result.policy, mean_cores=float(result.mean_cores),
                   mean_accuracy=float(result.mean_accuracy), slo_violation_rate=float(result.slo_violation_rate),
                   requests=int(result.requests), value=value)

    def dominates(self, other: Point) -> bool:
        """No more cores, no less accuracy, no more violations than ``other``, and better on one of them."""
        no_worse = (self.mean_cores <= other.mean_cores and self.mean_accuracy >= other.mean_accuracy
                    and self.slo_violation_rate <= other.slo_violation_rate)
        return no_worse and (self.mean_cores, self.mean_accuracy, self.slo_violation_rate) != (
            other.mean_cores, other.mean_accuracy, other.slo_violation_rate)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "policy": self.policy, "mean_cores": round(self.mean_cores, 4),
                               "mean_accuracy": round(self.mean_accuracy, 6),
                               "slo_violation_rate": round(self.slo_violation_rate, 6), "requests": self.requests}
        if self.value is not None:
            out["value"] = self.value
        return out


def envelope(points: Iterable[Point]) -> list[Point]:
    """The swept points that no other swept point beats on both cores and accuracy, by cores."""
    pts = sorted(points, key=lambda p: (p.mean_cores, -p.mean_accuracy))
    out: list[Point] = []
    for p in pts:
        if out and p.mean_accuracy <= out[-1].mean_accuracy:
            continue  # costs at least as much as the last kept point for no more accuracy
        out.append(p)
    return out


def frontier_at(front: Sequence[Point], cores: float) -> tuple[float, float] | None:
    """(accuracy, violation rate) of the frontier at ``cores``, linear between its neighbouring points;
    None outside the frontier's range of cores."""
    if not front or cores < front[0].mean_cores or cores > front[-1].mean_cores:
        return None
    for a, b in pairwise(front):
        if a.mean_cores <= cores <= b.mean_cores:
            span = b.mean_cores - a.mean_cores
            w = 0.0 if span <= 0 else (cores - a.mean_cores) / span
            return (a.mean_accuracy + w * (b.mean_accuracy - a.mean_accuracy),
                    a.slo_violation_rate + w * (b.slo_violation_rate - a.slo_violation_rate))
    return front[0].mean_accuracy, front[0].slo_violation_rate  # one point, at exactly its cores


def frontier(swept: Sequence[Point], baselines: Sequence[Point], key: str) -> dict[str, Any]:
    """The ``simulate --sweep --json`` document: every point, and for each baseline where it lies.

    Each baseline row says the frontier's accuracy and violations at its cores (None outside the swept
    range), the swept points it dominates and those that dominate it, and ``above_frontier`` (the module
    doc's rule). ``above_frontier`` at the top lists the baselines for which it holds.
    """
    front = envelope(swept)
    rows = []
    for b in baselines:
        at = frontier_at(front, b.mean_cores)
        beats = [p.label for p in swept if b.dominates(p)]
        above = bool(beats) or (at is not None and b.mean_accuracy > at[0] + 1e-9
                                and b.slo_violation_rate <= at[1] + 1e-9)
        rows.append({**b.as_dict(),
                     "frontier_accuracy": None if at is None else round(at[0], 6),
                     "frontier_violation_rate": None if at is None else round(at[1], 6),
                     "dominates": beats, "dominated_by": [p.label for p in swept if p.dominates(b)],
                     "above_frontier": above})
    return {"sweep": key, "values": [p.value for p in swept],
            "frontier": [p.as_dict() for p in swept], "envelope": [p.label for p in front],
            "baselines": rows, "above_frontier": [r["label"] for r in rows if r["above_frontier"]]}
