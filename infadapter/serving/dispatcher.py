"""The dispatcher: one TF-Serving-shaped endpoint that splits traffic over model variants.

``POST /v1/models/<any>:predict`` is forwarded, body unchanged, to a backend chosen by smooth weighted
round robin (:mod:`infadapter.serving.wrr`) over the plan's shares; the model name in the path is
rewritten to the backend's model, and the response header ``X-Infadapter-Variant`` names the variant
that answered. Several services (backends with a ``service``): ``POST /v1/models/<service>:predict`` goes to
that service's backends only, by that service's shares (each service has its own route table: its own
picker, standby, retries and spills); another name is a 404. Without services any name goes to the one table.
The control loop sets backends and weights through a small admin API (bearer token,
constant-time comparison) with one atomic swap: a request already forwarded keeps its backend, so
removing a backend never drops its in-flight requests (make-before-break is the loop's job; this
side only guarantees that nothing in flight is lost).

A backend that refuses, answers 5xx or times out is ejected for ``eject_s`` seconds and the request
is retried once on another variant (never on the same one; a variant with no share, a plan's standby
or one kept warm, first: idle capacity). A backend with ``spill_at`` requests in flight sends a new
request to such an idle variant with room instead (it would wait past the SLO in that queue). A 503 (a
model server shedding load past its SLO-sized queue) ejects too: keeping the variant in was tried on the
main job and did not do better (docs/dispatcher.md).
In-flight requests are bounded (a clean 503 ``{"error": "overloaded"}`` past the bound), bodies too
(413). Prometheus metrics at ``/metrics``; ``/admin/stats`` gives the same picture as JSON for a control
loop that runs without Prometheus.

Hostile input: the body is forwarded unparsed (the model server answers malformed JSON, shapes and
images with its own 400, passed through unchanged and never retried); this side refuses what would
reach the backend's request line or headers (a version that is not a number, a content type that is
not printable ASCII), bodies over the limit (413) and bodies not complete within ``body_timeout_s``
(408; a slow client is read before it takes an in-flight slot, so it never blocks others) and request
heads not complete within ``header_timeout_s`` (408 and the connection closed, see
:mod:`infadapter.serving.headguard`). Every
other path or method is a JSON 404/405, never a plain-text page.

Everything lives in one :class:`Dispatcher` object (its state, its Prometheus registry, its client
session); nothing is global, so tests run several in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import os
import re
import secrets
import signal
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from infadapter.core import slo
from infadapter.errors import BackendUnavailable, BadInput
from infadapter.serving.headguard import HeadDeadlineRunner
from infadapter.serving.upstream import UpstreamError, UpstreamPool, UpstreamTimeout
from infadapter.serving.wrr import SmoothWRR, integer_weights

VARIANT_HEADER = "X-Infadapter-Variant"
#: Label value of requests no variant answered (overloaded, no backend, bad request).
NO_VARIANT = "none"
_STATS_WINDOW_S = 60
_PER_SECOND_KEEP_S = 900
# Variant and model names travel in URLs and headers: a conservative token (Kubernetes names fit).
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_VERSION_RE = re.compile(r"[0-9]{1,19}")  # TF Serving versions are int64
_CONTENT_TYPE_RE = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,200}")


# -- backends -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackendSpec:
    """One variant the dispatcher may forward to."""

    name: str  # variant name, reported in X-Infadapter-Variant and the metrics' model label
    url: str  # base URL of a TF-Serving REST server, e.g. http://127.0.0.1:9001
    model: str  # model name on that server (the public name in the path is rewritten to it)
    weight: float  # relative share of traffic (>= 0; normalized over all backends)
    #: Requests in flight at this variant past which a new one goes to an idle variant (no share) with room
    #: instead: it would wait past the SLO here (None: never spilled).
    spill_at: int | None = None
    #: The service (public model name) this variant serves; its weight is a share of that service's traffic
    #: ("": one service, any model name).
    service: str = ""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.spill_at is None:
            del out["spill_at"]
        if not self.service:
            del out["service"]
        return out


def parse_backends(payload: Any) -> tuple[BackendSpec, ...]:
    """Validate ``{"backends": [{"name", "url", "model"?, "weight", "spill_at"?, "service"?}, ...]}`` (or the
    bare list).

    Raises :class:`BadInput` naming the field and the fix. ``model`` defaults to ``name``. ``service``: every
    backend names one or none does; the weights are then shares within each service.
    """
    items = payload.get("backends") if isinstance(payload, Mapping) else payload
    if not isinstance(items, list):
        raise BadInput('backends: expected {"backends": [{"name": ..., "url": ..., "weight": ...}, ...]}')
    specs: list[BackendSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"backends[{i}]"
        if not isinstance(item, Mapping):
            raise BadInput(f"{where}: expected an object with name, url and weight")
        unknown = set(item) - {"name", "url", "model", "weight", "spill_at", "service"}
        if unknown:
            raise BadInput(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; allowed: name, url, model, "
                           "weight, spill_at, service")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise BadInput(
                f"{where}.name: a variant name of letters, digits, '.', '_' and '-' is required, got {name!r}"
            )
        if name in seen:
            raise BadInput(f"{where}.name: {name!r} appears twice; names must be unique")
        seen.add(name)
        url = item.get("url")
        parts = urlsplit(url) if isinstance(url, str) else None
        if not isinstance(url, str) or not url.isascii() or not url.isprintable() or " " in url:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadInput(f"{where}.url: expected an http(s) base URL such as http://127.0.0.1:9001, got {url!r}")
        if parts.query or parts.fragment:
            raise BadInput(f"{where}.url: a base URL without query or fragment is required, got {url!r}")
        model = item.get("model", name)
        if not isinstance(model, str) or not _NAME_RE.fullmatch(model):
            raise BadInput(
                f"{where}.model: a model name of letters, digits, '.', '_' and '-' is required, got {model!r}"
            )
        weight = item.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
            raise BadInput(f"{where}.weight: a number >= 0 is required, got {weight!r}")
        spill_at = item.get("spill_at")
        if spill_at is not None and (isinstance(spill_at, bool) or not isinstance(spill_at, int) or spill_at < 1):
            raise BadInput(f"{where}.spill_at: a whole number of requests >= 1 (or null) is required, got {spill_at!r}")
        service = item.get("service", "")
        if service is None:
            service = ""
        if not isinstance(service, str) or (service and not _NAME_RE.fullmatch(service)):
            raise BadInput(f"{where}.service: a service name of letters, digits, '.', '_' and '-' (the model name "
                           f"clients post to) is required, got {service!r}")
        specs.append(BackendSpec(name=name, url=url.rstrip("/"), model=model, weight=float(weight), spill_at=spill_at,
                                 service=service))
    services = {s.service for s in specs}
    if len(services) > 1 and "" in services:
        i = next(i for i, s in enumerate(specs) if not s.service)
        raise BadInput(f"backends[{i}].service: give every backend its service, or none (one service)")
    for svc in sorted(services):
        if specs and sum(s.weight for s in specs if s.service == svc) <= 0:
            what = f" of service {svc}" if svc else ""
            raise BadInput(f"backends: the weights{what} must have a positive sum (at least one backend with "
                           "weight > 0)")
    return tuple(specs)


def _origin(url: str) -> tuple[str, int] | None:
    """``(host, port)`` of a plain-HTTP base URL (served by an :class:`UpstreamPool`); None for https."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        return None
    return parts.hostname, parts.port or 80


