"""HAProxy as the local router: Debian's ``haproxy`` driven live through its Runtime API.

The config (``templates/haproxy/haproxy.cfg.j2``) is written once per run with a slot for every
variant of the profile:

- ``frontend predict`` on a loopback port: the endpoint clients call, ``maxconn`` bounded;
- ``backend variants``: one server per variant (``balance roundrobin``: smooth weighted round robin,
  like the dispatcher), ``retries 1`` + ``option redispatch`` + ``retry-on ... 503``: a failed attempt
  is retried once on another variant; ``X-Infadapter-Variant`` names the variant that answered; each
  server ``track``\\ s its variant's health; per-server ``maxconn`` queues excess requests in HAProxy
  for at most ``timeout queue`` (the SLO), then answers 503;
- ``listen v-<variant>``: reached over an abstract unix socket, rewrites ``/v1/models/<any>`` to the
  variant's model name (HAProxy cannot rewrite per *chosen* server, so the choice is made one level
  up), health-checks the model server (``GET /v1/models/<model>`` must answer 200) and forwards;
- ``frontend metrics``: HAProxy's built-in Prometheus exporter at ``/metrics``.

Changes go through the admin socket (mode 0600 in the run folder; admin level; nobody else can
reach it): ``set server v-X/model addr``, ``set server ... state ready|maint``, ``set server
variants/X weight``. New variants come up (health check passed) before weights move, and removed
ones go to maintenance after (make-before-break; in-flight requests finish).

Every request leaves one log line (accept time, total time, status, variant) on a unix datagram
socket the adapter reads: the same statistics as the dispatcher's ``/admin/stats``
(:class:`~infadapter.serving.dispatcher.RequestStats`), so the monitor cannot tell the routers apart.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from infadapter import paths
from infadapter.adapter.state import StateStore
from infadapter.errors import BackendUnavailable, BadInput
from infadapter.ports import free_port
from infadapter.processes import pid_alive, stop_process
from infadapter.render import environment
from infadapter.serving.dispatcher import RequestStats
from infadapter.serving.router import Route, RouterConfig, as_routes

log = logging.getLogger(__name__)

TEMPLATES = paths.TEMPLATES / "haproxy"
#: HAProxy's weights are integers 0..256; shares map onto this scale.
WEIGHT_SCALE = 256
#: Requests entering HAProxy, from its Prometheus exporter (the frontend clients call).
RATE_QUERY = 'sum(irate(haproxy_frontend_http_requests_total{proxy="predict"}[5s]))'
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_UNIX_PATH_MAX = 100  # sun_path is 108 bytes; keep a margin


def haproxy_binary() -> str | None:
    """Path of ``haproxy`` (``INFADAPTER_HAPROXY_BIN`` overrides), or None."""
    explicit = os.environ.get("INFADAPTER_HAPROXY_BIN")
    if explicit:
        return explicit if Path(explicit).exists() else None
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if Path(p).exists()), None)


@dataclass(frozen=True)
class HAProxySettings:
    """How the config is written (the defaults are the adapter's; the benchmark changes a few)."""

    host: str = "127.0.0.1"
    threads: int = 1  # one thread: the same one-core footing as the dispatcher
    max_in_flight: int = 1024  # frontend maxconn (the dispatcher's --max-in-flight)
    server_max_conn: int = 1024  # per variant unless the route says otherwise
    server_timeout_s: float = 5.0  # the dispatcher's --backend-timeout-s
    connect_timeout_s: float = 1.0
    check_interval_s: float = 1.0
    check_fall: int = 2
    bufsize: int = 65536  # a request must fit the buffer to be retried (L7 retries)
    log_requests: bool = True  # the monitor's source; off only in the benchmark's "no log" variant


def render_config(
    variants: Sequence[tuple[str, str]], port: int, metrics_port: int, admin_socket: str, log_socket: str | None,
    tag: str, slo_ms: float, settings: HAProxySettings = HAProxySettings(),
) -> str:
    """The HAProxy config for these (variant, model) slots, from ``templates/haproxy/haproxy.cfg.j2``."""
    for name, model in variants:
        if not _NAME.match(name) or not _NAME.match(model):
            raise BadInput(f"variants: {name!r}/{model!r}: HAProxy needs names of letters, digits, '.', '_', '-'")
    s = settings
    return environment().get_template("haproxy/haproxy.cfg.j2").render(
        max_conn_total=max(4 * s.max_in_flight, 4096), threads=s.threads, admin_socket=admin_socket,
        log_socket=log_socket if s.log_requests else None, bufsize=s.bufsize,
        connect_timeout_ms=round(s.connect_timeout_s * 1000), server_timeout_ms=round(s.server_timeout_s * 1000),
        queue_timeout_ms=max(round(slo_ms), 1), host=s.host, port=port, max_in_flight=s.max_in_flight,
        metrics_port=metrics_port, tag=tag, check_interval_ms=round(s.check_interval_s * 1000),
        check_fall=s.check_fall,
        variants=[{"name": n, "model": m, "max_conn": s.server_max_conn} for n, m in variants],
    )


def weights(shares: Sequence[float]) -> list[int]:
    """Integer HAProxy weights (0..256) in the shares' proportions; a positive share keeps weight >= 1."""
    total = sum(shares)
    if total <= 0:
        return [1 for _ in shares]
    return [max(1, round(WEIGHT_SCALE * s / total)) if s > 0 else 0 for s in shares]


class RuntimeAPI:
    """HAProxy's Runtime API over its unix admin socket (one connection per command)."""

    _ERRORS = ("No such", "Unknown command", "Require ", "Invalid", "cannot", "Can't", "not found",
               "error", "Permission denied")

    def __init__(self, path: str, timeout_s: float = 5.0) -> None:
        self.path = path
        self.timeout_s = timeout_s

    def raw(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout_s)
            try:
                s.connect(self.path)
                s.sendall(command.encode() + b"\n")
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            except OSError as exc:
                raise BackendUnavailable(f"haproxy admin socket {self.path}: {exc}") from None
        return b"".join(chunks).decode(errors="replace")

    def command(self, command: str) -> str:
        """Run one command; raise when HAProxy answers with an error."""
        out = self.raw(command).strip()
        if any(marker in out for marker in self._ERRORS):
            raise BackendUnavailable(f"haproxy: {command!r}: {out.splitlines()[0] if out else out}")
        return out

    def stat(self) -> list[dict[str, str]]:
        """``show stat`` as rows (pxname, svname, status, weight, scur, stot, ...)."""
        text = self.raw("show stat").lstrip("# ")
        return [row for row in csv.DictReader(io.StringIO(text)) if row.get("pxname")]

    def info(self) -> dict[str, str]:
        out = {}
        for line in self.raw("show info").splitlines():
            key, sep, value = line.partition(":")
            if sep:
                out[key.strip()] = value.strip()
        return out


class _LogStats(RequestStats):
    """``RequestStats`` fed from HAProxy: arrivals from its request counter (exact at any rate) or,
    without one, from log lines, which come in completion order (an arrival may belong to a second
    before the last one counted, so it is put in its place); latency, codes, variants from the log."""

    def arrival(self, now_s: float, count: float = 1.0) -> None:
        sec = int(now_s)
        ps = self._per_second
        i = len(ps)
        while i > 0 and ps[i - 1][0] > sec:
            i -= 1
        if i > 0 and ps[i - 1][0] == sec:
            ps[i - 1][1] += count
        else:
            ps.insert(i, [sec, count])
        while ps and ps[0][0] <= ps[-1][0] - 900:
            ps.popleft()

    def arrivals_between(self, t0: float, t1: float, count: float) -> None:
        """``count`` arrivals spread evenly over ``[t0, t1)``, credited to the seconds they overlap."""
        if count <= 0 or t1 <= t0:
            return
        t = t0
        while t < t1:
            end = min(math.floor(t) + 1.0, t1)
            self.arrival(t, count * (end - t) / (t1 - t0))
            t = end


def parse_log_line(line: str) -> tuple[float, float, int, str] | None:
    """``"<accept s>.<ms> <Ta ms> <status> <server>"`` -> (accept_s, latency_ms, status, variant)."""
    parts = line.strip().split()
    if len(parts) < 4:
        return None
    try:
        accept_s, latency_ms, status = float(parts[-4]), float(parts[-3]), int(parts[-2])
    except ValueError:
        return None
    if latency_ms < 0:  # -1: the request was aborted before a response; count it as failed, no latency
        latency_ms = 0.0
        status = status if status >= 400 else 499
    return accept_s, latency_ms, status, parts[-1]


class HAProxyRouter:
    """HAProxy as a child process of the adapter (see the module doc)."""

    kind = "haproxy"
    rate_query = RATE_QUERY
    #: HAProxy 2.6's exporter has no latency histogram: the p99 comes from the request log (stats()).
    p99_query: str | None = None

    def __init__(self, config: RouterConfig, store: StateStore, variants: Sequence[tuple[str, str]],
                 settings: HAProxySettings = HAProxySettings(), clock: Callable[[], float] = time.time) -> None:
        if not variants:
            raise BadInput("--router haproxy: the profile names no variants to route to")
        self.config = config
        self.store = store
        self.variants = tuple(variants)
        self.models = dict(variants)
        self.settings = settings
        self.pid: int | None = None
        self.port = 0
        self.metrics_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self.api: RuntimeAPI | None = None
        self.messages: list[str] = []
        self.clock = clock
        self._stats = _LogStats(config.slo_ms, clock())
        self._lock = threading.Lock()
        self._log_sock: socket.socket | None = None
        self._log_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._sock_dir: Path | None = None
        self._routes: dict[str, Route] = {}  # what is routed now (name -> route)
        self.dropped_lines = 0
        self._counter_thread: threading.Thread | None = None
        self._counted: tuple[float, int] | None = None  # (when, HAProxy's req_tot then)

    # -- paths ----------------------------------------------------------------------------------
    def _socket_dir(self) -> Path:
        """The run folder when its paths fit a unix socket address, else a private temp folder."""
        if self._sock_dir is None:
            run = self.config.run_dir.resolve()
            if len(str(run / "haproxy-admin.sock")) <= _UNIX_PATH_MAX:
                self._sock_dir = run
            else:
                self._sock_dir = Path(tempfile.mkdtemp(prefix="infadapter-haproxy-"))  # mode 0700
        return self._sock_dir

    @property
    def admin_socket(self) -> Path:
        return self._socket_dir() / "haproxy-admin.sock"

    @property
    def log_socket(self) -> Path:
        return self._socket_dir() / "haproxy-log.sock"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_target(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, timeout_s: float = 30.0) -> str:
        """Start HAProxy (or adopt the run's live one); the base URL clients call."""
        binary = haproxy_binary()
        if binary is None:
            raise BadInput("--router haproxy: the haproxy binary is not installed (apt-get install haproxy, "
                           "or scripts/setup.sh as root); or use --router dispatcher")
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        self._stop_threads()  # a restart after HAProxy died: the old reader and counter end first
        if self._adopt():
            return self.url
        self._open_log_socket()
        # A restart keeps the ports: clients and Prometheus know the router by them.
        self.port, self.metrics_port = self.port or free_port(), self.metrics_port or free_port()
        tag = f"infadapter-{secrets.token_hex(6)}"
        cfg = self.config.run_dir / "haproxy.cfg"
        cfg.write_text(render_config(self.variants, self.port, self.metrics_port, str(self.admin_socket),
                                     str(self.log_socket), tag, self.config.slo_ms, self.settings))
        with contextlib.suppress(FileNotFoundError):
            self.admin_socket.unlink()
        logf = (self.config.run_dir / "haproxy.log").open("ab")
        # -db: foreground, no daemon; -Ws would need systemd. Its own session: stop() signals the group.
        self._proc = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=logf, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        self.pid = self._proc.pid
        self.api = RuntimeAPI(str(self.admin_socket))
        self._save()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = (self.config.run_dir / "haproxy.log").read_text(errors="replace").strip().splitlines()[-3:]
                raise BackendUnavailable(f"haproxy exited with {self._proc.returncode}: {' | '.join(tail)}")
            if self.healthy():
                os.chmod(self.admin_socket, 0o600)  # HAProxy's "mode 600" already; make sure
                self._start_counting()
                return self.url
            time.sleep(0.05)
        raise BackendUnavailable(f"haproxy did not answer on {self.admin_socket} within {timeout_s:g} s")

    def _adopt(self) -> bool:
        saved = self.store.get("router") or {}
        if saved.get("kind") != self.kind or not pid_alive(saved.get("pid")):
            return False
        self._sock_dir = Path(saved.get("socket_dir", ""))
        api = RuntimeAPI(str(self.admin_socket), timeout_s=2.0)
        try:
            api.info()
            if {r["svname"] for r in api.stat() if r["pxname"] == "variants"} >= set(self.models):
                self.api, self.pid = api, int(saved["pid"])
                self.port, self.metrics_port = int(saved["port"]), int(saved["metrics_port"])
                self._open_log_socket()
                self._start_counting()
                self.messages.append(f"adopted haproxy pid {self.pid}")
                return True
        except (BackendUnavailable, KeyError, TypeError, ValueError):
            pass
        stop_process(int(saved["pid"]), None, signal.SIGTERM, 5.0)
        self._sock_dir = None
        return False

    def healthy(self) -> bool:
        if self.api is None or (self._proc is not None and self._proc.poll() is not None):
            return False
        try:
            return bool(self.api.info().get("Pid"))
        except BackendUnavailable:
            return False

    def alive(self) -> bool:
        """Whether the HAProxy process still exists (reaps it when it was our child and died)."""
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid is not None and pid_alive(self.pid)

    def stop(self) -> None:
        """Soft-stop HAProxy (SIGUSR1: stop listening, finish in-flight requests), then force; idempotent."""
        self._stop.set()
        stop_process(self.pid, self._proc, signal.SIGUSR1, 10.0)
        self.pid, self._proc, self.api = None, None, None
        self._stop_threads()
        if self._sock_dir is not None:
            for p in (self.admin_socket, self.log_socket):
                with contextlib.suppress(OSError):
                    p.unlink()
        self._save()

    # -- routing --------------------------------------------------------------------------------
    def set_backends(self, backends: Iterable[Route | Mapping[str, Any]]) -> dict[str, Any]:
        """Route to exactly ``backends`` (make-before-break); returns the routing now in force."""
        if self.api is None:
            raise BackendUnavailable("haproxy is not running (start() first)")
        routes = as_routes(backends)
        seen: set[str] = set()
        for r in routes:
            if r.name not in self.models:
                raise BadInput(f"backends: {r.name!r} has no slot in this HAProxy; its variants are "
                               f"{', '.join(self.models)}")
            if r.name in seen:
                raise BadInput(f"backends: {r.name!r} appears twice")
            seen.add(r.name)
            if not (r.weight >= 0 and math.isfinite(r.weight)):
                raise BadInput(f"backends: {r.name}.weight must be a number >= 0, got {r.weight!r}")
        api = self.api
        # 1. Point every planned variant's slot at its model server and take it out of maintenance.
        current = self._slots()
        brought_up = []
        for r in routes:
            host, port = _host_port(r.url)
            slot = current.get(r.name, {})
            if slot.get("addr") != f"{host}:{port}":
                api.command(f"set server v-{r.name}/model addr {host} port {port}")
            if slot.get("inner_status", "MAINT").startswith("MAINT"):
                api.command(f"set server v-{r.name}/model state ready")
                api.command(f"set server v-{r.name}/model health up")  # the backend checked it AVAILABLE
                brought_up.append(r.name)
            if r.max_conn is not None:
                api.command(f"set maxconn server variants/{r.name} {int(r.max_conn)}")
        # 2. Weights, then the outer servers of new variants become routable.
        for r, w in zip(routes, weights([r.weight for r in routes]), strict=True):
            api.command(f"set server variants/{r.name} weight {w}")
            if current.get(r.name, {}).get("status", "MAINT").startswith("MAINT"):
                api.command(f"set server variants/{r.name} state ready")
        # 3. Variants no longer planned: no new requests (maint), in-flight ones finish.
        for name in self.models:
            if name not in seen and not current.get(name, {}).get("status", "MAINT").startswith("MAINT"):
                api.command(f"set server variants/{name} weight 0")
                api.command(f"set server variants/{name} state maint")
                api.command(f"set server v-{name}/model state maint")
        with self._lock:
            self._routes = {r.name: r for r in routes}
        return self.backends()

    def backends(self) -> dict[str, Any]:
        """The routing as HAProxy reports it: per variant weight, share, status, address."""
        slots = self._slots()
        total = sum(s["weight"] for s in slots.values() if not s["status"].startswith("MAINT"))
        out = []
        for name, s in slots.items():
            active = not s["status"].startswith("MAINT")
            out.append({"name": name, "model": self.models[name], "url": f"http://{s['addr']}", "weight": s["weight"],
                        "share": round(s["weight"] / total, 6) if active and total else 0.0, "status": s["status"]})
        return {"backends": out, "ejected": sorted(n for n, s in slots.items() if s["status"].startswith("DOWN"))}

    def _slots(self) -> dict[str, dict[str, Any]]:
        assert self.api is not None
        rows = self.api.stat()
        inner = {r["pxname"][2:]: r for r in rows if r["pxname"].startswith("v-") and r["svname"] == "model"}
        out = {}
        for r in rows:
            if r["pxname"] == "variants" and r["svname"] in self.models:
                i = inner.get(r["svname"], {})
                out[r["svname"]] = {
                    "weight": int(r.get("weight") or 0), "status": r.get("status", ""),
                    "inner_status": i.get("status", ""), "addr": i.get("addr", ""),
                    "in_flight": int(r.get("scur") or 0), "queued": int(r.get("qcur") or 0),
                }
        return out

    # -- observation ----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """The dispatcher's ``/admin/stats`` shape, from the request log plus HAProxy's own counters."""
        with self._lock:
            body = self._stats.snapshot(self.clock())
        if self.api is not None:
            slots = self._slots()
            total = sum(s["weight"] for s in slots.values() if not s["status"].startswith("MAINT"))
            body["in_flight"] = sum(s["in_flight"] + s["queued"] for s in slots.values())
            body["weights"] = {n: round(s["weight"] / total, 6) for n, s in slots.items()
                               if total and not s["status"].startswith("MAINT")}
            body["ejected"] = sorted(n for n, s in slots.items() if s["status"].startswith("DOWN"))
            with contextlib.suppress(BackendUnavailable, ValueError):
                body["log_lines_dropped"] = int(self.api.info().get("DroppedLogs", 0))
        body["max_in_flight"] = self.settings.max_in_flight
        body["log_lines_unparsed"] = self.dropped_lines
        return body

    def _requests_counter(self) -> int:
        """HAProxy's count of HTTP requests received by the predict frontend (``req_tot``)."""
        assert self.api is not None
        rows = [r for r in csv.DictReader(io.StringIO(self.api.raw("show stat predict 1 -1").lstrip("# ")))
                if r.get("svname") == "FRONTEND"]
        if not rows:
            raise BackendUnavailable("haproxy: no predict frontend in show stat")
        return int(rows[0].get("req_tot") or 0)

    def _stop_threads(self) -> None:
        """End the log reader and the counter of this HAProxy (each watches its own event)."""
        self._stop.set()
        if self._log_sock is not None:
            with contextlib.suppress(OSError):
                self._log_sock.close()
            self._log_sock = None
        for t in (self._log_thread, self._counter_thread):
            if t is not None and t is not threading.current_thread():
                t.join(2)
        self._log_thread = self._counter_thread = None
        self._counted = None
        self._stop = threading.Event()

    def _start_counting(self) -> None:
        """Arrivals per second from HAProxy's request counter, read just after each second starts."""
        self._counted = (self.clock(), self._requests_counter())
        self._counter_thread = threading.Thread(target=self._count, args=(self._stop,), name="haproxy-count",
                                                daemon=True)
        self._counter_thread.start()

    def _count(self, stop: threading.Event) -> None:
        while not stop.wait(1.02 - (time.time() % 1.0)):
            if self.api is None:
                return
            try:
                total = self._requests_counter()
            except (BackendUnavailable, ValueError):
                continue
            now = self.clock()
            with self._lock:
                if self._counted is not None:
                    t0, before = self._counted
                    delta = total - before if total >= before else total  # a reset counter starts at 0
                    self._stats.arrivals_between(t0, now, delta)
                    self._stats.requests_total += delta
                self._counted = (now, total)

    def _open_log_socket(self) -> None:
        if not self.settings.log_requests:
            return
        path = self.log_socket
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))  # mode 0600: only this user (HAProxy runs as it) may send
        finally:
            os.umask(old)
        sock.settimeout(0.5)
        self._log_sock = sock
        self._log_thread = threading.Thread(target=self._read_logs, args=(sock, self._stop), name="haproxy-log",
                                            daemon=True)
        self._log_thread.start()

    @property
    def log_thread_id(self) -> int | None:
        """Native thread id of the request-log reader (the benchmark pins it with HAProxy)."""
        return self._log_thread.native_id if self._log_thread is not None else None

    def _read_logs(self, sock: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.feed(data.decode(errors="replace"))

    def feed(self, line: str) -> None:
        """Count one request-log line (public for tests of the parser)."""
        parsed = parse_log_line(line)
        if parsed is None:
            self.dropped_lines += 1
            return
        accept_s, latency_ms, status, server = parsed
        with self._lock:
            if self._counted is None:  # no counter read (tests of the parser): the log counts arrivals
                self._stats.arrival(accept_s)
                self._stats.requests_total += 1
            self._stats.done(accept_s + latency_ms / 1000.0, latency_ms, status, server)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "pid": self.pid, "port": self.port, "url": self.url,
                "metrics_port": self.metrics_port, "admin_socket": str(self.admin_socket)}

    def _save(self) -> None:
        self.store.update(router={"kind": self.kind, "pid": self.pid, "port": self.port,
                                  "metrics_port": self.metrics_port, "socket_dir": str(self._socket_dir())}
                          if self.pid else None)


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise BadInput(f"backends: HAProxy routes to plain http://HOST:PORT model servers, got {url!r}")
    return parts.hostname, parts.port or 80
