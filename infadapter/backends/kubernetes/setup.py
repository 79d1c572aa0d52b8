"""The kubernetes and dry-run backends' preparation step for the one runner (:mod:`infadapter.adapter.runner`).

:class:`ClusterSetup` builds the backend (:func:`infadapter.backends.kubernetes.backend.make_backend` or
:class:`~infadapter.backends.dryrun.backend.DryRunBackend`), checks the cluster (health, preflight, pod sizes),
picks what the loop observes and where it resumes from. Nothing here starts a process: the cluster (or
the folder) holds the serving state, so a restarted adapter resumes from what the backend reads back.

What the loop observes, in this order:

- with ``--traffic live`` and a load, the dispatcher's counters: the in-cluster dispatcher is applied
  (:mod:`infadapter.backends.kubernetes.live`), the load's requests are sent to its Service from this machine
  (the runner drives them, as on the local backend) and the loop observes what it served;
- a **replayed observation** (:class:`ReplayedLoad`) when a load is given (``--window``/``--rate``):
  the loop sees the trace's per-second rates as if they were live traffic. It is labelled as a replay
  in the observation's source and warning, the state file, ``status`` and the log, because the plans it
  produces follow the trace, not what the cluster serves;
- else :class:`~infadapter.observe.monitor.Monitor`: Prometheus when ``--prometheus`` is given, falling back to
  the dispatcher's ``/admin/stats`` (``--dispatcher-url``).

A failing observation never stops the adapter: :class:`GuardedObserver` plans on the last good one
and says so.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infadapter import paths
from infadapter.adapter.runner import AdapterConfig, AdapterRun, Prepared
from infadapter.core.control import HISTORY_S
from infadapter.core.profile import Profile
from infadapter.errors import BackendUnavailable, BadInput
from infadapter.observe.monitor import Observation
from infadapter.observe.requestlog import REQUESTS_FILE

log = logging.getLogger(__name__)

REPLAY_SOURCE = "replay"
TRAFFIC = ("replay", "live")
#: After a live load, keep adapting this long so in-flight requests finish (the local backend's default).
LIVE_DRAIN_S = 3.0
CLUSTER_BACKENDS = ("kubernetes", "dry-run")
#: How long the restarted VPA recommender has to write its warm target: 2.5 of upstream's 1-min loops (its
#: first loop runs one interval after it starts).
WARM_TARGET_WAIT_S = 150.0


@dataclass(frozen=True, kw_only=True)
class ClusterRunConfig(AdapterConfig):
    """A run on the kubernetes or dry-run backend: the shared flags plus the cluster's (its flags)."""

    backend: str = "kubernetes"
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
    #: replay: the loop observes the load's rates; live: the load's requests go to the in-cluster dispatcher
    #: (:mod:`infadapter.backends.kubernetes.live`) and the loop observes its counters.
    traffic: str = "replay"
    #: vpa-upstream: the command that restarts the cluster's VPA recommender after its history checkpoint is written.
    restart_recommender: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in CLUSTER_BACKENDS:
            raise BadInput(f"--backend: expected kubernetes or dry-run here, got {self.backend!r}")
        super().__post_init__()
        if not self.ready_timeout_s > 0:
            raise BadInput(f"--ready-timeout: must be > 0 seconds, got {self.ready_timeout_s}")
        if self.in_place not in ("auto", "never"):
            raise BadInput(f"--in-place: expected auto or never, got {self.in_place!r}")
        if self.backend == "dry-run" and self.out_dir is None:
            raise BadInput("--out: --backend dry-run writes its manifests to a folder; pass --out DIR")
        if self.traffic not in TRAFFIC:
            raise BadInput(f"--traffic: expected replay or live, got {self.traffic!r}")
        if self.traffic == "live" and (self.backend != "kubernetes" or self.rates_rps is None):
            raise BadInput("--traffic live: sends a load's requests through the cluster's dispatcher; give --backend "
                           "kubernetes and a load (--window W [--scale S --speedup K] or --rate R --duration S)")
        if self.dispatcher_url and not self.dispatcher_url.startswith(("http://", "https://")):
            raise BadInput(f"--dispatcher-url: expected http://HOST:PORT, got {self.dispatcher_url!r}")
        if self.prometheus_url and not self.prometheus_url.startswith(("http://", "https://")):
            raise BadInput(f"--prometheus: expected http://HOST:PORT, got {self.prometheus_url!r}")
        if self.dispatcher_url and not self.admin_token:
            raise BadInput("--admin-token-file: --dispatcher-url needs the dispatcher's admin token; pass "
                           "--admin-token-file FILE or set INFADAPTER_ADMIN_TOKEN")
        if self.rates_rps is None and not (self.dispatcher_url or self.prometheus_url):
            if self.backend == "dry-run":
                raise BadInput("--window: dry-run observes no live traffic without a dispatcher; give a load to "
                               "replay (--window W [--scale S --speedup K] or --rate R --duration S), or "
                               "--dispatcher-url / --prometheus")
            raise BadInput("--dispatcher-url: the kubernetes backend needs something to observe: "
                           "--dispatcher-url URL, --prometheus URL, or a replayed load (--window/--rate)")

    @classmethod
    def from_flags(cls, shared: Mapping[str, Any], *, admin_token_file: Path | None = None,
                   **own: Any) -> ClusterRunConfig:
        """The flags every backend shares (``AdapterConfig``'s fields plus ``run_dir``, ``profile_path``,
        ``prometheus``, ``router``; None: this backend's default) and this backend's own
        (:mod:`infadapter.backends.kubernetes.options`, :mod:`infadapter.backends.dryrun.options`)."""
        fields = dict(shared)
        backend, router, prometheus = fields["backend"], fields.pop("router", None), fields.pop("prometheus", None)
        if router == "haproxy":
            raise BadInput(f"--router haproxy: only with --backend local, not with --backend {backend}")
        out_dir = own.get("out_dir")
        fields["run_dir"] = fields.get("run_dir") or (out_dir if out_dir is not None else paths.RUNS / backend)
        fields["profile_path"] = fields.get("profile_path") or paths.PAPER_PROFILE
        dispatcher_url = own.pop("dispatcher_url", None) or None
        return cls(**fields, **own, prometheus_url=None if prometheus in (None, "", "off") else prometheus,
                   dispatcher_url=dispatcher_url, admin_token=admin_token(admin_token_file) if dispatcher_url else "",
                   router="gateway" if router == "gateway" else None)

    @property
    def observation(self) -> str:
        """Where the loop's observations come from, in words (status and logs show it)."""
        if self.traffic == "live":
            return live_observation(self.dispatcher_url)
        if self.rates_rps is not None:
            return f"{REPLAY_SOURCE} of {self.load_label or 'a load'} (not live traffic)"
        if self.prometheus_url:
            return f"prometheus {self.prometheus_url}" + (
                f", else dispatcher {self.dispatcher_url}" if self.dispatcher_url else "")
        return f"dispatcher {self.dispatcher_url}"


