#!/usr/bin/env python3
"""What-if speed: ``cli.py simulate --window W --what-if S --json`` with the scenarios one after another
(``--jobs 1``) and side by side (one process each, the default), timed from outside as a user runs it.

Run: .venv/bin/python bench/whatif.py [--window day1] [--what-if traffic=1.5]
Prints each run's wall seconds, each scenario's own seconds (simulation, of which decisions) and whether
the two runs gave the same numbers (they must: where a run runs does not change it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = ("wall_s", "decide_s")


def run(window: str, what_if: list[str], jobs: int | None) -> tuple[float, dict]:
    cmd = [sys.executable, str(ROOT / "cli.py"), "simulate", "--window", window, "--json",
           "--plot", str(Path(tempfile.gettempdir()) / "bench-what-if.png")]
    cmd += [a for s in what_if for a in ("--what-if", s)] + (["--jobs", str(jobs)] if jobs else [])
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return time.perf_counter() - t0, json.loads(out)


def numbers(doc: dict) -> list[dict]:
    return [{k: v for k, v in s.items() if k not in TIMINGS} for s in doc["scenarios"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--window", default="day1")
    ap.add_argument("--what-if", dest="what_if", action="append", default=None)
    args = ap.parse_args()
    what_if = args.what_if or ["traffic=1.5"]
    docs = {}
    for label, jobs in (("one after another (--jobs 1)", 1), ("side by side (default)", None)):
        wall, doc = run(args.window, what_if, jobs)
        docs[label] = doc
        each = ", ".join(f"{s['scenario']} {s['wall_s']:.1f} s (decisions {s['decide_s']:.1f} s)"
                         for s in doc["scenarios"])
        print(f"{args.window}, {label}: {wall:.1f} s wall; {each}")
    a, b = docs.values()
    print("same numbers:", "yes" if numbers(a) == numbers(b) else "NO")
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
