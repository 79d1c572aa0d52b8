#!/usr/bin/env python3
"""The README's frontier (simulated): infadapter's cost weight swept on the paper window, every baseline of
``--policy all`` on the same axes, written to docs/img/frontier.png.

Run: .venv/bin/python bench/frontier.py [--profile profiles/paper.yaml] [--window paper]
                                         [--sweep alpha=0.02,0.05,0.1,0.2,0.3] [--out docs/img/frontier.png]

It runs one ``cli.py simulate ... --policy all --sweep ... --plot OUT --json`` (printed first, so the figure's
command is exact) and prints each point and the reading: which baselines lie above and to the left of
infadapter's frontier (more accuracy at fewer cores with no more violations; infadapter/sim/frontier.py),
the ideal plans of each swept value and each baseline's accuracy ceiling at its mean cores
(infadapter/sim/ideal.py). Every figure is the simulator's, not a live run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="profiles/paper.yaml")
    ap.add_argument("--window", default="paper")
    ap.add_argument("--scale", default="1")
    ap.add_argument("--sweep", default="alpha=0.02,0.05,0.1,0.2,0.3")
    ap.add_argument("--out", default="docs/img/frontier.png")
    args = ap.parse_args()
    cmd = ["python", "cli.py", "simulate", "--window", args.window, "--policy", "all", "--sweep", args.sweep,
           "--plot", args.out]
    if args.profile != "profiles/paper.yaml":
        cmd[3:3] = ["--profile", args.profile]
    if args.scale != "1":
        cmd[-2:-2] = ["--scale", args.scale]
    print("simulated:", shlex.join(cmd), flush=True)
    r = subprocess.run([sys.executable, *cmd[1:], "--json"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        sys.exit(r.stderr.strip() or f"exit {r.returncode}")
    doc = json.loads(r.stdout)
    print(f"{'run':24} {'SLO viol.':>9} {'cores':>6} {'accuracy':>8}  frontier acc. at its cores; ceiling there")
    for p in doc["frontier"]:
        print(f"{p['label']:24} {p['slo_violation_rate']:9.2%} {p['mean_cores']:6.2f} {p['mean_accuracy']:8.2%}")
    for p in doc["ideal"]:
        print(f"{p['label']:24} {'-':>9} {p['mean_cores']:6.2f} {p['mean_accuracy']:8.2%}")
    for b in doc["baselines"]:
        fa = "outside the swept cores" if b["frontier_accuracy"] is None else f"{b['frontier_accuracy']:.2%}"
        ca = "-" if b["ceiling_accuracy"] is None else f"{b['ceiling_accuracy']:.2%}"
        mark = "  ABOVE-LEFT" if b["above_frontier"] else ""
        print(f"{b['label']:24} {b['slo_violation_rate']:9.2%} {b['mean_cores']:6.2f} {b['mean_accuracy']:8.2%}"
              f"  {fa}{mark}; {ca}")
    above = doc["above_frontier"]
    print("above and to the left of the frontier:", ", ".join(above) if above else "none")
    print("plot:", args.out)


if __name__ == "__main__":
    main()
