#!/usr/bin/env python3
"""``simulate --min-budget`` search: plain bisection with full runs vs the fluid estimate and early stopping.

Run: .venv/bin/python bench/min_budget.py [--window paper] [--max-violations 0.01] [--policy infadapter]

Both arms search the same grid (the profile's min_cores .. budget) on the same arrivals with the simulator's
default settings (SimConfig(); the CLI's warm start differs, so the budgets may differ from the CLI's):
"bisection" is the search as it was (the grid's top, its bottom, then halving; every run to the end);
"fluid + stop" starts at infadapter.sim.fluid's estimate, gallops up and stops a run once its violations are
over the target. Prints each arm's budget, simulations and wall seconds, and the ratio of the walls.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infadapter.commands.simulate import search_min_budget  # noqa: E402
from infadapter.core.policies import make_policy  # noqa: E402
from infadapter.core.profile import load_profile  # noqa: E402
from infadapter.observe.trace import load_window  # noqa: E402
from infadapter.sim import simulation as sim  # noqa: E402
from infadapter.sim.fluid import fluid_min_budget  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", default="paper")
    ap.add_argument("--max-violations", type=float, default=0.01)
    ap.add_argument("--policy", default="infadapter")
    args = ap.parse_args()
    base = load_profile(ROOT / "profiles" / "paper.yaml")
    rates = load_window(args.window)
    arrivals = sim.make_arrivals(rates, 0)
    cfg = sim.SimConfig()
    requests = int(arrivals.times.size)

    def violations(stop: bool):
        def at(budget: float) -> tuple[float, bool]:
            prof = base.tuned(budget=budget)
            run = sim.Simulation(prof, rates, make_policy(args.policy, prof), cfg, arrivals=arrivals)
            limit = math.floor(args.max_violations * requests + 1e-9) if stop else None
            bad, exact = run.violations(stop_above=limit)
            return bad / requests, exact
        return at

    rows = {}
    for name, stop in (("bisection", False), ("fluid + stop", True)):
        t0 = time.perf_counter()
        guess = (fluid_min_budget(base, arrivals.counts, args.max_violations, base.min_cores, base.budget_cores)
                 if stop else None)
        found = search_min_budget(violations(stop), base.min_cores, base.budget_cores, base.core_step,
                                  args.max_violations, guess=guess)
        wall = time.perf_counter() - t0
        rows[name] = wall
        print(f"{name:<13} budget {found['budget']}  simulations {found['simulations']}  "
              f"stopped early {found.get('runs_stopped_early', 0)}  fluid estimate {guess}  wall {wall:.2f} s")
    print(f"fluid + stop takes {rows['fluid + stop'] / rows['bisection']:.2f}x the wall of bisection")


if __name__ == "__main__":
    main()
