"""Model-variant profiles: the variants, their accuracy, load time, memory and capacity model.

A profile is a validated, immutable YAML document. ``capacity(v, cores)`` is the highest request rate
(req/s) that variant ``v`` on ``cores`` CPU cores serves with its p99 latency under the SLO; it comes
from a linear fit (``safety * (slope * cores + intercept)``, the paper's model) or from measured points
(interpolated; past the last point it is extrapolated only with a warning).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from infadapter.errors import BadInput
from infadapter.loading import load_yaml

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$")
_MEMORY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T|k)?$")
# Bounds that keep the planner's work finite whatever a profile says (a budget of 1e308 cores would
# otherwise list 1e308 core options; a slope of 1e308 overflows to an infinite capacity).
MAX_CORE_OPTIONS = 10_000
MAX_RPS = 1e9
# Grid arithmetic works in integer multiples of the core step; this tolerance absorbs float noise.
_GRID_EPS = 1e-9


def threads_for_cores(cores: float) -> int:
    """ONNX Runtime threads for a CPU allocation: never more threads than cores, at least one."""
    return max(1, math.floor(cores + _GRID_EPS))


def _between(value: float, low: float, high: float) -> float:
    if not (low <= value <= high) or math.isnan(value):
        raise ValueError(f"must be between {low:g} and {high:g}, got {value:g}")
    return value


def _positive(value: float) -> float:
    if not value > 0:
        raise ValueError(f"must be greater than 0, got {value:g}")
    return value


class LinearCapacity(BaseModel):
    """``capacity(cores) = safety * (slope * cores + intercept)`` in req/s."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    kind: Literal["linear"] = "linear"
    slope: float = Field(description="req/s gained per core at the SLO")
    intercept: float = Field(description="req/s at zero cores (often negative)")
    safety: float = Field(default=1.0, description="multiplier applied to the fit (paper: 0.8)")

    _safety_ok = field_validator("safety")(lambda v: _between(v, 0.0, 1.0) if v > 0 else _positive(v))
    _rps_ok = field_validator("slope", "intercept")(lambda v: _between(v, -MAX_RPS, MAX_RPS))

    def rps(self, cores: float) -> float:
        return self.safety * (self.slope * cores + self.intercept)

    def scaled(self, factor: float) -> LinearCapacity:
        """The same fit serving ``factor`` times as many requests per second at every core count."""
        return self.model_copy(update={"slope": self.slope * factor, "intercept": self.intercept * factor})

    def extrapolated(self, cores: float) -> bool:
        return False


