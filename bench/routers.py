#!/usr/bin/env python3
"""Router benchmark: direct vs our dispatcher vs HAProxy vs nginx, in one run, as ratios.

One run starts two FAKE TF-Serving backends (bench/dispatcher.py's raw asyncio server: the routers,
not the models, are measured), then every router in front of them with the same 7:3 split:

- ``dispatcher``: ``cli.py dispatch`` (infadapter/serving/dispatcher.py), as the local backend runs it;
- ``haproxy``: :class:`~infadapter.serving.haproxy.HAProxyRouter` exactly as ``--router haproxy`` runs
  it (one thread, per-variant path rewrite, L7 retries, request log read by the adapter's thread);
- ``haproxy-nolog``: the same without the request log (what the monitor's log costs);
- ``haproxy-plain``: a REFERENCE, not a router the adapter can use: one HAProxy backend straight to
  the two servers, no per-variant model-name rewrite (the fake backends ignore the path; real model
  servers do not), no retries: what the rewrite hop, retries and log cost on top;
- ``nginx``: bench/dispatcher.py's nginx config (weighted upstream, keep-alive, one worker).

Measured, on a machine with 2+ CPUs, with the router alone on CPU 0 (HAProxy's log-reader thread is
pinned there too: it is part of that router's cost) and the load generator, wrk and the backends on
CPU 1:

1. added latency: open-loop Poisson load at ``--rate`` req/s (infadapter's load generator) for
   ``--seconds`` per path, in ``--rounds`` interleaved rounds; median p50/p99 per path, minus the
   direct path's;
2. maximum throughput on one core: ``wrk`` (closed loop, ``--connections``) for ``--wrk-seconds`` per
   path; also the router's CPU time per request (robust to other load on the machine).

Ratios are against our dispatcher: throughput and requests per CPU-second as x times the
dispatcher's (higher is better); added latency as the path's added ms divided by the dispatcher's
(lower is better). The helpers (fake backend, nginx config, load rounds,
wrk) are bench/dispatcher.py's.

Usage:
    python bench/routers.py            # about 2 minutes
    python bench/routers.py --json     # one JSON object
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_spec = importlib.util.spec_from_file_location("bench_dispatcher", Path(__file__).with_name("dispatcher.py"))
assert _spec is not None and _spec.loader is not None
bd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bd)

PATHS = ("direct", "dispatcher", "haproxy", "haproxy-nolog", "haproxy-plain", "nginx")
PLAIN_HAPROXY = """\
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 5s
frontend predict
    bind 127.0.0.1:{port}
    default_backend variants
