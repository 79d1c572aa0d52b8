"""Observing the service: request-rate history and p99 latency, from Prometheus or the dispatcher.

Two sources, one answer (:class:`Observation`):

- **Prometheus** (preferred): a server this module starts from ``templates/prometheus/local.yml.j2``
  (1 s scrapes of the dispatcher, the model servers and the adapter) or one given by URL. Queried with
  ``prometheus-api-client``: the per-second request rate over the last 10 minutes and the p99 latency.
- **The dispatcher's own counters** (``GET /admin/stats``): used when no Prometheus binary exists, when
  Prometheus stops answering, or while it has no samples yet. The monitor then says so: the
  observation's ``warning`` and ``source`` fields, which the loop copies into the state file.

With ``--router haproxy`` (docs/routing.md) the router passes its own queries (HAProxy's exporter
names; no latency histogram there, so ``p99_query=None`` and the p99 comes from ``stats()``), and
``stats()`` is the same ``/admin/stats`` shape computed in the adapter from HAProxy's request counter
and request log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infadapter import paths
from infadapter.core import slo
from infadapter.core.control import HISTORY_S, ControlConfig
from infadapter.ports import free_port
from infadapter.processes import pid_alive
from infadapter.render import environment

log = logging.getLogger(__name__)

TEMPLATE_DIR = paths.PROMETHEUS_TEMPLATES

#: PromQL of the live signals (dispatcher metric names; the same names serve on a cluster).
RATE_QUERY = "sum(irate(dispatcher_requests_total[5s]))"
#: Several services: the same rate per service (the dispatcher's ``service`` label: the model name posted to).
SERVICE_RATE_QUERY = 'sum by (service) (irate(dispatcher_requests_total{service!=""}[5s]))'
P99_QUERY = (  # the SLO's percentile (infadapter.core.slo)
    f"1000 * histogram_quantile({slo.QUANTILE:g}, sum by (le) (rate(dispatcher_request_latency_seconds_bucket[30s])))"
)
VARIANT_RATE_QUERY = "sum by (model_name) (rate(:tensorflow:serving:request_count[15s]))"
VARIANT_P99_QUERY = (
    f"histogram_quantile({slo.QUANTILE:g}, sum by (le, model_name) "
    "(rate(:tensorflow:serving:request_latency_bucket[60s]))) / 1000"
)


@dataclass(frozen=True)
class Observation:
    """What the loop sees at one moment: counts only.

    The observed rate, the history a decision keeps and the load it plans for are the control core's to
    compute (:func:`infadapter.core.control.seen`), the same way for every observer and for the simulator.
    """

    now_s: float
    #: Requests counted in each complete second (= req/s), oldest first, ending at the last complete second.
    history_rps: tuple[float, ...]
    p99_ms: float | None
    source: str
    warning: str = ""
    #: Cumulative counters from the dispatcher when known (for SLO attainment over time).
    requests_total: int | None = None
    violations_total: int | None = None
    errors_total: int | None = None
    #: Several services: each one's per-second counts, as ``history_rps`` (which then holds their sum); empty
    #: for one service.
    history_by_service: Mapping[str, tuple[float, ...]] = field(default_factory=dict)


# -- Prometheus process ------------------------------------------------------------------------------
def render_config(
    dispatcher_target: str,
    servers_file: Path,
    adapter_target: str | None = None,
    scrape_interval_s: float = 1.0,
    run_label: str = "local",
    rules_file: Path | None = None,
) -> str:
    """The scrape config for the local stack, rendered from ``templates/prometheus/local.yml.j2``."""
    interval = f"{max(round(scrape_interval_s * 1000), 100)}ms"
    return environment().get_template("prometheus/local.yml.j2").render(
        scrape_interval=interval,
        scrape_timeout=interval,
        dispatcher_target=dispatcher_target,
        adapter_target=adapter_target or "",
        servers_file=str(servers_file),
        run_label=run_label,
        rules_file=str(rules_file) if rules_file else "",
    )


def write_server_targets(servers_file: Path, targets: Mapping[str, Sequence[str]]) -> None:
    """Rewrite the file-discovery list of model servers (variant -> ["host:port", ...]) atomically."""
    groups = [{"targets": list(t), "labels": {"variant": name}} for name, t in sorted(targets.items()) if t]
    tmp = servers_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups))
    os.replace(tmp, servers_file)


def prometheus_binary() -> str | None:
    """Path of the ``prometheus`` binary (``INFADAPTER_PROMETHEUS_BIN`` overrides), or None."""
    explicit = os.environ.get("INFADAPTER_PROMETHEUS_BIN")
    if explicit:
        return explicit if Path(explicit).exists() else None
    return shutil.which("prometheus")


@dataclass
class PrometheusServer:
    """A Prometheus process owned by the adapter, storing its data in the run folder."""

    run_dir: Path
    dispatcher_target: str
    adapter_target: str | None = None
    scrape_interval_s: float = 1.0
    port: int = 0
    pid: int | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def servers_file(self) -> Path:
        return self.run_dir / "prometheus" / "servers.json"

    def start(self, timeout_s: float = 30.0) -> str:
        """Render the config, start Prometheus on a free loopback port, wait until ready; its URL."""
        binary = prometheus_binary()
        if binary is None:
            raise FileNotFoundError("prometheus binary not found (apt-get install prometheus)")
        pdir = self.run_dir / "prometheus"
        pdir.mkdir(parents=True, exist_ok=True)
        if not self.servers_file.exists():
            write_server_targets(self.servers_file, {})
        cfg = pdir / "prometheus.yml"
        rules = pdir / "rules.yml"  # the SLO recording rules and alerts (infadapter.observe.alerts)
        from infadapter.observe.alerts import render_rules

        rules.write_text(render_rules())
        cfg.write_text(render_config(self.dispatcher_target, self.servers_file, self.adapter_target,
                                     self.scrape_interval_s, self.run_dir.name, rules_file=rules))
        self.port = self.port or free_port()
        logf = (pdir / "prometheus.log").open("ab")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={cfg}", f"--storage.tsdb.path={pdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1d",
             "--web.enable-lifecycle"],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        logf.close()
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout_s
        import requests

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}; see {pdir / 'prometheus.log'}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self.url
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"prometheus did not become ready in {timeout_s:g} s")

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return pid_alive(self.pid)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop Prometheus (SIGTERM, then SIGKILL); idempotent."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        elif pid_alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)  # type: ignore[arg-type]
            deadline = time.monotonic() + timeout_s
            while pid_alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)  # type: ignore[arg-type]
        self.proc = None


# -- readers ---------------------------------------------------------------------------------------
class PrometheusReader:
    """Queries one Prometheus server; every call raises on failure (the Monitor falls back)."""

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        from prometheus_api_client import PrometheusConnect
        from urllib3.util.retry import Retry

        self.url = url
        # No retries: a dead Prometheus must be noticed within one observation, not after backoff.
        self._prom = PrometheusConnect(url=url, disable_ssl=True, retry=Retry(total=0), timeout=timeout_s)

    def history(self, now_s: float, seconds: int = HISTORY_S, query: str = RATE_QUERY) -> dict[int, float]:
        return self.history_by(now_s, seconds, query, None).get("", {})

    def history_by(self, now_s: float, seconds: int, query: str, label: str | None) -> dict[str, dict[int, float]]:
        """:meth:`history` of each value of ``label`` (None: every series summed under "")."""
        end = math.floor(now_s) - 1
        start = max(end - seconds + 1, end - 10_999)  # Prometheus caps a range at 11,000 points
        data = self._prom.custom_query_range(
            query, start_time=_dt(start), end_time=_dt(end), step="1s"
        )
        out: dict[str, dict[int, float]] = {}
        for series in data:
            key = str(series.get("metric", {}).get(label, "")) if label else ""
            points = out.setdefault(key, {})
            for t, v in series.get("values", []):
                fv = float(v)
                if math.isfinite(fv):
                    sec = round(float(t))
                    points[sec] = points.get(sec, 0.0) + fv
        return out

    def scalar(self, query: str) -> float | None:
        data = self._prom.custom_query(query)
        for series in data:
            v = float(series["value"][1])
            if math.isfinite(v):
                return v
        return None

    def by_label(self, query: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for series in self._prom.custom_query(query):
            name = series.get("metric", {}).get(label)
            v = float(series["value"][1])
            if name is not None and math.isfinite(v):
                out[name] = v
        return out


def history_from_stats(stats: Mapping[str, Any], now_s: float, seconds: int = HISTORY_S) -> dict[int, float]:
    """The dispatcher's ``per_second`` list as {unix_second: count} for complete seconds."""
    end = math.floor(now_s) - 1
    out: dict[int, float] = {}
    for item in stats.get("per_second", []) or []:
        try:
            t, c = int(item[0]), float(item[1])
        except (TypeError, ValueError, IndexError):
            continue
        if end - seconds < t <= end:
            out[t] = out.get(t, 0.0) + c
    return out


