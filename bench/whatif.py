#!/usr/bin/env python3
"""What-if speed: ``cli.py simulate --window W --what-if S --json`` with the scenarios one after another
(``--jobs 1``) and side by side (one process each, the default), timed from outside as a user runs it.

Run: .venv/bin/python bench/whatif.py [--window day1] [--what-if traffic=1.5] [--baseline DIR]
Prints each run's wall seconds, each scenario's own seconds (simulation, of which decisions) and whether
the two runs gave the same numbers (they must: where a run runs does not change it). ``--baseline DIR``: a
checkout of the code before a change (``git worktree add DIR main``, or ``git archive main | tar -x -C DIR``
with .venv and models linked in) whose ``cli.py`` runs the same two ways first, with this Python, in the same
session; then whether before and after gave the same numbers.
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


def run(window: str, what_if: list[str], jobs: int | None, root: Path = ROOT) -> tuple[float, dict]:
    cmd = [sys.executable, str(root / "cli.py"), "simulate", "--window", window, "--json",
           "--plot", str(Path(tempfile.gettempdir()) / "bench-what-if.png")]
    cmd += [a for s in what_if for a in ("--what-if", s)] + (["--jobs", str(jobs)] if jobs else [])
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=root).stdout
    return time.perf_counter() - t0, json.loads(out)


def numbers(doc: dict) -> list[dict]:
    return [{k: v for k, v in s.items() if k not in TIMINGS} for s in doc["scenarios"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--window", default="day1")
    ap.add_argument("--what-if", dest="what_if", action="append", default=None)
    ap.add_argument("--baseline", type=Path, default=None, help="a checkout of the code before, run first")
    args = ap.parse_args()
    what_if = args.what_if or ["traffic=1.5"]
    roots = ([("before", args.baseline.resolve())] if args.baseline else []) + [("now" if args.baseline else "", ROOT)]
    docs = {}
    for tag, root in roots:
        for label, jobs in (("one after another (--jobs 1)", 1), ("side by side (default)", None)):
            wall, doc = run(args.window, what_if, jobs, root)
            docs[tag, label] = doc
            each = ", ".join(f"{s['scenario']} {s['wall_s']:.1f} s (decisions {s['decide_s']:.1f} s)"
                             for s in doc["scenarios"])
            print(f"{tag + ': ' if tag else ''}{args.window}, {label}: {wall:.1f} s wall; {each}")
    first = numbers(next(iter(docs.values())))
    print("same numbers" + (" (before and now, both ways)" if args.baseline else "") + ":",
          "yes" if all(numbers(d) == first for d in docs.values()) else "NO")
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
