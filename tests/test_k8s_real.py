"""The Kubernetes backend end to end against a REAL control plane: ``scripts/local-cluster.sh``.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler (v1.36.3) run on 127.0.0.1 with kwok
(v0.8.0) playing the nodes and kubelets: admission, RBAC, server-side apply, watches, ReplicaSets,
scheduling, ResourceQuota and the ``pods/resize`` subresource are the real thing. What kwok fakes is
the container runtime: pods become Ready after a stage delay, and its stages write what a kubelet
with in-place resize writes (see hack/k8s/kwok-stages.yaml.in). Each test works in its own namespace.

The session fixture builds the binaries when the cache (~/.cache/infadapter/k8s-v1.36.3) is absent:
minutes on a fresh machine, with progress on the terminal; the cache only makes it faster.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_helpers import run_cli
from k8s_cluster import ROOT, Kube, KubeHTTPError, start_cluster, terminal_printer

from infadapter.backends.kubernetes.api import KubeOptions
from infadapter.backends.kubernetes.backend import KubernetesBackend
from infadapter.core.plan import Plan
from infadapter.ports import free_port
from infadapter.render import RenderConfig, render_platform

# The kubernetes client still calls urllib3's deprecated HTTPResponse.getheaders() on API errors.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:HTTPResponse.getheaders:DeprecationWarning")]

#: A busy stretch of the paper's trace: its peak needs more than one 8-core node (see the adapt test).
BUSY_WINDOW = "1768200:1260"


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Any:
    terminal = terminal_printer(request)
    with start_cluster(tmp_path_factory.mktemp("k8s"), terminal) as c:
        yield c


@pytest.fixture(scope="session")
def admin(kube_cluster: Any) -> Any:
    k = Kube(kube_cluster.kubeconfig)
    yield k
    k.close()


@pytest.fixture
def make_ns(admin: Kube) -> Any:
    """Namespaces ready for the adapter, deleted after the test (its pods go, so the nodes' CPU frees)."""
    made: list[str] = []

    def make(name: str, claim: bool = True) -> str:
        made.append(name)
        if claim:
            return admin.make_namespace(name)
        admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        admin.wait("default ServiceAccount", lambda: admin._exists("ServiceAccount", "default", name))
        return name

    yield make
    for name in made:  # free the CPU now (pods go in ~0.1 s with kwok), let the namespace go in the background
        for kind in ("Deployment", "ReplicaSet", "Pod"):
            admin.call("DELETE", admin.path(kind, name), query={"gracePeriodSeconds": 0})
        admin.delete("Namespace", name)
        admin.delete("PersistentVolume", f"models-{name}")
    for name in made:
        admin.wait(f"pods of {name} gone", lambda n=name: not admin.list("Pod", n), timeout_s=60)


class Router:
    """Records each routing call and, at that moment, what the API server holds (the make-before-break
    check is made when the switch happens, not reconstructed afterwards)."""

    def __init__(self, admin: Kube, ns: str) -> None:
        self.admin, self.ns = admin, ns
        self.calls: list[dict[str, Any]] = []

    def set_backends(self, backends: Any) -> Any:
        weights = {b["name"]: b["weight"] for b in backends}
        seen = self.admin.variants(self.ns)
        ready = {n for n, d in seen.items() if (d.get("status") or {}).get("readyReplicas", 0) >= d["spec"]["replicas"]}
        cpu = {  # one pod a variant in these tests
            p["metadata"]["labels"]["infadapter.io/variant"]: p["spec"]["containers"][0]["resources"]["limits"]["cpu"]
            for p in self.admin.pods(self.ns)
        }
        self.calls.append({"weights": weights, "exist": set(seen), "ready": ready, "cpu": cpu})
        return {}


def plan(**cores_share: tuple[float, float]) -> Plan:
    return Plan.from_dict(
        {"load": 50, "variants": [{"name": n, "cores": c, "share": s} for n, (c, s) in cores_share.items()]}
    )


def make_backend(
    kube_cluster: Any,
    admin: Kube,
    ns: str,
    profile: Any,
    dispatcher: Any = None,
    kubeconfig: str | None = None,
    **render: Any,
) -> KubernetesBackend:
    rc = RenderConfig.model_validate({"namespace": ns, **render})
    opts = KubeOptions(
        kubeconfig=kubeconfig or str(kube_cluster.kubeconfig), ready_timeout_s=60, resize_timeout_s=20, backoff_s=0.2
    )
    return KubernetesBackend(profile, rc, opts, router=dispatcher)


class DeploymentWatch:
    """A real watch on the namespace's Deployments, in a thread: (type, name, ready replicas, replicas)."""

    def __init__(self, admin: Kube, ns: str) -> None:
        self.admin, self.ns = admin, ns
        self.events: list[tuple[str, str, int, int]] = []
        rv = admin.call("GET", admin.path("Deployment", ns))["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, args=(rv,), daemon=True)
        self._thread.start()

    def _run(self, rv: str) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        resp = self.admin.api.call_api(
            self.admin.path("Deployment", self.ns),
            "GET",
            query_params=[("watch", "true"), ("resourceVersion", rv), ("timeoutSeconds", 120)],
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _preload_content=False,
            _request_timeout=130,
        )
        try:
            for line in iter_resp_lines(resp):
                ev = json.loads(line)
                d = ev["object"]
                self.events.append(
                    (
                        ev["type"],
                        d["metadata"]["name"],
                        int((d.get("status") or {}).get("readyReplicas", 0)),
                        int(d["spec"]["replicas"]),
                    )
                )
        except Exception:  # the connection closes when the test ends
            return

    def first(self, kind: str, name: str, ready: bool = False) -> int:
        for i, (t, n, r, want) in enumerate(self.events):
            if t == kind and n == name and (not ready or r >= want):
                return i
        raise AssertionError(f"no {kind} {name} (ready={ready}) in {self.events}")


# -- the script --------------------------------------------------------------------------------------
def test_up_is_idempotent_and_status_names_every_component(kube_cluster: Any) -> None:
    again = kube_cluster.script("up")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == str(kube_cluster.kubeconfig)
    assert "already running" in again.stderr
    st = kube_cluster.script("status")
    assert st.returncode == 0, st.stdout
    for component in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"):
        assert f"{component}: running" in st.stdout


def test_the_cluster_is_ready_for_the_default_render_config(admin: Kube) -> None:
    """4 kwok nodes of 8 CPU, namespace infadapter with the model-store claim bound, version reported."""
    nodes = admin.list("Node", selector="type=kwok")
    assert len(nodes) == 4
    assert {n["status"]["allocatable"]["cpu"] for n in nodes} == {"8"}
    assert admin.get("PersistentVolumeClaim", "infadapter-models", "infadapter")["status"]["phase"] == "Bound"
    assert admin.call("GET", "/version")["gitVersion"] == "v1.36.3"


def test_down_stops_every_process_it_started(tmp_path: Path) -> None:
    with start_cluster(tmp_path / "second", None, "--nodes", "1") as c:
        pids = [int(p.read_text()) for p in (c.state_dir / "pids").iterdir()]
        assert len(pids) == 5
        down = c.script("down")
        assert down.returncode == 0, down.stderr
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (tmp_path / "second").exists()


def test_bad_options_are_one_line_and_exit_2(tmp_path: Path) -> None:
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "local-cluster.sh"), "up", "--nodes", "many"],
        capture_output=True,
        text=True,
        env={**os.environ, "INFADAPTER_CLUSTER_DIR": str(tmp_path)},
    )
    assert r.returncode == 2
    assert r.stderr.strip() == "local-cluster: --nodes: expected a whole number >= 1, got 'many'"


def test_help_is_the_whole_header_comment(tmp_path: Path) -> None:
    """`--help` prints the script's header comment to its last line (a fixed line range once cut it short)."""
    script = ROOT / "scripts" / "local-cluster.sh"
    header = []
    for line in script.read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        header.append(line[2:] if line.startswith("# ") else line[1:])
    r = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True,
                       env={**os.environ, "INFADAPTER_CLUSTER_DIR": str(tmp_path)})
    assert r.returncode == 2
    assert r.stderr.splitlines() == header and header[-1] == "(its log is named)."
    assert any("build-image" in line for line in header)


