"""The cluster's own autoscalers beside a variant (the ``hpa-upstream:``/``vpa-upstream:`` baselines): their HPA or
VPA object, the VPA's warm start from a checkpoint of the day before, and their removal.

A mixin of :class:`~infadapter.backends.kubernetes.backend.KubernetesBackend`: it reads the backend's API session,
render config, profile and pod rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from infadapter.backends.kubernetes.api import KubeApi, KubeError
from infadapter.backends.kubernetes.layout import CONTAINER
from infadapter.core.profile import Profile
from infadapter.render import (
    COMPONENT_AUTOSCALER,
    LABEL_COMPONENT,
    LABEL_VARIANT,
    Manifest,
    PodRules,
    RenderConfig,
    parse_cpu,
    render_autoscaler,
)


class _CheckpointLost(Exception):
    """The recommender that ran before a restart overwrote the checkpoint written for the restarted one."""


class UpstreamAutoscalers:
    """The upstream policy's HPA or VPA (``self.pods.autoscaler``), for the backend that mixes this in."""

    api: KubeApi
    config: RenderConfig
    profile: Profile
    pods: PodRules
    namespace: str
    _clock: Callable[[], float]


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

    def _delete_autoscalers(self) -> list[str]:
        """Delete every upstream baseline's HPA or VPA (and the VPA's checkpoint) that a policy left; what went."""
        gone = []
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
        return gone
