"""One router interface for the local backend: our dispatcher or HAProxy, chosen by ``--router``.

The local backend only ever calls :meth:`Router.set_backends` with the plan's variants (name, model
server URL, model name, share); the monitor only calls :meth:`Router.stats` (the dispatcher's
``/admin/stats`` shape: per-second arrivals, 60 s latency percentiles, codes, variants) and scrapes
:attr:`Router.metrics_target` with :attr:`Router.rate_query`. Which process sits on the data path is
the router's business; docs/routing.md compares them and says where they differ.

- :class:`DispatcherRouter`: ``cli.py dispatch`` (infadapter/serving/dispatcher.py), the default.
- :class:`~infadapter.serving.haproxy.HAProxyRouter`: Debian's HAProxy, driven through its Runtime API.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from infadapter import paths
from infadapter.adapter.state import StateStore
from infadapter.errors import BackendUnavailable
from infadapter.observe.monitor import P99_QUERY, RATE_QUERY
from infadapter.ports import free_port
from infadapter.processes import pid_alive, stop_process


@dataclass(frozen=True)
class Route:
    """One variant the router sends traffic to."""

    name: str  # variant name (the X-Infadapter-Variant header, the metrics' label)
    url: str  # base URL of its model server, e.g. http://127.0.0.1:9001
    model: str  # model name on that server (the public name in the path is rewritten to it)
    weight: float  # share of traffic (>= 0, normalized over all routes)
    #: Requests the router lets reach the server at once (HAProxy queues the rest, then 503); None: no bound.
    max_conn: int | None = None
    #: Requests in flight past which the dispatcher sends a new one to an idle route (weight 0) with room;
    #: None: never (HAProxy has no such rule).
    spill_at: int | None = None
    #: The service (the model name clients post to) this route serves, its weight a share of that service's
    #: traffic; "" for one service (the dispatcher only: HAProxy routes one service).
    service: str = ""


def as_routes(backends: Iterable[Route | Mapping[str, Any]]) -> list[Route]:
    """Routes from Route objects or ``{"name", "url", "model"?, "weight", "max_conn"?}`` dicts."""
    out = []
    for b in backends:
        if isinstance(b, Route):
            out.append(b)
        else:
            out.append(Route(name=b["name"], url=b["url"], model=b.get("model", b["name"]),
                             weight=float(b["weight"]), max_conn=b.get("max_conn"), spill_at=b.get("spill_at"),
                             service=b.get("service", "")))
    return out


class Router(Protocol):
    """What the local backend and the monitor need of a router."""

    kind: str
    #: Prometheus: the rate of requests entering the router, and the p99 in ms (None: from stats()).
    rate_query: str
    p99_query: str | None

    @property
    def url(self) -> str:
        """Base URL clients send predict requests to."""
        ...

    @property
    def metrics_target(self) -> str:
        """``host:port`` whose ``/metrics`` Prometheus scrapes."""
        ...

    def start(self, timeout_s: float = 30.0) -> str:
        """Start (or adopt the run's live one); the base URL."""
        ...

    def set_backends(self, backends: Iterable[Route | Mapping[str, Any]]) -> Any:
        """Route to exactly these variants with these weights; new ones are ready before the old go."""
        ...

    def stats(self) -> Mapping[str, Any]:
        """The dispatcher's ``/admin/stats`` shape (see ``RequestStats.snapshot``)."""
        ...

    def healthy(self) -> bool: ...

    def alive(self) -> bool:
        """Whether the router process still exists (a dead one is restarted on its port)."""
        ...

    def stop(self) -> None:
        """Stop the router process; idempotent."""
        ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RouterConfig:
    """Settings shared by both routers (the local backend fills them in)."""

    run_dir: Path
    slo_ms: float = 750.0
    python: str = sys.executable
    dispatcher_args: tuple[str, ...] = ()


class DispatcherRouter:
    """Our dispatcher (``cli.py dispatch``) as a child process, admin API behind a 0600 token file."""

    kind = "dispatcher"
    rate_query = RATE_QUERY
    p99_query: str | None = P99_QUERY

    def __init__(self, config: RouterConfig, store: StateStore) -> None:
        self.config = config
        self.store = store
        self.pid: int | None = None
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self.client: Any = None
        self.messages: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> str:
        from infadapter.serving.dispatcher import DispatcherClient

        saved = self.store.get("dispatcher") or {}
        token_file = self.config.run_dir / "admin.token"
        if saved and pid_alive(saved.get("pid")) and token_file.exists():
            client = DispatcherClient(f"http://127.0.0.1:{saved['port']}", token_file.read_text().strip())
            if client.healthy():
                self.client, self.pid, self.port = client, saved["pid"], saved["port"]
                self.messages.append(f"adopted dispatcher pid {saved['pid']}")
                return client.base_url
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(24)
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        # A restart keeps the port: clients and Prometheus know the dispatcher by it.
        port = self.port or free_port()
        logf = (self.config.run_dir / "dispatcher.log").open("ab")
        cmd = [self.config.python, str(paths.CLI), "dispatch", "--host", "127.0.0.1", "--port", str(port),
               "--admin-token-file", str(token_file), "--slo-ms", f"{self.config.slo_ms:g}",
               *self.config.dispatcher_args]
        self._proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        logf.close()
        self.pid, self.port = self._proc.pid, port
        self.client = DispatcherClient(self.url, token)
        self._save()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BackendUnavailable(f"dispatcher exited with {self._proc.returncode}; "
                                         f"see {self.config.run_dir / 'dispatcher.log'}")
            if self.client.healthy():
                return self.url
            time.sleep(0.1)
        raise BackendUnavailable(f"dispatcher did not answer within {timeout_s:g} s")

    def set_backends(self, backends: Iterable[Route | Mapping[str, Any]]) -> Any:
        items = []
        for r in as_routes(backends):
            d = asdict(r)
            d.pop("max_conn")  # the dispatcher bounds in-flight requests overall (--max-in-flight)
            if d["spill_at"] is None:
                del d["spill_at"]
            if not d["service"]:
                del d["service"]
            items.append(d)
        return self.client.set_backends(items)

    def stats(self) -> Mapping[str, Any]:
        return self.client.stats()

    def healthy(self) -> bool:
        return self.client is not None and self.client.healthy()

    def alive(self) -> bool:
        """Whether the dispatcher process still exists (reaps it when it was our child and died)."""
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid is not None and pid_alive(self.pid)

    def stop(self) -> None:
        stop_process(self.pid, self._proc)
        self.pid, self._proc, self.client = None, None, None
        self._save()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "pid": self.pid, "port": self.port, "url": self.url}

    def _save(self) -> None:
        self.store.update(dispatcher={"pid": self.pid, "port": self.port, "url": self.url} if self.pid else None,
                          router={"kind": self.kind, "pid": self.pid, "port": self.port} if self.pid else None)
