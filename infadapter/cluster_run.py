"""Non-local runs: the same control loop applying plans to a Kubernetes cluster or a dry-run folder.

:class:`ClusterRun` is what ``cli.py adapt --backend kubernetes|dry-run`` does: build the backend
(:func:`infadapter.backends.kubernetes.make_backend` or :class:`~infadapter.backends.dryrun.DryRunBackend`),
pick what the loop observes, run :class:`~infadapter.loop.ControlLoop` until the duration, the end of a
replayed load, Ctrl-C or SIGTERM, and summarize. Nothing here starts a process: the cluster (or the
folder) holds the serving state, so a restarted adapter resumes from what the backend reads back.

What the loop observes, in this order:

- a **replayed observation** (:class:`ReplayedLoad`) when a load is given (``--window``/``--rate``):
  the loop sees the trace's per-second rates as if they were live traffic. It is labelled as a replay
  in the observation's source and warning, the state file, ``status`` and the log, because the plans it
  produces follow the trace, not what the cluster serves;
- else :class:`~infadapter.monitor.Monitor`: Prometheus when ``--prometheus`` is given, falling back to
  the dispatcher's ``/admin/stats`` (``--dispatcher-url``).

A failing observation never stops the adapter: :class:`GuardedObserver` plans on the last good one
and says so.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infadapter import control
from infadapter.control import ControlConfig
from infadapter.errors import BackendUnavailable, BadInput
from infadapter.loop import ControlLoop, LoopConfig
from infadapter.monitor import HISTORY_S, Observation
from infadapter.policies import DEFAULT_MIN_GAIN, DEFAULT_STABILIZATION
from infadapter.profile import Profile, load_profile
from infadapter.records import DecisionLog
from infadapter.state import DECISIONS_FILE, StateStore, pid_alive, read_state, state_path

log = logging.getLogger(__name__)

REPLAY_SOURCE = "replay"
CLUSTER_BACKENDS = ("kubernetes", "dry-run")


@dataclass(frozen=True)
class ClusterRunConfig:
    """One run of ``cli.py adapt`` on the kubernetes or dry-run backend (its flags)."""

    backend: str
    profile_path: Path
    run_dir: Path
    policy: str = "infadapter"
    duration_s: float | None = None  # None: until the replay ends, or until Ctrl-C/SIGTERM
    interval_s: float = ControlConfig.interval_s
    check_s: float = ControlConfig.check_s
    stabilization_intervals: int = DEFAULT_STABILIZATION
    min_gain: float = DEFAULT_MIN_GAIN  # see policies.Stabilized.min_gain
    alpha: float | None = None  # overrides the profile's cost weight
    forecaster: str = "auto"
    #: Per-second rates the loop observes instead of live traffic (None: observe live).
    replay_rps: tuple[float, ...] | None = None
    replay_label: str = ""
    history_stretch: int = 1  # the replay's --speedup (see LoopConfig.history_stretch)
    initial_forecast_rps: float | None = None  # default: control.initial_forecast
    history_before: tuple[float, ...] = ()  # counts before the replayed window (see ControlConfig)
    prometheus_url: str | None = None
    dispatcher_url: str | None = None
    admin_token: str = ""
    k8s_config: Path | None = None  # render config YAML (names, images, model store)
    namespace: str | None = None  # overrides the render config's namespace
    kubeconfig: str | None = None
    context: str | None = None
    ready_timeout_s: float = 600.0
    in_place: str = "auto"
    out_dir: Path | None = None  # dry-run folder
    metrics_port: int = 0  # serve the adapter's infadapter_* metrics on this port (0: off)
    metrics_host: str = "0.0.0.0"  # scraped from other hosts (the cluster's Prometheus)
    router: str | None = None  # "gateway": the plan's shares as HTTPRoute weights (None: the render config's)

    def __post_init__(self) -> None:
        if self.backend not in CLUSTER_BACKENDS:
            raise BadInput(f"--backend: expected kubernetes or dry-run here, got {self.backend!r}")
        if not self.interval_s > 0:
            raise BadInput(f"--interval: must be > 0 seconds, got {self.interval_s}")
        if not self.check_s > 0:
            raise BadInput(f"--check: must be > 0 seconds, got {self.check_s}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise BadInput(f"--duration: must be > 0 seconds, got {self.duration_s}")
        if not self.ready_timeout_s > 0:
            raise BadInput(f"--ready-timeout: must be > 0 seconds, got {self.ready_timeout_s}")
        if self.in_place not in ("auto", "never"):
            raise BadInput(f"--in-place: expected auto or never, got {self.in_place!r}")
        if self.backend == "dry-run" and self.out_dir is None:
            raise BadInput("--out: --backend dry-run writes its manifests to a folder; pass --out DIR")
        if self.replay_rps is not None and not self.replay_rps:
            raise BadInput("--window: the replayed load is empty; pick a longer window")
        if self.dispatcher_url and not self.dispatcher_url.startswith(("http://", "https://")):
            raise BadInput(f"--dispatcher-url: expected http://HOST:PORT, got {self.dispatcher_url!r}")
        if self.prometheus_url and not self.prometheus_url.startswith(("http://", "https://")):
            raise BadInput(f"--prometheus: expected http://HOST:PORT, got {self.prometheus_url!r}")
        if self.dispatcher_url and not self.admin_token:
            raise BadInput("--admin-token-file: --dispatcher-url needs the dispatcher's admin token; pass "
                           "--admin-token-file FILE or set INFADAPTER_ADMIN_TOKEN")
        if self.replay_rps is None and not (self.dispatcher_url or self.prometheus_url):
            if self.backend == "dry-run":
                raise BadInput("--window: dry-run observes no live traffic without a dispatcher; give a load to "
                               "replay (--window W [--scale S --speedup K] or --rate R --duration S), or "
                               "--dispatcher-url / --prometheus")
            raise BadInput("--dispatcher-url: the kubernetes backend needs something to observe: "
                           "--dispatcher-url URL, --prometheus URL, or a replayed load (--window/--rate)")

    @property
    def observation(self) -> str:
        """Where the loop's observations come from, in words (status and logs show it)."""
        if self.replay_rps is not None:
            return f"{REPLAY_SOURCE} of {self.replay_label or 'a load'} (not live traffic)"
        if self.prometheus_url:
            return f"prometheus {self.prometheus_url}" + (
                f", else dispatcher {self.dispatcher_url}" if self.dispatcher_url else "")
        return f"dispatcher {self.dispatcher_url}"


