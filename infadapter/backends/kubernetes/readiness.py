"""Readiness of the Kubernetes backend's variants: when a Deployment counts as ready, waiting for it (a list,
then a watch, until a timeout), and why it is not (its pods' scheduling and the latest warning events)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from infadapter.backends.base import ABANDON_CHECK_S, Abandoned
from infadapter.backends.kubernetes.api import KubeApi, KubeError
from infadapter.backends.kubernetes.kubelets import KubeletWatch
from infadapter.render import LABEL_VARIANT, RenderConfig

log = logging.getLogger(__name__)


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


#: Why a container waits that waiting does not cure: the image is not on the node and may not be pulled, or its
#: name is wrong. A pull that fails (``ErrImagePull``, ``ImagePullBackOff``) may be a registry's hiccup: it is
#: given ``PULL_GRACE_S`` first.
IMAGE_NEVER = frozenset({"ErrImageNeverPull", "InvalidImageName"})
IMAGE_PULL = frozenset({"ErrImagePull", "ImagePullBackOff"})
PULL_GRACE_S = 30.0


class ImagePulls:
    """Remembers since when each pod's image pull has failed; :meth:`check` raises once waiting cannot help."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._since: dict[str, float] = {}

    def check(self, pods: Iterable[Mapping[str, Any]], what: str, fix: str) -> None:
        """KubeError (not temporary) naming the pod, its image and the kubelet's reason when a container of
        ``pods`` waits for an image it can never get, or has failed to pull it for ``PULL_GRACE_S``."""
        now = self._clock()
        for p in pods:
            name = str(p.get("metadata", {}).get("name", "?"))
            for c in (p.get("status") or {}).get("containerStatuses", []) or []:
                waiting = (c.get("state") or {}).get("waiting") or {}
                reason = str(waiting.get("reason", ""))
                if reason not in IMAGE_NEVER | IMAGE_PULL:
                    continue
                since = self._since.setdefault(name, now)
                if reason in IMAGE_NEVER or now - since >= PULL_GRACE_S:
                    detail = str(waiting.get("message", "")).strip()
                    raise KubeError(f"{what}: pod {name} cannot get its image {c.get('image', '?')}: {reason}"
                                    f"{f' ({detail})' if detail else ''}; {fix}", 0, temporary=False)


class NoRoom(KubeError):
    """New pods of ``names`` that the scheduler cannot place for lack of CPU: waiting alone does not help
    while the variants they are to replace hold the nodes' cores (the apply then makes room first)."""

    def __init__(self, names: list[str], why: str) -> None:
        super().__init__(f"no room on the nodes for {', '.join(names)}: {why}", 0, temporary=True)
        self.names = names


#: Seconds between two looks at the pending pods' scheduling while waiting with ``no_room_s``.
_NO_ROOM_POLL_S = 2.0


