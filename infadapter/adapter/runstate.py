"""Typed run state: what an adapter writes to its state file and what ``status`` reads back.

The state file is JSON written by one process and read by another (``status``, a restarted adapter),
possibly of another version, so reading is tolerant: an unknown key is ignored, a missing or ill-typed
one takes its default. Each type round-trips through ``as_dict``/``from_dict``, as :class:`Plan` does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


def _from(cls: type[T], data: Any) -> T:
    """Build dataclass ``cls`` from a mapping, keeping only its fields whose values have a usable type."""
    if not isinstance(data, dict):
        return cls()
    kwargs: dict[str, Any] = {}
    checks = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool), "str": lambda v: isinstance(v, str),
              "bool": lambda v: isinstance(v, bool), "dict": lambda v: isinstance(v, dict),
              "list": lambda v: isinstance(v, list)}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data or data[f.name] is None:
            continue
        value = data[f.name]
        kind = str(f.type).split("[")[0].split(" ")[0]  # "float | None" -> "float" (annotations are strings)
        if kind == "float":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            value = float(value)
        elif kind in checks and not checks[kind](value):
            continue
        kwargs[f.name] = value
    return cls(**kwargs)


@dataclass(frozen=True)
class AdapterInfo:
    """Who runs: written once when the adapter starts."""

    pid: int | None = None
    started_s: float | None = None
    policy: str = ""
    backend: str = "local"
    run_dir: str = ""
    interval_s: float | None = None
    profile: str = ""
    slo_ms: float | None = None
    observation: str = ""
    replay: bool = False
    namespace: str | None = None
    out_dir: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> AdapterInfo:
        return _from(cls, data)


@dataclass(frozen=True)
class LoopSnapshot:
    """What the loop is doing: written every check (``ControlLoop.snapshot``)."""

    time_s: float | None = None
    policy: str = ""
    interval_s: float | None = None
    plan: dict[str, Any] | None = None
    observed_rps: float | None = None
    forecast_rps: float | None = None
    p99_ms: float | None = None
    monitor: dict[str, Any] = field(default_factory=dict)
    slo_attainment_5m: float | None = None
    next_decision_s: float | None = None
    degraded: str = ""
    unreachable: str = ""  # the backend's current outage in one line ("" when it answers)
    backend_healthy: bool | None = None
    totals: dict[str, Any] | None = None
    last_decision: dict[str, Any] | None = None
    write_error: str = ""
    #: Several services: each one's observed and forecast rate, cores and accuracy now ([] for one service).
    services: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> LoopSnapshot:
        return _from(cls, data)


@dataclass(frozen=True)
class RunState:
    """The state file as a whole (the parts ``status`` reads; the backend's own keys pass through)."""

    adapter: AdapterInfo = field(default_factory=AdapterInfo)
    loop: LoopSnapshot = field(default_factory=LoopSnapshot)
    limit_mode: str | None = None
    prometheus_url: str | None = None
    updated_s: float | None = None
    stopped_s: float | None = None
    servers: tuple[dict[str, Any], ...] = ()
    dispatcher: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> RunState:
        d = data if isinstance(data, dict) else {}
        prom = d.get("prometheus")
        servers = d.get("servers")
        disp = d.get("dispatcher")
        num = (int, float)
        return cls(
            adapter=AdapterInfo.from_dict(d.get("adapter")),
            loop=LoopSnapshot.from_dict(d.get("loop")),
            limit_mode=d.get("limit_mode") if isinstance(d.get("limit_mode"), str) else None,
            prometheus_url=prom.get("url") if isinstance(prom, dict) and isinstance(prom.get("url"), str) else None,
            updated_s=float(d["updated_s"]) if isinstance(d.get("updated_s"), num) else None,
            stopped_s=float(d["stopped_s"]) if isinstance(d.get("stopped_s"), num) else None,
            servers=tuple(s for s in servers if isinstance(s, dict)) if isinstance(servers, list) else (),
            dispatcher=disp if isinstance(disp, dict) else {},
        )