# -- observation sources ---------------------------------------------------------------------------
class ReplayedLoad:
    """Observes a per-second load as if it were live traffic, from ``start_s`` on (a replay, labelled).

    At ``now`` the history holds the complete seconds of the load since ``start_s`` (at most the last
    10 minutes), like :class:`~infadapter.monitor.Monitor`'s; the rate is the mean of the last
    ``rate_window_s`` of them. After the load ends the history keeps its last seconds and new seconds
    count as 0 req/s.
    """

    def __init__(self, rates_rps: Sequence[float], label: str, start_s: float, rate_window_s: int = 3) -> None:
        self.rates = tuple(float(x) for x in rates_rps)
        self.label = label
        self.start_s = start_s
        self.rate_window_s = rate_window_s
        self.warning = f"replayed observation of {label} (not live traffic)"

    def observe(self, now_s: float) -> Observation:
        done = max(math.floor(now_s - self.start_s), 0)
        first = max(done - HISTORY_S, 0)
        hist = tuple(self.rates[i] if i < len(self.rates) else 0.0 for i in range(first, done))
        recent = hist[-self.rate_window_s:]
        rate = sum(recent) / len(recent) if recent else 0.0
        return Observation(now_s=now_s, history_rps=hist, rate_rps=rate, p99_ms=None, source=REPLAY_SOURCE,
                           warning=self.warning)


class GuardedObserver:
    """Wraps an observe function: on failure, the last good observation (re-stamped) with a warning."""

    def __init__(self, observe: Callable[[float], Observation]) -> None:
        self._observe = observe
        self._last: Observation | None = None
        self._failing = False

    def __call__(self, now_s: float) -> Observation:
        try:
            obs = self._observe(now_s)
        except Exception as exc:
            what = f"observation failed ({exc})"
            if not self._failing:
                log.warning("%s; planning on the last good observation", what)
            self._failing = True
            last = self._last
            if last is None:
                return Observation(now_s, (), 0.0, None, "none", f"{what}; nothing observed yet")
            age = now_s - last.now_s
            return Observation(now_s, last.history_rps, last.rate_rps, last.p99_ms, f"stale {last.source}",
                               f"{what}; using the observation from {age:.0f} s ago")
        if self._failing:
            log.warning("observation works again (%s)", obs.source)
        self._failing = False
        self._last = obs
        return obs


