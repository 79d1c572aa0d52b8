"""The Plan value object, its JSON form, and plan diffs.

A plan says, for each running variant, its cores and its share of traffic (shares sum to 1), plus
the load it was planned for. Plans are immutable; changing one returns a new one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from infadapter.errors import BadInput
from infadapter.loading import finite_number, load_json, strings

_SHARE_TOL = 1e-6


@dataclass(frozen=True)
class Allocation:
    """One running variant in a plan."""

    name: str
    cores: float
    share: float
    capacity_rps: float
    #: The service this variant serves in a multi-service plan ("" for one service); its share is of that
    #: service's traffic.
    service: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "cores": _clean(self.cores),
            "share": _clean(self.share),
            "capacity": _clean(self.capacity_rps),
        }
        if self.service:
            out["service"] = self.service
        return out


@dataclass(frozen=True)
class ServiceOutcome:
    """What a multi-service plan gives one service: its forecast, what is served, its accuracy and floor."""

    name: str
    load_rps: float
    served_rps: float
    accuracy: float
    weight: float = 1.0
    accuracy_floor: float | None = None

    @property
    def shed_rps(self) -> float:
        """Forecast load the plan does not serve (0 when it serves it all)."""
        return max(0.0, self.load_rps - self.served_rps)

    @property
    def floor_met(self) -> bool:
        return self.accuracy_floor is None or self.accuracy + 1e-9 >= self.accuracy_floor

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "load": _clean(self.load_rps), "served": _clean(self.served_rps),
                               "shed": _clean(self.shed_rps), "accuracy": _clean(self.accuracy),
                               "weight": _clean(self.weight)}
        if self.accuracy_floor is not None:
            out["accuracy_floor"] = _clean(self.accuracy_floor)
            out["floor_met"] = self.floor_met
        return out


@dataclass(frozen=True)
class Plan:
    """Which variants run, on how many cores, with which share of traffic, for which load."""

    allocations: tuple[Allocation, ...]
    load_rps: float
    feasible: bool = True
    objective: float = 0.0
    accuracy: float = 0.0
    optimal: bool = True
    notes: tuple[str, ...] = field(default=())
    #: Per service in a multi-service plan (load, served, accuracy, floor); () for one service.
    services: tuple[ServiceOutcome, ...] = field(default=())

    def __post_init__(self) -> None:
        names = [a.name for a in self.allocations]
        if len(set(names)) != len(names):
            raise BadInput(f"plan.variants: names must be unique, got {', '.join(names)}")
        for a in self.allocations:
            if a.cores < 0 or a.share < -_SHARE_TOL or math.isnan(a.share):
                raise BadInput(f"plan.variants[{a.name}]: cores and share must be >= 0")
        # Shares are of each service's traffic: they sum to 1 per service (one service: over the plan).
        for svc in dict.fromkeys(a.service for a in self.allocations):
            total = sum(a.share for a in self.allocations if a.service == svc)
            if abs(total - 1.0) > 1e-4:
                where = f" of service {svc}" if svc else ""
                raise BadInput(f"plan.variants: shares{where} must sum to 1, got {total:.6g}")

    # -- derived values -------------------------------------------------------------------------
    @property
    def cores(self) -> float:
        """Total cores allocated to model servers."""
        return sum(a.cores for a in self.allocations)

    @property
    def capacity_rps(self) -> float:
        """Total planned capacity in req/s."""
        return sum(a.capacity_rps for a in self.allocations)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.allocations)

    def cores_by_name(self) -> dict[str, float]:
        return {a.name: a.cores for a in self.allocations}

    def shares_by_name(self) -> dict[str, float]:
        return {a.name: a.share for a in self.allocations}

    def get(self, name: str) -> Allocation | None:
        for a in self.allocations:
            if a.name == name:
                return a
        return None

    def served_capacity_rps(self, service: str | None = None) -> float:
        """The highest load this plan serves with its shares: min over variants of capacity/share; ``service``:
        that service's load, over its variants only (its shares are of its own traffic)."""
        caps = [a.capacity_rps / a.share for a in self.allocations
                if a.share > _SHARE_TOL and (service is None or a.service == service)]
        return min(caps) if caps else 0.0

    def with_load(self, load_rps: float) -> Plan:
        return replace(self, load_rps=load_rps)

    # -- JSON -----------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """The contract object of ``cli.py plan --json`` (plus optional keys)."""
        out: dict[str, Any] = {
            "feasible": self.feasible,
            "load": _clean(self.load_rps),
            "objective": _clean(self.objective),
            "accuracy": _clean(self.accuracy),
            "cores": _clean(self.cores),
            "variants": [a.as_dict() for a in self.allocations],
        }
        if not self.optimal:
            out["optimal"] = False
        if self.notes:
            out["notes"] = list(self.notes)
        if self.services:
            out["services"] = [s.as_dict() for s in self.services]
        return out

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str = "plan") -> Plan:
        """Parse the ``plan --json`` object; BadInput naming the field otherwise.

        Numbers must be finite JSON numbers (not strings, booleans or null), names strings, flags
        booleans, notes a list of strings; unknown fields are ignored (newer writers may add some).
        """
        if not isinstance(data, Mapping):
            raise BadInput(f"{origin}: must be a JSON object with 'load' and 'variants'")
        variants = data.get("variants")
        if not isinstance(variants, list):
            raise BadInput(f"{origin}: variants: must be a list of {{name, cores, share}} objects")
        allocs = []
        for i, v in enumerate(variants):
            where = f"{origin}: variants[{i}]"
            if not isinstance(v, Mapping) or "name" not in v or "cores" not in v:
                raise BadInput(f"{where}: needs 'name' and 'cores'")
            name = v["name"]
            if not isinstance(name, str) or not name.strip():
                raise BadInput(f"{where}.name: must be a non-empty variant name")
            allocs.append(
                Allocation(
                    name=name,
                    cores=finite_number(v["cores"], f"{where}.cores", low=0),
                    share=finite_number(v.get("share", 1.0 / len(variants)), f"{where}.share", low=-_SHARE_TOL),
                    capacity_rps=finite_number(v.get("capacity", 0.0), f"{where}.capacity", unit="req/s"),
                    service=_service_name(v.get("service", ""), f"{where}.service"),
                )
            )
        for key in ("feasible", "optimal"):
            if not isinstance(data.get(key, True), bool):
                raise BadInput(f"{origin}: {key}: must be true or false")
        notes = data.get("notes", [])
        try:
            return cls._checked(data, tuple(allocs), notes, origin)
        except BadInput as exc:  # the value object's own checks (unique names, shares): name the file
            message = str(exc)
            raise BadInput(
                message if message.startswith(origin) else f"{origin}: {message.removeprefix('plan.')}"
            ) from None

    @classmethod
    def _checked(cls, data: Mapping[str, Any], allocs: tuple[Allocation, ...], notes: Any, origin: str) -> Plan:
        return cls(
            allocations=allocs,
            load_rps=finite_number(data.get("load", 0.0), f"{origin}: load", low=0, unit="req/s"),
            feasible=data.get("feasible", True),
            objective=finite_number(data.get("objective", 0.0), f"{origin}: objective"),
            accuracy=finite_number(data.get("accuracy", 0.0), f"{origin}: accuracy"),
            optimal=data.get("optimal", True),
            notes=strings(notes, f"{origin}: notes"),
            services=_outcomes(data.get("services", []), f"{origin}: services"),
        )

    @classmethod
    def from_json(cls, text: str, origin: str = "plan") -> Plan:
        return cls.from_dict(load_json(text, origin), origin=origin)


