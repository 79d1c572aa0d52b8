"""Open-loop load generator: Poisson arrivals at per-second rates, real JPEG payloads, every request recorded.

Arrivals never wait for responses: the send times are drawn up front (a Poisson process whose rate
is constant within each second of ``rates_rps``) and each request is launched at its time whatever
the others are doing. Connections are bounded (``max_connections``); an arrival that finds every
connection busy is not sent and is recorded as an error (``unsent``), so overload shows up in the
numbers instead of silently slowing the generator down (which would hide it: coordinated omission).

Every arrival ends in exactly one record with outcome ``ok`` (HTTP 200), ``error`` (any other status,
a refused connection, unsent, interrupted) or ``timeout``: ``sent == ok + errors + timeouts`` holds
always, even when the target is down or the run is interrupted (Ctrl-C writes what was recorded).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import io
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from infadapter.core import slo
from infadapter.errors import BadInput
from infadapter.observe.requestlog import CSV_COLUMNS

VARIANT_HEADER = "X-Infadapter-Variant"
OK, ERROR, TIMEOUT = "ok", "error", "timeout"
#: Image size (px) of the load's JPEGs and the models' input when neither the flags nor the profile say.
DEFAULT_RESOLUTION = 224


@dataclass(frozen=True)
class Stream:
    """One service's load: its per-second rates, sent to its predict URL, judged at its SLO."""

    service: str
    url: str
    rates_rps: Sequence[float]
    slo_ms: float


@dataclass(frozen=True)
class LoadSummary:
    """What a run did. ``sent`` counts arrivals; ``sent == ok + errors + timeouts``."""

    sent: int
    ok: int
    errors: int
    timeouts: int
    unsent: int  # arrivals that found every connection busy (part of errors)
    answered: int  # requests that got an HTTP response, whatever its status
    slo_violation_rate: float  # (ok slower than the SLO + errors + timeouts) / sent
    p50_ms: float | None  # latency of ok requests; None when none was ok
    p99_ms: float | None
    duration_s: float
    achieved_rps: float  # sent / duration
    send_lag_p99_ms: float | None  # how late the generator launched requests (its own health)
    slo_ms: float
    by_variant: dict[str, int] = field(default_factory=dict)  # ok requests per X-Infadapter-Variant
    by_status: dict[str, int] = field(default_factory=dict)  # HTTP status (0: no response) -> count
    interrupted: bool = False
    out_path: str | None = None
    #: Several services: each one's figures (sent, ok, errors, timeouts, slo_violation_rate at its own SLO,
    #: p50/p99, by_variant), by service; empty for one service.
    by_service: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- pure parts -----------------------------------------------------------------------------------
