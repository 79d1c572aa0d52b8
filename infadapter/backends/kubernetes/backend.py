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
:mod:`.status` (``cli.py status``), :mod:`.setup` (the runner's preparation step), :mod:`.options` (flags);
the backend's own steps are mixed in from :mod:`.changes` (one variant to its new layout, and back),
:mod:`.room` (making room for pods that wait for cores), :mod:`.routing` (the plan's shares to the dispatcher
or the Gateway API) and :mod:`.upstream` (the cluster's own HPA and VPA).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from infadapter.backends.base import Abandoned, ApplyResult, BackendState, TargetsCallback, abandon_reason
from infadapter.backends.kubernetes import cluster
from infadapter.backends.kubernetes.api import KubeApi, KubeError, KubeOptions
from infadapter.backends.kubernetes.changes import VariantChanges
from infadapter.backends.kubernetes.kubelets import KubeletWatch
from infadapter.backends.kubernetes.layout import (
    Observed,
    layout,
    pods_text,
    recovered_plan,
    same_layout,
    shrinks,
)
from infadapter.backends.kubernetes.readiness import NoRoom, wait_ready
from infadapter.backends.kubernetes.resize import InPlaceResize
from infadapter.backends.kubernetes.room import RoomMaking
from infadapter.backends.kubernetes.routing import Router, Routing
from infadapter.backends.kubernetes.upstream import UpstreamAutoscalers
from infadapter.core.plan import Plan, empty_plan
from infadapter.core.profile import Profile
from infadapter.errors import InfAdapterError
from infadapter.render import (
    LABEL_VARIANT,
    PodRules,
    RenderConfig,
    VariantSpec,
    cpu_quantity,
    largest_pod_cores,
    render_variant,
    variant_specs,
)

log = logging.getLogger(__name__)


class KubernetesBackend(VariantChanges, UpstreamAutoscalers, RoomMaking, Routing):
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
        #: Asked with the plan being applied while its new pods start; a reason stops the wait (the loop sets it).
        self.abandon_when: Callable[[Plan], str] | None = None
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
            variants.append(ob.variant_state(self.config.variant_url(name)))
            if not ob.ready:
                messages.append(f"{name}: not ready ({variants[-1].detail})")
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
        gone += self._delete_autoscalers()  # an upstream baseline's, whichever policy left them
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
            loading = self.abandon_when is not None and bool(creates or waits)
            check = (lambda: abandon_reason(self.abandon_when, plan)) if loading else None
            self._wait(actions, [*creates, *waits, *unready], no_room=giving_up, abandon=check)
        except Abandoned as why:
            # Outgrown while its pods started: the old plan serves as it was (its cores too), the loop decides again.
            in_place = [observed[n] for n in grow if n not in rolled]
            actions += self._roll_back(created, rolled, plan, previous, generation, in_place)
            actions.append(f"abandoned: {why}")
            return ApplyResult(previous, tuple(actions), ok=False, error=f"abandoned: {why}", abandoned=str(why))
        except NoRoom as exc:
            # Make-before-break needs cores the nodes do not have: free the ones this plan gives up first.
            changed = {*created, *rolled, *grow}
            return self._make_room(exc, plan, previous, observed, generation, specs, (shrink, deletes),
                                   [*creates, *waits, *unready], deferred, changed, actions)
        except KubeError as exc:
            actions += self._roll_back(created, rolled, plan, previous, generation)
            return ApplyResult(previous, tuple(actions), ok=False, error=str(exc), retry_after_s=self._retry_after(exc))

        return self._route_then_give_up(plan, previous, generation, specs, {*created, *rolled, *shrink, *grow},
                                        bool(creates), [observed[n] for n in shrink], deletes, actions)

    def _route_then_give_up(self, plan: Plan, previous: Plan, generation: int, specs: dict[str, VariantSpec],
                            touched: set[str], created: bool, shrink: list[Observed], deletes: list[str],
                            actions: list[str]) -> ApplyResult:
        """Once the new variants serve: stamp the new generation on the variants not ``touched``, route, create the
        upstream policy's autoscaler if variants were ``created``, then shrink and delete."""
        try:
            for name in plan.names:
                if name not in touched:
                    self._apply_variant(specs[name], plan, generation)
            actions.append(self._route(plan, leaving=deletes))
        except (KubeError, InfAdapterError) as exc:
            # New variants are up but the dispatcher still routes the old plan; nothing was
            # deleted or shrunk, so the old plan keeps serving and the next apply finishes the job.
            return ApplyResult(previous, tuple(actions), ok=False, error=str(exc), retry_after_s=5.0)

        self._serving = plan
        if self.pods.autoscaler is not None and created:
            try:
                actions.append(self._apply_autoscaler())
            except KubeError as exc:
                return ApplyResult(plan, tuple(actions), ok=False, error=str(exc), retry_after_s=5.0)
        return self._shrink_and_delete(plan, generation, shrink, specs, deletes, actions)


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


    def _layout(self, cores: float, now: tuple[int, float] | None = None) -> tuple[int, float]:
        """(replicas, cores per pod) for a variant of ``cores``: :func:`.layout.layout` with this backend's sizes."""
        return layout(cores, self.profile, self.config, self.pod_limit_cores, now, self.pods)

    def _specs(self, plan: Plan, template: Mapping[str, float]) -> list[VariantSpec]:
        return variant_specs(plan, self.profile, template, self.config, self.pod_limit_cores, self.pods)


    def _wait(self, actions: list[str], names: list[str], no_room: bool = False,
              abandon: Callable[[], str] | None = None) -> None:
        """Wait for ``names`` to be ready; with ``no_room`` (the plan gives cores up), NoRoom once their pods
        have waited ``no_room_s`` for cores that only the giving up would free; ``abandon``: see wait_ready."""
        if names:
            t0 = self._clock()
            wait_ready(self.api, self.config, names, self.options.ready_timeout_s, self._clock,
                       no_room_s=self.options.no_room_s if no_room else None, kubelets=self.kubelets, abandon=abandon)
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


    @staticmethod
    def _retry_after(exc: KubeError) -> float | None:
        return 10.0 if exc.temporary else None


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
