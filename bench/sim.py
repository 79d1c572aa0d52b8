#!/usr/bin/env python3
"""Simulator speed: the paper window for every policy, and one full day for one policy.

Run: .venv/bin/python bench/sim.py [--day day16] [--policy infadapter] [--forecaster ewma]
Prints wall seconds, requests per second of simulation, and the share spent in policy decisions
(the solver), so a slow figure can be attributed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infadapter.core.profile import load_profile
from infadapter.observe.trace import load_window
from infadapter.sim import simulation as sim


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--day", default="day16")
    ap.add_argument("--policy", default="infadapter")
    ap.add_argument("--forecaster", default="ewma")
    args = ap.parse_args()
    profile = load_profile(Path(__file__).resolve().parents[1] / "profiles" / "paper.yaml")
    cfg = sim.SimConfig(forecaster=args.forecaster)

    rates = load_window("paper")
    t0 = time.perf_counter()
    arrivals = sim.make_arrivals(rates, 0)
    results = [sim.simulate(profile, rates, s, cfg, arrivals=arrivals) for s in sim.compare_specs(profile)]
    wall = time.perf_counter() - t0
    reqs = sum(r.requests for r in results)
    decide = sum(r.decide_s for r in results)
    print(f"paper window, {len(results)} policies: {wall:.2f} s wall, {reqs / wall:,.0f} requests/s simulated, "
          f"{decide:.2f} s in decisions ({decide / wall:.0%})")

    rates = load_window(args.day)
    t0 = time.perf_counter()
    r = sim.simulate(profile, rates, args.policy, cfg)
    wall = time.perf_counter() - t0
    print(f"{args.day}, {args.policy}: {wall:.2f} s wall for {r.requests:,} requests and {len(r.decisions)} decisions, "
          f"{r.decide_s:.2f} s in decisions ({r.decide_s / wall:.0%})")


if __name__ == "__main__":
    main()
