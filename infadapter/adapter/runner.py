"""The one adapter runner: what ``cli.py adapt`` does on every backend.

:class:`AdapterRun` owns the lifecycle that every backend shares: the check that no other adapter
runs on the run folder, the policy and the forecaster (flags are checked before anything is written),
the state file, the control loop in a worker thread, Ctrl-C and SIGTERM, the cleanup on every exit
path, and one summary with the same keys everywhere. What differs per backend is one preparation
step, found in :data:`infadapter.backends.BACKENDS` (``setup``): it builds the backend and says what
the loop observes, where it starts from, and what else runs beside it (the local backend's servers,
dispatcher, Prometheus and load generator; the cluster backends' replayed or remote observation).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from infadapter.adapter.loop import ControlLoop, LoopConfig, LoopMetrics
from infadapter.adapter.records import DecisionLog
from infadapter.adapter.runstate import AdapterInfo
from infadapter.adapter.state import DECISIONS_FILE, StateStore, read_state, state_path
from infadapter.backends.base import Backend
from infadapter.core import control
from infadapter.core.control import ControlConfig
from infadapter.core.plan import Plan
from infadapter.core.policies import (
    DEFAULT_MIN_GAIN,
    DEFAULT_STABILIZATION,
    SPLIT_POLICIES,
    live_entry,
    split_budget,
)
from infadapter.core.profile import Profile, load_profile
from infadapter.errors import BadInput
from infadapter.observe.monitor import Observation
from infadapter.processes import pid_alive

log = logging.getLogger(__name__)

#: When a run ends, the control loop gets at least this long to finish its decision (more for a backend whose
#: applies wait for pods: :attr:`Prepared.apply_timeout_s`).
STOP_GRACE_S = 30.0


@dataclass(frozen=True)
class ServiceLoad:
    """One service's replayed load in a run of several services (its profile's window, the run's scale and
    speedup): what the load generator sends it (local) or the loop observes of it (dry-run)."""

    name: str
    #: Per-second rates of its window, scaled and compressed.
    rates_rps: tuple[float, ...]
    #: The last ``HISTORY_S`` trace seconds before its window: what an adapter already running had observed.
    history_before: tuple[float, ...] = ()
    #: Its window in words (status, the summary).
    label: str = ""


def total_rates(loads: tuple[ServiceLoad, ...]) -> tuple[float, ...]:
    """The services' per-second rates added up (the run's length is the longest window's)."""
    n = max((len(s.rates_rps) for s in loads), default=0)
    return tuple(sum(s.rates_rps[i] for s in loads if i < len(s.rates_rps)) for i in range(n))


