"""Capacity measurement of real model servers at the SLO, and the profile YAML it yields.

For each variant and each CPU allocation, the profiler starts ``cli.py serve-model`` inside a CPU
cgroup with that quota (``threads = floor(cores)``, at least 1), times start -> AVAILABLE (the
variant's load time), then drives it with open-loop Poisson traffic (arrivals never wait for
answers) and searches for the capacity: the highest rate whose p99 latency stays under the SLO,
a failed or timed-out request counting as an infinite latency. The search first measures the
service rate (closed loop, the server never idle), then bisects below it on open-loop steps until the
bracket is within ``tolerance``; each step lasts ``step_s`` seconds, or long enough for
``step_requests`` requests, and waits for the server's queue to empty first.

Every finished (variant, cores) measurement is appended to a JSON-lines results file, so an
interrupted run resumes where it stopped. :func:`build_profile` turns the measurements into the
decision core's format: one :class:`~infadapter.core.profile.PointsCapacity` per variant (made
non-decreasing in cores), published top-1 accuracy, median load time, and a memory limit from the
server's peak resident memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from infadapter.core import slo
from infadapter.core.profile import Profile, profile_from_dict, threads_for_cores
from infadapter.errors import BackendUnavailable, BadInput
from infadapter.paper import VARIANTS as PAPER_VARIANTS
from infadapter.ports import free_port
from infadapter.serving import cgroups
from infadapter.serving.images import make_jpeg_b64
from infadapter.serving.server import METRICS_PATH, server_command

MIB = 2**20


@dataclass(frozen=True)
class ProfilerConfig:
    """What to measure and how hard to look."""

    model_dir: Path
    variants: tuple[str, ...]
    cores: tuple[float, ...]
    slo_ms: float
    results_path: Path
    step_s: float = 3.0
    #: Each step lasts at least this many expected requests (``step_requests / rate`` seconds). A queue
    #: of slow services needs that long to show its tail, and a p99 needs that many samples: at a quarter
    #: core ResNet-101 gets ~6 req/s, so a 3-s step judged its p99 on 18 requests from an empty queue
    #: and passed 10.6 req/s, where 30-s steps pass 5.9.
    step_requests: int = 200
    max_steps: int = 8
    tolerance: float = 0.1
    warmup: int = 3
    seed: int = 0
    start_timeout_s: float = 120.0
    host: str = "127.0.0.1"
    #: CPU weight (x a default process) of the server under test and of this client: on a shared
    #: machine the quota, not the neighbours, should be what limits the server. 1 = no priority.
    priority: float = 8.0

    def check(self) -> None:
        if not self.variants:
            raise BadInput("--variants: name at least one variant")
        if not self.cores or any(not c > 0 for c in self.cores):
            raise BadInput(f"--cores: each value must be greater than 0, got {list(self.cores)}")
        for c in self.cores:
            cgroups.quota_us(c)
        if not self.slo_ms > 0:
            raise BadInput(f"--slo-ms: must be greater than 0, got {self.slo_ms:g}")
        if not self.step_s > 0:
            raise BadInput(f"--step-s: must be greater than 0, got {self.step_s:g}")
        if self.max_steps < 1:
            raise BadInput(f"--max-steps: must be at least 1, got {self.max_steps}")
        if self.step_requests < 0:
            raise BadInput(f"--step-requests: must be at least 0, got {self.step_requests}")

    def step_seconds(self, rate_rps: float) -> float:
        """How long a step at ``rate_rps`` lasts: ``step_s``, longer when that brings fewer than
        ``step_requests`` requests."""
        return max(self.step_s, self.step_requests / rate_rps if rate_rps > 0 else 0.0)

    @property
    def timeout_s(self) -> float:
        """Client timeout per request: past it, the request is failed (and over the SLO anyway)."""
        return max(2.0, 3 * self.slo_ms / 1000)


@dataclass
class Step:
    """One constant-rate open-loop step."""

    rate_rps: float
    sent: int
    ok: int
    errors: int
    p50_ms: float
    p99_ms: float
    throughput_rps: float

    def passed(self, slo_ms: float) -> bool:
        return self.sent > 0 and slo.met(self.p99_ms, slo_ms)


@dataclass
class Measurement:
    """The capacity of one variant on one CPU allocation."""

    variant: str
    cores: float
    slo_ms: float
    capacity_rps: float
    load_time_s: float
    service_ms: float
    saturation_rps: float
    peak_rss_mb: float
    threads: int
    resolution: int
    cpu_seconds: float
    wall_seconds: float = 0.0
    steps: list[Step] = field(default_factory=list)

    def key(self) -> tuple[str, float, float]:
        return (self.variant, round(self.cores, 6), round(self.slo_ms, 6))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        steps = [Step(**s) for s in d.get("steps", [])]
        return cls(**{**d, "steps": steps})


# -- open-loop traffic ---------------------------------------------------------------------------
def _percentile_ms(latencies_s: list[float], q: float) -> float:
    if not latencies_s:
        return math.inf
    return float(np.quantile(np.array(latencies_s), q, method="higher")) * 1000


async def open_loop(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    rate_rps: float,
    duration_s: float,
    timeout_s: float,
    rng: np.random.Generator,
) -> Step:
    """Poisson arrivals at ``rate_rps`` for ``duration_s``; waits for every answer (or its timeout)."""
    gaps = rng.exponential(1.0 / rate_rps, size=int(rate_rps * duration_s * 2) + 10)
    arrivals = np.cumsum(gaps)
    arrivals = arrivals[arrivals < duration_s]
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    ok = 0
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    headers = {"Content-Type": "application/json"}

    async def one() -> None:
        nonlocal ok
        t0 = time.perf_counter()
        try:
            async with session.post(url, data=body, timeout=timeout, headers=headers) as resp:
                await resp.read()
                good = resp.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            good = False
        if good:
            ok += 1
            latencies.append(time.perf_counter() - t0)
        else:
            latencies.append(math.inf)

    start = loop.time()
    tasks = []
    for t in arrivals:
        delay = start + float(t) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one()))
    t_sent = loop.time() - start
    await asyncio.gather(*tasks)
    sent = len(tasks)
    return Step(
        rate_rps=round(rate_rps, 3),
        sent=sent,
        ok=ok,
        errors=sent - ok,
        p50_ms=round(_percentile_ms(latencies, 0.5), 2),
        p99_ms=round(_percentile_ms(latencies, slo.QUANTILE), 2),
        throughput_rps=round(ok / max(t_sent, 1e-9), 3),
    )


def predict_body(seed: int = 0) -> bytes:
    """One real JPEG instance (640x480, photo-like), as every profiling request sends."""
    return json.dumps({"instances": [{"b64": make_jpeg_b64(640, 480, seed)}]}).encode()


# -- server process --------------------------------------------------------------------------------
def _get_json(url: str, timeout_s: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def wait_available(base_url: str, name: str, proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    """Poll ``GET /v1/models/NAME`` until AVAILABLE; seconds waited. BackendUnavailable otherwise."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            raise BackendUnavailable(f"model server {name} exited with {proc.returncode}: {err[-300:]}")
        try:
            state = _get_json(f"{base_url}/v1/models/{name}", 1.0)["model_version_status"][0]["state"]
            if state == "AVAILABLE":
                return time.monotonic() - t0
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            pass
        time.sleep(0.02)
    raise BackendUnavailable(f"model server {name} not AVAILABLE within {timeout_s:g} s")


