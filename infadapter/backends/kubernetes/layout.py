"""The Kubernetes backend's pod layout: what the cluster holds per variant, and how a variant's cores become pods.

A variant runs as ``replicas x cores per pod``. :class:`Observed` reads a variant's layout back from its
Deployment and Pods; :func:`layout` chooses the next one from :func:`infadapter.render.variant_layout` (the
largest pod, ``tfserving.replicas``, whole millicores: the rule the renderer applies), keeping a running
variant's number of pods when its new cores still fit them; :func:`recovered_plan` reads the serving plan back
from the plan annotations.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from infadapter.backends.base import VariantState
from infadapter.backends.kubernetes.readiness import deployment_ready
from infadapter.core.plan import Allocation, Plan
from infadapter.core.profile import Profile
from infadapter.errors import InfAdapterError
from infadapter.render import (
    ANNOTATION_CORES,
    ANNOTATION_PLAN,
    LABEL_GENERATION,
    PodRules,
    RenderConfig,
    VariantSpec,
    largest_pod_cores,
    parse_cpu,
    variant_layout,
)

log = logging.getLogger(__name__)

CONTAINER = "tfserving"


@dataclass
class Observed:
    """One variant as read from the cluster."""

    name: str
    deployment: dict[str, Any]
    pods: list[dict[str, Any]] = field(default_factory=list)

    @property
    def generation(self) -> int:
        try:
            return int(self.deployment["metadata"].get("labels", {}).get(LABEL_GENERATION, "0"))
        except ValueError:
            return 0

    @property
    def template_cores(self) -> float:
        return container_cpu(self.deployment["spec"]["template"]["spec"])

    @property
    def pod_cores(self) -> list[float]:
        """Cores each live pod is meant to have (pod spec; the kubelet converges to it)."""
        return [container_cpu(p["spec"]) for p in self.pods if not p["metadata"].get("deletionTimestamp")]

    @property
    def actual_cores(self) -> list[float]:
        """Cores each pod runs with now (status.containerStatuses[].resources where reported)."""
        out = []
        for p in self.pods:
            for cs in p.get("status", {}).get("containerStatuses", []) or []:
                if cs.get("name") == CONTAINER and resources_cpu(cs.get("resources")):
                    out.append(resources_cpu(cs.get("resources")))
                    break
            else:
                out.append(container_cpu(p["spec"]))
        return out

    @property
    def replicas(self) -> int:
        return int(self.deployment["spec"].get("replicas", 1))

    def variant_state(self, url: str) -> VariantState:
        """What ``state()`` reports of it: ready replicas, cores per pod as they run, planned and template cores."""
        st = self.deployment.get("status") or {}
        actual = self.actual_cores
        annotated = self.deployment["metadata"].get("annotations", {}).get(ANNOTATION_CORES, "?")
        detail = (
            f"ready {int(st.get('readyReplicas', 0))}/{self.replicas}; cores per pod "
            f"{', '.join(f'{c:g}' for c in actual) or '-'} (planned {annotated}, template "
            f"{self.template_cores:g}); generation {self.generation}"
        )
        # Serving (not crashed) while one replica is ready: a rollout in progress, or a status the
        # controllers have not refreshed yet after an API server restart, is no crash.
        return VariantState(self.name, sum(actual), int(st.get("readyReplicas", 0)) >= 1, url, detail)

    @property
    def per_pod(self) -> float:
        """Cores each pod is set to (the template when no pod exists); -1 when pods disagree."""
        pods = self.pod_cores
        if pods and all(abs(c - pods[0]) < 1e-9 for c in pods):
            return pods[0]
        if pods:
            return -1.0  # pods disagree (resize or rollout in progress): needs a change
        return self.template_cores

    @property
    def layout(self) -> tuple[int, float]:
        """(replicas, cores per pod) as the cluster holds them now."""
        return self.replicas, self.per_pod

    @property
    def cores(self) -> float:
        """The variant's cores in all: replicas x cores per pod; -1 while its pods disagree."""
        per_pod = self.per_pod
        return per_pod * self.replicas if per_pod > 0 else -1.0

    @property
    def ready(self) -> bool:
        return deployment_ready(self.deployment)


def resources_cpu(resources: Mapping[str, Any] | None) -> float:
    """The CPU of a container's ``resources`` (spec or status): its limit, else its request (a policy whose
    pods have no CPU limit, :class:`infadapter.render.PodRules`); 0 without either."""
    res = resources or {}
    return parse_cpu((res.get("limits") or {}).get("cpu") or (res.get("requests") or {}).get("cpu"))


def container_cpu(pod_spec: Mapping[str, Any]) -> float:
    """The tfserving container's CPU (its limit, else its request) in a pod spec; 0 without one."""
    for c in pod_spec.get("containers", []):
        if c.get("name") == CONTAINER:
            return resources_cpu(c.get("resources"))
    return 0.0