class PointsCapacity(BaseModel):
    """Measured ``{cores: rps}`` points, linearly interpolated, scaled by ``safety``.

    Below the first point the capacity falls linearly to 0 at 0 cores. Past the last point the last
    segment's slope is extended and :meth:`extrapolated` says so; the profile warns about it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    kind: Literal["points"] = "points"
    points: dict[float, float] = Field(description="measured capacity in req/s by core count")
    safety: float = Field(default=1.0, description="multiplier applied to the measured capacity")

    _safety_ok = field_validator("safety")(lambda v: _between(v, 0.0, 1.0) if v > 0 else _positive(v))

    @field_validator("points")
    @classmethod
    def _check_points(cls, points: dict[float, float]) -> dict[float, float]:
        if not points:
            raise ValueError("must hold at least one {cores: rps} point")
        for cores, rps in points.items():
            if cores <= 0:
                raise ValueError(f"cores must be greater than 0, got {cores:g}")
            if rps < 0:
                raise ValueError(f"capacity at {cores:g} cores must be >= 0 req/s, got {rps:g}")
            if rps > MAX_RPS or cores > MAX_RPS:
                raise ValueError(f"capacity at {cores:g} cores: at most {MAX_RPS:g} cores and req/s, got {rps:g}")
        return dict(sorted(points.items()))

    def rps(self, cores: float) -> float:
        xs = list(self.points)
        ys = list(self.points.values())
        if cores <= xs[0]:
            return self.safety * ys[0] * max(cores, 0.0) / xs[0]
        for i in range(1, len(xs)):
            if cores <= xs[i] + _GRID_EPS:
                t = (cores - xs[i - 1]) / (xs[i] - xs[i - 1])
                return self.safety * (ys[i - 1] + t * (ys[i] - ys[i - 1]))
        slope = ys[0] / xs[0] if len(xs) == 1 else (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return self.safety * max(0.0, ys[-1] + slope * (cores - xs[-1]))

    def extrapolated(self, cores: float) -> bool:
        return cores > max(self.points) + _GRID_EPS

    def scaled(self, factor: float) -> PointsCapacity:
        """The same points serving ``factor`` times as many requests per second."""
        return self.model_copy(update={"points": {c: r * factor for c, r in self.points.items()}})


class Variant(BaseModel):
    """One model variant of the served family."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    name: str = Field(description="DNS-1123 label, used in server and Kubernetes object names")
    accuracy: float = Field(description="top-1 accuracy as a fraction in [0, 1]")
    load_time_s: float = Field(description="seconds from start until the variant serves")
    memory: str = Field(default="1Gi", description="memory limit as a Kubernetes quantity")
    capacity: LinearCapacity | PointsCapacity = Field(discriminator="kind")
    capacity_at_slo_ms: dict[float, Annotated[LinearCapacity | PointsCapacity, Field(discriminator="kind")]] | None = (
        Field(default=None, description="the capacity model measured at other SLOs, by SLO in ms (the profile's "
                                        "own SLO is capacity's); what --what-if slo=MS plans with"))
    model: str | None = Field(default=None, description="model file or folder name, default: name")
    reference_ms: float | None = Field(
        default=None,
        description="milliseconds one request takes alone on one core (one thread), measured with the capacities; "
        "the local backend's start-up calibration compares this machine with it (None: no calibration)",
    )

    @field_validator("reference_ms")
    @classmethod
    def _check_reference(cls, v: float | None) -> float | None:
        if v is not None and not v > 0:
            raise ValueError(f"must be > 0 milliseconds, got {v:g}")
        return v

    @field_validator("capacity_at_slo_ms")
    @classmethod
    def _check_slos(cls, v: dict[float, Any] | None) -> dict[float, Any] | None:
        if v is None:
            return v
        bad = [k for k in v if not k > 0]
        if bad:
            raise ValueError(f"SLOs must be > 0 ms, got {bad[0]:g}")
        return dict(sorted(v.items()))

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"must be a lowercase DNS label like 'resnet50', got {v!r}")
        return v

    @field_validator("accuracy")
    @classmethod
    def _check_accuracy(cls, v: float) -> float:
        return _between(v, 0.0, 1.0)

    @field_validator("load_time_s")
    @classmethod
    def _check_load_time(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"must be >= 0 seconds, got {v:g}")
        return v

    @field_validator("memory")
    @classmethod
    def _check_memory(cls, v: str) -> str:
        if not _MEMORY_RE.match(str(v)):
            raise ValueError(f"must be a quantity like '1.5Gi' or '512Mi', got {v!r}")
        return str(v)


_SERVICE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,14}[a-z0-9])?$")
_WINDOW_RE = re.compile(r"^(paper|[0-9]+:[0-9]+)$")


class Service(BaseModel):
    """One inference endpoint of a multi-service profile: its own variants, SLO, weight, floor and load."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    name: str = Field(description="DNS-1123 label of at most 16 characters; prefixes its variants' names")
    slo_ms: float = Field(description="this service's latency SLO (its variants' capacities hold at it)")
    weight: float = Field(default=1.0, description="how much this service's accuracy counts in the objective")
    accuracy_floor: float | None = Field(default=None, description="least traffic-weighted accuracy, 0..1")
    window: str | None = Field(default=None, description="trace slice it replays: paper or START:DURATION (s)")
    variants: tuple[Variant, ...] = Field(description="this service's variants, named as in a one-service profile")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _SERVICE_RE.match(v):
            raise ValueError(f"must be a lowercase DNS label of at most 16 characters like 'search', got {v!r}")
        return v

    _slo_ok = field_validator("slo_ms", "weight")(lambda v: _positive(v))

    @field_validator("accuracy_floor")
    @classmethod
    def _check_floor(cls, v: float | None) -> float | None:
        return None if v is None else _between(v, 0.0, 1.0)

    @field_validator("window")
    @classmethod
    def _check_window(cls, v: str | None) -> str | None:
        if v is not None and not _WINDOW_RE.match(v):
            raise ValueError(f"must be paper or START:DURATION in seconds like 1554600:1260, got {v!r}")
        return v

    @field_validator("variants")
    @classmethod
    def _check_variants(cls, v: tuple[Variant, ...]) -> tuple[Variant, ...]:
        return _unique_variants(v)

    def qualified(self, variant: str) -> str:
        """The profile-wide name of this service's ``variant`` (``service-variant``)."""
        return f"{self.name}-{variant}"