def waiting_requests(base_url: str) -> int:
    """The server's accepted-but-unanswered requests (its own gauge)."""
    with urllib.request.urlopen(base_url + METRICS_PATH, timeout=2.0) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("infadapter_model_server_waiting_requests "):
                return int(float(line.split()[1]))
    return 0


def settle(base_url: str, timeout_s: float) -> None:
    """Wait until the server has answered everything (requests the client gave up on included)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if waiting_requests(base_url) == 0:
                return
        except (urllib.error.URLError, OSError):
            return
        time.sleep(0.1)


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """SIGTERM (the server drains), then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the search --------------------------------------------------------------------------------------
async def saturation_rps(
    session: aiohttp.ClientSession, url: str, body: bytes, duration_s: float, concurrency: int
) -> float:
    """Closed-loop throughput with ``concurrency`` clients always waiting: the server's service rate."""
    loop = asyncio.get_running_loop()
    done = 0
    stop_at = loop.time() + duration_s
    headers = {"Content-Type": "application/json"}

    async def client() -> None:
        nonlocal done
        while loop.time() < stop_at:
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    done += resp.status == 200
            except aiohttp.ClientError:
                return  # a dead server: the open-loop steps that follow report it as failures

    # The first half-second fills the queue and is not counted.
    warm = asyncio.gather(*(client() for _ in range(concurrency)))
    await asyncio.sleep(min(0.5, duration_s / 4))
    d0, t0 = done, loop.time()
    await warm
    return (done - d0) / max(loop.time() - t0, 1e-9)