# -- the backend against the real API server ---------------------------------------------------------
def test_change_of_variants_is_make_before_break(kube_cluster: Any, admin: Kube, make_ns: Any, paper: Any) -> None:
    ns = make_ns("mbb")
    router = Router(admin, ns)
    b = make_backend(kube_cluster, admin, ns, paper, router)
    first = b.apply(plan(resnet50=(4, 0.7), resnet18=(2, 0.3)))
    assert first.ok, first.error
    watch = DeploymentWatch(admin, ns)
    second = b.apply(plan(resnet50=(4, 0.6), resnet34=(2, 0.4)))
    assert second.ok, second.error
    admin.wait("old variant gone", lambda: "resnet18" not in admin.variants(ns))
    time.sleep(0.5)
    # The watch (server order): tfs-resnet34 Ready before tfs-resnet18 is deleted.
    assert watch.first("MODIFIED", "tfs-resnet34", ready=True) < watch.first("DELETED", "tfs-resnet18")
    # When the weights switched, resnet34 was Ready and resnet18 still existed.
    switch = router.calls[-1]
    assert switch["weights"] == {"resnet50": 0.6, "resnet34": 0.4}
    assert "resnet34" in switch["ready"] and "resnet18" in switch["exist"]
    # Rendered objects are there: ConfigMap, Service, Deployment per variant, with our labels.
    for kind in ("Deployment", "Service", "ConfigMap"):
        names = {o["metadata"]["name"] for o in admin.list(kind, ns, "infadapter.io/variant")}
        assert {"tfs-resnet50", "tfs-resnet34"} <= {n.removesuffix("-config") for n in names}, kind
        assert not any("resnet18" in n for n in names)


def test_a_plan_outgrown_while_its_pods_start_is_dropped_and_nothing_is_routed(
    kube_cluster: Any, admin: Kube, make_ns: Any, paper: Any
) -> None:
    """The loop's abandon_when says the plan was outgrown while resnet34's pod starts: the apply deletes the new
    Deployment, routes nothing and returns the old plan, whose pods were never touched."""
    ns = make_ns("abandon")
    router = Router(admin, ns)
    b = make_backend(kube_cluster, admin, ns, paper, router)
    assert b.apply(plan(resnet50=(4, 0.7), resnet18=(2, 0.3))).ok
    before = {p["metadata"]["uid"] for p in admin.pods(ns)}
    routed = len(router.calls)
    asked: list[float] = []
    b.abandon_when = lambda target: asked.append(target.load_rps) or "resnet50 62.0 req/s outgrew the plan"
    result = b.apply(plan(resnet50=(4, 0.6), resnet18=(2, 0.2), resnet34=(2, 0.2)))
    assert result.abandoned == "resnet50 62.0 req/s outgrew the plan" and not result.ok, result
    assert asked == [50]
    assert result.serving.cores_by_name() == {"resnet50": 4, "resnet18": 2}
    assert "rolled back: deleted resnet34" in result.actions, result.actions
    assert len(router.calls) == routed  # the dispatcher never saw resnet34
    admin.wait("resnet34 gone", lambda: "resnet34" not in admin.variants(ns))
    admin.wait("only the old plan's pods, untouched", lambda: {p["metadata"]["uid"] for p in admin.pods(ns)} == before)
    # The loop decides again: the same plan, nothing outgrown, applies in full.
    b.abandon_when = None
    assert b.apply(plan(resnet50=(4, 0.6), resnet18=(2, 0.2), resnet34=(2, 0.2))).ok


@pytest.fixture
def tight_node(admin: Kube) -> Any:
    """A kwok node of 2 CPU (or ``cpu``) of its own: tainted, so only pods that tolerate and select it land there."""
    made: list[str] = []

    def make(name: str, cpu: str = "2") -> dict[str, Any]:
        made.append(name)
        admin.apply({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name,
                         "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                         "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
            "spec": {"taints": [{"key": "infadapter.io/tight", "value": name, "effect": "NoSchedule"}]},
            "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
                       "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"}},
        })
        def ready() -> bool:  # Ready, and the node controller has lifted its not-ready taint (pods may come)
            n = admin.get("Node", name)
            return any(c["type"] == "Ready" and c["status"] == "True"
                       for c in (n.get("status") or {}).get("conditions", [])) and not any(
                t.get("key", "").startswith("node.kubernetes.io/") for t in (n.get("spec") or {}).get("taints", []))

        admin.wait(f"node {name} ready", ready)
        return {"node_selector": {"kubernetes.io/hostname": name},
                "tolerations": [{"key": "infadapter.io/tight", "operator": "Exists", "effect": "NoSchedule"}]}

    yield make
    for name in made:
        admin.delete("Node", name)


def test_placement_counts_what_placed_pods_ask_beyond_their_node_as_overcommitted(
    kube_cluster: Any, admin: Kube, make_ns: Any, paper: Any, tight_node: Any
) -> None:
    """A pod whose spec asks more than its node has left (an in-place growth the kubelet deferred: the spec
    already holds the new request) leaves the node overcommitted by the difference; the backend's room
    making waits for that as for a pending pod, so it gives cores up instead of waiting for a resize that the
    kubelet cannot admit (the real node's live run: 120 s lost on a deferred growth of resnet101)."""
    from infadapter.backends.kubernetes import cluster

    ns = make_ns("overcommit")
    node = f"tight-{ns}"
    sel = tight_node(node)
    b = make_backend(kube_cluster, admin, ns, paper, tfserving=sel)
    for name, cpu in (("big", "1500m"), ("grown", "1")):  # placed by hand, as the kubelet holds them: 2.5 of 2
        admin.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
                     "spec": {"nodeName": node, "tolerations": sel["tolerations"], "terminationGracePeriodSeconds": 0,
                              "containers": [{"name": "c", "image": "registry.invalid/none",
                                              "resources": {"requests": {"cpu": cpu}}}]}})

    def seen() -> Any:
        return cluster.placement(b.api, b.config, []).overcommitted > 0 or None

    try:  # a node whose not-ready taint is still there takes no pods, so it is not counted
        admin.wait("the node overcommitted", seen, timeout_s=60)
    except AssertionError:
        conds = {c["type"]: c["status"] for c in admin.get("Node", node)["status"].get("conditions", [])}
        phases = {p["metadata"]["name"]: p.get("status", {}).get("phase") for p in admin.list("Pod", ns)}
        raise AssertionError(f"no overcommit seen: node conditions {conds}, pods {phases}") from None
    where = cluster.placement(b.api, b.config, [])
    assert (where.overcommitted, where.lacking) == (0.5, 0.0), where
    assert cluster.free_cores(b.api, b.config) == 0.0
    admin.call("DELETE", admin.path("Pod", ns, "big"), query={"gracePeriodSeconds": 0})
    admin.wait("room again", lambda: cluster.placement(b.api, b.config, []).overcommitted == 0.0)
    assert cluster.free_cores(b.api, b.config) == 1.0
    b.stop()


def test_no_room_for_make_before_break_gives_the_dropped_cores_up_first(
    kube_cluster: Any, admin: Kube, make_ns: Any, paper: Any, tight_node: Any
) -> None:
    """The plan holds all 2 cores of the only node its pods may use: the new variant's pod cannot be placed
    beside the old ones. Instead of waiting out the ready timeout, the apply routes the plan's variant that
    serves, deletes the dropped one, and the new one runs on the freed core."""
    ns = make_ns("room")
    router = Router(admin, ns)
    b = make_backend(kube_cluster, admin, ns, paper, router, tfserving=tight_node(f"tight-{ns}"))
    b.options = replace(b.options, ready_timeout_s=90)
    first = b.apply(plan(resnet50=(1.0, 0.6), resnet18=(1.0, 0.4)))
    assert first.ok, first.error
    assert {p["spec"]["nodeName"] for p in admin.pods(ns)} == {f"tight-{ns}"}
    second = b.apply(plan(resnet50=(1.0, 0.5), resnet34=(1.0, 0.5)))
    assert second.ok, (second.error, second.actions)
    text = " | ".join(second.actions)
    assert "no room on the nodes for resnet34" in text and "Insufficient cpu" in text and "making room first" in text
    # the gap: resnet50 alone (the plan's serving variant), then the whole plan once resnet34 is ready
    assert router.calls[-2]["weights"] == {"resnet50": 1.0}
    assert router.calls[-1]["weights"] == {"resnet50": 0.5, "resnet34": 0.5}
    assert "resnet34" in router.calls[-1]["ready"] and "resnet18" not in router.calls[-1]["exist"]
    assert set(admin.variants(ns)) == {"resnet50", "resnet34"}
    # a plan that fits beside what runs is still make-before-break (no gap route)
    calls = len(router.calls)
    third = b.apply(plan(resnet50=(1.0, 0.7), resnet34=(1.0, 0.3)))
    assert third.ok and len(router.calls) == calls + 1 and "making room" not in " | ".join(third.actions)


