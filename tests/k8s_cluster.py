"""The real local control plane for the Kubernetes tests: ``scripts/local-cluster.sh`` and an admin client.

:func:`start_cluster` runs ``local-cluster.sh up`` with its state in a temporary folder (free ports, so it
can run next to a user's cluster). The binaries come from the per-version cache when present, else they
are built from the Go module proxy (minutes; the progress lines go to the terminal): the cache only
speeds things up, the outcome never depends on it. :class:`Kube` is a small admin client over the
``kubernetes`` package's ApiClient (raw paths, JSON in and out) for setting up and checking what the
adapter did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "local-cluster.sh"
UP_TIMEOUT_S = 1800  # a cold build on 2 busy cores, plus start

_PATHS = {
    "Namespace": "/api/v1/namespaces",
    "Node": "/api/v1/nodes",
    "PersistentVolume": "/api/v1/persistentvolumes",
    "PersistentVolumeClaim": "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "Event": "/api/v1/namespaces/{ns}/events",
    "ResourceQuota": "/api/v1/namespaces/{ns}/resourcequotas",
    "LimitRange": "/api/v1/namespaces/{ns}/limitranges",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "ReplicaSet": "/apis/apps/v1/namespaces/{ns}/replicasets",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "CustomResourceDefinition": "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
    "HTTPRoute": "/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes",
    "HorizontalPodAutoscaler": "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
    "VerticalPodAutoscaler": "/apis/autoscaling.k8s.io/v1/namespaces/{ns}/verticalpodautoscalers",
    "VerticalPodAutoscalerCheckpoint": "/apis/autoscaling.k8s.io/v1/namespaces/{ns}/verticalpodautoscalercheckpoints",
    "NodeMetrics": "/apis/metrics.k8s.io/v1beta1/nodes",
    "PodMetrics": "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods",
}


class KubeHTTPError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


class Kube:
    """Admin (or any kubeconfig's) calls by kind and name; JSON dicts in and out."""

    def __init__(self, kubeconfig: str | Path) -> None:
        from kubernetes import config

        self.kubeconfig = str(kubeconfig)
        self.api = config.new_client_from_config(config_file=self.kubeconfig, persist_config=False)

    def close(self) -> None:
        self.api.close()

    def path(self, kind: str, ns: str = "", name: str = "", sub: str = "") -> str:
        p = _PATHS[kind].format(ns=ns)
        return p + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self.api.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _preload_content=False,
                _request_timeout=30,
            )
        except ApiException as exc:
            raise KubeHTTPError(exc.status, exc.body or "") from None
        return json.loads(resp.data) if resp.data else {}

    def get(self, kind: str, name: str, ns: str = "") -> dict[str, Any]:
        return self.call("GET", self.path(kind, ns, name))

    def list(self, kind: str, ns: str = "", selector: str = "") -> list[dict[str, Any]]:
        q = {"labelSelector": selector} if selector else {}
        return self.call("GET", self.path(kind, ns), query=q).get("items", [])

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply (field manager ``tests``), forced."""
        meta = obj["metadata"]
        return self.call(
            "PATCH",
            self.path(obj["kind"], meta.get("namespace", ""), meta["name"]),
            body=dict(obj),
            query={"fieldManager": "tests", "force": "true"},
            content_type="application/apply-patch+yaml",
        )

    def patch(self, kind: str, name: str, ns: str, body: Mapping[str, Any], sub: str = "") -> dict[str, Any]:
        return self.call(
            "PATCH", self.path(kind, ns, name, sub), body=dict(body), content_type="application/merge-patch+json"
        )

    def delete(self, kind: str, name: str, ns: str = "") -> None:
        try:
            self.call("DELETE", self.path(kind, ns, name))
        except KubeHTTPError as exc:
            if exc.status != 404:
                raise

    def wait(self, what: str, check: Any, timeout_s: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            out = check()
            if out:
                return out
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not after {timeout_s:g}s")
            time.sleep(0.2)

    # -- namespaces ready for the adapter -------------------------------------------------------
    def make_namespace(self, ns: str) -> str:
        """A namespace like local-cluster.sh's ``infadapter``: the model-store claim bound to a local volume,
        the default ServiceAccount present."""
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        pv = f"models-{ns}"
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": pv},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadOnlyMany"],
                    "storageClassName": "",
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": f"/tmp/{pv}"},
                    "claimRef": {"namespace": ns, "name": "infadapter-models"},
                },
            }
        )
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "infadapter-models", "namespace": ns},
                "spec": {
                    "accessModes": ["ReadOnlyMany"],
                    "storageClassName": "",
                    "volumeName": pv,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }
        )
        self.wait(f"ServiceAccount default in {ns}", lambda: self._exists("ServiceAccount", "default", ns))
        self.wait(
            f"claim in {ns} bound",
            lambda: (
                self.get("PersistentVolumeClaim", "infadapter-models", ns).get("status", {}).get("phase") == "Bound"
            ),
        )
        return ns

    def _exists(self, kind: str, name: str, ns: str) -> bool:
        try:
            self.get(kind, name, ns)
            return True
        except KubeHTTPError as exc:
            if exc.status == 404:
                return False
            raise

    def variants(self, ns: str) -> dict[str, dict[str, Any]]:
        """Our model-server Deployments by variant label."""
        return {
            d["metadata"]["labels"]["infadapter.io/variant"]: d
            for d in self.list("Deployment", ns, "infadapter.io/variant")
        }

    def pods(self, ns: str, variant: str = "") -> list[dict[str, Any]]:
        sel = f"infadapter.io/variant={variant}" if variant else "infadapter.io/variant"
        return [p for p in self.list("Pod", ns, sel) if not p["metadata"].get("deletionTimestamp")]

    def token_kubeconfig(self, sa: str, ns: str, out: Path) -> Path:
        """A kubeconfig holding a TokenRequest token of ServiceAccount ``sa`` (not admin)."""
        tok = self.call(
            "POST",
            self.path("ServiceAccount", ns, sa, "token"),
            body={
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 3600},
            },
        )["status"]["token"]
        import yaml

        admin = yaml.safe_load(Path(self.kubeconfig).read_text())
        cluster = admin["clusters"][0]
        out.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [cluster],
                    "users": [{"name": sa, "user": {"token": tok}}],
                    "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": sa, "namespace": ns}}],
                    "current-context": "sa",
                }
            )
        )
        return out


@dataclass
class Cluster:
    state_dir: Path
    kubeconfig: Path
    env: dict[str, str]

    def script(self, *args: str, timeout: float = 120, env: Mapping[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
        """``local-cluster.sh ARGS`` on this cluster (``env``: more variables, e.g. INFADAPTER_RESTART_PAUSE)."""
        return subprocess.run(["bash", str(SCRIPT), *args], env={**self.env, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout, check=False)


def terminal_printer(request: Any) -> Any:
    """A print to the terminal that pytest's output capture lets through (the cluster's progress: a cold build
    takes minutes)."""
    capman = request.config.pluginmanager.getplugin("capturemanager")

    def terminal(line: str) -> None:
        if capman is None:
            print(line, file=sys.stderr)
            return
        with capman.global_and_fixture_disabled():
            print(line, file=sys.stderr, flush=True)

    return terminal


def cluster_env(state_dir: Path) -> dict[str, str]:
    env = {**os.environ, "INFADAPTER_CLUSTER_DIR": str(state_dir)}
    gobin = "/usr/local/go/bin"
    if gobin not in env.get("PATH", "") and Path(gobin, "go").exists():
        env["PATH"] = f"{env.get('PATH', '')}:{gobin}"
    return env


@contextmanager
def start_cluster(state_dir: Path, terminal: Any = None, *args: str) -> Iterator[Cluster]:
    """``local-cluster.sh up`` (build included when the cache is cold), then ``down`` at the end."""
    env = cluster_env(state_dir)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["bash", str(SCRIPT), "up", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    err_lines: list[str] = []
    assert proc.stderr is not None and proc.stdout is not None
    try:
        for line in proc.stderr:  # progress: straight to the terminal (the first build takes minutes)
            err_lines.append(line)
            if terminal is not None:
                terminal(line.rstrip("\n"))
        out = proc.stdout.read()
        rc = proc.wait(timeout=UP_TIMEOUT_S)
    except BaseException:
        proc.kill()
        raise
    if rc != 0:
        subprocess.run(["bash", str(SCRIPT), "down"], env=env, capture_output=True, check=False, timeout=120)
        raise RuntimeError(f"local-cluster.sh up failed (exit {rc}):\n{''.join(err_lines[-30:])}")
    kubeconfig = Path(out.strip().splitlines()[-1])
    if terminal is not None:
        terminal(f"local cluster up in {time.monotonic() - t0:.0f} s: {kubeconfig}")
    try:
        yield Cluster(state_dir, kubeconfig, env)
    finally:
        subprocess.run(["bash", str(SCRIPT), "down"], env=env, capture_output=True, check=False, timeout=120)


def python() -> str:
    return sys.executable