def _no_dispatcher() -> Mapping[str, Any]:
    raise BackendUnavailable("no dispatcher to read counters from (pass --dispatcher-url)")


# -- the run ---------------------------------------------------------------------------------------
def render_config_for(k8s_config: Path | None, namespace: str | None, router: str | None = None) -> Any:
    """The render config of ``--k8s-config`` with ``--namespace`` applied, validated (BadInput naming the flag)."""
    from pydantic import ValidationError

    from infadapter.render import RenderConfig, load_render_config

    try:
        rc = load_render_config(k8s_config)
    except BadInput as exc:  # render's own flag is --config; here it is --k8s-config
        raise BadInput(str(exc).replace("--config:", "--k8s-config:", 1)) from None
    if namespace and namespace != rc.namespace:
        try:
            rc = RenderConfig.model_validate({**rc.model_dump(), "namespace": namespace})
        except ValidationError:
            raise BadInput(f"--namespace: {namespace!r} is not a Kubernetes name (lowercase letters, digits "
                           "and '-', starting and ending with a letter or digit)") from None
    if router and router != rc.router:
        rc = rc.model_copy(update={"router": router})
    return rc


def build_backend(cfg: ClusterRunConfig, profile: Profile) -> Any:
    """The kubernetes or dry-run backend the flags describe; BackendUnavailable if the cluster is away."""
    rc = render_config_for(cfg.k8s_config, cfg.namespace, cfg.router)
    if cfg.backend == "dry-run":
        from infadapter.backends.dryrun import DryRunBackend

        assert cfg.out_dir is not None
        return DryRunBackend(profile, cfg.out_dir, rc)
    from infadapter.backends.kubernetes import make_backend

    backend = make_backend(
        profile, kubeconfig=cfg.kubeconfig, context=cfg.context, namespace=rc.namespace,
        config_path=str(cfg.k8s_config) if cfg.k8s_config else None, dispatcher_url=cfg.dispatcher_url,
        admin_token=cfg.admin_token, ready_timeout_s=cfg.ready_timeout_s, in_place=cfg.in_place, config=rc,
    )
    if not backend.health():
        host = getattr(getattr(backend._api, "configuration", None), "host", "") or "the API server"
        backend.stop()
        raise BackendUnavailable(f"--kubeconfig: {host} does not answer /version; check --kubeconfig/--context "
                                 "and that the cluster runs")
    return backend


