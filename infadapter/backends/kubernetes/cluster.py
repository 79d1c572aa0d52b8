"""What a cluster offers the Kubernetes backend, checked before its first apply: the nodes' allocatable CPU
(the largest pod they can hold) and a preflight of what the rendered objects reference (the namespace's
ServiceAccount, the model store's claim, enough cores for the budget)."""

from __future__ import annotations

import contextlib

from infadapter.backends.kubernetes.api import KubeApi, KubeError
from infadapter.core.profile import Profile
from infadapter.errors import BackendUnavailable
from infadapter.render import RenderConfig, largest_pod_cores, parse_cpu


def node_cpus(api: KubeApi) -> list[float]:
    """Allocatable CPU of each ready, schedulable node (KubeError when the nodes cannot be read)."""
    nodes = api.request("GET", "/api/v1/nodes", "list nodes") or {}
    sizes = []
    for n in nodes.get("items", []):
        if (n.get("spec") or {}).get("unschedulable"):
            continue
        conds = {c.get("type"): c.get("status") for c in (n.get("status") or {}).get("conditions", []) or []}
        if conds.get("Ready") == "True":
            sizes.append(parse_cpu(((n.get("status") or {}).get("allocatable") or {}).get("cpu")))
    return sizes


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
