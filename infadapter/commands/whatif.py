"""``--what-if KEY=VALUE,...`` scenarios of ``plan`` and ``simulate``: the same question under other settings."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from infadapter.core.profile import Profile
from infadapter.errors import BadInput

#: What a scenario may change, and what each means.
KEYS = {
    "budget": "the core budget (cores)",
    "alpha": "the price of a core in the objective",
    "beta": "the price of a transition in the objective",
    "traffic": "a factor on the load (1.5: 50% more requests)",
    "slo": "the latency SLO in ms (capacities as the profile measured them at it: capacity_at_slo_ms)",
    "traffic.NAME": "with services: a factor on service NAME's load only (on top of traffic)",
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
    #: ``traffic.NAME``: a factor on one service's load, on top of ``traffic``.
    service_traffic: tuple[tuple[str, float], ...] = ()

    def profile(self, base: Profile, origin: str = "the profile") -> Profile:
        """``base`` under this scenario's SLO (the capacities measured at it; BadInput naming the field when
        ``origin``, the profile's file, has none), budget, alpha and beta; BadInput when the scenario names
        what ``base`` does not have (a service, or one SLO for a profile whose services each have their own)."""
        names = base.service_names
        for name, _ in self.service_traffic:
            if not names:
                raise BadInput(f"--what-if: traffic.{name}: a factor per service needs a profile with services; "
                               "give traffic=F")
            if name not in names:
                raise BadInput(f"--what-if: traffic.{name}: no service {name!r}; give one of {', '.join(names)}")
        if self.slo is not None and names:
            raise BadInput(f"--what-if: slo={self.slo:g}: each service of {origin} has its own SLO; give a "
                           "scenario without slo (budget, alpha, beta, traffic, traffic.NAME)")
        at = base if self.slo is None else base.at_slo(self.slo, origin=f"--what-if: slo={self.slo:g}: {origin}")
        return at.tuned(alpha=self.alpha, budget=self.budget).with_overrides(beta=self.beta)

    def factor(self, service: str = "") -> float:
        """The factor on ``service``'s load (one service: ``traffic``)."""
        return self.traffic * dict(self.service_traffic).get(service, 1.0)

    def loads(self, by_service: Mapping[str, float]) -> dict[str, float]:
        """Each service's load (req/s) under this scenario."""
        return {n: v * self.factor(n) for n, v in by_service.items()}


def parse_what_if(texts: Sequence[str]) -> list[Scenario]:
    """Parse each ``--what-if`` value; BadInput naming the flag, the key and the fix."""
    out = []
    for text in texts:
        values: dict[str, float] = {}
        per_service: dict[str, float] = {}
        for part in text.split(","):
            key, sep, raw = part.partition("=")
            key = key.strip()
            if not key.lower().startswith("traffic."):
                key = key.lower()
            if not sep or not key:
                raise BadInput(f"--what-if: expected KEY=VALUE (e.g. budget=16,traffic=1.5), got {part!r}")
            service = key.partition(".")[2].strip() if key.lower().startswith("traffic.") else None
            if service == "":
                raise BadInput(f"--what-if: {key}: name the service (e.g. traffic.live=2)")
            if key not in KEYS and service is None:
                raise BadInput(f"--what-if: unknown key {key!r}, expected one of {', '.join(KEYS)}")
            try:
                value = float(raw)
            except ValueError:
                raise BadInput(f"--what-if: {key} must be a number, got {raw!r}") from None
            if not math.isfinite(value) or value < 0 or (
                    (key in ("budget", "traffic", "slo") or service is not None) and value <= 0):
                raise BadInput(f"--what-if: {key} must be a finite number > 0, got {raw!r}")
            if service is not None:
                per_service[service] = value
            else:
                values[key] = value
        label = ",".join([*(f"{k}={v:g}" for k, v in values.items()),
                          *(f"traffic.{n}={v:g}" for n, v in per_service.items())])
        out.append(Scenario(label=label, **values, service_traffic=tuple(per_service.items())))
    return out


def scaled_config(config: Any, factor: float) -> Any:
    """A simulation's config (:class:`~infadapter.sim.simulation.SimConfig`) for its load times ``factor``: the
    warm start's history (what the forecaster and a warm VPA saw before the window) grows with the traffic."""
    if factor == 1.0:
        return config
    ctl = config.control
    return replace(config, control=replace(ctl, history_before=tuple(float(x) * factor for x in ctl.history_before)),
                   rates_before=tuple(float(x) * factor for x in config.rates_before)
                   if config.rates_before else config.rates_before)
