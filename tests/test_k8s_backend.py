"""The Kubernetes backend against tests/fake_kube_api.py (a FAKE API server; no real one runs here yet).

The real ``kubernetes`` client and the real ``DispatcherClient`` talk HTTP to the fake, which
records every request in order, so these tests assert on the order of create / route / delete.
"""

from __future__ import annotations

import pytest
from fake_kube_api import FakeKubeApi

from infadapter.backends.kubernetes.api import KubeOptions
from infadapter.backends.kubernetes.backend import KubernetesBackend
from infadapter.core.plan import Plan
from infadapter.errors import BackendUnavailable
from infadapter.serving.dispatcher import DispatcherClient

A = {
    "load": 80,
    "variants": [{"name": "resnet50", "cores": 4, "share": 0.7}, {"name": "resnet18", "cores": 2, "share": 0.3}],
}
B = {
    "load": 80,
    "variants": [{"name": "resnet50", "cores": 4, "share": 0.6}, {"name": "resnet34", "cores": 2, "share": 0.4}],
}
GROW = {
    "load": 90,
    "variants": [{"name": "resnet50", "cores": 6, "share": 0.7}, {"name": "resnet18", "cores": 2, "share": 0.3}],
}
SHRINK = {
    "load": 50,
    "variants": [{"name": "resnet50", "cores": 3, "share": 0.5}, {"name": "resnet18", "cores": 3, "share": 0.5}],
}


@pytest.fixture
def fake():
    with FakeKubeApi() as f:
        yield f


class Sleeps(list):
    def __call__(self, s: float) -> None:
        self.append(s)


def make(fake, tmp_path, paper, **opts):
    kubeconfig = fake.kubeconfig(tmp_path / "kubeconfig")
    options = KubeOptions(kubeconfig=str(kubeconfig), **{"ready_timeout_s": 10, "backoff_s": 0.01, **opts})
    return KubernetesBackend(paper, options=options, router=DispatcherClient(fake.url, "token"))


def plan(d: dict) -> Plan:
    return Plan.from_dict(d)


def deployments(fake) -> list[str]:
    return sorted(fake.objects["deployments"])


def test_resize_rolls_on_1_32(tmp_path, paper):
    with FakeKubeApi(version=(1, 32)) as fake:
        backend = make(fake, tmp_path, paper)
        assert backend.apply(plan(A)).ok
        pods_before = set(fake.objects["pods"])
        fake.log.clear()
        result = backend.apply(plan(GROW))
        assert result.ok, result.error
        assert not any(w.endswith("/resize") for w in fake.writes())
        assert any("rolling replacement (server v1.32.0 has no in-place resize)" in a for a in result.actions)
        w = fake.writes()
        assert w.index("PATCH deployments/tfs-resnet50") < w.index("PUT route")
        dep = fake.objects["deployments"]["tfs-resnet50"]
        assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "6"
        assert set(fake.objects["pods"]) != pods_before  # the resnet50 pod was replaced


@pytest.mark.slow
def test_404_on_resize_falls_back_to_rolling_for_good(fake, tmp_path, paper):
    """A 1.33 server with the feature gate off has no pods/resize: roll, and stop trying."""
    backend = make(fake, tmp_path, paper)
    assert backend.apply(plan(A)).ok
    fake.fail("PATCH", r"/resize$", 404, message="the server could not find the requested resource")
    result = backend.apply(plan(GROW))
    assert result.ok, result.error
    assert any("rolling replacement (server v1.33.0 answered 404 on pods/resize)" in a for a in result.actions), (
        result.actions
    )
    fake.log.clear()
    assert backend.apply(plan(A)).ok
    assert not any(w.endswith("/resize") for w in fake.writes())


def test_shrink_happens_after_routing(fake, tmp_path, paper):
    backend = make(fake, tmp_path, paper)
    assert backend.apply(plan(A)).ok
    fake.log.clear()
    result = backend.apply(plan(SHRINK))
    assert result.ok, result.error
    w = fake.writes()
    grow = next(i for i, x in enumerate(w) if x.startswith("PATCH pods/tfs-resnet18"))
    shrink = next(i for i, x in enumerate(w) if x.startswith("PATCH pods/tfs-resnet50"))
    assert grow < w.index("PUT route") < shrink


@pytest.mark.parametrize("status", [409, 500, 503])
def test_temporary_errors_are_retried_with_backoff(fake, tmp_path, paper, status):
    backend = make(fake, tmp_path, paper)
    sleeps = Sleeps()
    backend.api.sleep = sleeps
    fake.fail("PATCH", r"deployments/tfs-resnet50$", status, times=2)
    result = backend.apply(plan(A))
    assert result.ok, result.error
    attempts = [p for m, p, _ in fake.log if m == "PATCH" and p.endswith("deployments/tfs-resnet50")]
    assert len(attempts) == 3
    assert sleeps[:2] == [0.01, 0.02]  # exponential backoff


