"""``--what-if KEY=VALUE,...`` scenarios of ``plan`` and ``simulate``: the same question under other settings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from infadapter.core.profile import Profile
from infadapter.errors import BadInput

#: What a scenario may change, and what each means.
KEYS = {
    "budget": "the core budget (cores)",
    "alpha": "the price of a core in the objective",
    "beta": "the price of a transition in the objective",
    "traffic": "a factor on the load (1.5: 50% more requests)",
    "slo": "the latency SLO in ms (capacities as the profile measured them at it: capacity_at_slo_ms)",
}
WHAT_IF_HELP = ("A scenario beside today's: KEY=VALUE[,KEY=VALUE...] with keys " + ", ".join(KEYS)
                + "; repeat the flag for several.")


@dataclass(frozen=True)
class Scenario:
    """One ``--what-if``: the changes it makes (None: unchanged)."""

    label: str
    budget: float | None = None
    alpha: float | None = None
    beta: float | None = None
    traffic: float = 1.0
    slo: float | None = None

    def profile(self, base: Profile, origin: str = "the profile") -> Profile:
        """``base`` under this scenario's SLO (the capacities measured at it; BadInput naming the field when
        ``origin``, the profile's file, has none), budget, alpha and beta."""
        at = base if self.slo is None else base.at_slo(self.slo, origin=f"--what-if: slo={self.slo:g}: {origin}")
        return at.tuned(alpha=self.alpha, budget=self.budget).with_overrides(beta=self.beta)


def parse_what_if(texts: Sequence[str]) -> list[Scenario]:
    """Parse each ``--what-if`` value; BadInput naming the flag, the key and the fix."""
    out = []
    for text in texts:
        values: dict[str, float] = {}
        for part in text.split(","):
            key, sep, raw = part.partition("=")
            key = key.strip().lower()
            if not sep or not key:
                raise BadInput(f"--what-if: expected KEY=VALUE (e.g. budget=16,traffic=1.5), got {part!r}")
            if key not in KEYS:
                raise BadInput(f"--what-if: unknown key {key!r}, expected one of {', '.join(KEYS)}")
            try:
                value = float(raw)
            except ValueError:
                raise BadInput(f"--what-if: {key} must be a number, got {raw!r}") from None
            if not math.isfinite(value) or value < 0 or (key in ("budget", "traffic", "slo") and value <= 0):
                raise BadInput(f"--what-if: {key} must be a finite number > 0, got {raw!r}")
            values[key] = value
        out.append(Scenario(label=",".join(f"{k}={v:g}" for k, v in values.items()), **values))
    return out