def _unique_variants(v: tuple[Variant, ...]) -> tuple[Variant, ...]:
    if not v:
        raise ValueError("must list at least one variant")
    names = [x.name for x in v]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"variant names must be unique, repeated: {', '.join(dup)}")
    return v


def _flatten_services(data: Any) -> Any:
    """A profile with ``services:`` gets its top-level ``variants`` (``service-variant``) and ``slo_ms`` (the
    tightest) from them, so every per-variant consumer works unchanged. Malformed input is left for the
    field validators to name."""
    if not isinstance(data, dict) or data.get("services") is None:
        return data
    services = data["services"]
    if "variants" in data:
        raise ValueError("variants: with services:, list each service's variants under it, not at the top level")
    if not isinstance(services, list | tuple) or not services:
        return data
    variants: list[Any] = []
    slos: list[float] = []
    for svc in services:
        if isinstance(svc, Service):
            svc = svc.model_dump()
        if not isinstance(svc, dict) or not isinstance(svc.get("variants"), list | tuple):
            return data
        if isinstance(svc.get("slo_ms"), int | float) and not isinstance(svc.get("slo_ms"), bool):
            slos.append(float(svc["slo_ms"]))
        for v in svc["variants"]:
            if isinstance(v, Variant):
                v = v.model_dump()
            if isinstance(v, dict) and isinstance(v.get("name"), str):
                # The profile-wide name is the service's; the model served stays the variant's own (live-resnet18
                # serves resnet18: one model file for every service that runs it).
                v = {**v, "name": f"{svc.get('name')}-{v['name']}", "model": v.get("model") or v["name"]}
            variants.append(v)
    out = {**data, "variants": variants}
    if "slo_ms" not in out and slos:
        out["slo_ms"] = min(slos)
    return out