def layout(cores: float, profile: Profile, config: RenderConfig, pod_limit_cores: float | None = None,
           now: tuple[int, float] | None = None, pods: PodRules | None = None) -> tuple[int, float]:
    """(replicas, cores per pod) for a variant of ``cores``: see :func:`infadapter.render.variant_layout`;
    a pod size the cluster refused (``pod_limit_cores``) caps it further (the largest pod is
    :func:`infadapter.render.largest_pod_cores`'s, the one rule render uses). A variant running as ``now``
    keeps its number of pods when its new cores still fit them: a resize in place, no new pods (its
    capacity may then differ slightly from the solver's layout, and its cores by under 1 millicore a
    pod; see docs/kubernetes.md). A policy that does not change in place (``pods``: HPA) always gets
    render's layout: replicas of its pod size."""
    pods = pods or PodRules()
    fresh = variant_layout(cores, profile, config, pod_limit_cores, pods.pod_cores)
    if not pods.in_place or now is None or now[0] < 1 or now[1] <= 0 or fresh[0] == now[0]:
        return fresh
    # Whole millicores per pod, rounded down: at most 1 millicore a pod below the plan, never above.
    k, per_pod, limit = now[0], round(cores * 1000) // now[0], largest_pod_cores(profile, config, pod_limit_cores)
    fits = limit is None or per_pod <= limit * 1000 + 1e-6
    if fits and per_pod > 0 and k >= config.tfserving.replicas:
        return k, per_pod / 1000
    return fresh


def recovered_plan(observed: Mapping[str, Observed], profile: Profile) -> tuple[Plan | None, int]:
    """The plan serving, read back from the newest plan annotation, cut to what exists.

    Returns (plan, newest generation). Variants that run but are missing from that plan
    (left over by an apply that died) appear with share 0 so the next apply deletes them.
    """
    labelled = {name: ob.generation for name, ob in observed.items()}
    newest, gen, top = None, 0, max(labelled.values(), default=0)
    for ob in sorted(observed.values(), key=lambda o: -o.generation):
        raw = ob.deployment["metadata"].get("annotations", {}).get(ANNOTATION_PLAN)
        try:
            data = json.loads(raw) if raw else None
            candidate = Plan.from_dict(data["plan"], origin=ANNOTATION_PLAN) if data else None
        except (ValueError, KeyError, TypeError, InfAdapterError):
            log.warning("ignoring an unreadable plan annotation on %s", ob.name)
            continue
        # Committed = stamped on every variant it lists; an apply that died before routing
        # left its plan only on the variants it created, so the plan before it still counts.
        if candidate is not None and all(labelled.get(n) == ob.generation for n in candidate.names):
            newest, gen = candidate, ob.generation
            break
    gen = max(gen, top)
    if not observed:
        return None, gen
    shares = newest.shares_by_name() if newest else {}
    allocs = []
    for name, ob in sorted(observed.items()):
        planned = newest.get(name) if newest else None
        cores = ob.cores if ob.cores > 0 else ob.template_cores * ob.replicas
        allocs.append(Allocation(name, cores, shares.get(name, 0.0), planned.capacity_rps if planned else 0.0))
    total = sum(a.share for a in allocs)
    if total <= 0:  # no usable annotation: spread evenly so the plan is well formed
        allocs = [Allocation(a.name, a.cores, 1.0 / len(allocs), a.capacity_rps) for a in allocs]
    elif abs(total - 1.0) > 1e-6:
        allocs = [Allocation(a.name, a.cores, a.share / total, a.capacity_rps) for a in allocs]
    load = newest.load_rps if newest else 0.0
    accuracy = profile.served_accuracy({a.name: a.share for a in allocs})
    return Plan(tuple(allocs), load, objective=newest.objective if newest else 0.0, accuracy=accuracy), gen


def with_template(spec: VariantSpec, cores: float) -> VariantSpec:
    """``spec`` with its pod template at ``cores``."""
    return replace(spec, template_cores=cores)


def with_layout(spec: VariantSpec, replicas: int, cores: float) -> VariantSpec:
    """``spec`` as ``replicas`` pods of ``cores``."""
    return replace(spec, replicas=replicas, template_cores=cores)


def pods_text(replicas: int, per_pod: float) -> str:
    """", as 2 pods of 6" when a variant runs as more than one pod."""
    return f" as {replicas} pods of {per_pod:g}" if replicas > 1 else ""


def same_layout(a: tuple[int, float], b: tuple[int, float]) -> bool:
    """Same number of pods of the same size."""
    return a[0] == b[0] and abs(a[1] - b[1]) < 1e-9


def shrinks(old: tuple[int, float], new: tuple[int, float]) -> bool:
    """Whether going from ``old`` to ``new`` (replicas, cores per pod) takes cores away in all: done after
    routing, so a variant never has fewer cores than the traffic it is still sent."""
    if old[1] <= 0:
        return False
    return new[0] * new[1] < old[0] * old[1] - 1e-9
