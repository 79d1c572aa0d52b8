"""What a running adapter is doing, gathered from outside it (``cli.py status``).

Reads the run's state file (written atomically by the adapter every check) and asks the live parts:
each model server's model status (ready), the dispatcher's ``/admin/stats`` and, when the run has
one, Prometheus (per-variant req/s and p99, SLO attainment over the last 5 minutes). Works from any
shell while ``adapt`` runs; when nothing runs it says so (``running: false``). :class:`RunFolderStatus` is
the status collector of the backends whose state is the run folder (local, dry-run); the kubernetes backend
reads its namespace instead (:mod:`infadapter.backends.kubernetes.status`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infadapter import paths
from infadapter.adapter.records import read_log
from infadapter.adapter.runstate import RunState
from infadapter.adapter.state import DECISIONS_FILE, read_state_checked, state_path
from infadapter.backends.local.backend import model_available
from infadapter.processes import pid_alive

SLO_WINDOW = "5m"


#: SLO attainment over the last five minutes: the dispatcher's own verdict per request (its
#: ``dispatcher_slo_good_requests_total`` counts what :mod:`infadapter.core.slo` calls met: answered
#: without a server error within the SLO), over every request it took. The Prometheus rules
#: (templates/prometheus/slo-rules.yml.j2) use the same two counters, so status and alerts agree.
SLO_QUERY = (
    f"sum(increase(dispatcher_slo_good_requests_total[{SLO_WINDOW}])) "
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
        "unreachable": loop.unreachable,
        "totals": loop.totals,
        "updated_s": st.updated_s,
        "last_decision": short_decision(loop.last_decision),
        # Several services: each one's observed and forecast rate, cores and accuracy ([] for one service).
        "services": loop.services,
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
            **({"service": (shares.get(name) or {}).get("service", "")} if loop.services else {}),
            "cores": sp.get("cores"),
            "share": (shares.get(name) or {}).get("share", 0.0),
            "ready": alive and model_available(f"http://127.0.0.1:{sp['port']}", sp.get("model", name), 1.0),
            "pid": sp.get("pid"),
            "port": sp.get("port"),
            "threads": sp.get("threads"),
            "cgroup": sp.get("cgroup"),
            "rps": round_or_none(figures.get("rps")),
            "p99_ms": round_or_none(figures.get("p99_ms")),
        })
    out["variants"] = variants
    out["slo_attainment_5m"] = round_or_none(slo, 5) if slo is not None else None
    return out


def short_decision(d: dict[str, Any] | None) -> dict[str, Any] | None:
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
        slo = reader.scalar(SLO_QUERY) if slo_ms else None
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


def round_or_none(v: Any, digits: int = 3) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return round(f, digits) if math.isfinite(f) else None


def fmt(v: Any) -> str:
    """A figure for a table cell: ``-`` when unknown, 3 significant digits for floats."""
    return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


class RunFolderStatus:
    """The status collector of the backends whose state is the run folder (local, dry-run); see
    :class:`infadapter.backends.base.StatusCollector`."""

    def collect(self, run_dir: Path | None, **options: Any) -> dict[str, Any]:
        """:func:`collect_status` of ``run_dir`` (default runs/adapt); these backends have no status flags."""
        return collect_status(run_dir or paths.DEFAULT_RUN_DIR)

    def render(self, doc: Mapping[str, Any]) -> list[Any]:
        """The variants as a table, then the load, SLO, cost and last decision, one line each."""
        from rich.table import Table

        out: list[Any] = []
        if doc.get("decisions_warning"):
            out.append(f"[yellow]warning:[/] {doc['decisions_warning']}")
        if not doc.get("running"):
            return [*out, doc.get("message", "nothing runs"), *_last_decision(doc)]
        t = Table(title=f"{doc['policy']} on {doc['run_dir']} (up {doc.get('uptime_s', 0):.0f} s, "
                        f"cpu limit: {doc.get('limit_mode')})")
        services = doc.get("services") or []
        # Several services: a service column (shares are of each service's own traffic).
        lead: tuple[str, ...] = ("service",) if services else ()
        for col in (*lead, "variant", "cores", "share", "ready", "req/s", "p99 ms", "pid", "port"):
            t.add_column(col)
        for v in doc.get("variants", []):
            t.add_row(*((v.get("service", ""),) if services else ()), v["name"], f"{v['cores']:g}",
                      f"{v['share']:.0%}", "yes" if v["ready"] else "no",
                      fmt(v.get("rps")), fmt(v.get("p99_ms")), str(v["pid"]), str(v["port"]))
        if not doc.get("variants"):  # no local servers: the plan applied to a cluster or a folder
            for v in (doc.get("plan") or {}).get("variants", []):
                t.add_row(*((v.get("service", ""),) if services else ()), v["name"], f"{v['cores']:g}",
                          f"{v['share']:.0%}", "-", "-", "-", "-", "-")
            out.append(f"observing: {doc.get('observation')}")
        out.append(t)
        for svc in services:
            out.append(f"service {svc['name']}: observed {fmt(svc.get('observed_rps'))} req/s, forecast "
                       f"{fmt(svc.get('forecast_rps'))} req/s; {fmt(svc.get('cores'))} cores, accuracy "
                       f"{fmt(svc.get('accuracy'))}")
        mon = doc.get("monitor") or {}
        att = doc.get("slo_attainment_5m")
        out.append(f"load: observed {fmt(doc.get('observed_rps'))} req/s, forecast {fmt(doc.get('forecast_rps'))} "
                   f"req/s; p99 {fmt(doc.get('p99_ms'))} ms (SLO {fmt(doc.get('slo_ms'))} ms); SLO attainment 5 min: "
                   f"{'-' if att is None else f'{100 * att:.2f}%'}")
        out.append(f"accuracy {fmt(doc.get('accuracy'))}, cost {fmt(doc.get('cost_cores'))} cores; monitor: "
                   f"{mon.get('source', '')} {mon.get('warning', '')}")
        if doc.get("degraded"):
            out.append(f"[red]degraded:[/] {doc['degraded']}")
        if doc.get("unreachable"):
            out.append(f"[red]backend {doc['unreachable']}[/]")
        return [*out, *_last_decision(doc)]


def _last_decision(doc: Mapping[str, Any]) -> list[str]:
    """The last decision and its one-line why (``explain`` has the rest)."""
    d = doc.get("last_decision") or {}
    if not d:
        return []
    lines = [f"last decision #{d['seq']} ({d['trigger']}): {d['diff']}: {d['reason']}"]
    if d.get("why"):
        lines.append(f"why: {d['why']}")
    return lines