class _Routing:
    """An immutable backend set with its own picker; replaced whole on every change."""

    __slots__ = ("by_service", "generation", "index", "paths", "picker", "pools", "predict_urls", "shares", "specs",
                 "standby")

    def __init__(
        self, specs: tuple[BackendSpec, ...], generation: int, pools: Mapping[tuple[str, int], UpstreamPool],
        split: bool = True,
    ) -> None:
        self.specs = specs
        self.generation = generation
        # Several services: one table per service (its own picker, shares and standby), chosen by the model
        # name of the request; the table of them all is then used for nothing but the admin view.
        services = dict.fromkeys(s.service for s in specs if s.service) if split else {}
        self.by_service: dict[str, _Routing] = {
            svc: _Routing(tuple(s for s in specs if s.service == svc), generation, pools, split=False)
            for svc in services}
        self.index = {s.name: i for i, s in enumerate(specs)}
        total = sum(s.weight for s in specs)
        self.shares = tuple(s.weight / total for s in specs) if total > 0 else tuple(0.0 for _ in specs)
        self.picker = SmoothWRR(integer_weights([s.weight for s in specs])) if total > 0 else None
        # Backends with no share (a plan's standby, a variant kept warm): idle capacity that retries go to first.
        self.standby = tuple(i for i, s in enumerate(specs) if s.weight == 0)
        # https backends (no pool) go through aiohttp with the full URL; http ones through their pool.
        self.predict_urls = tuple(f"{s.url}/v1/models/{s.model}" for s in specs)
        self.paths = tuple(f"{urlsplit(s.url).path.rstrip('/')}/v1/models/{s.model}" for s in specs)
        self.pools = tuple(pools.get(_origin(s.url)) if _origin(s.url) else None for s in specs)  # type: ignore[arg-type]

    def share_of(self) -> dict[str, float]:
        """Each variant's share of its own service's traffic (of all traffic without services)."""
        tables = list(self.by_service.values()) or [self]
        return {s.name: share for t in tables for s, share in zip(t.specs, t.shares, strict=True)}

    def table(self, model: str) -> _Routing | None:
        """The route table of a request for ``model``: its service's (None: no such service), or the one."""
        if not self.by_service:
            return self
        return self.by_service.get(model)