def series(points: Mapping[int, float], now_s: float, start_s: float, seconds: int = HISTORY_S) -> tuple[float, ...]:
    """Dense per-second series ending at the last complete second, from ``start_s`` at the earliest."""
    if start_s > now_s:  # nothing observed yet counts (a load that has not started)
        return ()
    end = math.floor(now_s) - 1
    first = max(end - seconds + 1, math.floor(start_s))
    return tuple(float(points.get(t, 0.0)) for t in range(first, end + 1))


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=UTC)


# -- the monitor -----------------------------------------------------------------------------------
class Monitor:
    """Observes through Prometheus when it answers, else through the dispatcher's counters.

    ``stats`` is a callable returning the dispatcher's ``/admin/stats`` JSON (``DispatcherClient.stats``).
    ``start_s`` is when the service came up: seconds before it are not history (they would read as 0).
    ``load_pending``: the run sends the load itself and it has not started: no second counts as history
    until :meth:`load_starts` (the first decision, made before it, plans from the window's history before,
    as the simulator's does, not from the zeros of the seconds spent bringing the servers up).
    """

    def __init__(
        self,
        stats: Callable[[], Mapping[str, Any]],
        prometheus_url: str | None = None,
        start_s: float | None = None,
        rate_window_s: int = ControlConfig.rate_window_s,
        clock: Callable[[], float] = time.time,
        rate_query: str = RATE_QUERY,
        p99_query: str | None = P99_QUERY,
        services: Sequence[str] = (),
        load_pending: bool = False,
    ) -> None:
        # The router's PromQL (infadapter/serving/router.py): HAProxy has its own metric names and no
        # latency histogram (p99_query None: the p99 comes from stats(), its request log).
        self.rate_query = rate_query
        self.p99_query = p99_query
        self._stats = stats
        self.reader = PrometheusReader(prometheus_url) if prometheus_url else None
        self.prometheus_url = prometheus_url
        self.start_s = math.inf if load_pending else start_s if start_s is not None else clock()
        #: The newest seconds taken from the router's exact counts (the loop's rate window: ControlConfig's).
        self.rate_window_s = rate_window_s
        self.clock = clock
        self.warning = "" if prometheus_url else "no Prometheus: reading the dispatcher's counters"
        self.source = "prometheus" if prometheus_url else "dispatcher"
        #: Several services: each one's counts too (Observation.history_by_service), by the dispatcher's label.
        self.services = tuple(services)

    def load_starts(self, now_s: float | None = None) -> None:
        """The load this run sends starts now: the seconds before it (the first decision's servers coming up)
        are not its history; the window's seconds before it (``ControlConfig.history_before``) stand in for
        them, as at the first decision. Without this, a minute of those zeros drives the next forecast down."""
        self.start_s = self.clock() if now_s is None else now_s

    def observe(self, now_s: float | None = None) -> Observation:
        now = self.clock() if now_s is None else now_s
        stats: Mapping[str, Any] | None = None
        points: dict[int, float] | None = None
        p99: float | None = None
        source, warning = "dispatcher", ""
        if self.reader is not None:
            try:
                points = self.reader.history(now, query=self.rate_query)
                p99 = self.reader.scalar(self.p99_query) if self.p99_query else None
                if not points:
                    points = None
                    warning = "Prometheus has no samples yet: reading the dispatcher's counters"
                else:
                    source = "prometheus"
            except Exception as exc:  # any failure of the HTTP client or the answer's shape
                points = None
                warning = f"Prometheus at {self.prometheus_url} does not answer ({type(exc).__name__}): " \
                          "reading the dispatcher's counters"
        else:
            warning = "no Prometheus: reading the dispatcher's counters"
        try:
            stats = self._stats()
        except Exception as exc:
            if points is None:
                raise
            log.warning("dispatcher stats unavailable: %s", exc)
        if p99 is None and self.p99_query is None and stats is not None:
            p99 = _float_or_none(stats.get("latency_ms_p99_60s"))
        if points is None:
            points = history_from_stats(stats or {}, now)
            if p99 is None and stats is not None:
                p99 = _float_or_none(stats.get("latency_ms_p99_60s"))
        elif stats is not None:
            # Prometheus's newest seconds lag its 1-s scrapes (the live loop saw a burst 1.5-2 s late);
            # the router counted those seconds exactly, so they decide how fast an overload is seen.
            points.update(history_from_stats(stats, now, seconds=self.rate_window_s))
        if warning and warning != self.warning:
            log.warning("%s", warning)
        self.warning, self.source = warning, source
        by_service = self._by_service(now, stats, source == "prometheus") if self.services else {}
        return Observation(
            history_by_service=by_service,
            now_s=now,
            history_rps=series(points, now, self.start_s),
            p99_ms=p99,
            source=source,
            warning=warning,
            requests_total=_int_or_none((stats or {}).get("requests_total")),
            violations_total=_int_or_none((stats or {}).get("violations_total")),
            errors_total=_errors(stats),
        )

    def _by_service(self, now: float, stats: Mapping[str, Any] | None, prometheus: bool
                    ) -> dict[str, tuple[float, ...]]:
        """Each service's per-second counts, from the source the total came from (the same rules: Prometheus,
        its newest seconds from the dispatcher's exact counts; else the dispatcher's)."""
        from_stats = (stats or {}).get("per_second_by_service") or {}
        points: dict[str, dict[int, float]] = {}
        if prometheus and self.reader is not None:
            try:
                points = self.reader.history_by(now, HISTORY_S, SERVICE_RATE_QUERY, "service")
            except Exception as exc:  # the total came from it a moment ago: say so, use the dispatcher's
                log.debug("per-service rates from Prometheus failed: %s", exc)
                prometheus = False
        out = {}
        for name in self.services:
            own = {"per_second": from_stats.get(name, [])}
            if prometheus and name in points:
                pts = points[name]
                pts.update(history_from_stats(own, now, seconds=self.rate_window_s))
            else:
                pts = history_from_stats(own, now)
            out[name] = series(pts, now, self.start_s)
        return out

    def per_variant(self) -> dict[str, dict[str, float]]:
        """Per-variant req/s and p99 ms from Prometheus (empty without it)."""
        if self.reader is None:
            return {}
        try:
            rates = self.reader.by_label(VARIANT_RATE_QUERY, "model_name")
            p99s = self.reader.by_label(VARIANT_P99_QUERY, "model_name")
        except Exception:
            return {}
        names = set(rates) | set(p99s)
        return {n: {"rps": rates.get(n, 0.0), "p99_ms": p99s.get(n, float("nan"))} for n in names}


def _float_or_none(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int_or_none(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _errors(stats: Mapping[str, Any] | None) -> int | None:
    if not stats or not isinstance(stats.get("by_code"), Mapping):
        return None
    return sum(int(c) for code, c in stats["by_code"].items() if not str(code).startswith("2"))
