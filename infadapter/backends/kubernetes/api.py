"""The Kubernetes backend's API session: one client, bounded retries, server-side apply.

:class:`KubeApi` is what the backend (:mod:`infadapter.backends.kubernetes.backend`) and its readiness and
resize helpers call: ``request`` (one call as parsed JSON, with retries), ``apply_object`` (server-side apply,
field manager ``infadapter``), ``delete``, ``list`` (by labels), ``watch`` (a Deployment watch's events) and
``version``. Conflicts (409), throttling (429), server errors (5xx) and timeouts get bounded retries with
exponential backoff; invalid objects (422) and forbidden requests (403) fail at once with the server's message.

The session is the one place that retries: urllib3's own retries are off (they logged a 400-character warning
per attempt and multiplied ours), and it knows whether the API server answers (:attr:`KubeApi.down_since`):
once a call gave up because the server could not be reached, later calls try once, without backoff, until one
gets an answer, so the adapter's checks during an outage take a connection attempt each, not half a minute.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from infadapter.errors import BackendUnavailable, InfAdapterError
from infadapter.render import MANAGER, Manifest

log = logging.getLogger(__name__)

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/strategic-merge-patch+json"
#: Statuses worth retrying: conflict, throttling, server errors, gateway timeouts.
RETRY_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
#: Statuses that say the API server itself is away (a proxy or load balancer in front of it answered).
UNREACHABLE_STATUSES = frozenset({502, 503, 504})

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
    "HorizontalPodAutoscaler": "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
    "VerticalPodAutoscaler": "/apis/autoscaling.k8s.io/v1/namespaces/{ns}/verticalpodautoscalers",
    "VerticalPodAutoscalerCheckpoint": "/apis/autoscaling.k8s.io/v1/namespaces/{ns}/verticalpodautoscalercheckpoints",
}


class KubeError(InfAdapterError):
    """A Kubernetes API call failed; ``temporary`` says whether trying later may help, ``unreachable`` that
    the API server did not answer at all (connection refused or reset, timeout, 502/503/504)."""

    def __init__(self, message: str, status: int = 0, temporary: bool = False, unreachable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.temporary = temporary
        self.unreachable = unreachable


@dataclass(frozen=True)
class KubeOptions:
    """Connection and timing of the Kubernetes backend."""

    kubeconfig: str | None = None  # None: in-cluster if inside a pod, else ~/.kube/config
    context: str | None = None
    namespace: str | None = None  # overrides the render config's namespace
    ready_timeout_s: float = 600.0  # per apply: new variants must be ready by then
    # New pods unschedulable for lack of CPU this long while the plan gives cores up elsewhere: give those
    # up first instead of waiting (make-before-break needs room the nodes lack). The scheduler says so in ~0.1 s.
    no_room_s: float = 3.0
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


def selector(labels: Mapping[str, str]) -> str:
    """A label selector matching all of ``labels``."""
    return ",".join(f"{k}={v}" for k, v in labels.items())


class KubeApi:
    """One API session on a namespace (see the module doc); ``options`` and ``sleep`` may be swapped later."""

    def __init__(self, options: KubeOptions, namespace: str, api_client: Any = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.options = options
        self.namespace = namespace
        self.sleep = sleep
        self.client = api_client or make_api_client(options)
        #: Wall time of the first call in a row that could not reach the API server; None while it answers.
        self.down_since: float | None = None
        #: Calls (each try counted) that could not reach the API server, over the session.
        self.unreachable_tries = 0
        self._gave_up = False  # a call gave up during the present outage: later calls try once

    def _answered(self) -> None:
        """The server answered (any HTTP status but 502/503/504 counts: it is there)."""
        if self.down_since is not None:
            log.debug("API server %s answers again", self.host)
        self.down_since = None
        self._gave_up = False

    def _failed(self, error: KubeError) -> None:
        if error.unreachable:
            self.unreachable_tries += 1
            if self.down_since is None:
                self.down_since = time.time()
        else:
            self._answered()

    @property
    def host(self) -> str:
        """The API server's URL as configured ("" when unknown)."""
        return str(getattr(getattr(self.client, "configuration", None), "host", "") or "")

    def request(
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
        # While the server is known to be down, one try: the caller's next check comes soon anyway.
        tries = 1 if self.down_since is not None and self._gave_up else self.options.retries
        for attempt in range(1, tries + 1):
            try:
                resp = self.client.call_api(
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
                self._answered()
                return json.loads(data) if data else {}
            except ApiException as exc:
                if exc.status in ok_statuses:
                    self._answered()
                    return None
                message = _api_message(exc)
                temporary = exc.status in RETRY_STATUSES
                error = KubeError(f"{what}: HTTP {exc.status} {message}", exc.status, temporary,
                                  exc.status in UNREACHABLE_STATUSES)
            except (Urllib3Error, OSError) as exc:
                error = KubeError(f"{what}: cannot reach the API server ({exc.__class__.__name__})", 0, True, True)
            self._failed(error)
            if not error.temporary or attempt == tries:
                if error.unreachable:
                    self._gave_up = True
                if error.temporary and tries > 1:
                    error = KubeError(f"{error} (gave up after {attempt} tries)", error.status, True,
                                      error.unreachable)
                raise error
            # An unreachable server is said once, by the adapter's loop; each retry is detail.
            log.log(logging.DEBUG if error.unreachable else logging.INFO, "%s; retry %d/%d in %.2fs", error,
                    attempt, tries - 1, delay)
            self.sleep(delay)
            delay = min(delay * 2, self.options.backoff_max_s)
        raise AssertionError("unreachable")

    def path(self, kind: str, name: str = "", sub: str = "") -> str:
        """The API path of ``kind`` objects in the namespace (of one object, of its subresource)."""
        p = _PATHS[kind].format(ns=self.namespace)
        return p + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def apply_object(self, m: Manifest) -> dict[str, Any]:
        """Server-side apply of one rendered object (field manager ``infadapter``, force)."""
        out = self.request(
            "PATCH",
            self.path(m.kind, m.name),
            f"apply {m.kind}/{m.name}",
            query={"fieldManager": MANAGER, "force": "true"},
            body=m.obj,
            content_type=APPLY_PATCH,
        )
        return out or {}

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """One object; None when it does not exist."""
        return self.request("GET", self.path(kind, name), f"read {kind}/{name}", ok_statuses=(404,))

    def delete(self, kind: str, name: str) -> bool:
        """Delete one object; False when it was already gone."""
        out = self.request(
            "DELETE",
            self.path(kind, name),
            f"delete {kind}/{name}",
            query={"propagationPolicy": "Background"},
            ok_statuses=(404,),
        )
        return out is not None

    def list(self, kind: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The namespace's ``kind`` objects carrying ``labels`` (all of them without)."""
        query = {"labelSelector": selector(labels)} if labels else None
        out = self.request("GET", self.path(kind), f"list {kind}s", query=query)
        return out or {}

    def watch(self, kind: str, labels: Mapping[str, str], resource_version: str, timeout_s: float
              ) -> Iterator[dict[str, Any]]:
        """The watch events of ``kind`` objects carrying ``labels`` after ``resource_version``, for at most
        ``timeout_s``; the connection is released when the iteration ends."""
        from kubernetes.watch.watch import iter_resp_lines

        query = {
            "labelSelector": selector(labels),
            "watch": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": max(1, int(timeout_s)),
            "allowWatchBookmarks": "false",
        }
        resp = self.client.call_api(
            self.path(kind),
            "GET",
            query_params=list(query.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _preload_content=False,
            _request_timeout=timeout_s + 5,
        )
        try:
            for line in iter_resp_lines(resp):
                yield json.loads(line)
        finally:
            resp.release_conn()

    def version(self) -> dict[str, Any]:
        """The server's ``/version`` document."""
        return self.request("GET", "/version", "read /version") or {}

    def close(self) -> None:
        """Close the client's connections."""
        close = getattr(self.client, "close", None)
        if close is not None:
            close()


def _api_message(exc: Any) -> str:
    try:
        body = json.loads(exc.body or "{}")
        return f"{body.get('reason', exc.reason)}: {body.get('message', '')}".rstrip(": ")
    except (ValueError, TypeError):
        return str(exc.reason)


def make_api_client(options: KubeOptions) -> Any:
    """An ApiClient from a kubeconfig, or in-cluster credentials; no global client state."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    cfg = client.Configuration()
    try:
        if options.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)
        else:
            config.load_kube_config(config_file=options.kubeconfig, context=options.context,
                                    client_configuration=cfg, persist_config=False)
    except (ConfigException, OSError, TypeError) as exc:
        where = options.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise BackendUnavailable(
            f"--kubeconfig: cannot load Kubernetes credentials from {where} ({exc}); pass --kubeconfig FILE "
            "or run inside the cluster with a ServiceAccount"
        ) from None
    # No urllib3 retries: KubeApi.request retries (with backoff, and once only while the server is down);
    # urllib3's would multiply the attempts and log a long warning for each.
    cfg.retries = 0
    return client.ApiClient(cfg)