def test_no_room_and_nothing_dropped_shrinks_the_serving_variant_only_by_what_the_new_one_lacks(
    kube_cluster: Any, admin: Kube, make_ns: Any, paper: Any, tight_node: Any
) -> None:
    """resnet50 holds all 3 cores of its node; the plan keeps it on 1 and adds resnet34 on 1. The gap route
    sends everything to resnet50, so it gives up in place only the 1 core resnet34 lacks (3 -> 2, same pod),
    and goes down to its planned 1 core after the whole plan routes."""
    ns = make_ns("part")
    router = Router(admin, ns)
    b = make_backend(kube_cluster, admin, ns, paper, router, tfserving=tight_node(f"tight-{ns}", cpu="3"))
    b.options = replace(b.options, ready_timeout_s=90)
    assert b.apply(plan(resnet50=(3.0, 1.0))).ok
    uid = admin.pods(ns, "resnet50")[0]["metadata"]["uid"]
    second = b.apply(plan(resnet50=(1.0, 0.5), resnet34=(1.0, 0.5)))
    assert second.ok, (second.error, second.actions)
    text = " | ".join(second.actions)
    assert "resize resnet50 3 -> 2 cores in place to make room" in text, text
    assert "resize resnet50 2 cores -> 1 cores in place" in text, text
    assert router.calls[-2]["weights"] == {"resnet50": 1.0}
    assert router.calls[-1]["weights"] == {"resnet50": 0.5, "resnet34": 0.5}
    pods = admin.pods(ns, "resnet50")
    assert [p["metadata"]["uid"] for p in pods] == [uid]  # the same pod throughout
    assert pods[0]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "1"


def test_no_room_moves_traffic_off_a_variant_before_its_cores_go(
    kube_cluster: Any, admin: Kube, make_ns: Any, paper: Any, tight_node: Any
) -> None:
    """resnet18 (2 cores) and resnet50 (1) fill a 3-core node; the plan keeps both on 1 core and adds resnet34.
    resnet18 gives up the core resnet34 lacks, in place. Found on the real node: routed after the resize, the
    shrunk variant kept its old share for the seconds between, and shed it with 503. The gap route (resnet18
    at its new core) comes first, while its pod still has 2."""
    ns = make_ns("order")
    router = Router(admin, ns)
    b = make_backend(kube_cluster, admin, ns, paper, router, tfserving=tight_node(f"tight-{ns}", cpu="3"))
    b.options = replace(b.options, ready_timeout_s=90)
    assert b.apply(plan(resnet18=(2.0, 0.6), resnet50=(1.0, 0.4))).ok
    second = b.apply(plan(resnet18=(1.0, 0.4), resnet50=(1.0, 0.3), resnet34=(1.0, 0.3)))
    assert second.ok, (second.error, second.actions)
    text = " | ".join(second.actions)
    assert "resize resnet18 2 -> 1 cores in place to make room" in text, text
    gap = [c for c in router.calls if set(c["weights"]) == {"resnet18", "resnet50"} and c["cpu"].get("resnet34")]
    assert gap, router.calls
    # routed while resnet18 still had 2 cores, with the share its 1 core serves (in proportion to capacity)
    assert gap[0]["cpu"]["resnet18"] == "2", gap
    cap18, cap50 = paper.capacity_rps("resnet18", 1.0), paper.capacity_rps("resnet50", 1.0)
    assert gap[0]["weights"]["resnet18"] == pytest.approx(cap18 / (cap18 + cap50), abs=0.01), gap
    assert router.calls[-1]["weights"] == {"resnet18": 0.4, "resnet50": 0.3, "resnet34": 0.3}


def test_no_room_gives_cores_up_one_variant_at_a_time_keeping_the_fastest_serving_longest(
    kube_cluster: Any, admin: Kube, make_ns: Any, paper: Any, tight_node: Any
) -> None:
    """A 3-core node full with resnet152 (1 core) and resnet18 (2); the plan replaces both by resnet50 (1) and
    resnet34 (2). resnet18 serves the most per core, so it carries the gap while resnet152 goes first; the
    freed core takes resnet50, which is ready before resnet18 goes to make room for resnet34."""
    ns = make_ns("stage")
    router = Router(admin, ns)
    b = make_backend(kube_cluster, admin, ns, paper, router, tfserving=tight_node(f"tight-{ns}", cpu="3"))
    b.options = replace(b.options, ready_timeout_s=90)
    assert b.apply(plan(resnet152=(1.0, 0.5), resnet18=(2.0, 0.5))).ok
    watch = DeploymentWatch(admin, ns)
    second = b.apply(plan(resnet50=(1.0, 0.5), resnet34=(2.0, 0.5)))
    assert second.ok, (second.error, second.actions)
    assert [c["weights"] for c in router.calls[-3:]] == [
        {"resnet18": 1.0}, {"resnet50": 1.0}, {"resnet50": 0.5, "resnet34": 0.5}], router.calls
    time.sleep(0.5)
    assert watch.first("DELETED", "tfs-resnet152") < watch.first("MODIFIED", "tfs-resnet50", ready=True)
    assert watch.first("MODIFIED", "tfs-resnet50", ready=True) < watch.first("DELETED", "tfs-resnet18")
    assert set(admin.variants(ns)) == {"resnet50", "resnet34"}


def test_cores_only_change_resizes_in_place_keeping_pod_name_and_uid(
    kube_cluster: Any, admin: Kube, make_ns: Any, paper: Any
) -> None:
    ns = make_ns("resize")
    b = make_backend(kube_cluster, admin, ns, paper)
    assert b.apply(plan(resnet50=(4, 1.0))).ok
    (pod,) = admin.pods(ns, "resnet50")
    result = b.apply(plan(resnet50=(6, 1.0)))
    assert result.ok, result.error
    assert any("in place (pods/resize" in a for a in result.actions), result.actions
    (after,) = admin.pods(ns, "resnet50")
    assert (after["metadata"]["name"], after["metadata"]["uid"]) == (pod["metadata"]["name"], pod["metadata"]["uid"])
    # The backend waited for the status (kwok's resize stages) to follow the spec.
    (cs,) = after["status"]["containerStatuses"]
    assert cs["resources"]["limits"]["cpu"] == cs["resources"]["requests"]["cpu"] == "6"
    assert not [c for c in after["status"]["conditions"] if c["type"].startswith("PodResize")]


def test_resize_beyond_the_node_is_refused_and_replaced_by_more_pods(
    kube_cluster: Any, admin: Kube, make_ns: Any, paper: Any
) -> None:
    """tfserving.max_pod_cores says 16 but nodes have 8: the resize 4 -> 12 is refused with 403 by the
    API server's admission; the backend replaces the pods by pods no larger than what ran (4), once."""
    ns = make_ns("refused")
    b = make_backend(kube_cluster, admin, ns, paper, tfserving={"max_pod_cores": 16})
    assert b.apply(plan(resnet50=(4, 1.0))).ok
    result = b.apply(plan(resnet50=(12, 1.0)))
    assert result.ok, result.error
    (action,) = [a for a in result.actions if a.startswith("replace resnet50")]
    assert "resize refused" in action and "403" in action and "3 pods of 4" in action, action
    pods = admin.pods(ns, "resnet50")
    cpus = [p["spec"]["containers"][0]["resources"]["limits"]["cpu"] for p in pods]
    assert cpus == ["4", "4", "4"]
    assert b.apply(plan(resnet50=(12, 1.0))).actions == ("no change",)  # no retry of the refused resize


@pytest.mark.parametrize("reason", ["Infeasible", "Deferred"])
def test_resize_the_node_refuses_falls_back_to_a_rolling_replacement(
    kube_cluster: Any, admin: Kube, make_ns: Any, paper: Any, reason: str
) -> None:
    """kwok's forced refusal (pod annotation kwok.infadapter.io/resize) sets PodResizePending, as a
    kubelet without room does. Infeasible: replaced at once; Deferred: after the resize timeout."""
    ns = make_ns(f"refuse-{reason.lower()}")
    b = make_backend(kube_cluster, admin, ns, paper)
    b.options = KubeOptions(
        kubeconfig=str(kube_cluster.kubeconfig), ready_timeout_s=60, resize_timeout_s=3, backoff_s=0.2
    )
    assert b.apply(plan(resnet50=(4, 1.0))).ok
    (pod,) = admin.pods(ns, "resnet50")
    admin.patch(
        "Pod", pod["metadata"]["name"], ns, {"metadata": {"annotations": {"kwok.infadapter.io/resize": reason}}}
    )
    result = b.apply(plan(resnet50=(6, 1.0)))
    assert result.ok, result.error
    (action,) = [a for a in result.actions if a.startswith("replace resnet50")]
    assert f"PodResizePending {reason}" in action and "rolling replacement" in action, action
    admin.wait("old pod gone", lambda: pod["metadata"]["uid"] not in {p["metadata"]["uid"] for p in admin.pods(ns)})
    cpus = sorted(float(p["spec"]["containers"][0]["resources"]["limits"]["cpu"]) for p in admin.pods(ns, "resnet50"))
    assert sum(cpus) == 6 and max(cpus) <= 4 if reason == "Infeasible" else cpus == [6.0]


