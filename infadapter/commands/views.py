"""Rich views of command results, kept apart from the commands' logic.

``adapt_summary`` turns the summary ``adapt`` returns (local, kubernetes or dry-run; the same dict
``--json`` prints) into a table of rounded figures; ``adapt_summary_line`` is its one-line form for
``-q``. Percentages have two decimals, cores three, latencies whole milliseconds. ``LiveView`` is
what ``adapt`` and ``experiment`` show while they run.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from infadapter.commands.common import err_console


def pct(v: Any, digits: int = 2) -> str:
    """A fraction as a percentage (``0.04412`` -> ``4.41 %``); ``-`` when unknown."""
    return "-" if v is None else f"{100 * float(v):.{digits}f} %"


def ms(v: Any) -> str:
    """Milliseconds, rounded to whole ones; ``-`` when unknown."""
    return "-" if v is None else f"{float(v):.0f} ms"


def cores(v: Any) -> str:
    return "-" if v is None else f"{float(v):.3f}"


def _plan_text(plan: dict[str, Any] | None) -> str:
    variants = (plan or {}).get("variants") or []
    return ", ".join(f"{v['name']} {float(v['cores']):g} cores {float(v['share']):.0%}" for v in variants) or "-"


def _title(s: dict[str, Any]) -> str:
    backend = s.get("backend") or "local"
    return f"adapt: policy {s.get('policy')} on {backend}{' (interrupted)' if s.get('interrupted') else ''}"


def adapt_summary_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """(figure, value) rows of an adapt summary, rounded for people."""
    rows: list[tuple[str, str]] = []
    if "requests" in s:
        sent = int(s.get("requests") or 0)
        rate = s.get("slo_violation_rate")
        missed = "" if rate is None else f" ({round(float(rate) * sent)} of {sent} requests)"
        rows.append(("SLO violations", pct(rate) + missed))
        rows.append(("requests", f"{sent} sent: {s.get('ok')} ok, {s.get('errors')} errors, "
                                 f"{s.get('timeouts')} timeouts"))
        rows.append(("latency p50 / p99", f"{ms(s.get('p50_ms'))} / {ms(s.get('p99_ms'))}"))
        served = s.get("by_variant") or {}
        total = sum(served.values())
        if total:
            rows.append(("served by", ", ".join(f"{k} {n / total:.0%}" for k, n in served.items())))
    rows.append(("mean cores", cores(s.get("mean_cores"))))
    rows.append(("mean accuracy", pct(s.get("mean_accuracy"))))
    for svc in s.get("services") or []:  # several services: each one's figures (violations at its own SLO)
        sent = svc.get("requests")
        viol = "" if sent is None else f"{pct(svc.get('slo_violation_rate'))} SLO violations of {sent} requests, "
        rows.append((f"service {svc['name']}", f"{viol}{cores(svc.get('mean_cores'))} cores, accuracy "
                                               f"{pct(svc.get('mean_accuracy'))}"))
    rows.append(("decisions", f"{s.get('decisions')} ({s.get('transitions')} transitions, "
                              f"{s.get('failed_applies') or 0} failed applies)"))
    if s.get("crashes"):
        rows.append(("server crashes", str(s["crashes"])))
    outages = s.get("backend_outages") or []
    if outages:
        rows.append(("backend unreachable", ", ".join(f"{float(o['seconds']):.0f} s" for o in outages)
                     + f" (plan held; first: {outages[0].get('reason', '')})"))
    if s.get("seconds") is not None:
        rows.append(("duration", f"{float(s['seconds']):.0f} s"))
    if s.get("plan"):
        rows.append(("final plan", _plan_text(s["plan"])))
    if s.get("observation"):
        rows.append(("observation", str(s["observation"])))
    if s.get("namespace"):
        rows.append(("namespace", str(s["namespace"])))
    if s.get("out_dir"):
        rows.append(("manifests", f"{s['out_dir']} ({len(s.get('generations') or [])} generations)"))
    if s.get("limit_mode") and not s.get("backend"):
        rows.append(("cpu limit", str(s["limit_mode"])))
    return rows


def adapt_summary(s: dict[str, Any], plot: str | None = None) -> Any:
    """The summary as a rich table; the run folder (and plot) in its caption."""
    from rich.table import Table

    t = Table(title=_title(s), show_header=False, title_justify="left", expand=False)
    t.add_column("figure", style="bold")
    t.add_column("value")
    for name, value in adapt_summary_rows(s):
        t.add_row(name, value)
    caption = f"run folder: {s.get('run_dir')} (decisions.jsonl, state.json"
    caption += f", {plot.rsplit('/', 1)[-1]})" if plot else ")"
    t.caption = caption
    t.caption_justify = "left"
    return t


def adapt_summary_line(s: dict[str, Any]) -> str:
    """One line of the key figures (for ``-q``)."""
    parts = [f"policy {s.get('policy')}{' (interrupted)' if s.get('interrupted') else ''}"]
    if "requests" in s:
        parts.append(f"SLO violations {pct(s.get('slo_violation_rate'))}")
        parts.append(f"p99 {ms(s.get('p99_ms'))}")
    parts.append(f"mean cores {cores(s.get('mean_cores'))}")
    parts.append(f"mean accuracy {pct(s.get('mean_accuracy'))}")
    parts.append(f"transitions {s.get('transitions')}")
    return ", ".join(parts)


class LiveView:
    """A live rich table on a terminal; plain log lines of each decision otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty() and not quiet
        self.last_seq: tuple[Any, int] = (None, 0)
        self.snap: dict[str, Any] = {}
        self.live: Any = None

    def __enter__(self) -> LiveView:
        if self.tty:
            from rich.live import Live

            self.live = Live(get_renderable=self.render, console=err_console(), refresh_per_second=2)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def update(self, snap: dict[str, Any]) -> None:
        self.snap = snap
        d = snap.get("last_decision") or {}
        key = (snap.get("policy"), d.get("seq", 0))
        if d and key != self.last_seq:  # (policy, seq): an experiment restarts seq per policy
            self.last_seq = key
            if not self.tty and not self.quiet:
                replayed = " (replayed, not live)" if d.get("monitor_source") == "replay" else ""
                err_console().print(
                    f"[{time.strftime('%H:%M:%S')}] decision {d['seq']} ({d['trigger']}): observed{replayed} "
                    f"{d['observed_rps']:.1f} req/s, forecast {d['forecast_rps']:.1f} -> {d['diff']}; {d['reason']}",
                    highlight=False,
                )

    def render(self) -> Any:
        from rich.table import Table

        s = self.snap
        plan = s.get("plan") or {}
        t = Table(title=f"infadapter adapt: {s.get('policy', '')} ({s.get('limit_mode', '')})", expand=False)
        for col in ("variant", "cores", "share", "capacity req/s"):
            t.add_column(col)
        for v in plan.get("variants", []):
            t.add_row(v["name"], f"{v['cores']:g}", f"{v['share']:.0%}", f"{v['capacity']:.1f}")
        mon = s.get("monitor") or {}
        d = s.get("last_decision") or {}
        p99 = s.get("p99_ms")
        t.caption = (
            f"observed {s.get('observed_rps') or 0:.1f} req/s | forecast {s.get('forecast_rps') or 0:.1f} | "
            f"p99 {p99 if p99 is None else round(p99)} ms | cores {plan.get('cores', 0):g} | accuracy "
            f"{plan.get('accuracy', 0):.3f} | source {mon.get('source', '')} {mon.get('warning', '')}\n"
            f"last decision: {d.get('trigger', '')} {d.get('diff', '')}: {d.get('reason', '')}"
        )
        return t
