"""CPU limits: cgroup v1 for real on this machine; cgroup v2's file formats on a fake filesystem.

The v2 mount here (/sys/fs/cgroup/unified) has no cpu controller, so the v2 driver is exercised on a
temporary folder laid out like a cgroup2 mount: FAKE_CGROUP2 below. It checks what the driver writes
and parses, not what a kernel would do with it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from infadapter.errors import BadInput
from infadapter.serving import cgroups
from infadapter.serving.cgroups import CgroupV1, CgroupV2, probe, quota_us


@pytest.mark.parametrize(
    ("cores", "expected"),
    [(0.25, 25_000), (0.5, 50_000), (1, 100_000), (1.75, 175_000), (2, 200_000), (None, None)],
)
def test_quota_is_cores_times_period(cores, expected):
    assert quota_us(cores) == expected


@pytest.mark.parametrize(("cores", "message"), [(0, "greater than 0"), (-1, "greater than 0"), (0.005, "1 ms")])
def test_bad_cores_are_refused(cores, message):
    with pytest.raises(BadInput, match=message):
        quota_us(cores)


# -- real cgroup v1 ---------------------------------------------------------------------------
@pytest.fixture()
def v1_driver():
    found = probe(parent="infadapter-test")
    # This machine offers a writable v1 cpu hierarchy (and v2 without cpu): the real thing must work.
    assert isinstance(found.driver, CgroupV1), found.reason
    yield found.driver
    found.driver.remove_parent()


@pytest.fixture()
def busy_process():
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.slow
def test_v1_quota_limits_a_busy_process(v1_driver, busy_process):
    group = v1_driver.create("busy", 0.25)
    try:
        group.add_pid(busy_process.pid)
        assert group.pids() == [busy_process.pid]
        assert (group.path / "cpu.cfs_quota_us").read_text().strip() == "25000"
        u0, t0 = group.usage_seconds(), time.monotonic()
        time.sleep(2.0)
        used, wall = group.usage_seconds() - u0, time.monotonic() - t0
        # 0.25 core over ~2 s allows ~0.5 CPU seconds (+ one 100 ms period of slack); unlimited, a busy
        # loop would take up to a full core (~2 s).
        assert 0.05 < used < 0.25 * wall + 0.1 + 0.15
        assert group.throttling()["nr_throttled"] > 0
        # In place: same group, same process, new quota.
        group.set_cores(1.5)
        assert (group.path / "cpu.cfs_quota_us").read_text().strip() == "150000"
        assert group.pids() == [busy_process.pid] and group.cores == 1.5
        group.set_cores(None)
        assert (group.path / "cpu.cfs_quota_us").read_text().strip() == "-1"
        group.set_weight(8)
        assert (group.path / "cpu.shares").read_text().strip() == "8192"
        group.release_pid(busy_process.pid)
        assert group.pids() == []
    finally:
        busy_process.kill()
        busy_process.wait()
        group.remove()
    assert not group.path.exists()
    assert group.acct_path is None or not group.acct_path.exists()


def test_v1_remove_moves_stragglers_out(v1_driver, busy_process):
    group = v1_driver.create("straggler", 0.5)
    group.add_pid(busy_process.pid)
    group.remove(timeout_s=0.1)
    assert not group.path.exists()
    assert busy_process.poll() is None  # still running, now outside the limit


def test_v1_create_is_idempotent(v1_driver):
    a = v1_driver.create("twice", 0.5)
    b = v1_driver.create("twice", 0.75)
    assert a.path == b.path and (b.path / "cpu.cfs_quota_us").read_text().strip() == "75000"
    b.remove()


def test_group_names_are_checked(v1_driver):
    with pytest.raises(BadInput, match="cgroup name"):
        v1_driver.create("../escape", 1)


# -- cgroup v2 on FAKE_CGROUP2 (a temp folder, not a kernel) ----------------------------------------
def _fake_cgroup2(tmp_path: Path, controllers: str = "cpuset cpu io memory pids") -> tuple[Path, Path, Path]:
    root = tmp_path / "fake_cgroup2"
    root.mkdir()
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup2 {root} cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n")
    proc_cgroup = tmp_path / "cgroup"
    proc_cgroup.write_text("0::/\n")
    return root, mounts, proc_cgroup


def test_v2_detection_and_file_formats_on_fake_cgroup2(tmp_path):
    root, mounts, proc_cgroup = _fake_cgroup2(tmp_path)
    found = probe(mounts=mounts, proc_cgroup=proc_cgroup)
    assert isinstance(found.driver, CgroupV2) and found.driver.base == root
    group = found.driver.create("resnet18-9001", 0.5)
    assert (root / "cgroup.subtree_control").read_text() == "+cpu\n"
    assert (root / "infadapter" / "cgroup.subtree_control").read_text() == "+cpu\n"
    assert (root / "infadapter" / "resnet18-9001" / "cpu.max").read_text() == "50000 100000\n"
    group.set_cores(1.25)
    assert (group.path / "cpu.max").read_text() == "125000 100000\n"
    group.set_cores(None)
    assert (group.path / "cpu.max").read_text() == "max 100000\n"
    group.add_pid(4242)
    assert (group.path / "cgroup.procs").read_text() == "4242\n"
    group.release_pid(4242)
    assert (root / "cgroup.procs").read_text() == "4242\n"
    group.set_weight(8)
    assert (group.path / "cpu.weight").read_text() == "800\n"
    (group.path / "cpu.stat").write_text(
        "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n"
        "nr_periods 40\nnr_throttled 12\nthrottled_usec 300000\n"
    )
    assert group.usage_seconds() == 2.5
    assert group.throttling() == {"nr_periods": 40, "nr_throttled": 12, "throttled_s": 0.3}


def test_v2_without_cpu_controller_falls_back_to_v1_then_reports(tmp_path):
    _root, mounts, proc_cgroup = _fake_cgroup2(tmp_path, controllers="memory pids")
    found = probe(mounts=mounts, proc_cgroup=proc_cgroup)
    assert found.driver is None and "lacks the cpu controller" in found.reason
    v1 = tmp_path / "fake_v1_cpu"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    with mounts.open("a") as fh:
        fh.write(f"cgroup {v1} cgroup rw,relatime,cpu,cpuacct 0 0\n")
    found = probe(mounts=mounts, proc_cgroup=proc_cgroup)
    # cpu and cpuacct co-mounted: usage comes from the same folder.
    assert isinstance(found.driver, CgroupV1) and found.driver.cpu_base == found.driver.acct_base == v1


def test_nothing_mounted_is_reported(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw 0 0\n")
    found = cgroups.probe(mounts=mounts, proc_cgroup=tmp_path / "missing")
    assert found.driver is None and "no cgroup filesystem is mounted" in found.reason
