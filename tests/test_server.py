"""The model server over real HTTP: ONNX Runtime inference, TF Serving's REST API and metric names,
LOADING -> AVAILABLE, overload 503, and a graceful drain on SIGTERM."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infadapter.ports import free_port
from infadapter.profiler import waiting_requests
from infadapter.serving.images import make_jpeg, make_jpeg_b64, preprocess
from infadapter.serving.resnet import write_model
from infadapter.serving.server import server_command

# Starts real servers, clusters or subprocesses: not in the edit-test loop (pytest -m "not slow").
pytestmark = pytest.mark.slow

RES = 64


def _request(url: str, body: Any = None, raw: bytes | None = None, timeout: float = 30) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


class Server:
    """A real `cli.py serve-model` process; records every status state seen from its first answer."""

    def __init__(self, model_dir: Path, name: str, *extra: str, warmup: int = 3) -> None:
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            server_command(model_dir, name, self.port, 1, warmup, extra=extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.states: list[str] = []

    def wait_available(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read().decode() if self.proc.stderr else ""
            try:
                _, body = _request(f"{self.base}/v1/models/{self.name}", timeout=2)
                state = body["model_version_status"][0]["state"]
                if not self.states or self.states[-1] != state:
                    self.states.append(state)
                if state == "AVAILABLE":
                    return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.005)
        raise AssertionError(f"{self.name} not AVAILABLE in {timeout_s} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models")
    write_model(out, "resnet18", RES, seed=0)
    write_model(out, "resnet50", RES, seed=0)
    return out


@pytest.fixture(scope="module")
def server(model_dir):
    # 40 warm-up inferences keep the model LOADING long enough for the status poll to see it.
    srv = Server(model_dir, "resnet18", warmup=40)
    try:
        srv.wait_available()
        yield srv
    finally:
        srv.stop()


def predict_url(srv: Server, name: str | None = None) -> str:
    return f"{srv.base}/v1/models/{name or srv.name}:predict"


def test_status_is_loading_until_warm_up_is_done(server):
    assert server.states[0] in ("START", "LOADING")
    assert "LOADING" in server.states and server.states[-1] == "AVAILABLE"
    _, body = _request(f"{server.base}/v1/models/resnet18")
    assert body == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }


def test_predict_jpeg_b64_returns_top_k(server):
    status, body = _request(predict_url(server), {"instances": [{"b64": make_jpeg_b64(320, 240, 1)}]})
    assert status == 200
    (pred,) = body["predictions"]
    assert len(pred["classes"]) == 5 and all(0 <= c < 1000 for c in pred["classes"])
    scores = pred["scores"]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0


def test_numeric_instances_give_the_same_answer_as_the_jpeg(server):
    jpeg = make_jpeg(320, 240, seed=2)
    chw = preprocess(jpeg, RES)
    _, from_b64 = _request(predict_url(server), {"instances": [{"b64": base64.b64encode(jpeg).decode()}]})
    status, body = _request(predict_url(server), {"instances": [chw.tolist(), chw.transpose(1, 2, 0).tolist()]})
    assert status == 200 and len(body["predictions"]) == 2
    for pred in body["predictions"]:
        assert pred["classes"] == from_b64["predictions"][0]["classes"]
        np.testing.assert_allclose(pred["scores"], from_b64["predictions"][0]["scores"], rtol=1e-4)


def test_columnar_inputs_and_named_input_and_version_path(server):
    b64 = make_jpeg_b64(200, 200, 3)
    status, body = _request(predict_url(server), {"inputs": {"input": [{"b64": b64}, {"b64": b64}]}})
    assert status == 200
    assert len(body["outputs"]["classes"]) == 2 and len(body["outputs"]["scores"][0]) == 5
    url = f"{server.base}/v1/models/resnet18/versions/1:predict"
    status, body = _request(url, {"instances": [{"input": {"b64": b64}}]})
    assert status == 200 and len(body["predictions"]) == 1


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"instances": [1', "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"{}", 'missing "instances"'),
        (b'{"instances": []}', "non-empty list"),
        (b'{"instances": [[1, 2, 3]]}', "must have shape [3, 64, 64]"),
        (b'{"instances": [{"b64": "###"}]}', "not valid base64"),
        (b'{"instances": [{"b64": "aGVsbG8gd29ybGQ="}]}', "not a decodable image"),
        (b'{"instances": [{"image": 1}]}', "got keys ['image']"),
        (b'{"instances": [["a"]]}', "numeric array"),
    ],
)
def test_bad_input_is_400_with_an_error(server, raw, message):
    status, body = _request(predict_url(server), raw=raw)
    assert status == 400
    assert set(body) == {"error"} and message in body["error"]


def test_unknown_model_or_version_is_404(server):
    status, body = _request(predict_url(server, "resnet999"), {"instances": [{"b64": make_jpeg_b64()}]})
    assert status == 404 and "resnet999" in body["error"]
    status, body = _request(f"{server.base}/v1/models/resnet18/versions/7:predict", {"instances": [[0]]})
    assert status == 404 and "7" in body["error"]
    status, _ = _request(f"{server.base}/v1/models/nope")
    assert status == 404


def test_metadata_describes_the_signature(server):
    status, body = _request(f"{server.base}/v1/models/resnet18/metadata")
    assert status == 200
    sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    dims = [d["size"] for d in sig["inputs"]["input"]["tensor_shape"]["dim"]]
    assert dims == ["-1", "3", str(RES), str(RES)]
    assert set(sig["outputs"]) == {"classes", "scores"}
    assert body["onnx"]["resolution"] == RES and body["onnx"]["threads"] == 1


def _families(srv: Server) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(_text(srv.base + "/monitoring/prometheus/metrics"))}


def _sample(fams: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    for s in fams[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return 0.0


def _count(srv: Server, status: str) -> int:
    """The exact line TF Serving writes: the counter's name has no `_total` suffix."""
    prefix = f':tensorflow:serving:request_count{{model_name="resnet18",status="{status}"}} '
    for line in _text(srv.base + "/monitoring/prometheus/metrics").splitlines():
        if line.startswith(prefix):
            return int(line[len(prefix):])
    return 0