def arrival_offsets(rates_rps: Sequence[float] | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Send times in seconds from the start: a Poisson process with rate ``rates_rps[s]`` in second ``s``.

    Given the count in a second (Poisson with mean the rate), Poisson arrivals are uniform within
    it, so each second draws its count and then that many uniform offsets.
    """
    rates = np.asarray(rates_rps, dtype=float)
    if rates.ndim != 1 or rates.size == 0:
        raise BadInput("rates: expected a non-empty list of per-second rates")
    if not np.all(np.isfinite(rates)) or np.any(rates < 0):
        raise BadInput("rates: every per-second rate must be a finite number >= 0")
    counts = rng.poisson(rates)
    seconds = np.repeat(np.arange(rates.size, dtype=float), counts)
    return np.sort(seconds + rng.random(seconds.size))


def make_jpegs(count: int = 4, resolution: int = 224, seed: int = 0, quality: int = 85) -> list[bytes]:
    """``count`` distinct JPEG images of ``resolution`` x ``resolution`` pixels, drawn locally.

    Smooth colour gradients with a few random shapes: they compress like photographs, not like noise.
    """
    from PIL import Image, ImageDraw

    if count < 1:
        raise BadInput("--images: must be >= 1")
    if not 8 <= resolution <= 4096:
        raise BadInput(f"--resolution: must be 8..4096 pixels, got {resolution}")
    rng = np.random.default_rng(seed)
    out: list[bytes] = []
    axis = np.linspace(0.0, 1.0, resolution)
    for _ in range(count):
        c0, c1, c2 = rng.uniform(0, 255, size=(3, 3))
        gx, gy = np.meshgrid(axis, axis)
        pixels = c0 + np.multiply.outer(gx, c1 - c0) + np.multiply.outer(gy, c2 - c0) * 0.5
        img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 8))):
            x0, y0 = (int(v) for v in rng.integers(0, resolution, size=2))
            size = int(rng.integers(resolution // 8 + 1, resolution // 2 + 2))
            fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape([x0, y0, x0 + size, y0 + size], fill=fill)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def predict_body(jpeg: bytes) -> bytes:
    """TF Serving's REST predict body for one image: ``{"instances": [{"b64": ...}]}``."""
    return json.dumps({"instances": [{"b64": base64.b64encode(jpeg).decode()}]}).encode()


def predict_url(url: str, model: str = "resnet") -> str:
    """A base URL (``http://host:port``) becomes ``.../v1/models/<model>:predict``; full URLs stay."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(f"--url: expected http://HOST:PORT[/v1/models/NAME:predict], got {url!r}")
    if parts.path in ("", "/"):
        return f"{url.rstrip('/')}/v1/models/{model}:predict"
    return url


# -- the run --------------------------------------------------------------------------------------
class _Records:
    """One row per arrival, filled as requests finish; readable after an interrupt."""

    def __init__(self, scheduled: np.ndarray, stream: np.ndarray | None = None,
                 services: Sequence[str] = ("",)) -> None:
        self.scheduled = scheduled
        #: Which stream (service) each arrival belongs to (index into ``services``).
        self.stream = stream if stream is not None else np.zeros(scheduled.size, dtype=int)
        self.services = tuple(services)
        self.rows: list[list[Any]] = []  # index, scheduled_s, sent_s, sent_unix, latency, status, outcome, ...
        self.start_perf = 0.0
        self.start_unix = 0.0
        self.end_perf = 0.0

    def add(self, i: int, sent_perf: float) -> list[Any]:
        row = [
            i,
            float(self.scheduled[i]),
            sent_perf - self.start_perf,
            self.start_unix + (sent_perf - self.start_perf),
            None,
            0,
            None,
            "",
            "",
            self.services[int(self.stream[i])],
        ]
        self.rows.append(row)
        return row

    def close_pending(self, reason: str) -> None:
        for row in self.rows:
            if row[6] is None:
                row[6], row[8] = ERROR, reason


async def _drive(
    urls: Sequence[str],
    payloads: Sequence[bytes],
    records: _Records,
    timeout_s: float,
    max_connections: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    offsets = records.scheduled
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, keepalive_timeout=30.0)
    in_flight = 0
    tasks: set[asyncio.Task[None]] = set()
    n_payloads = len(payloads)

    async def one(row: list[Any], url: str, body: bytes, session: aiohttp.ClientSession) -> None:
        nonlocal in_flight
        t0 = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers, timeout=timeout) as resp:
                await resp.read()
                row[5] = resp.status
                row[7] = resp.headers.get(VARIANT_HEADER, "")
                row[6] = OK if resp.status == 200 else ERROR
        except TimeoutError:
            row[6], row[8] = TIMEOUT, f"no answer within {timeout_s} s"
        except (aiohttp.ClientError, OSError) as exc:
            row[6], row[8] = ERROR, f"{type(exc).__name__}: {exc}"[:200]
        finally:
            row[4] = (time.perf_counter() - t0) * 1000.0
            in_flight -= 1

    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        loop = asyncio.get_running_loop()
        records.start_unix = time.time()
        records.start_perf = start = time.perf_counter()
        total_s = math.ceil(float(offsets[-1])) if offsets.size else 0
        reported = -1
        try:
            for i, offset in enumerate(offsets.tolist()):
                delay = start + offset - time.perf_counter()
                if delay > 0.0005:
                    await asyncio.sleep(delay)
                elif i % 32 == 0:
                    await asyncio.sleep(0)  # behind schedule: still let responses be read
                now = time.perf_counter()
                row = records.add(i, now)
                if in_flight >= max_connections:
                    row[4], row[6], row[8] = 0.0, ERROR, f"unsent: all {max_connections} connections busy"
                    continue
                in_flight += 1
                task = loop.create_task(one(row, urls[int(records.stream[i])], payloads[i % n_payloads], session))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                if progress is not None and int(offset) != reported:
                    reported = int(offset)
                    progress(reported, total_s)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            # Interrupted: requests in flight end here, before the session closes under them, so
            # that their rows say "interrupted" rather than a misleading connection error.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        if progress is not None:
            progress(total_s, total_s)
    records.end_perf = time.perf_counter()


def summarize(
    rows: Sequence[Sequence[Any]], slo_ms: float, duration_s: float, interrupted: bool = False
) -> LoadSummary:
    """The summary of recorded rows (see :data:`~infadapter.observe.requestlog.CSV_COLUMNS`)."""
    sent = len(rows)
    outcomes = [r[6] for r in rows]
    ok = outcomes.count(OK)
    timeouts = outcomes.count(TIMEOUT)
    errors = sent - ok - timeouts
    unsent = sum(1 for r in rows if r[6] == ERROR and str(r[8]).startswith("unsent"))
    ok_lat = np.array([r[4] for r in rows if r[6] == OK], dtype=float)
    slow = int(np.count_nonzero(slo.late(ok_lat, slo_ms)))  # a violation: late, or not answered ok
    lags = np.array([(r[2] - r[1]) * 1000.0 for r in rows], dtype=float)
    by_variant: dict[str, int] = {}
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[str(r[5])] = by_status.get(str(r[5]), 0) + 1
        if r[6] == OK:
            by_variant[r[7] or "-"] = by_variant.get(r[7] or "-", 0) + 1
    return LoadSummary(
        sent=sent,
        ok=ok,
        errors=errors,
        timeouts=timeouts,
        unsent=unsent,
        answered=sum(1 for r in rows if r[5]),
        slo_violation_rate=(slow + errors + timeouts) / sent if sent else 0.0,
        p50_ms=float(np.percentile(ok_lat, 50)) if ok_lat.size else None,
        p99_ms=slo.judged_ms(ok_lat),
        duration_s=duration_s,
        achieved_rps=sent / duration_s if duration_s > 0 else 0.0,
        send_lag_p99_ms=float(np.percentile(lags, 99)) if lags.size else None,
        slo_ms=slo_ms,
        by_variant=dict(sorted(by_variant.items())),
        by_status=dict(sorted(by_status.items())),
        interrupted=interrupted,
    )


def write_records(rows: Sequence[Sequence[Any]], out_path: Path) -> None:
    """CSV (default) or Parquet (``.parquet``, needs pyarrow) with the request log's columns (``CSV_COLUMNS``)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix.lower() == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise BadInput("--out: .parquet needs pyarrow (pip install pyarrow); or write a .csv") from None
        columns = {name: [r[i] for r in rows] for i, name in enumerate(CSV_COLUMNS)}
        pq.write_table(pa.table(columns), out_path)
        return
    tmp = out_path.with_name(out_path.name + ".part")
    try:
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_COLUMNS)
            for r in rows:
                writer.writerow([r[0], f"{r[1]:.6f}", f"{r[2]:.6f}", f"{r[3]:.6f}", f"{r[4]:.3f}", *r[5:10]])
        tmp.replace(out_path)
    except OSError:
        tmp.unlink(missing_ok=True)  # no half file left behind (a full disk)
        raise