def test_retries_are_bounded_and_previous_plan_serves(fake, tmp_path, paper):
    backend = make(fake, tmp_path, paper, retries=3)
    assert backend.apply(plan(A)).ok
    fake.fail("PATCH", r"deployments/tfs-resnet34$", 500, times=100)
    result = backend.apply(plan(B))
    assert not result.ok
    assert "HTTP 500" in result.error and "gave up after 3 tries" in result.error
    assert result.serving.names == ("resnet50", "resnet18")
    assert result.retry_after_s is not None
    assert deployments(fake) == ["tfs-resnet18", "tfs-resnet50"]


def test_invalid_object_fails_at_once(fake, tmp_path, paper):
    backend = make(fake, tmp_path, paper)
    fake.fail("PATCH", r"deployments/tfs-resnet50$", 422, times=5)
    result = backend.apply(plan(A))
    assert not result.ok and "HTTP 422" in result.error and "apply Deployment/tfs-resnet50" in result.error
    assert result.retry_after_s is None
    attempts = [p for m, p, _ in fake.log if m == "PATCH" and p.endswith("deployments/tfs-resnet50")]
    assert len(attempts) == 1


def test_health_and_unreachable_cluster(fake, tmp_path, paper):
    backend = make(fake, tmp_path, paper)
    assert backend.health()
    fake.stop()
    assert not backend.health()
    result = backend.apply(plan(A))
    assert not result.ok and "cannot reach the API server" in result.error


def test_an_api_server_away_is_said_by_state_not_by_library_retries(fake, tmp_path, paper, caplog):
    """state() of an unreachable API server says so (what runs is unknown, not empty), with since when; the
    session is the only one retrying (no urllib3 "Retrying" warnings); once a call gave up, later calls try
    once until the server answers."""
    backend = make(fake, tmp_path, paper)
    assert backend.apply(plan(A)).ok
    assert backend.state().unreachable == "" and backend.api.down_since is None
    sleeps = Sleeps()
    backend.api.sleep = sleeps
    url = fake.url
    fake.stop()
    with caplog.at_level("DEBUG"):
        st = backend.state()
    assert st.unreachable.startswith(f"API server {url}: list Deployments: cannot reach the API server")
    assert st.variants == () and st.unreachable_since_s == backend.api.down_since is not None
    assert len(sleeps) == backend.options.retries - 1  # the first call that meets the outage retries
    assert not [r for r in caplog.records if r.name.startswith("urllib3") and r.levelno >= 30], caplog.text
    assert not [r for r in caplog.records if r.levelno >= 20 and "retry" in r.getMessage()], caplog.text
    tries = backend.api.unreachable_tries
    assert backend.state().unreachable and not backend.health()
    assert len(sleeps) == backend.options.retries - 1  # later ones: one try each, no backoff
    assert backend.api.unreachable_tries == tries + 2


