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

The package splits the roles: :mod:`.api` (the API session), :mod:`.layout` (pods per variant, cores per pod,
the plan read back), :mod:`.readiness` (waiting for Deployments), :mod:`.resize` (in-place resize),
:mod:`.status` (``cli.py status``), :mod:`.setup` (the runner's preparation step), :mod:`.options` (flags).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from infadapter.backends.base import ApplyResult, BackendState, TargetsCallback, VariantState
from infadapter.backends.kubernetes import cluster
from infadapter.backends.kubernetes.api import KubeApi, KubeError, KubeOptions
from infadapter.backends.kubernetes.kubelets import KubeletWatch
from infadapter.backends.kubernetes.layout import (
    CONTAINER,
    Observed,
    layout,
    pods_text,
    recovered_plan,
    same_layout,
    shrinks,
    with_layout,
    with_template,
)
from infadapter.backends.kubernetes.readiness import NoRoom, wait_ready
from infadapter.backends.kubernetes.resize import InPlaceResize
from infadapter.core.plan import Allocation, Plan, empty_plan
from infadapter.core.profile import Profile
from infadapter.errors import InfAdapterError
from infadapter.render import (
    ANNOTATION_CORES,
    COMPONENT_AUTOSCALER,
    LABEL_COMPONENT,
    LABEL_VARIANT,
    Manifest,
    PodRules,
    RenderConfig,
    VariantSpec,
    cpu_quantity,
    largest_pod_cores,
    parse_cpu,
    render_autoscaler,
    render_routes,
    render_variant,
    variant_specs,
)

log = logging.getLogger(__name__)


class _CheckpointLost(Exception):
    """The recommender that ran before a restart overwrote the checkpoint written for the restarted one."""


class Router(Protocol):
    """What the backend needs of the dispatcher (``DispatcherClient`` has it)."""

    def set_backends(self, backends: Iterable[Mapping[str, Any]]) -> Any: ...


class KubernetesBackend:
    """Applies plans to a namespace of a Kubernetes cluster; see the module docstring."""

    name = "kubernetes"

    #: The kubelet restarts a killed container in its pod; the Deployment replaces a lost pod.
    restarts_crashed = True

    @property
    def in_place_resize(self) -> bool:
        """pods/resize is used unless turned off, found unsupported by the cluster, or the policy's changes are
        never in place (HPA: replicas, :class:`~infadapter.render.PodRules`)."""
        return self.pods.in_place and self.resizer.ok is not False

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

    def surge_room_cores(self) -> float | None:
        """Cores our variants and a transition's new ones may hold together now: what the variants hold (as last
        read back) plus the nodes' free cores (:func:`.cluster.free_cores`); None when the nodes cannot be read."""
        free = cluster.free_cores(self.api, self.config)
        if free is None:
            return None
        return round(free + sum(k * c for k, c in self._layouts.values() if k > 0 and c > 0), 9)

    @classmethod
    def from_options(cls, profile: Profile, **options: Any) -> KubernetesBackend:
        """The backend as ``cli.py adapt --backend kubernetes`` builds it from its flags (:func:`make_backend`)."""
        return make_backend(profile, **options)

    def max_pod_cores(self) -> float | None:
        """The largest pod (:func:`infadapter.render.largest_pod_cores`), capped by a size the cluster refused."""
        return largest_pod_cores(self.profile, self.config, self.pod_limit_cores)

    @property
    def options(self) -> KubeOptions:
        """Connection and timing (the API session's: one copy; setting it changes the session's)."""
        return self.api.options

    @options.setter
    def options(self, value: KubeOptions) -> None:
        self.api.options = value

    def __init__(
        self,
        profile: Profile,
        config: RenderConfig | None = None,
        options: KubeOptions | None = None,
        router: Router | None = None,
        api_client: Any = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        pods: PodRules | None = None,
    ) -> None:
        self.profile = profile
        #: The running policy's pod rules (its registry entry's ``in_place``/``cpu_limited``, HPA's pod size).
        self.pods = pods or PodRules()
        options = options or KubeOptions()
        config = config or RenderConfig()
        if options.namespace and options.namespace != config.namespace:
            config = config.model_copy(update={"namespace": options.namespace})
        self.config = config
        self.namespace = config.namespace
        self.router = router
        #: A variant's URL as the dispatcher reaches it (its Service's DNS name; ``--traffic live`` on a cluster
        #: without DNS: its ClusterIP, :func:`.live.service_ip_url`).
        self.variant_url: Callable[[str], str] = config.variant_url
        self._clock = clock
        #: The API session (retries, server-side apply); its ``sleep`` paces retries and waits alike.
        self.api = KubeApi(options, config.namespace, api_client, sleep)
        #: The kubelets of the nodes our pods run on, by their leases (:mod:`.kubelets`).
        self.kubelets = KubeletWatch(clock)
        self.resizer = InPlaceResize(self.api, clock, self.kubelets)
        self._serving: Plan | None = None
        #: Pod size the cluster refused to resize to (403 / Infeasible): later layouts stay under it.
        self.pod_limit_cores: float | None = None
        self._layouts: dict[str, tuple[int, float]] = {}  # (replicas, cores per pod) as last read back

    # -- reading back -------------------------------------------------------------------------------
    def observe(self) -> dict[str, Observed]:
        """Our variants as they run now: Deployments and their Pods, by variant label."""
        sel = self.config.model_server_selector()
        deps = self.api.list("Deployment", sel).get("items", [])
        pods = self.api.list("Pod", sel).get("items", [])
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

    # -- Backend protocol ---------------------------------------------------------------------------
    def state(self) -> BackendState:
        """Planned vs actual per variant: ready replicas and cores per pod, read from the cluster."""
        try:
            observed = self.observe()
            nodes = {p["spec"]["nodeName"] for ob in observed.values() for p in ob.pods
                     if (p.get("spec") or {}).get("nodeName")}
            silent, since = self.kubelets.silent(self.api, nodes)
        except KubeError as exc:
            # Not an empty namespace: what runs is unknown (the loop holds instead of calling it a crash).
            self.kubelets.forget()
            where = f"API server {self.api.host or '?'}"
            return BackendState(plan=self._serving, healthy=False, messages=(str(exc),),
                                unreachable=f"{where}: {exc}", unreachable_since_s=self.api.down_since)
        if silent:  # its pods serve on, but nothing asked of that node would happen: hold, as in an outage
            return BackendState(plan=self._serving, healthy=False, messages=(silent,), unreachable=silent,
                                unreachable_since_s=since)
        plan, gen = recovered_plan(observed, self.profile)
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
            # Serving (not crashed) while one replica is ready: a rollout in progress, or a status the
            # controllers have not refreshed yet after an API server restart, is no crash.
            serving = int(st.get("readyReplicas", 0)) >= 1
            variants.append(VariantState(name, cores, serving, self.config.variant_url(name), detail))
            if not ob.ready:
                messages.append(f"{name}: not ready ({detail})")
        # An upstream autoscaler changes the cores behind our back: what runs is what the pods hold.
        if self._serving is not None and self.pods.autoscaler is None:
            plan = self._serving if set(self._serving.names) == set(observed) else plan
        messages.insert(0, f"namespace {self.namespace}; plan generation {gen}")
        return BackendState(tuple(variants), plan, healthy=all(ob.ready for ob in observed.values()),
                            messages=tuple(messages))

    # -- what the cluster offers (:mod:`.cluster`) ---------------------------------------------------
    def node_cpus(self) -> list[float]:
        """Allocatable CPU of each ready, schedulable node (KubeError when the nodes cannot be read)."""
        return cluster.node_cpus(self.api)

    def cluster_max_pod_cores(self) -> tuple[float | None, str]:
        """The largest allocatable CPU among the ready, schedulable nodes, with a note (see :mod:`.cluster`)."""
        return cluster.cluster_max_pod_cores(self.api)

    def preflight(self) -> tuple[list[str], list[str]]:
        """(errors, warnings) about what the rendered objects reference (see :func:`.cluster.preflight`)."""
        return cluster.preflight(self.api, self.config, self.profile)

    def size_pods(self) -> tuple[Profile, list[str]]:
        """Preflight the namespace and size pods to the nodes (:func:`.cluster.pod_size_to_plan`); returns the profile
        the solver plans with (its ``max_pod_cores`` set: variants planned as replicas x cores per pod) and what
        was found. BackendUnavailable when the preflight finds an error."""
        limit, messages = cluster.pod_size_to_plan(self.api, self.config, self.profile)
        if limit and limit != self.profile.max_pod_cores:
            self.profile = self.profile.with_overrides(max_pod_cores=limit)
        return self.profile, messages

    def health(self) -> bool:
        """True when the API server answers ``/version``."""
        try:
            self.resizer.version()
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
        self.api.close()

    def teardown(self) -> list[str]:
        """Delete every variant object this instance manages (not the platform); returns what went."""
        gone = []
        for name in sorted(self.observe()):
            gone += self._delete_variant(name)
        # An upstream baseline's HPA or VPA (and the VPA's checkpoint), whichever policy left them.
        labels = {**self.config.common_labels(), LABEL_COMPONENT: COMPONENT_AUTOSCALER}
        for kind in ("HorizontalPodAutoscaler", "VerticalPodAutoscaler", "VerticalPodAutoscalerCheckpoint"):
            try:
                items = self.api.list(kind, labels).get("items", [])
            except KubeError as exc:
                if exc.status == 404:  # the VPA's CRDs are not installed: nothing of theirs to delete
                    continue
                raise
            for item in items:
                if self.api.delete(kind, item["metadata"]["name"]):
                    gone.append(f"{kind}/{item['metadata']['name']}")
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
        recovered, gen = recovered_plan(observed, self.profile)
        if self._serving is None and recovered is not None:
            actions.append(f"recovered generation {gen} from the cluster: {', '.join(sorted(observed))}")
        previous = self._serving or recovered or empty_plan()
        generation = gen + 1

        wanted = plan.cores_by_name()
        layout = {n: self._layout(c, observed[n].layout if n in observed else None) for n, c in wanted.items()}
        creates = [n for n in wanted if n not in observed]
        deletes = [n for n in observed if n not in wanted]
        changes = [n for n in wanted if n in observed and not same_layout(observed[n].layout, layout[n])]
        # Shrink after routing: fewer replicas of the same size, or smaller pods in place.
        shrink = [n for n in changes if shrinks(observed[n].layout, layout[n])]
        grow = [n for n in changes if n not in shrink]
        unready = [n for n in wanted if n in observed and n not in changes and not observed[n].ready]
        reweight = previous.shares_by_name() != plan.shares_by_name()
        if not (creates or deletes or changes or unready or reweight):
            return self._unchanged(plan, previous, actions)

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
                actions.append(f"create {name} ({cpu_quantity(wanted[name])} cores{pods_text(k, c)})")
            giving_up = bool(shrink or deletes)
            deferred: dict[str, NoRoom] = {}  # in-place growth the node defers for want of cores
            for name in grow:
                try:
                    actions.append(self._change(observed[name], specs, plan, generation, rolled, waits, giving_up))
                except NoRoom as exc:
                    deferred[name] = exc  # the resize stays requested: the kubelet applies it once cores free
            if deferred:
                raise next(iter(deferred.values()))
            self._wait(actions, [*creates, *waits, *unready], no_room=giving_up)
        except NoRoom as exc:
            # Make-before-break needs cores the nodes do not have: free the ones this plan gives up first.
            changed = {*created, *rolled, *grow}
            return self._make_room(exc, plan, previous, observed, generation, specs, (shrink, deletes),
                                   [*creates, *waits, *unready], deferred, changed, actions)
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
        if self.pods.autoscaler is not None and creates:
            try:
                actions.append(self._apply_autoscaler())
            except KubeError as exc:
                return ApplyResult(plan, tuple(actions), ok=False, error=str(exc), retry_after_s=5.0)
        return self._shrink_and_delete(plan, generation, [observed[n] for n in shrink], specs, deletes, actions)

    def warm_start(self, history: Any, restart: Callable[[], None], timeout_s: float,
                   attempts: int = 3) -> tuple[float | None, str]:
        """Start the upstream VPA warm: ``history`` (a :class:`~infadapter.core.vpa.VpaState` in Unix seconds)
        becomes its checkpoint, ``restart`` restarts the recommender (upstream loads checkpoints only when it
        starts), and the target is the one the restarted recommender computes from it (None: none within
        ``timeout_s``), with what was done.

        The recommender that runs until the restart rewrites every VPA's checkpoint once a loop from what it holds
        (here a few samples of the idle pod), and its own recommendation stays in the VPA's status until the next
        loop: a target read at once, or a checkpoint it overwrote just before it stopped, would be the cold one.
        So the target is read only after a later checkpoint holds at least our samples (the restarted recommender
        writes its checkpoints right after the VPAs' status, in the same loop); a later one with fewer means ours
        was overwritten, and the write and the restart are tried again."""
        a = self.pods.autoscaler
        assert a is not None and a.kind == "vpa"
        said = [self._apply_autoscaler()]
        for attempt in range(1, attempts + 1):
            written = self._write_checkpoint(history)
            restart()
            try:
                target = self._restarted_target(written, history.samples, timeout_s)
            except _CheckpointLost:
                continue
            said.append(f"its checkpoint holds {history.samples} CPU samples of the day before"
                        + (f" (written {attempt} times: the running recommender overwrote it before it stopped)"
                           if attempt > 1 else ""))
            return target, "; ".join(said)
        said.append(f"the running recommender overwrote its checkpoint before each of {attempts} restarts")
        return None, "; ".join(said)

    def _write_checkpoint(self, history: Any) -> str:
        """``history`` as the VPA's checkpoint of its one container; its resourceVersion (what a later write
        changes)."""
        from infadapter.core.vpa import checkpoint_status

        a = self.pods.autoscaler
        assert a is not None
        obj = self.config.object_name(a.variant)
        name = f"{obj}-{CONTAINER}"  # upstream's name: the VPA's, then the container's
        # The recommender rewrites its checkpoints: the one it wrote for an earlier VPA of this name goes first.
        self.api.delete("VerticalPodAutoscalerCheckpoint", name)
        # Not a template: a checkpoint is state the recommender owns and rewrites, not configuration.
        out = self.api.apply_object(Manifest(f"{obj}.checkpoint.yaml", "", {
            "apiVersion": "autoscaling.k8s.io/v1", "kind": "VerticalPodAutoscalerCheckpoint",
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": {**self.config.common_labels(), LABEL_COMPONENT: COMPONENT_AUTOSCALER,
                                    LABEL_VARIANT: a.variant}},
            "spec": {"vpaObjectName": obj, "containerName": CONTAINER},
            "status": checkpoint_status(history)}))
        return str((out.get("metadata") or {}).get("resourceVersion", ""))

    def _restarted_target(self, written: str, samples: int, timeout_s: float) -> float | None:
        """The VPA's CPU target once a checkpoint later than ``written`` holds at least ``samples`` samples (then
        the restarted recommender loaded ours and has written the status); None when none comes within
        ``timeout_s``. Raises :class:`_CheckpointLost` when a later one holds fewer."""
        a = self.pods.autoscaler
        assert a is not None
        obj = self.config.object_name(a.variant)
        deadline = self._clock() + timeout_s
        while True:
            cp = self.api.get("VerticalPodAutoscalerCheckpoint", f"{obj}-{CONTAINER}") or {}
            version = (cp.get("metadata") or {}).get("resourceVersion")
            if version and version != written:
                if int((cp.get("status") or {}).get("totalSamplesCount", 0)) < samples:
                    raise _CheckpointLost(version)
                vpa = self.api.get("VerticalPodAutoscaler", obj) or {}
                for rec in (vpa.get("status") or {}).get("recommendation", {}).get("containerRecommendations", []):
                    if rec.get("containerName") == CONTAINER and "cpu" in rec.get("target", {}):
                        return parse_cpu(rec["target"]["cpu"])
            if self._clock() >= deadline:
                return None
            self.api.sleep(1.0)

    def _apply_autoscaler(self) -> str:
        """The upstream policy's HPA or VPA beside its variant (:class:`~infadapter.render.UpstreamAutoscaler`):
        a VPA's CPU range is capped by the largest pod the nodes hold."""
        a = self.pods.autoscaler
        assert a is not None
        if a.kind == "vpa":
            top = self.max_pod_cores()
            a = replace(a, max_cores=min(a.max_cores, top) if top else a.max_cores)
        m = render_autoscaler(a, self.config, self.profile.service_of(a.variant) if self.profile.services else "")
        self.api.apply_object(m)
        return f"create {m.kind}/{m.name} (the cluster's {a.kind.upper()} decides from here)"

    def _unchanged(self, plan: Plan, previous: Plan, actions: list[str]) -> ApplyResult:
        """Nothing to change: route once after a restart (the dispatcher may have restarted too)."""
        if self._serving is None:
            try:
                actions.append(self._route(plan))
            except InfAdapterError as exc:
                return ApplyResult(previous, tuple(actions), ok=False, error=str(exc), retry_after_s=5.0)
        self._serving = plan
        return ApplyResult(plan, (*actions, "no change"), ok=True)

    def _shrink_and_delete(self, plan: Plan, generation: int, shrink: list[Observed], specs: dict[str, VariantSpec],
                           deletes: list[str], actions: list[str]) -> ApplyResult:
        """After routing: shrink (resize down, fewer replicas) and delete dropped variants."""
        try:
            shrunk: dict[str, tuple[int, float]] = {}
            later: list[str] = []
            for ob in shrink:
                actions.append(self._change(ob, specs, plan, generation, shrunk, later))
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

    def _make_room(self, exc: NoRoom, plan: Plan, previous: Plan, observed: Mapping[str, Observed], generation: int,
                   specs: dict[str, VariantSpec], giving_up: tuple[list[str], list[str]], pending: list[str],
                   deferred: Mapping[str, NoRoom], changed: set[str], actions: list[str]) -> ApplyResult:
        """The new pods do not fit beside the running ones: give cores up step by step, serving as much as the
        nodes allow meanwhile. Every variant that serves now, the plan's and the leaving ones, takes traffic
        in proportion to its capacity (:func:`gap_plan`). Then, least capacity per core first (a service's
        last serving variant last of all, and shrunk in place rather than deleted while it can be), one
        variant at a time is routed away from (a deleted one) or shrunk in place by what the waiting pods
        still lack (the rest of its shrink comes after the plan routes), and the waiting pods that found room
        are awaited and join the route before the next one goes. What turned out not to be needed for room is
        shrunk or deleted after the plan routes, as without a lack of room. The new pods stay: they are what
        the freed cores are for. A ``deferred`` in-place resize is left to the kubelet, which applies it once
        the cores free."""
        shrink, deletes = giving_up
        actions += [f"{e}; making room first" for e in dict.fromkeys([exc, *deferred.values()])]
        serving = {n: ob.cores for n, ob in observed.items() if ob.ready and n not in pending and ob.cores > 0}
        per_core = {n: self.profile.capacity_rps(n, c) / c for n, c in serving.items()}
        service = {a.name: a.service for a in (*previous.allocations, *plan.allocations)}

        def last_of_its_service(name: str) -> bool:
            """A delete that would leave its service (several services) with nothing serving until the new
            variants run: it goes after every shrink and every other delete."""
            return name in deletes and not any(m != name and m not in deletes and service.get(m) == service.get(name)
                                               for m in serving)

        order = sorted([*deletes, *shrink], key=lambda n: (last_of_its_service(n), per_core.get(n, 0.0)))
        waiting, done, gone = list(pending), [], []
        routed: Plan | None = None
        try:
            for i, name in enumerate(order):
                where = self._placement(waiting, settle=i > 0)
                lack = where.lacking
                placed = [n for n in waiting if n not in where.unplaced]
                if placed:  # room found: they serve before anything more goes
                    self._wait(actions, placed)
                    serving.update({n: specs[n].cores for n in placed})
                    waiting = [n for n in waiting if n in where.unplaced]
                if deferred and lack is not None:
                    # A deferred growth waits for cores as a pending pod does: what its spec asks beyond the node.
                    lack += where.overcommitted
                if (not waiting and not deferred) or (lack is not None and lack <= 1e-9):
                    break
                def route_first(cores: float, name: str = name) -> None:
                    # Its share shrinks before its cores do: the variants that serve take the rest first.
                    nonlocal routed
                    serving[name] = cores
                    routed = self._route_gap(plan, previous, serving, actions)

                if name in deletes and lack is not None and last_of_its_service(name):
                    # Its service keeps a route: shrunk in place, it goes once the plan routes.
                    part = self._shrink_leaving(observed[name], lack, route_first)
                    if part:
                        actions.append(part)
                        continue
                if name in deletes:  # routed away from before it goes
                    serving.pop(name, None)
                    routed = self._route_gap(plan, previous, serving, actions)
                    self._delete_variant(name)
                    gone.append(name)
                    actions.append(f"delete {name}")
                    continue
                part = self._shrink_part(observed[name], specs[name], lack, route_first) if lack is not None else ""
                if not part:
                    if name in serving:
                        route_first(specs[name].cores)
                    shrunk: dict[str, tuple[int, float]] = {}
                    later: list[str] = []
                    part = self._change(observed[name], specs, plan, generation, shrunk, later)
                    self._wait(actions, later)
                    done.append(name)
                actions.append(part)
            self._wait(actions, waiting)
            for name in deferred:
                ob, spec = observed[name], specs[name]
                pods = [p["metadata"]["name"] for p in ob.pods if not p["metadata"].get("deletionTimestamp")]
                how, refused = self.resizer.wait_done(name, pods, spec.template_cores, self.options.ready_timeout_s)
                if refused:
                    raise KubeError(f"resize of {name}: {refused}", 0, temporary=True)
                self._apply_variant(with_template(spec, ob.template_cores), plan, generation)  # annotations only
                actions.append(f"resize {name} -> {spec.cores:g} cores in place once room freed ({how})")
            for name in plan.names:  # the new generation on the variants this apply did not touch
                if name not in changed and name not in shrink:
                    self._apply_variant(specs[name], plan, generation)
            actions.append(self._route(plan, leaving=deletes))
            now = self.observe()
        except (KubeError, InfAdapterError) as err:
            # What was given up is gone; what serves keeps the gap's routes, and the next apply (a reconcile)
            # finishes the job once the waiting pods run.
            serving_plan = routed or previous
            self._serving = serving_plan
            return ApplyResult(serving_plan, tuple(actions), ok=False, error=f"making room: {err}",
                               retry_after_s=self._retry_after(err) if isinstance(err, KubeError) else 5.0)
        self._serving = plan
        rest = [now[n] for n in shrink if n not in done and n in now
                and not same_layout(now[n].layout, (specs[n].replicas, specs[n].template_cores))]
        return self._shrink_and_delete(plan, generation, rest, specs, [n for n in deletes if n not in gone], actions)

    def _placement(self, waiting: list[str], settle: bool) -> cluster.Placement:
        """:func:`.cluster.placement` of ``waiting``; with ``settle`` (cores were just given up), first give the
        scheduler up to ``no_room_s`` to place a pod that now fits."""
        deadline = self._clock() + (self.options.no_room_s if settle else 0.0)
        while True:
            where = cluster.placement(self.api, self.config, waiting)
            if len(where.unplaced) < len(waiting) or not where.one_fits or self._clock() >= deadline:
                return where
            self.api.sleep(0.2)

    def _route_gap(self, plan: Plan, previous: Plan, serving: Mapping[str, float], actions: list[str]) -> Plan | None:
        """Route :func:`gap_plan` over ``serving`` (once per change of it); the plan routed, or None."""
        gap = gap_plan(self.profile, plan, previous, serving)
        if gap is None:
            actions.append("nothing serves while the new variants wait for cores: requests fail until they are ready")
            return None
        actions.append(f"meanwhile {self._route(gap)}")
        return gap

    def _shrink_leaving(self, ob: Observed, lack: float, before: Callable[[float], None]) -> str:
        """Shrink a variant the plan drops in place by ``lack`` cores (down to one core step a pod), instead of
        deleting it first: what was done, or "" when it cannot be done in place."""
        return self._shrink_in_place(ob, lack, self.profile.core_step,
                                     "its service's last serving variant, deleted once the plan routes", before)

    def _shrink_part(self, ob: Observed, spec: VariantSpec, lack: float, before: Callable[[float], None]) -> str:
        """Shrink a variant in place by ``lack`` cores (whole core steps, never below its planned pods): what was
        done, or "" when it cannot be done in place."""
        return self._shrink_in_place(ob, lack, spec.template_cores, f"{spec.cores:g} once the plan routes", before,
                                     spec.replicas)

    def _shrink_in_place(self, ob: Observed, lack: float, floor_per_pod: float, then: str,
                         before: Callable[[float], None], replicas: int | None = None) -> str:
        """Resize ``ob``'s pods in place down by ``lack`` cores in whole core steps, to no less than
        ``floor_per_pod`` each (only when it runs ``replicas`` pods, if given); ``then`` ends the action.
        ``before(cores)`` runs first, with the variant's cores after the shrink: the route moves its traffic
        off before its cores go, never after (a shrink under its old share sheds what it can no longer serve)."""
        k0, c0 = ob.layout
        if not (self.pods.in_place and c0 > 0 and k0 > 0 and (replicas is None or k0 == replicas)):
            return ""
        step = self.profile.core_step
        per_pod = round(max(floor_per_pod, c0 - math.ceil(lack / k0 / step - 1e-9) * step), 3)
        if per_pod >= c0 - 1e-9:
            return ""
        before(k0 * per_pod)
        how, _refused = self.resizer.resize(ob, per_pod, self.pods.cpu_limited)
        if not how:
            return ""
        return f"resize {ob.name} {k0 * c0:g} -> {k0 * per_pod:g} cores in place to make room ({how}); {then}"

    def _layout(self, cores: float, now: tuple[int, float] | None = None) -> tuple[int, float]:
        """(replicas, cores per pod) for a variant of ``cores``: :func:`.layout.layout` with this backend's sizes."""
        return layout(cores, self.profile, self.config, self.pod_limit_cores, now, self.pods)

    def _specs(self, plan: Plan, template: Mapping[str, float]) -> list[VariantSpec]:
        return variant_specs(plan, self.profile, template, self.config, self.pod_limit_cores, self.pods)

    def _change(
        self,
        ob: Observed,
        specs: dict[str, VariantSpec],
        plan: Plan,
        generation: int,
        rolled: dict[str, tuple[int, float]],
        waits: list[str],
        no_room: bool = False,
    ) -> str:
        """Bring one variant to its planned layout; says how. Fills ``rolled`` (for a roll back) and
        ``waits`` (Deployments whose new pods must become ready)."""
        name = ob.name
        spec = specs[name]
        k0, c0 = ob.layout
        k, c = spec.replicas, spec.template_cores
        old = f"{ob.cores:g} cores{pods_text(k0, c0)}" if c0 > 0 else "pods of mixed sizes"
        new = f"{spec.cores:g} cores{pods_text(k, c)}"
        if c0 > 0 and abs(c0 - c) < 1e-9:  # same pod size: only the number of pods changes
            rolled[name] = (k0, ob.template_cores)
            self._apply_variant(with_template(spec, ob.template_cores), plan, generation)
            if k > k0:
                waits.append(name)
            return f"scale {name} {old} -> {new}"
        refused = ""
        if c0 > 0 and k == k0 and self.pods.in_place:  # same number of pods: resize each in place where it can
            how, refused = self.resizer.resize(ob, c, self.pods.cpu_limited,
                                               no_room_s=self.options.no_room_s if no_room else None)
            if how:
                self._apply_variant(with_template(spec, ob.template_cores), plan, generation)  # annotations only
                return f"resize {name} {old} -> {new} in place ({how})"
            if refused and self._refused_for_size(refused):
                # The node cannot hold a pod that size: cap pods at the size that runs, use more of them.
                self.pod_limit_cores = min(self.pod_limit_cores or c0, c0)
                k, c = self._layout(spec.cores)
                spec = specs[name] = with_layout(spec, k, c)
                new = f"{spec.cores:g} cores{pods_text(k, c)}"
        rolled[name] = (k0, ob.template_cores)
        self._apply_variant(spec, plan, generation)
        waits.append(name)
        why = (f"resize refused: {refused}" if refused else "pod layout changes" if k != k0
               else self.resizer.why_rolling() if self.pods.in_place else "the policy never resizes pods in place")
        return f"replace {name} {old} -> {new} by rolling replacement ({why})"

    @staticmethod
    def _refused_for_size(reason: str) -> bool:
        return ("403" in reason and "exceeded quota" not in reason) or "Infeasible" in reason

    def _wait(self, actions: list[str], names: list[str], no_room: bool = False) -> None:
        """Wait for ``names`` to be ready; with ``no_room`` (the plan gives cores up), NoRoom once their pods
        have waited ``no_room_s`` for cores that only the giving up would free."""
        if names:
            t0 = self._clock()
            wait_ready(self.api, self.config, names, self.options.ready_timeout_s, self._clock,
                       no_room_s=self.options.no_room_s if no_room else None, kubelets=self.kubelets)
            actions.append(f"ready: {', '.join(names)} after {self._clock() - t0:.1f}s")

    def _apply_variant(self, spec: VariantSpec, plan: Plan, generation: int) -> None:
        for m in render_variant(spec, plan, generation, self.config):
            self.api.apply_object(m)

    def _delete_variant(self, name: str) -> list[str]:
        obj = self.config.object_name(name)
        done = []
        kinds = [("Deployment", obj), ("Service", obj), ("ConfigMap", f"{obj}-config")]
        if self.pods.autoscaler is not None:  # first, so that it stops acting on the variant
            kinds.insert(0, (self.pods.autoscaler.api_kind, obj))
        for kind, n in kinds:
            if self.api.delete(kind, n):
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
                self._apply_variant(with_layout(spec, replicas, cores), keep, generation - 1)
                notes.append(f"rolled back: {name} to {replicas * cores:g} cores{pods_text(replicas, cores)}")
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
                    "url": self.variant_url(a.name),
                    "model": self.config.served_model(self.profile.variant(a.name).model or a.name, a.service),
                    "weight": a.share,
                    # with a standby in the plan, a variant's queue past the SLO spills there (docs/dispatcher.md)
                    "spill_at": self.profile.spill_bound(a.name, a.cores),
                    # several services: the dispatcher routes POST /v1/models/<service>:predict to its own
                    **({"service": a.service} if a.service else {}),
                }
                for a in plan.allocations
            ]
        )
        return "; ".join([*done, f"route: {weights}"])

    def _apply_route(self, shares: Mapping[str, float]) -> str:
        """Apply the HTTPRoute(s) of ``shares`` (one per service of a profile with services)."""
        done = []
        for m in render_routes(shares, self.profile, self.config):
            self.api.apply_object(m)
            w = ", ".join(f"{b['name']} {b['weight']}" for b in m.obj["spec"]["rules"][0]["backendRefs"])
            done.append(f"route: HTTPRoute/{m.name} weights {w}")
        return "; ".join(done)

    @staticmethod
    def _retry_after(exc: KubeError) -> float | None:
        return 10.0 if exc.temporary else None