def live_observation(url: str | None) -> str:
    """``--traffic live``'s observation, in words."""
    return f"the dispatcher's counters{f' at {url}' if url else ''} (live traffic from this machine)"


def admin_token(token_file: Path | None) -> str:
    """The dispatcher's admin token: ``--admin-token-file``'s content, else env INFADAPTER_ADMIN_TOKEN."""
    if token_file is None:
        return os.environ.get("INFADAPTER_ADMIN_TOKEN", "").strip()
    try:
        return token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise BadInput(f"--admin-token-file: cannot read {token_file} ({exc.strerror})") from None


# -- observation sources ---------------------------------------------------------------------------
class ReplayedLoad:
    """Observes a per-second load as if it were live traffic, from ``start_s`` on (a replay, labelled).

    At ``now`` the history holds the complete seconds of the load since ``start_s`` (at most the last
    10 minutes), like :class:`~infadapter.observe.monitor.Monitor`'s: counts only; the loop computes the
    rate from them (:func:`infadapter.core.control.seen`). After the load ends the history keeps its last
    seconds and new seconds count as 0 req/s.
    """

    def __init__(self, rates_rps: Sequence[float], label: str, start_s: float,
                 by_service: Mapping[str, Sequence[float]] | None = None) -> None:
        self.rates = tuple(float(x) for x in rates_rps)
        self.label = label
        self.start_s = start_s
        self.warning = f"replayed observation of {label} (not live traffic)"
        #: Several services: each one's load, observed as its own counts (``rates_rps`` is their sum).
        self.by_service = {n: tuple(float(x) for x in r) for n, r in (by_service or {}).items()}

    def observe(self, now_s: float) -> Observation:
        done = max(math.floor(now_s - self.start_s), 0)
        first = max(done - HISTORY_S, 0)

        def seen(rates: tuple[float, ...]) -> tuple[float, ...]:
            return tuple(rates[i] if i < len(rates) else 0.0 for i in range(first, done))

        return Observation(now_s=now_s, history_rps=seen(self.rates), p99_ms=None, source=REPLAY_SOURCE,
                           warning=self.warning, history_by_service={n: seen(r) for n, r in self.by_service.items()})


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
                return Observation(now_s, (), None, "none", f"{what}; nothing observed yet")
            age = now_s - last.now_s
            return Observation(now_s, last.history_rps, last.p99_ms, f"stale {last.source}",
                               f"{what}; using the observation from {age:.0f} s ago",
                               history_by_service=last.history_by_service)
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


