#!/usr/bin/env python3
"""Per-request overhead of the model server over a bare ONNX Runtime call on the same model.

One run, side by side and interleaved (bare, HTTP+JPEG, HTTP+numeric, bare+decode, ... in turn, so
contention from other processes hits every column alike), sequential requests (one at a time):

- ``bare_ort``: ``session.run`` on an already preprocessed [1, 3, R, R] array, in this process;
- ``bare_ort_decode``: JPEG decode + resize + normalize + ``session.run``, in this process;
- ``http_jpeg``: ``POST :predict`` with ``{"b64": JPEG}`` to ``cli.py serve-model`` over a kept-alive
  loopback connection (client JSON encoding, HTTP, server decode, inference, top-k, JSON back);
- ``http_numeric``: the same with the preprocessed array as a JSON number list.

Both sides use one intra-op thread. Overhead = p50(server) - p50(bare); ratio = p50(server)/p50(bare).

    python bench/model_server.py --variant resnet18 --resolution 96 --requests 300
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infadapter.profiler import free_port, stop_process, wait_available
from infadapter.serving.images import make_jpeg, preprocess
from infadapter.serving.resnet import model_path, write_model
from infadapter.serving.server import server_command


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _stats(samples_s: list[float]) -> dict[str, float]:
    a = np.array(samples_s) * 1000
    return {"p50_ms": round(float(np.median(a)), 3), "p99_ms": round(float(np.quantile(a, 0.99)), 3),
            "mean_ms": round(float(a.mean()), 3)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="resnet18")
    ap.add_argument("--resolution", type=int, default=96)
    ap.add_argument("--requests", type=int, default=300, help="requests per column")
    ap.add_argument("--model-dir", type=Path, default=None, help="reuse built models (default: build in a temp dir)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or Path(tmp)
        if args.model_dir is None:
            write_model(model_dir, args.variant, args.resolution)
        path = model_path(model_dir, args.variant)
        sess = _session(path)
        res = int(sess.get_inputs()[0].shape[2])
        jpeg = make_jpeg(640, 480, seed=0)
        x = preprocess(jpeg, res)[None]
        body_jpeg = json.dumps({"instances": [{"b64": base64.b64encode(jpeg).decode()}]}).encode()
        body_num = json.dumps({"instances": [x[0].tolist()]}).encode()

        port = free_port()
        proc = subprocess.Popen(server_command(model_dir, args.variant, port, 1, 3),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        try:
            wait_available(f"http://127.0.0.1:{port}", args.variant, proc, 120)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            url = f"/v1/models/{args.variant}:predict"

            def http_call(body: bytes) -> None:
                conn.request("POST", url, body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    raise SystemExit(f"server answered {resp.status}: {data[:200]!r}")

            calls = {
                "bare_ort": lambda: sess.run(None, {"input": x}),
                "bare_ort_decode": lambda: sess.run(None, {"input": preprocess(jpeg, res)[None]}),
                "http_jpeg": lambda: http_call(body_jpeg),
                "http_numeric": lambda: http_call(body_num),
            }
            for fn in calls.values():  # warm every path (connection, caches) before timing
                for _ in range(5):
                    fn()
            samples: dict[str, list[float]] = {k: [] for k in calls}
            for _ in range(args.requests):
                for name, fn in calls.items():
                    t0 = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - t0)
            conn.close()
        finally:
            stop_process(proc)
            if proc.stderr is not None:
                proc.stderr.close()

    stats = {k: _stats(v) for k, v in samples.items()}
    bare = stats["bare_ort"]["p50_ms"]
    for k in ("http_jpeg", "http_numeric", "bare_ort_decode"):
        stats[k]["overhead_p50_ms"] = round(stats[k]["p50_ms"] - bare, 3)
        stats[k]["ratio_p50"] = round(stats[k]["p50_ms"] / bare, 3)
    result = {"variant": args.variant, "resolution": res, "requests": args.requests, "threads": 1, "results": stats}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.variant} at {res}x{res}, {args.requests} sequential requests per column, 1 thread each side")
    print(f"{'column':<16} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'+p50 ms':>8} {'ratio':>6}")
    for k, s in stats.items():
        print(f"{k:<16} {s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} {s['mean_ms']:>8.2f} "
              f"{s.get('overhead_p50_ms', 0):>8.2f} {s.get('ratio_p50', 1):>6.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
