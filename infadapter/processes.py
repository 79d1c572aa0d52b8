"""Processes the project starts and stops: is one alive, signal its group, stop it (TERM, wait, KILL).

One copy for every owner of a process (model servers, routers, Prometheus, the adapter's own record):
servers and routers run in sessions of their own so that a signal reaches their children too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def pid_alive(pid: int | None) -> bool:
    """True when a process with this pid exists and is not a zombie."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the command name in parentheses; Z means a zombie.
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def kill_tree(pid: int, sig: int) -> None:
    """Signal a process group (servers and routers run in sessions of their own), else the single process."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop_process(pid: int | None, proc: subprocess.Popen[bytes] | None, first: int = signal.SIGTERM,
                 timeout_s: float = 10.0) -> None:
    """``first`` signal, wait up to ``timeout_s``, then SIGKILL; reap when it is our child."""
    def running() -> bool:
        return proc.poll() is None if proc is not None else pid_alive(pid)

    if pid and running():
        kill_tree(pid, first)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and running():
            time.sleep(0.05)
        if running():
            kill_tree(pid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
