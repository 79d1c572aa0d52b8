"""The toy backend's class, run config, preparation step and status collector (see the package doc)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infadapter.adapter.runner import AdapterConfig, AdapterRun, Prepared
from infadapter.adapter.status import collect_status
from infadapter.backends import backend_class
from infadapter.backends.base import ApplyResult, BackendState, TargetsCallback, VariantState
from infadapter.backends.kubernetes.setup import ReplayedLoad
from infadapter.core.plan import Plan
from infadapter.errors import BadInput


@dataclass
class ToyBackend:
    """A backend that keeps the plan in memory (a real one would start something)."""

    name: str = "toy"
    in_place_resize: bool = False
    plan: Plan | None = None
    applied: list[Plan] = field(default_factory=list)
    stopped: bool = False
    apply_delay_s: float = 0.0  # every apply after the first takes this long (a cluster waiting for pods)

    def state(self) -> BackendState:
        allocs = self.plan.allocations if self.plan else ()
        return BackendState(tuple(VariantState(a.name, a.cores, True) for a in allocs), self.plan)

    def apply(self, plan: Plan) -> ApplyResult:
        if self.applied and self.apply_delay_s:
            time.sleep(self.apply_delay_s)
        self.plan = plan
        self.applied.append(plan)
        return ApplyResult(serving=plan, actions=("kept in memory",))

    def cpu_seconds(self) -> dict[str, float]:
        return {}

    def in_place_max_cores(self) -> dict[str, float]:
        return {}

    def health(self) -> bool:
        return True

    def heal(self) -> str | None:
        return None

    def watch_targets(self, callback: TargetsCallback) -> None:
        """Nothing to scrape."""

    def stop(self) -> None:
        self.stopped = True


@dataclass(frozen=True, kw_only=True)
class ToyConfig(AdapterConfig):
    """The shared flags plus the toy's own ``--toy-note``."""

    backend: str = "toy"
    toy_note: str = ""

    @classmethod
    def from_flags(cls, shared: Mapping[str, Any], **own: Any) -> ToyConfig:
        fields = dict(shared)
        if fields.pop("router", "dispatcher") != "dispatcher":
            raise BadInput("--router: the toy backend routes nothing")
        fields.pop("prometheus", None)
        fields["run_dir"] = fields.get("run_dir") or Path("runs/toy")
        fields["profile_path"] = fields.get("profile_path") or Path(__file__).resolve().parents[2] / "profiles" / \
            "paper.yaml"
        return cls(**fields, **own)


class ToySetup:
    """Observes the replayed load; the backend keeps plans in memory."""

    keep_state: tuple[str, ...] = ()
    last: ToyBackend | None = None
    #: A slow backend, for tests of how a run ends (set with monkeypatch.setattr).
    apply_delay_s: float = 0.0
    apply_timeout_s: float = 0.0
    drive_s: float = 0.0  # > 0: the run drives a load this long (as the local backend's generator) and ends with it

    def prepare(self, run: AdapterRun) -> Prepared:
        backend = backend_class("toy")(apply_delay_s=self.apply_delay_s)
        ToySetup.last = backend
        note = getattr(run.config, "toy_note", "")
        load = ReplayedLoad(run.config.rates_rps or (), "a toy load", run.started_s)
        return Prepared(backend=backend, observe=load.observe, observation="a toy replay", limit_mode="none (toy)",
                        apply_timeout_s=self.apply_timeout_s,
                        drive_load=(lambda: time.sleep(self.drive_s)) if self.drive_s else None,
                        summary=lambda _load: {"toy_applied": len(backend.applied), "toy_note": note})


class ToyStatus:
    """The run folder's status, marked as the toy's."""

    def collect(self, run_dir: Path | None, *, toy_shout: bool = False) -> dict[str, Any]:
        doc = collect_status(run_dir or Path("runs/toy"))
        return {**doc, "toy": True, "toy_shout": toy_shout}

    def render(self, doc: Mapping[str, Any]) -> list[Any]:
        line = f"toy backend: {doc.get('message', 'running')}; last plan {doc.get('plan')}"
        return [line.upper() if doc.get("toy_shout") else line]
