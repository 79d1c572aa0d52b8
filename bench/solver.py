"""Solver benchmark: time per decision, HiGHS vs CBC vs exhaustive enumeration, side by side.

    .venv/bin/python bench/solver.py            # paper profile, loads 1..400, plus the 20-variant case
    .venv/bin/python bench/solver.py --quick    # fewer loads (a smoke run)
    .venv/bin/python bench/solver.py --services 10   # N services x 5 variants sharing 64 cores, one solve

Each load is solved by every solver in turn (interleaved, so background load hits all alike), from
the paper's initial state (resnet152 on 20 cores). Reports p50/p99/max in ms and how many objectives
differ from enumeration by more than 1e-6. "highs + explain" is a decision's planning with its
explanation (core/explain.py: binding constraints and the runner-ups, one more solve with a no-good
cut), timed in the same interleaved loop, and its median ratio to HiGHS alone: every load there changes
the plan (from resnet152=20), so every explanation searches the other variant sets. The trace case is a
run's decisions: the paper window's peak of each next interval plus 10 % (30 s, as the paper), each
planned from the previous plan, timed without and with the explanation (which searches the other sets
only on decisions that change the plan, and, in the "every decision" row, on all of them). The scale case: 20
synthetic variants (linear capacity), budget 200 cores, step 1, HiGHS with a 1 s time limit (best
plan found when it hits it).

``--services N``: N services of the ResNet family (cycling through profiles/services.yaml's three, so SLAs
500/750/1000 ms), weights 1..N, every third with an accuracy floor, sharing 64 cores (step 1, at least 2 a
variant), with and without pod fit (8-core nodes: the option model, one binary per variant and core
count). Per-service loads are drawn (seeded) so that their total needs 25..130% of what the budget serves,
and the overloaded draws also time the relaxation solves (floors, then shedding).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infadapter.core.explain import explain  # noqa: E402
from infadapter.core.plan import Plan  # noqa: E402
from infadapter.core.profile import load_profile, profile_from_dict  # noqa: E402
from infadapter.core.solver import Options, solve  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def row(name: str, times: list[float], extra: str = "") -> str:
    ms = [t * 1000 for t in times]
    return (f"{name:<26} n={len(ms):<4} p50 {pct(ms, 0.5):7.1f} ms   p99 {pct(ms, 0.99):7.1f} ms   "
            f"max {max(ms):7.1f} ms   mean {statistics.fmean(ms):7.1f} ms {extra}")


def paper_case(loads: list[float]) -> None:
    prof = load_profile(ROOT / "profiles" / "paper.yaml")
    current = {"resnet152": 20.0}
    solvers = ["highs", "cbc", "exhaustive"]
    times: dict[str, list[float]] = {s: [] for s in solvers}
    explained: list[float] = []
    mismatches = dict.fromkeys(solvers, 0)
    solve(prof, 1.0, current)  # import and first-instance costs out of the measurement
    before = Plan.from_dict({"load": 0, "variants": [{"name": "resnet152", "cores": 20, "share": 1}]})
    for load in loads:
        t0 = time.perf_counter()
        res = solve(prof, load, current)
        explain(prof, "infadapter", load, before, res.plan, other_set=res.other_set)
        explained.append(time.perf_counter() - t0)
        ref = None
        for s in reversed(solvers):  # exhaustive first: it is the reference
            t0 = time.perf_counter()
            res = solve(prof, load, current, Options(solver=s))
            times[s].append(time.perf_counter() - t0)
            if ref is None:
                ref = res.plan.objective
            elif abs(res.plan.objective - ref) > 1e-6:
                mismatches[s] += 1
    print(f"paper profile, loads {loads[0]:g}..{loads[-1]:g} req/s ({len(loads)} loads), current resnet152=20")
    for s in solvers:
        print(row(s, times[s], f"  objective != enumeration: {mismatches[s]}"))
    print(row("highs + explain", explained))
    ratio = statistics.median(times["exhaustive"]) / statistics.median(times["highs"])
    print(f"median speed-up of HiGHS over enumeration: {ratio:.1f}x")
    cost = statistics.median(explained) / statistics.median(times["highs"])
    print(f"median time of a decision with its explanation: {cost:.2f}x HiGHS alone")


def trace_case(window: str, interval_s: int) -> None:
    """A run's decisions along a trace window: the policy alone vs the policy + explain, interleaved."""
    try:
        from infadapter.observe.trace import load_window

        rates = load_window(window)
    except Exception as exc:  # no trace here: say so and go on
        print(f"trace case skipped: {exc}")
        return
    from infadapter.core.policies import Context, make_policy

    prof = load_profile(ROOT / "profiles" / "paper.yaml")
    policy = make_policy("infadapter", prof)  # with the shared wrappers: stabilization 4, min gain 0.005
    loads = [1.1 * max(rates[i:i + interval_s]) for i in range(0, len(rates), interval_s)]
    times: dict[str, list[float]] = {"solve": [], "explain": [], "explain_all": []}
    changed = 0
    solve(prof, 1.0, {})
    for _ in range(3):  # three passes over the window: enough samples for a mean on a busy machine
        before: Plan | None = None
        state = None
        for i, load in enumerate(loads):
            ctx = Context(profile=prof, now_s=float(i * interval_s), forecast_rps=load, current=before, state=state)
            t0 = time.perf_counter()
            d = policy.decide(ctx)
            times["solve"].append(time.perf_counter() - t0)
            for key, other_sets in (("explain", None), ("explain_all", True)):
                t0 = time.perf_counter()
                d = policy.decide(ctx)
                explain(prof, "infadapter", load, before, d.plan, d.proposed, d.held_by, other_sets=other_sets,
                        other_set=d.other_set)
                times[key].append(time.perf_counter() - t0)
            changed += before is None or d.plan.cores_by_name() != before.cores_by_name()
            before, state = d.plan, d.state
    print(f"trace: {window} window, a decision every {interval_s} s ({len(loads)} decisions, {changed // 3} change "
          "the plan; 3 passes), the infadapter policy with its wrappers, each from the previous plan")
    print(row("policy", times["solve"]))
    print(row("policy + explain", times["explain"]))
    print(row("policy + explain (every)", times["explain_all"]))
    base = statistics.fmean(times["solve"])
    print(f"mean time of a decision with its explanation: {statistics.fmean(times['explain']) / base:.2f}x the policy "
          f"alone ({statistics.fmean(times['explain_all']) / base:.2f}x searching other sets on every decision)")


