"""CPU limits for model-server processes through Linux cgroups (v2 ``cpu.max`` or v1 CFS quota).

``detect()`` returns a driver for whichever the machine offers writable (v2 with the ``cpu``
controller first, else v1's ``cpu`` hierarchy), or None; ``probe()`` also says why none fits, so
callers can report it. A driver creates one child group per replica under a parent named
``infadapter`` (below this process's own cgroup), and a :class:`CpuGroup` sets its quota from cores
(``quota = cores * period``), changes it in place, moves processes in, reads their cumulative CPU
time, and removes the group once its processes have exited.

Files touched (kernel formats):

- v2: ``cgroup.subtree_control`` (``+cpu``), ``cpu.max`` (``"<quota_us> <period_us>"`` or
  ``"max <period_us>"``), ``cgroup.procs``, ``cpu.stat`` (``usage_usec``, ``nr_throttled``,
  ``throttled_usec``).
- v1: ``cpu.cfs_period_us``, ``cpu.cfs_quota_us`` (``-1`` = unlimited), ``cgroup.procs``, ``cpu.stat``
  (``nr_throttled``, ``throttled_time`` ns) and, in the ``cpuacct`` hierarchy (co-mounted or its own
  mount), ``cpuacct.usage`` (ns).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from infadapter.errors import BackendUnavailable, BadInput

log = logging.getLogger("infadapter.cgroups")

PARENT = "infadapter"
PERIOD_US = 100_000
# The kernel refuses CFS quotas below 1 ms.
MIN_QUOTA_US = 1_000
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class CpuGroup(Protocol):
    """One replica's CPU group."""

    name: str
    cores: float | None

    def set_cores(self, cores: float | None) -> None: ...
    def set_weight(self, factor: float) -> None: ...
    def add_pid(self, pid: int) -> None: ...
    def release_pid(self, pid: int) -> None: ...
    def pids(self) -> list[int]: ...
    def usage_seconds(self) -> float: ...
    def throttling(self) -> dict[str, float]: ...
    def remove(self, timeout_s: float = 2.0) -> None: ...


class CgroupDriver(Protocol):
    version: int
    parent: Path

    def create(self, name: str, cores: float | None) -> CpuGroup: ...
    def remove_parent(self) -> None: ...
    def describe(self) -> str: ...


def quota_us(cores: float | None, period_us: int = PERIOD_US) -> int | None:
    """CFS quota for a core count (None: unlimited); BadInput for a non-positive or tiny value."""
    if cores is None:
        return None
    if not cores > 0:
        raise BadInput(f"cores: must be greater than 0, got {cores:g}")
    q = round(cores * period_us)
    if q < MIN_QUOTA_US:
        floor = MIN_QUOTA_US / period_us
        raise BadInput(f"cores: at least {floor:g} cores (the kernel's 1 ms quota floor), got {cores:g}")
    return q


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise BadInput(f"cgroup name: letters, digits, '.', '_' or '-' only, got {name!r}")
    return name


def _write(path: Path, text: str) -> None:
    try:
        with open(path, "w") as fh:
            fh.write(text)
    except OSError as exc:
        raise BackendUnavailable(f"cgroups: cannot write {text.strip()!r} to {path}: {exc.strerror}") from None


