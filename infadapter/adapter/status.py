"""What a running adapter is doing, gathered from outside it (``cli.py status``).

:func:`collect_kubernetes_status` reads a namespace instead (``status --backend kubernetes``): each
variant's planned cores and share (the plan annotations the backend stamps) against what runs (ready
replicas, cores per pod, the pod template's cores), plus the loop's last decision when an adapter's
run folder is at hand.

Reads the run's state file (written atomically by the adapter every check) and asks the live parts:
each model server's model status (ready), the dispatcher's ``/admin/stats`` and, when the run has
one, Prometheus (per-variant req/s and p99, SLO attainment over the last 5 minutes). Works from any
shell while ``adapt`` runs; when nothing runs it says so (``running: false``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from infadapter import paths
from infadapter.adapter.records import read_log
from infadapter.adapter.runstate import RunState
from infadapter.adapter.state import DECISIONS_FILE, read_state, read_state_checked, state_path
from infadapter.backends.local.backend import model_available
from infadapter.processes import pid_alive

SLO_WINDOW = "5m"


def _slo_query(slo_ms: float) -> str:
    from prometheus_client.utils import floatToGoString

    le = floatToGoString(round(slo_ms / 1000.0, 6))
    # Fast answers over all answers; failed requests are subtracted (they count as violations).
    return (
        f'(sum(increase(dispatcher_request_latency_seconds_bucket{{le="{le}"}}[{SLO_WINDOW}])) '
        f'- sum(increase(dispatcher_requests_total{{code!="200"}}[{SLO_WINDOW}]) or vector(0))) '
        f"/ sum(increase(dispatcher_requests_total[{SLO_WINDOW}]))"
    )


def collect_status(run_dir: Path, sample_s: float = 1.0) -> dict[str, Any]:
    """The status document (see ``docs/adapt.md`` for its fields)."""
    raw, corrupt = read_state_checked(state_path(run_dir))
    decisions = decision_log_health(run_dir)
    if raw is None:
        return {"running": False, "run_dir": str(run_dir), "corrupt": corrupt or None,
                "message": corrupt or f"no adapter state in {run_dir}", **decisions}
    st = RunState.from_dict(raw)
    adapter, loop = st.adapter, st.loop
    running = pid_alive(adapter.pid)
    out: dict[str, Any] = {
        "running": running,
        "run_dir": str(run_dir),
        "adapter": adapter.as_dict() if adapter.pid is not None else None,
        "policy": loop.policy or adapter.policy or None,
        "backend": adapter.backend,
        "observation": adapter.observation or None,
        "limit_mode": st.limit_mode,
        "monitor": loop.monitor or None,
        "prometheus": st.prometheus_url,
        "plan": loop.plan,
        "observed_rps": loop.observed_rps,
        "forecast_rps": loop.forecast_rps,
        "p99_ms": loop.p99_ms,
        "slo_ms": adapter.slo_ms,
        "degraded": loop.degraded,
        "totals": loop.totals,
        "updated_s": st.updated_s,
        "last_decision": _short_decision(loop.last_decision),
        **decisions,
    }
    plan = loop.plan or {}
    out["accuracy"] = plan.get("accuracy")
    out["cost_cores"] = plan.get("cores")
    # False when the load exceeds what the budget serves: the highest-capacity plan runs, the rest is shed.
    out["feasible"] = plan.get("feasible") if plan else None
    out["write_error"] = loop.write_error  # a full disk or unwritable run folder
    if not running:
        when = st.stopped_s
        out["message"] = (f"no adapter runs on {run_dir}" +
                          (f" (the last one stopped {time.time() - when:.0f} s ago)" if when else ""))
        return out
    out["uptime_s"] = round(time.time() - (adapter.started_s or time.time()), 1)
    shares = {v["name"]: v for v in plan.get("variants", [])}
    per_variant, slo = _prometheus_figures(out["prometheus"], out["slo_ms"])
    if not per_variant:
        per_variant = _dispatcher_rates(run_dir, st.dispatcher, sample_s)
    variants = []
    for sp in st.servers:
        name = sp["name"]
        alive = pid_alive(sp.get("pid"))
        figures = per_variant.get(name, {})
        variants.append({
            "name": name,
            "cores": sp.get("cores"),
            "share": (shares.get(name) or {}).get("share", 0.0),
            "ready": alive and model_available(f"http://127.0.0.1:{sp['port']}", sp.get("model", name), 1.0),
            "pid": sp.get("pid"),
            "port": sp.get("port"),
            "threads": sp.get("threads"),
            "cgroup": sp.get("cgroup"),
            "rps": _round(figures.get("rps")),
            "p99_ms": _round(figures.get("p99_ms")),
        })
    out["variants"] = variants
    out["slo_attainment_5m"] = _round(slo, 5) if slo is not None else None
    return out


def collect_kubernetes_status(
    run_dir: Path | None,
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    namespace: str | None = None,
    k8s_config: Path | None = None,
) -> dict[str, Any]:
    """Planned vs actual per variant in a namespace (see ``docs/kubernetes.md``); exit 4 when unreachable."""
    from infadapter.backends.kubernetes.backend import KubeError, KubeOptions, KubernetesBackend, deployment_ready
    from infadapter.backends.kubernetes.setup import render_config_for
    from infadapter.core.profile import load_profile
    from infadapter.errors import BackendUnavailable
    from infadapter.render import ANNOTATION_CORES, ANNOTATION_SHARE

    raw = read_state(state_path(run_dir)) if run_dir is not None else None
    st = RunState.from_dict(raw) if raw is not None else None
    if st is not None and st.adapter.backend != "kubernetes":
        st = None
    # The profile is not read by the status calls; the one the adapter used (or the paper's) is loaded.
    profile = load_profile((st.adapter.profile if st else "") or paths.PAPER_PROFILE)
    rc = render_config_for(k8s_config, namespace)
    backend = KubernetesBackend(profile, rc, KubeOptions(kubeconfig=kubeconfig, context=context, retries=2,
                                                         backoff_s=0.2, request_timeout_s=10.0))
    try:
        observed = backend.observe()
        plan, generation = backend.recovered_plan(observed)
    except KubeError as exc:
        raise BackendUnavailable(f"--kubeconfig: cannot read namespace {rc.namespace} ({exc})") from None
    finally:
        backend.stop()
    shares = plan.shares_by_name() if plan else {}
    variants = []
    for name, ob in sorted(observed.items()):
        meta = ob.deployment.get("metadata") or {}
        notes = meta.get("annotations") or {}
        dst = ob.deployment.get("status") or {}
        actual = [round(c, 4) for c in ob.actual_cores]
        planned = _round(notes.get(ANNOTATION_CORES), 4)
        ready = deployment_ready(ob.deployment)
        variants.append({
            "name": name,
            "planned_cores": planned,
            "planned_share": _round(shares.get(name, notes.get(ANNOTATION_SHARE)), 4),
            "replicas": int((ob.deployment.get("spec") or {}).get("replicas", 1)),
            "ready_replicas": int(dst.get("readyReplicas", 0)),
            "ready": ready,
            "cores_per_pod": actual,
            "cores": round(sum(actual), 4),  # all its pods together (a variant may run as replicas)
            "template_cores": round(ob.template_cores, 4),
            "generation": ob.generation,
            "matches_plan": ready and planned is not None and bool(actual)
            and abs(sum(actual) - planned) <= 1e-3 * len(actual) + 1e-9  # whole millicores a pod
            and len(actual) == int((ob.deployment.get("spec") or {})
                                                                         .get("replicas", 1)),
        })
    out: dict[str, Any] = {
        "backend": "kubernetes",
        "namespace": rc.namespace,
        "running": bool(variants),
        "generation": generation,
        "plan": plan.as_dict() if plan is not None else None,
        "variants": variants,
        "messages": [f"{v['name']}: not ready ({v['ready_replicas']}/{v['replicas']})" for v in variants
                     if not v["ready"]] + [f"{v['name']}: pods run {v['cores_per_pod']} cores, planned "
                                           f"{v['planned_cores']}" for v in variants
                                           if v["ready"] and not v["matches_plan"]],
        "run_dir": str(run_dir) if run_dir is not None else None,
        "adapter": None,
        "loop": None,
    }
    if not variants:
        out["message"] = f"no infadapter variants in namespace {rc.namespace}"
    if st is not None:
        loop = st.loop
        out["adapter"] = {**st.adapter.as_dict(), "running": pid_alive(st.adapter.pid)}
        out["loop"] = {"observed_rps": loop.observed_rps, "forecast_rps": loop.forecast_rps,
                       "monitor": loop.monitor or None, "totals": loop.totals, "degraded": loop.degraded,
                       "last_decision": _short_decision(loop.last_decision)}
    return out


def _short_decision(d: dict[str, Any] | None) -> dict[str, Any] | None:
    if not d:
        return None
    from infadapter.adapter.explain import one_line_why

    out = {k: d.get(k) for k in ("seq", "time_s", "trigger", "reason", "diff", "observed_rps", "forecast_rps",
                                 "objective", "solve_s", "apply_ok", "apply_error", "actions", "run_id")}
    out["why"] = one_line_why(d)
    return out


def decision_log_health(run_dir: Path) -> dict[str, Any]:
    """The decisions file's damaged lines (a write cut short by a kill): where and how many."""
    path = Path(run_dir) / DECISIONS_FILE
    found = read_log(path)
    return {"decisions_damaged": [n for n, _ in found.damaged], "decisions_warning": found.damage_note(path)}


