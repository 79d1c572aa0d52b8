"""The whole data plane once: load generator -> dispatcher -> two real ONNX model servers."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest

from infadapter.observe.loadgen import make_jpegs, run_load
from infadapter.ports import free_port
from infadapter.serving.dispatcher import BackendSpec, DispatcherClient
from infadapter.serving.resnet import write_model
from infadapter.serving.server import server_command
from tests.test_dispatcher_support import TOKEN, Cluster, http

# Starts real servers, clusters or subprocesses: not in the edit-test loop (pytest -m "not slow").
pytestmark = pytest.mark.slow

RESOLUTION = 32  # tiny inputs: the point is the path, not the model's speed


def _available(base: str, name: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/v1/models/{name}", timeout=2) as resp:
            return json.loads(resp.read())["model_version_status"][0]["state"] == "AVAILABLE"
    except (OSError, urllib.error.URLError, ValueError, KeyError):
        return False


@pytest.fixture(scope="module")
def model_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    models = tmp_path_factory.mktemp("models")
    procs: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}
    try:
        for name in ("resnet18", "resnet34"):
            write_model(models, name, RESOLUTION, seed=0)
            port = free_port()
            procs.append(
                subprocess.Popen(
                    server_command(models, name, port, threads=1, warmup=1),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
            urls[name] = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        for (name, base), proc in zip(urls.items(), procs, strict=True):
            while not _available(base, name):
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, f"{name} not AVAILABLE"
                time.sleep(0.05)
        yield urls
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()




def test_load_through_the_dispatcher_to_real_model_servers(model_servers: dict[str, str], cluster: Cluster) -> None:
    specs = [
        BackendSpec(name, url, name, w) for (name, url), w in zip(model_servers.items(), (0.75, 0.25), strict=True)
    ]
    _, base = cluster.dispatcher(specs, slo_ms=2000)
    # One real JPEG through the public name: the model server decodes it and answers top-k classes.
    jpeg = make_jpegs(1, 48, seed=5)[0]
    body = {"instances": [{"b64": base64.b64encode(jpeg).decode()}]}
    reply = http("POST", f"{base}/v1/models/resnet:predict", body)
    assert reply.status == 200, reply.body
    assert reply.headers["X-Infadapter-Variant"] in model_servers
    prediction = reply.body["predictions"][0]
    assert len(prediction["classes"]) == len(prediction["scores"]) == 5
    assert all(0 <= c < 1000 for c in prediction["classes"])
    # Open-loop load: every request accounted for, split 3:1 by smooth weighted round robin.
    s = run_load(base, np.full(2, 12.0), slo_ms=2000, seed=1, resolution=48, timeout_s=20)
    assert s.sent == s.ok + s.errors + s.timeouts
    assert s.ok == s.sent > 10, s.by_status
    assert set(s.by_variant) <= set(model_servers)
    assert abs(s.by_variant.get("resnet18", 0) - 3 * s.by_variant.get("resnet34", 0)) <= 4  # 3:1, SWRR-exact
    stats = DispatcherClient(base, TOKEN).stats()
    assert stats["by_code"] == {"200": s.sent + 1}
    # The model servers counted the same requests under their own (TF Serving) metric names.
    counted = 0
    for name, url in model_servers.items():
        with urllib.request.urlopen(f"{url}/monitoring/prometheus/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for line in text.splitlines():
            if line.startswith(":tensorflow:serving:request_count{") and 'status="OK"' in line and name in line:
                counted += int(float(line.rsplit(" ", 1)[1]))
    assert counted >= s.sent + 1  # (+ any warm-up or status traffic the server counts itself)


def test_model_server_errors_pass_through_unchanged(model_servers: dict[str, str], cluster: Cluster) -> None:
    name, url = next(iter(model_servers.items()))
    _, base = cluster.dispatcher([BackendSpec(name, url, name, 1)])
    reply = http("POST", f"{base}/v1/models/resnet:predict", {"instances": [{"b64": "not base64!"}]})
    assert reply.status == 400  # the model server's own 400 reaches the client; no retry, no ejection
    assert "error" in reply.body
    assert DispatcherClient(base, TOKEN).stats()["ejected"] == []