def test_missing_kubeconfig_is_backend_unavailable(tmp_path, paper, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(BackendUnavailable, match="--kubeconfig"):
        KubernetesBackend(paper, options=KubeOptions(kubeconfig=str(tmp_path / "nope")))


@pytest.mark.slow
def test_make_backend_with_namespace_and_dispatcher(fake, tmp_path, paper):
    from infadapter.backends.kubernetes.backend import make_backend

    backend = make_backend(
        paper,
        kubeconfig=str(fake.kubeconfig(tmp_path / "kc")),
        namespace="team-a",
        dispatcher_url=fake.url,
        admin_token="t",
        ready_timeout_s=10,
    )
    assert backend.apply(plan(A)).ok
    assert all("/namespaces/team-a/" in p for m, p, _ in fake.log if m == "PATCH")
    assert fake.routes[-1][0]["url"] == "http://tfs-resnet50.team-a.svc:8501"


def test_hpa_changes_replicas_of_its_pod_size_never_in_place(fake, tmp_path, paper):
    """PodRules of HPA (pod 2 cores): 4 -> 8 cores is 2 -> 4 pods of 2 (no pods/resize, the pod template's CPU
    unchanged; that the running pods are kept is shown on the real API server, test_k8s_real); back to 4 after
    routing; a variant resumed as 1 pod of 4 is replaced by pods of 2, never resized."""
    from infadapter.render import PodRules

    backend = make(fake, tmp_path, paper)
    backend.pods = PodRules(in_place=False, pod_cores=2.0)
    assert not backend.in_place_resize
    one = {"load": 10, "variants": [{"name": "resnet50", "cores": 4, "share": 1.0}]}
    two = {"load": 20, "variants": [{"name": "resnet50", "cores": 8, "share": 1.0}]}
    assert backend.apply(plan(one)).ok
    dep = fake.objects["deployments"]["tfs-resnet50"]
    assert dep["spec"]["replicas"] == 2
    fake.log.clear()
    result = backend.apply(plan(two))
    assert result.ok, result.error
    assert result.actions[0] == "scale resnet50 4 cores as 2 pods of 2 -> 8 cores as 4 pods of 2", result.actions
    assert not any(w.endswith("/resize") for w in fake.writes())
    dep = fake.objects["deployments"]["tfs-resnet50"]
    assert dep["spec"]["replicas"] == 4
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "2"
    result = backend.apply(plan(one))
    assert result.ok and any(a.startswith("scale resnet50 8 cores") for a in result.actions), result.actions
    w = fake.writes()
    assert w.index("PUT route") < max(i for i, x in enumerate(w) if x == "PATCH deployments/tfs-resnet50")

    other = make(fake, tmp_path, paper)  # another policy left 1 pod of 4
    other.pods = PodRules()
    assert other.apply(plan({"load": 10, "variants": [{"name": "resnet18", "cores": 4, "share": 1.0}]})).ok
    backend.pods = PodRules(in_place=False, pod_cores=4.0)
    fake.log.clear()
    result = backend.apply(plan({"load": 10, "variants": [{"name": "resnet18", "cores": 4, "share": 1.0}]}))
    assert result.ok
    backend.pods = PodRules(in_place=False, pod_cores=2.0)
    result = backend.apply(plan({"load": 10, "variants": [{"name": "resnet18", "cores": 4, "share": 1.0}]}))
    assert result.ok, result.error
    assert any("replace resnet18 4 cores -> 4 cores as 2 pods of 2 by rolling replacement" in a
               for a in result.actions), result.actions
    assert not any(w.endswith("/resize") for w in fake.writes())


def test_without_cpu_limits_a_resize_asks_for_the_request_alone(fake, tmp_path, paper):
    """vpa-requests (cpu_limited False): pods are created without a CPU limit and resized in place by their
    request only (adding a limit would change the pod's QoS class, which the API server refuses)."""
    from infadapter.render import PodRules

    backend = make(fake, tmp_path, paper)
    backend.pods = PodRules(cpu_limited=False)
    assert backend.apply(plan(A)).ok
    res = fake.objects["deployments"]["tfs-resnet50"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert res["requests"]["cpu"] == "4" and "cpu" not in res["limits"]
    fake.log.clear()
    result = backend.apply(plan(GROW))
    assert result.ok, result.error
    assert any("in place (pods/resize" in a for a in result.actions), result.actions
    (pod,) = [p for p in fake.objects["pods"].values() if p["metadata"]["labels"].get("fake/deployment")
              == "tfs-resnet50"]
    res = pod["spec"]["containers"][0]["resources"]
    assert res["requests"]["cpu"] == "6" and "cpu" not in res["limits"], res


GROW_AND_NEW = {
    "load": 120,
    "variants": [{"name": "resnet50", "cores": 6, "share": 0.6}, {"name": "resnet18", "cores": 2, "share": 0.2},
                 {"name": "resnet34", "cores": 2, "share": 0.2}],
}


def test_a_plan_outgrown_while_its_pods_start_is_dropped_and_the_old_one_serves_as_it_was(fake, tmp_path, paper):
    """abandon_when (the loop's control.outgrown) gives a reason while resnet34's pods start: the apply stops
    waiting, deletes what it created, resizes what it grew in place back, routes nothing, and says why."""
    backend = make(fake, tmp_path, paper)
    assert backend.apply(plan(A)).ok
    routes = len(fake.routes)
    fake.held.add("tfs-resnet34")  # its pods never become ready by themselves
    asked = []

    def outgrown(target: Plan) -> str:
        asked.append(target.load_rps)
        return "" if len(asked) < 2 else "live 150.0 req/s outgrew the plan (120.0)"

    backend.abandon_when = outgrown
    fake.log.clear()
    result = backend.apply(plan(GROW_AND_NEW))
    assert result.abandoned == "live 150.0 req/s outgrew the plan (120.0)" and not result.ok
    assert result.serving.cores_by_name() == {"resnet50": 4, "resnet18": 2}
    assert asked == [120, 120]  # asked again while the pods start, about every half second
    w = fake.writes()
    assert "DELETE deployments/tfs-resnet34" in w
    resizes = [x for x in w if x == "PATCH pods/resnet50/resize" or x.startswith("PATCH pods/tfs-resnet50")]
    pods = fake._pods_of("tfs-resnet50")
    assert pods and len(resizes) == 2 * len(pods), (resizes, w)  # grown in place, then back
    assert len(fake.routes) == routes  # routing never moved
    for pod in fake._pods_of("tfs-resnet50"):
        assert pod["spec"]["containers"][0]["resources"]["limits"]["cpu"] in ("4", "4000m")
    assert any(a.startswith("abandoned: live 150.0") for a in result.actions)
    assert any("rolled back: resnet50 to 4 cores in place" in a for a in result.actions), result.actions
    # No reason: the same plan applies in full once the pods can start.
    backend.abandon_when = None
    fake.held.discard("tfs-resnet34")
    done = backend.apply(plan(GROW_AND_NEW))
    assert done.ok and done.serving.cores_by_name() == {"resnet50": 6, "resnet18": 2, "resnet34": 2}
