"""The local backend: model-server processes under CPU quotas, behind a router (dispatcher or HAProxy).

Each running variant is one model-server process (``cli.py serve-model``) in a cgroup of its own
whose CPU limit is the plan's cores (cgroup v2 ``cpu.max`` or v1 CFS quota, through
:mod:`infadapter.serving.cgroups`). The router splits traffic by the plan's shares: our dispatcher
(``cli.py dispatch``, the default) or HAProxy (``--router haproxy``), both behind one interface
(:mod:`infadapter.serving.router`). ``apply`` reconciles make-before-break:

1. a variant that is new, or whose thread count must change, gets a new server; the loop's data path
   keeps using the old routing while it loads and answers ``AVAILABLE`` (warm-up requests done). Meanwhile
   ``abandon_when`` (set by the loop) is asked every ``ABANDON_CHECK_S``: a reason stops the wait, the new
   servers are killed, growth in place is put back, and the old plan serves on (``ApplyResult.abandoned``);
2. a change of cores alone rewrites the cgroup limit in place: no restart. The server's thread count
   cannot change in place, so a server is started with ``ceil(cores)`` threads and an in-place
   resize is used when the new cores still fit those threads (more cores than threads would be
   wasted: that case is a replacement);
3. the router gets the new backends and weights (the dispatcher in one atomic swap; HAProxy brings
   new servers up before it moves weights); in-flight requests keep their server;
4. servers no longer routed to get SIGTERM (they drain in-flight requests), then SIGKILL after
   ``drain_timeout_s``, are reaped, and their cgroups removed.

Without a writable cgroup the limit falls back to the thread count alone (``limit_mode`` says so in
``status``). Every process is started in its own session and recorded, with pid, port, cores and
cgroup, in the run's state file, so that a restarted adapter adopts live servers instead of starting
duplicates, and ``stop`` (also run at exit and on SIGINT/SIGTERM by the adapt command) leaves none.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from infadapter.adapter.state import StateStore
from infadapter.backends.base import (
    ABANDON_CHECK_S,
    Abandoned,
    ApplyResult,
    BackendState,
    TargetsCallback,
    VariantState,
    abandon_reason,
)
from infadapter.core.plan import Plan
from infadapter.core.profile import Profile, threads_for_cores
from infadapter.errors import BackendUnavailable, BadInput
from infadapter.ports import free_port
from infadapter.processes import kill_tree, pid_alive
from infadapter.serving.haproxy import HAProxyRouter
from infadapter.serving.router import DispatcherRouter, Route, Router, RouterConfig
from infadapter.serving.server import server_command

log = logging.getLogger(__name__)

@dataclass
class ServerProc:
    """One model-server process the backend runs (or adopted from a previous adapter)."""

    name: str  # variant
    model: str  # model name on the server
    pid: int
    port: int
    cores: float
    threads: int
    cgroup: str | None
    started_s: float
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    group: Any = field(default=None, repr=False)
    ready: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return pid_alive(self.pid)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "model": self.model, "pid": self.pid, "port": self.port, "cores": self.cores,
            "threads": self.threads, "cgroup": self.cgroup, "started_s": self.started_s, "ready": self.ready,
        }


@dataclass(frozen=True)
class LocalConfig:
    """Settings of the local backend."""

    model_dir: Path
    run_dir: Path
    #: "auto" (cgroup when writable, else threads), "cgroup" (required) or "threads".
    limit_mode: str = "auto"
    warmup: int = 3
    ready_timeout_s: float = 180.0
    drain_timeout_s: float = 20.0
    slo_ms: float = 750.0
    python: str = sys.executable
    #: Extra arguments for every ``serve-model`` (e.g. ``("--resolution", "64")``).
    server_args: tuple[str, ...] = ()
    #: Settings for the dispatcher process.
    dispatcher_args: tuple[str, ...] = ()
    #: Which router splits the traffic: "dispatcher" (ours) or "haproxy" (docs/routing.md).
    router: str = "dispatcher"
    #: Startup CPU boost: a new server loads under a quota of a whole core per inference thread, and
    #: gets its planned quota once it answers (before it gets traffic). On 0.25 core a model took
    #: 2.6-4.0 s to load, on 1 core 0.6-1.4 s; a burst waits for that load.
    startup_boost: bool = True
    #: The policy's registry flags (``PolicyEntry.in_place`` / ``cpu_limited``), as the simulator reads
    #: them. ``in_place`` False (HPA: more pods, not bigger ones): a change of cores starts a new server,
    #: make-before-break, never a resize. ``cpu_limited`` False (vpa-requests: requests only): a
    #: server is held to the budget, not to its cores (cgroup quota and threads of the budget), as the
    #: simulator lets such a server use the free budget; its cores stay what the plan pays for.
    in_place: bool = True
    cpu_limited: bool = True


def _http_json(url: str, timeout_s: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.loads(resp.read() or b"null")


def model_available(url: str, model: str, timeout_s: float = 2.0) -> bool:
    """True when ``GET /v1/models/MODEL`` answers state AVAILABLE (TF Serving's model status)."""
    try:
        body = _http_json(f"{url}/v1/models/{model}", timeout_s)
    except (urllib.error.URLError, OSError, ValueError):
        return False
    states = [s.get("state") for s in (body or {}).get("model_version_status", []) if isinstance(s, dict)]
    return "AVAILABLE" in states


def _request_counts(url: str, timeout_s: float = 0.5) -> tuple[float, float]:
    """(served, shed with 503) requests of a model server, from its TF Serving request_count metric."""
    import urllib.request

    served = shed = 0.0
    try:
        with urllib.request.urlopen(f"{url}/monitoring/prometheus/metrics", timeout=timeout_s) as resp:
            text = resp.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return served, shed
    for line in text.splitlines():
        if line.startswith(":tensorflow:serving:request_count{"):
            with contextlib.suppress(ValueError, IndexError):
                n = float(line.rsplit(" ", 1)[1])
                if 'status="OK"' in line:
                    served += n
                elif 'status="UNAVAILABLE"' in line:
                    shed += n
    return served, shed


def _proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process from /proc (the thread-mode fallback for usage)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


ROUTERS = ("dispatcher", "haproxy")


def make_router(kind: str, config: RouterConfig, store: StateStore,
                variants: Sequence[tuple[str, str]] = ()) -> Router:
    """A router of ``kind`` (dispatcher | haproxy); ``variants``: every (name, model) it may route to."""
    if kind == "dispatcher":
        return DispatcherRouter(config, store)
    if kind == "haproxy":
        return HAProxyRouter(config, store, variants)
    raise BadInput(f"--router: expected one of {', '.join(ROUTERS)}, got {kind!r}")


class LocalBackend:
    """Model servers as local processes; see the module doc."""

    name = "local"

    def __init__(self, profile: Profile, config: LocalConfig, store: StateStore) -> None:
        self.profile = profile
        self.config = config
        self.store = store
        self.servers: dict[str, ServerProc] = {}
        self.starting: dict[int, ServerProc] = {}  # started, not yet routed (recorded for adoption)
        self.retired: list[ServerProc] = []
        self.plan: Plan | None = None
        self.router: Router = make_router(
            config.router,
            RouterConfig(run_dir=config.run_dir, slo_ms=config.slo_ms, python=config.python,
                         dispatcher_args=config.dispatcher_args),
            store, variants=[(v.name, v.model or v.name) for v in profile.variants])
        #: The routes last given to the router (re-sent when a dead router is restarted).
        self._last_routes: list[Route] = []
        #: The running router (stats(), healthy(), set_backends()); None until start_router().
        self.client: Any = None
        self.messages: list[str] = []
        self.driver, self.limit_mode = self._detect_limits(config.limit_mode)
        self._on_targets: TargetsCallback | None = None  # Prometheus file discovery (watch_targets)
        #: Asked with the plan being applied while its new servers load; a reason stops the wait (the loop sets it).
        self.abandon_when: Callable[[Plan], str] | None = None
        self._stopped = False

    # -- CPU limits --------------------------------------------------------------------------------
    @staticmethod
    def _detect_limits(mode: str) -> tuple[Any, str]:
        if mode not in ("auto", "cgroup", "threads"):
            raise ValueError(f"limit_mode must be auto, cgroup or threads, got {mode!r}")
        if mode == "threads":
            return None, "threads (cgroups disabled by choice)"
        try:
            from infadapter.serving import cgroups
        except ImportError:
            driver = None
        else:
            try:
                driver = cgroups.detect()
            except Exception as exc:
                log.warning("cgroup detection failed: %s", exc)
                driver = None
        if driver is None:
            if mode == "cgroup":
                raise BackendUnavailable("--cpu-limit cgroup: no writable cgroup cpu controller here; "
                                         "run as root or use --cpu-limit threads")
            return None, "threads only (no writable cgroup cpu controller: limits are thread counts)"
        describe = getattr(driver, "describe", None)
        label = describe() if callable(describe) else type(driver).__name__
        return driver, f"cgroup ({label})"

    @property
    def in_place_resize(self) -> bool:
        """A cgroup quota changes under a running server; thread-limited servers restart instead, and
        so does every server of a policy whose changes are not in place (``LocalConfig.in_place``)."""
        return self.uses_cgroups and self.config.in_place

    def _limit(self, cores: float) -> float:
        """The CPU a server of ``cores`` is held to: its cores, or the budget for a policy without limits."""
        return cores if self.config.cpu_limited else self.profile.core_options()[-1]

    def in_place_max_cores(self) -> dict[str, float]:
        """A server's thread count is fixed when it starts: beyond that many cores, a restart."""
        return {n: self.profile.in_place_ceiling(sp.threads) for n, sp in self.servers.items()}

    @property
    def uses_cgroups(self) -> bool:
        return self.driver is not None

    # -- the router --------------------------------------------------------------------------------
    def start_router(self, timeout_s: float = 30.0) -> str:
        """Start the router (or adopt the one in the state file); the base URL clients call."""
        url = self.router.start(timeout_s)
        self.client = self.router
        self.messages.extend(getattr(self.router, "messages", []))
        return url

    @property
    def dispatcher_url(self) -> str:
        """Base URL of the router clients call (the name predates ``--router``)."""
        return self.router.url

    @property
    def metrics_target(self) -> str:
        """``host:port`` of the router's Prometheus metrics (``/metrics``)."""
        return self.router.metrics_target

    # -- adoption ----------------------------------------------------------------------------------
    def adopt(self) -> list[str]:
        """Take over live, answering servers named in the state file; kill the others. Names adopted."""
        adopted: list[str] = []
        for item in self.store.get("servers") or []:
            try:
                sp = ServerProc(name=item["name"], model=item.get("model", item["name"]), pid=int(item["pid"]),
                                port=int(item["port"]), cores=float(item["cores"]), threads=int(item["threads"]),
                                cgroup=item.get("cgroup"), started_s=float(item.get("started_s", 0)))
            except (KeyError, TypeError, ValueError):
                continue
            if sp.name in self.servers or not sp.alive() or not model_available(sp.url, sp.model):
                if sp.alive():
                    kill_tree(sp.pid, signal.SIGKILL)
                self._remove_group_by_name(sp.cgroup)
                continue
            sp.ready = True
            if sp.cgroup and self.driver is not None:
                sp.group = self._open_group(sp.cgroup, self._limit(sp.cores))
            self.servers[sp.name] = sp
            adopted.append(sp.name)
        saved_plan = self.store.get("backend_plan")
        if saved_plan and adopted:
            with contextlib.suppress(Exception):
                plan = Plan.from_dict(saved_plan)
                if set(plan.names) == set(adopted):
                    self.plan = plan
        if adopted:
            self.messages.append(f"adopted servers: {', '.join(adopted)}")
        self._save()
        return adopted

    # -- the Backend protocol ----------------------------------------------------------------------
    def state(self) -> BackendState:
        self._reap()
        variants = tuple(
            VariantState(sp.name, sp.cores, sp.ready and sp.alive(), sp.url,
                         f"pid {sp.pid}, {sp.threads} threads, {self.limit_mode}")
            for sp in self.servers.values()
        )
        return BackendState(variants=variants, plan=self.plan, healthy=self.health(),
                            messages=(f"cpu limit: {self.limit_mode}", *self.messages[-5:]))

    def health(self) -> bool:
        return self.client is not None and self.client.healthy()

    def apply(self, plan: Plan) -> ApplyResult:
        """Reconcile to ``plan`` make-before-break (see the module doc); safe to call twice."""
        if self.client is None:
            self.start_router()
        old_plan = self.plan
        self._reap()
        actions: list[str] = []
        starting: dict[str, ServerProc] = {}
        replaced: list[ServerProc] = []
        grow: list[tuple[ServerProc, float]] = []
        shrink: list[tuple[ServerProc, float]] = []
        try:
            self._start_new(plan, starting, replaced, grow, shrink, actions)
            # Raise limits before anything waits: in place, instant, and the burst is happening now.
            for sp, cores in grow:
                self._set_cores(sp, cores)
                actions.append(f"resize {sp.name} {sp.cores:g} -> {cores:g} cores in place")
                sp.cores = cores
            if starting:
                self._wait_ready(list(starting.values()), plan)
                for sp in starting.values():  # the startup boost ends before the server gets traffic
                    self._set_cores(sp, sp.cores)
        except Abandoned as why:
            self._drop_started(starting)
            for sp, _ in grow:  # the old plan serves as it was: its cores too
                before = old_plan.get(sp.name) if old_plan is not None else None
                if before is not None:
                    self._set_cores(sp, before.cores)
                    sp.cores = before.cores
            self._save()
            actions.append(f"abandoned: {why}; stopped {', '.join(sorted(starting))}")
            return ApplyResult(serving=old_plan or plan, actions=tuple(actions), ok=False,
                               error=f"abandoned: {why}", abandoned=str(why))
        except Exception as exc:
            self._drop_started(starting)
            self._save()
            msg = f"{type(exc).__name__}: {exc}"
            log.warning("apply failed, previous plan keeps serving: %s", msg)
            return ApplyResult(serving=old_plan or plan, actions=tuple(actions), ok=False, error=msg,
                               retry_after_s=5.0)
        # Limits were raised above, before anything waited; they are lowered after traffic moves.
        removed = [sp for n, sp in self.servers.items() if plan.get(n) is None]
        for name, sp in starting.items():
            self.servers[name] = sp
        self.starting.clear()
        for sp in removed:
            del self.servers[sp.name]
        try:
            self._route(plan)
        except Exception as exc:
            # Routing failed: the old servers still hold the old routing; undo the swap in our books.
            self._drop_started(starting)
            for sp in removed:
                self.servers[sp.name] = sp
            for sp in replaced:
                self.servers[sp.name] = sp
            self._save()
            return ApplyResult(serving=old_plan or plan, actions=tuple(actions), ok=False,
                               error=f"routing failed: {exc}", retry_after_s=2.0)
        for sp, cores in shrink:
            self._set_cores(sp, cores)
            actions.append(f"resize {sp.name} {sp.cores:g} -> {cores:g} cores in place")
            sp.cores = cores
        for sp in [*removed, *replaced]:
            actions.append(f"stop {sp.name} (pid {sp.pid}) after drain")
            self._terminate_later(sp)
        self.plan = plan
        self._save()
        return ApplyResult(serving=plan, actions=tuple(actions))

    def _start_new(self, plan: Plan, starting: dict[str, ServerProc], replaced: list[ServerProc],
                   grow: list[tuple[ServerProc, float]], shrink: list[tuple[ServerProc, float]],
                   actions: list[str]) -> None:
        """Start the servers ``plan`` adds (and those it resizes beyond what a thread count allows, or that died):
        into ``starting`` (and the ones they replace into ``replaced``); the in-place resizes into ``grow`` and
        ``shrink``."""
        for a in plan.allocations:
            cur = self.servers.get(a.name)
            if cur is not None and not cur.alive():
                self._retire(cur)
                cur = None
            if cur is None:
                starting[a.name] = self._start_server(a.name, a.cores, boost=a.share > 0)
                actions.append(f"start {a.name} on {a.cores:g} cores (port {starting[a.name].port})")
            elif abs(cur.cores - a.cores) > 1e-9:
                if (self.in_place_resize and cur.group is not None
                        and threads_for_cores(self._limit(a.cores)) <= cur.threads):
                    (grow if a.cores > cur.cores else shrink).append((cur, a.cores))
                else:
                    starting[a.name] = self._start_server(a.name, a.cores, boost=a.share > 0)
                    replaced.append(cur)
                    actions.append(f"replace {a.name} {cur.cores:g} -> {a.cores:g} cores "
                                   f"({threads_for_cores(self._limit(a.cores))} threads)")

    def stop(self) -> None:
        """Stop every server and the dispatcher this backend runs or adopted; idempotent."""
        for sp in list(self.servers.values()) + list(self.starting.values()) + self.retired:
            self._terminate(sp, drain=False, timeout_s=5.0)
        self.servers.clear()
        self.starting.clear()
        self.retired.clear()
        self.router.stop()
        self.client = None
        self.plan = None
        self._stopped = True
        self._save()

    # -- extras the loop and status use ------------------------------------------------------------
    def cpu_seconds(self) -> dict[str, float]:
        """Cumulative CPU demand in seconds per variant: the CPU used (cgroup accounting, else /proc of the
        process) plus the CPU the requests it shed with a 503 would have used (shed x CPU per served
        request). A server held to its limit sheds what it cannot serve, so its usage alone can never
        show more demand than the limit; VPA and HPA read this signal and see the demand."""
        out: dict[str, float] = {}
        for sp in self.servers.values():
            secs: float | None = None
            if sp.group is not None:
                with contextlib.suppress(Exception):
                    secs = float(sp.group.usage_seconds())
            if secs is None:
                secs = _proc_cpu_seconds(sp.pid)
            if secs is not None:
                served, shed = _request_counts(sp.url)
                out[sp.name] = secs + (shed * secs / served if served > 0 else 0.0)
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "limit_mode": self.limit_mode,
            "router": self.router.describe(),
            "servers": [sp.as_dict() for sp in self.servers.values()],
        }

    # -- internals ---------------------------------------------------------------------------------
    def _start_server(self, name: str, cores: float, boost: bool = True) -> ServerProc:
        v = self.profile.variant(name)
        model = v.model or v.name
        limit = self._limit(cores)
        threads = threads_for_cores(limit)
        port = free_port()
        logs = self.config.run_dir / "servers"
        logs.mkdir(parents=True, exist_ok=True)
        logf = (logs / f"{name}-{port}.log").open("ab")
        cmd = server_command(self.config.model_dir, model, port, threads, self.config.warmup, "127.0.0.1",
                             self.config.python, self.config.server_args)
        if "--max-queue" not in self.config.server_args:
            # The queue bound of the most cores this server can be given in place (its thread count
            # is fixed): a resize changes the cgroup quota, not the server's max_queue.
            ceiling = self.profile.in_place_ceiling(threads)
            cmd += ["--max-queue", str(self.profile.queue_bound(name, max(limit, ceiling)))]
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        logf.close()
        group, cgname = None, None
        if self.driver is not None:
            cgname = f"infadapter-{self.config.run_dir.name}-{name}-{port}"
            try:
                # A server with no share (a standby) loads under its own quota: no traffic waits for it, and
                # a boost would take the CPU of the servers that carry the load (a 2-core machine stalled
                # for a second when the main job's standby came back boosted during the burst).
                boosted = self.config.startup_boost and boost
                group = self._open_group(cgname, self._boost_cores(limit, threads) if boosted else limit)
                group.add_pid(proc.pid)
            except Exception as exc:
                kill_tree(proc.pid, signal.SIGKILL)
                proc.wait(5)
                raise BackendUnavailable(f"cgroup for {name}: {exc}") from None
        sp = ServerProc(name=name, model=model, pid=proc.pid, port=port, cores=cores, threads=threads,
                        cgroup=cgname, started_s=time.time(), proc=proc, group=group)
        # Record it before waiting: a killed adapter must find every process it started.
        self.starting[sp.pid] = sp
        self._save()
        return sp

    def _boost_cores(self, limit: float, threads: int) -> float:
        """A loading server's quota: a whole core per thread, from the CPUs the quotas of the other servers
        (those serving and those loading) leave idle, never below its own. On a 2-core machine with the
        budget serving a burst, two boosted loads had taken 2 cores more than there were: the loads took
        3.5 s instead of ~1 s and the servers carrying the burst answered late."""
        others = [*self.servers.values(), *self.starting.values()]
        committed = sum(sp.group.cores for sp in others if sp.group is not None)
        idle = max(0.0, len(os.sched_getaffinity(0)) - committed)
        return max(limit, min(float(threads), idle))

    def _open_group(self, name: str, cores: float) -> Any:
        return self.driver.create(name, cores)

    def _remove_group_by_name(self, name: str | None) -> None:
        if not name or self.driver is None:
            return
        with contextlib.suppress(Exception):
            self.driver.create(name, self.profile.min_cores).remove()

    def _set_cores(self, sp: ServerProc, cores: float) -> None:
        if sp.group is not None:
            sp.group.set_cores(self._limit(cores))

    def _wait_ready(self, servers: list[ServerProc], plan: Plan | None = None) -> None:
        """Wait until every server answers AVAILABLE; every ``ABANDON_CHECK_S`` ask ``abandon_when`` about ``plan``
        (raises :class:`Abandoned` with its reason)."""
        deadline = time.monotonic() + self.config.ready_timeout_s
        gone = threading.Event()

        def wait_one(sp: ServerProc) -> None:
            while time.monotonic() < deadline and not gone.is_set():
                if not sp.alive():
                    raise BackendUnavailable(f"server {sp.name} exited during start-up; see "
                                             f"{self.config.run_dir / 'servers' / f'{sp.name}-{sp.port}.log'}")
                if model_available(sp.url, sp.model, timeout_s=1.0):
                    sp.ready = True
                    return
                time.sleep(0.2)
            if not gone.is_set():
                raise BackendUnavailable(f"server {sp.name} not AVAILABLE after {self.config.ready_timeout_s:g} s")

        with ThreadPoolExecutor(max_workers=max(len(servers), 1)) as pool:
            futures = [pool.submit(wait_one, sp) for sp in servers]
            try:
                while True:
                    done, pending = wait(futures, timeout=ABANDON_CHECK_S, return_when=FIRST_EXCEPTION)
                    if not pending or any(f.exception() is not None for f in done):
                        break
                    why = abandon_reason(self.abandon_when, plan)
                    if why:
                        raise Abandoned(why)
            finally:
                gone.set()
            for fut in futures:
                fut.result()

    def watch_targets(self, callback: TargetsCallback) -> None:
        """Tell ``callback`` the servers' scrape targets now and after every routing change."""
        self._on_targets = callback
        self._tell_targets()

    def _tell_targets(self) -> None:
        if self._on_targets is not None:
            with contextlib.suppress(Exception):  # discovery is best effort; serving goes on
                self._on_targets({sp.name: [f"127.0.0.1:{sp.port}"] for sp in self.servers.values()})

    def heal(self) -> str | None:
        """Restart a router process that died (same port, so clients and Prometheus find it again) and
        give it the last routes; a message saying so, or None when it is alive (or not ours to check)."""
        alive = getattr(self.router, "alive", None)
        if alive is None or self.router.pid is None or alive():
            return None
        old = self.router.pid
        self.router.start()
        self.client = self.router
        if self._last_routes:
            self.router.set_backends(self._last_routes)
        return f"router pid {old} died; restarted as pid {self.router.pid} on port {self.router.port} " \
               f"with {len(self._last_routes)} routes"

    def _route(self, plan: Plan) -> None:
        # spill_at: with a standby (a variant with no share) in the plan, a server whose queue would hold a new
        # request past about half the SLO hands it to the standby (docs/dispatcher.md).
        # service: several services are routed each by its own model name and shares (the profile says whose a
        # variant is: a plan read back from the state file may not carry it).
        routes = [Route(name=a.name, url=self.servers[a.name].url, model=self.servers[a.name].model,
                        weight=round(a.share, 6), spill_at=self.profile.spill_bound(a.name, a.cores),
                        service=self.profile.service_of(a.name))
                  for a in plan.allocations]
        for svc in dict.fromkeys(r.service for r in routes):  # a table whose weights are all 0 serves evenly
            if sum(r.weight for r in routes if r.service == svc) <= 0:
                routes = [replace(r, weight=1.0) if r.service == svc else r for r in routes]
        self.client.set_backends(routes)
        self._last_routes = routes
        self._tell_targets()

    def _drop_started(self, started: dict[str, ServerProc]) -> None:
        """Kill the servers an apply started and no plan routes to (no drain: nothing was sent to them)."""
        for sp in started.values():
            self._terminate(sp, drain=False)
        self.starting.clear()

    def _terminate(self, sp: ServerProc, drain: bool, timeout_s: float | None = None) -> None:
        """SIGTERM (the server drains), wait, SIGKILL; reap; remove the cgroup."""
        limit = timeout_s if timeout_s is not None else (self.config.drain_timeout_s if drain else 5.0)
        if sp.alive():
            kill_tree(sp.pid, signal.SIGTERM)
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline and sp.alive():
                time.sleep(0.05)
            if sp.alive():
                kill_tree(sp.pid, signal.SIGKILL)
        if sp.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                sp.proc.wait(5)
        else:
            deadline = time.monotonic() + 5
            while pid_alive(sp.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        if sp.group is not None:
            with contextlib.suppress(Exception):
                sp.group.remove()
            sp.group = None
        with contextlib.suppress(ValueError):  # stop() may have cleared the list meanwhile
            self.retired.remove(sp)

    def _terminate_later(self, sp: ServerProc) -> None:
        """Drain and stop ``sp`` in the background: it gets no traffic any more, and the loop must
        not wait seconds for its queue to empty (it may be needed for the next overload)."""
        self.retired.append(sp)
        threading.Thread(target=self._terminate, args=(sp, True), name=f"stop-{sp.name}", daemon=True).start()

    def _retire(self, sp: ServerProc) -> None:
        """Forget a dead server (reaping it and removing its cgroup)."""
        self.servers.pop(sp.name, None)
        self._terminate(sp, drain=False, timeout_s=0.5)
        self.messages.append(f"server {sp.name} (pid {sp.pid}) exited")

    def _reap(self) -> None:
        for sp in list(self.servers.values()):
            if not sp.alive():
                rc = sp.proc.poll() if sp.proc is not None else None
                log.warning("server %s (pid %d) exited (code %s)", sp.name, sp.pid, rc)
                self._retire(sp)
        self._save()

    @staticmethod
    def _pid_running(pid: int, proc: subprocess.Popen[bytes] | None) -> bool:
        if proc is not None:
            return proc.poll() is None
        return pid_alive(pid)

    def _save(self) -> None:
        servers = [sp.as_dict() for sp in self.servers.values()] + [sp.as_dict() for sp in self.starting.values()]
        self.store.update(
            servers=servers,
            backend_plan=self.plan.as_dict() if self.plan is not None else None,
            limit_mode=self.limit_mode,
        )