async def _search(
    config: ProfilerConfig, url: str, base_url: str, body: bytes, threads: int
) -> tuple[float, list[Step]]:
    """Service rate, then bisection below it on open-loop p99.

    A short step cannot see a slowly growing queue (10% over capacity takes ~5 s to add 0.5 s of
    queueing), so no rate at or above the measured service rate is ever accepted: the bracket starts
    at [0, service rate] and the first probe is 80% of it.
    """
    rng = np.random.default_rng(config.seed)
    steps: list[Step] = []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        mu = await saturation_rps(session, url, body, max(1.5, config.step_s), threads + 3)
        lo, hi = 0.0, mu
        rate = 0.8 * mu
        for _ in range(config.max_steps):
            await asyncio.to_thread(settle, base_url, 4 * config.timeout_s)
            step = await open_loop(session, url, body, rate, config.step_seconds(rate), config.timeout_s, rng)
            steps.append(step)
            if step.passed(config.slo_ms):
                lo = rate
            else:
                hi = rate
            rate = (lo + hi) / 2
            if (hi - lo) / max(hi, 1e-9) <= config.tolerance or rate < 0.2:
                break
    return mu, steps


def _sequential_latency_s(url: str, body: bytes, n: int = 5, fastest: bool = False) -> float:
    """Median (or least) seconds of ``n`` requests sent one after another (the server otherwise idle)."""
    out = []
    for _ in range(n):
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()
        out.append(time.perf_counter() - t0)
    return float(min(out) if fastest else np.median(out))


