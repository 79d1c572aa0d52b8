"""Workload traces: per-second request rates, windows of them, scaling and time compression.

The default trace is the Twitter trace published with the paper (``workload.tbz2``: a bzip2 tar with
one ``workload.txt`` of whitespace-separated integers, one per second). Its path comes from
``--trace PATH``, else ``INFADAPTER_TRACE``, else ``../shared/data/twitter-trace/workload.tbz2``
relative to the repository root, else the user cache (downloaded there on first use).
A plain text or CSV file of per-second rates (one number per line, or a column named ``rps``) is
accepted too.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infadapter import paths
from infadapter.core.control import DAY_S
from infadapter.errors import BadInput

TRACE_URL = (
    "https://github.com/reconfigurable-ml-pipeline/web-service-datasets/raw/master/"
    "dataset/twitter_trace/workload.tbz2"
)
#: The paper's evaluation window: day 15, minutes 82-103.
PAPER_WINDOW = (15 * DAY_S + 82 * 60, 1260)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "infadapter"


def default_trace_path() -> Path:
    """Where the trace is looked for when no ``--trace`` is given (see module doc)."""
    env = os.environ.get("INFADAPTER_TRACE")
    if env:
        return Path(env)
    if paths.SHARED_TRACE.exists():
        return paths.SHARED_TRACE.resolve()
    return cache_dir() / "workload.tbz2"


def _download(dest: Path) -> None:
    """Fetch the public trace into the user cache with a progress bar (no network: a clear error)."""
    import urllib.request

    from rich.progress import Progress

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    try:
        with urllib.request.urlopen(TRACE_URL, timeout=30) as resp, tmp.open("wb") as fh, Progress(
            transient=True
        ) as bar:
            total = int(resp.headers.get("Content-Length") or 0) or None
            task = bar.add_task("downloading the Twitter trace", total=total)
            while chunk := resp.read(1 << 16):
                fh.write(chunk)
                bar.advance(task, len(chunk))
        tmp.replace(dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BadInput(
            f"--trace: {dest} is absent and the download from {TRACE_URL} failed ({exc}); "
            "pass --trace PATH or set INFADAPTER_TRACE"
        ) from None


def _parse_numbers(text: str, origin: str) -> np.ndarray:
    first = text.lstrip().split("\n", 1)[0]
    if re.search(r"[A-Za-z]", first):
        rows = list(csv.DictReader(io.StringIO(text)))
        cols = [c for c in (rows[0].keys() if rows else []) if c and c.strip().lower() in ("rps", "rate", "requests")]
        if not cols:
            raise BadInput(f"{origin}: CSV needs a column named rps (requests per second)")
        try:
            values = [float(r[cols[0]]) for r in rows]
        except (TypeError, ValueError):
            raise BadInput(f"{origin}: column {cols[0]} must hold numbers") from None
    else:
        try:
            values = [float(x) for x in re.split(r"[\s,;]+", text.strip()) if x]
        except ValueError as exc:
            raise BadInput(f"{origin}: expected numbers (req/s per second): {exc}") from None
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise BadInput(f"{origin}: the trace is empty")
    if np.any(arr < 0) or not np.all(np.isfinite(arr)):
        raise BadInput(f"{origin}: rates must be finite numbers >= 0")
    return arr


def load_trace(path: str | Path | None = None, download: bool = True, use_cache: bool = True) -> np.ndarray:
    """Per-second request rates of a whole trace as a float array.

    Parsing the 1.9-million-second Twitter trace takes seconds, so the parsed array is kept as a
    ``.npy`` file in the user cache, keyed by the source's path, size and modification time; later
    calls load it in milliseconds. A stale or unreadable cache entry is simply rebuilt.
    """
    p = Path(path) if path else default_trace_path()
    if not p.exists():
        if path is None and download:
            _download(p)
        else:
            raise BadInput(f"--trace: {p} not found (pass --trace PATH or set INFADAPTER_TRACE)")
    cached = _cache_file(p) if use_cache else None
    if cached is not None and cached.exists():
        try:
            return np.load(cached, allow_pickle=False)
        except (OSError, ValueError):
            cached.unlink(missing_ok=True)
    arr = _read_trace(p)
    if cached is not None:
        _write_cache(cached, arr)
    return arr


def _cache_file(p: Path) -> Path | None:
    """The cache entry of a trace file; None for small files, which parse faster than a cache write."""
    try:
        st = p.stat()
    except OSError:
        return None
    if st.st_size < 1 << 20:
        return None
    key = hashlib.sha256(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20]
    return cache_dir() / "traces" / f"{key}.npy"


def _write_cache(dest: Path, arr: np.ndarray) -> None:
    # Write-then-rename so a concurrent reader never sees half a file; a read-only cache is no error.
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, arr, allow_pickle=False)
        tmp.replace(dest)
    except OSError:
        pass


def _read_trace(p: Path) -> np.ndarray:
    name = p.name.lower()
    try:
        if name.endswith((".tbz2", ".tar.bz2", ".tar")):
            with tarfile.open(p) as tar:
                member = next((m for m in tar.getmembers() if m.isfile()), None)
                if member is None:
                    raise BadInput(f"{p}: the archive holds no file")
                fh = tar.extractfile(member)
                assert fh is not None
                text = fh.read().decode()
        elif name.endswith(".bz2"):
            text = bz2.decompress(p.read_bytes()).decode()
        else:
            text = p.read_text()
    except (tarfile.TarError, OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{p}: cannot read the trace ({exc})") from None
    return _parse_numbers(text, str(p))


@dataclass(frozen=True)
class Window:
    """A slice of a trace: start offset and duration in seconds."""

    start_s: int
    duration_s: int
    label: str = ""


def parse_window(spec: str) -> Window:
    """``paper`` | ``dayN`` | ``START:DURATION`` (seconds) | ``all``."""
    s = spec.strip().lower()
    if s == "paper":
        return Window(*PAPER_WINDOW, label="paper (day 15, minutes 82-103)")
    if s == "all":
        return Window(0, -1, label="whole trace")
    m = re.fullmatch(r"day(\d+)", s)
    if m:
        day = int(m.group(1))
        return Window(day * DAY_S, DAY_S, label=f"day {day}")
    m = re.fullmatch(r"(\d+):(\d+)", s)
    if m:
        start, dur = int(m.group(1)), int(m.group(2))
        if dur <= 0:
            raise BadInput(f"--window: duration must be > 0 seconds, got {dur}")
        return Window(start, dur, label=f"{start}s +{dur}s")
    raise BadInput(f"--window: expected paper, dayN, all or START:DURATION in seconds, got {spec!r}")


def cut(trace: np.ndarray, window: Window) -> np.ndarray:
    """The window's per-second rates; BadInput when it falls outside the trace."""
    if window.duration_s < 0:
        return trace.copy()
    end = window.start_s + window.duration_s
    if window.start_s >= trace.size or end > trace.size:
        raise BadInput(
            f"--window: {window.start_s}:{window.duration_s} ends at second {end}, "
            f"past the trace's {trace.size} seconds"
        )
    return trace[window.start_s : end].copy()


