"""The local backend's preparation step for the one runner (:class:`~infadapter.adapter.runner.AdapterRun`).

:class:`LocalSetup` is what ``cli.py adapt`` prepares on this machine: model files (built when missing), the
router and the model servers (:class:`~infadapter.backends.local.backend.LocalBackend`, adopting the servers a
killed adapter left), the adapter's metrics endpoint, Prometheus (started from the rendered scrape config when
the binary exists, or given by URL) and, with a load, the load generator that the runner drives in the main
thread (so Ctrl-C stops it cleanly).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infadapter import paths
from infadapter.adapter.loop import LoopMetrics
from infadapter.adapter.runner import AdapterConfig, AdapterRun, Prepared
from infadapter.backends.local.backend import LocalBackend, LocalConfig
from infadapter.core.control import HISTORY_S
from infadapter.core.policies import entry as policy_entry
from infadapter.core.profile import Profile
from infadapter.errors import BadInput, InfAdapterError
from infadapter.observe.monitor import Monitor, PrometheusServer, prometheus_binary, write_server_targets
from infadapter.observe.requestlog import REQUESTS_FILE
from infadapter.ports import free_port
from infadapter.processes import pid_alive

log = logging.getLogger(__name__)


#: What splits the traffic on this machine (infadapter/serving/router.py, docs/routing.md).
ROUTERS = ("dispatcher", "haproxy")


@dataclass(frozen=True, kw_only=True)
class RunConfig(AdapterConfig):
    """A run on the local backend: the shared flags plus this machine's (models, CPU limits, the load)."""

    backend: str = "local"
    run_dir: Path = paths.DEFAULT_RUN_DIR
    model_dir: Path = paths.MODELS
    prometheus: str | None = None  # URL of an existing server; "off" disables; None: start one if present
    limit_mode: str = "auto"
    resolution: int | None = None  # model input and load JPEG size; None: the profile's, else 224
    warmup: int = 3
    seed: int = 0
    timeout_s: float = 10.0
    drain_s: float = 3.0  # after the load, keep adapting this long so in-flight requests finish
    server_args: tuple[str, ...] = ()
    requests_csv: bool = True
    router: str = "dispatcher"  # dispatcher | haproxy (infadapter/serving/router.py, docs/routing.md)
    #: Before serving, time one request alone on one core against the profile's ``reference_ms`` and scale
    #: the capacities down on a slower machine (infadapter.profiler.calibrate).
    calibrate: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend != "local":
            raise BadInput(f"--backend: this configuration is for the local backend, got {self.backend!r}")
        if self.limit_mode not in ("auto", "cgroup", "threads"):
            raise BadInput(f"--cpu-limit: expected auto, cgroup or threads, got {self.limit_mode!r}")
        if self.router not in ROUTERS:
            raise BadInput(f"--router {self.router}: the local backend routes with {' or '.join(ROUTERS)}; "
                           "gateway is for --backend kubernetes or dry-run (a Gateway API HTTPRoute)")
        if self.services_load and self.router != "dispatcher":
            raise BadInput(f"--router {self.router}: several services are routed by the dispatcher (a route table "
                           "per service); use --router dispatcher")

    @classmethod
    def from_flags(cls, shared: Mapping[str, Any], **own: Any) -> RunConfig:
        """The flags every backend shares (``AdapterConfig``'s fields plus ``run_dir``, ``profile_path``,
        ``prometheus``, ``router``; None: this backend's default) and this backend's own
        (:mod:`infadapter.backends.local.options`)."""
        fields = dict(shared)
        fields["run_dir"] = fields.get("run_dir") or paths.DEFAULT_RUN_DIR
        fields["profile_path"] = fields.get("profile_path") or paths.local_profile()
        return cls(**fields, **own)


def ensure_models(profile: Profile, model_dir: Path, resolution: int) -> list[str]:
    """Build the profile's model files that are missing (serving engineer's builder); names built."""
    from infadapter.serving import resnet

    built = []
    for v in profile.variants:
        name = v.model or v.name
        path = resnet.model_path(model_dir, name)
        built_at = resnet.built_resolution(model_dir, name)
        if not path.exists() or (built_at is not None and built_at != resolution):
            log.info("building %s at %d px into %s", name, resolution, model_dir)
            resnet.write_model(model_dir, name, resolution=resolution)
            built.append(name)
    return built