def test_metrics_use_tf_serving_names_and_count_requests(server):
    ok0, bad0 = _count(server, "OK"), _count(server, "INVALID_ARGUMENT")
    for _ in range(3):
        assert _request(predict_url(server), {"instances": [{"b64": make_jpeg_b64()}]})[0] == 200
    assert _request(predict_url(server), raw=b"{")[0] == 400
    assert _count(server, "OK") == ok0 + 3
    assert _count(server, "INVALID_ARGUMENT") == bad0 + 1
    text = _text(server.base + "/monitoring/prometheus/metrics")
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    after = _families(server)  # the whole exposition parses as Prometheus text
    lat = ":tensorflow:serving:request_latency"
    labels = {"model_name": "resnet18", "API": "predict", "entrypoint": "REST"}
    count = _sample(after, lat, lat + "_count", **labels)
    assert count == _sample(after, lat, lat + "_bucket", le="+Inf", **labels) >= 4
    # microseconds: a ResNet-18 inference takes more than 100 us and less than 100 s
    assert 100 * count < _sample(after, lat, lat + "_sum", **labels) < 1e8 * count
    assert _sample(after, "process_cpu_seconds", "process_cpu_seconds_total") > 0


def test_overload_is_503_and_sigterm_drains_in_flight_requests(model_dir):
    srv = Server(model_dir, "resnet50", "--max-queue", "6")
    try:
        srv.wait_available()
        body = json.dumps({"instances": [{"b64": make_jpeg_b64(640, 480, i)} for i in range(4)]}).encode()
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(_request, predict_url(srv), None, body, 60) for _ in range(6)]
            deadline = time.monotonic() + 20
            while waiting_requests(srv.base) < 6 and time.monotonic() < deadline:
                time.sleep(0.002)
            assert waiting_requests(srv.base) == 6  # 6 batches of 4 ResNet-50 images: ~1 s of work
            status, over = _request(predict_url(srv), None, body)
            assert status == 503 and "overloaded" in over["error"]
            pending = sum(not f.done() for f in futures)
            srv.proc.send_signal(signal.SIGTERM)
            results = [f.result() for f in futures]
        assert pending >= 1  # the signal arrived with requests in flight...
        assert [code for code, _ in results] == [200] * 6  # ...and every one was answered
        assert all(len(b["predictions"]) == 4 for _, b in results)
        assert srv.proc.wait(30) == 0
        with pytest.raises(urllib.error.URLError):
            _request(f"{srv.base}/v1/models/resnet50", timeout=2)
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "resnet18", "--model-dir", "/nonexistent"], "--model-dir: no folder /nonexistent/resnet18"),
        (["--name", "resnet18", "--version", "9"], "--version: "),
        (["--name", "resnet18", "--threads", "0"], "--threads: must be at least 1"),
    ],
)
def test_serve_model_bad_input_is_one_line(model_dir, args, message):
    argv = [*server_command(model_dir, "x", free_port())[:3], "serve-model", "--model-dir", str(model_dir), *args]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