def pod_rules(policy: str, profile: Profile) -> Any:
    """How the policy's cores become pods (:class:`infadapter.render.PodRules`), from its registry entry, as
    :class:`~infadapter.backends.local.setup.LocalSetup` honours it: HPA's changes are replicas of its pod size,
    never in place; a policy that is not ``cpu_limited`` gets a CPU request and no CPU limit."""
    from infadapter.core.policies import SPLIT_POLICIES, entry, make_policy
    from infadapter.render import PodRules

    kind = entry(policy)
    built = make_policy("infadapter" if policy in SPLIT_POLICIES else policy, profile, 1,  # a split's adapters
                        backend="kubernetes")
    return PodRules(in_place=kind.in_place, cpu_limited=kind.cpu_limited, pod_cores=kind.pod_cores(built),
                    autoscaler=upstream_autoscaler(built, profile) if kind.upstream else None)


def upstream_autoscaler(policy: Any, profile: Profile) -> Any:
    """The HPA or VPA object's settings for an upstream policy, from the simulated model it stands for (the same
    pod size, replica range, utilization target and CPU range as ``hpa:``/``vpa-updater:``)."""
    from infadapter.core.policies import Hpa, unwrap
    from infadapter.render import UpstreamAutoscaler

    up = unwrap(policy)
    model = unwrap(up.model)
    if isinstance(model, Hpa):
        top = max(1, math.floor(profile.budget_cores / model.pod_cores + 1e-9))
        return UpstreamAutoscaler("hpa", up.variant, pod_cores=model.pod_cores, max_replicas=top,
                                  target_utilization=model.target_utilization)
    cfg = model.config
    return UpstreamAutoscaler("vpa", up.variant, min_cores=cfg.min_cores or profile.min_cores,
                              max_cores=cfg.max_cores or profile.budget_cores)


def build_backend(cfg: ClusterRunConfig, profile: Profile) -> Any:
    """The kubernetes or dry-run backend the flags describe; BackendUnavailable if the cluster is away."""
    from infadapter.backends import backend_class

    rc = render_config_for(cfg.k8s_config, cfg.namespace, cfg.router)
    cls = backend_class(cfg.backend)
    pods = pod_rules(cfg.policy, profile)
    if cfg.backend == "dry-run":
        assert cfg.out_dir is not None
        return cls(profile, cfg.out_dir, rc, pods)
    backend = cls.from_options(
        profile, kubeconfig=cfg.kubeconfig, context=cfg.context, namespace=rc.namespace,
        config_path=str(cfg.k8s_config) if cfg.k8s_config else None, dispatcher_url=cfg.dispatcher_url,
        admin_token=cfg.admin_token, ready_timeout_s=cfg.ready_timeout_s, in_place=cfg.in_place, config=rc, pods=pods,
    )
    if not backend.health():
        host = backend.api.host or "the API server"
        backend.stop()
        raise BackendUnavailable(f"--kubeconfig: {host} does not answer /version; check --kubeconfig/--context "
                                 "and that the cluster runs")
    return backend