def gap_plan(profile: Profile, plan: Plan, previous: Plan, serving: Mapping[str, float]) -> Plan | None:
    """What to route while new variants wait for cores: every variant of ``serving`` (name -> the cores it runs
    on now), of ``plan`` or leaving it, with shares proportional to its capacity on those cores, per service (a
    variant's service as ``plan`` or ``previous`` names it). None when nothing serves."""
    service = {a.name: a.service for a in (*previous.allocations, *plan.allocations)}
    caps = {n: max(profile.capacity_rps(n, c), 0.0) for n, c in serving.items() if n in service}
    allocations: list[Allocation] = []
    for svc in dict.fromkeys(service[n] for n in caps):
        names = [n for n in caps if service[n] == svc]
        total = sum(caps[n] for n in names)
        allocations += [Allocation(n, serving[n], caps[n] / total if total > 0 else 1.0 / len(names), caps[n], svc)
                        for n in names]
    if not allocations:
        return None
    return replace(plan, allocations=tuple(allocations), notes=(*plan.notes, "gap: while new variants wait for cores"))


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
    pods: PodRules | None = None,
) -> KubernetesBackend:
    """The backend as ``cli.py adapt --backend kubernetes`` builds it from its options."""
    from infadapter.render import load_render_config
    from infadapter.serving.dispatcher import DispatcherClient

    router = DispatcherClient(dispatcher_url, admin_token or "") if dispatcher_url else None
    options = KubeOptions(
        kubeconfig=kubeconfig, context=context, namespace=namespace, ready_timeout_s=ready_timeout_s, in_place=in_place
    )
    rc = config if config is not None else load_render_config(config_path)
    return KubernetesBackend(profile, rc, options, router=router, pods=pods)
