"""A FAKE Kubernetes API server for the backend tests: just the endpoints infadapter calls.

No real API server can run on this machine yet (a later issue brings one); until then this fake,
on 127.0.0.1, lets the real ``kubernetes`` client talk real HTTP. It implements, for one namespace:
``GET /version``; server-side apply (``PATCH`` with ``application/apply-patch+yaml``,
``fieldManager`` and ``force`` required), ``GET`` (list with an equality ``labelSelector``, or one),
``DELETE`` for Deployments, Services and ConfigMaps; a ``watch`` on Deployments (chunked JSON
lines); Pods made by a toy Deployment "controller" (surge one pod per template change, ready after
``ready_delay_s`` unless the Deployment is held back); ``pods/NAME/resize`` only when the reported
version is 1.33+ (404 otherwise, as a server without the subresource answers); and, so that one
ordered log shows create -> route -> delete, a fake dispatcher admin endpoint ``PUT /admin/backends``.

Every request is recorded in :attr:`FakeKubeApi.log` as ``(method, path, query)``. Failures are
injected with :meth:`FakeKubeApi.fail` (status, times). It is not a Kubernetes: no admission, no
defaulting beyond what the backend reads, no resourceVersion conflicts.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml

_RE = re.compile(
    r"^/(?:api/v1|apis/apps/v1)/namespaces/(?P<ns>[^/]+)/(?P<res>deployments|services|configmaps|pods|"
    r"serviceaccounts|persistentvolumeclaims)"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>resize))?$"
)
_KINDS = {
    "deployments": "Deployment",
    "services": "Service",
    "configmaps": "ConfigMap",
    "pods": "Pod",
    "serviceaccounts": "ServiceAccount",
    "persistentvolumeclaims": "PersistentVolumeClaim",
}


class FakeKubeApi:
    """Start with :meth:`start`, stop with :meth:`stop` (or use it as a context manager)."""

    def __init__(self, version: tuple[int, int] = (1, 33), ready_delay_s: float = 0.05) -> None:
        self.version = version
        self.ready_delay_s = ready_delay_s
        self.held: set[str] = set()  # Deployment names whose new pods do not become ready
        self.objects: dict[str, dict[str, dict[str, Any]]] = {r: {} for r in _KINDS}
        # What the backend's preflight reads: the default ServiceAccount and the model-store claim.
        self.objects["serviceaccounts"]["default"] = {"metadata": {"name": "default"}}
        self.objects["persistentvolumeclaims"]["infadapter-models"] = {
            "metadata": {"name": "infadapter-models"}, "status": {"phase": "Bound"}}
        self.log: list[tuple[str, str, dict[str, str]]] = []
        self.routes: list[list[dict[str, Any]]] = []  # bodies of PUT /admin/backends
        self._failures: list[list[Any]] = []  # [method, path regex, status, times left]
        self._rv = itertools.count(1)
        self._events: list[tuple[int, str, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self._pod_ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._timers: list[threading.Timer] = []
        self._conns: set[socket.socket] = set()  # keep-alive connections, closed by stop()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> FakeKubeApi:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in separate writes

            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def setup(self) -> None:
                super().setup()
                fake._conns.add(self.connection)

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_PATCH(self) -> None:
                fake._handle(self, "PATCH")

            def do_DELETE(self) -> None:
                fake._handle(self, "DELETE")

            def do_PUT(self) -> None:
                fake._handle(self, "PUT")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        for t in self._timers:
            t.cancel()
        server, self._server = self._server, None
        if server is not None:
            with self._cond:
                self._cond.notify_all()
            server.shutdown()
            server.server_close()
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> FakeKubeApi:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def kubeconfig(self, path: Path, namespace: str = "infadapter") -> Path:
        """Write a kubeconfig pointing the real client at this fake."""
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(cfg))
        return path

    # -- test controls --------------------------------------------------------------------------
    def fail(self, method: str, path_regex: str, status: int, times: int = 1, message: str = "") -> None:
        """Answer the next ``times`` matching requests with ``status`` (and ``message``)."""
        self._failures.append([method, re.compile(path_regex), status, times, message or f"injected failure {status}"])

    def writes(self) -> list[str]:
        """The log without reads, e.g. 'PATCH deployments/tfs-x', 'DELETE services/tfs-x', 'PUT route'."""
        out = []
        for method, path, _ in self.log:
            if method == "GET":
                continue
            m = _RE.match(path)
            if m:
                out.append(f"{method} {m['res']}/{m['name']}" + ("/resize" if m["sub"] else ""))
            else:
                out.append(f"{method} route")
        return out

    def set_ready(self, deployment: str) -> None:
        """Let a held-back Deployment's pods become ready now."""
        self.held.discard(deployment)
        with self._cond:
            for pod in self.objects["pods"].values():
                if pod["metadata"]["labels"].get("fake/deployment") == deployment:
                    _pod_ready(pod)
            self._sync(deployment)

    # -- request handling -----------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        query = dict(parse_qsl(parts.query))
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        with self._cond:
            self.log.append((method, parts.path, query))
            for f in self._failures:
                if f[3] > 0 and f[0] == method and f[1].search(parts.path):
                    f[3] -= 1
                    return _send(h, f[2], _status(f[2], "Injected", f[4]))
        if parts.path == "/version":
            major, minor = self.version
            return _send(h, 200, {"major": str(major), "minor": str(minor), "gitVersion": f"v{major}.{minor}.0"})
        if parts.path == "/admin/backends" and method == "PUT":
            with self._cond:
                self.routes.append(json.loads(raw)["backends"])
            return _send(h, 200, {"generation": len(self.routes)})
        m = _RE.match(parts.path)
        if not m:
            return _send(h, 404, _status(404, "NotFound", "the server could not find the requested resource"))
        if method == "GET" and m["name"] is None and query.get("watch") == "true":
            return self._watch(h, query)
        with self._cond:
            code, body = self._dispatch(
                method, m["res"], m["name"], m["sub"], query, h.headers.get("Content-Type", ""), raw
            )
        _send(h, code, body)

    def _dispatch(
        self, method: str, res: str, name: str | None, sub: str | None, q: dict[str, str], ctype: str, raw: bytes
    ) -> tuple[int, dict[str, Any]]:
        store = self.objects[res]
        missing = (404, _status(404, "NotFound", f'{res} "{name}" not found'))
        if method == "GET" and name is None:
            items = [copy.deepcopy(o) for o in store.values() if _matches(o, q.get("labelSelector", ""))]
            rv = str(self._events[-1][0] if self._events else 0)
            return 200, {"kind": _KINDS[res] + "List", "metadata": {"resourceVersion": rv}, "items": items}
        if method == "GET":
            return (200, copy.deepcopy(store[name])) if name in store else missing
        if method == "DELETE":
            if name not in store:
                return missing
            obj = store.pop(name)
            if res == "deployments":
                for pod in self._pods_of(name):
                    del self.objects["pods"][pod["metadata"]["name"]]
                self._event("DELETED", obj)
            return 200, _status(200, "", "deleted")
        if method == "PATCH" and sub == "resize":
            if self.version < (1, 33):
                return 404, _status(404, "NotFound", "the server could not find the requested resource")
            if name not in store:
                return missing
            asked = json.loads(raw)["spec"]["containers"][0]["resources"]
            pod = store[name]
            resources = pod["spec"]["containers"][0]["resources"]
            for key in ("requests", "limits"):  # a merge patch: what the body names (no limit: none added)
                resources.setdefault(key, {}).update(asked.get(key) or {})
            pod["status"]["containerStatuses"][0]["resources"] = copy.deepcopy(resources)
            return 200, copy.deepcopy(pod)
        if method == "PATCH" and res != "pods":
            if (
                ctype != "application/apply-patch+yaml"
                or q.get("fieldManager") != "infadapter"
                or q.get("force") != "true"
            ):
                return 415, _status(415, "UnsupportedMediaType", f"expected server-side apply, got {ctype} {q}")
            return 200, self._apply(res, name or "", yaml.safe_load(raw))
        return 405, _status(405, "MethodNotAllowed", f"{method} {res} is not in the fake")

    def _apply(self, res: str, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        store = self.objects[res]
        old = store.get(name)
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        store[name] = obj
        if res == "deployments":
            changed = old is None or old["spec"] != obj["spec"]
            obj["metadata"]["generation"] = (old["metadata"]["generation"] + int(changed)) if old else 1
            obj["status"] = old["status"] if old else {}
            if changed:
                self._rollout(obj)
            self._sync(name)
        return copy.deepcopy(obj)

    # -- the toy Deployment controller ----------------------------------------------------------
    def _pods_of(self, deployment: str) -> list[dict[str, Any]]:
        return [
            p for p in self.objects["pods"].values() if p["metadata"]["labels"].get("fake/deployment") == deployment
        ]

    def _rollout(self, dep: dict[str, Any]) -> None:
        name, tmpl = dep["metadata"]["name"], dep["spec"]["template"]
        for _ in range(dep["spec"].get("replicas", 1)):
            pod_name = f"{name}-{next(self._pod_ids):05d}"
            labels = {
                **tmpl["metadata"]["labels"],
                "fake/deployment": name,
                "fake/gen": str(dep["metadata"]["generation"]),
            }
            spec = copy.deepcopy(tmpl["spec"])
            statuses = [
                {"name": c["name"], "ready": False, "resources": copy.deepcopy(c["resources"])}
                for c in spec["containers"]
            ]
            self.objects["pods"][pod_name] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": dep["metadata"]["namespace"], "labels": labels},
                "spec": spec,
                "status": {"conditions": [{"type": "Ready", "status": "False"}], "containerStatuses": statuses},
            }
            if name not in self.held:
                t = threading.Timer(self.ready_delay_s, self._later_ready, (pod_name, name))
                t.daemon = True
                self._timers.append(t)
                t.start()

    def _later_ready(self, pod_name: str, dep: str) -> None:
        with self._cond:
            pod = self.objects["pods"].get(pod_name)
            if pod is None or dep in self.held:
                return
            _pod_ready(pod)
            self._sync(dep)

    def _sync(self, name: str) -> None:
        """Status from pods; old pods go once all of the new generation's pods are ready (surge)."""
        dep = self.objects["deployments"].get(name)
        if dep is None:
            return
        gen = str(dep["metadata"]["generation"])
        pods = self._pods_of(name)
        new = [p for p in pods if p["metadata"]["labels"]["fake/gen"] == gen]
        if len([p for p in new if _is_ready(p)]) >= dep["spec"].get("replicas", 1):
            for p in pods:
                if p not in new:
                    del self.objects["pods"][p["metadata"]["name"]]
            pods = new
        ready = len([p for p in pods if _is_ready(p)])
        status = {
            "observedGeneration": dep["metadata"]["generation"],
            "replicas": len(pods),
            "updatedReplicas": len(new),
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        if status != dep.get("status"):
            dep["status"] = status
            dep["metadata"]["resourceVersion"] = str(next(self._rv))
            self._event("MODIFIED", dep)

    # -- watch ----------------------------------------------------------------------------------
    def _event(self, kind: str, obj: dict[str, Any]) -> None:
        self._events.append((int(obj["metadata"]["resourceVersion"]), kind, copy.deepcopy(obj)))
        self._cond.notify_all()

    def _watch(self, h: BaseHTTPRequestHandler, q: dict[str, str]) -> None:
        since = int(q.get("resourceVersion") or 0)
        deadline = time.monotonic() + min(float(q.get("timeoutSeconds", 30)), 30.0)
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        try:
            while time.monotonic() < deadline and self._server is not None:
                with self._cond:
                    sel = q.get("labelSelector", "")
                    fresh = [e for e in self._events if e[0] > since and _matches(e[2], sel)]
                    if not fresh:
                        self._cond.wait(timeout=min(0.5, max(0.0, deadline - time.monotonic())))
                        continue
                for rv, kind, obj in fresh:
                    since = max(since, rv)
                    line = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                h.wfile.flush()
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        h.close_connection = True


def _send(h: BaseHTTPRequestHandler, code: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    h.send_response(code)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def _pod_ready(pod: dict[str, Any]) -> None:
    pod["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    for cs in pod["status"]["containerStatuses"]:
        cs["ready"] = True


def _is_ready(pod: dict[str, Any]) -> bool:
    return pod["status"]["conditions"][0]["status"] == "True"


def _matches(obj: dict[str, Any], selector: str) -> bool:
    labels = obj["metadata"].get("labels", {})
    return all(labels.get(k) == v for k, _, v in (part.partition("=") for part in selector.split(",") if part))


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