def wait_ready(api: KubeApi, config: RenderConfig, names: Iterable[str], timeout_s: float,
               clock: Callable[[], float], no_room_s: float | None = None,
               kubelets: KubeletWatch | None = None, abandon: Callable[[], str] | None = None) -> None:
    """Block until the Deployments of ``names`` are ready: one list, then a watch, until timeout; KubeError
    (temporary) saying why each pending one is not ready when it passes. With ``no_room_s``: :class:`NoRoom`
    once the wait has lasted that long and a pending variant has a pod unschedulable for lack of CPU. With
    ``kubelets``: KubeError (temporary) as soon as a pending pod's node has a silent kubelet. With ``abandon``:
    asked between watches while some are pending (about every second: a watch lasts at least 1 s); a reason
    raises :class:`Abandoned` with it."""
    pending = {config.object_name(n): n for n in names}
    start = clock()
    deadline = start + timeout_s
    last: dict[str, dict[str, Any]] = {}
    pulls = ImagePulls(clock)
    while True:
        listing = api.list("Deployment", config.model_server_selector())
        rv = listing.get("metadata", {}).get("resourceVersion", "")
        for d in listing.get("items", []):
            last[d["metadata"]["name"]] = d
        _check_ready(pending, last)
        if not pending:
            return
        why = abandon() if abandon is not None else ""
        if why:
            raise Abandoned(why)
        if no_room_s is not None and clock() - start >= no_room_s:
            _raise_if_no_room(api, config, list(pending.values()))
        waiting = set(pending.values())
        pods = [p for p in api.list("Pod", config.model_server_selector()).get("items", [])
                if (p.get("metadata", {}).get("labels") or {}).get(LABEL_VARIANT) in waiting]
        pulls.check(pods, "variants not ready", "load the image on the nodes or name another in the render config "
                    "(--k8s-config)")
        if kubelets is not None:
            kubelets.raise_if_silent(api, pods, f"waiting for {', '.join(sorted(waiting))} to be ready")
        remaining = deadline - clock()
        if remaining <= 0:
            break
        # Look at the pods (room, images) between watches; with ``abandon``, watch as briefly as the server allows.
        chunk = min(remaining, _NO_ROOM_POLL_S, ABANDON_CHECK_S if abandon is not None else _NO_ROOM_POLL_S)
        try:
            with contextlib.closing(api.watch("Deployment", config.model_server_selector(), rv,
                                              chunk)) as events:
                for event in events:
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        break  # e.g. 410 Gone: list again
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        last[obj["metadata"]["name"]] = obj
                        _check_ready(pending, last)
                        if not pending:
                            return
                    if clock() >= deadline:
                        break
        except Exception as exc:  # a broken watch is not fatal: list again until the deadline
            log.info("watch ended: %s", exc)
            api.sleep(min(1.0, max(0.0, deadline - clock())))
        if clock() >= deadline:
            break
    detail = "; ".join(f"{n}: {_status_line(last.get(obj))}{_explain(api, config, n)}" for obj, n in pending.items())
    raise KubeError(f"not ready after {timeout_s:g}s: {detail}", 0, temporary=True)


def _raise_if_no_room(api: KubeApi, config: RenderConfig, variants: list[str]) -> None:
    """NoRoom when a pod of one of ``variants`` is unschedulable for lack of CPU (the scheduler's
    PodScheduled condition: reason Unschedulable, "Insufficient cpu" in its message)."""
    stuck: list[str] = []
    why = ""
    for p in api.list("Pod", config.model_server_selector()).get("items", []):
        variant = (p.get("metadata", {}).get("labels") or {}).get(LABEL_VARIANT, "")
        if variant not in variants or variant in stuck:
            continue
        conds = {c.get("type"): c for c in (p.get("status") or {}).get("conditions", []) or []}
        sched = conds.get("PodScheduled") or {}
        message = str(sched.get("message", ""))
        if sched.get("status") == "False" and sched.get("reason") == "Unschedulable" and "Insufficient cpu" in message:
            stuck.append(variant)
            why = why or message
    if stuck:
        raise NoRoom(stuck, why)


def _explain(api: KubeApi, config: RenderConfig, variant: str) -> str:
    """Why a variant's pods are not ready, as the API server says: each unready pod's PodScheduled
    condition and the latest warning events of its pods and ReplicaSets (", ..." or "")."""
    notes: list[str] = []
    obj = config.object_name(variant)
    try:
        sel = {**config.model_server_selector(), LABEL_VARIANT: variant}
        for p in api.list("Pod", sel).get("items", []):
            conds = {c.get("type"): c for c in (p.get("status") or {}).get("conditions", []) or []}
            if (conds.get("Ready") or {}).get("status") == "True":
                continue
            sched = conds.get("PodScheduled") or {}
            name = p["metadata"]["name"]
            if sched.get("status") == "False":
                notes.append(f"pod {name} {sched.get('reason', 'unscheduled')}: {sched.get('message', '')}")
            else:
                notes.append(f"pod {name} {(p.get('status') or {}).get('phase', '?')}, not ready")
        events = api.request("GET", api.path("Event"), "list events") or {}
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


def _status_line(d: Mapping[str, Any] | None) -> str:
    if d is None:
        return "not found"
    st = d.get("status") or {}
    return (
        f"ready {st.get('readyReplicas', 0)}/{d.get('spec', {}).get('replicas', 1)}, "
        f"updated {st.get('updatedReplicas', 0)}, observed generation {st.get('observedGeneration', 0)}"
        f"/{d.get('metadata', {}).get('generation', '?')}"
    )