def pod_layout(cores: float, max_pod_cores: float | None) -> tuple[int, float]:
    """(replicas, cores per pod) for a variant of ``cores`` in all: equal pods of at most ``max_pod_cores``
    each (a node's allocatable CPU), whole millicores, adding up to ``cores`` exactly.

    Pods that fill a node exactly (their size divides ``max_pod_cores``) are preferred when that takes at
    most twice the fewest pods: 5-core pods would leave 3 cores of every 8-core node unusable by
    them, so 20 cores run as 5 pods of 4, not 4 of 5. Otherwise the fewest pods.

    >>> pod_layout(12, 8), pod_layout(20, 8), pod_layout(16, 8), pod_layout(13, 8), pod_layout(6, 8)
    ((3, 4.0), (5, 4.0), (2, 8.0), (2, 6.5), (1, 6))
    """
    if cores <= 0:
        return 0, 0.0
    if max_pod_cores is None or cores <= max_pod_cores + _GRID_EPS:
        return 1, cores
    milli, node = round(cores * 1000), round(max_pod_cores * 1000)
    fewest = math.ceil(cores / max_pod_cores - _GRID_EPS)
    exact = [k for k in range(fewest, 2 * fewest + 1) if milli % k == 0]
    for k in exact:
        if node % (milli // k) == 0:
            return k, milli // k / 1000
    replicas = exact[0] if exact else fewest
    while milli % replicas:
        replicas += 1
    return replicas, milli // replicas / 1000


#: What a decision plans for, in the unit a profile's capacities are measured in (``Profile.demand``).
Demand = Literal["peak", "rate"]


class Profile(BaseModel):
    """The decision problem's fixed inputs: SLO, budget, core grid, objective weights, variants."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    name: str = Field(default="profile", description="a label for reports")
    source: str = Field(default="", description="where the numbers come from")
    slo_ms: float = Field(description="latency SLO in milliseconds, judged at the p99 (infadapter.core.slo)")
    budget_cores: float = Field(description="total CPU cores available to model servers")
    core_step: float = Field(default=1.0, description="allocation granularity in cores")
    min_cores: float = Field(default=1.0, description="minimum cores of a running variant")
    alpha: float = Field(default=0.05, description="weight of cost (cores/budget) in the objective")
    beta: float = Field(default=0.001, description="weight of transition time in the objective")
    demand: Demand = Field(
        default="peak",
        description="what a forecast is turned into before it is planned for, the unit the capacities are in: "
        "peak, the forecast busiest second (the paper's target); rate, the Poisson rate behind it, for "
        "capacities measured as the highest Poisson rate whose p99 meets the SLO (profile measure). "
        "--demand overrides it",
    )
    services: tuple[Service, ...] | None = Field(
        default=None,
        description="several inference services sharing budget_cores (one solve); None: one service, the "
        "top-level variants. With services the top-level variants are derived (named service-variant) and "
        "slo_ms is the tightest service's",
    )
    variants: tuple[Variant, ...] = Field(description="the served variants, any order")
    resolution: int | None = Field(default=None, description="model input size (px) the capacities hold for")
    max_pod_cores: float | None = Field(
        default=None,
        description="most cores one pod may have (a cluster node's allocatable CPU); a variant planned with "
        "more runs as equal replicas and its capacity is replicas x capacity(cores per pod); None: one pod",
    )

    _services_flat = model_validator(mode="before")(_flatten_services)

    @field_validator("services")
    @classmethod
    def _check_services(cls, v: tuple[Service, ...] | None) -> tuple[Service, ...] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("must list at least one service (or leave services out for one service)")
        names = [s.name for s in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"service names must be unique, repeated: {', '.join(dup)}")
        for s in v:
            for var in s.variants:
                if len(s.qualified(var.name)) > 42:
                    raise ValueError(f"[{s.name}].variants[{var.name}].name: {s.qualified(var.name)!r} (service-"
                                     "variant) must be at most 42 characters; shorten one of the two")
        return v

    @field_validator("slo_ms", "budget_cores", "core_step", "min_cores")
    @classmethod
    def _check_positive(cls, v: float) -> float:
        return _positive(v)

    @field_validator("max_pod_cores")
    @classmethod
    def _check_max_pod(cls, v: float | None) -> float | None:
        return None if v is None else _positive(v)

    @field_validator("resolution")
    @classmethod
    def _check_resolution(cls, v: int | None) -> int | None:
        if v is not None and not 16 <= v <= 1024:
            raise ValueError(f"must be between 16 and 1024 pixels, got {v}")
        return v

    @field_validator("alpha", "beta")
    @classmethod
    def _check_weight(cls, v: float) -> float:
        if v < 0 or math.isnan(v):
            raise ValueError(f"must be >= 0, got {v:g}")
        return v

    @field_validator("variants")
    @classmethod
    def _check_variants(cls, v: tuple[Variant, ...]) -> tuple[Variant, ...]:
        return _unique_variants(v)

    @model_validator(mode="after")
    def _check_grid(self) -> Profile:
        if not _on_grid(self.min_cores, self.core_step):
            raise ValueError(
                f"min_cores: must be a multiple of core_step {self.core_step:g}, got {self.min_cores:g}"
            )
        if (self.budget_cores - self.min_cores) / self.core_step > MAX_CORE_OPTIONS:
            raise ValueError(
                f"budget_cores: at most {MAX_CORE_OPTIONS} core steps of {self.core_step:g} above min_cores "
                f"(got {self.budget_cores:g}); raise core_step or lower the budget"
            )
        if self.min_cores > self.budget_cores + _GRID_EPS:
            raise ValueError(
                f"min_cores: must not exceed budget_cores {self.budget_cores:g}, got {self.min_cores:g}"
            )
        if self.services and len(self.services) * self.min_cores > self.budget_cores + _GRID_EPS:
            raise ValueError(
                f"budget_cores: {len(self.services)} services need at least {len(self.services)} x min_cores "
                f"{self.min_cores:g} cores, got {self.budget_cores:g}"
            )
        return self

    # -- services -------------------------------------------------------------------------------
    @property
    def service_names(self) -> tuple[str, ...]:
        """The services' names; () for a one-service profile (no ``services:``)."""
        return tuple(s.name for s in self.services or ())

    def service(self, name: str) -> Service:
        """The service called ``name``; BadInput naming the known ones otherwise."""
        for s in self.services or ():
            if s.name == name:
                return s
        known = ", ".join(self.service_names) or "none: this profile has no services:"
        raise BadInput(f"service: unknown service {name!r}, expected one of {known}")

    def service_of(self, variant: str) -> str:
        """The service a (profile-wide) variant name belongs to; '' in a one-service profile."""
        for s in self.services or ():
            if any(s.qualified(v.name) == variant for v in s.variants):
                return s.name
        return ""

    def single_service(self, what: str) -> Profile:
        """This profile, or BadInput naming ``what`` when it has services: (what runs one service only)."""
        if self.services:
            raise BadInput(f"{what}: this profile has services: ({', '.join(self.service_names)}); {what} runs one "
                           "service so far (plan, simulate --profile, adapt, render and profile show run several)")
        return self

    def service_variants(self, name: str) -> tuple[str, ...]:
        """The profile-wide variant names of service ``name``."""
        s = self.service(name)
        return tuple(s.qualified(v.name) for v in s.variants)

    # -- derived values -------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variants)

    @property
    def max_load_time_s(self) -> float:
        return max(v.load_time_s for v in self.variants)

    def variant(self, name: str) -> Variant:
        """The variant called ``name``; BadInput naming the known ones otherwise."""
        for v in self.variants:
            if v.name == name:
                return v
        raise BadInput(f"variant: unknown variant {name!r}, expected one of {', '.join(self.names)}")

    def served_accuracy(self, shares: Mapping[str, float]) -> float:
        """Traffic-weighted nominal accuracy of a split of traffic (variants unknown here count as 0)."""
        known = {v.name: v.accuracy for v in self.variants}
        return sum(share * known.get(name, 0.0) for name, share in shares.items())

    def accuracy_of_counts(self, counts: Mapping[str, float] | None) -> float | None:
        """The accuracy of requests served, from how many each variant served (a load generator's ``by_variant``):
        the definition itself, exact; None when no request was served by a variant of this profile."""
        known = {n: float(c) for n, c in (counts or {}).items() if n in self.names and float(c) > 0}
        total = sum(known.values())
        return self.served_accuracy({n: c / total for n, c in known.items()}) if total > 0 else None

    def accuracy_by_service(self, shares: Mapping[str, float]) -> dict[str, float]:
        """Each service's traffic-weighted accuracy of a multi-service split of traffic (shares are of each
        service's own traffic); {} for a one-service profile (:meth:`served_accuracy` is its one figure)."""
        return {s.name: self.served_accuracy({n: shares[n] for n in self.service_variants(s.name) if n in shares})
                for s in self.services or ()}

    def in_place_ceiling(self, threads: int) -> float:
        """The most cores a server started with ``threads`` threads can be given in place: the largest
        allocation with the same thread count (:func:`threads_for_cores`); beyond it, a restart."""
        fits = [c for c in self.core_options() if threads_for_cores(c) <= threads]
        return fits[-1] if fits else self.core_options()[0]

    def core_options(self) -> tuple[float, ...]:
        """Allowed core counts of a running variant: min_cores, min_cores + step, ..., <= budget."""
        n = math.floor((self.budget_cores - self.min_cores) / self.core_step + _GRID_EPS)
        return tuple(round(self.min_cores + i * self.core_step, 9) for i in range(n + 1))

    def queue_bound(self, name: str, cores: float) -> int:
        """Requests a server may hold waiting: what it serves within the SLO at its capacity (Little's
        law, capacity x SLO), at least 2. The local backend's servers refuse more at once (503)."""
        return max(2, math.ceil(max(self.capacity_rps(name, cores), 0.0) * self.slo_ms / 1000.0))

    def spill_bound(self, name: str, cores: float) -> int:
        """Requests in flight at a server past which the dispatcher sends a new one to an idle variant (a
        plan's standby) instead, at least 1. A request that finds k ahead of it is done after about
        (k + 1) / capacity (the capacity at the SLO is below the server's raw rate, so this errs late): past
        the SLO from k = floor(capacity x SLO) on, one below :meth:`queue_bound`'s shedding."""
        return max(1, math.floor(max(self.capacity_rps(name, cores), 0.0) * self.slo_ms / 1000.0 + 1e-9))

    def cores_for(self, name: str, load_rps: float) -> float:
        """The fewest allowed cores on which ``name`` serves ``load_rps`` (the budget's when none does)."""
        options = self.core_options()
        return next((c for c in options if self.capacity_rps(name, c) + 1e-9 >= load_rps), options[-1])

    def capacity_rps(self, name: str, cores: float) -> float:
        """capacity(v, cores) in req/s; 0 for 0 cores. May be negative for a poor linear fit.

        With ``max_pod_cores`` the cores run as :meth:`pod_layout` says: replicas x capacity(per pod).
        """
        return self.variant_capacity_rps(self.variant(name), cores)

    def variant_capacity_rps(self, variant: Variant, cores: float) -> float:
        """:meth:`capacity_rps` of a variant already looked up (the solver's option tables, hot for many
        services)."""
        if cores <= 0:
            return 0.0
        replicas, per_pod = self.pod_layout(cores)
        return replicas * variant.capacity.rps(per_pod)

    def pod_layout(self, cores: float) -> tuple[int, float]:
        """(replicas, cores per pod) that a variant of ``cores`` runs as; see :func:`pod_layout`."""
        return pod_layout(cores, self.max_pod_cores)

    @property
    def splits_pods(self) -> bool:
        """Whether some allowed core count needs more than one pod (then capacity is not linear in cores)."""
        return self.max_pod_cores is not None and self.max_pod_cores < self.budget_cores - _GRID_EPS

    def extrapolation_warnings(self) -> list[str]:
        """One line per variant whose capacity is extrapolated past its measured points."""
        out = []
        top = self.budget_cores
        for v in self.variants:
            if v.capacity.extrapolated(top):
                last = max(v.capacity.points)  # type: ignore[union-attr]
                out.append(
                    f"variants[{v.name}].capacity: measured up to {last:g} cores, "
                    f"extrapolated up to the budget of {top:g} cores"
                )
        return out

    def measured_slos_ms(self) -> tuple[float, ...]:
        """The SLOs (ms) at which every variant's capacity is known: the profile's own and the
        ``capacity_at_slo_ms`` ones that all variants share."""
        shared = set.intersection(*(set(v.capacity_at_slo_ms or {}) for v in self.variants))
        return tuple(sorted(shared | {self.slo_ms}))

    def at_slo(self, slo_ms: float, origin: str = "the profile") -> Profile:
        """This profile under another latency SLO: each variant's capacity measured at ``slo_ms`` (its
        ``capacity_at_slo_ms`` entry) becomes its capacity. BadInput naming the field when a variant has
        none at that SLO: capacity at one SLO says nothing about another (a p99 is not linear in the SLO)."""
        if abs(slo_ms - self.slo_ms) < 1e-9:
            return self
        variants = []
        for i, v in enumerate(self.variants):
            known = v.capacity_at_slo_ms or {}
            cap = next((c for k, c in known.items() if abs(k - slo_ms) < 1e-9), None)
            if cap is None:
                have = ", ".join(f"{x:g}" for x in self.measured_slos_ms())
                raise BadInput(
                    f"{origin}: variants[{i}].capacity_at_slo_ms has no capacity of {v.name} at {slo_ms:g} ms "
                    f"(its capacity is measured at {have} ms, and capacity at one SLO does not give another); "
                    f"use one of those or measure the profile at {slo_ms:g} ms (profile measure --slo-ms)")
            others = {k: c for k, c in known.items() if abs(k - slo_ms) >= 1e-9}
            others[self.slo_ms] = v.capacity
            variants.append(v.model_copy(update={"capacity": cap, "capacity_at_slo_ms": dict(sorted(others.items()))}))
        data = self.model_dump()
        data.update(slo_ms=slo_ms, variants=[v.model_dump() for v in variants])
        return _validate(data, origin=origin)

    def with_overrides(self, **changes: Any) -> Profile:
        """A new, re-validated profile with some top-level fields changed (None values ignored)."""
        data = self.model_dump()
        if self.services is not None:
            data.pop("variants")  # derived from the services: derive them again
            if "slo_ms" not in changes:
                data.pop("slo_ms")
        data.update({k: v for k, v in changes.items() if v is not None})
        return _validate(data, origin="overrides")

    def scaled_capacity(self, factor: float) -> Profile:
        """Every variant serving ``factor`` times its profiled rate (a machine slower by ``1 / factor``)."""
        if not (math.isfinite(factor) and factor > 0):
            raise BadInput(f"capacity scale: must be a finite factor > 0, got {factor:g}")
        variants = tuple(v.model_copy(update={"capacity": v.capacity.scaled(factor)}) for v in self.variants)
        return self.model_copy(update={"variants": variants})

    def tuned(self, alpha: float | None = None, budget: float | None = None) -> Profile:
        """This profile with a command's ``--alpha`` and ``--budget`` applied (None: the profile's)."""
        if budget is not None and not (math.isfinite(budget) and budget >= self.min_cores):
            raise BadInput(f"--budget: got {budget:g} cores; give a number of cores of at least one variant's "
                           f"minimum ({self.min_cores:g})")
        return self.with_overrides(alpha=alpha, budget_cores=budget)


def _on_grid(value: float, step: float) -> bool:
    ratio = value / step
    return abs(ratio - round(ratio)) < 1e-6


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    prev: Any = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith("[") and prev == "services":
            out += part
        elif prev == "capacity" and part in ("linear", "points"):
            pass  # the union's discriminator tag, not a field the user wrote
        else:
            out += ("." if out else "") + str(part)
        prev = part
    return out


def _service_by_name(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """``services[0]`` -> ``services[search]``: an error names the service as the file does."""
    if len(loc) >= 2 and loc[0] == "services" and isinstance(loc[1], int) and isinstance(data, dict):
        try:
            name = data["services"][loc[1]]["name"]
        except (KeyError, IndexError, TypeError):
            return loc
        if isinstance(name, str) and name:
            return ("services", f"[{name}]", *loc[2:])
    return loc


def _message(err: Mapping[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    kind = err.get("type", "")
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field (check its spelling)"
    if kind in ("float_parsing", "float_type", "int_parsing", "int_type", "int_from_float"):
        return f"must be a number, got {_short(err.get('input'))}"
    if kind == "finite_number":
        return f"must be a finite number, got {_short(err.get('input'))}"
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        return "needs kind: linear (slope, intercept, safety) or kind: points ({cores: rps})"
    return msg


def _short(value: Any, limit: int = 60) -> str:
    """A bounded repr for messages (the input may be anything a YAML file holds)."""
    text = repr(value) if isinstance(value, str | int | float | bool | None) else type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _validate(data: Any, origin: str) -> Profile:
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = _loc(_service_by_name(tuple(err.get("loc", ())), data))
        msg = _message(err)
        where = f"{loc}: " if loc else ""
        raise BadInput(f"{origin}: {where}{msg}") from None


def profile_from_dict(data: Any, origin: str = "<profile>") -> Profile:
    """Validate a profile given as plain data; errors name ``origin`` and the field."""
    if not isinstance(data, dict):
        raise BadInput(f"{origin}: must be a YAML mapping with slo_ms, budget_cores and variants")
    return _validate(data, origin)


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile YAML file; one-line BadInput on any problem."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise BadInput(f"{p}: profile file not found (pass --profile PATH)") from None
    except OSError as exc:
        raise BadInput(f"{p}: cannot read profile: {exc.strerror}") from None
    # Safe YAML without aliases, duplicate keys or deep nesting (infadapter.loading).
    return profile_from_dict(load_yaml(text, origin=str(p)), origin=str(p))


def dump_profile(profile: Profile, header: str = "") -> str:
    """The profile as YAML text, with an optional comment header."""
    data = profile.model_dump(mode="json", exclude_none=True)
    if profile.services is not None:
        data.pop("variants")  # derived from the services
    for v in data.get("variants", ()):
        cap = v["capacity"]
        if cap.get("kind") == "points":
            cap["points"] = {float(k): float(r) for k, r in cap["points"].items()}
        if v.get("capacity_at_slo_ms"):
            v["capacity_at_slo_ms"] = {(int(float(k)) if float(k).is_integer() else float(k)): c
                                       for k, c in v["capacity_at_slo_ms"].items()}
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    lines = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    return "\n".join([*lines, body]) if lines else body


def service_profile(profile: Profile, name: str, budget_cores: float | None = None) -> Profile:
    """One service of ``profile`` as a one-service profile: its variants (profile-wide names), its SLO, the
    shared settings, and ``budget_cores`` (default: the whole budget)."""
    svc = profile.service(name)
    data = profile.model_dump(mode="json", exclude_none=True)
    data.pop("services")
    data.update(name=f"{profile.name}/{name}", slo_ms=svc.slo_ms,
                budget_cores=profile.budget_cores if budget_cores is None else budget_cores,
                variants=[{**v.model_dump(mode="json", exclude_none=True), "name": svc.qualified(v.name),
                           "model": v.model or v.name} for v in svc.variants])
    return profile_from_dict(data, origin=f"{profile.name}: service {name}")