# -- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DispatcherConfig:
    """Settings of one dispatcher process (validated on creation; errors name the flag)."""

    host: str = "127.0.0.1"  # loopback by default: the admin API must not face the network
    port: int = 8500  # 0 picks a free port (tests)
    admin_token: str = field(default="", repr=False)
    slo_ms: float = 750.0  # latency SLO: histogram buckets and the violation count in /admin/stats
    backend_timeout_s: float = 5.0  # one forward attempt; past it the backend is ejected
    eject_s: float = 10.0  # how long a failed backend gets no traffic
    max_in_flight: int = 1024  # requests being served at once; more get 503 overloaded
    max_body_bytes: int = 8 * 1024 * 1024  # larger predict bodies get 413
    body_timeout_s: float = 30.0  # a predict body not complete after this long gets 408
    header_timeout_s: float = 5.0  # a request head (line and headers) not complete after this long gets 408
    model_name: str = ""  # the public model name; others get 404 (empty: any name is forwarded)
    shutdown_timeout_s: float = 30.0  # on SIGTERM/SIGINT, how long in-flight requests may finish

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.port <= 65535, "--port: must be 0..65535"),
            (bool(self.admin_token), "--admin-token-file: the admin token must not be empty"),
            (self.slo_ms > 0, "--slo-ms: must be > 0"),
            (self.backend_timeout_s > 0, "--backend-timeout-s: must be > 0"),
            (self.eject_s >= 0, "--eject-s: must be >= 0"),
            (self.max_in_flight >= 1, "--max-in-flight: must be >= 1"),
            (self.max_body_bytes >= 1024, "--max-body-bytes: must be >= 1024"),
            (self.body_timeout_s > 0, "--body-timeout-s: must be > 0"),
            (self.header_timeout_s > 0, "--header-timeout: must be > 0"),
            (self.shutdown_timeout_s >= 0, "--shutdown-timeout-s: must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise BadInput(message)


def latency_buckets(slo_ms: float) -> tuple[float, ...]:
    """Histogram buckets (seconds) from 5 ms to 2x the SLO, dense around the SLO itself."""
    slo = slo_ms / 1000.0
    fixed = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
    around = [slo * f for f in (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0)]
    return tuple(sorted({round(b, 6) for b in fixed + around if b <= 2 * slo + 1e-9}))


# -- statistics for the control loop ------------------------------------------------------------
# Latency bins of /admin/stats: 5% wide from 0.05 ms to past 60 s (a tail percentile is read to within
# one bin, i.e. 5%, which is what a control loop needs; exact values come from Prometheus' histogram).
_BIN_MIN_MS = 0.05
_BIN_GROWTH = 1.05
_LOG_GROWTH = math.log(_BIN_GROWTH)
_N_BINS = math.ceil(math.log(120_000 / _BIN_MIN_MS) / _LOG_GROWTH) + 2
#: Upper edge (ms) of each bin; bin 0 holds everything up to _BIN_MIN_MS.
_BIN_EDGES_MS = tuple(_BIN_MIN_MS * _BIN_GROWTH**i for i in range(_N_BINS))


def _latency_bin(latency_ms: float) -> int:
    if latency_ms <= _BIN_MIN_MS:
        return 0
    return min(_N_BINS - 1, int(math.log(latency_ms / _BIN_MIN_MS) / _LOG_GROWTH) + 1)


class RequestStats:
    """Counters behind ``GET /admin/stats``; time is passed in (``now_s``: unix seconds).

    Cheap at any rate: each request adds one to a fixed-size per-second row (a count per latency bin
    and a violation count) in a ring of :data:`_STATS_WINDOW_S` rows and to the window's running
    totals; a row leaves the totals once, when it expires. So :meth:`done` is O(1) and
    :meth:`snapshot` reads fixed-width totals: nothing grows with the request rate.
    """

    def __init__(self, slo_ms: float, start_s: float) -> None:
        self.slo_ms = slo_ms
        self.start_s = start_s
        self.requests_total = 0
        self.violations_total = 0
        self.by_code: dict[str, int] = {}
        self.by_variant: dict[str, int] = {}
        self._per_second: deque[list[int]] = deque()  # [unix_second, arrivals], seconds in order
        # The last 60 seconds of completions: row i holds second _row_sec[i] (i = second % 60).
        self._row_sec = [-1] * _STATS_WINDOW_S
        self._rows = [[0] * _N_BINS for _ in range(_STATS_WINDOW_S)]
        self._row_violations = [0] * _STATS_WINDOW_S
        self._win = [0] * _N_BINS  # the sum of the live rows
        self._win_violations = 0
        # Several services: each one's arrivals per second and its totals (the loop's observed rate per service).
        self._per_second_by_service: dict[str, deque[list[int]]] = {}
        self.by_service: dict[str, dict[str, int]] = {}

    def arrival(self, now_s: float, service: str = "") -> None:
        sec = int(now_s)
        self.requests_total += 1
        self._count(self._per_second, sec)
        if service:
            self._count(self._per_second_by_service.setdefault(service, deque()), sec)
            totals = self.by_service.setdefault(service, {"requests_total": 0, "violations_total": 0})
            totals["requests_total"] += 1

    @staticmethod
    def _count(ps: deque[list[int]], sec: int) -> None:
        if ps and ps[-1][0] == sec:
            ps[-1][1] += 1
        else:
            ps.append([sec, 1])
            while ps[0][0] <= sec - _PER_SECOND_KEEP_S:
                ps.popleft()

    def done(self, now_s: float, latency_ms: float, code: int, variant: str, service: str = "") -> None:
        key = str(code)
        self.by_code[key] = self.by_code.get(key, 0) + 1
        if code == 200:
            self.by_variant[variant] = self.by_variant.get(variant, 0) + 1
        # A violation: too slow, or failed on the serving side (4xx are the client's own fault).
        violated = slo.late(latency_ms, self.slo_ms) or slo.server_failed(code)
        if violated:
            self.violations_total += 1
            if service:
                self.by_service.setdefault(service, {"requests_total": 0, "violations_total": 0})[
                    "violations_total"] += 1
        sec = int(now_s)
        i = sec % _STATS_WINDOW_S
        if self._row_sec[i] != sec:
            if self._row_sec[i] > sec:  # older than the window (completions may come out of order)
                return
            self._expire(i)
            self._row_sec[i] = sec
        b = _latency_bin(latency_ms)
        self._rows[i][b] += 1
        self._win[b] += 1
        if violated:
            self._row_violations[i] += 1
            self._win_violations += 1

    def _expire(self, i: int) -> None:
        """Take row i out of the window's totals and clear it."""
        if self._row_sec[i] < 0:
            return
        row, win = self._rows[i], self._win
        for b, c in enumerate(row):
            if c:
                win[b] -= c
                row[b] = 0
        self._win_violations -= self._row_violations[i]
        self._row_violations[i] = 0
        self._row_sec[i] = -1

    def _window(self, now_s: float) -> tuple[list[int], int]:
        """Latency bin counts and violations of completions in the last 60 s (by whole seconds)."""
        low = math.floor(now_s - _STATS_WINDOW_S) - 1  # seconds from now - 60 s on (as many as the ring holds)
        for i, sec in enumerate(self._row_sec):
            if 0 <= sec <= low:
                self._expire(i)
        return self._win, self._win_violations

    @staticmethod
    def _quantile(counts: list[int], n: int, q: float) -> float:
        """The q-quantile in ms, interpolated linearly inside its bin (as Prometheus' histogram_quantile)."""
        if n == 0:
            return 0.0
        rank = q * n
        cum = 0
        for b, c in enumerate(counts):
            if c and cum + c >= rank:
                low = _BIN_EDGES_MS[b - 1] if b > 0 else 0.0
                return low + (_BIN_EDGES_MS[b] - low) * (rank - cum) / c
            cum += c
        return _BIN_EDGES_MS[-1]

    def snapshot(self, now_s: float) -> dict[str, Any]:
        """JSON-ready statistics: totals, the last 900 complete seconds, the last 60 s' tail latency."""
        now_sec = int(now_s)
        first = max(int(self.start_s), now_sec - _PER_SECOND_KEEP_S)

        def dense(ps: deque[list[int]]) -> list[list[int]]:
            counts = {sec: n for sec, n in ps}
            return [[sec, counts.get(sec, 0)] for sec in range(first, now_sec)]

        per_second = dense(self._per_second)
        bins, violations = self._window(now_s)
        n = sum(bins)
        extra: dict[str, Any] = {}
        if self.by_service:  # several services: the same per-second counts and totals, per service
            extra = {"per_second_by_service": {k: dense(ps) for k, ps in self._per_second_by_service.items()},
                     "by_service": {k: dict(v) for k, v in self.by_service.items()}}
        return {
            **extra,
            "requests_total": self.requests_total,
            "violations_total": self.violations_total,
            "by_code": dict(self.by_code),
            "by_variant": dict(self.by_variant),
            "per_second": per_second,
            "requests_60s": n,
            "latency_ms_p50_60s": round(self._quantile(bins, n, 0.50), 3),
            "latency_ms_p99_60s": round(self._quantile(bins, n, slo.QUANTILE), 3),
            "violations_60s": violations,
            "slo_ms": self.slo_ms,
        }


# -- the server ---------------------------------------------------------------------------------
class _Attempt(Exception):
    """A forward attempt that failed on the backend's side (ejects it, allows one retry)."""

    def __init__(self, status: int, message: str, body: bytes | None = None, content_type: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.content_type = content_type


class Dispatcher:
    """The dispatcher's state and its aiohttp application (see the module doc)."""

    def __init__(
        self,
        config: DispatcherConfig,
        backends: Sequence[BackendSpec] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._clock = clock
        self._token_bytes = config.admin_token.encode("utf-8", "surrogateescape")
        self._pools: dict[tuple[str, int], UpstreamPool] = {}
        self._routing = self._make_routing(tuple(backends), 0)
        self._ejected: dict[str, float] = {}  # variant name -> monotonic time it may return
        self._in_flight = 0
        self._busy: dict[str, int] = {}  # variant name -> its requests in flight (for spill_at)
        self._standby_turn = 0  # round robin over the idle backends that retries and spills go to
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(total=config.backend_timeout_s)
        self.stats = RequestStats(config.slo_ms, clock())
        self.registry = CollectorRegistry(auto_describe=True)
        self._m_requests = Counter(
            "dispatcher_requests",
            "Predict requests by variant, HTTP code and service (the model name posted to; empty for one service)",
            ["model", "code", "service"],
            registry=self.registry,
        )
        self._m_latency = Histogram(
            "dispatcher_request_latency_seconds",
            "End-to-end latency of predict requests through the dispatcher",
            ["model", "service"],
            buckets=latency_buckets(config.slo_ms),
            registry=self.registry,
        )
        self._m_in_flight = Gauge("dispatcher_in_flight", "Predict requests being served", registry=self.registry)
        # Read at scrape time: no locked increment and decrement on every request.
        self._m_in_flight.set_function(lambda: self._in_flight)
        # The SLO's good events for the recording rules (templates/prometheus/slo-rules.yml.j2): answered
        # without a server-side error (< 500) within the SLO. Total events: dispatcher_requests_total.
        self._m_good = Counter(
            "dispatcher_slo_good_requests",
            "Predict requests answered below 500 within the latency SLO",
            registry=self.registry,
        )
        self._slo_s = config.slo_ms / 1000.0
        Gauge(
            "dispatcher_slo_seconds", "The latency SLO the good requests are counted against", registry=self.registry
        ).set(self._slo_s)
        self._m_weight = Gauge(
            "dispatcher_backend_weight", "Share of traffic per variant (0..1)", ["model"], registry=self.registry
        )
        self._m_ejections = Counter(
            "dispatcher_backend_ejections",
            "Times a variant was ejected after a failure",
            ["model"],
            registry=self.registry,
        )
        self._m_shed = Counter(
            "dispatcher_backend_shed",
            "Attempts a variant answered 503 (its queue full), retried elsewhere",
            ["model"],
            registry=self.registry,
        )
        self._m_spilled = Counter(
            "dispatcher_backend_spilled",
            "Requests sent to an idle variant because this one had spill_at requests in flight",
            ["model"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._publish_weights(self._routing)

    # -- routing state ----------------------------------------------------------------------
    @property
    def backends(self) -> tuple[BackendSpec, ...]:
        return self._routing.specs

    def set_backends(self, specs: Sequence[BackendSpec]) -> int:
        """Replace backends and weights in one step; returns the new generation number.

        Requests already forwarded hold their backend and finish there; new requests see only the
        new set. (A single assignment on the event loop's thread: no request sees a mix.)
        """
        old = self._routing
        new = self._make_routing(tuple(specs), old.generation + 1)
        names = set(new.index)
        self._ejected = {n: t for n, t in self._ejected.items() if n in names}
        self._routing = new
        # Pools of origins no longer used close their idle connections now; connections still
        # carrying a request close when it completes (the request itself is not disturbed).
        in_use = {_origin(s.url) for s in new.specs}
        for origin in [o for o in self._pools if o not in in_use]:
            self._pools.pop(origin).close()
        self._publish_weights(new, old)
        return new.generation

    def _make_routing(self, specs: tuple[BackendSpec, ...], generation: int) -> _Routing:
        for spec in specs:
            origin = _origin(spec.url)
            if origin is not None and origin not in self._pools:
                self._pools[origin] = UpstreamPool(*origin, max_idle=self.config.max_in_flight)
        return _Routing(specs, generation, self._pools)

    def _publish_weights(self, new: _Routing, old: _Routing | None = None) -> None:
        if old is not None:
            for spec in old.specs:
                if spec.name not in new.index:
                    with contextlib.suppress(KeyError):
                        self._m_weight.remove(spec.name)
        for name, share in new.share_of().items():
            self._m_weight.labels(name).set(share)

    def _choose(self, routing: _Routing, avoid: str | None = None) -> int | None:
        picker = routing.picker
        if picker is None:
            return None
        exclude: set[int] = set()
        if self._ejected:
            now = time.monotonic()
            for name, until in list(self._ejected.items()):
                if until <= now:
                    del self._ejected[name]
                elif name in routing.index:
                    exclude.add(routing.index[name])
        avoid_i = routing.index.get(avoid) if avoid is not None else None
        if avoid_i is not None:
            exclude.add(avoid_i)
        choice = picker.pick(exclude)
        if choice is None and exclude:
            # Every other weighted backend is ejected: try them anyway rather than fail (nginx does
            # too), but still never the one that just failed.
            choice = picker.pick(() if avoid_i is None else (avoid_i,))
        return choice

    def _choose_retry(self, routing: _Routing, avoid: str) -> int | None:
        # An idle backend (no share) first: a plan keeps one exactly to take what a full server sheds.
        idle = self._idle(routing, avoid)
        return idle if idle is not None else self._choose(routing, avoid=avoid)

    def _idle(self, routing: _Routing, avoid: str, room: bool = False) -> int | None:
        """An idle backend (no share), round robin, not ejected, not ``avoid``; with ``room``, only one below
        its own spill_at."""
        now = time.monotonic()
        idle = [i for i in routing.standby
                if routing.specs[i].name != avoid and self._ejected.get(routing.specs[i].name, 0.0) <= now
                and not (room and self._full(routing.specs[i]))]
        if not idle:
            return None
        self._standby_turn += 1
        return idle[self._standby_turn % len(idle)]

    def _full(self, spec: BackendSpec) -> bool:
        return spec.spill_at is not None and self._busy.get(spec.name, 0) >= spec.spill_at

    def _spill(self, routing: _Routing, i: int) -> int:
        """The backend a new request goes to: ``i``, or an idle one with room when ``i`` has spill_at requests in
        flight (a queue that long would hold this one past the SLO; the idle one serves it at once)."""
        spec = routing.specs[i]
        if not routing.standby or not self._full(spec):
            return i
        idle = self._idle(routing, spec.name, room=True)
        if idle is None:
            return i
        self._m_spilled.labels(spec.name).inc()
        return idle

    def _failed(self, name: str, attempt: _Attempt) -> None:
        if attempt.status == 503:
            self._m_shed.labels(name).inc()
        self._eject(name)

    def _eject(self, name: str) -> None:
        if self.config.eject_s > 0:
            self._ejected[name] = time.monotonic() + self.config.eject_s
        self._m_ejections.labels(name).inc()

    # -- metrics helpers --------------------------------------------------------------------
    def _finish(self, variant: str, code: int, started: float, service: str = "") -> None:
        latency = time.perf_counter() - started
        key = (variant, code, service)
        children = self._children.get(key)
        if children is None:
            children = (self._m_requests.labels(variant, str(code), service), self._m_latency.labels(variant, service))
            self._children[key] = children
        children[0].inc()
        children[1].observe(latency)
        if code < 500 and latency <= self._slo_s:
            self._m_good.inc()
        self.stats.done(self._clock(), latency * 1000.0, code, variant, service)

    # -- public predict API -----------------------------------------------------------------
    async def _predict(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        model = request.match_info["name"]
        # A service's request is counted as that service's from its arrival on (the loop's rate per service).
        service = model if model in self._routing.by_service else ""
        self.stats.arrival(self._clock(), service)
        if self._in_flight >= self.config.max_in_flight:
            self._finish(NO_VARIANT, 503, started, service)
            return _error(503, "overloaded")
        public = self.config.model_name
        if public and request.match_info["name"] != public:
            self._finish(NO_VARIANT, 404, started)
            return _error(404, f"Servable not found for request: Latest({request.match_info['name'][:100]})")
        version = request.match_info.get("version")
        if version is not None and not _VERSION_RE.fullmatch(version):
            self._finish(NO_VARIANT, 404, started, service)
            return _error(404, "Malformed request: the version in /versions/V must be a number")
        # Read the whole body before taking an in-flight slot, under a deadline: a client that
        # sends half a request holds only its own connection, and only until the deadline.
        body = await self._read_body(request, started, service)
        if isinstance(body, web.Response):
            return body
        if self._in_flight >= self.config.max_in_flight:
            self._finish(NO_VARIANT, 503, started, service)
            return _error(503, "overloaded")
        self._in_flight += 1
        try:
            return await self._serve(request, body, version, started, model, service)
        finally:
            self._in_flight -= 1

    async def _read_body(self, request: web.Request, started: float, service: str) -> bytes | web.Response:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            self._finish(NO_VARIANT, 413, started, service)
            return _error(413, f"request body of {request.content_length} bytes exceeds the limit of {limit} bytes")
        try:
            if request.content.is_eof():  # the whole body came with the headers: no deadline to arm
                return await request.read()
            async with asyncio.timeout(self.config.body_timeout_s):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            self._finish(NO_VARIANT, 413, started, service)
            return _error(413, f"request body exceeds the limit of {limit} bytes")
        except TimeoutError:
            self._finish(NO_VARIANT, 408, started, service)
            return _error(408, f"request body not received within {self.config.body_timeout_s:g} s")

    async def _serve(self, request: web.Request, body: bytes, version: str | None, started: float, model: str,
                     service: str) -> web.Response:
        suffix = f"/versions/{version}:predict" if version else ":predict"
        content_type = request.headers.get("Content-Type", "application/json")
        if not _CONTENT_TYPE_RE.fullmatch(content_type):  # it is copied into the backend request's header
            self._finish(NO_VARIANT, 400, started, service)
            return _error(400, "Content-Type: printable ASCII expected, such as application/json")

        routing = self._routing.table(model)
        if routing is None:  # several services, and this name is none of them
            self._finish(NO_VARIANT, 404, started)
            known = ", ".join(self._routing.by_service)
            return _error(404, f"Servable not found for request: Latest({model[:100]}); services: {known}")
        first = self._choose(routing)
        if first is None:
            self._finish(NO_VARIANT, 503, started, service)
            return _error(503, "no backend is set: PUT /admin/backends first")
        first = self._spill(routing, first)
        spec = routing.specs[first]
        try:
            return await self._attempt(routing, first, suffix, body, content_type, started, service)
        except _Attempt as exc:
            last = exc
        self._failed(spec.name, last)
        # Retry once, on another variant of the set in force now (the weights may have moved), of its service.
        routing = self._routing.table(model) or routing
        second = self._choose_retry(routing, avoid=spec.name)
        if second is not None and routing.specs[second].name != spec.name:
            spec = routing.specs[second]
            try:
                return await self._attempt(routing, second, suffix, body, content_type, started, service)
            except _Attempt as exc:
                last = exc
            self._failed(spec.name, last)
        self._finish(spec.name, last.status, started, service)
        if last.body is not None:
            return _passthrough(last.status, last.body, last.content_type, spec.name)
        return _error(last.status, str(last), spec.name)

    async def _attempt(
        self, routing: _Routing, i: int, suffix: str, body: bytes, content_type: str, started: float, service: str = ""
    ) -> web.Response:
        spec = routing.specs[i]
        pool = routing.pools[i]
        self._busy[spec.name] = self._busy.get(spec.name, 0) + 1
        try:
            if pool is not None:
                status, resp_type, data = await pool.post(
                    routing.paths[i] + suffix, body, content_type, self.config.backend_timeout_s
                )
            else:
                status, resp_type, data = await self._post_aiohttp(routing.predict_urls[i] + suffix, body, content_type)
        except (TimeoutError, UpstreamTimeout):
            raise _Attempt(504, f"variant {spec.name} timed out after {self.config.backend_timeout_s} s") from None
        except (aiohttp.ClientError, UpstreamError) as exc:
            raise _Attempt(502, f"variant {spec.name} unreachable: {exc}") from None
        finally:
            self._busy[spec.name] -= 1
        if status >= 500:
            raise _Attempt(status, f"variant {spec.name} answered {status}", data, resp_type)
        self._finish(spec.name, status, started, service)
        return _passthrough(status, data, resp_type or "application/json", spec.name)

    async def _post_aiohttp(self, url: str, body: bytes, content_type: str) -> tuple[int, str, bytes]:
        assert self._session is not None, "the dispatcher's client session starts with the app"
        async with self._session.post(
            url, data=body, headers={"Content-Type": content_type}, timeout=self._timeout
        ) as resp:
            return resp.status, resp.headers.get("Content-Type", "application/json"), await resp.read()

    async def _model_status(self, request: web.Request) -> web.Response:
        public = self.config.model_name
        if public and request.match_info["name"] != public:
            return _error(404, f"Servable not found for request: Latest({request.match_info['name'][:100]})")
        table = self._routing.table(request.match_info["name"])
        if table is None:
            return _error(404, f"Servable not found for request: Latest({request.match_info['name'][:100]})")
        available = table.picker is not None
        state, code = ("AVAILABLE", "OK") if available else ("LOADING", "UNAVAILABLE")
        body = {
            "model_version_status": [
                {"version": "1", "state": state, "status": {"error_code": code, "error_message": ""}}
            ]
        }
        return web.json_response(body, status=200 if available else 503)

    # -- admin API --------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool | None:
        """True for the admin token, False for another token, None when no bearer token was sent."""
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            return None
        # Constant time: how long the comparison takes says nothing about how much of a guess was right.
        # (surrogateescape: a header with bytes that are not UTF-8 is a wrong token, not a crash)
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self._token_bytes)

    def _deny(self, request: web.Request) -> web.Response | None:
        """401 without a bearer token, 403 with a wrong one; None for the admin token. Checked in each
        admin handler rather than in a middleware, which would cost every predict request a call.
        Neither the token nor the one sent is ever logged or echoed."""
        ok = self._authorized(request)
        if ok:
            return None
        if ok is None:
            resp = _error(401, "admin token missing: send 'Authorization: Bearer <token>'")
            resp.headers["WWW-Authenticate"] = "Bearer"
            return resp
        return _error(403, "admin token wrong: send the token the dispatcher was started with")

    def _backends_body(self) -> dict[str, Any]:
        routing = self._routing
        now = time.monotonic()
        return {
            "generation": routing.generation,
            "backends": [{**s.as_dict(), "share": round(routing.share_of()[s.name], 6)} for s in routing.specs],
            "ejected": {n: round(t - now, 3) for n, t in self._ejected.items() if t > now},
        }

    async def _put_backends(self, request: web.Request) -> web.Response:
        if denied := self._deny(request):
            return denied
        try:
            payload = json.loads(await request.read() or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, f"body: not valid JSON ({exc})")
        try:
            specs = parse_backends(payload)
        except BadInput as exc:
            return _error(400, str(exc))
        self.set_backends(specs)
        return web.json_response(self._backends_body())

    async def _get_backends(self, request: web.Request) -> web.Response:
        if denied := self._deny(request):
            return denied
        return web.json_response(self._backends_body())

    async def _get_stats(self, request: web.Request) -> web.Response:
        if denied := self._deny(request):
            return denied
        body = self.stats.snapshot(self._clock())
        body["in_flight"] = self._in_flight
        body["max_in_flight"] = self.config.max_in_flight
        body["generation"] = self._routing.generation
        body["weights"] = {name: round(w, 6) for name, w in self._routing.share_of().items()}
        body["ejected"] = sorted(n for n, t in self._ejected.items() if t > time.monotonic())
        return web.json_response(body)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "backends": len(self._routing.specs), "in_flight": self._in_flight})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- lifecycle --------------------------------------------------------------------------
    async def _open_session(self, app: web.Application) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.config.max_in_flight * 2,  # a retry may hold a second connection briefly
            limit_per_host=0,
            keepalive_timeout=30.0,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, auto_decompress=False)

    async def _close_session(self, app: web.Application) -> None:
        for pool in self._pools.values():
            pool.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def app(self) -> web.Application:
        """The aiohttp application (routes, admin guard, client session tied to its lifetime)."""
        # client_max_size bounds chunked bodies too; +1 KiB so our own 413 message answers first.
        app = web.Application(client_max_size=self.config.max_body_bytes + 1024)
        app.on_startup.append(self._open_session)
        app.on_cleanup.append(self._close_session)
        app.router.add_post("/v1/models/{name}:predict", self._predict)
        app.router.add_post("/v1/models/{name}/versions/{version}:predict", self._predict)
        app.router.add_get("/v1/models/{name}", self._model_status)
        app.router.add_put("/admin/backends", self._put_backends)
        app.router.add_get("/admin/backends", self._get_backends)
        app.router.add_get("/admin/stats", self._get_stats)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        # Last: every other path or method gets a TF-Serving-style JSON error (aiohttp's are text).
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        return app

    async def _unknown(self, request: web.Request) -> web.Response:
        path, method = request.path, request.method
        last = path.rsplit("/", 1)[-1]
        if path in ("/admin/backends", "/admin/stats", "/healthz", "/metrics"):
            return _error(405, f"method {method} is not allowed on {path}")
        if path.startswith("/v1/models/") and ":" in last:
            if method != "POST":
                return _error(405, f"method {method} is not allowed on {path[:200]}; POST a predict request")
            verb = last.rsplit(":", 1)[-1][:40]
            if verb == "predict":
                return _error(404, f"Malformed request: POST {path[:200]}")
            return _error(400, f"unsupported method :{verb}; the dispatcher forwards :predict")
        return _error(404, f"Malformed request: {method} {path[:200]}")

    async def start(self) -> tuple[web.AppRunner, int]:
        """Start listening; returns the runner (``await runner.cleanup()`` to stop) and the bound port."""
        runner = HeadDeadlineRunner(
            self.app(),
            head_timeout_s=self.config.header_timeout_s,
            access_log=None,
            shutdown_timeout=self.config.shutdown_timeout_s,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise BadInput(f"--port: cannot listen on {self.config.host}:{self.config.port} ({exc.strerror})") from None
        port = runner.addresses[0][1]
        return runner, port


def _error(status: int, message: str, variant: str | None = None) -> web.Response:
    resp = web.json_response({"error": message}, status=status)
    if variant:
        resp.headers[VARIANT_HEADER] = variant
    return resp


def _passthrough(status: int, body: bytes, content_type: str, variant: str) -> web.Response:
    return web.Response(status=status, body=body, headers={"Content-Type": content_type, VARIANT_HEADER: variant})


async def serve(
    config: DispatcherConfig,
    backends: Sequence[BackendSpec] = (),
    on_ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run a dispatcher until SIGTERM/SIGINT (or ``stop`` is set), then drain in-flight requests."""
    dispatcher = Dispatcher(config, backends)
    runner, port = await dispatcher.start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        if on_ready is not None:
            on_ready(port)
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        # Stops listening, lets in-flight requests finish (shutdown_timeout_s), then closes the session.
        await runner.cleanup()


# -- admin token --------------------------------------------------------------------------------
def resolve_admin_token(
    token_file: Path | None, port: int, env: Mapping[str, str] = os.environ
) -> tuple[str, Path | None]:
    """The admin token and, when one was generated, the file it was written to.

    Order: ``token_file`` when it exists; else ``INFADAPTER_ADMIN_TOKEN``; else a new random token
    written (mode 0600) to ``token_file`` or to ``~/.cache/infadapter/dispatcher-<port>.token``.
    """
    if token_file is not None and token_file.exists():
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise BadInput(f"--admin-token-file: cannot read {token_file} ({exc.strerror})") from None
        if not token:
            raise BadInput(f"--admin-token-file: {token_file} is empty; write a token into it or delete it")
        return token, None
    from_env = env.get("INFADAPTER_ADMIN_TOKEN", "").strip()
    if from_env and token_file is None:
        return from_env, None
    token = from_env or secrets.token_urlsafe(32)
    if token_file is None:
        base = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "infadapter"
        token_file = base / f"dispatcher-{port}.token"
    try:
        token_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
    except OSError as exc:
        raise BadInput(f"--admin-token-file: cannot write {token_file} ({exc.strerror})") from None
    return token, token_file


# -- synchronous client for the control loop ----------------------------------------------------
class DispatcherClient:
    """Blocking admin client (stdlib only): ``set_backends``, ``backends``, ``stats``, ``healthy``."""

    def __init__(self, base_url: str, token: str, timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, payload: Any = None, auth: bool = True) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except (ValueError, AttributeError):
                message = exc.reason
            if exc.code == 400:
                raise BadInput(f"dispatcher {path}: {message}") from None
            if exc.code in (401, 403):
                raise BadInput(
                    f"dispatcher {path}: admin token rejected; pass the token the dispatcher uses "
                    "(--admin-token-file or INFADAPTER_ADMIN_TOKEN)"
                ) from None
            raise BackendUnavailable(f"dispatcher {path}: HTTP {exc.code} {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BackendUnavailable(f"dispatcher at {self.base_url} unreachable ({reason}); is it running?") from None

    def set_backends(self, backends: Iterable[BackendSpec | Mapping[str, Any]]) -> dict[str, Any]:
        """Replace backends and weights atomically; returns the dispatcher's view afterwards."""
        items = [b.as_dict() if isinstance(b, BackendSpec) else dict(b) for b in backends]
        return self._call("PUT", "/admin/backends", {"backends": items})

    def backends(self) -> dict[str, Any]:
        """``{"generation", "backends": [{name, url, model, weight, share}], "ejected"}``."""
        return self._call("GET", "/admin/backends")

    def stats(self) -> dict[str, Any]:
        """``GET /admin/stats`` (see :meth:`RequestStats.snapshot`, plus in_flight and weights)."""
        return self._call("GET", "/admin/stats")

    def healthy(self) -> bool:
        """True when ``/healthz`` answers."""
        try:
            self._call("GET", "/healthz", auth=False)
        except BackendUnavailable:
            return False
        return True