@contextlib.contextmanager
def _server(model_dir: Path, variant: str, port: int, threads: int, warmup: int, host: str,
            group: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A model server, its whole start-up inside ``group`` (None: no cgroup); SIGTERM (then SIGKILL) on exit."""
    proc = subprocess.Popen(server_command(model_dir, variant, port, threads, warmup, host),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if group is not None:
            # Before the interpreter has even imported numpy: the whole start-up runs under the quota.
            group.add_pid(proc.pid)
        yield proc
    finally:
        stop_process(proc)
        if proc.stderr is not None:
            proc.stderr.close()


def measure_one(
    config: ProfilerConfig,
    driver: cgroups.CgroupV1 | cgroups.CgroupV2,
    variant: str,
    cores: float,
    body: bytes,
) -> Measurement:
    """Start the server under ``cores``, time it to AVAILABLE, search its capacity, stop it."""
    port = free_port(config.host)
    threads = threads_for_cores(cores)
    group = driver.create(f"profile-{variant}-{port}", cores)
    group.set_weight(config.priority)
    base_url = f"http://{config.host}:{port}"
    t0 = time.monotonic()
    try:
        with _server(config.model_dir, variant, port, threads, config.warmup, config.host, group) as proc:
            wait_available(base_url, variant, proc, config.start_timeout_s)
            load_time_s = time.monotonic() - t0
            meta = _get_json(f"{base_url}/v1/models/{variant}/metadata")
            url = f"{base_url}/v1/models/{variant}:predict"
            cpu0, wall0 = group.usage_seconds(), time.monotonic()
            service_s = _sequential_latency_s(url, body)
            saturation = 1.0 / service_s
            if service_s * 1000 > config.slo_ms:
                steps: list[Step] = []  # one request alone misses the SLO: capacity 0
            else:
                saturation, steps = asyncio.run(_search(config, url, base_url, body, threads))
            capacity = max((s.rate_rps for s in steps if s.passed(config.slo_ms)), default=0.0)
            return Measurement(
                variant=variant,
                cores=cores,
                slo_ms=config.slo_ms,
                capacity_rps=round(capacity, 2),
                load_time_s=round(load_time_s, 2),
                service_ms=round(service_s * 1000, 2),
                saturation_rps=round(saturation, 2),
                peak_rss_mb=round(peak_rss_mb(proc.pid), 1),
                threads=threads,
                resolution=int(meta.get("onnx", {}).get("resolution", 0)),
                cpu_seconds=round(group.usage_seconds() - cpu0, 2),
                wall_seconds=round(time.monotonic() - wall0, 2),
                steps=steps,
            )
    finally:
        group.remove()


# -- results file and the run ------------------------------------------------------------------------
def load_results(path: Path) -> dict[tuple[str, float, float], Measurement]:
    """Measurements already on disk (a torn last line from an interrupted run is ignored)."""
    out: dict[tuple[str, float, float], Measurement] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            m = Measurement.from_dict(json.loads(line))
        except (ValueError, TypeError):
            continue
        out[m.key()] = m
    return out


def append_result(path: Path, m: Measurement) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(asdict(m)) + "\n")


def run_profiler(
    config: ProfilerConfig,
    on_start: Callable[[str, float], None] | None = None,
    on_done: Callable[[Measurement, bool], None] | None = None,
    fresh: bool = False,
) -> list[Measurement]:
    """Measure every (variant, cores) not already in the results file; all measurements in order."""
    config.check()
    from infadapter.serving.server import find_model_file

    for name in config.variants:
        find_model_file(config.model_dir, name)
    found = cgroups.probe()
    if found.driver is None:
        raise BackendUnavailable(f"profiler: {found.reason}; the profiler needs CPU quotas (run as root)")
    if fresh and config.results_path.exists():
        config.results_path.unlink()
    done = load_results(config.results_path)
    body = predict_body(config.seed)
    out = []
    me = os.getpid()
    # The load generator (this process) gets the same CPU weight as the server, no quota.
    client = found.driver.create(f"profile-client-{me}", None)
    client.set_weight(config.priority)
    client.add_pid(me)
    try:
        for variant in config.variants:
            for cores in config.cores:
                key = (variant, round(cores, 6), round(config.slo_ms, 6))
                if key in done:
                    m, reused = done[key], True
                else:
                    if on_start is not None:
                        on_start(variant, cores)
                    m, reused = measure_one(config, found.driver, variant, cores, body), False
                    append_result(config.results_path, m)
                out.append(m)
                if on_done is not None:
                    on_done(m, reused)
    finally:
        with contextlib.suppress(BackendUnavailable):
            client.release_pid(me)
        client.remove()
        found.driver.remove_parent()
    return out


# -- the profile ---------------------------------------------------------------------------------------
def memory_quantity(peak_mb: float) -> str:
    """A memory limit with 25% headroom over the peak, rounded up to 64 MiB."""
    mib = max(128, math.ceil(peak_mb * 1.25 / 64) * 64)
    return f"{mib}Mi"


def accuracy_of(variant: str) -> float:
    """Published torchvision top-1 (fraction) of ``resnetN``; BadInput for another name."""
    depth = variant.removeprefix("resnet")
    if not depth.isdigit() or int(depth) not in PAPER_VARIANTS:
        raise BadInput(f"variant {variant!r}: no published accuracy (known: resnet18/34/50/101/152)")
    return round(PAPER_VARIANTS[int(depth)][0] / 100, 5)


def monotone(points: Iterable[tuple[float, float]]) -> dict[float, float]:
    """Capacity never falls when cores grow (a dip is measurement noise): running maximum."""
    out, best = {}, 0.0
    for cores, rps in sorted(points):
        best = max(best, rps)
        out[float(cores)] = round(best, 2)
    return out


def build_profile(
    measurements: list[Measurement],
    slo_ms: float,
    budget_cores: float,
    core_step: float,
    min_cores: float,
    safety: float,
    source: str,
    name: str = "local",
) -> Profile:
    """The decision core's profile from the measurements (validated)."""
    resolutions = {m.resolution for m in measurements if m.resolution}
    by_variant: dict[str, list[Measurement]] = {}
    for m in measurements:
        by_variant.setdefault(m.variant, []).append(m)
    variants = []
    for variant, ms in by_variant.items():
        variants.append(
            {
                "name": variant,
                "accuracy": accuracy_of(variant),
                "load_time_s": round(float(np.median([m.load_time_s for m in ms])), 2),
                "memory": memory_quantity(max(m.peak_rss_mb for m in ms)),
                "capacity": {
                    "kind": "points",
                    "points": monotone((m.cores, m.capacity_rps) for m in ms),
                    "safety": safety,
                },
                # One request alone on one core: what a start-up calibration measures again (calibrate()).
                **({"reference_ms": one_core[0].service_ms}
                   if (one_core := [m for m in ms if m.cores == 1.0 and m.threads == 1]) else {}),
            }
        )
    return profile_from_dict(
        {
            "name": name,
            "source": source,
            "slo_ms": slo_ms,
            "budget_cores": budget_cores,
            "core_step": core_step,
            "min_cores": min_cores,
            "alpha": 0.05,
            "beta": 0.001,
            # The capacities are Poisson rates whose p99 meets the SLO: decisions plan for a rate, not a peak.
            "demand": "rate",
            "variants": variants,
            "resolution": resolutions.pop() if len(resolutions) == 1 else None,
        },
        origin="profiler",
    )


# -- start-up calibration -----------------------------------------------------------------------------
#: A machine this much slower than the profile's (one request alone, one core) gets its capacities scaled.
CALIBRATION_TOLERANCE = 0.15


@dataclass(frozen=True)
class Calibration:
    """This machine against the one a profile was measured on: one variant, one request alone on one core."""

    variant: str
    reference_ms: float
    measured_ms: float
    #: Capacities are multiplied by this (1.0: kept).
    factor: float

    @property
    def ratio(self) -> float:
        """How many times slower this machine serves than the profile's (below 1: faster)."""
        return self.measured_ms / self.reference_ms

    @property
    def applied(self) -> bool:
        return self.factor != 1.0

    def message(self, profile_name: str) -> str:
        head = (f"calibration: {self.variant} took {self.measured_ms:.1f} ms alone on one core, "
                f"{self.reference_ms:.1f} ms in {profile_name}")
        if self.applied:
            return (f"{head}: this machine serves {self.ratio:.2f}x slower, so every capacity is scaled by "
                    f"{self.factor:.2f} (measure a profile here to plan on exact figures; --no-calibrate keeps them)")
        if self.ratio < 1:
            return f"{head}: this machine is {1 / self.ratio:.2f}x faster; capacities kept (conservative)"
        return f"{head}: capacities kept (within {CALIBRATION_TOLERANCE:.0%})"


def one_request_ms(model_dir: Path, variant: str, warmup: int = 3, requests: int = 7,
                   start_timeout_s: float = 120.0, host: str = "127.0.0.1") -> float:
    """The fastest of ``requests`` sequential requests to ``variant`` served alone on one core (one thread, a
    one-core cgroup quota where quotas work), in milliseconds: a slower CPU slows every request, a busy
    neighbour only some, so the fastest one measures the machine rather than the moment."""
    found = cgroups.probe()
    port = free_port(host)
    group = found.driver.create(f"calibrate-{variant}-{port}", 1.0) if found.driver is not None else None
    base_url = f"http://{host}:{port}"
    try:
        with _server(model_dir, variant, port, 1, warmup, host, group) as proc:
            wait_available(base_url, variant, proc, start_timeout_s)
            return 1000.0 * _sequential_latency_s(f"{base_url}/v1/models/{variant}:predict", predict_body(),
                                                  requests, fastest=True)
    finally:
        if group is not None:
            group.remove()
            found.driver.remove_parent()


def calibrate(profile: Profile, model_dir: Path, warmup: int = 3,
              measure: Callable[[Path, str, int], float] | None = None) -> Calibration | None:
    """Time one request alone on one core of the profile's slowest variant that has a ``reference_ms``
    (the least dominated by fixed overheads) and compare; None when no variant has one. A machine slower
    by more than :data:`CALIBRATION_TOLERANCE` gets factor ``reference / measured``; a faster one keeps the
    profile (its capacities then have headroom, the safe side)."""
    with_ref = [v for v in profile.variants if v.reference_ms is not None]
    if not with_ref:
        return None
    v = max(with_ref, key=lambda x: x.reference_ms or 0.0)
    assert v.reference_ms is not None
    measured = (measure or one_request_ms)(model_dir, v.model or v.name, warmup)
    ratio = measured / v.reference_ms
    # three significant figures, not three decimals: a machine 30x slower (a busy CI runner) must keep the
    # factor within 1 % of reference / measured, which round(x, 3) breaks below 0.05
    factor = float(f"{1.0 / ratio:.3g}") if ratio > 1 + CALIBRATION_TOLERANCE else 1.0
    return Calibration(variant=v.name, reference_ms=v.reference_ms, measured_ms=round(measured, 2), factor=factor)


def load_average() -> float:
    with contextlib.suppress(OSError):
        return float(Path("/proc/loadavg").read_text().split()[0])
    return 0.0