@dataclass(frozen=True, kw_only=True)
class AdapterConfig:
    """The flags every backend shares (the control rules, the policy, the load); see the subclasses."""

    backend: str = "local"
    profile_path: Path
    run_dir: Path
    policy: str = "infadapter"
    duration_s: float | None = None  # None: until the load ends, or until Ctrl-C/SIGTERM without one
    #: The control rules (their flags: infadapter.commands.options.CONTROL_FLAGS); composed, not re-declared.
    #: ``initial_forecast_rps`` 0: :func:`infadapter.core.control.initial_forecast` from the load.
    control: ControlConfig = field(default_factory=ControlConfig)
    stabilization_intervals: int = DEFAULT_STABILIZATION
    min_gain: float = DEFAULT_MIN_GAIN  # see policies.Stabilized.min_gain
    alpha: float | None = None  # overrides the profile's cost weight
    budget: float | None = None  # overrides the profile's core budget
    forecaster: str = "auto"
    #: Per-second load: the local backend drives it through its router; kubernetes and dry-run observe
    #: it instead of live traffic (a replay, labelled so).
    rates_rps: tuple[float, ...] | None = None
    load_label: str = ""
    rates_before: tuple[float, ...] = ()  # the day before the window, for warm VPA (policies.Context)
    #: Several services: each one's load (``rates_rps`` is then their sum); () for one service.
    services_load: tuple[ServiceLoad, ...] = ()

    def __post_init__(self) -> None:
        live_entry(self.policy)  # a simulator-only policy (oracle) is refused before anything starts
        if self.duration_s is not None and not self.duration_s > 0:
            raise BadInput(f"--duration: must be > 0 seconds, got {self.duration_s}")
        if self.rates_rps is not None and not self.rates_rps:
            raise BadInput("--window: the load is empty; pick a longer window")

    def tuned(self, profile: Profile) -> Profile:
        """``profile`` with this run's --alpha and --budget applied (the live run and its simulation alike)."""
        return profile.tuned(alpha=self.alpha, budget=self.budget)

    def loop_config(self) -> LoopConfig:
        """The control rules of this run (the simulator's ``experiment.simulate_same`` uses the same)."""
        ctl = self.control
        if not ctl.initial_forecast_rps:
            ctl = replace(ctl, initial_forecast_rps=control.initial_forecast(self.rates_rps, ctl.history_before,
                                                                            None, ctl.interval_s))
        return LoopConfig(control=ctl, rates_before=self.rates_before)

    def service_controls(self) -> dict[str, ControlConfig]:
        """Each service's control rules: the run's, with its own window's history before and first-decision
        floor (as each service's simulation has them)."""
        base = self.loop_config().control
        return {s.name: replace(base, history_before=s.history_before,
                                initial_forecast_rps=self.control.initial_forecast_rps or control.initial_forecast(
                                    s.rates_rps, s.history_before, None, base.interval_s))
                for s in self.services_load}


@dataclass
class Prepared:
    """What a backend's preparation hands the runner."""

    backend: Backend
    observe: Callable[[float], Observation]
    observation: str  # where observations come from, in words (status, logs, summary)
    limit_mode: str  # how CPU limits are enforced, in words
    initial_plan: Plan | None = None
    metrics: LoopMetrics | None = None
    #: Local: drives the load through the router in the main thread and returns its summary; the run
    #: ends with it. None: the run lasts ``duration_s`` (or the replayed load's length).
    drive_load: Callable[[], Any] | None = None
    drain_s: float = 0.0  # after a driven load, keep adapting this long so in-flight requests finish
    #: The longest one apply may take (the backend's readiness timeout). When the run ends, a decision under
    #: way gets this long (twice: a growth in place, then the plan) to finish, so that the summary's plan is
    #: what the backend serves, not the one before an apply that went on after the summary.
    apply_timeout_s: float = 0.0
    #: Closed after the backend stops, in order (Prometheus, the metrics endpoint, ...).
    closers: list[Callable[[], None]] = field(default_factory=list)
    adapter_info: Mapping[str, Any] = field(default_factory=dict)  # extra AdapterInfo fields
    summary: Callable[[Any], dict[str, Any]] | None = None  # extra summary keys, given the load summary
    release: bool = True  # on exit, mark the adapter gone (local) or only its pid (cluster: resume later)


class BackendSetup(Protocol):
    """A backend's preparation step (one per entry of :data:`infadapter.backends.BACKENDS`)."""

    #: State-file keys a restarted adapter takes over from the previous one (e.g. its servers).
    keep_state: tuple[str, ...]

    def prepare(self, run: AdapterRun) -> Prepared:
        """Build and connect the backend; nothing applied yet. BadInput/BackendUnavailable on bad flags."""
        ...


def running_adapter(run_dir: Path) -> dict[str, Any] | None:
    """The adapter section of the run's state when its process is alive, else None."""
    st = read_state(state_path(run_dir))
    adapter = (st or {}).get("adapter") or {}
    return adapter if pid_alive(adapter.get("pid")) else None


