"""A TF-Serving-compatible REST model server on ONNX Runtime: one process per variant replica.

Routes (TF Serving's REST API, so clients, the dispatcher and PromQL work unchanged):

- ``POST /v1/models/NAME[/versions/V]:predict`` with ``{"instances": [...]}`` (row format) or
  ``{"inputs": ...}`` (columnar). An instance is ``{"b64": "<JPEG or PNG>"}`` (decoded, resized and
  normalized here, see :mod:`infadapter.serving.images`), ``{"<input name>": ...}`` holding either, or a
  numeric array ``[3][R][R]`` (CHW) or ``[R][R][3]`` (HWC), already normalized. Answers
  ``{"predictions": [{"classes": [top-k class ids], "scores": [their softmax probabilities]}, ...]}``
  (columnar: ``{"outputs": {"classes": [[...]], "scores": [[...]]}}``); k defaults to 5.
- ``GET /v1/models/NAME[/versions/V]``: ``model_version_status`` with state LOADING until the model is
  loaded and has run its warm-up inferences, then AVAILABLE (UNLOADING while draining).
- ``GET /v1/models/NAME[/versions/V]/metadata``: the input and output signature.
- ``GET /monitoring/prometheus/metrics``: ``:tensorflow:serving:request_count{model_name,status}``,
  ``:tensorflow:serving:request_latency_bucket|_sum|_count{model_name,API,entrypoint}`` (microseconds,
  TF Serving's exponential buckets), ``:tensorflow:serving:runtime_latency*``, and ``process_*`` CPU and
  memory.

Errors are ``{"error": "..."}`` (JSON, whatever went wrong): 400 bad input (malformed, truncated or
too deeply nested JSON, non-finite numbers, wrong shapes or types, bad base64, bytes that are not an
image, more than ``max_batch`` instances, an unknown ``signature_name`` or verb), 404 unknown model,
version or path, 405 a known path with another method, 408 a body not received within
``body_timeout_s`` (a slow client holds only its own connection, never a queue slot) or a request
head not complete within ``header_timeout_s`` (then the connection is closed), 413 a body over
``max_body_bytes``, 503 while loading or when ``max_queue`` requests are already waiting (overload is
refused at once, not queued without bound), 500 only for a fault of the server itself.

Threads: ONNX Runtime runs with ``intra_op_num_threads = threads`` (the CPU allocation rounded down, at
least 1) and ``inter_op_num_threads = 1``; requests run one at a time on one worker thread by default
(``workers``), which measured better than several concurrent single-thread runs (docs/serving.md).
SIGTERM/SIGINT: stop accepting, finish the requests in flight (up to ``drain_timeout_s``), exit 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import HistogramMetricFamily

from infadapter import paths
from infadapter.errors import BadInput
from infadapter.serving.headguard import HeadDeadlineRunner
from infadapter.serving.images import decode_b64, preprocess

log = logging.getLogger("infadapter.server")

METRICS_PATH = "/monitoring/prometheus/metrics"
# TF Serving's request_latency buckets: monitoring::Buckets::Exponential(10, 1.8, 33), in microseconds.
LATENCY_BUCKETS_US = tuple(10 * 1.8**i for i in range(33))
_STATUS_BY_HTTP = {
    200: "OK",
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    413: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
    500: "INTERNAL",
}
#: Signature names this server answers: TF Serving's default ("" means the default).
SIGNATURES = ("", "serving_default")
_BODY_KEYS = {"instances", "inputs", "signature_name"}


def _refuse_constant(name: str) -> float:
    """json.loads hook for NaN, Infinity and -Infinity, which TF Serving refuses too."""
    raise BadInput(f"request body: {name} is not a valid JSON number; send finite numbers only")


@dataclass(frozen=True)
class ServerConfig:
    """Everything one model server needs; validated by :meth:`check`."""

    model_dir: Path = field(metadata={"help": "folder holding NAME/VERSION/model.onnx"})
    name: str = field(metadata={"help": "model name in URLs and metrics"})
    version: int | None = field(default=None, metadata={"help": "version folder; default: the highest"})
    host: str = "127.0.0.1"
    port: int = 8501
    threads: int = 1
    workers: int = 1
    warmup: int = 3
    max_queue: int = 64
    top_k: int = 5
    drain_timeout_s: float = 30.0
    max_body_bytes: int = 32 * 1024 * 1024
    max_batch: int = 128  # instances per request; more is a 400 (bounds the memory one request takes)
    body_timeout_s: float = 30.0  # a body not complete after this long is a 408
    header_timeout_s: float = 5.0  # a request head (line and headers) not complete after this long is a 408

    def check(self) -> None:
        """BadInput naming the flag for any value out of range."""
        if not 0 <= self.port <= 65535:
            raise BadInput(f"--port: must be 0..65535, got {self.port}")
        for flag, value, low in (
            ("--threads", self.threads, 1),
            ("--workers", self.workers, 1),
            ("--warmup", self.warmup, 0),
            ("--max-queue", self.max_queue, 1),
            ("--top-k", self.top_k, 1),
            ("--max-batch", self.max_batch, 1),
            ("--max-body-bytes", self.max_body_bytes, 1024),
        ):
            if value < low:
                raise BadInput(f"{flag}: must be at least {low}, got {value}")
        if self.drain_timeout_s < 0:
            raise BadInput(f"--drain-timeout: must be >= 0 seconds, got {self.drain_timeout_s:g}")
        if not self.body_timeout_s > 0:
            raise BadInput(f"--body-timeout: must be > 0 seconds, got {self.body_timeout_s:g}")
        if not self.header_timeout_s > 0:
            raise BadInput(f"--header-timeout: must be > 0 seconds, got {self.header_timeout_s:g}")


def find_model_file(model_dir: Path, name: str, version: int | None = None) -> tuple[Path, int]:
    """``model_dir/name/<version>/*.onnx`` (highest numeric version unless given); BadInput otherwise."""
    base = Path(model_dir) / name
    if not base.is_dir():
        raise BadInput(
            f"--model-dir: no folder {base} (expected {model_dir}/{name}/1/model.onnx; "
            "build one with `python cli.py build-models`)"
        )
    versions = sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())
    if version is None:
        if not versions:
            raise BadInput(f"--model-dir: {base} has no numeric version folder like {base}/1/model.onnx")
        version = versions[-1]
    elif version not in versions:
        raise BadInput(f"--version: {base} has no version {version} (found: {versions or 'none'})")
    folder = base / str(version)
    onnx_files = sorted(folder.glob("*.onnx"))
    if (folder / "model.onnx").is_file():
        return folder / "model.onnx", version
    if len(onnx_files) == 1:
        return onnx_files[0], version
    if (folder / "saved_model.pb").exists():
        raise BadInput(f"--model-dir: {folder} is a TensorFlow SavedModel; convert it to ONNX (tf2onnx) first")
    raise BadInput(f"--model-dir: {folder} holds no model.onnx")


class OnnxModel:
    """An ONNX Runtime session with the image model's input geometry and a top-k postprocessor."""

    def __init__(self, path: Path, threads: int, top_k: int = 5) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning threads burn the CPU quota while idle; under a cgroup limit that is lost capacity.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise BadInput(f"--model-dir: {path} is not a loadable ONNX model: {str(exc).splitlines()[0]}") from None
        inp = self.session.get_inputs()[0]
        self.input_name: str = inp.name
        shape = list(inp.shape)
        if len(shape) != 4:
            raise BadInput(f"--model-dir: {path}: input {inp.name!r} must be 4-D NCHW, got shape {shape}")
        res = shape[2] if isinstance(shape[2], int) else shape[3] if isinstance(shape[3], int) else 224
        self.resolution: int = int(res)
        self.input_shape = shape
        self.outputs = [(o.name, o.shape, o.type) for o in self.session.get_outputs()]
        self.top_k = top_k
        self.threads = threads

    def example(self, batch: int = 1) -> np.ndarray:
        return np.zeros((batch, 3, self.resolution, self.resolution), np.float32)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Raw first output (logits) for a ``[N, 3, R, R]`` batch."""
        return self.session.run([self.outputs[0][0]], {self.input_name: batch})[0]

    def top(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k class ids and softmax probabilities per row."""
        logits = logits.reshape(logits.shape[0], -1).astype(np.float64)
        k = min(self.top_k, logits.shape[1])
        idx = np.argsort(-logits, axis=1)[:, :k]
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob = z / z.sum(axis=1, keepdims=True)
        return idx, np.take_along_axis(prob, idx, axis=1)

    def to_array(self, value: Any, where: str) -> np.ndarray:
        """One instance (``{"b64": ...}`` or a numeric array) -> ``[3, R, R]`` float32."""
        r = self.resolution
        if isinstance(value, dict):
            if set(value) == {"b64"}:
                return preprocess(decode_b64(value["b64"]), r)
            if set(value) == {self.input_name}:
                inner = value[self.input_name]
                if isinstance(inner, dict) and set(inner) == {"b64"}:
                    return preprocess(decode_b64(inner["b64"]), r)
                if isinstance(inner, dict):  # one level of naming only, so nesting cannot recurse
                    raise BadInput(f'{where}.{self.input_name}: expected {{"b64": "<JPEG>"}} or a numeric array')
                return self.to_array(inner, f"{where}.{self.input_name}")
            raise BadInput(
                f'{where}: expected {{"b64": "<JPEG>"}}, {{"{self.input_name}": ...}} or a numeric array, '
                f"got keys {sorted(value)}"
            )
        if not isinstance(value, list):
            raise BadInput(
                f'{where}: must be a numeric array of shape [3, {r}, {r}] or {{"b64": ...}}, got {type(value).__name__}'
            )
        try:
            # No dtype here: strings, booleans and nulls must be refused, not converted.
            raw = np.asarray(value)
        except (ValueError, TypeError, OverflowError, RecursionError):
            raise BadInput(f'{where}: must be a numeric array of shape [3, {r}, {r}] or {{"b64": ...}}') from None
        if raw.dtype.kind not in "iuf":
            raise BadInput(
                f"{where}: numeric array expected (numbers only, no strings, booleans or nulls; "
                f"integers must fit 64 bits), got {raw.dtype.kind!r} values"
            )
        arr = raw.astype(np.float32)
        if arr.shape == (3, r, r):
            return arr
        if arr.shape == (r, r, 3):
            return np.ascontiguousarray(arr.transpose(2, 0, 1))
        raise BadInput(
            f"{where}: numeric instance must have shape [3, {r}, {r}] or [{r}, {r}, 3], got {list(arr.shape)}"
        )

    def predict(self, instances: list[Any]) -> tuple[np.ndarray, np.ndarray, float]:
        """Preprocess, run and post-process a batch; returns (classes, scores, runtime seconds)."""
        batch = np.stack([self.to_array(v, f"instances[{i}]") for i, v in enumerate(instances)])
        if not np.isfinite(batch).all():
            raise BadInput("instances: numeric values must be finite (no NaN or Infinity, nothing beyond float32)")
        t0 = time.perf_counter()
        logits = self.infer(batch)
        runtime = time.perf_counter() - t0
        classes, scores = self.top(logits)
        return classes, scores, runtime


class _Histogram:
    """A thread-safe labelled histogram kept as plain counts (exposed by :class:`TfServingCollector`)."""

    def __init__(self, buckets: Iterable[float]) -> None:
        self.bounds = tuple(buckets)
        self.series: dict[tuple[str, ...], list[float]] = {}
        self.lock = threading.Lock()

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        with self.lock:
            row = self.series.setdefault(labels, [0.0] * (len(self.bounds) + 2))
            i = int(np.searchsorted(self.bounds, value, side="left"))
            row[i] += 1
            row[-1] += value

    def families(self, name: str, doc: str, label_names: list[str]) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=label_names)
        with self.lock:
            for labels, row in self.series.items():
                cum, buckets = 0.0, []
                for bound, count in zip([*self.bounds, math.inf], row[:-1], strict=True):
                    cum += count
                    buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), cum))
                fam.add_metric(list(labels), buckets, row[-1])
        return fam


class TfServingMetrics:
    """TF Serving's metric names. Counters are written by hand: prometheus-client appends ``_total``
    to every counter it exposes, and TF Serving's ``:tensorflow:serving:request_count`` has none."""

    def __init__(self, waiting: Callable[[], int] = lambda: 0) -> None:
        self.waiting = waiting
        self.lock = threading.Lock()
        self.counts: dict[tuple[str, str], int] = {}
        self.latency = _Histogram(LATENCY_BUCKETS_US)
        self.runtime = _Histogram(LATENCY_BUCKETS_US)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(ProcessCollector(registry=None))
        self.registry.register(self)

    def record(self, model: str, http_status: int, latency_s: float, runtime_s: float | None) -> None:
        status = _STATUS_BY_HTTP.get(http_status, "UNKNOWN")
        with self.lock:
            self.counts[(model, status)] = self.counts.get((model, status), 0) + 1
        self.latency.observe((model, "predict", "REST"), latency_s * 1e6)
        if runtime_s is not None:
            self.runtime.observe((model, "Predict", "ONNXRuntime"), runtime_s * 1e6)

    def collect(self) -> Iterable[HistogramMetricFamily]:
        yield self.latency.families(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"],
        )
        yield self.runtime.families(
            ":tensorflow:serving:runtime_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving runtime.",
            ["model_name", "API", "runtime"],
        )

    def exposition(self) -> bytes:
        name = ":tensorflow:serving:request_count"
        lines = [f"# HELP {name} The total number of requests.", f"# TYPE {name} counter"]
        with self.lock:
            for (model, status), n in sorted(self.counts.items()):
                lines.append(f'{name}{{model_name="{_escape(model)}",status="{status}"}} {n}')
        # Not a TF Serving metric: requests accepted and not yet answered (the profiler waits for 0).
        lines += [
            "# HELP infadapter_model_server_waiting_requests Predict requests accepted and not yet answered.",
            "# TYPE infadapter_model_server_waiting_requests gauge",
            f"infadapter_model_server_waiting_requests {self.waiting()}",
        ]
        return ("\n".join(lines) + "\n").encode() + generate_latest(self.registry)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class ModelServer:
    """The aiohttp application around one :class:`OnnxModel`."""

    def __init__(self, config: ServerConfig, model_path: Path, version: int) -> None:
        self.config = config
        self.model_path = model_path
        self.version = version
        self.state = "START"
        self.error = ""
        self.model: OnnxModel | None = None
        self.metrics = TfServingMetrics(waiting=lambda: self.waiting)
        self.pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="infer")
        self.waiting = 0
        self.load_seconds: float | None = None
        self.started = time.monotonic()

    # -- lifecycle ------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the model and run the warm-up inferences (blocking; runs on the worker pool)."""
        self.state = "LOADING"
        model = OnnxModel(self.model_path, max(1, self.config.threads // self.config.workers), self.config.top_k)
        x = model.example()
        for _ in range(self.config.warmup):
            model.infer(x)
        self.model = model
        self.load_seconds = time.monotonic() - self.started
        self.state = "AVAILABLE"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_post("/v1/models/{rest:.+}", self.handle_post)
        app.router.add_get(METRICS_PATH, self.handle_metrics)
        app.router.add_get("/v1/models/{rest:.+}", self.handle_get)
        # Last: every other path or method gets a JSON error too (aiohttp's own are plain text).
        app.router.add_route("*", "/{tail:.*}", self.handle_unknown)
        return app

    async def handle_unknown(self, request: web.Request) -> web.Response:
        if request.path.startswith("/v1/models/") or request.path == METRICS_PATH:
            resp = _error(405, f"method {request.method} is not allowed on {request.path}; use GET or POST")
            resp.headers["Allow"] = "GET" if request.path == METRICS_PATH else "GET, POST"
            return resp
        return _error(404, f"Malformed request: {request.method} {request.path[:200]}")

    # -- routing --------------------------------------------------------------------------------
    def _match(self, rest: str) -> tuple[str, str | None, str] | web.Response:
        """Split ``NAME[/versions/V][:verb|/metadata]``; an error response for another model."""
        verb = ""
        if rest.endswith("/metadata"):
            rest, verb = rest[: -len("/metadata")], "metadata"
        elif ":" in rest.rsplit("/", 1)[-1]:
            rest, verb = rest.rsplit(":", 1)
        name, _, tail = rest.partition("/")
        version = None
        if tail:
            parts = tail.split("/")
            if len(parts) != 2 or parts[0] not in ("versions", "labels"):
                return _error(404, f"Malformed request: /v1/models/{rest}")
            version = parts[1]
        if name != self.config.name:
            return _error(404, f"Servable not found for request: Latest({name})")
        if version is not None and version != str(self.version):
            return _error(404, f"Servable not found for request: Specific({name}, {version})")
        return name, version, verb

    async def handle_get(self, request: web.Request) -> web.Response:
        m = self._match(request.match_info["rest"])
        if isinstance(m, web.Response):
            return m
        _, _, verb = m
        if verb == "metadata":
            return self._metadata()
        if verb:
            return _error(404, f"Malformed request: GET with :{verb}")
        code = "OK" if not self.error else "UNKNOWN"
        return web.json_response(
            {
                "model_version_status": [
                    {
                        "version": str(self.version),
                        "state": self.state,
                        "status": {"error_code": code, "error_message": self.error},
                    }
                ]
            }
        )

    def _metadata(self) -> web.Response:
        model = self.model
        if model is None:
            return _error(503, f"model {self.config.name} is {self.state}")

        def tensor(name: str, shape: list[Any], dtype: str) -> dict[str, Any]:
            dims = [{"size": str(d if isinstance(d, int) else -1), "name": ""} for d in shape]
            return {"dtype": dtype, "tensor_shape": {"dim": dims, "unknown_rank": False}, "name": name}

        sig = {
            "inputs": {model.input_name: tensor(model.input_name, model.input_shape, "DT_FLOAT")},
            "outputs": {
                "classes": tensor("classes", ["batch", model.top_k], "DT_INT64"),
                "scores": tensor("scores", ["batch", model.top_k], "DT_FLOAT"),
            },
            "method_name": "tensorflow/serving/predict",
        }
        return web.json_response(
            {
                "model_spec": {"name": self.config.name, "signature_name": "", "version": str(self.version)},
                "metadata": {"signature_def": {"signature_def": {"serving_default": sig}}},
                "onnx": {"resolution": model.resolution, "threads": model.threads, "file": self.model_path.name},
            }
        )

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), content_type="text/plain", charset="utf-8")

    async def handle_post(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        runtime: list[float | None] = [None]
        try:
            resp = await self._predict(request, runtime)
        except Exception:  # a fault of ours: logged, answered as TF Serving would, and serving goes on
            log.exception("%s: predict failed", self.config.name)
            resp = _error(500, "internal error while serving the request (logged by the server)")
        if resp.status != 404:  # requests for other models are not this model's requests
            self.metrics.record(self.config.name, resp.status, time.perf_counter() - t0, runtime[0])
        return resp

    async def _predict(self, request: web.Request, runtime: list[float | None]) -> web.Response:
        m = self._match(request.match_info["rest"])
        if isinstance(m, web.Response):
            return m
        if m[2] != "predict":
            return _error(400, f"unsupported method :{m[2] or '(none)'}; this server supports :predict")
        model = self.model
        if model is None or self.state != "AVAILABLE":
            return _error(503, f"model {self.config.name} is {self.state}, not AVAILABLE")
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return _error(413, f"request body of {request.content_length} bytes exceeds the limit of {limit} bytes")
        # The body is read before the request takes a queue slot, under a deadline: a client that
        # sends half a request holds its own connection until the deadline, never a slot of others.
        try:
            async with asyncio.timeout(self.config.body_timeout_s):
                raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body exceeds the limit of {limit} bytes")
        except TimeoutError:
            return _error(408, f"request body not received within {self.config.body_timeout_s:g} s")
        try:
            body = json.loads(raw, parse_constant=_refuse_constant)
        except BadInput as exc:
            return _error(400, str(exc))
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            return _error(400, f"request body is not valid JSON ({str(exc)[:120]})")
        except RecursionError:
            return _error(400, "request body is not valid JSON (nested too deeply)")
        if self.waiting >= self.config.max_queue:
            return _error(503, f"server overloaded: {self.waiting} requests waiting (max_queue)")
        self.waiting += 1
        try:
            try:
                instances, columnar = _instances(body, self.config.max_batch)
                loop = asyncio.get_running_loop()
                classes, scores, runtime[0] = await loop.run_in_executor(self.pool, model.predict, instances)
            except BadInput as exc:
                return _error(400, str(exc))
        finally:
            self.waiting -= 1
        if columnar:
            return web.json_response({"outputs": {"classes": classes.tolist(), "scores": scores.tolist()}})
        preds = [{"classes": c, "scores": s} for c, s in zip(classes.tolist(), scores.tolist(), strict=True)]
        return web.json_response({"predictions": preds})


def _instances(body: Any, max_batch: int = 128) -> tuple[list[Any], bool]:
    """The request's instances and whether it was columnar (``inputs``)."""
    if not isinstance(body, dict):
        raise BadInput('request body must be a JSON object with "instances" or "inputs"')
    unknown = set(body) - _BODY_KEYS
    if unknown:
        names = ", ".join(repr(k[:40]) for k in sorted(unknown)[:5])
        raise BadInput(f"request body: unknown field(s) {names}; allowed: signature_name, instances, inputs")
    signature = body.get("signature_name", "")
    if not isinstance(signature, str):
        raise BadInput('"signature_name" must be a string such as "serving_default"')
    if signature not in SIGNATURES:
        raise BadInput(f'Serving signature name: "{signature[:80]}" not found in signature def (have: serving_default)')
    if "instances" in body and "inputs" in body:
        raise BadInput('request has both "instances" and "inputs"; send one')
    if "instances" in body:
        inst = body["instances"]
        if not isinstance(inst, list) or not inst:
            raise BadInput('"instances" must be a non-empty list')
        if len(inst) > max_batch:
            raise BadInput(f'"instances": {len(inst)} instances in one request; at most {max_batch} (--max-batch)')
        return inst, False
    if "inputs" in body:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and len(inputs) == 1:
            inputs = next(iter(inputs.values()))
        if isinstance(inputs, dict) and set(inputs) == {"b64"}:
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            raise BadInput('"inputs" must be a non-empty list (a batch) or {"<input>": batch}')
        if len(inputs) > max_batch:
            raise BadInput(f'"inputs": {len(inputs)} instances in one request; at most {max_batch} (--max-batch)')
        return inputs, True
    raise BadInput('missing "instances" (row format) or "inputs" (columnar format)')


async def serve(config: ServerConfig, on_ready: Callable[[ModelServer], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code (0 after a clean drain)."""
    config.check()
    path, version = find_model_file(config.model_dir, config.name, config.version)
    server = ModelServer(config, path, version)
    runner = HeadDeadlineRunner(
        server.app(), head_timeout_s=config.header_timeout_s, access_log=None, shutdown_timeout=config.drain_timeout_s
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise BadInput(f"--port: cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("%s: listening on http://%s:%d, loading %s", config.name, config.host, config.port, path)
    load = loop.run_in_executor(server.pool, server.load)
    rc = 0
    try:
        done, _ = await asyncio.wait({load, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if load in done:
            load.result()  # a load error (BadInput) propagates to the CLI as one line
            log.info(
                "%s: AVAILABLE after %.2f s (%d warm-up inferences)",
                config.name, server.load_seconds or 0, config.warmup,
            )  # fmt: skip
            if on_ready is not None:
                on_ready(server)
            await stop.wait()
    finally:
        server.state = "UNLOADING"
        # Stops listening, then lets in-flight requests finish (aiohttp waits up to shutdown_timeout).
        await runner.cleanup()
        server.pool.shutdown(wait=True, cancel_futures=True)
        server.state = "END"
    log.info("%s: stopped", config.name)
    return rc




def server_command(
    model_dir: Path,
    name: str,
    port: int,
    threads: int = 1,
    warmup: int = 3,
    host: str = "127.0.0.1",
    python: str | None = None,
    extra: Iterable[str] = (),
) -> list[str]:
    """The argv that starts one model server (``cli.py serve-model``), for the profiler and backends."""
    import sys

    return [
        python or sys.executable, str(paths.CLI), "-q", "serve-model",
        "--model-dir", str(model_dir), "--name", name, "--host", host, "--port", str(port),
        "--threads", str(threads), "--warmup", str(warmup), *extra,
    ]  # fmt: skip


def run_server(config: ServerConfig) -> int:
    """Blocking entry point for the CLI."""
    return asyncio.run(serve(config))