def scale_case(n_loads: int) -> None:
    variants = [
        {"name": f"v{i}", "accuracy": round(0.60 + 0.01 * i, 3), "load_time_s": 5.0 + (i % 4),
         "capacity": {"kind": "linear", "slope": 30.0 - i, "intercept": -3.0 - (i % 5), "safety": 0.8}}
        for i in range(20)
    ]
    prof = profile_from_dict({"slo_ms": 750, "budget_cores": 200, "core_step": 1, "min_cores": 2,
                              "alpha": 0.05, "beta": 0.001, "variants": variants})
    current = {"v19": 100.0, "v10": 60.0}
    times, limited = [], 0
    for i in range(n_loads):
        load = 100.0 + i * (3800.0 / max(1, n_loads - 1))
        t0 = time.perf_counter()
        res = solve(prof, load, current, Options(time_limit_s=1.0))
        times.append(time.perf_counter() - t0)
        limited += res.status == "time-limit"
    print(f"20 variants, budget 200 cores, step 1, loads 100..3900 req/s ({n_loads} loads), limit 1 s")
    print(row("highs (1 s limit)", times, f"  stopped at the limit (best found): {limited}"))


def services_case(n: int, n_loads: int, pod_cores: float | None) -> None:
    import random

    shipped = load_profile(ROOT / "profiles" / "services.yaml").services
    services = []
    for i in range(n):
        base = shipped[i % len(shipped)]
        svc = {"name": f"s{i}", "slo_ms": base.slo_ms, "weight": float(i + 1),
               "variants": [v.model_dump(mode="json") for v in base.variants]}
        if i % 3 == 0:
            svc["accuracy_floor"] = 0.72
        services.append(svc)
    data = {"budget_cores": 64, "core_step": 1, "min_cores": 2, "alpha": 0.05, "beta": 0.001, "services": services}
    if pod_cores is not None:
        data["max_pod_cores"] = pod_cores
    prof = profile_from_dict(data)
    # What 64 cores serve at most, all on ResNet-18 (about 24 req/s a core at these SLAs).
    top = 0.8 * 24.4 * 64
    rng = random.Random(25)
    times, shed, limited = [], 0, 0
    solve(prof, 0, loads={s["name"]: 1.0 for s in services})  # first-instance costs out of the measurement
    current: dict[str, float] = {}
    for i in range(n_loads):
        total = top * (0.25 + 1.05 * i / max(1, n_loads - 1))
        raw = [rng.random() + 0.2 for _ in services]
        loads = {s["name"]: total * r / sum(raw) for s, r in zip(services, raw, strict=True)}
        t0 = time.perf_counter()
        res = solve(prof, 0, current, Options(time_limit_s=5.0), loads=loads)
        times.append(time.perf_counter() - t0)
        shed += not res.plan.feasible
        limited += not res.plan.optimal
        current = res.plan.cores_by_name()
    fit = f"pod fit {pod_cores:g}-core nodes" if pod_cores else "no pod fit"
    print(f"{n} services x 5 variants, budget 64 cores, {fit}, {n_loads} load draws (25..130% of the budget)")
    print(row(f"highs, {n} services", times, f"  shed some load: {shed}, stopped at the 5 s limit: {limited}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer loads")
    ap.add_argument("--services", type=int, default=0, help="time N services sharing 64 cores instead")
    ap.add_argument("--window", default="paper", help="the trace case's window (simulate --window's forms)")
    ap.add_argument("--interval", type=int, default=30, help="the trace case's decision interval, s")
    ap.add_argument("--trace-only", action="store_true", help="only the trace case")
    args = ap.parse_args()
    if args.services:
        services_case(args.services, 10 if args.quick else 40, None)
        print()
        services_case(args.services, 10 if args.quick else 40, 8.0)
        return
    if args.trace_only:
        trace_case(args.window, args.interval)
        return
    loads = [float(x) for x in range(1, 401, 8 if args.quick else 1)]
    paper_case(loads)
    print()
    trace_case(args.window, args.interval)
    print()
    scale_case(10 if args.quick else 40)


if __name__ == "__main__":
    main()