def test_hpa_pod_rules_scale_replicas_keeping_the_pods_and_set_no_cpu_limit(
    kube_cluster: Any, admin: Kube, make_ns: Any, paper: Any
) -> None:
    """A policy whose cores are replicas of a fixed pod (HPA's ``in_place`` False, pod 2 cores), here also
    without CPU limits (``cpu_limited`` False, as vpa-requests): 4 -> 8 -> 4 cores is 2 -> 4 -> 2 pods of 2,
    the running pods kept (same UIDs: a scale, neither a resize nor a roll), each pod's CPU request 2 and no
    CPU limit; the API server and the ReplicaSet controller do the rest."""
    from infadapter.render import PodRules

    ns = make_ns("hpa-pods")
    b = make_backend(kube_cluster, admin, ns, paper)
    b.pods = PodRules(in_place=False, cpu_limited=False, pod_cores=2.0)

    def pods() -> dict[str, dict[str, Any]]:
        return {p["metadata"]["uid"]: p["spec"]["containers"][0]["resources"] for p in admin.pods(ns, "resnet50")}

    assert b.apply(plan(resnet50=(4, 1.0))).ok
    first = pods()
    assert len(first) == 2
    result = b.apply(plan(resnet50=(8, 1.0)))
    assert result.ok, result.error
    assert any(a.startswith("scale resnet50 4 cores as 2 pods of 2 -> 8 cores as 4 pods of 2") for a in result.actions)
    assert not any("in place" in a or "rolling" in a for a in result.actions), result.actions
    grown = pods()
    assert admin.variants(ns)["resnet50"]["spec"]["replicas"] == 4 and len(grown) == 4
    assert set(first) <= set(grown)  # the two running pods stay
    for res in grown.values():
        assert res["requests"]["cpu"] == "2" and "cpu" not in (res.get("limits") or {}), res
    result = b.apply(plan(resnet50=(4, 1.0)))
    assert result.ok, result.error
    admin.wait("2 pods left", lambda: len(pods()) == 2)
    assert admin.variants(ns)["resnet50"]["spec"]["replicas"] == 2


def test_a_restarted_backend_recovers_the_plan_without_duplicates_or_orphans(
    kube_cluster: Any, admin: Kube, make_ns: Any, paper: Any
) -> None:
    ns = make_ns("recover")
    a = plan(resnet50=(4, 0.7), resnet18=(2, 0.3))
    assert make_backend(kube_cluster, admin, ns, paper).apply(a).ok
    # An apply that died after creating a variant leaves it without the committed generation.
    dying = make_backend(kube_cluster, admin, ns, paper)
    spec = dying._specs(plan(resnet50=(4, 0.5), resnet18=(2, 0.3), resnet34=(2, 0.2)), {})
    dying._apply_variant(
        next(s for s in spec if s.name == "resnet34"), plan(resnet50=(4, 0.5), resnet18=(2, 0.3), resnet34=(2, 0.2)), 99
    )
    fresh = make_backend(kube_cluster, admin, ns, paper)
    st = fresh.state()
    assert st.plan is not None and st.plan.shares_by_name()["resnet34"] == 0  # recovered: the orphan has no share
    # ... and the accuracy of what serves (a resumed run's summary and `status` read it).
    assert st.plan.accuracy == pytest.approx(0.7 * paper.variant("resnet50").accuracy
                                             + 0.3 * paper.variant("resnet18").accuracy)
    result = fresh.apply(a)
    assert result.ok, result.error
    assert any(x.startswith("recovered generation") for x in result.actions)
    assert "delete resnet34" in result.actions
    assert sorted(admin.variants(ns)) == ["resnet18", "resnet50"]
    assert len(admin.pods(ns, "resnet50")) == 1 and len(admin.pods(ns, "resnet18")) == 1


def test_resource_quota_violation_fails_cleanly_and_the_previous_plan_keeps_serving(
    kube_cluster: Any, admin: Kube, make_ns: Any, paper: Any
) -> None:
    ns = make_ns("quota")
    admin.apply(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "cpu", "namespace": ns},
            "spec": {"hard": {"limits.cpu": "6", "requests.cpu": "6"}},
        }
    )
    b = make_backend(kube_cluster, admin, ns, paper)
    assert b.apply(plan(resnet50=(4, 1.0))).ok
    t0 = time.monotonic()
    result = b.apply(plan(resnet50=(4, 0.6), resnet18=(4, 0.4)))
    assert not result.ok
    assert time.monotonic() - t0 < b.options.ready_timeout_s
    assert "exceeded quota" in result.error, result.error
    assert "rolled back: deleted resnet18" in result.actions
    assert result.serving.names == ("resnet50",)
    assert sorted(admin.variants(ns)) == ["resnet50"]
    assert [o["metadata"]["name"] for o in admin.list("ConfigMap", ns, "infadapter.io/variant")] == [
        "tfs-resnet50-config"
    ]


def test_apply_timeout_reports_scheduling_conditions_and_events(
    kube_cluster: Any, admin: Kube, make_ns: Any, paper: Any
) -> None:
    """A pod larger than any node (max_pod_cores 16 on 8-core nodes) stays Pending; the error says why."""
    ns = make_ns("pending")
    b = make_backend(kube_cluster, admin, ns, paper, tfserving={"max_pod_cores": 16})
    b.options = KubeOptions(kubeconfig=str(kube_cluster.kubeconfig), ready_timeout_s=5, backoff_s=0.2)
    result = b.apply(plan(resnet50=(12, 1.0)))
    assert not result.ok
    assert "Unschedulable" in result.error and "Insufficient cpu" in result.error, result.error
    assert "FailedScheduling" in result.error
    assert admin.variants(ns) == {}


# -- RBAC ----------------------------------------------------------------------------------------------
def test_rendered_rbac_lets_the_adapter_work_and_nothing_more(
    kube_cluster: Any, admin: Kube, make_ns: Any, paper: Any, tmp_path: Path
) -> None:
    ns = make_ns("rbac")
    make_ns("rbac-other")
    rc = RenderConfig(namespace=ns)
    for m in render_platform(rc):
        if m.kind in ("ServiceAccount", "Role", "RoleBinding"):
            admin.apply(m.obj)
    kc = admin.token_kubeconfig(rc.adapter.name, ns, tmp_path / "sa.kubeconfig")
    sa = Kube(kc)
    try:
        b = make_backend(kube_cluster, admin, ns, paper, kubeconfig=str(kc), tfserving={"max_pod_cores": 8})
        assert b.preflight() == ([], [])
        assert b.apply(plan(resnet50=(4, 0.7), resnet18=(2, 0.3))).ok
        assert b.apply(plan(resnet50=(6, 0.7), resnet18=(2, 0.3))).ok  # pods/resize allowed
        assert b.apply(plan(resnet50=(6, 0.6), resnet34=(2, 0.4))).ok  # create + delete
        assert sorted(sa.variants(ns)) == ["resnet34", "resnet50"]
        for kind, where in (("Secret", ns), ("Deployment", "rbac-other"), ("Node", "")):
            with pytest.raises(KubeHTTPError) as err:
                sa.list(kind, where)
            assert err.value.status == 403, (kind, where)
        assert b.cluster_max_pod_cores()[0] is None  # a Role cannot read nodes: the render config says 8
    finally:
        sa.close()


# -- the CLI, as the issue's "Must show" runs it --------------------------------------------------------
def _adapt(kc: Path, run_dir: Path, *extra: str, ns: str = "infadapter", timeout: float = 300) -> Any:
    return run_cli(
        "adapt",
        "--backend",
        "kubernetes",
        "--kubeconfig",
        str(kc),
        "--namespace",
        ns,
        "--profile",
        "profiles/paper.yaml",
        "--window",
        BUSY_WINDOW,
        "--speedup",
        "20",
        "--interval",
        "3",
        "--ready-timeout",
        "90",
        "--run-dir",
        str(run_dir),
        *extra,
        timeout=timeout,
    )


