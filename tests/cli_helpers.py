"""Run ``cli.py`` as a user would: a subprocess, its exit code, stdout and stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, input: str | None = None, timeout: float = 120, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args],
        cwd=ROOT, input=input, capture_output=True, text=True, timeout=timeout, env=full_env,
    )


#: A step load in trace seconds: 120 at 20 req/s, 160 at 150 req/s, 320 at 20 req/s; at --speedup 40 that is
#: 3 s, 4 s and 8 s. The dry-run tests replay it with STEP_LOOP (tests/test_cluster_run.py, test_explain.py).
STEP = [20.0] * 120 + [150.0] * 160 + [20.0] * 320
STEP_LOOP = ["--window", "0:600", "--speedup", "40", "--interval", "1", "--stabilization", "2",
             "--forecaster", "last"]


def write_step_trace(folder: Path) -> Path:
    """The step load as a trace file (one rate a line) in ``folder``."""
    p = folder / "step.txt"
    p.write_text("\n".join(f"{x:g}" for x in STEP) + "\n")
    return p
