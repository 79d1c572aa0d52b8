#!/usr/bin/env python3
"""Dispatcher benchmark: added latency at a fixed rate and maximum throughput, side by side with nginx.

One run starts two fake TF-Serving backends (a raw asyncio HTTP/1.1 server that answers every
predict with a fixed TF-Serving-shaped JSON body: a FAKE, so that the proxies and not the models are
measured), the infadapter dispatcher (``cli.py dispatch``) and nginx (a weighted upstream to the
same two backends with keep-alive, in a temp config, as a foreground process), then

1. added latency: open-loop Poisson load at ``--rate`` req/s (infadapter's own load generator) for
   ``--seconds`` per target, in interleaved rounds: backend directly, through the dispatcher, through
   nginx. Reported: p50/p99 of each and the difference to the direct path, in two CPU layouts
   (``--layouts``): *shared* (every process on every CPU) and *dedicated* (the proxy alone on CPU 0,
   the load generator and the backends on CPU 1);
2. maximum throughput: ``wrk`` (closed loop, ``--connections``) for ``--seconds`` against the backend
   directly, the dispatcher and nginx; the proxy under test pinned to CPU 0 and everything else
   (wrk, backends) to CPU 1 where the machine has 2 CPUs or more.

Usage:
    python bench/dispatcher.py                 # the full run (about 6 minutes)
    python bench/dispatcher.py --json          # one JSON object
    python bench/dispatcher.py loadgen         # what the load generator itself sustains
    python bench/dispatcher.py backend --port 9001   # just a fake backend (for trying things)
    python bench/dispatcher.py soak --seconds 60     # 2x the admitted capacity for a minute
    python bench/dispatcher.py --baseline HEAD~3     # also the dispatcher of another commit, side by side

``--baseline REF`` runs a second dispatcher from ``git archive REF`` (the same backends and weights) as
the path ``dispatcher@REF`` in the same interleaved rounds and layouts, so a change is measured
against the code before it in one run rather than across runs on a machine whose load moves.

``soak`` puts the dispatcher in front of one fake backend that answers after ``--delay-ms``, admits
``--max-in-flight`` requests at once (capacity = max-in-flight / delay), offers twice that with the
open-loop generator for ``--seconds``, and reports: sent = ok + shed (503) + errors, the admitted
requests' p50/p99, the dispatcher's memory and open files over the run, and what one
``GET /admin/stats`` costs under that load.

``loadgen`` drives one fake backend (pinned to CPU 1) with infadapter's open-loop load generator
(pinned to CPU 0) at rising rates and reports the rate it reached, how late it sent (send lag p99)
and its own CPU time per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WEIGHTS = (("fake-a", 7), ("fake-b", 3))


# -- the fake backend -------------------------------------------------------------------------------
def _fake_response(classes: int) -> bytes:
    scores = ",".join(f"{(i % 97) / 1000:.4f}" for i in range(classes))
    body = ('{"predictions": [[' + scores + "]]}").encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


class FakeTFServing(asyncio.Protocol):
    """FAKE TF-Serving predict endpoint: parses HTTP/1.1 requests with Content-Length (keep-alive)
    and answers each with the same fixed ``{"predictions": [[...]]}`` body, whatever the path."""

    response = b""
    delay_s = 0.0  # soak mode: answer after this long (a model's service time)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # As real servers do (aiohttp, TF Serving): without it Nagle holds each answer until the
            # client's delayed ACK (40 ms) whenever the client does not send again at once.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buf[:end].split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            if self.delay_s:
                asyncio.get_running_loop().call_later(self.delay_s, self._answer)
            else:
                self.transport.write(self.response)  # type: ignore[attr-defined]

    def _answer(self) -> None:
        if not self.transport.is_closing():  # type: ignore[attr-defined]
            self.transport.write(self.response)  # type: ignore[attr-defined]


def run_backend(port: int, classes: int, delay_ms: float = 0.0) -> None:
    FakeTFServing.response = _fake_response(classes)
    FakeTFServing.delay_s = delay_ms / 1000.0

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(FakeTFServing, "127.0.0.1", port, backlog=1024)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(main())


# -- process helpers --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 20.0, method: str = "GET", data: bytes | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            req = urllib.request.Request(url, data=data, method=method)
            with urllib.request.urlopen(req, timeout=2) as resp:
                resp.read()
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: {url} did not come up within {timeout_s} s") from None
            time.sleep(0.1)


def pin(cpus: str) -> list[str]:
    return ["taskset", "-c", cpus] if shutil.which("taskset") and (os.cpu_count() or 1) >= 2 else []


def start(stack: ExitStack, cmd: list[str], **kw: object) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    stack.callback(stop)
    return proc


NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    client_max_body_size 8m;
    client_body_buffer_size 64k;
    upstream variants {{
{servers}
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port};
        location /v1/models/ {{
            proxy_pass http://variants;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries 2;
            proxy_buffering on;
        }}
    }}
}}
"""