def _prometheus_figures(url: str | None, slo_ms: float | None) -> tuple[dict[str, dict[str, float]], float | None]:
    if not url:
        return {}, None
    from infadapter.observe.monitor import VARIANT_P99_QUERY, VARIANT_RATE_QUERY, PrometheusReader

    try:
        reader = PrometheusReader(url, timeout_s=2.0)
        rates = reader.by_label(VARIANT_RATE_QUERY, "model_name")
        p99s = reader.by_label(VARIANT_P99_QUERY, "model_name")
        slo = reader.scalar(_slo_query(slo_ms)) if slo_ms else None
    except Exception:
        return {}, None
    names = set(rates) | set(p99s)
    return {n: {"rps": rates.get(n), "p99_ms": p99s.get(n)} for n in names}, slo


def _dispatcher_rates(run_dir: Path, disp: dict[str, Any], sample_s: float) -> dict[str, dict[str, float]]:
    """Per-variant req/s from two samples of the dispatcher's counters (no Prometheus)."""
    token_file = run_dir / "admin.token"
    if not disp.get("port") or not token_file.exists():
        return {}
    from infadapter.serving.dispatcher import DispatcherClient

    try:
        client = DispatcherClient(f"http://127.0.0.1:{disp['port']}", token_file.read_text().strip(), timeout_s=2)
        a = client.stats()
        time.sleep(sample_s)
        b = client.stats()
    except Exception:
        return {}
    out: dict[str, dict[str, float]] = {}
    for name, count in (b.get("by_variant") or {}).items():
        before = (a.get("by_variant") or {}).get(name, 0)
        out[name] = {"rps": (count - before) / sample_s}
    return out


def _round(v: Any, digits: int = 3) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return round(f, digits) if math.isfinite(f) else None