@dataclass
class AdapterRun:
    """One adapter run on any backend; call :meth:`run` once (or :meth:`start` first; see the module doc)."""

    config: AdapterConfig
    #: The backend's preparation step (:func:`infadapter.backends.backend_setup`): the caller picks it from
    #: the registry, so the runner never imports the registry that names the runner's users.
    setup: BackendSetup
    on_update: Callable[[dict[str, Any]], None] | None = None
    clock: Callable[[], float] = time.time
    profile: Profile = field(init=False)
    store: StateStore | None = field(default=None, init=False)
    prepared: Prepared | None = field(default=None, init=False)
    loop: ControlLoop | None = field(default=None, init=False)
    messages: list[str] = field(default_factory=list, init=False)
    started_s: float = field(default=0.0, init=False)
    #: The backend's start-up calibration (a ``Calibration`` with ``factor``), when it ran one; a backend
    #: whose machine is slower than the profile's replaces ``profile`` by the scaled one before the loop starts.
    calibration: Any = field(default=None, init=False)
    _cleaned: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.profile = self.config.tuned(load_profile(self.config.profile_path))
        if self.profile.services:
            self._check_services()

    def _check_services(self) -> None:
        """What a run of several services needs (one-line BadInput naming the flag otherwise)."""
        cfg, names = self.config, self.profile.service_names
        if cfg.policy != "infadapter" and cfg.policy not in SPLIT_POLICIES:
            raise BadInput(f"--policy: {cfg.profile_path} has services ({', '.join(names)}); adapt runs them with "
                           f"infadapter (the joint solve) or a static split ({', '.join(SPLIT_POLICIES)}), got "
                           f"{cfg.policy}; the per-service baselines run in simulate")
        if {s.name for s in cfg.services_load} != set(names):
            raise BadInput(f"--window: {cfg.profile_path} has services ({', '.join(names)}); each replays its own "
                           "window: give --scale/--speedup (not --window or --rate)")

    def split_budgets(self) -> dict[str, float] | None:
        """A static split's share of the budget per service (by each window's mean or peak load, as
        ``simulate`` splits it); None for the joint solve."""
        reduce = SPLIT_POLICIES.get(self.config.policy)
        if reduce is None or not self.profile.services:
            return None
        return split_budget(self.profile, {s.name: float(reduce(s.rates_rps)) for s in self.config.services_load})

    @property
    def replayed(self) -> bool:
        """True when the loop observes the given load instead of traffic it drives (no backend name asked: a
        backend that drives the load says so with ``Prepared.drive_load``)."""
        return self.config.rates_rps is not None and self.prepared is not None and self.prepared.drive_load is None

    @property
    def backend(self) -> Backend | None:
        return self.prepared.backend if self.prepared else None

    # -- bring-up ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Checks, backend (its preparation step), state file and loop; nothing is applied yet."""
        from infadapter.core.forecast import make_forecaster
        from infadapter.core.policies import joint_policy, make_policy

        cfg = self.config
        setup = self.setup
        other = running_adapter(cfg.run_dir)
        if other is not None and other.get("pid") != os.getpid():
            raise BadInput(f"--run-dir: an adapter (pid {other['pid']}) already runs on {cfg.run_dir}; "
                           "stop it or pick another --run-dir")
        if self.profile.services:  # the simulator's joint policy (or its static split)
            policy = joint_policy(self.profile, cfg.min_gain, cfg.policy, self.split_budgets())
        else:
            policy = make_policy(cfg.policy, self.profile, cfg.stabilization_intervals, min_gain=cfg.min_gain,
                                 backend=cfg.backend)
        forecaster = make_forecaster(cfg.forecaster)
        service_forecasters = {n: make_forecaster(cfg.forecaster) for n in self.profile.service_names}
        try:
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInput(f"--run-dir: cannot create {cfg.run_dir} ({exc.strerror or exc}); "
                           "pass a writable folder") from None
        previous = read_state(state_path(cfg.run_dir)) or {}
        self.store = StateStore(state_path(cfg.run_dir),
                                {k: previous[k] for k in setup.keep_state if k in previous})
        self.started_s = self.clock()
        self.prepared = prep = setup.prepare(self)
        atexit.register(self.cleanup)  # a Python exit past run()'s finally still stops what runs
        info = AdapterInfo(pid=os.getpid(), started_s=self.started_s, policy=cfg.policy, backend=cfg.backend,
                           run_dir=str(cfg.run_dir), interval_s=cfg.control.interval_s, profile=str(cfg.profile_path),
                           slo_ms=self.profile.slo_ms, observation=prep.observation,
                           replay=self.replayed)
        self.messages.insert(0, f"observing: {prep.observation}")
        self.store.update(adapter={**info.as_dict(), **prep.adapter_info}, messages=self.messages, stopped_s=None,
                          limit_mode=prep.limit_mode)
        self.loop = ControlLoop(
            self.profile, policy, forecaster, prep.backend, prep.observe, cfg.loop_config(),
            clock=self.clock,
            records=DecisionLog(cfg.run_dir / DECISIONS_FILE, context=self.replay_context()),
            metrics=prep.metrics,
            on_snapshot=self._snapshot,
            policy_name=cfg.policy,
            initial_plan=prep.initial_plan,
            service_forecasters=service_forecasters,
            service_controls=cfg.service_controls(),
        )
        for m in self.messages:
            log.info("%s", m)

    def replay_context(self) -> dict[str, Any]:
        """What ``explain --replay`` needs besides each decision's own inputs: the profile (path and
        hash), its tuning, the policy and its wrappers' settings (stored in every record's ``replay``)."""
        import hashlib

        cfg = self.config
        try:
            digest = hashlib.sha256(Path(cfg.profile_path).read_bytes()).hexdigest()
        except OSError:
            digest = ""
        return {"profile": str(Path(cfg.profile_path).resolve()), "profile_sha256": digest,
                "alpha": self.profile.alpha, "budget": self.profile.budget_cores, "policy": cfg.policy,
                "capacity_scale": self.calibration.factor if self.calibration is not None else 1.0,
                "stabilization_intervals": 1 if self.profile.services else cfg.stabilization_intervals,
                "min_gain": cfg.min_gain, **({"split_budgets": b} if (b := self.split_budgets()) else {}),
                # what the backend sized the pods to (the cluster's largest node), not only the file's
                **({"max_pod_cores": m} if (m := self.profile.max_pod_cores) is not None else {})}

    def _snapshot(self, snap: dict[str, Any]) -> None:
        assert self.prepared is not None and self.store is not None
        snap["backend"] = self.config.backend
        snap["observation"] = self.prepared.observation
        snap["limit_mode"] = self.prepared.limit_mode
        self.store.update(loop=snap, updated_s=time.time())
        if self.on_update is not None:
            with contextlib.suppress(Exception):
                self.on_update(snap)

    # -- running -----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Start (unless started), adapt until the load, the duration, Ctrl-C or SIGTERM ends; stop; summary."""
        cfg = self.config
        load_summary = None
        interrupted = False
        try:
            if self.loop is None:
                self.start()
            assert self.loop is not None and self.prepared is not None
            self.loop.tick()  # the first decision brings the servers up before any load arrives
            duration = None
            if self.prepared.drive_load is None:
                duration = cfg.duration_s
                if cfg.rates_rps is not None:  # a replayed load ends the run with it
                    length = float(len(cfg.rates_rps))
                    duration = length if duration is None else min(duration, length)
            worker = threading.Thread(target=self._run_loop, args=(duration,), name="control-loop", daemon=True)
            worker.start()
            if self.prepared.drive_load is not None:
                load_summary = self.prepared.drive_load()
                interrupted = bool(getattr(load_summary, "interrupted", False))
                if not interrupted:
                    self.loop.stop_event.wait(self.prepared.drain_s)
            else:
                interrupted = self._wait(worker)
            self.loop.stop()
            interval = cfg.control.interval_s
            bound = max(interval, STOP_GRACE_S, 2 * self.prepared.apply_timeout_s + interval)
            worker.join(timeout=bound)
            if worker.is_alive():
                log.warning("the control loop did not stop within %.0f s (an apply under way): the summary's plan "
                            "is the last one the loop recorded", bound)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self.cleanup()
        return self.summary(load_summary, interrupted)

    def _services_summary(self, totals: Mapping[str, Any], load: Any) -> list[dict[str, Any]]:
        """Each service's figures: its requests (judged at its own SLO) and the accuracy they were served at when a
        load was driven, else None and the loop's traffic-weighted estimate; its time-averaged cores."""
        by_load = getattr(load, "by_service", None) or {}
        by_loop = {s["name"]: s for s in totals.get("services", [])}
        out = []
        for name in self.profile.service_names:
            sent = by_load.get(name, {})
            own = by_loop.get(name, {})
            exact = self.profile.accuracy_of_counts(sent.get("by_variant"))
            out.append({"name": name, "requests": sent.get("requests"), "ok": sent.get("ok"),
                        "slo_violation_rate": sent.get("slo_violation_rate"), "mean_cores": own.get("mean_cores", 0.0),
                        "mean_accuracy": round(exact, 5) if exact is not None else own.get("mean_accuracy", 0.0),
                        "slo_ms": self.profile.service(name).slo_ms,
                        **({"p99_ms": sent.get("p99_ms"), "by_variant": sent.get("by_variant", {})} if sent else {})})
        return out

    def _run_loop(self, duration: float | None) -> None:
        assert self.loop is not None
        try:
            self.loop.run(duration)
        except Exception:
            log.exception("control loop failed; stopping")
        finally:
            self.loop.stop_event.set()

    def _wait(self, worker: threading.Thread) -> bool:
        """Wait for the loop's end; SIGTERM (a pod's or systemd's stop) ends it cleanly. True when interrupted."""
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
        """Stop everything this run started (what the backend keeps for the next adapter stays); idempotent."""
        if self._cleaned:
            return
        self._cleaned = True
        # Ctrl-C during cleanup must not leave servers behind: ignore it until done.
        old = None
        if threading.current_thread() is threading.main_thread():
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if self.loop is not None:
                self.loop.stop()
            prep = self.prepared
            for close in ([prep.backend.stop, *prep.closers] if prep else []):
                try:
                    close()
                except Exception as exc:  # one failing close must not leave the others running
                    log.warning("cleanup: %s", exc)
            if self.store is not None:
                with contextlib.suppress(Exception):
                    if prep is None or prep.release:
                        self.store.update(adapter=None, prometheus=None, stopped_s=time.time())
                    else:
                        adapter = dict(self.store.get("adapter") or {})
                        adapter["pid"] = None
                        self.store.update(adapter=adapter, stopped_s=time.time())
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)

    def summary(self, load: Any, interrupted: bool) -> dict[str, Any]:
        """The run's figures, the same keys on every backend (plus the preparation's own)."""
        cfg = self.config
        loop, prep = self.loop, self.prepared
        totals = loop.totals.as_dict() if loop else {}
        out: dict[str, Any] = {
            "policy": cfg.policy,
            "backend": cfg.backend,
            "observation": prep.observation if prep else "",
            "replay": self.replayed,
            "interrupted": interrupted,
            **{k: totals.get(k) for k in ("mean_cores", "mean_accuracy", "transitions", "decisions", "applies",
                                          "failed_applies", "crashes", "seconds")},
            "last_apply_error": loop.last_apply_error if loop else "",
            # Stretches when the backend could not be read and the loop held the plan (adapter/outage.py).
            "backend_outages": loop.outages.as_list(self.clock()) if loop else [],
            "plan": loop.serving.as_dict() if loop and loop.serving is not None else None,
            "limit_mode": prep.limit_mode if prep else "",
            "run_dir": str(cfg.run_dir),
        }
        if prep is not None and prep.summary is not None:
            out.update(prep.summary(load))
        # Where the run sent the requests, their own count by variant gives the accuracy exactly; otherwise the
        # loop's estimate (its plans weighted by the traffic it observed, Totals).
        exact = self.profile.accuracy_of_counts(out.get("by_variant"))
        out["accuracy_from"] = "requests" if exact is not None else "observed traffic"
        if exact is not None:
            out["mean_accuracy"] = round(exact, 5)
        if self.profile.services:
            out["services"] = self._services_summary(totals, load)
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.update(summary=out)
        return out
