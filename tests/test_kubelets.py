"""KubeletWatch: a kubelet is silent once its node lease has not changed for one lease duration, measured on our
clock from when we first saw that renewTime (the real node's test stops a real kubelet:
tests/test_k8s_real_node.py)."""

from __future__ import annotations

from typing import Any

import pytest

from infadapter.backends.kubernetes.api import KubeError, KubeOptions
from infadapter.backends.kubernetes.kubelets import KubeletWatch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Api:
    """Answers GETs of nodes and leases from dicts (the renewTime is set by the test)."""

    def __init__(self) -> None:
        self.renew = {"n1": "2026-12-04T12:00:00.000000Z", "n2": "2026-12-04T12:00:00.000000Z"}
        self.fake = {"kwok-0"}
        self.deny = False
        self.calls: list[str] = []

    def request(self, method: str, path: str, what: str) -> Any:
        self.calls.append(path)
        if self.deny:
            raise KubeError(f"{what}: 403 forbidden", 403)
        name = path.rsplit("/", 1)[1]
        if "/nodes/" in path:
            return {"metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"} if name in self.fake
                                 else {}}}
        if name not in self.renew:
            raise KubeError(f"{what}: 404 not found", 404)
        return {"spec": {"renewTime": self.renew[name], "leaseDurationSeconds": 20}}


def test_a_kubelet_is_silent_after_one_lease_duration_without_a_renewal() -> None:
    clock, api = Clock(), Api()
    w = KubeletWatch(clock)
    assert w.silent(api, ["n1", "n2"]) == ("", None)
    clock.now += 19
    api.renew["n2"] = "2026-12-04T12:00:19.000000Z"  # n2 renews, n1 does not
    assert w.silent(api, ["n1", "n2"]) == ("", None)
    clock.now += 2  # n1: 21 s since its renewTime was first seen > 20 s
    text, since = w.silent(api, ["n1", "n2"])
    assert text.startswith("node n1: its kubelet has not renewed its lease for 21 s") and "n2" not in text
    assert since is not None
    api.renew["n1"] = "2026-12-04T12:00:21.000000Z"
    assert w.silent(api, ["n1", "n2"]) == ("", None)


def test_after_an_api_server_outage_the_watch_measures_again() -> None:
    clock, api = Clock(), Api()
    w = KubeletWatch(clock)
    w.silent(api, ["n1"])
    clock.now += 60  # the API server was away: no kubelet could renew
    w.forget()
    assert w.silent(api, ["n1"]) == ("", None)


def test_kwok_nodes_have_no_kubelet_and_missing_leases_are_not_judged() -> None:
    clock, api = Clock(), Api()
    w = KubeletWatch(clock)
    assert w.silent(api, ["kwok-0", "n3"]) == ("", None)  # n3: no lease (404)
    clock.now += 100
    assert w.silent(api, ["kwok-0", "n3"]) == ("", None)
    assert sum("/nodes/kwok-0" in c for c in api.calls) == 1  # a node's kind is read once
    assert not any("leases/kwok-0" in c for c in api.calls)


def test_no_right_to_read_leases_turns_the_check_off_once() -> None:
    api = Api()
    api.deny = True
    w = KubeletWatch(Clock())
    assert w.silent(api, ["n1"]) == ("", None)
    assert "kubelet heartbeats not checked" in w.note
    n = len(api.calls)
    assert w.silent(api, ["n1"]) == ("", None) and len(api.calls) == n


def test_an_api_server_that_does_not_answer_is_the_callers_outage() -> None:
    class Down(Api):
        def request(self, method: str, path: str, what: str) -> Any:
            raise KubeError(f"{what}: connection refused", 0, temporary=True, unreachable=True)

    with pytest.raises(KubeError):
        KubeletWatch(Clock()).silent(Down(), ["n1"])


def test_a_resize_waiting_on_a_silent_kubelet_gives_up_instead_of_blocking_the_loop() -> None:
    """The kubelet stops while an in-place resize waits for it: the wait raises a temporary KubeError naming the
    kubelet after one lease duration (20 s here), not after the 120-s ready timeout; the loop then holds."""
    from infadapter.backends.kubernetes.resize import InPlaceResize

    clock = Clock()

    class PodApi(Api):
        options = KubeOptions()

        def path(self, kind: str, name: str) -> str:
            return f"/api/v1/namespaces/ns/pods/{name}"

        def sleep(self, seconds: float) -> None:
            clock.now += seconds

        def request(self, method: str, path: str, what: str) -> Any:
            if "/pods/" in path:  # still at 500m: the kubelet never applies the resize to 1 core
                return {"spec": {"nodeName": "n1"}, "status": {"containerStatuses": [
                    {"name": "tfserving", "resources": {"requests": {"cpu": "500m"}, "limits": {"cpu": "500m"}}}]}}
            return super().request(method, path, what)

    api = PodApi()
    resizer = InPlaceResize(api, clock, KubeletWatch(clock))  # type: ignore[arg-type]
    t0 = clock.now
    with pytest.raises(KubeError, match="in-place resize of resnet50: node n1: its kubelet has not renewed") as exc:
        resizer.wait_done("resnet50", ["tfs-resnet50-0"], 1.0, timeout_s=120)
    assert exc.value.temporary and 20 < clock.now - t0 < 23