# -- measurements -----------------------------------------------------------------------------------
def latency_round(url: str, rate: float, seconds: int, body: bytes, seed: int) -> dict[str, float]:
    import numpy as np

    from infadapter.observe.loadgen import run_load

    s = run_load(url, np.full(seconds, rate), slo_ms=1000, seed=seed, timeout_s=5, payloads=[body])
    if s.ok != s.sent:
        raise SystemExit(f"bench: {url}: {s.sent - s.ok} of {s.sent} requests failed ({s.by_status})")
    return {"p50_ms": s.p50_ms or 0.0, "p99_ms": s.p99_ms or 0.0, "sent": s.sent, "lag_p99_ms": s.send_lag_p99_ms or 0}


def wrk_run(url: str, seconds: int, connections: int, body: bytes, tmp: Path) -> dict[str, float]:
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body.decode())}\n"
    )
    cmd = [*pin("1"), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        return float(m.group(1)) * scale

    return {
        "rps": rps,
        "requests": requests,
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": sock.group(1) if sock else "",
    }


def bench_loadgen(args: argparse.Namespace) -> int:
    import resource

    import numpy as np

    from infadapter.observe.loadgen import make_jpegs, predict_body, run_load

    body = predict_body(make_jpegs(1, args.resolution, seed=0)[0])
    rows = []
    with ExitStack() as stack:
        port = free_port()
        start(
            stack, [*pin("1"), sys.executable, __file__, "backend", "--port", str(port), "--classes", str(args.classes)]
        )
        url = f"http://127.0.0.1:{port}/v1/models/fake:predict"
        wait_http(url, method="POST", data=body)
        if pin("0"):
            os.sched_setaffinity(0, {0})
        for rate in (float(r) for r in args.rates.split(",")):
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            s = run_load(url, np.full(args.seconds, rate), slo_ms=1000, seed=1, timeout_s=5, payloads=[body])
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu_us = ((r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)) / max(s.sent, 1) * 1e6
            rows.append(
                {
                    "target_rps": rate,
                    "achieved_rps": round(s.achieved_rps, 1),
                    "sent": s.sent,
                    "ok": s.ok,
                    "errors": s.errors,
                    "unsent": s.unsent,
                    "timeouts": s.timeouts,
                    "send_lag_p99_ms": round(s.send_lag_p99_ms or 0, 2),
                    "p50_ms": round(s.p50_ms or 0, 2),
                    "p99_ms": round(s.p99_ms or 0, 2),
                    "cpu_us_per_request": round(cpu_us),
                }
            )
    if args.json:
        print(json.dumps({"loadgen": rows, "request_bytes": len(body)}))
        return 0
    print(f"load generator against a fake backend, {args.seconds} s per rate, request body {len(body)} bytes:")
    head = ["target", "reached", "ok", "errors", "unsent", "lag p99", "p50 ms", "p99 ms", "CPU us/req"]
    print("  " + " ".join(f"{h:>8}" for h in head))
    for r in rows:
        print(
            f"  {r['target_rps']:8.0f} {r['achieved_rps']:8.1f} {r['ok']:8d} {r['errors']:8d} {r['unsent']:8d} "
            f"{r['send_lag_p99_ms']:8.2f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['cpu_us_per_request']:8d}"
        )
    return 0


def proc_usage(pid: int) -> tuple[int, int]:
    """(resident memory in KiB, open file descriptors) of a process."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    rss = next(int(x.split()[1]) for x in lines if x.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def bench_soak(args: argparse.Namespace) -> int:
    """2x the admitted capacity for ``--seconds``: shedding, accounting, memory and files, /admin/stats cost."""
    import threading

    import numpy as np

    from infadapter.observe.loadgen import make_jpegs, predict_body, run_load

    capacity = args.max_in_flight / (args.delay_ms / 1000.0)
    rate = 2.0 * capacity
    body = predict_body(make_jpegs(1, args.resolution, seed=0)[0])
    token = "bench-token"
    with ExitStack() as stack:
        b_port, d_port = free_port(), free_port()
        start(stack, [sys.executable, __file__, "backend", "--port", str(b_port), "--classes", str(args.classes),
                      "--delay-ms", str(args.delay_ms)])  # fmt: skip
        wait_http(f"http://127.0.0.1:{b_port}/v1/models/x:predict", method="POST", data=b"{}")
        disp = start(stack, [sys.executable, str(ROOT / "cli.py"), "dispatch", "--port", str(d_port),
                             "--max-in-flight", str(args.max_in_flight), f"--backend=fake=http://127.0.0.1:{b_port}"],
                     env={**os.environ, "INFADAPTER_ADMIN_TOKEN": token})  # fmt: skip
        url = f"http://127.0.0.1:{d_port}/v1/models/resnet:predict"
        wait_http(url, method="POST", data=body)
        samples: list[tuple[float, int, int]] = []
        stats_ms: list[float] = []
        done = threading.Event()

        def watch() -> None:
            t0 = time.monotonic()
            req = urllib.request.Request(f"http://127.0.0.1:{d_port}/admin/stats",
                                         headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            while not done.wait(1.0):
                samples.append((round(time.monotonic() - t0, 1), *proc_usage(disp.pid)))
                t = time.perf_counter()
                with urllib.request.urlopen(req, timeout=10) as resp:
                    resp.read()
                stats_ms.append((time.perf_counter() - t) * 1000)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        print(f"soak: {rate:g} req/s for {args.seconds} s on a capacity of {capacity:g} req/s ...", file=sys.stderr)
        s = run_load(url, np.full(args.seconds, rate), slo_ms=1000, seed=0, timeout_s=10, payloads=[body])
        done.set()
        watcher.join()
    shed = s.by_status.get("503", 0)
    errors = s.sent - s.ok - shed
    first, last = samples[min(3, len(samples) - 1)], samples[-1]
    result = {
        "capacity_rps": capacity, "offered_rps": rate, "seconds": args.seconds, "sent": s.sent, "ok": s.ok,
        "shed_503": shed, "errors": errors, "accounted": s.sent == s.ok + shed + errors,
        "ok_p50_ms": s.p50_ms, "ok_p99_ms": s.p99_ms, "backend_delay_ms": args.delay_ms,
        "rss_kib_first_last": [first[1], last[1]], "fds_first_last": [first[2], last[2]],
        "admin_stats_ms_median": round(float(np.median(stats_ms)), 2) if stats_ms else None,
        "admin_stats_ms_max": round(max(stats_ms), 2) if stats_ms else None,
    }  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"  {k:<22} {v}")
    return 0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes so far (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14 and 15)
    return total


def stat(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="bench", choices=["bench", "backend", "loadgen", "soak"])
    ap.add_argument("--delay-ms", type=float, default=0.0, help="backend/soak: the fake backend's service time")
    ap.add_argument("--max-in-flight", type=int, default=16, help="soak: the dispatcher's bound on admitted requests")
    ap.add_argument("--rates", default="250,500,1000,2000", help="loadgen mode: req/s to try")
    ap.add_argument("--port", type=int, default=9001, help="backend mode: port")
    ap.add_argument("--classes", type=int, default=1000, help="scores in each fake prediction (ResNet: 1000)")
    ap.add_argument("--rate", type=float, default=200.0, help="req/s of the added-latency part")
    ap.add_argument("--seconds", type=int, default=10, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the added-latency part")
    ap.add_argument(
        "--layouts", default="shared,dedicated", help="CPU layouts of the added-latency part: shared, dedicated"
    )
    ap.add_argument("--connections", type=int, default=64, help="wrk connections")
    ap.add_argument("--wrk-seconds", type=int, default=10, help="seconds per wrk run (0: skip the throughput part)")
    ap.add_argument("--resolution", type=int, default=64, help="JPEG size of the request body")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--baseline", default="", help="git ref: also measure that commit's dispatcher side by side")
    args = ap.parse_args()
    if args.mode == "backend":
        run_backend(args.port, args.classes, args.delay_ms)
        return 0
    if args.mode == "soak":
        if args.delay_ms <= 0:
            args.delay_ms = 20.0
        return bench_soak(args)
    if args.mode == "loadgen":
        return bench_loadgen(args)

    from infadapter.observe.loadgen import make_jpegs, predict_body

    for tool in ("nginx", "wrk"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"bench: {tool} not found: apt-get install {'nginx-light' if tool == 'nginx' else tool}")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    body = predict_body(make_jpegs(1, args.resolution, seed=0)[0])
    token = "bench-token"
    env = {**os.environ, "INFADAPTER_ADMIN_TOKEN": token}
    results: dict[str, object] = {
        "backend": f"fake TF-Serving (raw asyncio, {args.classes} scores per answer)",
        "request_bytes": len(body),
        "cpus": os.cpu_count(),
    }
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-dispatcher-")))
        ports = {name: free_port() for name, _ in WEIGHTS}
        procs: dict[str, subprocess.Popen[bytes]] = {}
        for name, _ in WEIGHTS:
            cmd = [sys.executable, __file__, "backend", "--port", str(ports[name])]
            procs[name] = start(stack, [*cmd, "--classes", str(args.classes)])
        for name, _ in WEIGHTS:
            wait_http(f"http://127.0.0.1:{ports[name]}/v1/models/x:predict", method="POST", data=b"{}")
        d_port, n_port = free_port(), free_port()
        backends = [f"--backend={n}=http://127.0.0.1:{ports[n]}@{w}" for n, w in WEIGHTS]
        procs["dispatcher"] = start(
            stack, [sys.executable, str(ROOT / "cli.py"), "dispatch", "--port", str(d_port), *backends], env=env
        )
        baseline = f"dispatcher@{args.baseline}" if args.baseline else ""
        if baseline:
            old = tmp / "baseline"
            old.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline], capture_output=True)
            if archive.returncode != 0:
                raise SystemExit(f"bench: --baseline: git archive {args.baseline} failed: {archive.stderr.decode()}")
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
            b_port = free_port()
            procs[baseline] = start(
                stack, [sys.executable, str(old / "cli.py"), "dispatch", "--port", str(b_port), *backends],
                env={**env, "PYTHONPATH": str(old)}, cwd=old,
            )  # fmt: skip
        servers = "\n".join(f"        server 127.0.0.1:{ports[n]} weight={w};" for n, w in WEIGHTS)
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, servers=servers, port=n_port))
        procs["nginx"] = start(stack, [nginx, "-c", str(conf), "-p", str(tmp)])
        targets = {
            "direct": f"http://127.0.0.1:{ports['fake-a']}/v1/models/fake-a:predict",
            "dispatcher": f"http://127.0.0.1:{d_port}/v1/models/resnet:predict",
            "nginx": f"http://127.0.0.1:{n_port}/v1/models/resnet:predict",
        }
        if baseline:
            targets[baseline] = f"http://127.0.0.1:{b_port}/v1/models/resnet:predict"
        proxies = [name for name in targets if name != "direct"]
        for url in targets.values():
            wait_http(url, method="POST", data=body)
        # Warm both proxies' connection pools before measuring.
        for url in targets.values():
            latency_round(url, 200, 2, body, seed=99)

        layouts = [x.strip() for x in args.layouts.split(",") if x.strip()]
        for layout in layouts:
            if layout not in ("shared", "dedicated"):
                raise SystemExit(f"bench: --layouts: unknown layout {layout!r} (shared, dedicated)")
        latency: dict[str, dict[str, dict[str, object]]] = {}
        all_cpus = set(range(os.cpu_count() or 1))
        for layout in layouts:
            if layout == "dedicated" and not pin("0"):
                print("bench: the dedicated layout needs 2 CPUs and taskset; skipped", file=sys.stderr)
                continue
            # shared: every process may run on every CPU (they compete for them, as on a small box);
            # dedicated: the proxy under test has CPU 0 to itself, the load generator and the
            # backends share CPU 1 (the layout of the throughput part, and of a deployment that
            # gives the dispatcher its own core).
            dedicated = layout == "dedicated"
            for name, proc in procs.items():
                own = {0} if name in proxies else {1}
                os.sched_setaffinity(proc.pid, own if dedicated else all_cpus)
            os.sched_setaffinity(0, {1} if dedicated else all_cpus)
            print(
                f"added latency at {args.rate:g} req/s, {layout} CPUs "
                f"({args.rounds} rounds x {args.seconds} s each) ...",
                file=sys.stderr,
            )
            latency_round(targets["dispatcher"], args.rate, 2, body, seed=98)
            rounds: dict[str, list[dict[str, float]]] = {k: [] for k in targets}
            for r in range(args.rounds):
                for name, url in targets.items():
                    rounds[name].append(latency_round(url, args.rate, args.seconds, body, seed=r))
            table: dict[str, dict[str, object]] = {}
            for name in targets:
                p50 = stat([x["p50_ms"] for x in rounds[name]])
                p99 = stat([x["p99_ms"] for x in rounds[name]])
                table[name] = {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "rounds": rounds[name]}
            for name in proxies:
                table[name]["added_p50_ms"] = round(table[name]["p50_ms"] - table["direct"]["p50_ms"], 3)  # type: ignore[operator]
                table[name]["added_p99_ms"] = round(table[name]["p99_ms"] - table["direct"]["p99_ms"], 3)  # type: ignore[operator]
            latency[layout] = table
        os.sched_setaffinity(0, all_cpus)
        results["latency"] = latency

        print(
            f"max throughput with wrk ({args.connections} connections, {args.wrk_seconds} s each) ...", file=sys.stderr
        )
        throughput = {}
        if pin("0"):
            # For throughput each proxy gets CPU 0 to itself, wrk and the backends share CPU 1.
            for name, proc in procs.items():
                os.sched_setaffinity(proc.pid, {0} if name in proxies else {1})
        if args.wrk_seconds > 0:
            # Whose CPU time a request costs on each path: the proxy's own process, or (direct) the
            # backend's. Requests per CPU-second is robust to other load on the machine; req/s is not.
            owners = {
                "direct": [procs["fake-a"].pid],
                "dispatcher": [procs["dispatcher"].pid],
                "nginx": [procs["nginx"].pid],
            }
            if baseline:
                owners[baseline] = [procs[baseline].pid]
            for name, url in targets.items():
                before = cpu_seconds(owners[name])
                row = wrk_run(url, args.wrk_seconds, args.connections, body, tmp)
                used = cpu_seconds(owners[name]) - before
                row["cpu_us_per_request"] = round(used / max(row["requests"], 1) * 1e6, 1)
                row["rps_per_cpu_second"] = round(row["requests"] / used) if used > 0 else float("nan")
                throughput[name] = row
        results["throughput"] = throughput
        with urllib.request.urlopen(
            urllib.request.Request(
                f"http://127.0.0.1:{d_port}/admin/stats", headers={"Authorization": f"Bearer {token}"}
            ),
            timeout=5,
        ) as resp:
            stats = json.loads(resp.read())
        results["dispatcher_by_variant"] = stats["by_variant"]
    if args.json:
        print(json.dumps(results))
        return 0
    width = max(11, *(len(name) for name in targets))
    print(f"\nbackend: {results['backend']}; request body {len(body)} bytes; {os.cpu_count()} CPUs")
    for layout, table in latency.items():
        where = (
            "every process on every CPU"
            if layout == "shared"
            else "proxy alone on CPU 0, load generator + backends on CPU 1"
        )
        print(
            f"\nadded latency, open-loop Poisson at {args.rate:g} req/s, {layout} CPUs "
            f"({where}; median of {args.rounds} rounds):"
        )
        print(f"  {'path':<{width}} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8}   p99 of each round")
        for name in targets:
            row = table[name]
            add50 = f"{row['added_p50_ms']:+8.3f}" if "added_p50_ms" in row else f"{'':>8}"
            add99 = f"{row['added_p99_ms']:+8.3f}" if "added_p99_ms" in row else f"{'':>8}"
            each = " ".join(f"{x['p99_ms']:.2f}" for x in row["rounds"])  # type: ignore[attr-defined]
            print(f"  {name:<{width}} {row['p50_ms']:8.3f} {row['p99_ms']:8.3f} {add50} {add99}   {each}")
    if not throughput:
        return 0
    print(
        f"\nmax throughput, wrk -t1 -c{args.connections} -d{args.wrk_seconds}s (proxy on CPU 0, wrk+backends on CPU 1):"
    )
    print(
        f"  {'path':<{width}} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} "
        f"{'CPU us/req':>11} {'req/CPU-s':>10}"
    )
    for name, row in throughput.items():
        print(
            f"  {name:<{width}} {row['rps']:9.0f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} {row['non_2xx']:8d} "
            f"{row['cpu_us_per_request']:11.1f} {row['rps_per_cpu_second']:10.0f}"
        )
    ratio = throughput["dispatcher"]["rps"] / throughput["nginx"]["rps"]
    print(f"\ndispatcher/nginx throughput ratio: {ratio:.2f}; dispatcher split: {results['dispatcher_by_variant']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
