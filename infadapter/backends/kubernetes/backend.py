"""Kubernetes backend: TF Serving Deployments per variant, applied server-side, make-before-break.

``apply(plan)`` reconciles what runs in the namespace with the plan:

1. read back what runs (Deployments and Pods labelled as ours: variant, generation, plan annotation);
2. create the ConfigMap, Service and Deployment of each new variant (server-side apply, field manager
   ``infadapter``); resize changed variants: in place through ``pods/resize`` where the server
   supports it (Kubernetes 1.33+, detected from ``/version`` and from a 404 on the subresource),
   otherwise a rolling replacement of the Deployment (surge 1, unavailable 0);
3. wait, with a watch and a timeout, until every new or replaced Deployment is ready (TF Serving's
   readiness probe passes only after warm-up);
4. stamp the new generation and plan annotation on all variant objects, route (dispatcher weights),
   and only then delete the variants the plan dropped.

A failure before routing rolls back what this apply created or replaced and returns
``ok=False`` with the previous plan still serving. Conflicts (409), throttling (429), server errors
(5xx) and timeouts get bounded retries with exponential backoff; invalid objects (422) and
forbidden requests (403) fail at once with the server's message. The backend never decides.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from infadapter.backends.base import ApplyResult, BackendState, TargetsCallback, VariantState
from infadapter.core.plan import Allocation, Plan, empty_plan
from infadapter.core.profile import Profile
from infadapter.errors import BackendUnavailable, InfAdapterError
from infadapter.render import (
    ANNOTATION_CORES,
    ANNOTATION_PLAN,
    LABEL_GENERATION,
    LABEL_VARIANT,
    MANAGER,
    Manifest,
    RenderConfig,
    VariantSpec,
    cpu_quantity,
    largest_pod_cores,
    parse_cpu,
    render_route,
    render_variant,
    variant_layout,
    variant_specs,
)

log = logging.getLogger(__name__)

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/strategic-merge-patch+json"
#: Statuses worth retrying: conflict, throttling, server errors, gateway timeouts.
RETRY_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
#: In-place pod resize is beta and on by default from this version (KEP-1287).
RESIZE_MIN_VERSION = (1, 33)
CONTAINER = "tfserving"

_PATHS = {
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "Service": "/api/v1/namespaces/{ns}/services",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "Event": "/api/v1/namespaces/{ns}/events",
    "PersistentVolumeClaim": "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "HTTPRoute": "/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes",
}


class Router(Protocol):
    """What the backend needs of the dispatcher (``DispatcherClient`` has it)."""

    def set_backends(self, backends: Iterable[Mapping[str, Any]]) -> Any: ...


class KubeError(InfAdapterError):
    """A Kubernetes API call failed; ``temporary`` says whether trying later may help."""

    def __init__(self, message: str, status: int = 0, temporary: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.temporary = temporary


@dataclass(frozen=True)
class KubeOptions:
    """Connection and timing of the Kubernetes backend."""

    kubeconfig: str | None = None  # None: in-cluster if inside a pod, else ~/.kube/config
    context: str | None = None
    namespace: str | None = None  # overrides the render config's namespace
    ready_timeout_s: float = 600.0  # per apply: new variants must be ready by then
    resize_timeout_s: float = 60.0  # per in-place resize
    request_timeout_s: float = 30.0
    retries: int = 5  # attempts per API call, the first included
    backoff_s: float = 0.5  # first pause; doubles per retry
    backoff_max_s: float = 8.0
    in_place: str = "auto"  # auto | never: in-place resize where supported, or always roll

    def __post_init__(self) -> None:
        if self.in_place not in ("auto", "never"):
            raise ValueError(f"in_place must be 'auto' or 'never', got {self.in_place!r}")
        if self.retries < 1:
            raise ValueError(f"retries must be >= 1, got {self.retries}")


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
        return _container_cpu(self.deployment["spec"]["template"]["spec"])

    @property
    def pod_cores(self) -> list[float]:
        """Cores each live pod is meant to have (pod spec; the kubelet converges to it)."""
        return [_container_cpu(p["spec"]) for p in self.pods if not p["metadata"].get("deletionTimestamp")]

    @property
    def actual_cores(self) -> list[float]:
        """Cores each pod runs with now (status.containerStatuses[].resources where reported)."""
        out = []
        for p in self.pods:
            for cs in p.get("status", {}).get("containerStatuses", []) or []:
                if cs.get("name") == CONTAINER and (cs.get("resources") or {}).get("limits", {}).get("cpu"):
                    out.append(parse_cpu(cs["resources"]["limits"]["cpu"]))
                    break
            else:
                out.append(_container_cpu(p["spec"]))
        return out

    @property
    def replicas(self) -> int:
        return int(self.deployment["spec"].get("replicas", 1))

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


def deployment_ready(d: Mapping[str, Any]) -> bool:
    """The rollout finished and every replica is ready (what ``kubectl rollout status`` waits for)."""
    want = int(d.get("spec", {}).get("replicas", 1))
    st = d.get("status") or {}
    return (
        int(st.get("observedGeneration", 0)) >= int(d.get("metadata", {}).get("generation", 1))
        and int(st.get("updatedReplicas", 0)) >= want
        and int(st.get("replicas", 0)) == want
        and int(st.get("readyReplicas", 0)) >= want
        and int(st.get("availableReplicas", 0)) >= want
    )


def _progress_failed(d: Mapping[str, Any]) -> str:
    for cond in (d.get("status") or {}).get("conditions", []) or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return str(cond.get("message", "progress deadline exceeded"))
    return ""


def _replica_failure(d: Mapping[str, Any]) -> str:
    for cond in (d.get("status") or {}).get("conditions", []) or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return str(cond.get("message", cond.get("reason", "ReplicaFailure")))
    return ""


def _container_cpu(pod_spec: Mapping[str, Any]) -> float:
    for c in pod_spec.get("containers", []):
        if c.get("name") == CONTAINER:
            res = c.get("resources") or {}
            return parse_cpu((res.get("limits") or {}).get("cpu") or (res.get("requests") or {}).get("cpu"))
    return 0.0


def _selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


class KubernetesBackend:
    """Applies plans to a namespace of a Kubernetes cluster; see the module docstring."""

    name = "kubernetes"

    @property
    def in_place_resize(self) -> bool:
        """pods/resize is used unless turned off or found unsupported by the cluster."""
        return self._resize_ok is not False

    def cpu_seconds(self) -> dict[str, float]:
        """Not read from the cluster (metrics-server is the cluster's): VPA and HPA run as policies in the
        simulator and on the local backend."""
        return {}

    def in_place_max_cores(self) -> dict[str, float]:
        """Per running variant: its pods each grown to the largest pod size (as last read back)."""
        limit = self.max_pod_cores()
        if limit is None:
            return {}
        return {n: k * limit for n, (k, per_pod) in self._layouts.items() if k > 0 and per_pod > 0}

    @classmethod
    def from_options(cls, profile: Profile, **options: Any) -> KubernetesBackend:
        """The backend as ``cli.py adapt --backend kubernetes`` builds it from its flags (:func:`make_backend`)."""
        return make_backend(profile, **options)

    def max_pod_cores(self) -> float | None:
        """The largest pod: the render config's, else the profile's, capped by a size the cluster refused."""
        limit = largest_pod_cores(self.profile, self.config)
        if self.pod_limit_cores is not None:
            limit = min(limit, self.pod_limit_cores) if limit else self.pod_limit_cores
        return limit

    def __init__(
        self,
        profile: Profile,
        config: RenderConfig | None = None,
        options: KubeOptions | None = None,
        router: Router | None = None,
        api_client: Any = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.profile = profile
        self.options = options or KubeOptions()
        config = config or RenderConfig()
        if self.options.namespace and self.options.namespace != config.namespace:
            config = config.model_copy(update={"namespace": self.options.namespace})
        self.config = config
        self.namespace = config.namespace
        self.router = router
        self._sleep = sleep
        self._clock = clock
        self._api = api_client or _make_api_client(self.options)
        self._resize_ok: bool | None = None if self.options.in_place == "auto" else False
        self._server_version = ""
        self._resize_404 = False
        self._serving: Plan | None = None
        #: Pod size the cluster refused to resize to (403 / Infeasible): later layouts stay under it.
        self.pod_limit_cores: float | None = None
        self._layouts: dict[str, tuple[int, float]] = {}  # (replicas, cores per pod) as last read back

    # -- low-level API calls with retries ---------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        what: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        ok_statuses: tuple[int, ...] = (),
    ) -> dict[str, Any] | None:
        """One API call as parsed JSON; None for a status in ``ok_statuses`` (e.g. 404 on delete)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError as Urllib3Error

        delay = self.options.backoff_s
        for attempt in range(1, self.options.retries + 1):
            try:
                resp = self._api.call_api(
                    path,
                    method,
                    query_params=list((query or {}).items()),
                    header_params={"Accept": "application/json", "Content-Type": content_type},
                    body=body,
                    auth_settings=["BearerToken"],
                    _return_http_data_only=True,
                    _preload_content=False,
                    _request_timeout=self.options.request_timeout_s,
                )
                data = resp.data
                return json.loads(data) if data else {}
            except ApiException as exc:
                if exc.status in ok_statuses:
                    return None
                message = _api_message(exc)
                temporary = exc.status in RETRY_STATUSES
                error = KubeError(f"{what}: HTTP {exc.status} {message}", exc.status, temporary)
            except (Urllib3Error, OSError) as exc:
                error = KubeError(f"{what}: cannot reach the API server ({exc.__class__.__name__})", 0, True)
            if not error.temporary or attempt == self.options.retries:
                if error.temporary:
                    error = KubeError(f"{error} (gave up after {attempt} tries)", error.status, True)
                raise error
            log.info("%s; retry %d/%d in %.2fs", error, attempt, self.options.retries - 1, delay)
            self._sleep(delay)
            delay = min(delay * 2, self.options.backoff_max_s)
        raise AssertionError("unreachable")

    def _path(self, kind: str, name: str = "", sub: str = "") -> str:
        p = _PATHS[kind].format(ns=self.namespace)
        return p + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def _apply_object(self, m: Manifest) -> dict[str, Any]:
        """Server-side apply of one rendered object (field manager ``infadapter``, force)."""
        out = self._request(
            "PATCH",
            self._path(m.kind, m.name),
            f"apply {m.kind}/{m.name}",
            query={"fieldManager": MANAGER, "force": "true"},
            body=m.obj,
            content_type=APPLY_PATCH,
        )
        return out or {}

    def _delete(self, kind: str, name: str) -> bool:
        """Delete one object; False when it was already gone."""
        out = self._request(
            "DELETE",
            self._path(kind, name),
            f"delete {kind}/{name}",
            query={"propagationPolicy": "Background"},
            ok_statuses=(404,),
        )
        return out is not None

    def _list(self, kind: str, labels: Mapping[str, str]) -> dict[str, Any]:
        out = self._request("GET", self._path(kind), f"list {kind}s", query={"labelSelector": _selector(labels)})
        return out or {}

    # -- reading back -------------------------------------------------------------------------------
    def observe(self) -> dict[str, Observed]:
        """Our variants as they run now: Deployments and their Pods, by variant label."""
        sel = self.config.model_server_selector()
        deps = self._list("Deployment", sel).get("items", [])
        pods = self._list("Pod", sel).get("items", [])
        out: dict[str, Observed] = {}
        for d in deps:
            name = d["metadata"].get("labels", {}).get(LABEL_VARIANT)
            if name:
                out[name] = Observed(name, d)
        for p in pods:
            name = p["metadata"].get("labels", {}).get(LABEL_VARIANT)
            if name in out:
                out[name].pods.append(p)
        self._layouts = {n: ob.layout for n, ob in out.items()}
        return out

    def recovered_plan(self, observed: Mapping[str, Observed]) -> tuple[Plan | None, int]:
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
        accuracy = self.profile.served_accuracy({a.name: a.share for a in allocs})
        return Plan(tuple(allocs), load, objective=newest.objective if newest else 0.0, accuracy=accuracy), gen

    # -- Backend protocol ---------------------------------------------------------------------------
    def state(self) -> BackendState:
        """Planned vs actual per variant: ready replicas and cores per pod, read from the cluster."""
        try:
            observed = self.observe()
        except KubeError as exc:
            return BackendState(plan=self._serving, healthy=False, messages=(str(exc),))
        plan, gen = self.recovered_plan(observed)
        variants = []
        messages = []
        for name, ob in sorted(observed.items()):
            st = ob.deployment.get("status") or {}
            want = int(ob.deployment["spec"].get("replicas", 1))
            actual = ob.actual_cores
            cores = sum(actual)
            annotated = ob.deployment["metadata"].get("annotations", {}).get(ANNOTATION_CORES, "?")
            detail = (
                f"ready {int(st.get('readyReplicas', 0))}/{want}; cores per pod "
                f"{', '.join(f'{c:g}' for c in actual) or '-'} (planned {annotated}, template "
                f"{ob.template_cores:g}); generation {ob.generation}"
            )
            variants.append(VariantState(name, cores, ob.ready, self.config.variant_url(name), detail))
            if not ob.ready:
                messages.append(f"{name}: not ready ({detail})")
        if self._serving is not None:
            plan = self._serving if set(self._serving.names) == set(observed) else plan
        messages.insert(0, f"namespace {self.namespace}; plan generation {gen}")
        return BackendState(tuple(variants), plan, healthy=all(v.ready for v in variants), messages=tuple(messages))

    # -- what the cluster offers ------------------------------------------------------------------
    def node_cpus(self) -> list[float]:
        """Allocatable CPU of each ready, schedulable node (KubeError when the nodes cannot be read)."""
        nodes = self._request("GET", "/api/v1/nodes", "list nodes") or {}
        sizes = []
        for n in nodes.get("items", []):
            if (n.get("spec") or {}).get("unschedulable"):
                continue
            conds = {c.get("type"): c.get("status") for c in (n.get("status") or {}).get("conditions", []) or []}
            if conds.get("Ready") == "True":
                sizes.append(parse_cpu(((n.get("status") or {}).get("allocatable") or {}).get("cpu")))
        return sizes

    def cluster_max_pod_cores(self) -> tuple[float | None, str]:
        """The largest allocatable CPU among the ready, schedulable nodes, with a note; None when the
        nodes cannot be read (a namespaced Role cannot: then set ``tfserving.max_pod_cores``)."""
        try:
            sizes = self.node_cpus()
        except KubeError as exc:
            return None, f"cannot read the nodes ({exc}); set tfserving.max_pod_cores in --k8s-config to split pods"
        if not sizes:
            return None, "no ready, schedulable node found"
        return max(sizes), f"{len(sizes)} ready nodes, {sum(sizes):g} allocatable cores, the largest {max(sizes):g}"

    def preflight(self) -> tuple[list[str], list[str]]:
        """Check what the rendered objects reference before the first apply: (errors, warnings).

        Errors: the model-store claim or the pods' ServiceAccount is missing. Warnings: the claim is
        not bound yet, the nodes hold fewer cores than the budget, something cannot be checked (403).
        """
        errors: list[str] = []
        warnings: list[str] = []
        ns = self.namespace

        def get(kind: str, name: str) -> dict[str, Any] | None:
            return self._request("GET", self._path(kind, name), f"read {kind}/{name}", ok_statuses=(404,))

        try:
            if get("ServiceAccount", "default") is None:
                errors.append(
                    f"namespace {ns} has no ServiceAccount 'default' (does the namespace exist? create it: "
                    f"kubectl create namespace {ns})"
                )
        except KubeError as exc:
            warnings.append(f"cannot check the ServiceAccount 'default' ({exc})")
        store = self.config.model_store
        if store.pvc and not store.nfs_server:
            try:
                claim = get("PersistentVolumeClaim", store.pvc)
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
            total = sum(self.node_cpus())
            if total < self.profile.budget_cores:
                warnings.append(
                    f"the nodes hold {total:g} allocatable cores, less than the budget of "
                    f"{self.profile.budget_cores:g}: plans near the budget will not fit"
                )
        return errors, warnings

    def health(self) -> bool:
        """True when the API server answers ``/version``."""
        try:
            self._version()
            return True
        except KubeError:
            return False

    def heal(self) -> str | None:
        """The cluster repairs itself (Deployments restart their pods)."""
        return None

    def watch_targets(self, callback: TargetsCallback) -> None:
        """Prometheus finds the pods by itself (the PodMonitor of templates/k8s)."""

    def stop(self) -> None:
        """Leave the cluster as it is (a restarted adapter picks it up) and close connections."""
        close = getattr(self._api, "close", None)
        if close is not None:
            close()

    def teardown(self) -> list[str]:
        """Delete every variant object this instance manages (not the platform); returns what went."""
        gone = []
        for name in sorted(self.observe()):
            gone += self._delete_variant(name)
        self._serving = None
        return gone

    # -- apply ----------------------------------------------------------------------------------
    def apply(self, plan: Plan) -> ApplyResult:
        """Reconcile the namespace to ``plan``, make-before-break; safe to call twice.

        Each variant runs as ``replicas x cores per pod`` (:meth:`layout`). Order: create new variants,
        grow changed ones (in-place resize, more replicas, or a rolling replacement), wait until they
        are ready, stamp the generation, route, then shrink (resize down, fewer replicas) and delete
        dropped ones. Shrinking after routing means a variant never has fewer cores than the traffic
        it is still being sent. A resize the cluster refuses (403 from admission, or Infeasible /
        Deferred from the node) becomes a rolling replacement, with more and smaller pods when the
        node could not hold the pod, and the actions say so: never a retry of the same resize.
        """
        actions: list[str] = []
        try:
            observed = self.observe()
        except KubeError as exc:
            previous = self._serving or empty_plan()
            return ApplyResult(previous, (), ok=False, error=str(exc), retry_after_s=self._retry_after(exc))
        recovered, gen = self.recovered_plan(observed)
        if self._serving is None and recovered is not None:
            actions.append(f"recovered generation {gen} from the cluster: {', '.join(sorted(observed))}")
        previous = self._serving or recovered or empty_plan()
        generation = gen + 1

        wanted = plan.cores_by_name()
        layout = {n: self.layout(c, observed[n].layout if n in observed else None) for n, c in wanted.items()}
        creates = [n for n in wanted if n not in observed]
        deletes = [n for n in observed if n not in wanted]
        changes = [n for n in wanted if n in observed and not _same_layout(observed[n].layout, layout[n])]
        # Shrink after routing: fewer replicas of the same size, or smaller pods in place.
        shrink = [n for n in changes if _shrinks(observed[n].layout, layout[n])]
        grow = [n for n in changes if n not in shrink]
        unready = [n for n in wanted if n in observed and n not in changes and not observed[n].ready]
        reweight = previous.shares_by_name() != plan.shares_by_name()
        if not (creates or deletes or changes or unready or reweight):
            if self._serving is None:  # first apply after a restart: the dispatcher may have restarted too
                try:
                    actions.append(self._route(plan))
                except InfAdapterError as exc:
                    return ApplyResult(previous, tuple(actions), ok=False, error=str(exc), retry_after_s=5.0)
            self._serving = plan
            return ApplyResult(plan, (*actions, "no change"), ok=True)

        template = {n: ob.template_cores for n, ob in observed.items() if n in wanted and n not in changes}
        specs = {s.name: s for s in self._specs(plan, template)}
        for n, (k, c) in layout.items():  # the layout chosen above (kept pod counts included)
            specs[n] = replace(specs[n], replicas=k, template_cores=template.get(n, c))
        created: list[str] = []
        rolled: dict[str, tuple[int, float]] = {}  # variant -> (replicas, template cores) before this apply
        waits: list[str] = []
        try:
            for name in creates:
                self._apply_variant(specs[name], plan, generation)
                created.append(name)
                k, c = layout[name]
                actions.append(f"create {name} ({cpu_quantity(wanted[name])} cores{_pods(k, c)})")
            for name in grow:
                actions.append(self._change(observed[name], specs, plan, generation, rolled, waits))
            self._wait(actions, [*creates, *waits, *unready])
        except KubeError as exc:
            actions += self._roll_back(created, rolled, plan, previous, generation)
            return ApplyResult(previous, tuple(actions), ok=False, error=str(exc), retry_after_s=self._retry_after(exc))

        try:
            # The new generation goes on the other variants only once the new ones serve.
            for name in wanted:
                if name not in created and name not in rolled and name not in shrink and name not in grow:
                    self._apply_variant(specs[name], plan, generation)
            actions.append(self._route(plan, leaving=deletes))
        except (KubeError, InfAdapterError) as exc:
            # New variants are up but the dispatcher still routes the old plan; nothing was
            # deleted or shrunk, so the old plan keeps serving and the next apply finishes the job.
            return ApplyResult(previous, tuple(actions), ok=False, error=str(exc), retry_after_s=5.0)

        self._serving = plan
        try:
            shrunk: dict[str, tuple[int, float]] = {}
            later: list[str] = []
            for name in shrink:
                actions.append(self._change(observed[name], specs, plan, generation, shrunk, later))
            self._wait(actions, later)
            for name in deletes:
                self._delete_variant(name)
                actions.append(f"delete {name}")
            if deletes and self.config.router == "gateway":  # the weight-0 entries go with their Services
                actions.append(self._apply_route(plan.shares_by_name()))
        except KubeError as exc:
            # Routing has switched: the new shares serve, on at least the planned cores. A variant
            # that kept more cores, or one left over, gets fixed by the next apply (reconcile).
            return ApplyResult(
                plan, tuple(actions), ok=False, error=f"after routing: {exc}", retry_after_s=self._retry_after(exc)
            )
        return ApplyResult(plan, tuple(actions), ok=True)

    # -- pod layout -------------------------------------------------------------------------------
    def layout(self, cores: float, now: tuple[int, float] | None = None) -> tuple[int, float]:
        """(replicas, cores per pod) for a variant of ``cores``: see :func:`infadapter.render.variant_layout`;
        a pod size the cluster refused (``pod_limit_cores``) caps it further. A variant running as ``now``
        keeps its number of pods when its new cores still fit them: a resize in place, no new pods (its
        capacity may then differ slightly from the solver's layout, and its cores by under 1 millicore a
        pod; see docs/kubernetes.md)."""
        fresh = variant_layout(cores, self.profile, self.config, self.pod_limit_cores)
        if now is None or now[0] < 1 or now[1] <= 0 or fresh[0] == now[0]:
            return fresh
        # Whole millicores per pod, rounded down: at most 1 millicore a pod below the plan, never above.
        k, per_pod, limit = now[0], round(cores * 1000) // now[0], self.max_pod_cores()
        fits = limit is None or per_pod <= limit * 1000 + 1e-6
        if fits and per_pod > 0 and k >= self.config.tfserving.replicas:
            return k, per_pod / 1000
        return fresh

    def _specs(self, plan: Plan, template: Mapping[str, float]) -> list[VariantSpec]:
        return variant_specs(plan, self.profile, template, self.config, self.pod_limit_cores)

    def _change(
        self,
        ob: Observed,
        specs: dict[str, VariantSpec],
        plan: Plan,
        generation: int,
        rolled: dict[str, tuple[int, float]],
        waits: list[str],
    ) -> str:
        """Bring one variant to its planned layout; says how. Fills ``rolled`` (for a roll back) and
        ``waits`` (Deployments whose new pods must become ready)."""
        name = ob.name
        spec = specs[name]
        k0, c0 = ob.layout
        k, c = spec.replicas, spec.template_cores
        old = f"{ob.cores:g} cores{_pods(k0, c0)}" if c0 > 0 else "pods of mixed sizes"
        new = f"{spec.cores:g} cores{_pods(k, c)}"
        if c0 > 0 and abs(c0 - c) < 1e-9:  # same pod size: only the number of pods changes
            rolled[name] = (k0, ob.template_cores)
            self._apply_variant(_with_template(spec, ob.template_cores), plan, generation)
            if k > k0:
                waits.append(name)
            return f"scale {name} {old} -> {new}"
        refused = ""
        if c0 > 0 and k == k0:  # same number of pods: resize each in place where the cluster can
            how, refused = self._resize_in_place(ob, c)
            if how:
                self._apply_variant(_with_template(spec, ob.template_cores), plan, generation)  # annotations only
                return f"resize {name} {old} -> {new} in place ({how})"
            if refused and self._refused_for_size(refused):
                # The node cannot hold a pod that size: cap pods at the size that runs, use more of them.
                self.pod_limit_cores = min(self.pod_limit_cores or c0, c0)
                k, c = self.layout(spec.cores)
                spec = specs[name] = _with_layout(spec, k, c)
                new = f"{spec.cores:g} cores{_pods(k, c)}"
        rolled[name] = (k0, ob.template_cores)
        self._apply_variant(spec, plan, generation)
        waits.append(name)
        why = f"resize refused: {refused}" if refused else self._why_rolling() if k == k0 else "pod layout changes"
        return f"replace {name} {old} -> {new} by rolling replacement ({why})"

    @staticmethod
    def _refused_for_size(reason: str) -> bool:
        return ("403" in reason and "exceeded quota" not in reason) or "Infeasible" in reason

    def _wait(self, actions: list[str], names: list[str]) -> None:
        if names:
            t0 = self._clock()
            self.wait_ready(names, self.options.ready_timeout_s)
            actions.append(f"ready: {', '.join(names)} after {self._clock() - t0:.1f}s")

    def _apply_variant(self, spec: VariantSpec, plan: Plan, generation: int) -> None:
        for m in render_variant(spec, plan, generation, self.config):
            self._apply_object(m)

    def _delete_variant(self, name: str) -> list[str]:
        obj = self.config.object_name(name)
        done = []
        for kind, n in (("Deployment", obj), ("Service", obj), ("ConfigMap", f"{obj}-config")):
            if self._delete(kind, n):
                done.append(f"{kind}/{n}")
        return done

    def _roll_back(
        self,
        created: list[str],
        rolled: Mapping[str, tuple[int, float]],
        plan: Plan,
        previous: Plan,
        generation: int,
    ) -> list[str]:
        """Undo a failed apply: delete what it created, put changed Deployments back."""
        notes = []
        for name in created:
            try:
                self._delete_variant(name)
                notes.append(f"rolled back: deleted {name}")
            except KubeError as exc:
                notes.append(f"roll back of {name} failed ({exc}); the next apply deletes it")
        for name, (replicas, cores) in rolled.items():
            try:
                alloc = previous.get(name)
                keep = previous if alloc is not None else plan
                spec = next(s for s in self._specs(keep, {name: cores}) if s.name == name)
                self._apply_variant(_with_layout(spec, replicas, cores), keep, generation - 1)
                notes.append(f"rolled back: {name} to {replicas * cores:g} cores{_pods(replicas, cores)}")
            except KubeError as exc:
                notes.append(f"roll back of {name} failed ({exc})")
        return notes

    def _route(self, plan: Plan, leaving: Iterable[str] = ()) -> str:
        """Switch traffic to ``plan``'s shares: the HTTPRoute (router: gateway; variants ``leaving``
        stay listed with weight 0 until they are deleted) and/or the dispatcher."""
        weights = ", ".join(f"{a.name} {a.share:.2f}" for a in plan.allocations)
        done = []
        if self.config.router == "gateway":
            done.append(self._apply_route({**dict.fromkeys(leaving, 0.0), **plan.shares_by_name()}))
        if self.router is None:
            return "; ".join(done) or f"route skipped (no dispatcher configured): {weights}"
        self.router.set_backends(
            [
                {
                    "name": a.name,
                    "url": self.config.variant_url(a.name),
                    "model": self.config.served_model(self.profile.variant(a.name).model or a.name),
                    "weight": a.share,
                }
                for a in plan.allocations
            ]
        )
        return "; ".join([*done, f"route: {weights}"])

    def _apply_route(self, shares: Mapping[str, float]) -> str:
        m = render_route(shares, self.config)
        self._apply_object(m)
        w = ", ".join(f"{b['name']} {b['weight']}" for b in m.obj["spec"]["rules"][0]["backendRefs"])
        return f"route: HTTPRoute/{m.name} weights {w}"

    @staticmethod
    def _retry_after(exc: KubeError) -> float | None:
        return 10.0 if exc.temporary else None

    # -- readiness ------------------------------------------------------------------------------
    def wait_ready(self, names: Iterable[str], timeout_s: float) -> None:
        """Block until the Deployments of ``names`` are ready: one list, then a watch, until timeout."""
        from kubernetes.watch.watch import iter_resp_lines

        pending = {self.config.object_name(n): n for n in names}
        deadline = self._clock() + timeout_s
        last: dict[str, dict[str, Any]] = {}
        while True:
            listing = self._list("Deployment", self.config.model_server_selector())
            rv = listing.get("metadata", {}).get("resourceVersion", "")
            for d in listing.get("items", []):
                last[d["metadata"]["name"]] = d
            self._check_ready(pending, last)
            if not pending:
                return
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            query = {
                "labelSelector": _selector(self.config.model_server_selector()),
                "watch": "true",
                "resourceVersion": rv,
                "timeoutSeconds": max(1, int(remaining)),
                "allowWatchBookmarks": "false",
            }
            try:
                resp = self._api.call_api(
                    self._path("Deployment"),
                    "GET",
                    query_params=list(query.items()),
                    header_params={"Accept": "application/json"},
                    auth_settings=["BearerToken"],
                    _return_http_data_only=True,
                    _preload_content=False,
                    _request_timeout=remaining + 5,
                )
                try:
                    for line in iter_resp_lines(resp):
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":
                            break  # e.g. 410 Gone: list again
                        if event.get("type") in ("ADDED", "MODIFIED"):
                            last[obj["metadata"]["name"]] = obj
                            self._check_ready(pending, last)
                            if not pending:
                                return
                        if self._clock() >= deadline:
                            break
                finally:
                    resp.release_conn()
            except Exception as exc:  # a broken watch is not fatal: list again until the deadline
                log.info("watch ended: %s", exc)
                self._sleep(min(1.0, max(0.0, deadline - self._clock())))
            if self._clock() >= deadline:
                break
        detail = "; ".join(f"{n}: {_status_line(last.get(obj))}{self._explain(n)}" for obj, n in pending.items())
        raise KubeError(f"not ready after {timeout_s:g}s: {detail}", 0, temporary=True)

    def _explain(self, variant: str) -> str:
        """Why a variant's pods are not ready, as the API server says: each unready pod's PodScheduled
        condition and the latest warning events of its pods and ReplicaSets (", ..." or "")."""
        notes: list[str] = []
        obj = self.config.object_name(variant)
        try:
            sel = {**self.config.model_server_selector(), LABEL_VARIANT: variant}
            for p in self._list("Pod", sel).get("items", []):
                conds = {c.get("type"): c for c in (p.get("status") or {}).get("conditions", []) or []}
                if (conds.get("Ready") or {}).get("status") == "True":
                    continue
                sched = conds.get("PodScheduled") or {}
                name = p["metadata"]["name"]
                if sched.get("status") == "False":
                    notes.append(f"pod {name} {sched.get('reason', 'unscheduled')}: {sched.get('message', '')}")
                else:
                    notes.append(f"pod {name} {(p.get('status') or {}).get('phase', '?')}, not ready")
            events = self._request("GET", self._path("Event"), "list events") or {}
            warnings = [
                e for e in events.get("items", [])
                if e.get("type") == "Warning" and str((e.get("involvedObject") or {}).get("name", "")).startswith(obj)
            ]
            warnings.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
            seen = set()
            for e in reversed(warnings):
                line = f"{e.get('reason')}: {e.get('message', '').strip()}"
                if line not in seen:
                    seen.add(line)
                    notes.append(f"event {(e.get('involvedObject') or {}).get('kind', '')} {line}")
                if len(seen) >= 3:
                    break
        except KubeError as exc:
            notes.append(f"(could not read pods/events: {exc})")
        return " [" + "; ".join(notes) + "]" if notes else ""

    @staticmethod
    def _check_ready(pending: dict[str, str], last: Mapping[str, dict[str, Any]]) -> None:
        for obj in list(pending):
            d = last.get(obj)
            if d is None:
                continue
            if deployment_ready(d):
                del pending[obj]
            elif _progress_failed(d):
                raise KubeError(f"{pending[obj]}: {_progress_failed(d)}", 0, temporary=True)
            elif _replica_failure(d):
                # The ReplicaSet cannot create pods (e.g. a ResourceQuota or LimitRange refuses them):
                # waiting longer does not help, so the apply fails now and rolls back.
                raise KubeError(f"{pending[obj]}: pods cannot be created: {_replica_failure(d)}", 403)

    # -- in-place resize ------------------------------------------------------------------------
    def _version(self) -> tuple[int, int]:
        v = self._request("GET", "/version", "read /version") or {}
        self._server_version = str(v.get("gitVersion", f"v{v.get('major', '?')}.{v.get('minor', '?')}"))
        try:
            return int(str(v.get("major", "0")).rstrip("+")), int(str(v.get("minor", "0")).rstrip("+"))
        except ValueError:
            return (0, 0)

    def resize_supported(self) -> bool:
        """Whether in-place CPU resize may be tried: server 1.33+ (and no 404 seen on the subresource)."""
        if self._resize_ok is None:
            self._resize_ok = self._version() >= RESIZE_MIN_VERSION
        return self._resize_ok

    def _why_rolling(self) -> str:
        if self.options.in_place == "never":
            return "in-place resize disabled"
        if self._resize_404:
            return f"server {self._server_version or '?'} answered 404 on pods/resize"
        if self._server_version:
            return f"server {self._server_version} has no in-place resize"
        return "in-place resize not possible"

    def _resize_in_place(self, ob: Observed, cores: float) -> tuple[str, str]:
        """Resize every pod of a variant to ``cores`` through ``pods/resize``.

        Returns (how, refused): ``how`` says what was done ("" when it must roll instead); ``refused``
        is the cluster's reason when it refused (403 from admission such as PodResizeValidator or a
        ResourceQuota, 422, or the node's PodResizePending Infeasible, or Deferred past the resize
        timeout), "" otherwise.
        """
        if not self.resize_supported() or not ob.pods:
            return "", ""
        q = cpu_quantity(cores)
        body = {
            "spec": {"containers": [{"name": CONTAINER, "resources": {"requests": {"cpu": q}, "limits": {"cpu": q}}}]}
        }
        names = [p["metadata"]["name"] for p in ob.pods if not p["metadata"].get("deletionTimestamp")]
        for pod in names:
            try:
                self._request(
                    "PATCH", self._path("Pod", pod, "resize"), f"resize pod {pod}", body=body, content_type=MERGE_PATCH
                )
            except KubeError as exc:
                if exc.status in (403, 422):
                    log.warning("%s: falling back to a rolling replacement", exc)
                    return "", str(exc)
                if exc.status not in (404, 405):
                    raise
                if "could not find the requested resource" in str(exc) or exc.status == 405:
                    # No such subresource: the feature gate is off or the server is older than it says.
                    self._resize_ok = False
                    self._resize_404 = True
                return "", ""  # the pod went away meanwhile: a rolling replacement is the safe way
        deadline = self._clock() + self.options.resize_timeout_s
        while True:
            pending, deferred = [], ""
            for pod in names:
                p = self._request("GET", self._path("Pod", pod), f"read pod {pod}") or {}
                verdict, why = _resize_status(p, cores)
                if verdict == "infeasible":
                    return "", f"pod {pod}: PodResizePending Infeasible ({why})"
                if verdict == "deferred":
                    deferred = f"pod {pod}: PodResizePending Deferred ({why})"
                if verdict != "done":
                    pending.append(pod)
            if not pending:
                return f"pods/resize on {len(names)} pod{'s' if len(names) > 1 else ''}", ""
            if self._clock() >= deadline:
                if deferred:
                    return "", f"{deferred} for {self.options.resize_timeout_s:g}s"
                raise KubeError(f"in-place resize of {ob.name} not done after {self.options.resize_timeout_s:g}s")
            self._sleep(0.2)


def _resize_status(pod: Mapping[str, Any], cores: float) -> tuple[str, str]:
    """('done' | 'pending' | 'deferred' | 'infeasible', the condition's message) for a pod asked to run
    with ``cores``."""
    conditions = (pod.get("status") or {}).get("conditions", []) or []
    for cond in conditions:
        if cond.get("type") == "PodResizePending" and cond.get("reason") in ("Infeasible", "Deferred"):
            return str(cond["reason"]).lower(), str(cond.get("message", ""))
    for cs in (pod.get("status") or {}).get("containerStatuses", []) or []:
        if cs.get("name") == CONTAINER:
            cpu = ((cs.get("resources") or {}).get("limits") or {}).get("cpu")
            if cpu is not None and abs(parse_cpu(cpu) - cores) < 1e-9:
                busy = any(c.get("type") in ("PodResizePending", "PodResizeInProgress") for c in conditions)
                return ("pending" if busy else "done"), ""
    return "pending", ""


def _status_line(d: Mapping[str, Any] | None) -> str:
    if d is None:
        return "not found"
    st = d.get("status") or {}
    return (
        f"ready {st.get('readyReplicas', 0)}/{d.get('spec', {}).get('replicas', 1)}, "
        f"updated {st.get('updatedReplicas', 0)}, observed generation {st.get('observedGeneration', 0)}"
        f"/{d.get('metadata', {}).get('generation', '?')}"
    )


def _api_message(exc: Any) -> str:
    try:
        body = json.loads(exc.body or "{}")
        return f"{body.get('reason', exc.reason)}: {body.get('message', '')}".rstrip(": ")
    except (ValueError, TypeError):
        return str(exc.reason)


def _with_template(spec: VariantSpec, cores: float) -> VariantSpec:
    return replace(spec, template_cores=cores)


def _with_layout(spec: VariantSpec, replicas: int, cores: float) -> VariantSpec:
    return replace(spec, replicas=replicas, template_cores=cores)


def _pods(replicas: int, per_pod: float) -> str:
    """", as 2 pods of 6" when a variant runs as more than one pod."""
    return f" as {replicas} pods of {per_pod:g}" if replicas > 1 else ""


def _same_layout(a: tuple[int, float], b: tuple[int, float]) -> bool:
    return a[0] == b[0] and abs(a[1] - b[1]) < 1e-9


def _shrinks(old: tuple[int, float], new: tuple[int, float]) -> bool:
    """Whether going from ``old`` to ``new`` (replicas, cores per pod) takes cores away in all: done after
    routing, so a variant never has fewer cores than the traffic it is still sent."""
    if old[1] <= 0:
        return False
    return new[0] * new[1] < old[0] * old[1] - 1e-9


def _make_api_client(options: KubeOptions) -> Any:
    """An ApiClient from a kubeconfig, or in-cluster credentials; no global client state."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        if options.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            cfg = client.Configuration()
            config.load_incluster_config(client_configuration=cfg)
            return client.ApiClient(cfg)
        return config.new_client_from_config(
            config_file=options.kubeconfig, context=options.context, persist_config=False
        )
    except (ConfigException, OSError, TypeError) as exc:
        where = options.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise BackendUnavailable(
            f"--kubeconfig: cannot load Kubernetes credentials from {where} ({exc}); pass --kubeconfig FILE "
            "or run inside the cluster with a ServiceAccount"
        ) from None


def make_backend(
    profile: Profile,
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    namespace: str | None = None,
    config_path: str | None = None,
    dispatcher_url: str | None = None,
    admin_token: str | None = None,
    ready_timeout_s: float = 600.0,
    in_place: str = "auto",
    config: RenderConfig | None = None,
) -> KubernetesBackend:
    """The backend as ``cli.py adapt --backend kubernetes`` builds it from its options."""
    from infadapter.render import load_render_config
    from infadapter.serving.dispatcher import DispatcherClient

    router = DispatcherClient(dispatcher_url, admin_token or "") if dispatcher_url else None
    options = KubeOptions(
        kubeconfig=kubeconfig, context=context, namespace=namespace, ready_timeout_s=ready_timeout_s, in_place=in_place
    )
    rc = config if config is not None else load_render_config(config_path)
    return KubernetesBackend(profile, rc, options, router=router)