def _service_name(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadInput(f"{where}: must be a service name")
    return value


def _outcomes(items: Any, where: str) -> tuple[ServiceOutcome, ...]:
    if not isinstance(items, list):
        raise BadInput(f"{where}: must be a list of {{name, load, served, accuracy}} objects")
    out = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise BadInput(f"{at}: needs 'name', 'load', 'served' and 'accuracy'")
        floor = item.get("accuracy_floor")
        out.append(ServiceOutcome(
            name=item["name"],
            load_rps=finite_number(item.get("load", 0.0), f"{at}.load", low=0, unit="req/s"),
            served_rps=finite_number(item.get("served", 0.0), f"{at}.served", low=0, unit="req/s"),
            accuracy=finite_number(item.get("accuracy", 0.0), f"{at}.accuracy"),
            weight=finite_number(item.get("weight", 1.0), f"{at}.weight"),
            accuracy_floor=None if floor is None else finite_number(floor, f"{at}.accuracy_floor"),
        ))
    return tuple(out)


def empty_plan(load_rps: float = 0.0) -> Plan:
    """A plan with nothing running (the state before the first decision)."""
    return Plan(allocations=(), load_rps=load_rps, feasible=load_rps <= 0)


def plan_from_cores(
    cores: Mapping[str, float], load_rps: float, capacity: Mapping[str, float], accuracy: Mapping[str, float]
) -> Plan:
    """A plan with shares proportional to capacity (every variant equally loaded)."""
    running = {n: c for n, c in cores.items() if c > 0}
    total_cap = sum(max(capacity[n], 0.0) for n in running)
    allocs = []
    for n, c in running.items():
        share = max(capacity[n], 0.0) / total_cap if total_cap > 0 else 1.0 / len(running)
        allocs.append(Allocation(n, c, share, capacity[n]))
    acc = sum(a.share * accuracy[a.name] for a in allocs)
    return Plan(tuple(allocs), load_rps, feasible=total_cap >= load_rps - 1e-9, accuracy=acc)


@dataclass(frozen=True)
class PlanDiff:
    """What a backend must do to go from one plan to the next."""

    create: tuple[str, ...]
    resize: tuple[str, ...]
    delete: tuple[str, ...]
    unchanged: tuple[str, ...]
    reweight: bool

    @property
    def empty(self) -> bool:
        return not (self.create or self.resize or self.delete or self.reweight)

    def summary(self) -> str:
        parts = []
        for label, names in (("create", self.create), ("resize", self.resize), ("delete", self.delete)):
            if names:
                parts.append(f"{label} {', '.join(names)}")
        if self.reweight and not parts:
            parts.append("reweight")
        return "; ".join(parts) or "no change"


def diff(old: Plan | None, new: Plan) -> PlanDiff:
    """Create/resize/delete/unchanged variants between two plans (cores compared to 1e-9)."""
    before = old.cores_by_name() if old is not None else {}
    after = new.cores_by_name()
    create = tuple(n for n in after if n not in before)
    delete = tuple(n for n in before if n not in after)
    resize = tuple(n for n in after if n in before and abs(after[n] - before[n]) > 1e-9)
    unchanged = tuple(n for n in after if n in before and n not in resize)
    old_shares = old.shares_by_name() if old is not None else {}
    reweight = any(abs(old_shares.get(n, 0.0) - s) > 1e-6 for n, s in new.shares_by_name().items())
    return PlanDiff(create, resize, delete, unchanged, reweight or bool(create or delete))


def _clean(x: float) -> float:
    """Round away float noise so JSON and golden files stay stable."""
    r = round(float(x), 9)
    return 0.0 if r == 0 else r
