"""The one interface the control loop talks to.

Backends reconcile: ``apply(plan)`` compares the desired plan with what runs and is safe to call
twice. Make-before-break is the backend's job: a new or resized variant must be ready before the
router sends it traffic, and a removed one gets no new traffic before it stops. Everything a backend
creates carries labels (or names) saying infadapter owns it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from infadapter.core.plan import Plan

log = logging.getLogger(__name__)

#: While new variants load, how often an apply asks ``abandon_when`` (seconds).
ABANDON_CHECK_S = 0.5


@dataclass(frozen=True)
class VariantState:
    """What actually runs for one variant."""

    name: str
    cores: float
    #: It answers requests (on Kubernetes: one replica is ready, even while a rollout is under way). A
    #: variant of the serving plan that is not ready has crashed (the loop routes around it).
    ready: bool
    endpoint: str = ""  # base URL of the model server (TF Serving REST), "" when unknown
    detail: str = ""  # e.g. "cgroup v1 cpu quota", "in-place resize", "rolling replacement"


@dataclass(frozen=True)
class BackendState:
    """The backend's view of the world; ``plan`` is the last plan it applied, if any."""

    variants: tuple[VariantState, ...] = ()
    plan: Plan | None = None
    healthy: bool = True
    messages: tuple[str, ...] = field(default=())
    #: Non-empty when what runs could not be read back (e.g. the API server does not answer): what could not
    #: be reached and why. Then ``variants`` is unknown, not empty: a server missing from it has not crashed.
    unreachable: str = ""
    #: With ``unreachable``: since when (Unix time) the backend has not answered, when it knows.
    unreachable_since_s: float | None = None


@dataclass(frozen=True)
class ApplyResult:
    """What apply did: the plan now serving (the old one when apply failed) and what happened."""

    serving: Plan
    actions: tuple[str, ...] = ()
    ok: bool = True
    error: str = ""
    retry_after_s: float | None = None  # temporary error: when to try again
    #: Why the apply stopped waiting for its new variants (its ``abandon_when`` said the plan was outgrown while
    #: they loaded): they are gone and the old plan serves; the loop decides again, no retry of this plan.
    abandoned: str = ""


class Abandoned(Exception):
    """``abandon_when`` gave a reason (the message) to stop waiting for a plan's new variants."""


def abandon_reason(check: Callable[[Plan], str] | None, plan: Plan | None) -> str:
    """``check``'s answer about ``plan`` while its new variants load ('' without one; a failing check never
    stops an apply)."""
    if check is None or plan is None:
        return ""
    try:
        return check(plan)
    except Exception as exc:
        log.warning("the check while new variants load failed (%s); waiting on", exc)
        return ""


#: Called with the model servers' scrape targets: variant -> ["host:port", ...].
TargetsCallback = Callable[[Mapping[str, Sequence[str]]], None]


class Backend(Protocol):
    """Applies plans; reports state; never decides."""

    name: str

    def state(self) -> BackendState:
        """What runs now (read back from the processes or the cluster, not from memory alone)."""
        ...

    #: True when ``apply`` changes a running variant's cores without a restart (no load time): the loop
    #: then grows running variants first while new ones load (``control.bridge_plan``).
    in_place_resize: bool

    #: True when the platform restarts a crashed server by itself (Kubernetes: the kubelet restarts the
    #: container, the Deployment replaces the pod): the loop then routes around it and keeps its cores, instead
    #: of giving them up and starting it again. The loop reads it with getattr (default False).
    restarts_crashed: bool

    def cpu_seconds(self) -> dict[str, float]:
        """Cumulative CPU demand in seconds per running variant (VPA's and HPA's usage signal); {} if unknown."""
        ...

    def in_place_max_cores(self) -> dict[str, float]:
        """Per running variant, the most cores ``apply`` can give it in place (absent: up to the budget)."""
        ...

    # Optional (the loop reads it with getattr, so older backends need not have it):
    # def surge_room_cores(self) -> float | None:
    #     """Cores the running variants and a transition's new ones may hold together now; None: not bounded
    #     here (new variants load beside the budget, as Kubernetes' maxSurge). The loop's growth in place
    #     while new variants load (``control.bridge_plan``) leaves the new variants that room."""

    # Optional (an attribute the loop sets when the backend has it):
    # abandon_when: Callable[[Plan], str] | None
    #     """Asked every half second or so with the plan being applied while its new variants load; a reason (not
    #     '') makes ``apply`` stop waiting, remove them and return the old plan with ``abandoned`` set."""

    def apply(self, plan: Plan) -> ApplyResult:
        """Reconcile to ``plan`` make-before-break, routing included; safe to call twice."""
        ...

    def health(self) -> bool:
        """True when the backend can be reached and its servers answer (the loop asks after each apply)."""
        ...

    def heal(self) -> str | None:
        """Repair what the backend can repair by itself (e.g. restart a router that died, with its routes);
        a message saying what it did, or None. The loop calls it before every check."""
        ...

    def watch_targets(self, callback: TargetsCallback) -> None:
        """Call ``callback`` with the scrape targets (variant -> ["host:port"]) now and whenever they change,
        for Prometheus file discovery; backends whose Prometheus discovers pods by itself never call it."""
        ...

    def stop(self) -> None:
        """Stop everything this backend started (servers, router); idempotent."""
        ...


class StatusCollector(Protocol):
    """What ``cli.py status --backend NAME`` asks a backend (one per entry of :data:`infadapter.backends.BACKENDS`)."""

    def collect(self, run_dir: Path | None, **options: Any) -> dict[str, Any]:
        """The status document (``--json`` prints it); ``run_dir`` None: the backend's default run folder;
        ``options``: the backend's own ``status`` flags. BackendUnavailable when what it reads is away."""
        ...

    def render(self, doc: Mapping[str, Any]) -> list[Any]:
        """The document as rich renderables (tables, lines), printed in order."""
        ...