def resolution_of(cfg: RunConfig, profile: Profile) -> int:
    """The models' input size: the flag, else the one the profile was measured at, else 224."""
    from infadapter.observe.loadgen import DEFAULT_RESOLUTION

    return cfg.resolution or profile.resolution or DEFAULT_RESOLUTION


class LocalSetup:
    """The local backend's preparation step (see the module doc and
    :class:`~infadapter.adapter.runner.BackendSetup`)."""

    #: A restarted adapter adopts the servers, router and Prometheus the previous one left.
    keep_state = ("servers", "dispatcher", "router", "backend_plan", "prometheus")

    @staticmethod
    def _calibrate(run: AdapterRun, cfg: RunConfig) -> Profile:
        """The profile this machine can serve: the run's, scaled when calibration finds this machine slower."""
        from infadapter.profiler import calibrate

        try:
            found = calibrate(run.profile, cfg.model_dir, cfg.warmup)
        except InfAdapterError as exc:
            run.messages.append(f"calibration skipped: {exc}")
            return run.profile
        if found is None:
            return run.profile
        run.messages.append(found.message(Path(cfg.profile_path).name))
        run.calibration = found
        if found.applied:
            run.profile = run.profile.scaled_capacity(found.factor)
        return run.profile

    def prepare(self, run: AdapterRun) -> Prepared:

        cfg = run.config
        if not isinstance(cfg, RunConfig):
            raise BadInput("--backend local: expected the local backend's flags")
        assert run.store is not None
        profile, store, messages = run.profile, run.store, run.messages
        resolution = resolution_of(cfg, profile)
        built = ensure_models(profile, cfg.model_dir, resolution)
        if built:
            messages.append(f"built models: {', '.join(built)} ({resolution} px)")
        if cfg.calibrate:
            profile = self._calibrate(run, cfg)
        closers: list[Callable[[], None]] = []
        kind = policy_entry(cfg.policy)  # HPA: replicas, no in-place growth, no CPU limit (as simulated)
        backend = LocalBackend(profile, LocalConfig(
            model_dir=cfg.model_dir, run_dir=cfg.run_dir, limit_mode=cfg.limit_mode, warmup=cfg.warmup,
            slo_ms=profile.slo_ms, server_args=cfg.server_args, router=cfg.router,
            in_place=kind.in_place, cpu_limited=kind.cpu_limited), store)
        try:
            backend.start_router()
            adopted = backend.adopt()
            if adopted:
                messages.append(f"adopted running servers: {', '.join(adopted)}")
            messages.append(f"cpu limit: {backend.limit_mode}")
            metrics = LoopMetrics()
            metrics_port = free_port()
            metrics.serve(metrics_port)
            closers.append(metrics.close)
            prom_url, prometheus = self._start_prometheus(cfg, store, messages, backend, metrics_port)
            if prometheus is not None:
                closers.insert(0, prometheus.stop)
                targets = prometheus.servers_file
                backend.watch_targets(lambda t: write_server_targets(targets, t))
        except BaseException:  # the runner never saw these: stop them here
            backend.stop()
            for close in closers:
                with contextlib.suppress(Exception):
                    close()
            raise
        store.update(metrics={"port": metrics_port, "url": f"http://127.0.0.1:{metrics_port}/metrics"})
        # Servers a killed adapter left have served for a while: their counters are real history.
        monitor = Monitor(backend.client.stats, prom_url, start_s=run.started_s - (HISTORY_S if adopted else 0),
                          rate_query=backend.router.rate_query, p99_query=backend.router.p99_query,
                          rate_window_s=cfg.control.rate_window_s, services=profile.service_names,
                          load_pending=bool(cfg.rates_rps) and not adopted)
        return Prepared(
            backend=backend, observe=monitor.observe, limit_mode=backend.limit_mode, initial_plan=backend.plan,
            observation=(f"prometheus {prom_url}, else the {cfg.router}'s counters" if prom_url
                         else f"the {cfg.router}'s counters"),
            metrics=metrics, closers=closers, drain_s=cfg.drain_s, apply_timeout_s=backend.config.ready_timeout_s,
            drive_load=(lambda: self._drive_load(cfg, profile, store, backend, None if adopted else monitor))
            if cfg.rates_rps else None,
            summary=lambda load: {**self._summary(cfg, load), **self._calibration_summary(run)},
        )

    @staticmethod
    def _start_prometheus(cfg: RunConfig, store: Any, messages: list[str], backend: LocalBackend,
                          metrics_port: int) -> tuple[str | None, PrometheusServer | None]:
        if cfg.prometheus and cfg.prometheus != "off":
            store.update(prometheus={"url": cfg.prometheus, "owned": False})
            return cfg.prometheus, None
        if cfg.prometheus == "off":
            messages.append("Prometheus off: observing through the dispatcher's counters")
            store.update(prometheus=None)
            return None, None
        if prometheus_binary() is None:
            messages.append("no prometheus binary: observing through the dispatcher's counters "
                            "(apt-get install prometheus)")
            store.update(prometheus=None)
            return None, None
        saved = store.get("prometheus") or {}
        if saved.get("owned") and pid_alive(saved.get("pid")):
            # A previous adapter's Prometheus keeps the history; stop it anyway, its config names old ports.
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(saved["pid"]), signal.SIGTERM)
        prometheus = PrometheusServer(cfg.run_dir, backend.metrics_target, f"127.0.0.1:{metrics_port}")
        try:
            url = prometheus.start()
        except (RuntimeError, OSError) as exc:
            messages.append(f"Prometheus did not start ({exc}): observing through the dispatcher")
            store.update(prometheus=None)
            return None, None
        store.update(prometheus={"url": url, "pid": prometheus.pid, "owned": True})
        return url, prometheus

    @staticmethod
    def _drive_load(cfg: RunConfig, profile: Profile, store: Any, backend: LocalBackend, monitor: Any) -> Any:
        """``monitor``: the run's, whose history starts with this load (None: adopted servers' counters are
        real history)."""
        from infadapter.observe.loadgen import drive_window, service_streams

        assert cfg.rates_rps is not None
        if monitor is not None:
            monitor.load_starts()
        streams = service_streams(backend.dispatcher_url, cfg.services_load, profile)
        return drive_window(f"{backend.dispatcher_url}/v1/models/resnet:predict", cfg.rates_rps, cfg.duration_s,
                            store, slo_ms=profile.slo_ms, resolution=resolution_of(cfg, profile),
                            out_path=cfg.run_dir / REQUESTS_FILE if cfg.requests_csv else None, seed=cfg.seed,
                            timeout_s=cfg.timeout_s, streams=streams)

    @staticmethod
    def _calibration_summary(run: AdapterRun) -> dict[str, Any]:
        c = run.calibration
        if c is None:
            return {}
        return {"calibration": {"variant": c.variant, "reference_ms": c.reference_ms, "measured_ms": c.measured_ms,
                                "slower_x": round(c.ratio, 3), "capacity_scale": c.factor}}

    @staticmethod
    def _summary(cfg: RunConfig, load: Any) -> dict[str, Any]:
        from infadapter.observe.loadgen import load_figures

        return {"router": cfg.router, **load_figures(load)}


# -- experiments -----------------------------------------------------------------------------------
# The local backend as the simulator models it (docs/adapt.md, "Simulator fidelity"): servers under
# a CFS quota, one request at a time on floor(cores) threads (service_model "cfs"), whose CPU time per
# request varies little (CV 0.2: at whole-core allocations the live latency's CV was 0.17-0.33, the
# larger values at 0.25 core come from the quota, which the model itself reproduces), and a monitor
# that sees every complete second at once: the newest seconds come from the router's exact counts
# (monitor.Monitor); with Prometheus's alone it saw them 1.5-2 s late (decisions' observed rates against
# the request logs: least error 0.05 req/s at no lag now, 1.39 req/s at 2 s before).