backend variants
    balance roundrobin
{servers}
"""


def _thread_cpu_seconds(tid: int) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=200.0, help="req/s of the added-latency part")
    ap.add_argument("--seconds", type=int, default=5, help="seconds per path and round (added latency)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the added-latency part")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections")
    ap.add_argument("--wrk-seconds", type=int, default=5, help="seconds per wrk run (0: skip the throughput part)")
    ap.add_argument("--classes", type=int, default=1000, help="scores in each fake prediction (ResNet: 1000)")
    ap.add_argument("--resolution", type=int, default=64, help="JPEG size of the request body")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--save", type=Path, default=None, help="also write the JSON object to this file")
    args = ap.parse_args()

    from infadapter.adapter.state import StateStore
    from infadapter.observe.loadgen import make_jpegs, predict_body
    from infadapter.serving.haproxy import HAProxyRouter, HAProxySettings, haproxy_binary
    from infadapter.serving.router import Route, RouterConfig

    for tool, pkg in (("nginx", "nginx-light"), ("wrk", "wrk"), ("haproxy", "haproxy")):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"bench: {tool} not found: apt-get install {pkg} (scripts/setup.sh as root)")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if haproxy_binary() is None:
        raise SystemExit("bench: haproxy not found: apt-get install haproxy")
    dedicated = bool(bd.pin("0"))
    body = predict_body(make_jpegs(1, args.resolution, seed=0)[0])
    token = "bench-token"
    env = {**os.environ, "INFADAPTER_ADMIN_TOKEN": token}
    results: dict[str, object] = {
        "backend": f"fake TF-Serving (bench/dispatcher.py, {args.classes} scores per answer)",
        "request_bytes": len(body), "cpus": os.cpu_count(), "rate_rps": args.rate,
        "layout": "router alone on CPU 0; load generator, wrk and backends on CPU 1" if dedicated
        else "one CPU: every process shares it (no dedicated layout)",
    }
    all_cpus = set(range(os.cpu_count() or 1))
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-routers-")))
        ports = {name: bd.free_port() for name, _ in bd.WEIGHTS}
        procs = {}
        for name, _ in bd.WEIGHTS:
            procs[name] = bd.start(stack, [sys.executable, bd.__file__, "backend", "--port", str(ports[name]),
                                           "--classes", str(args.classes)])
        for name, _ in bd.WEIGHTS:
            bd.wait_http(f"http://127.0.0.1:{ports[name]}/v1/models/x:predict", method="POST", data=b"{}")
        d_port, n_port = bd.free_port(), bd.free_port()
        backends = [f"--backend={n}=http://127.0.0.1:{ports[n]}@{w}" for n, w in bd.WEIGHTS]
        procs["dispatcher"] = bd.start(
            stack, [sys.executable, str(ROOT / "cli.py"), "dispatch", "--port", str(d_port), *backends], env=env)
        servers = "\n".join(f"        server 127.0.0.1:{ports[n]} weight={w};" for n, w in bd.WEIGHTS)
        conf = tmp / "nginx.conf"
        conf.write_text(bd.NGINX_CONF.format(tmp=tmp, servers=servers, port=n_port))
        procs["nginx"] = bd.start(stack, [nginx, "-c", str(conf), "-p", str(tmp)])
        routes = [Route(n, f"http://127.0.0.1:{ports[n]}", n, float(w)) for n, w in bd.WEIGHTS]
        haproxies: dict[str, HAProxyRouter] = {}
        for name, log_on in (("haproxy", True), ("haproxy-nolog", False)):
            run = tmp / name
            r = HAProxyRouter(RouterConfig(run, slo_ms=1000), StateStore(run / "state.json"),
                              [(n, n) for n, _ in bd.WEIGHTS], HAProxySettings(log_requests=log_on))
            r.start()
            stack.callback(r.stop)
            r.set_backends(routes)
            haproxies[name] = r
        p_port = bd.free_port()
        plain = tmp / "haproxy-plain.cfg"
        plain.write_text(PLAIN_HAPROXY.format(port=p_port, servers="\n".join(
            f"    server {n} 127.0.0.1:{ports[n]} weight {w}" for n, w in bd.WEIGHTS)))
        procs["haproxy-plain"] = bd.start(stack, [str(haproxy_binary()), "-db", "-f", str(plain)])
        targets = {
            "direct": f"http://127.0.0.1:{ports['fake-a']}/v1/models/fake-a:predict",
            "dispatcher": f"http://127.0.0.1:{d_port}/v1/models/resnet:predict",
            "haproxy": f"{haproxies['haproxy'].url}/v1/models/resnet:predict",
            "haproxy-nolog": f"{haproxies['haproxy-nolog'].url}/v1/models/resnet:predict",
            "haproxy-plain": f"http://127.0.0.1:{p_port}/v1/models/resnet:predict",
            "nginx": f"http://127.0.0.1:{n_port}/v1/models/resnet:predict",
        }
        for url in targets.values():
            bd.wait_http(url, method="POST", data=body)
        # Which CPU time is each path's: the router's processes (and HAProxy's log thread), or the backend's.
        owners = {"direct": [procs["fake-a"].pid], "dispatcher": [procs["dispatcher"].pid],
                  "haproxy": [haproxies["haproxy"].pid], "haproxy-nolog": [haproxies["haproxy-nolog"].pid],
                  "haproxy-plain": [procs["haproxy-plain"].pid],
                  "nginx": [procs["nginx"].pid]}
        log_tid = haproxies["haproxy"].log_thread_id
        if dedicated:
            routers = {procs["dispatcher"].pid, procs["nginx"].pid, procs["haproxy-plain"].pid,
                       *(h.pid for h in haproxies.values())}
            for pid in {p.pid for p in procs.values()} | routers:
                os.sched_setaffinity(pid, {0} if pid in routers else {1})
            if log_tid:
                os.sched_setaffinity(log_tid, {0})
            os.sched_setaffinity(0, {1})
            if log_tid:
                os.sched_setaffinity(log_tid, {0})  # set after the process-wide call above
        for url in targets.values():  # warm the connection pools
            bd.latency_round(url, args.rate, 2, body, seed=99)

        print(f"added latency at {args.rate:g} req/s ({args.rounds} rounds x {args.seconds} s per path) ...",
              file=sys.stderr)
        rounds: dict[str, list[dict[str, float]]] = {k: [] for k in targets}
        for r in range(args.rounds):
            for name, url in targets.items():
                rounds[name].append(bd.latency_round(url, args.rate, args.seconds, body, seed=r))
        latency: dict[str, dict[str, object]] = {}
        for name in targets:
            latency[name] = {"p50_ms": round(bd.stat([x["p50_ms"] for x in rounds[name]]), 3),
                             "p99_ms": round(bd.stat([x["p99_ms"] for x in rounds[name]]), 3),
                             "p99_each_round": [round(x["p99_ms"], 2) for x in rounds[name]]}
        for name in targets:
            if name != "direct":
                for q in ("p50", "p99"):
                    latency[name][f"added_{q}_ms"] = round(
                        latency[name][f"{q}_ms"] - latency["direct"][f"{q}_ms"], 3)  # type: ignore[operator]
        results["latency"] = latency

        throughput: dict[str, dict[str, object]] = {}
        if args.wrk_seconds > 0:
            print(f"max throughput with wrk ({args.connections} connections, {args.wrk_seconds} s per path) ...",
                  file=sys.stderr)
            for name, url in targets.items():
                before = bd.cpu_seconds(owners[name])
                log_before = _thread_cpu_seconds(log_tid) if name == "haproxy" and log_tid else 0.0
                row = bd.wrk_run(url, args.wrk_seconds, args.connections, body, tmp)
                used = bd.cpu_seconds(owners[name]) - before
                if name == "haproxy" and log_tid:
                    row["log_thread_cpu_s"] = round(_thread_cpu_seconds(log_tid) - log_before, 3)
                    used += row["log_thread_cpu_s"]
                row["cpu_us_per_request"] = round(used / max(row["requests"], 1) * 1e6, 1)
                row["rps_per_cpu_second"] = round(row["requests"] / used) if used > 0 else float("nan")
                throughput[name] = row
        results["throughput"] = throughput
        results["haproxy_requests_counted"] = haproxies["haproxy"].stats()["requests_total"]
        results["haproxy_log_unparsed"] = haproxies["haproxy"].dropped_lines
        os.sched_setaffinity(0, all_cpus)

    results["ratios"] = ratios(latency, throughput)
    results["command"] = " ".join(["python", "bench/routers.py", *sys.argv[1:]])
    if args.save is not None:
        args.save.write_text(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps(results))
        return 0
    print(table(results, args))
    return 0


def ratios(latency: dict, throughput: dict) -> dict[str, dict[str, float | None]]:
    """Per path: throughput and req/CPU-s as x the dispatcher's; added p50/p99 as the path's / the dispatcher's."""
    out: dict[str, dict[str, float | None]] = {}
    for name in latency:
        row: dict[str, float | None] = {}
        if name != "direct":
            for q in ("p50", "p99"):
                mine, disp = latency[name][f"added_{q}_ms"], latency["dispatcher"][f"added_{q}_ms"]
                row[f"added_{q}_vs_dispatcher"] = round(mine / disp, 2) if disp > 0 else None
        if throughput:
            row["rps_vs_dispatcher"] = round(throughput[name]["rps"] / throughput["dispatcher"]["rps"], 2)
            row["rps_per_cpu_vs_dispatcher"] = round(
                throughput[name]["rps_per_cpu_second"] / throughput["dispatcher"]["rps_per_cpu_second"], 2)
        out[name] = row
    return out


