"""Making room: a transition whose new pods do not fit beside the running ones gives cores up step by step, serving
as much as the nodes allow meanwhile (:meth:`RoomMaking._make_room`), routed by :func:`gap_plan`.

A mixin of :class:`~infadapter.backends.kubernetes.backend.KubernetesBackend`: it reads the backend's API session,
render config, profile, pod rules and resizer, and calls its apply steps (wait, change, route, shrink and delete).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace

from infadapter.backends.base import ApplyResult
from infadapter.backends.kubernetes import cluster
from infadapter.backends.kubernetes.api import KubeApi, KubeError, KubeOptions
from infadapter.backends.kubernetes.layout import Observed, same_layout, with_template
from infadapter.backends.kubernetes.readiness import NoRoom
from infadapter.backends.kubernetes.resize import InPlaceResize
from infadapter.core.plan import Allocation, Plan
from infadapter.core.profile import Profile
from infadapter.errors import InfAdapterError
from infadapter.render import PodRules, RenderConfig, VariantSpec


class RoomMaking:
    """Give cores up for new pods that wait for them, for the backend that mixes this in."""

    api: KubeApi
    config: RenderConfig
    profile: Profile
    pods: PodRules
    resizer: InPlaceResize
    options: KubeOptions
    _serving: Plan | None
    _clock: Callable[[], float]

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
            return _last_of_its_service(name, deletes, serving, service)

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
                    part = self._shrink_whole(observed[name], specs, plan, generation, actions)
                    done.append(name)
                actions.append(part)
            now = self._after_room(plan, generation, observed, specs, waiting, deferred, {*changed, *shrink}, deletes,
                                   actions)
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

    def _shrink_whole(self, ob: Observed, specs: dict[str, VariantSpec], plan: Plan, generation: int,
                      actions: list[str]) -> str:
        """Bring ``ob`` to its planned layout now (fewer pods, or a rolling replacement awaited); says how."""
        later: list[str] = []
        part = self._change(ob, specs, plan, generation, {}, later)
        self._wait(actions, later)
        return part

    def _after_room(self, plan: Plan, generation: int, observed: Mapping[str, Observed], specs: dict[str, VariantSpec],
                    waiting: list[str], deferred: Mapping[str, NoRoom], touched: set[str], deletes: list[str],
                    actions: list[str]) -> dict[str, Observed]:
        """Once room is made: wait for the pods still ``waiting`` and for the ``deferred`` resizes, stamp the new
        generation on the variants not ``touched``, route the plan (``deletes`` leaving), and read back what runs."""
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
            if name not in touched:
                self._apply_variant(specs[name], plan, generation)
        actions.append(self._route(plan, leaving=deletes))
        return self.observe()

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


def _last_of_its_service(name: str, deletes: list[str], serving: Mapping[str, float],
                         service: Mapping[str, str]) -> bool:
    """A delete that would leave its service (several services) with nothing serving until the new variants run:
    it goes after every shrink and every other delete."""
    return name in deletes and not any(m != name and m not in deletes and service.get(m) == service.get(name)
                                       for m in serving)


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