def transform(rates: np.ndarray, scale: float = 1.0, speedup: float = 1.0) -> np.ndarray:
    """Scale rates by ``scale`` and compress time by a whole ``speedup`` factor.

    Compression keeps the load's level and shape and shortens its duration: each output second takes
    the mean rate of ``speedup`` consecutive input seconds (a 21-minute window at speedup 3 plays in
    7 minutes at the same rates), so a small machine can replay a long window.
    """
    if not scale > 0:
        raise BadInput(f"--scale: must be > 0, got {scale}")
    if not speedup >= 1:
        raise BadInput(f"--speedup: must be >= 1, got {speedup}")
    out = rates * scale
    if speedup == 1:
        return out
    k = round(speedup)
    if abs(k - speedup) > 1e-9:
        raise BadInput(f"--speedup: must be a whole number, got {speedup}")
    n = out.size // k * k
    if n == 0:
        raise BadInput(f"--speedup: {k} is longer than the window of {out.size} s")
    return out[:n].reshape(-1, k).mean(axis=1)


def load_window(
    spec: str = "paper", trace: str | Path | None = None, scale: float = 1.0, speedup: float = 1.0
) -> np.ndarray:
    """One call for CLI commands: load, cut, scale and compress."""
    return transform(cut(load_trace(trace), parse_window(spec)), scale, speedup)


def load_history_before(
    spec: str = "paper", trace: str | Path | None = None, scale: float = 1.0, speedup: float = 1.0,
    seconds: int = 600,
) -> np.ndarray:
    """The ``seconds`` (trace time) before a window, scaled and compressed like it: what an adapter that
    was already running had observed when the window began (empty at the trace's start)."""
    w = parse_window(spec)
    if w.duration_s < 0 or w.start_s <= 0:
        return np.zeros(0)
    k = max(round(speedup), 1)
    lo = max(0, w.start_s - (seconds // k) * k)
    # Aligned to whole speedup blocks that end where the window starts.
    lo = w.start_s - (w.start_s - lo) // k * k
    before = load_trace(trace)[lo : w.start_s]
    return transform(before, scale, speedup) if before.size >= k else np.zeros(0)