def table(results: dict, args: argparse.Namespace) -> str:
    lat, thr, rat = results["latency"], results["throughput"], results["ratios"]
    lines = [f"backend: {results['backend']}; request body {results['request_bytes']} bytes; "
             f"{results['cpus']} CPUs; {results['layout']}",
             f"added latency: open-loop Poisson {args.rate:g} req/s, median of {args.rounds} rounds x "
             f"{args.seconds} s; throughput: wrk -t1 -c{args.connections} -d{args.wrk_seconds}s", "",
             "| path | p50 ms | p99 ms | +p50 ms | +p99 ms | +p99 / dispatcher's | max req/s (1 core) "
             "| x dispatcher | router CPU us/req | req per CPU-s x dispatcher |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in lat.items():
        t = thr.get(name, {})
        r = rat.get(name, {})

        def f(v: object, fmt: str) -> str:
            return "-" if v is None or v == "" else format(v, fmt)

        lines.append(
            f"| {name} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {f(row.get('added_p50_ms'), '+.2f')} | "
            f"{f(row.get('added_p99_ms'), '+.2f')} | {f(r.get('added_p99_vs_dispatcher'), '.2f')} | "
            f"{f(t.get('rps'), '.0f')} | {f(r.get('rps_vs_dispatcher'), '.2f')} | "
            f"{f(t.get('cpu_us_per_request'), '.1f')} | {f(r.get('rps_per_cpu_vs_dispatcher'), '.2f')} |")
    extra = [f"{n}: non-2xx {t['non_2xx']}, socket errors {t['socket_errors'] or 'none'}" for n, t in thr.items()
             if t.get("non_2xx") or t.get("socket_errors")]
    lines += ["", f"haproxy: {results['haproxy_requests_counted']} requests counted by the adapter (HAProxy's "
              f"counter); request-log lines unparsed: {results['haproxy_log_unparsed']}", *extra]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