def run_load(
    url: str,
    rates_rps: Sequence[float] | np.ndarray,
    out_path: Path | None = None,
    slo_ms: float = 750.0,
    seed: int = 0,
    timeout_s: float = 10.0,
    max_connections: int = 256,
    resolution: int = 224,
    images: int = 4,
    payloads: Sequence[bytes] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LoadSummary:
    """Replay ``rates_rps`` (one rate per second) against a predict ``url``; see the module doc.

    ``payloads`` (request bodies) default to ``images`` JPEGs of ``resolution`` pixels. Ctrl-C (or
    SIGTERM in the main thread) stops sending, marks requests still in flight as errors
    (``interrupted``), writes the records and returns the summary with ``interrupted=True``.
    """
    if not slo_ms > 0:
        raise BadInput("--slo-ms: must be > 0")
    return run_streams([Stream("", predict_url(url), rates_rps, slo_ms)], out_path, seed=seed, timeout_s=timeout_s,
                       max_connections=max_connections, resolution=resolution, images=images, payloads=payloads,
                       progress=progress)


def run_streams(
    streams: Sequence[Stream],
    out_path: Path | None = None,
    seed: int = 0,
    timeout_s: float = 10.0,
    max_connections: int = 256,
    resolution: int = 224,
    images: int = 4,
    payloads: Sequence[bytes] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LoadSummary:
    """Replay one load per service at once (:func:`run_load` is one stream): each stream's Poisson arrivals, drawn
    from its own seed (the first from ``seed`` itself, so one stream sends what :func:`run_load` always sent),
    merged into one schedule on one set of connections; every row names its service. With several streams the
    summary's violation rate judges each request at its own service's SLO, and ``by_service`` holds each one's
    figures."""
    if not streams:
        raise BadInput("streams: at least one load is required")
    for st in streams:
        if not st.slo_ms > 0:
            raise BadInput(f"--slo-ms: must be > 0 (service {st.service or 'the one'})")
    if not timeout_s > 0:
        raise BadInput("--timeout-s: must be > 0")
    if max_connections < 1:
        raise BadInput("--max-connections: must be >= 1")
    bodies = list(payloads) if payloads is not None else [predict_body(j) for j in make_jpegs(images, resolution, seed)]
    if not bodies:
        raise BadInput("payloads: at least one request body is required")
    offsets = [arrival_offsets(st.rates_rps, np.random.default_rng(seed if k == 0 else [seed, k]))
               for k, st in enumerate(streams)]
    merged = np.concatenate(offsets)
    which = np.concatenate([np.full(o.size, k, dtype=int) for k, o in enumerate(offsets)])
    order = np.argsort(merged, kind="stable")
    records = _Records(merged[order], which[order], [st.service for st in streams])
    urls = [st.url for st in streams]
    interrupted = False

    async def main() -> None:
        nonlocal interrupted
        task = asyncio.current_task()
        in_main = threading.current_thread() is threading.main_thread()
        loop = asyncio.get_running_loop()
        if in_main and task is not None:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            await _drive(urls, bodies, records, timeout_s, max_connections, progress)
        except asyncio.CancelledError:
            interrupted = True
        finally:
            if in_main:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(signal.SIGTERM)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        interrupted = True
    if interrupted:
        records.close_pending("interrupted before an answer")
    end = records.end_perf or time.perf_counter()
    duration = max(end - records.start_perf, 1e-9) if records.start_perf else 0.0
    rows = records.rows
    summary = summarize(rows, min(st.slo_ms for st in streams), duration, interrupted)
    if len(streams) > 1:
        parts = {st.service: summarize([r for r in rows if r[9] == st.service], st.slo_ms, duration, interrupted)
                 for st in streams}
        late = sum(p.slo_violation_rate * p.sent for p in parts.values())
        summary = LoadSummary(**{**asdict(summary), "slo_violation_rate": late / summary.sent if summary.sent else 0.0,
                                 "by_service": {n: _service_figures(p) for n, p in parts.items()}})
    if out_path is not None:
        try:
            write_records(rows, Path(out_path))
        except OSError as exc:  # a full disk loses the per-request log, not the run or its summary
            logging.getLogger("infadapter.observe.loadgen").error(
                "cannot write %s (%s); the summary still counts every request", out_path, exc.strerror or exc
            )
        else:
            summary = LoadSummary(**{**asdict(summary), "out_path": str(out_path)})
    return summary


def _service_figures(part: LoadSummary) -> dict[str, Any]:
    """One service's figures in a summary's ``by_service`` (its violations judged at its own SLO)."""
    return {"requests": part.sent, "ok": part.ok, "errors": part.errors, "timeouts": part.timeouts,
            "slo_violation_rate": part.slo_violation_rate, "p50_ms": part.p50_ms, "p99_ms": part.p99_ms,
            "slo_ms": part.slo_ms, "by_variant": part.by_variant}


#: The request figures of a run's summary (``adapt --json``), the same keys on every backend that drives a load.
FIGURES = ("requests", "ok", "errors", "timeouts", "slo_violation_rate", "p50_ms", "p99_ms", "by_variant")


def service_streams(router_url: str, loads: Sequence[Any], profile: Any) -> list[Stream]:
    """Several services' loads (``loads``: each with ``name`` and ``rates_rps``) as streams: each one's window
    posted to the router at ``router_url`` under its own model name, judged at its service's SLO (``profile``:
    the run's :class:`~infadapter.core.profile.Profile`). Empty for one service."""
    return [Stream(s.name, f"{router_url.rstrip('/')}/v1/models/{s.name}:predict", s.rates_rps,
                   profile.service(s.name).slo_ms) for s in loads]


def drive_window(url: str, rates_rps: Sequence[float], duration_s: float | None, store: Any, *, slo_ms: float,
                 resolution: int, out_path: Path | None = None, seed: int = 0, timeout_s: float = 10.0,
                 streams: Sequence[Stream] = ()) -> LoadSummary:
    """An adapter run's load: ``rates_rps`` (cut to ``duration_s``) sent to the router at ``url``, recorded in
    the run's state (``store``: ``load`` when it starts, ``load_summary`` when it ends); see :func:`run_load`.
    ``streams``: several services' loads instead (each cut to ``duration_s``; ``url`` and ``rates_rps`` unused)."""
    def cut(rates: Sequence[float]) -> np.ndarray:
        r = np.asarray(rates, dtype=float)
        return r[: max(math.ceil(duration_s), 1)] if duration_s is not None else r

    if not streams:
        streams = [Stream("", predict_url(url), rates_rps, slo_ms)]
    streams = [Stream(st.service, st.url, cut(st.rates_rps), st.slo_ms) for st in streams]
    seconds = max(len(st.rates_rps) for st in streams)
    total = sum(float(np.sum(st.rates_rps)) for st in streams)
    store.update(load={"seconds": int(seconds), "mean_rps": total / seconds if seconds else 0.0,
                       "started_s": time.time()})
    summary = run_streams(streams, out_path=out_path, seed=seed, timeout_s=timeout_s, resolution=resolution)
    store.update(load_summary=summary.as_dict())
    return summary


def load_figures(load: LoadSummary | None) -> dict[str, Any]:
    """The summary's request figures (:data:`FIGURES`) of a driven load; empty without one."""
    if load is None:
        return {}
    return {"requests": load.sent, "ok": load.ok, "errors": load.errors, "timeouts": load.timeouts,
            "slo_violation_rate": load.slo_violation_rate, "p50_ms": load.p50_ms, "p99_ms": load.p99_ms,
            "by_variant": load.by_variant}