def _read_kv(path: Path) -> dict[str, int]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def _read_pids(path: Path) -> list[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return []


def _proc_cpu_seconds(pids: list[int]) -> float:
    """utime + stime of live processes (fallback when no cpuacct hierarchy exists)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        total += (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return total


def _rmdir_when_empty(dirs: list[Path], procs: Path, origin: Path, timeout_s: float) -> None:
    """Wait for the group's processes to exit, move stragglers out, then remove the folders."""
    deadline = time.monotonic() + timeout_s
    while _read_pids(procs) and time.monotonic() < deadline:
        time.sleep(0.02)
    left = _read_pids(procs)
    if left:
        log.warning("cgroups: moving still-running pids %s out of %s before removing it", left, procs.parent)
    for d in dirs:
        for pid in left:
            with contextlib.suppress(BackendUnavailable):  # the process may exit meanwhile
                _write(origin_of(d, origin) / "cgroup.procs", f"{pid}\n")
        for _ in range(50):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise BackendUnavailable(f"cgroups: cannot remove {d}: {exc.strerror}") from None
                time.sleep(0.02)


def origin_of(group_dir: Path, origin: Path) -> Path:
    """The folder stragglers go back to: the hierarchy's folder this process started in."""
    return origin if origin.exists() else group_dir.parent


def _rmdir_quiet(path: Path) -> None:
    with contextlib.suppress(OSError):  # still in use by another group, or already gone
        path.rmdir()


# -- cgroup v2 ---------------------------------------------------------------------------------
@dataclass
class V2Group:
    """A cgroup v2 child with ``cpu.max``."""

    name: str
    path: Path
    origin: Path
    cores: float | None = None
    period_us: int = PERIOD_US

    def set_cores(self, cores: float | None) -> None:
        q = quota_us(cores, self.period_us)
        _write(self.path / "cpu.max", f"{'max' if q is None else q} {self.period_us}\n")
        self.cores = cores

    def set_weight(self, factor: float) -> None:
        """CPU weight relative to a default process (``cpu.weight``, default 100)."""
        _write(self.path / "cpu.weight", f"{min(10000, max(1, round(100 * factor)))}\n")

    def add_pid(self, pid: int) -> None:
        _write(self.path / "cgroup.procs", f"{pid}\n")

    def release_pid(self, pid: int) -> None:
        """Move ``pid`` back to the folder this process started in."""
        _write(self.origin / "cgroup.procs", f"{pid}\n")

    def pids(self) -> list[int]:
        return _read_pids(self.path / "cgroup.procs")

    def usage_seconds(self) -> float:
        return _read_kv(self.path / "cpu.stat").get("usage_usec", 0) / 1e6

    def throttling(self) -> dict[str, float]:
        kv = _read_kv(self.path / "cpu.stat")
        return {
            "nr_periods": kv.get("nr_periods", 0),
            "nr_throttled": kv.get("nr_throttled", 0),
            "throttled_s": kv.get("throttled_usec", 0) / 1e6,
        }

    def remove(self, timeout_s: float = 2.0) -> None:
        _rmdir_when_empty([self.path], self.path / "cgroup.procs", self.origin, timeout_s)


@dataclass
class CgroupV2:
    """Driver for a cgroup2 mount whose ``cgroup.controllers`` lists ``cpu``."""

    base: Path
    parent_name: str = PARENT
    version: int = 2

    @property
    def parent(self) -> Path:
        return self.base / self.parent_name

    def describe(self) -> str:
        return f"cgroup v2 cpu.max under {self.parent}"

    def _enable_cpu(self, folder: Path) -> None:
        ctl = folder / "cgroup.subtree_control"
        current = ctl.read_text().split() if ctl.exists() else []
        if "cpu" not in current and "+cpu" not in current:
            _write(ctl, "+cpu\n")

    def create(self, name: str, cores: float | None) -> V2Group:
        _check_name(name)
        quota_us(cores)
        self._enable_cpu(self.base)
        self.parent.mkdir(exist_ok=True)
        self._enable_cpu(self.parent)
        path = self.parent / name
        path.mkdir(exist_ok=True)
        group = V2Group(name=name, path=path, origin=self.base)
        group.set_cores(cores)
        return group

    def remove_parent(self) -> None:
        """Remove the ``infadapter`` parent if no group is left in it."""
        _rmdir_quiet(self.parent)


# -- cgroup v1 ---------------------------------------------------------------------------------
@dataclass
class V1Group:
    """A cgroup v1 child in the ``cpu`` hierarchy (and its twin in ``cpuacct`` for usage)."""

    name: str
    path: Path
    acct_path: Path | None
    origin: Path
    acct_origin: Path | None
    cores: float | None = None
    period_us: int = PERIOD_US

    def set_cores(self, cores: float | None) -> None:
        q = quota_us(cores, self.period_us)
        _write(self.path / "cpu.cfs_period_us", f"{self.period_us}\n")
        _write(self.path / "cpu.cfs_quota_us", f"{-1 if q is None else q}\n")
        self.cores = cores

    def set_weight(self, factor: float) -> None:
        """CPU weight relative to a default process (``cpu.shares``, default 1024)."""
        _write(self.path / "cpu.shares", f"{max(2, round(1024 * factor))}\n")

    def add_pid(self, pid: int) -> None:
        # Writing cgroup.procs moves every thread of the process, including threads started earlier.
        _write(self.path / "cgroup.procs", f"{pid}\n")
        if self.acct_path is not None and self.acct_path != self.path:
            _write(self.acct_path / "cgroup.procs", f"{pid}\n")

    def release_pid(self, pid: int) -> None:
        """Move ``pid`` back to the folders this process started in."""
        _write(self.origin / "cgroup.procs", f"{pid}\n")
        if self.acct_path is not None and self.acct_path != self.path and self.acct_origin is not None:
            _write(self.acct_origin / "cgroup.procs", f"{pid}\n")

    def pids(self) -> list[int]:
        return _read_pids(self.path / "cgroup.procs")

    def usage_seconds(self) -> float:
        if self.acct_path is not None:
            return int((self.acct_path / "cpuacct.usage").read_text()) / 1e9
        return _proc_cpu_seconds(self.pids())

    def throttling(self) -> dict[str, float]:
        kv = _read_kv(self.path / "cpu.stat")
        return {
            "nr_periods": kv.get("nr_periods", 0),
            "nr_throttled": kv.get("nr_throttled", 0),
            "throttled_s": kv.get("throttled_time", 0) / 1e9,
        }

    def remove(self, timeout_s: float = 2.0) -> None:
        _rmdir_when_empty([self.path], self.path / "cgroup.procs", self.origin, timeout_s)
        if self.acct_path is not None and self.acct_path != self.path and self.acct_origin is not None:
            _rmdir_when_empty([self.acct_path], self.acct_path / "cgroup.procs", self.acct_origin, timeout_s)


@dataclass
class CgroupV1:
    """Driver for the v1 ``cpu`` hierarchy (``cpuacct`` co-mounted, separately mounted, or absent)."""

    cpu_base: Path
    acct_base: Path | None = None
    parent_name: str = PARENT
    version: int = 1

    @property
    def parent(self) -> Path:
        return self.cpu_base / self.parent_name

    def describe(self) -> str:
        acct = f", usage from {self.acct_base / self.parent_name}" if self.acct_base else ""
        return f"cgroup v1 cpu.cfs_quota_us under {self.parent}{acct}"

    def create(self, name: str, cores: float | None) -> V1Group:
        _check_name(name)
        quota_us(cores)
        self.parent.mkdir(exist_ok=True)
        path = self.parent / name
        path.mkdir(exist_ok=True)
        acct = None
        if self.acct_base is not None:
            (self.acct_base / self.parent_name).mkdir(exist_ok=True)
            acct = self.acct_base / self.parent_name / name
            acct.mkdir(exist_ok=True)
        group = V1Group(name=name, path=path, acct_path=acct, origin=self.cpu_base, acct_origin=self.acct_base)
        group.set_cores(cores)
        return group

    def remove_parent(self) -> None:
        """Remove the ``infadapter`` parents if no group is left in them."""
        _rmdir_quiet(self.parent)
        if self.acct_base is not None:
            _rmdir_quiet(self.acct_base / self.parent_name)


# -- detection ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Detection:
    """The usable driver, or None with the reason (for a one-line report)."""

    driver: CgroupV1 | CgroupV2 | None
    reason: str


def _own_paths(proc_cgroup: Path) -> dict[str, str]:
    """controller -> this process's cgroup path ("" key: the v2 unified hierarchy)."""
    out: dict[str, str] = {}
    try:
        text = proc_cgroup.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for ctl in parts[1].split(",") if parts[1] else [""]:
            out[ctl] = parts[2]
    return out


def _under(mount: Path, own: str | None) -> Path:
    if own and own != "/":
        nested = mount / own.lstrip("/")
        if nested.is_dir():
            return nested
    return mount


def probe(
    parent: str = PARENT,
    mounts: Path = Path("/proc/self/mounts"),
    proc_cgroup: Path = Path("/proc/self/cgroup"),
) -> Detection:
    """Find a writable CPU controller: v2 with ``cpu`` first, then v1 ``cpu``."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError as exc:
        return Detection(None, f"cannot read {mounts}: {exc.strerror}")
    own = _own_paths(proc_cgroup)
    v2: list[Path] = []
    v1_cpu: Path | None = None
    v1_acct: Path | None = None
    for line in lines:
        f = line.split()
        if len(f) < 4:
            continue
        point, fstype, opts = Path(f[1].replace("\\040", " ")), f[2], f[3].split(",")
        if fstype == "cgroup2":
            v2.append(point)
        elif fstype == "cgroup":
            if "cpu" in opts and v1_cpu is None:
                v1_cpu = point
            if "cpuacct" in opts and v1_acct is None:
                v1_acct = point
    reasons = []
    for point in v2:
        base = _under(point, own.get(""))
        try:
            controllers = (base / "cgroup.controllers").read_text().split()
        except OSError:
            controllers = []
        if "cpu" not in controllers:
            reasons.append(f"cgroup v2 at {point} lacks the cpu controller")
            continue
        if not os.access(base, os.W_OK):
            reasons.append(f"cgroup v2 at {base} is not writable (run as root or delegate it)")
            continue
        return Detection(CgroupV2(base=base, parent_name=parent), "")
    if v1_cpu is not None:
        base = _under(v1_cpu, own.get("cpu"))
        if not (base / "cpu.cfs_quota_us").exists() and not (base / "cgroup.procs").exists():
            reasons.append(f"cgroup v1 cpu at {v1_cpu} has no cpu.cfs_quota_us (kernel without CFS bandwidth)")
        elif not os.access(base, os.W_OK):
            reasons.append(f"cgroup v1 cpu at {base} is not writable (run as root)")
        else:
            acct = _under(v1_acct, own.get("cpuacct")) if v1_acct is not None else None
            if acct is not None and not os.access(acct, os.W_OK):
                acct = None
            return Detection(CgroupV1(cpu_base=base, acct_base=acct, parent_name=parent), "")
    if not v2 and v1_cpu is None:
        reasons.append("no cgroup filesystem is mounted")
    return Detection(None, "no writable cgroup CPU controller: " + "; ".join(reasons))


def detect(parent: str = PARENT) -> CgroupV1 | CgroupV2 | None:
    """The machine's writable CPU cgroup driver, or None (see :func:`probe` for the reason)."""
    return probe(parent).driver
