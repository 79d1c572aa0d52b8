"""``cli.py status --backend kubernetes``: what runs in a namespace, read from the cluster.

Each variant's planned cores and share (the plan annotations the backend stamps) against what runs (ready
replicas, cores per pod, the pod template's cores), plus the loop's last decision when an adapter's run
folder is at hand. :class:`KubernetesStatus` is the backend's status collector
(:class:`infadapter.backends.base.StatusCollector`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infadapter import paths
from infadapter.adapter.runstate import RunState
from infadapter.adapter.state import read_state, state_path
from infadapter.adapter.status import fmt, round_or_none, short_decision
from infadapter.errors import BackendUnavailable
from infadapter.processes import pid_alive


def collect_kubernetes_status(
    run_dir: Path | None = None,
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    namespace: str | None = None,
    k8s_config: Path | None = None,
) -> dict[str, Any]:
    """Planned vs actual per variant in a namespace (see ``docs/kubernetes.md``); exit 4 when unreachable."""
    from infadapter.backends.kubernetes.api import KubeError, KubeOptions
    from infadapter.backends.kubernetes.backend import KubernetesBackend
    from infadapter.backends.kubernetes.layout import recovered_plan
    from infadapter.backends.kubernetes.setup import render_config_for
    from infadapter.core.profile import load_profile

    run_dir = run_dir or paths.RUNS / "kubernetes"
    raw = read_state(state_path(run_dir))
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
        plan, generation = recovered_plan(observed, profile)
    except KubeError as exc:
        raise BackendUnavailable(f"--kubeconfig: cannot read namespace {rc.namespace} ({exc})") from None
    finally:
        backend.stop()
    shares = plan.shares_by_name() if plan else {}
    variants = [_variant_row(ob, shares) for _, ob in sorted(observed.items())]
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
                       "last_decision": short_decision(loop.last_decision)}
    return out


def _variant_row(ob: Any, shares: Mapping[str, float]) -> dict[str, Any]:
    """One variant's planned (its annotations, the plan's share) vs actual (pods, cores, readiness)."""
    from infadapter.backends.kubernetes.readiness import deployment_ready
    from infadapter.render import ANNOTATION_CORES, ANNOTATION_SHARE

    notes = (ob.deployment.get("metadata") or {}).get("annotations") or {}
    dst = ob.deployment.get("status") or {}
    actual = [round(c, 4) for c in ob.actual_cores]
    planned = round_or_none(notes.get(ANNOTATION_CORES), 4)
    replicas = int((ob.deployment.get("spec") or {}).get("replicas", 1))
    ready = deployment_ready(ob.deployment)
    return {
        "name": ob.name,
        "planned_cores": planned,
        "planned_share": round_or_none(shares.get(ob.name, notes.get(ANNOTATION_SHARE)), 4),
        "replicas": replicas,
        "ready_replicas": int(dst.get("readyReplicas", 0)),
        "ready": ready,
        "cores_per_pod": actual,
        "cores": round(sum(actual), 4),  # all its pods together (a variant may run as replicas)
        "template_cores": round(ob.template_cores, 4),
        "generation": ob.generation,
        "matches_plan": ready and planned is not None and bool(actual)
        and abs(sum(actual) - planned) <= 1e-3 * len(actual) + 1e-9  # whole millicores a pod
        and len(actual) == replicas,
    }


class KubernetesStatus:
    """The kubernetes backend's status collector (see :class:`infadapter.backends.base.StatusCollector`)."""

    def collect(self, run_dir: Path | None, **options: Any) -> dict[str, Any]:
        """:func:`collect_kubernetes_status` with the backend's status flags
        (:data:`infadapter.backends.kubernetes.options.STATUS`)."""
        return collect_kubernetes_status(run_dir, **options)

    def render(self, doc: Mapping[str, Any]) -> list[Any]:
        """Planned vs actual per variant as a table, then the messages and the loop's last decision."""
        from rich.table import Table

        out: list[Any] = []
        if not doc.get("variants"):
            out.append(doc.get("message", "no variants"))
        else:
            t = Table(title=f"namespace {doc['namespace']}: plan generation {doc.get('generation')} "
                            f"(load {fmt((doc.get('plan') or {}).get('load'))} req/s)")
            for col in ("variant", "planned cores", "share", "ready", "cores per pod", "template cores",
                        "generation"):
                t.add_column(col)
            for v in doc["variants"]:
                t.add_row(v["name"], fmt(v.get("planned_cores")), f"{v.get('planned_share') or 0:.0%}",
                          f"{v['ready_replicas']}/{v['replicas']}",
                          ", ".join(f"{c:g}" for c in v["cores_per_pod"]) or "-",
                          fmt(v.get("template_cores")), str(v.get("generation")))
            out.append(t)
        out.extend(doc.get("messages", []))
        loop = doc.get("loop") or {}
        if loop:
            adapter = doc.get("adapter") or {}
            out.append(f"adapter {'runs' if adapter.get('running') else 'does not run'} here ({doc.get('run_dir')}); "
                       f"observing {adapter.get('observation', '-')}")
            d = loop.get("last_decision") or {}
            out.append(f"load: observed {fmt(loop.get('observed_rps'))} req/s, forecast "
                       f"{fmt(loop.get('forecast_rps'))} req/s")
            if d:
                out.append(f"last decision #{d['seq']} ({d['trigger']}): {d['diff']}: {d['reason']}")
        return out