class ClusterSetup:
    """The kubernetes and dry-run backends' preparation step (see the module doc)."""

    #: The cluster (or folder) holds the serving state; the state file only says who runs.
    keep_state: tuple[str, ...] = ()

    def prepare(self, run: AdapterRun) -> Prepared:
        cfg = run.config
        if not isinstance(cfg, ClusterRunConfig):
            raise BadInput(f"--backend {cfg.backend}: expected the cluster backends' flags")
        messages = run.messages
        # Flags and the cluster are checked before anything is written.
        backend = build_backend(cfg, run.profile)
        try:
            if cfg.backend == "kubernetes":
                run.profile, found = backend.size_pods()
                messages.extend(found)
            metrics = None
            if cfg.metrics_port:
                from infadapter.adapter.loop import LoopMetrics

                metrics = LoopMetrics()
                try:
                    metrics.serve(cfg.metrics_port, host=cfg.metrics_host)
                except OSError as exc:
                    raise BadInput(f"--metrics-port: cannot listen on {cfg.metrics_port} ({exc.strerror}); "
                                   "pick a free port or 0 to turn metrics off") from None
                messages.append(f"metrics: http://{cfg.metrics_host}:{cfg.metrics_port}/metrics")
            live = _start_live(cfg, backend, messages) if cfg.traffic == "live" else None
            if backend.pods.autoscaler is not None and cfg.backend == "kubernetes":
                _start_autoscaler(cfg, backend, run.profile, messages)
            if live is None and cfg.backend == "kubernetes" and cfg.dispatcher_url:
                _address_variants(backend, messages)  # e.g. the adapter's own Deployment, beside the dispatcher
            initial_plan = None
            st = backend.state()
            if st.plan is not None and st.plan.allocations:
                initial_plan = st.plan
                messages.append(f"resuming from the plan the backend holds: "
                                f"{', '.join(f'{a.name} {a.cores:g} cores' for a in st.plan.allocations)}")
        except BaseException:  # the runner never saw the backend: close it here
            backend.stop()
            raise
        observe, monitor = _observer(cfg, run, live)
        where = f"namespace {backend.namespace}" if cfg.backend == "kubernetes" else f"folder {cfg.out_dir}"
        messages.insert(0, f"backend {cfg.backend}: {where}")
        return Prepared(
            backend=backend, observe=GuardedObserver(observe),
            observation=live_observation(live.url) if live else cfg.observation,
            limit_mode=f"{cfg.backend} backend" + (" (replayed load)" if cfg.rates_rps is not None and not live
                                                   else ""),
            initial_plan=initial_plan, metrics=metrics, closers=[metrics.close] if metrics else [],
            adapter_info={"namespace": getattr(backend, "namespace", None),
                          "out_dir": str(cfg.out_dir) if cfg.out_dir else None},
            summary=lambda load: {**_summary(cfg, backend), **_load_figures(load)}, release=False,
            drive_load=(lambda: _drive_live(cfg, run, live, monitor)) if live else None,
            drain_s=LIVE_DRAIN_S if live else 0.0,
            apply_timeout_s=cfg.ready_timeout_s if cfg.backend == "kubernetes" else 0.0,
        )


