"""Routing: a plan's shares to the in-cluster dispatcher (its admin API) and/or the Gateway API's HTTPRoutes.

A mixin of :class:`~infadapter.backends.kubernetes.backend.KubernetesBackend`: it reads the backend's API session,
render config, profile, router and variant URLs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from infadapter.backends.kubernetes.api import KubeApi
from infadapter.core.plan import Plan
from infadapter.core.profile import Profile
from infadapter.render import RenderConfig, render_routes


class Router(Protocol):
    """What the backend needs of the dispatcher (``DispatcherClient`` has it)."""

    def set_backends(self, backends: Iterable[Mapping[str, Any]]) -> Any: ...


class Routing:
    """Send traffic by a plan's shares, for the backend that mixes this in."""

    api: KubeApi
    config: RenderConfig
    profile: Profile
    router: Router | None
    variant_url: Callable[[str], str]

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
