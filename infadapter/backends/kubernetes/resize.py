"""In-place CPU resize of the Kubernetes backend's pods (``pods/resize``, Kubernetes 1.33+, KEP-1287).

:class:`InPlaceResize` knows whether the server supports it (``/version``, and a 404 on the subresource), asks
every pod of a variant for new cores, and tells a refusal (403/422 from admission, the node's
``PodResizePending`` Infeasible or Deferred) from a resize still under way; the backend turns a refusal into a
rolling replacement.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from infadapter.backends.kubernetes.api import MERGE_PATCH, KubeApi, KubeError
from infadapter.backends.kubernetes.kubelets import KubeletWatch
from infadapter.backends.kubernetes.layout import CONTAINER, Observed, resources_cpu
from infadapter.backends.kubernetes.readiness import NoRoom
from infadapter.render import cpu_quantity

log = logging.getLogger(__name__)

#: In-place pod resize is beta and on by default from this version (KEP-1287).
RESIZE_MIN_VERSION = (1, 33)


class InPlaceResize:
    """In-place resize through one API session; ``ok`` None: not known yet, False: never (off or unsupported)."""

    def __init__(self, api: KubeApi, clock: Callable[[], float], kubelets: KubeletWatch | None = None) -> None:
        self.api = api
        self.clock = clock
        #: The nodes' kubelets: a resize waits for one, and gives up when it is silent (:mod:`.kubelets`).
        self.kubelets = kubelets
        self.ok: bool | None = None if api.options.in_place == "auto" else False
        self.server_version = ""
        self.saw_404 = False

    def version(self) -> tuple[int, int]:
        """The server's (major, minor), read from ``/version`` (remembered for the messages)."""
        v = self.api.version()
        self.server_version = str(v.get("gitVersion", f"v{v.get('major', '?')}.{v.get('minor', '?')}"))
        try:
            return int(str(v.get("major", "0")).rstrip("+")), int(str(v.get("minor", "0")).rstrip("+"))
        except ValueError:
            return (0, 0)

    def supported(self) -> bool:
        """Whether in-place CPU resize may be tried: server 1.33+ (and no 404 seen on the subresource)."""
        if self.ok is None:
            self.ok = self.version() >= RESIZE_MIN_VERSION
        return self.ok

    def why_rolling(self) -> str:
        """Why a resize is a rolling replacement, in words."""
        if self.api.options.in_place == "never":
            return "in-place resize disabled"
        if self.saw_404:
            return f"server {self.server_version or '?'} answered 404 on pods/resize"
        if self.server_version:
            return f"server {self.server_version} has no in-place resize"
        return "in-place resize not possible"

    def resize(self, ob: Observed, cores: float, limited: bool = True, no_room_s: float | None = None
               ) -> tuple[str, str]:
        """Resize every pod of a variant to ``cores`` through ``pods/resize`` (its CPU request, and its limit
        when ``limited``: a pod without a CPU limit keeps none).

        Returns (how, refused): ``how`` says what was done ("" when it must roll instead); ``refused``
        is the cluster's reason when it refused (403 from admission such as PodResizeValidator or a
        ResourceQuota, 422, or the node's PodResizePending Infeasible, or Deferred past the resize
        timeout), "" otherwise. With ``no_room_s``: :class:`NoRoom` once a pod's resize has been Deferred that long
        (the request stays: the kubelet applies it when cores free; :meth:`wait_done` waits for that).
        """
        if not self.supported() or not ob.pods:
            return "", ""
        q = cpu_quantity(cores)
        resources: dict[str, Any] = {"requests": {"cpu": q}, **({"limits": {"cpu": q}} if limited else {})}
        body = {"spec": {"containers": [{"name": CONTAINER, "resources": resources}]}}
        names = [p["metadata"]["name"] for p in ob.pods if not p["metadata"].get("deletionTimestamp")]
        for pod in names:
            try:
                self.api.request(
                    "PATCH", self.api.path("Pod", pod, "resize"), f"resize pod {pod}", body=body,
                    content_type=MERGE_PATCH,
                )
            except KubeError as exc:
                if exc.status in (403, 422):
                    log.warning("%s: falling back to a rolling replacement", exc)
                    return "", str(exc)
                if exc.status not in (404, 405):
                    raise
                if "could not find the requested resource" in str(exc) or exc.status == 405:
                    # No such subresource: the feature gate is off or the server is older than it says.
                    self.ok = False
                    self.saw_404 = True
                return "", ""  # the pod went away meanwhile: a rolling replacement is the safe way
        return self.wait_done(ob.name, names, cores, self.api.options.resize_timeout_s, no_room_s)

    def wait_done(self, variant: str, names: list[str], cores: float, timeout_s: float,
                  no_room_s: float | None = None) -> tuple[str, str]:
        """Wait until the pods ``names`` run with ``cores``: (how, "") when they do, ("", why) when the node
        refuses (Infeasible, or Deferred until ``timeout_s``); NoRoom after ``no_room_s`` of Deferred."""
        start = self.clock()
        deadline = start + timeout_s
        next_kubelet_check = start
        while True:
            pending, deferred = [], ""
            read = []
            for pod in names:
                p = self.api.request("GET", self.api.path("Pod", pod), f"read pod {pod}") or {}
                read.append(p)
                verdict, why = _resize_status(p, cores)
                if verdict == "infeasible":
                    return "", f"pod {pod}: PodResizePending Infeasible ({why})"
                if verdict == "deferred":
                    deferred = f"pod {pod}: PodResizePending Deferred ({why})"
                if verdict != "done":
                    pending.append(pod)
            if not pending:
                return f"pods/resize on {len(names)} pod{'s' if len(names) > 1 else ''}", ""
            if self.kubelets is not None and self.clock() >= next_kubelet_check:  # once a second, not each poll
                self.kubelets.raise_if_silent(self.api, read, f"in-place resize of {variant}")
                next_kubelet_check = self.clock() + 1.0
            if deferred and no_room_s is not None and self.clock() - start >= no_room_s:
                raise NoRoom([variant], deferred)
            if self.clock() >= deadline:
                if deferred:
                    return "", f"{deferred} for {timeout_s:g}s"
                raise KubeError(f"in-place resize of {variant} not done after {timeout_s:g}s")
            self.api.sleep(0.2)


def _resize_status(pod: Mapping[str, Any], cores: float) -> tuple[str, str]:
    """('done' | 'pending' | 'deferred' | 'infeasible', the condition's message) for a pod asked to run
    with ``cores``."""
    conditions = (pod.get("status") or {}).get("conditions", []) or []
    for cond in conditions:
        if cond.get("type") == "PodResizePending" and cond.get("reason") in ("Infeasible", "Deferred"):
            return str(cond["reason"]).lower(), str(cond.get("message", ""))
    for cs in (pod.get("status") or {}).get("containerStatuses", []) or []:
        if cs.get("name") == CONTAINER:
            cpu = resources_cpu(cs.get("resources"))
            if cpu and abs(cpu - cores) < 1e-9:
                busy = any(c.get("type") in ("PodResizePending", "PodResizeInProgress") for c in conditions)
                return ("pending" if busy else "done"), ""
    return "pending", ""
