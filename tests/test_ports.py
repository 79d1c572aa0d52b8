"""Ports for the servers we start come from outside the kernel's ephemeral range, so a server restarted on
its port cannot lose it to a client's source port."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from infadapter.ports import DEFAULT_EPHEMERAL, LOWEST, candidates, ephemeral_range, free_port

ROOT = Path(__file__).resolve().parents[1]


def test_ephemeral_range_reads_the_kernel_and_falls_back_to_linux_default(tmp_path: Path) -> None:
    f = tmp_path / "range"
    f.write_text("40000\t50000\n")
    assert ephemeral_range(f) == (40000, 50000)
    assert ephemeral_range(tmp_path / "missing") == DEFAULT_EPHEMERAL
    f.write_text("garbage\n")
    assert ephemeral_range(f) == DEFAULT_EPHEMERAL


def test_candidates_lie_below_the_range_or_above_it_when_it_starts_low() -> None:
    assert candidates((32768, 60999)) == range(LOWEST, 32768)
    assert candidates((1024, 40000)) == range(40001, 65536)
    assert len(candidates((1024, 65000))) == 0  # no room: free_port lets the OS pick


def test_free_port_is_bindable_and_outside_the_ephemeral_range() -> None:
    first, last = ephemeral_range()
    for _ in range(20):
        port = free_port()
        assert not first <= port <= last, port
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            s.listen()


def test_a_taken_port_is_never_returned() -> None:
    held = []
    try:
        for _ in range(50):
            s = socket.socket()
            s.bind(("127.0.0.1", free_port()))
            s.listen()
            held.append(s)
        assert len({s.getsockname()[1] for s in held}) == 50
    finally:
        for s in held:
            s.close()


def test_local_cluster_runs_this_file_with_the_system_python() -> None:
    """scripts/local-cluster.sh calls `python3 -I infadapter/ports.py`: standard library only, no venv."""
    out = subprocess.run(["python3", "-I", str(ROOT / "infadapter" / "ports.py")], capture_output=True, text=True,
                         check=True)
    port = int(out.stdout)
    first, last = ephemeral_range()
    assert not first <= port <= last
    assert 'free_port() { python3 -I "$ROOT/infadapter/ports.py"; }' in (ROOT / "scripts/local-cluster.sh").read_text()
