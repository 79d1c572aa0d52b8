"""What a cluster offers the Kubernetes backend, checked before its first apply: the nodes' allocatable CPU
(the largest pod they can hold) and a preflight of what the rendered objects reference (the namespace's
ServiceAccount, the model store's claim, enough cores for the budget)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from infadapter.backends.kubernetes.api import KubeApi, KubeError
from infadapter.core.profile import Profile
from infadapter.errors import BackendUnavailable
from infadapter.render import LABEL_VARIANT, RenderConfig, Toleration, largest_pod_cores, parse_cpu


def node_cpus(api: KubeApi) -> list[float]:
    """Allocatable CPU of each ready, schedulable node (KubeError when the nodes cannot be read)."""
    nodes = api.request("GET", "/api/v1/nodes", "list nodes") or {}
    return [parse_cpu(((n.get("status") or {}).get("allocatable") or {}).get("cpu"))
            for n in nodes.get("items", []) if _takes_pods(n)]


def _takes_pods(node: Mapping[str, Any]) -> bool:
    """A node that is Ready and not cordoned (the scheduler may place pods there)."""
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    conds = {c.get("type"): c.get("status") for c in (node.get("status") or {}).get("conditions", []) or []}
    return conds.get("Ready") == "True"


def _tolerated(taint: Mapping[str, Any], tolerations: Iterable[Toleration]) -> bool:
    if taint.get("effect") not in ("NoSchedule", "NoExecute"):
        return True  # PreferNoSchedule only steers
    for t in tolerations:
        if t.effect and t.effect != taint.get("effect"):
            continue
        if t.operator == "Exists" and (not t.key or t.key == taint.get("key")):
            return True
        if t.operator == "Equal" and t.key == taint.get("key") and t.value == str(taint.get("value", "")):
            return True
    return False


def free_cores(api: KubeApi, config: RenderConfig) -> float | None:
    """Cores the variant pods could still be given on the nodes they may use now: over the ready, schedulable
    nodes that match ``tfserving.node_selector`` and whose NoSchedule/NoExecute taints the pods tolerate,
    allocatable CPU less the CPU requested by every pod placed there (any namespace). None when the nodes
    or the pods of all namespaces cannot be read (a namespaced Role cannot)."""
    room = _room(api, config)
    return None if room is None else _free(room)


def _free(room: Mapping[str, float]) -> float:
    """The cores left on the nodes of ``room`` (an overcommitted node has none)."""
    return round(sum(max(r, 0.0) for r in room.values()), 9)


def _room(api: KubeApi, config: RenderConfig) -> dict[str, float] | None:
    """Per usable node (see :func:`free_cores`), allocatable CPU less the requests of the pods placed there: below
    zero where a pod's spec asks more than the node has (an in-place growth the kubelet deferred)."""
    try:
        nodes = (api.request("GET", "/api/v1/nodes", "list nodes") or {}).get("items", [])
        pods = (api.request("GET", "/api/v1/pods", "list pods of all namespaces") or {}).get("items", [])
    except KubeError:
        return None
    sel, tol = config.tfserving.node_selector, config.tfserving.tolerations
    room: dict[str, float] = {}
    for n in nodes:
        meta, spec, st = n.get("metadata") or {}, n.get("spec") or {}, n.get("status") or {}
        labels = meta.get("labels") or {}
        if not _takes_pods(n):
            continue
        if any(labels.get(k) != v for k, v in sel.items()):
            continue
        if not all(_tolerated(t, tol) for t in spec.get("taints", []) or []):
            continue
        room[meta.get("name", "")] = parse_cpu((st.get("allocatable") or {}).get("cpu"))
    for p in pods:
        node = (p.get("spec") or {}).get("nodeName")
        if node not in room or (p.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        if (p.get("metadata") or {}).get("deletionTimestamp"):
            continue  # going: its cores are free for what comes next
        room[node] -= pod_cpu_request(p)
    return room


def pod_cpu_request(pod: Mapping[str, Any]) -> float:
    """The CPU a pod's containers request (what the scheduler reserves for it)."""
    return sum(parse_cpu(((c.get("resources") or {}).get("requests") or {}).get("cpu"))
               for c in (pod.get("spec") or {}).get("containers", []) or [])


@dataclass(frozen=True)
class Placement:
    """Where the pods of some variants stand with the scheduler."""

    #: Variants with a pod the scheduler has not placed yet.
    unplaced: frozenset[str]
    #: Cores those pods request beyond the nodes' free cores (None: the nodes cannot be read).
    lacking: float | None
    #: Whether the smallest of those pods fits in the free cores now (the scheduler is about to place it).
    one_fits: bool
    #: Cores the placed pods' specs ask beyond their nodes (in-place growths the kubelet deferred); 0 when none.
    overcommitted: float = 0.0


def placement(api: KubeApi, config: RenderConfig, variants: Iterable[str]) -> Placement:
    """The pods of ``variants`` against the nodes' free cores (:func:`free_cores`)."""
    names = set(variants)
    unplaced: set[str] = set()
    requests: list[float] = []
    for p in api.list("Pod", config.model_server_selector()).get("items", []):
        meta = p.get("metadata") or {}
        name = (meta.get("labels") or {}).get(LABEL_VARIANT)
        if name in names and not (p.get("spec") or {}).get("nodeName") and not meta.get("deletionTimestamp"):
            unplaced.add(name)
            requests.append(pod_cpu_request(p))
    room = _room(api, config)
    if room is None:
        return Placement(frozenset(unplaced), None, False)
    free = _free(room)
    over = round(sum(max(-r, 0.0) for r in room.values()), 9)
    fits = bool(requests) and min(requests) <= free + 1e-9
    return Placement(frozenset(unplaced), max(0.0, round(sum(requests) - free, 9)), fits, over)


def cluster_max_pod_cores(api: KubeApi) -> tuple[float | None, str]:
    """The largest allocatable CPU among the ready, schedulable nodes, with a note; None when the
    nodes cannot be read (a namespaced Role cannot: then set ``tfserving.max_pod_cores``)."""
    try:
        sizes = node_cpus(api)
    except KubeError as exc:
        return None, f"cannot read the nodes ({exc}); set tfserving.max_pod_cores in --k8s-config to split pods"
    if not sizes:
        return None, "no ready, schedulable node found"
    return max(sizes), f"{len(sizes)} ready nodes, {sum(sizes):g} allocatable cores, the largest {max(sizes):g}"


def preflight(api: KubeApi, config: RenderConfig, profile: Profile) -> tuple[list[str], list[str]]:
    """Check what the rendered objects reference before the first apply: (errors, warnings).

    Errors: the model-store claim or the pods' ServiceAccount is missing. Warnings: the claim is
    not bound yet, the nodes hold fewer cores than the budget, something cannot be checked (403).
    """
    errors: list[str] = []
    warnings: list[str] = []
    ns = api.namespace

    try:
        if api.get("ServiceAccount", "default") is None:
            errors.append(
                f"namespace {ns} has no ServiceAccount 'default' (does the namespace exist? create it: "
                f"kubectl create namespace {ns})"
            )
    except KubeError as exc:
        warnings.append(f"cannot check the ServiceAccount 'default' ({exc})")
    store = config.model_store
    if store.pvc and not store.nfs_server:
        try:
            claim = api.get("PersistentVolumeClaim", store.pvc)
            if claim is None:
                errors.append(
                    f"model_store.pvc: the claim {store.pvc!r} does not exist in namespace {ns}: create it "
                    "(bound to the volume holding the models; see docs/kubernetes.md) or set "
                    "model_store.nfs_server in --k8s-config"
                )
            elif (claim.get("status") or {}).get("phase") != "Bound":
                phase = (claim.get("status") or {}).get("phase", "?")
                warnings.append(f"model_store.pvc: the claim {store.pvc!r} is {phase}, not Bound: pods wait for it")
        except KubeError as exc:
            warnings.append(f"cannot check the claim {store.pvc!r} ({exc})")
    with contextlib.suppress(KubeError):  # a Role cannot read nodes: nothing to compare then
        total = sum(node_cpus(api))
        if total < profile.budget_cores:
            warnings.append(
                f"the nodes hold {total:g} allocatable cores, less than the budget of "
                f"{profile.budget_cores:g}: plans near the budget will not fit"
            )
    return errors, warnings


def pod_size_to_plan(api: KubeApi, config: RenderConfig, profile: Profile) -> tuple[float | None, list[str]]:
    """Preflight (BackendUnavailable on an error), then the largest pod to plan with, and what was found.

    The largest pod is :func:`infadapter.render.largest_pod_cores` (the render config's
    ``tfserving.max_pod_cores``, else the profile's), else the largest node's allocatable CPU (None when the
    nodes cannot be read).
    """
    errors, warnings = preflight(api, config, profile)
    if errors:
        more = f" (and {len(errors) - 1} more)" if errors[1:] else ""
        raise BackendUnavailable(f"preflight: {errors[0]}{more}")
    messages = [f"preflight: {w}" for w in warnings]
    limit = largest_pod_cores(profile, config)
    if limit:
        where = "--k8s-config tfserving.max_pod_cores" if config.tfserving.max_pod_cores else "profile"
        messages.append(f"pods: at most {limit:g} cores each ({where})")
    else:
        limit, note = cluster_max_pod_cores(api)
        messages.append(f"pods: at most {limit:g} cores each (nodes: {note})" if limit else f"pods: {note}")
    return limit, messages