class CountingBackend:
    """Delegates to a backend and counts its applies: how many succeeded, failed, and whether the
    last one failed (so ``adapt`` can exit non-zero when no plan was ever applied)."""

    def __init__(self, backend: Any) -> None:
        self.inner = backend
        self.applied = 0
        self.failed = 0
        self.last_error = ""

    def apply(self, plan: Any) -> Any:
        try:
            result = self.inner.apply(plan)
        except Exception as exc:
            self.failed += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise
        if result.ok:
            self.applied += 1
            self.last_error = ""
        else:
            self.failed += 1
            self.last_error = result.error
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class ClusterRun:
    """One run; call :meth:`run` once (see the module doc)."""

    config: ClusterRunConfig
    on_update: Callable[[dict[str, Any]], None] | None = None
    clock: Callable[[], float] = time.time
    profile: Profile = field(init=False)
    backend: Any = field(default=None, init=False)
    loop: ControlLoop | None = field(default=None, init=False)
    store: StateStore | None = field(default=None, init=False)
    messages: list[str] = field(default_factory=list, init=False)
    metrics: Any = field(default=None, init=False)
    _cleaned: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.profile = load_profile(self.config.profile_path).with_overrides(alpha=self.config.alpha)

    def start(self) -> None:
        """Backend, observer, state file and loop; nothing is applied yet (:meth:`run` calls it if needed)."""
        from infadapter.forecast import make_forecaster
        from infadapter.policies import make_policy

        cfg = self.config
        other = ((read_state(state_path(cfg.run_dir)) or {}).get("adapter") or {})
        if pid_alive(other.get("pid")) and other.get("pid") != os.getpid():
            raise BadInput(f"--run-dir: an adapter (pid {other['pid']}) already runs on {cfg.run_dir}; "
                           "stop it or pick another --run-dir")
        forecaster = make_forecaster(cfg.forecaster)
        # Flags and the cluster are checked before anything is written.
        self.backend = build_backend(cfg, self.profile)
        if cfg.backend == "kubernetes":
            self._fit_cluster()
        policy = make_policy(cfg.policy, self.profile, cfg.stabilization_intervals, min_gain=cfg.min_gain)
        self.backend = CountingBackend(self.backend)
        try:
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInput(f"--run-dir: cannot create {cfg.run_dir} ({exc.strerror}); pass a writable folder") from None
        initial_plan = None
        st = self.backend.state()
        if st.plan is not None and st.plan.allocations:
            initial_plan = st.plan
            self.messages.append(f"resuming from the plan the backend holds: "
                                 f"{', '.join(f'{a.name} {a.cores:g} cores' for a in st.plan.allocations)}")
        started = self.clock()
        observe: Callable[[float], Observation]
        if cfg.replay_rps is not None:
            observe = ReplayedLoad(cfg.replay_rps, cfg.replay_label or "a load", started).observe
        else:
            from infadapter.monitor import Monitor

            stats: Callable[[], Mapping[str, Any]] = _no_dispatcher
            if cfg.dispatcher_url:
                from infadapter.serving.dispatcher import DispatcherClient

                stats = DispatcherClient(cfg.dispatcher_url, cfg.admin_token, timeout_s=5.0).stats
            # The dispatcher and Prometheus outlive the adapter: their last 10 minutes are real history.
            monitor = Monitor(stats, cfg.prometheus_url, start_s=started - HISTORY_S, clock=self.clock)
            observe = monitor.observe
        self.messages.insert(0, f"observing: {cfg.observation}")
        where = (f"namespace {self.backend.namespace}" if cfg.backend == "kubernetes"
                 else f"folder {cfg.out_dir}")
        self.messages.insert(0, f"backend {cfg.backend}: {where}")
        self.store = StateStore(state_path(cfg.run_dir))
        self.store.update(adapter={
            "pid": os.getpid(), "started_s": started, "policy": cfg.policy, "backend": cfg.backend,
            "run_dir": str(cfg.run_dir), "interval_s": cfg.interval_s, "profile": str(cfg.profile_path),
            "slo_ms": self.profile.slo_ms, "observation": cfg.observation,
            "replay": cfg.replay_rps is not None,
            "namespace": getattr(self.backend, "namespace", None),
            "out_dir": str(cfg.out_dir) if cfg.out_dir else None,
        }, messages=self.messages, stopped_s=None, limit_mode=f"{cfg.backend} backend")
        initial = control.initial_forecast(cfg.replay_rps, cfg.history_before, cfg.initial_forecast_rps,
                                           cfg.interval_s)
        metrics = None
        if cfg.metrics_port:
            from infadapter.loop import LoopMetrics

            metrics = LoopMetrics()
            try:
                metrics.serve(cfg.metrics_port, host=cfg.metrics_host)
            except OSError as exc:
                raise BadInput(f"--metrics-port: cannot listen on {cfg.metrics_port} ({exc.strerror}); "
                               "pick a free port or 0 to turn metrics off") from None
            self.messages.append(f"metrics: http://{cfg.metrics_host}:{cfg.metrics_port}/metrics")
        self.metrics = metrics
        self.loop = ControlLoop(
            self.profile, policy, forecaster, self.backend, GuardedObserver(observe),
            LoopConfig(interval_s=cfg.interval_s, check_s=cfg.check_s, initial_forecast_rps=initial,
                       history_before=cfg.history_before,
                       history_stretch=cfg.history_stretch),
            clock=self.clock,
            records=DecisionLog(cfg.run_dir / DECISIONS_FILE),
            on_snapshot=self._snapshot,
            policy_name=cfg.policy,
            initial_plan=initial_plan,
            metrics=metrics,
        )
        for m in self.messages:
            log.info("%s", m)

    def _fit_cluster(self) -> None:
        """Preflight the namespace, and size pods to the nodes: the largest pod is the profile's
        ``max_pod_cores``, else the render config's ``tfserving.max_pod_cores``, else the largest node's
        allocatable CPU; the solver then plans variants as replicas x cores per pod."""
        backend = self.backend
        errors, warnings = backend.preflight()
        if errors:
            backend.stop()
            more = f" (and {len(errors) - 1} more)" if errors[1:] else ""
            raise BackendUnavailable(f"preflight: {errors[0]}{more}")
        self.messages.extend(f"preflight: {w}" for w in warnings)
        limit = self.profile.max_pod_cores or backend.config.tfserving.max_pod_cores
        if limit:
            where = "profile" if self.profile.max_pod_cores else "--k8s-config tfserving.max_pod_cores"
            self.messages.append(f"pods: at most {limit:g} cores each ({where})")
        else:
            limit, note = backend.cluster_max_pod_cores()
            self.messages.append(f"pods: at most {limit:g} cores each (nodes: {note})" if limit else f"pods: {note}")
        if limit and limit != self.profile.max_pod_cores:
            self.profile = self.profile.with_overrides(max_pod_cores=limit)
            backend.profile = self.profile

    def _snapshot(self, snap: dict[str, Any]) -> None:
        snap["backend"] = self.config.backend
        snap["observation"] = self.config.observation
        snap["limit_mode"] = f"{self.config.backend} backend" + (" (replayed load)" if self.config.replay_rps else "")
        if self.store is not None:
            self.store.update(loop=snap, updated_s=time.time())
        if self.on_update is not None:
            with contextlib.suppress(Exception):
                self.on_update(snap)

    def run(self) -> dict[str, Any]:
        """Start, adapt until the end (duration, replay's end, Ctrl-C, SIGTERM), stop; the summary."""
        interrupted = False
        try:
            if self.loop is None:
                self.start()
            assert self.loop is not None
            duration = self.config.duration_s
            if self.config.replay_rps is not None:
                length = float(len(self.config.replay_rps))
                duration = length if duration is None else min(duration, length)
            worker = threading.Thread(target=self._run_loop, args=(duration,), name="control-loop", daemon=True)
            worker.start()
            interrupted = self._wait(worker)
            self.loop.stop()
            worker.join(timeout=max(self.config.interval_s, 30.0))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self.cleanup()
        return self.summary(interrupted)

    def _run_loop(self, duration: float | None) -> None:
        assert self.loop is not None
        try:
            self.loop.run(duration)
        except Exception:
            log.exception("control loop failed; stopping")
        finally:
            self.loop.stop_event.set()

    def _wait(self, worker: threading.Thread) -> bool:
        """Wait for the loop's end; SIGTERM (a pod's stop) ends it cleanly. True when interrupted."""
        assert self.loop is not None
        stop = self.loop.stop_event
        signalled = threading.Event()
        old = None
        if threading.current_thread() is threading.main_thread():
            def on_term(*_: Any) -> None:
                signalled.set()
                stop.set()

            old = signal.signal(signal.SIGTERM, on_term)
        try:
            while worker.is_alive() and not stop.is_set():
                stop.wait(0.5)
        except KeyboardInterrupt:
            return True
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)
        return signalled.is_set()

    def cleanup(self) -> None:
        """Leave the cluster (or folder) as it is for the next adapter; close connections; idempotent."""
        if self._cleaned:
            return
        self._cleaned = True
        if self.loop is not None:
            self.loop.stop()
        if self.backend is not None:
            with contextlib.suppress(Exception):
                self.backend.stop()
        if self.metrics is not None:
            with contextlib.suppress(Exception):
                self.metrics.close()
        if self.store is not None:
            with contextlib.suppress(Exception):
                adapter = dict(self.store.get("adapter") or {})
                adapter["pid"] = None
                self.store.update(adapter=adapter, stopped_s=time.time())

    def summary(self, interrupted: bool) -> dict[str, Any]:
        cfg = self.config
        loop = self.loop
        totals = loop.totals.as_dict() if loop else {}
        out: dict[str, Any] = {
            "policy": cfg.policy,
            "backend": cfg.backend,
            "observation": cfg.observation,
            "replay": cfg.replay_rps is not None,
            "interrupted": interrupted,
            "mean_cores": totals.get("mean_cores"),
            "mean_accuracy": totals.get("mean_accuracy"),
            "transitions": totals.get("transitions"),
            "decisions": totals.get("decisions"),
            "failed_applies": totals.get("failed_applies"),
            "seconds": totals.get("seconds"),
            "plan": loop.serving.as_dict() if loop and loop.serving is not None else None,
            "run_dir": str(cfg.run_dir),
            "limit_mode": cfg.backend,
        }
        if cfg.backend == "dry-run" and cfg.out_dir is not None:
            out["out_dir"] = str(cfg.out_dir)
            out["generations"] = sorted(p.name for p in cfg.out_dir.glob("gen-*") if p.is_dir())
        if cfg.backend == "kubernetes" and self.backend is not None:
            out["namespace"] = self.backend.namespace
        if isinstance(self.backend, CountingBackend):
            out["applies"] = self.backend.applied
            out["backend_failed_applies"] = self.backend.failed
            out["last_apply_error"] = self.backend.last_error
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.update(summary=out)
        return out