def _start_autoscaler(cfg: ClusterRunConfig, backend: Any, profile: Profile, messages: list[str]) -> None:
    """An upstream policy's variant and its HPA or VPA, before the loop starts (the loop then resumes from what
    runs and only reads back). A VPA gets the day before the window as its recommender's checkpoint
    (:func:`~infadapter.core.policies.upstream_vpa_history`), as a VPA that had been running would hold it: upstream
    loads checkpoints only when it starts, and only for VPAs whose workload exists, so ``--restart-recommender``
    runs once the variant and the checkpoint exist, and the variant is then resized to the warm target, as the
    updater would have done during that day (without the command the VPA starts cold, and says so)."""
    import shlex
    import subprocess
    import time

    from infadapter.core.policies import entry, make_policy, single_variant_plan, upstream_vpa_history

    policy = make_policy(cfg.policy, profile, 1, backend="kubernetes")
    first = entry(cfg.policy).initial_plan(profile, policy)  # type: ignore[misc]
    a = backend.pods.autoscaler

    def apply(plan: Any, what: str) -> None:
        res = backend.apply(plan)
        if not res.ok:
            raise BackendUnavailable(f"--policy {cfg.policy}: cannot {what}: {res.error}")
        messages.append(f"{cfg.policy}: {'; '.join(res.actions) or 'already running'}")

    apply(first, f"create {a.variant}")
    if a.kind != "vpa":
        return
    history = None
    if cfg.rates_before:
        history = upstream_vpa_history(profile, a.variant, cfg.rates_before, cfg.control.history_stretch, time.time())
    if history is None or not cfg.restart_recommender:
        why = "no history before the window" if history is None else "no --restart-recommender"
        messages.append(f"vpa-upstream: the recommender starts cold ({why})")
        return

    def restart() -> None:
        try:
            done = subprocess.run(shlex.split(cfg.restart_recommender), capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BadInput(f"--restart-recommender: {cfg.restart_recommender!r} did not run ({exc})") from None
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            raise BadInput(f"--restart-recommender: {cfg.restart_recommender!r} exited {done.returncode}: {last[0]}")

    target, said = backend.warm_start(history, restart, timeout_s=WARM_TARGET_WAIT_S)
    messages.append(said)
    if target is None:
        messages.append(f"vpa-upstream: the restarted recommender gave no target within {WARM_TARGET_WAIT_S:g} s "
                        "(warm start not shown)")
        return
    apply(single_variant_plan(profile, a.variant, target, 0.0, {}), f"size {a.variant} at the warm target")
    messages.append(f"vpa-upstream: warm, {history.samples} samples of the day before the window; {a.variant} "
                    f"sized at its target {target:g} cores")


def _start_live(cfg: ClusterRunConfig, backend: Any, messages: list[str]) -> Any:
    """``--traffic live``: the in-cluster dispatcher (:mod:`.live`; ``--dispatcher-url``'s when given) becomes the
    backend's router, addressing the variants by ClusterIP on a cluster without DNS."""
    from infadapter.backends.kubernetes import live
    from infadapter.serving.dispatcher import DispatcherClient

    if cfg.dispatcher_url:
        found = live.LiveDispatcher(cfg.dispatcher_url, cfg.admin_token, (f"dispatcher at {cfg.dispatcher_url}",))
    else:
        found = live.start_dispatcher(backend.api, backend.config, cfg.ready_timeout_s)
        backend.router = DispatcherClient(found.url, found.token)
    messages.extend(found.notes)
    _address_variants(backend, messages)
    return found


def _address_variants(backend: Any, messages: list[str]) -> None:
    """How an in-cluster dispatcher reaches the variants: their Services' DNS names, or on a cluster without a DNS
    add-on (the local cluster) their ClusterIPs, which no resolver is needed for."""
    from functools import partial

    from infadapter.backends.kubernetes import live

    if not live.has_dns(backend.api):
        backend.variant_url = partial(live.service_ip_url, backend.api, backend.config)
        messages.append("no DNS add-on (Service kube-system/kube-dns): the dispatcher reaches the variants by "
                        "their Services' ClusterIPs")


def _observer(cfg: ClusterRunConfig, run: AdapterRun, live: Any) -> tuple[Callable[[float], Observation], Any]:
    """What the loop observes (see the module doc): the replay, else the dispatcher's counters or Prometheus;
    and the :class:`Monitor` doing the latter (None for a replay)."""
    if cfg.rates_rps is not None and live is None:
        return ReplayedLoad(cfg.rates_rps, cfg.load_label or "a load", run.started_s,
                            {s.name: s.rates_rps for s in cfg.services_load}).observe, None
    from infadapter.observe.monitor import Monitor

    stats: Callable[[], Mapping[str, Any]] = _no_dispatcher
    url, token = (live.url, live.token) if live else (cfg.dispatcher_url, cfg.admin_token)
    if url:
        from infadapter.serving.dispatcher import DispatcherClient

        stats = DispatcherClient(url, token, timeout_s=5.0).stats
    # The dispatcher and Prometheus outlive the adapter: their last 10 minutes are real history, unless this run
    # sends the load (--traffic live): then the seconds before it are the window's (ControlConfig.history_before,
    # each service's own; Monitor.load_starts), as on the local backend, not a dispatcher's zeros.
    own_load = cfg.rates_rps is not None
    monitor = Monitor(stats, cfg.prometheus_url, start_s=None if own_load else run.started_s - HISTORY_S,
                      clock=run.clock, rate_window_s=cfg.control.rate_window_s, services=run.profile.service_names,
                      load_pending=own_load)
    return monitor.observe, monitor


def _drive_live(cfg: ClusterRunConfig, run: AdapterRun, live: Any, monitor: Any) -> Any:
    """The load's requests from this machine to the dispatcher's Service (the local backend's generator)."""
    from infadapter.observe.loadgen import DEFAULT_RESOLUTION, drive_window, service_streams

    assert cfg.rates_rps is not None and run.store is not None
    monitor.load_starts()
    return drive_window(f"{live.url}/v1/models/resnet:predict", cfg.rates_rps, cfg.duration_s, run.store,
                        slo_ms=run.profile.slo_ms, resolution=run.profile.resolution or DEFAULT_RESOLUTION,
                        out_path=cfg.run_dir / REQUESTS_FILE,
                        streams=service_streams(live.url, cfg.services_load, run.profile))


def _load_figures(load: Any) -> dict[str, Any]:
    from infadapter.observe.loadgen import load_figures

    return load_figures(load)


def _summary(cfg: ClusterRunConfig, backend: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cfg.backend == "dry-run" and cfg.out_dir is not None:
        out["out_dir"] = str(cfg.out_dir)
        out["generations"] = sorted(p.name for p in cfg.out_dir.glob("gen-*") if p.is_dir())
    if cfg.backend == "kubernetes":
        out["namespace"] = backend.namespace
        # API calls (each try) that found no API server: what the outages in backend_outages cost in requests.
        out["api_unreachable_tries"] = backend.api.unreachable_tries
    return out