@pytest.fixture
def infadapter_ns(admin: Kube, paper: Any, kube_cluster: Any) -> Any:
    """The namespace local-cluster.sh prepared; the variants a test leaves there are deleted after it."""
    yield "infadapter"
    make_backend(kube_cluster, admin, "infadapter", paper).teardown()


def test_adapt_on_a_busy_window_then_status_and_restart(
    kube_cluster: Any, admin: Kube, infadapter_ns: str, tmp_path: Path
) -> None:
    kc = kube_cluster.kubeconfig
    r = _adapt(kc, tmp_path / "run", "--duration", "45", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["applies"] >= 1 and summary["last_apply_error"] == ""
    decisions = [json.loads(x) for x in (tmp_path / "run" / "decisions.jsonl").read_text().splitlines()]
    assert len(decisions) >= 5
    # The window needs more than one node's CPU at some point: some variant ran as several pods.
    assert any(" pods of " in a for d in decisions for a in d.get("actions", [])), [d.get("actions") for d in decisions]
    # No failed apply left unresolved: the last decision applied.
    assert not decisions[-1].get("apply_error")
    deps = admin.variants("infadapter")
    assert deps and all(d["status"].get("readyReplicas", 0) == d["spec"]["replicas"] for d in deps.values())
    total = 0.0
    for name in deps:
        for p in admin.pods("infadapter", name):
            res = p["spec"]["containers"][0]["resources"]
            assert res["requests"]["cpu"] == res["limits"]["cpu"]
            cpu = float(res["limits"]["cpu"].removesuffix("m")) / (1000 if res["limits"]["cpu"].endswith("m") else 1)
            assert cpu <= 8
            total += cpu
    assert total <= 20
    st = run_cli("status", "--backend", "kubernetes", "--kubeconfig", str(kc), "--namespace", "infadapter", "--json")
    assert st.returncode == 0, st.stderr
    doc = json.loads(st.stdout)
    assert {v["name"] for v in doc["variants"]} == set(deps)
    assert all(v["ready"] and v["matches_plan"] for v in doc["variants"]), doc["variants"]
    # A restarted adapter resumes from the cluster: nothing duplicated, nothing left over.
    again = _adapt(kc, tmp_path / "run2", "--duration", "9", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from the plan the backend holds" in json.dumps(
        json.loads((tmp_path / "run2" / "state.json").read_text()).get("messages")
    )
    after = admin.variants("infadapter")
    assert len(admin.list("Deployment", "infadapter")) == len(after)
    for name, d in after.items():
        assert len(admin.pods("infadapter", name)) == d["spec"]["replicas"]


def test_adapt_hpa_runs_replicas_of_its_pod_size(kube_cluster: Any, admin: Kube, make_ns: Any, tmp_path: Path) -> None:
    """``adapt --policy hpa:resnet50=2`` against the cluster: the backend is given HPA's pod rules. It takes over
    a variant another policy ran as 1 pod of 3 cores (static:resnet50=3): HPA reads round(3 / 2) = 2 replicas,
    4 cores, which run as 2 pods of 2 (without the rules: the 1 pod resized in place to 4, as
    test_cores_only_change_resizes_in_place_keeping_pod_name_and_uid shows); each pod's CPU request is the pod size, and
    its CPU limit is what HPA's entry says (``cpu_limited`` True: limit = request, as the simulator and
    the local backend hold it). The kubernetes backend reads no CPU usage (no metrics-server here), so
    live HPA keeps the replicas it starts with."""
    from infadapter.core.policies import entry

    ns = make_ns("hpa-adapt")
    first = _adapt(kube_cluster.kubeconfig, tmp_path / "run1", "--policy", "static:resnet50=3", "--duration", "6",
                   ns=ns)
    assert first.returncode == 0, first.stderr[-3000:]
    dep = admin.variants(ns)["resnet50"]
    assert dep["spec"]["replicas"] == 1
    r = _adapt(kube_cluster.kubeconfig, tmp_path / "run2", "--policy", "hpa:resnet50=2", "--duration", "9", "--json",
               ns=ns)
    assert r.returncode == 0, r.stderr[-3000:]
    decisions = [json.loads(x) for x in (tmp_path / "run2" / "decisions.jsonl").read_text().splitlines()]
    actions = [a for d in decisions for a in d.get("actions", [])]
    assert any(a.startswith("replace resnet50 3 cores -> 4 cores as 2 pods of 2 by rolling replacement")
               for a in actions), actions
    assert not any("in place" in a for a in actions), actions
    dep = admin.variants(ns)["resnet50"]
    assert dep["spec"]["replicas"] == 2 and dep["status"].get("readyReplicas") == 2
    admin.wait("the old pod gone", lambda: len(admin.pods(ns, "resnet50")) == 2)
    limited = entry("hpa").cpu_limited
    for p in admin.pods(ns, "resnet50"):
        res = p["spec"]["containers"][0]["resources"]
        assert res["requests"]["cpu"] == "2"
        assert (res.get("limits") or {}).get("cpu") == ("2" if limited else None), res


def test_adapt_survives_an_api_server_restart(kube_cluster: Any, admin: Kube, make_ns: Any, tmp_path: Path) -> None:
    ns = make_ns("restart")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "cli.py"),
            "-vv",
            "adapt",
            "--backend",
            "kubernetes",
            "--kubeconfig",
            str(kube_cluster.kubeconfig),
            "--namespace",
            ns,
            "--profile",
            "profiles/paper.yaml",
            "--window",
            BUSY_WINDOW,
            "--speedup",
            "20",
            "--interval",
            "3",
            "--ready-timeout",
            "60",
            "--duration",
            "30",
            "--json",
            "--run-dir",
            str(tmp_path / "run"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        admin.wait(
            "first plan applied and ready",
            lambda: (
                (d := admin.variants(ns))
                and all(x["status"].get("readyReplicas") == x["spec"]["replicas"] for x in d.values())
            ),
            timeout_s=60,
        )
        restart = kube_cluster.script("restart-apiserver", timeout=120)
        assert restart.returncode == 0, restart.stderr
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["applies"] >= 1
    # The outage was met (retries said at -vv, or an outage the loop held through).
    assert "cannot reach the API server" in err or summary["backend_outages"], err[-2000:]
    # No crash: a Deployment whose status the controllers have not refreshed yet still has ready replicas.
    assert summary["crashes"] == 0, err[-3000:]
    decisions = [json.loads(x) for x in (tmp_path / "run" / "decisions.jsonl").read_text().splitlines()]
    assert not [d for d in decisions if d["trigger"] == "crash"], decisions
    assert "Retrying (Retry(" not in err, err[-2000:]  # KubeApi is the one that retries, not urllib3
    deps = admin.variants(ns)
    assert len(admin.list("Deployment", ns)) == len(deps)
    for name, d in deps.items():
        assert len(admin.pods(ns, name)) == d["spec"]["replicas"]


def _adapt_in_background(kc: Path, ns: str, run_dir: Path, *extra: str) -> subprocess.Popen[str]:
    """``adapt --backend kubernetes --json`` on the busy window as a process (stdout: the summary)."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "adapt", "--backend", "kubernetes", "--kubeconfig", str(kc),
         "--namespace", ns, "--profile", "profiles/paper.yaml", "--window", BUSY_WINDOW, "--ready-timeout", "60",
         "--json", "--run-dir", str(run_dir), *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _what_runs(admin: Kube, ns: str) -> dict[str, tuple[str, frozenset[str]]]:
    """Per variant: its Deployment's uid and its pods' uids (a re-created object gets a new uid)."""
    return {name: (d["metadata"]["uid"], frozenset(p["metadata"]["uid"] for p in admin.pods(ns, name)))
            for name, d in admin.variants(ns).items()}


def test_adapt_holds_the_plan_through_a_20_s_api_server_outage(
    kube_cluster: Any, admin: Kube, make_ns: Any, tmp_path: Path
) -> None:
    """The API server stopped, 20 s later started again on the same port (``restart-apiserver`` with
    INFADAPTER_RESTART_PAUSE=20) during ``adapt --backend kubernetes --json``: the adapter says once that it is
    unreachable and once that it is back, decides nothing meanwhile, calls no server crashed and re-creates
    nothing. A fixed plan (static policy), so every Deployment and pod must come through with its uid."""
    ns = make_ns("outage")
    run = tmp_path / "run"
    proc = _adapt_in_background(kube_cluster.kubeconfig, ns, run, "--policy", "static:resnet50=4,resnet18=2",
                                "--speedup", "10", "--interval", "3", "--duration", "100")
    try:
        admin.wait("the plan applied and ready", lambda: len(d := admin.variants(ns)) == 2 and all(
            x["status"].get("readyReplicas") == x["spec"]["replicas"] for x in d.values()), timeout_s=90)
        before = _what_runs(admin, ns)
        restart = kube_cluster.script("restart-apiserver", timeout=180, env={"INFADAPTER_RESTART_PAUSE": "20"})
        assert restart.returncode == 0, restart.stderr
        assert proc.poll() is None, "the run ended before the API server came back: raise --duration"
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["crashes"] == 0 and summary["applies"] >= 1, err[-4000:]
    decisions = [json.loads(x) for x in (run / "decisions.jsonl").read_text().splitlines()]
    assert not [d for d in decisions if d["trigger"] == "crash" or "is down" in d.get("reason", "")], decisions
    # Said once each way, nothing else about it (no urllib3 "Retrying ..." lines, no failed applies).
    about = [x for x in err.splitlines()
             if re.search(r"unreachable|cannot reach|answers again|api server|retr|urllib3|connection", x, re.I)]
    assert len(about) <= 5, about
    assert len([x for x in about if "unreachable since" in x and "holding the plan" in x]) == 1, about
    assert len([x for x in about if "answers again after" in x]) == 1, about
    outages = summary["backend_outages"]
    assert len(outages) == 1 and outages[0]["until_s"] is not None, outages
    assert "cannot reach the API server" in outages[0]["reason"] and outages[0]["seconds"] > 10, outages
    # Accounted for, and one try a check (--check 1 s) once the first call gave up after its 5 tries.
    assert 1 <= summary["api_unreachable_tries"] <= 5 + 2 * (outages[0]["seconds"] + 5), summary
    # Nothing re-created: the same Deployments with the same pods.
    assert _what_runs(admin, ns) == before


def test_adapt_exits_non_zero_when_no_plan_was_ever_applied(
    kube_cluster: Any, admin: Kube, make_ns: Any, tmp_path: Path
) -> None:
    """A namespace whose quota admits no model server: every apply fails; adapt says so and exits 4."""
    ns = make_ns("noapply")
    admin.apply(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "cpu", "namespace": ns},
            "spec": {"hard": {"limits.cpu": "1"}},
        }
    )
    r = _adapt(kube_cluster.kubeconfig, tmp_path / "run", "--duration", "9", ns=ns)
    assert r.returncode == 4, r.stdout + r.stderr
    assert "no plan was ever applied" in r.stderr and "exceeded quota" in r.stderr, r.stderr[-2000:]
    assert admin.variants(ns) == {}


def test_preflight_names_a_missing_model_store_claim(kube_cluster: Any, make_ns: Any, tmp_path: Path) -> None:
    make_ns("noclaim", claim=False)
    r = _adapt(kube_cluster.kubeconfig, tmp_path / "run", "--duration", "6", ns="noclaim")
    assert r.returncode == 4
    assert "model_store.pvc: the claim 'infadapter-models' does not exist in namespace noclaim" in r.stderr
    assert "Traceback" not in r.stderr


def test_rendered_manifests_are_accepted_by_the_api_server(kube_cluster: Any, admin: Kube, tmp_path: Path) -> None:
    """`render` output (variants and platform) passes the API server's validation (server-side dry run)."""
    out = tmp_path / "manifests"
    r = run_cli("render", "--plan", str(ROOT / "tests" / "golden" / "plan.json"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    checked = 0
    for f in sorted(out.glob("*.yaml")):
        obj = yaml.safe_load(f.read_text())
        if not isinstance(obj, dict) or obj.get("kind") not in (
            "Deployment",
            "Service",
            "ConfigMap",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "Namespace",
        ):
            continue  # PodMonitor/ServiceMonitor need the Prometheus operator's CRDs
        meta = obj["metadata"]
        admin.call(
            "PATCH",
            admin.path(obj["kind"], meta.get("namespace", ""), meta["name"]),
            body=obj,
            query={"fieldManager": "tests", "dryRun": "All"},
            content_type="application/apply-patch+yaml",
        )
        checked += 1
    assert checked >= 10


# -- Gateway API (router: gateway) -----------------------------------------------------------------------
# No gateway controller (Envoy Gateway, Istio, ...) can route here: what the API server shows is tested
# (the CRDs' validation of every HTTPRoute we write, the order of writes, RBAC), not traffic.
@pytest.fixture(scope="session")
def gateway_crds(kube_cluster: Any) -> None:
    r = kube_cluster.script("gateway-api", timeout=300)
    assert r.returncode == 0, r.stderr


class Watch:
    """A real watch on one kind in a namespace, in a thread: (resourceVersion, type, object)."""

    def __init__(self, admin: Kube, kind: str, ns: str) -> None:
        self.admin, self.kind, self.ns = admin, kind, ns
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        rv = admin.call("GET", admin.path(kind, ns))["metadata"]["resourceVersion"]
        threading.Thread(target=self._run, args=(rv,), daemon=True).start()

    def _run(self, rv: str) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        try:
            resp = self.admin.api.call_api(
                self.admin.path(self.kind, self.ns),
                "GET",
                query_params=[("watch", "true"), ("resourceVersion", rv), ("timeoutSeconds", 120)],
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _preload_content=False,
                _request_timeout=130,
            )
            for line in iter_resp_lines(resp):
                ev = json.loads(line)
                self.events.append((int(ev["object"]["metadata"]["resourceVersion"]), ev["type"], ev["object"]))
        except Exception:  # the connection closes when the test ends
            return


def _route_weights(route: dict[str, Any]) -> dict[str, int]:
    return {b["name"]: b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]}


def test_render_router_gateway_writes_an_httproute_the_api_server_accepts(
    kube_cluster: Any, admin: Kube, make_ns: Any, gateway_crds: None, tmp_path: Path
) -> None:
    ns = make_ns("gw-render")
    cfg = tmp_path / "k8s.yaml"
    cfg.write_text(yaml.safe_dump({"namespace": ns}))
    out = tmp_path / "manifests"
    r = run_cli(
        "render",
        "--plan",
        str(ROOT / "tests" / "golden" / "plan.json"),
        "--config",
        str(cfg),
        "--out",
        str(out),
        "--router",
        "gateway",
    )
    assert r.returncode == 0, r.stderr
    route = yaml.safe_load((out / "infadapter.httproute.yaml").read_text())
    plan_doc = json.loads((ROOT / "tests" / "golden" / "plan.json").read_text())
    want = {f"tfs-{v['name']}": round(v["share"] * 1000) for v in plan_doc["variants"]}
    assert _route_weights(route) == want
    stored = admin.apply(route)  # validated against the Gateway API CRD's schema
    assert _route_weights(stored) == want
    # The CRD really validates: a negative weight is refused.
    bad = json.loads(json.dumps(route))
    bad["spec"]["rules"][0]["backendRefs"][0]["weight"] = -1
    with pytest.raises(KubeHTTPError) as err:
        admin.apply(bad)
    assert err.value.status == 422
    # Every variant serves the one public model name the route's clients call.
    cm = yaml.safe_load((out / "tfs-resnet50.configmap.yaml").read_text())
    assert 'name: "resnet"' in cm["data"]["models.config"]
    role = yaml.safe_load((out / "infadapter-adapter.role.yaml").read_text())
    (rule,) = [x for x in role["rules"] if "httproutes" in x["resources"]]
    assert rule == {
        "apiGroups": ["gateway.networking.k8s.io"],
        "resources": ["httproutes"],
        "verbs": ["create", "patch"],
    }


def test_backend_moves_httproute_weights_make_before_break(
    kube_cluster: Any, admin: Kube, make_ns: Any, gateway_crds: None, paper: Any, tmp_path: Path
) -> None:
    """With router: gateway, run by the rendered ServiceAccount (create/patch on httproutes only):
    a new variant gets weight only once Ready; a removed one goes to 0 before its Deployment is deleted,
    then leaves the route. Ordered by resourceVersion (one etcd: its revisions order all writes)."""
    ns = make_ns("gw-backend")
    rc = RenderConfig(namespace=ns, router="gateway")
    for m in render_platform(rc):
        if m.kind in ("ServiceAccount", "Role", "RoleBinding"):
            admin.apply(m.obj)
    kc = admin.token_kubeconfig(rc.adapter.name, ns, tmp_path / "sa.kubeconfig")
    b = make_backend(
        kube_cluster, admin, ns, paper, kubeconfig=str(kc), router="gateway", tfserving={"max_pod_cores": 8}
    )
    first = b.apply(plan(resnet50=(4, 0.7), resnet18=(2, 0.3)))
    assert first.ok, first.error
    assert _route_weights(admin.get("HTTPRoute", "infadapter", ns)) == {"tfs-resnet50": 700, "tfs-resnet18": 300}
    deps, routes = Watch(admin, "Deployment", ns), Watch(admin, "HTTPRoute", ns)
    time.sleep(0.5)
    second = b.apply(plan(resnet50=(4, 0.6), resnet34=(2, 0.4)))
    assert second.ok, second.error
    admin.wait("watch events", lambda: any(t == "DELETED" for _, t, _ in deps.events) and len(routes.events) >= 2)
    ready34 = min(
        rv
        for rv, t, d in deps.events
        if d["metadata"]["name"] == "tfs-resnet34"
        and (d.get("status") or {}).get("readyReplicas", 0) >= d["spec"]["replicas"]
    )
    deleted18 = min(rv for rv, t, d in deps.events if t == "DELETED" and d["metadata"]["name"] == "tfs-resnet18")
    switch = [(rv, _route_weights(r)) for rv, _, r in routes.events]
    got34 = min(rv for rv, w in switch if w.get("tfs-resnet34", 0) > 0)
    zero18 = min(rv for rv, w in switch if w.get("tfs-resnet18") == 0)
    assert ready34 < got34, (ready34, switch)
    assert zero18 < deleted18, (zero18, deleted18)
    assert switch[-1][1] == {"tfs-resnet50": 600, "tfs-resnet34": 400}
    # That ServiceAccount may write the route, not read or delete it.
    sa = Kube(kc)
    try:
        for call in (
            lambda: sa.get("HTTPRoute", "infadapter", ns),
            lambda: sa.list("HTTPRoute", ns),
            lambda: sa.delete("HTTPRoute", "infadapter", ns),
        ):
            with pytest.raises(KubeHTTPError) as err:
                call()
            assert err.value.status == 403
    finally:
        sa.close()


def test_adapt_with_router_gateway_keeps_the_route_on_the_plan(
    kube_cluster: Any, admin: Kube, make_ns: Any, gateway_crds: None, tmp_path: Path
) -> None:
    ns = make_ns("gw-adapt")
    r = _adapt(kube_cluster.kubeconfig, tmp_path / "run", "--duration", "12", "--router", "gateway", "--json", ns=ns)
    assert r.returncode == 0, r.stderr[-3000:]
    final = json.loads(r.stdout)["plan"]
    route = admin.get("HTTPRoute", "infadapter", ns)
    assert _route_weights(route) == {f"tfs-{v['name']}": round(v["share"] * 1000) for v in final["variants"]}
    _assert_every_decision_replays(tmp_path / "run")


def _assert_every_decision_replays(run_dir: Path) -> None:
    """``explain --replay`` of a Kubernetes run: every recorded decision re-solved offline gives its plan."""
    rep = run_cli("explain", "--run-dir", str(run_dir), "--replay", "--json")
    assert rep.returncode == 0, rep.stdout + rep.stderr
    doc = json.loads(rep.stdout)
    assert doc["ok"] and doc["reproduced"] == doc["decisions"] >= 3, doc


# -- a step load through a real dispatcher, then status (was tested against a fake API server) -----------
# Trace seconds: 120 at 20 req/s, 160 at 150 req/s, 320 at 20 req/s; at --speedup 40: 3 s, 4 s, 8 s.
STEP = [20.0] * 120 + [150.0] * 160 + [20.0] * 320
LOOP = ["--window", "0:600", "--speedup", "40", "--interval", "1", "--stabilization", "2", "--forecaster", "last"]


def test_adapt_step_load_with_a_real_dispatcher_then_status(
    kube_cluster: Any, admin: Kube, make_ns: Any, tmp_path: Path
) -> None:
    ns = make_ns("team-a")
    trace = tmp_path / "step.txt"
    trace.write_text("\n".join(f"{x:g}" for x in STEP) + "\n")
    token = tmp_path / "admin.token"
    token.write_text("t0ken\n")
    port = free_port()
    disp = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "dispatch", "--port", str(port), "--admin-token-file", str(token)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    kc = str(kube_cluster.kubeconfig)
    run_dir = tmp_path / "run"
    try:
        # --namespace through its environment variable (click's INFADAPTER_ prefix, per command).
        env = {"INFADAPTER_ADAPT_NAMESPACE": ns}
        r = run_cli(
            "adapt",
            "--backend",
            "kubernetes",
            "--kubeconfig",
            kc,
            "--dispatcher-url",
            f"http://127.0.0.1:{port}",
            "--admin-token-file",
            str(token),
            "--run-dir",
            str(run_dir),
            "--ready-timeout",
            "30",
            "--trace",
            str(trace),
            *LOOP,
            "--json",
            env=env,
            timeout=240,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        summary = json.loads(r.stdout)
        assert summary["namespace"] == ns and summary["failed_applies"] == 0, summary
        assert summary["decisions"] >= 5 and summary["transitions"] >= 2, summary
        final = {v["name"]: v for v in summary["plan"]["variants"]}
        deps = admin.variants(ns)
        assert sorted(deps) == sorted(final)
        for name, v in final.items():
            assert float(deps[name]["metadata"]["annotations"]["infadapter.io/cores"]) == v["cores"]
        # The real dispatcher holds the final plan's shares (it was driven through its admin API).
        import urllib.request

        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/admin/backends", headers={"Authorization": "Bearer t0ken"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            backends = json.loads(resp.read())["backends"]
        assert {b["name"]: b["share"] for b in backends} == pytest.approx(
            {n: v["share"] for n, v in final.items()}, abs=1e-5
        )
        # Within each decision: new variants ready, then the route, then deletes.
        records = [json.loads(line) for line in (run_dir / "decisions.jsonl").read_text().splitlines()]
        assert any(a.startswith("create ") for rec in records for a in rec["actions"])
        assert any(a.startswith("delete ") for rec in records for a in rec["actions"])
        for rec in records:
            kinds = [a.split(" ")[0].rstrip(":") for a in rec["actions"]]
            if "create" in kinds and "delete" in kinds:
                assert kinds.index("ready") < kinds.index("route") < kinds.index("delete"), rec["actions"]
    finally:
        disp.terminate()
        disp.wait(timeout=30)

    st = run_cli(
        "status", "--backend", "kubernetes", "--kubeconfig", kc, "--namespace", ns, "--run-dir", str(run_dir), "--json"
    )
    assert st.returncode == 0, st.stderr
    doc = json.loads(st.stdout)
    assert doc["namespace"] == ns and doc["running"] is True
    got = {v["name"]: v for v in doc["variants"]}
    assert sorted(got) == sorted(final)
    for name, v in final.items():
        g = got[name]
        assert g["planned_cores"] == v["cores"]
        assert g["cores"] == pytest.approx(v["cores"], abs=1e-3 * g["replicas"])  # whole millicores a pod
        assert g["ready_replicas"] == g["replicas"] == len(g["cores_per_pod"]) and g["ready"] and g["matches_plan"]
        assert g["planned_share"] == pytest.approx(v["share"])
    assert doc["adapter"]["running"] is False and "replay" in doc["adapter"]["observation"]
    assert doc["messages"] == []
    text = run_cli("status", "--backend", "kubernetes", "--kubeconfig", kc, "--namespace", ns)
    assert text.returncode == 0 and "planned cores" in text.stdout


def test_status_of_an_unreachable_cluster_is_one_line_exit_4(tmp_path: Path) -> None:
    kc = tmp_path / "kubeconfig"
    kc.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": f"https://127.0.0.1:{free_port()}", "insecure-skip-tls-verify": True},
                    }
                ],
                "users": [{"name": "u", "user": {"token": "x"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    gone = run_cli("status", "--backend", "kubernetes", "--kubeconfig", str(kc), "--namespace", "team-a")
    assert gone.returncode == 4 and gone.stderr.startswith("error: --kubeconfig:"), gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1


# -- the platform path: the Ansible adapter role's wiring drives the real API server -----------------------
def test_adapter_role_unit_and_environment_run_adapt_against_the_cluster(
    kube_cluster: Any, admin: Kube, make_ns: Any, tmp_path: Path
) -> None:
    """roles/adapter's configure and service tasks (ansible-playbook, local connection, no systemd here)
    render the profile, environment file and unit; the unit's ExecStart, run with that environment,
    is `cli.py adapt --backend kubernetes` and applies plans to the namespace."""
    ns = make_ns("ansible")
    etc, state, units = tmp_path / "etc", tmp_path / "state", tmp_path / "systemd"
    play = tmp_path / "play.yml"
    play.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Adapter wiring on this host",
                    "hosts": "localhost",
                    "connection": "local",
                    "gather_facts": False,
                    "vars": {
                        "ansible_python_interpreter": sys.executable,
            "adapter_source_dir": str(ROOT),
                        "adapter_install_dir": str(ROOT),
                        "adapter_venv_dir": str(Path(sys.executable).parent.parent),
                        "adapter_config_dir": str(etc),
                        "adapter_state_dir": str(state),
                        "adapter_systemd_dir": str(units),
                        "adapter_service_manage": False,
                        "adapter_kubeconfig": str(kube_cluster.kubeconfig),
                        "adapter_namespace": ns,
                        "adapter_interval_s": 3,
                        "adapter_metrics_port": 0,
                        "adapter_budget_cores": 16,
                        # A replayed window instead of the dispatcher/Prometheus a real deployment observes.
                        "adapter_extra_options": {
                            "window": BUSY_WINDOW,
                            "speedup": 20,
                            "duration": 9,
                            "ready-timeout": 60,
                        },
                    },
                    "tasks": [
                        {
                            "name": "Render the adapter's configuration and unit",
                            "ansible.builtin.include_role": {"name": "adapter", "tasks_from": "configure.yml"},
                        },
                        {
                            "name": "Render the adapter's unit",
                            "ansible.builtin.include_role": {"name": "adapter", "tasks_from": "service.yml"},
                        },
                    ],
                }
            ]
        )
    )
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
    }
    r = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(play)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    unit = (units / "infadapter-adapter.service").read_text()
    exec_start = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))[len("ExecStart=") :]
    env_file = next(ln for ln in unit.splitlines() if ln.startswith("EnvironmentFile="))[len("EnvironmentFile=") :]
    service_env = dict(
        ln.split("=", 1) for ln in Path(env_file).read_text().splitlines() if ln and not ln.startswith("#")
    )
    assert service_env["KUBECONFIG"] == str(kube_cluster.kubeconfig)
    argv = shlex.split(exec_start)
    assert argv[2:5] == ["adapt", "--backend", "kubernetes"] or "kubernetes" in argv
    run = subprocess.run(
        argv, cwd=state, env={**os.environ, **service_env}, capture_output=True, text=True, timeout=240
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert admin.variants(ns), "the unit's adapt applied nothing"
    assert json.loads((state / "state.json").read_text())["adapter"]["profile"] == str(etc / "profile.yaml")


def test_render_router_gateway_with_services_writes_routes_the_api_server_accepts(
    kube_cluster: Any, admin: Kube, make_ns: Any, gateway_crds: None, tmp_path: Path
) -> None:
    """A profile with services: one HTTPRoute per service (its own path matches, its own variants' weights),
    each accepted by the Gateway API CRD's schema as rendered."""
    from tests.test_services_cli import render_services_gateway

    ns = make_ns("gw-services")
    cfg = tmp_path / "k8s.yaml"
    cfg.write_text(yaml.safe_dump({"namespace": ns}))
    _, routes = render_services_gateway(tmp_path / "manifests", "--config", str(cfg))
    assert len(routes) == 3
    for name, route in routes.items():
        stored = admin.apply(route)
        assert stored["metadata"]["name"] == name
        assert _route_weights(stored) == _route_weights(route)
        assert stored["spec"]["rules"][0]["matches"] == route["spec"]["rules"][0]["matches"]


def test_adapt_with_services_and_router_gateway_keeps_each_services_route_on_its_share_of_the_plan(
    kube_cluster: Any, admin: Kube, make_ns: Any, gateway_crds: None, tmp_path: Path
) -> None:
    ns = make_ns("gw-services-adapt")
    r = run_cli(
        "adapt", "--backend", "kubernetes", "--kubeconfig", str(kube_cluster.kubeconfig), "--namespace", ns,
        "--profile", "profiles/services-local.yaml", "--scale", "0.2", "--speedup", "20", "--interval", "3",
        "--ready-timeout", "90", "--duration", "12", "--router", "gateway", "--json",
        "--run-dir", str(tmp_path / "run"), timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    final = json.loads(r.stdout)["plan"]
    by_service: dict[str, dict[str, int]] = {}
    for v in final["variants"]:
        by_service.setdefault(v["service"], {})[f"tfs-{v['name']}"] = round(v["share"] * 1000)
    assert set(by_service) == {"live", "batch"}
    for service, weights in by_service.items():
        route = admin.get("HTTPRoute", f"infadapter-{service}", ns)
        assert route["metadata"]["labels"]["infadapter.io/service"] == service
        # Variants that left the plan may stay listed at weight 0 until their Deployment goes.
        assert {n: w for n, w in _route_weights(route).items() if w} == {n: w for n, w in weights.items() if w}
    # Each variant's ConfigMap serves its model under its service's name, the path its route matches.
    for v in final["variants"]:
        cm = admin.get("ConfigMap", f"tfs-{v['name']}-config", ns)
        assert f'name: "{v["service"]}"' in cm["data"]["models.config"]
    _assert_every_decision_replays(tmp_path / "run")


def test_adapt_hpa_upstream_creates_its_hpa_then_only_follows_what_the_cluster_runs(
    kube_cluster: Any, admin: Kube, make_ns: Any, tmp_path: Path
) -> None:
    """``adapt --policy hpa-upstream:resnet50=2``: the variant on the whole budget in pods of 2 cores, the HPA beside
    it (upstream's object: target 70 % CPU, 1 to budget / pod size replicas); then the adapter only reads back.
    Here the test scales the Deployment as the HPA would (kwok reports no CPU use, so the real HPA holds): the
    decisions follow it, nothing is applied over it, and the run's mean cores count what ran. Teardown deletes
    the HPA with the variant."""
    ns = make_ns("hpa-upstream")
    run_dir = tmp_path / "run"
    proc = _adapt_in_background(kube_cluster.kubeconfig, ns, run_dir, "--speedup", "20", "--interval", "2",
                                "--duration", "20", "--policy", "hpa-upstream:resnet50=2")
    try:
        hpa = admin.wait("the HPA", lambda: [h for h in admin.list("HorizontalPodAutoscaler", ns)], timeout_s=60)[0]
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                 "name": hpa["metadata"]["name"]}
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 10)  # paper budget 20 / 2
        assert hpa["spec"]["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
        name = hpa["metadata"]["name"]
        assert admin.get("Deployment", name, ns)["spec"]["replicas"] == 10
        time.sleep(4)
        admin.patch("Deployment", name, ns, {"spec": {"replicas": 3}}, sub="scale")
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    doc = json.loads(out)
    decisions = [json.loads(x) for x in (run_dir / "decisions.jsonl").read_text().splitlines()]
    # Created before the loop started (the run's messages say so); no decision applied anything.
    messages = json.loads((run_dir / "state.json").read_text())["messages"]
    assert any(f"create HorizontalPodAutoscaler/{name}" in m for m in messages), messages
    assert all(not d["actions"] for d in decisions), [d["actions"] for d in decisions]
    assert {d["trigger"] for d in decisions[1:]} <= {"interval"}  # the cluster reacts to overload, not us
    assert "runs resnet50 on 6 cores" in decisions[-1]["reason"], decisions[-1]
    assert doc["plan"]["variants"][0]["cores"] == 6
    assert 6 < doc["mean_cores"] < 20, doc["mean_cores"]
    assert admin.get("Deployment", name, ns)["spec"]["replicas"] == 3  # never applied over
    replay = run_cli("explain", "--run-dir", str(run_dir), "--replay")
    assert "the cluster's own HPA decided (hpa-upstream:resnet50=2): there is no decision of ours to replay" \
        in replay.stdout + replay.stderr, replay
    from infadapter.backends.kubernetes.setup import pod_rules
    from infadapter.core.profile import load_profile

    paper = load_profile(ROOT / "profiles" / "paper.yaml")
    backend = KubernetesBackend(paper, RenderConfig.model_validate({"namespace": ns}),
                                KubeOptions(kubeconfig=str(kube_cluster.kubeconfig)),
                                pods=pod_rules("hpa-upstream:resnet50=2", paper))
    assert f"HorizontalPodAutoscaler/{name}" in backend.teardown()
    assert admin.list("HorizontalPodAutoscaler", ns) == []
