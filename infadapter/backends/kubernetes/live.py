"""Live traffic through the cluster: ``adapt --backend kubernetes --traffic live``.

The dispatcher runs in the cluster as its rendered Deployment and Service
(``templates/k8s/dispatcher-*.yaml.j2``), applied here before the first plan; the backend gives it the
plan's shares as it does any dispatcher (``PUT /admin/backends``). The window's requests go from this
machine to the dispatcher's Service: its ClusterIP, which kube-proxy answers on a node's own host (the
local cluster's real node), or ``--dispatcher-url`` (e.g. a ``kubectl port-forward``). The loop observes
the dispatcher's counters (``/admin/stats``), so the load it plans for is what the cluster served.

Two things a real cluster has and the local one lacks are handled here: the dispatcher's admin token
Secret (created with a random token when missing; an existing one is used as it is) and a DNS add-on
(without the Service ``kube-system/kube-dns``, the dispatcher is given each variant's ClusterIP instead of
its ``<svc>.<ns>.svc`` name, which no resolver in the pod could answer).
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from infadapter.backends.kubernetes.api import KubeApi, KubeError
from infadapter.backends.kubernetes.readiness import ImagePulls, deployment_ready
from infadapter.errors import BadInput
from infadapter.render import RenderConfig, render_platform

#: The key of the admin token in the dispatcher's Secret (what the rendered Deployment reads).
TOKEN_KEY = "token"
#: A name every cluster DNS answers (the API server's Service), tried from inside a pod.
IN_CLUSTER_NAME = "kubernetes.default.svc"
#: The Service a DNS add-on (CoreDNS, kube-dns) answers behind.
DNS_SERVICE = "/api/v1/namespaces/kube-system/services/kube-dns"


@dataclass(frozen=True)
class LiveDispatcher:
    """The in-cluster dispatcher as this machine reaches it."""

    url: str  # http://<ClusterIP>:<port>
    token: str  # its admin token
    notes: tuple[str, ...]  # what was done to get there, for the run's messages


def admin_token(api: KubeApi, config: RenderConfig) -> tuple[str, str]:
    """The dispatcher's admin token from its Secret, which is created with a random token when missing;
    (token, what was done)."""
    name = config.dispatcher.admin_token_secret
    found = api.get("Secret", name)
    if found is not None:
        raw = (found.get("data") or {}).get(TOKEN_KEY, "")
        token = base64.b64decode(raw).decode(errors="replace").strip() if raw else ""
        if not token:
            raise BadInput(f"--traffic live: the Secret {name} in namespace {api.namespace} has no key "
                           f"'{TOKEN_KEY}'; delete it (a new one is made) or add the key")
        return token, f"dispatcher admin token from Secret {name}"
    token = secrets.token_hex(16)
    body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": api.namespace, "labels": config.common_labels()},
            "stringData": {TOKEN_KEY: token}}
    api.request("POST", api.path("Secret"), f"create Secret/{name}", body=body)
    return token, f"created Secret {name} with a new dispatcher admin token"


def has_dns(api: KubeApi) -> bool:
    """Whether the cluster runs a DNS add-on (the Service kube-system/kube-dns). When a Role confined to the
    namespace cannot read that: inside a pod, whether this pod resolves the API server's Service name (the
    dispatcher's pod resolves as this one does); outside one, True (production clusters have DNS)."""
    try:
        return api.request("GET", DNS_SERVICE, "read Service kube-system/kube-dns", ok_statuses=(404,)) is not None
    except KubeError as exc:
        if exc.status == 403:
            return not os.environ.get("KUBERNETES_SERVICE_HOST") or _resolves(IN_CLUSTER_NAME)
        raise


def _resolves(name: str) -> bool:
    try:
        socket.getaddrinfo(name, None)
    except OSError:
        return False
    return True


def service_ip_url(api: KubeApi, config: RenderConfig, variant: str) -> str:
    """A variant's REST base URL by its Service's ClusterIP (for a dispatcher in a cluster without DNS)."""
    svc = api.get("Service", config.object_name(variant)) or {}
    ip = (svc.get("spec") or {}).get("clusterIP")
    if not ip or ip == "None":
        raise KubeError(f"Service {config.object_name(variant)} has no ClusterIP yet", 0, True)
    return f"http://{ip}:{config.tfserving.rest_port}"


def start_dispatcher(api: KubeApi, config: RenderConfig, timeout_s: float,
                     clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep) -> LiveDispatcher:
    """Apply the rendered dispatcher Deployment and Service (server-side, idempotent), wait until the
    Deployment is ready, and return its Service's ClusterIP URL and admin token; KubeError on a timeout."""
    token, note = admin_token(api, config)
    name = config.dispatcher.name
    for m in render_platform(config):
        if m.name == name and m.kind in ("Deployment", "Service"):
            api.apply_object(m)
    deadline = clock() + timeout_s
    t0 = clock()
    pulls = ImagePulls(clock)
    while not deployment_ready(d := api.get("Deployment", name) or {}):
        selector = ((d.get("spec") or {}).get("selector") or {}).get("matchLabels")
        if selector:  # an image it can never get fails now, not after the timeout
            pulls.check(api.list("Pod", selector).get("items", []), f"the dispatcher Deployment {name}",
                        "load the image on the nodes or name another in the render config (--k8s-config: image, tag)")
        if clock() > deadline:
            st = d.get("status") or {}
            raise KubeError(f"the dispatcher Deployment {name} is not ready after {timeout_s:g} s (ready "
                            f"{int(st.get('readyReplicas', 0))}/1); see kubectl -n {api.namespace} describe "
                            f"deployment {name}", 0, True)
        sleep(0.5)
    svc = api.get("Service", name) or {}
    ip = (svc.get("spec") or {}).get("clusterIP")
    if not ip or ip == "None":
        raise KubeError(f"the dispatcher Service {name} has no ClusterIP", 0, False)
    url = f"http://{ip}:{config.dispatcher.port}"
    return LiveDispatcher(url, token, (note, f"dispatcher Deployment {name} ready after {clock() - t0:.1f} s; "
                                             f"its Service at {url}"))
