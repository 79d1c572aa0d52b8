"""Solver benchmark: time per decision, HiGHS vs CBC vs exhaustive enumeration, side by side.

    .venv/bin/python bench/solver.py            # paper profile, loads 1..400, plus the 20-variant case
    .venv/bin/python bench/solver.py --quick    # fewer loads (a smoke run)
    .venv/bin/python bench/solver.py --services 10   # N services x 5 variants sharing 64 cores, one solve

Each load is solved by every solver in turn (interleaved, so background load hits all alike), from the
paper's initial state (resnet152 on 20 cores). Reports p50/p99/max in ms and how many objectives differ
from enumeration by more than 1e-6. "highs + explain" is a decision's planning with its explanation
(core/explain.py: binding constraints and the runner-ups; the other variant set read off the solver's
table of every plan), timed in the same interleaved loop, and its median ratio to HiGHS alone: every load
there changes the plan (from resnet152=20), so every explanation searches the other variant sets. The
trace case is a run's decisions: the paper window's peak of each next interval plus 10 % (30 s, as the
paper), each planned from the previous plan, timed without and with the explanation (which searches the
other sets only on decisions that change the plan, and, in the "every decision" row, on all of them). The
scale case: 20 synthetic variants (linear capacity), budget 200 cores, step 1, HiGHS with a 1 s time
limit (best plan found when it hits it).

``--services N``: N services of the ResNet family (cycling through profiles/services.yaml's three, so SLAs
500/750/1000 ms), weights 1..N, every third with an accuracy floor, sharing 64 cores (step 1, at least 2 a
variant; beyond 10 services 6.4 cores a service: 320 for 50), with and without pod fit (8-core nodes: the
option model, one binary per variant and core count). Per-service loads are drawn (seeded) so that their
total needs 25..130% of what the budget serves, and the overloaded draws also time the relaxation solves
(floors, then shedding). ``--breakdown`` solves every draw again, instrumented: where the time goes (PuLP's
model build, the pass to HiGHS, HiGHS presolve, HiGHS search) and the branch-and-bound nodes; then times a
decomposition (per-service candidate plans of one or two variants + a knapsack over the budget; bench only,
not the solver's) on the draws where every rule held, and what it loses against the exact solve.
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
    # "highs" first tries the screen (a plan of one variant alone, proven the MILP's); "highs, MILP only" skips it.
    solvers = ["highs", "highs, MILP only", "cbc", "exhaustive"]
    options = {s: Options(solver=s) for s in solvers if s != "highs, MILP only"}
    options["highs, MILP only"] = Options(screen=False)
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
            res = solve(prof, load, current, options[s])
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
    cpu: dict[str, list[float]] = {k: [] for k in times}  # CPU seconds: less moved by the machine's other load
    changed = 0
    solve(prof, 1.0, {})
    for _ in range(3):  # three passes over the window: enough samples for a mean on a busy machine
        before: Plan | None = None
        state = None
        for i, load in enumerate(loads):
            ctx = Context(profile=prof, now_s=float(i * interval_s), forecast_rps=load, current=before, state=state)
            t0, c0 = time.perf_counter(), time.process_time()
            d = policy.decide(ctx)
            times["solve"].append(time.perf_counter() - t0)
            cpu["solve"].append(time.process_time() - c0)
            for key, other_sets in (("explain", None), ("explain_all", True)):
                t0, c0 = time.perf_counter(), time.process_time()
                d = policy.decide(ctx)
                explain(prof, "infadapter", load, before, d.plan, d.proposed, d.held_by, other_sets=other_sets,
                        other_set=d.other_set)
                times[key].append(time.perf_counter() - t0)
                cpu[key].append(time.process_time() - c0)
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
    base = statistics.fmean(cpu["solve"])
    print(f"the same in CPU time: {statistics.fmean(cpu['explain']) / base:.2f}x "
          f"({statistics.fmean(cpu['explain_all']) / base:.2f}x; policy alone {1000 * base:.2f} ms CPU a decision)")


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


def services_case(n: int, n_loads: int, pod_cores: float | None, breakdown: bool = False) -> None:
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
    budget = 64.0 if n <= 10 else 6.4 * n  # beyond 10 services, the same cores a service as 10 on 64
    data = {"budget_cores": budget, "core_step": 1, "min_cores": 2, "alpha": 0.05, "beta": 0.001, "services": services}
    if pod_cores is not None:
        data["max_pod_cores"] = pod_cores
    prof = profile_from_dict(data)
    # What the budget serves at most, all on ResNet-18 (about 24 req/s a core at these SLAs).
    top = 0.8 * 24.4 * budget
    rng = random.Random(25)
    times, cpu, shed, limited = [], [], 0, 0  # cpu: a process stopped or crowded out by others keeps its CPU time
    solve(prof, 0, loads={s["name"]: 1.0 for s in services})  # first-instance costs out of the measurement
    current: dict[str, float] = {}
    draws: list[tuple[dict[str, float], dict[str, float]]] = []
    objectives: list[float | None] = []  # the exact solve's, where every rule held (no floor gave way, no shed)
    for i in range(n_loads):
        total = top * (0.25 + 1.05 * i / max(1, n_loads - 1))
        raw = [rng.random() + 0.2 for _ in services]
        loads = {s["name"]: total * r / sum(raw) for s, r in zip(services, raw, strict=True)}
        draws.append((loads, current))
        t0, c0 = time.perf_counter(), time.process_time()
        res = solve(prof, 0, current, Options(time_limit_s=5.0), loads=loads)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        shed += not res.plan.feasible
        limited += not res.plan.optimal
        objectives.append(res.plan.objective if res.plan.feasible and not res.plan.notes else None)
        current = res.plan.cores_by_name()
    fit = f"pod fit {pod_cores:g}-core nodes" if pod_cores else "no pod fit"
    print(f"{n} services x 5 variants, budget {budget:g} cores, {fit}, {n_loads} load draws (25..130% of the budget)")
    print(row(f"highs, {n} services", times, f"  shed some load: {shed}, stopped at the 5 s limit: {limited}"))
    print(row(f"highs, {n} services (CPU)", cpu))
    if breakdown:
        breakdown_rows([highs_breakdown(prof, loads, cur) for loads, cur in draws])
        decomposition_rows(prof, draws, objectives)


def highs_breakdown(prof, loads: dict[str, float], current: dict[str, float]) -> dict[str, float]:
    """One multi-service solve taken apart (solver._solve_services' loop, instrumented): seconds in the
    PuLP model build (with the decomposition's start), in passing it to HiGHS, in HiGHS presolve (timed on a
    copy of the model, presolved alone) and in the rest of HiGHS's run (root LP, cuts, branch and bound); the
    programs tried (the relaxations of an overloaded draw) and the branch-and-bound nodes of each."""
    import highspy

    from infadapter.core import solver as solver_mod

    out = {"build": 0.0, "pass": 0.0, "presolve": 0.0, "search": 0.0, "programs": 0, "nodes": 0,
           "feasible_nodes": 0}
    feasible = (highspy.HighsModelStatus.kOptimal, highspy.HighsModelStatus.kTimeLimit)
    opts = solver_mod.variant_options(prof)
    for groups in solver_mod._relaxations(prof, loads):
        t0 = time.perf_counter()
        prob, _, _ = solver_mod._model(prof, groups, current)
        start = solver_mod.services_start(prof, loads, groups, opts)  # as the product's solve, timed as build
        t1 = time.perf_counter()
        highs, _ = solver_mod._pulp_solver(Options(time_limit_s=5.0), 5.0)
        highs.optionsDict.update(solver_mod.HIGHS_SERVICES_OPTIONS)
        highs.createAndConfigureSolver(prob)
        highs.buildSolverModel(prob)
        h = prob.solverModel
        if start is not None:
            solver_mod.set_start(h, prob.start(*start))
        t2 = time.perf_counter()
        copy = highspy.Highs()
        copy.setOptionValue("output_flag", False)
        copy.setOptionValue("threads", 1)
        copy.passModel(h.getModel())
        t3 = time.perf_counter()
        copy.presolve()
        presolve = time.perf_counter() - t3
        t4 = time.perf_counter()
        h.run()
        run = time.perf_counter() - t4
        nodes = h.getInfo().mip_node_count
        out["build"] += t1 - t0
        out["pass"] += t2 - t1
        out["presolve"] += min(presolve, run)
        out["search"] += max(0.0, run - presolve)
        out["programs"] += 1
        out["nodes"] += nodes
        if h.getModelStatus() in feasible and h.getInfo().primal_solution_status == 2:
            out["feasible_nodes"] = nodes
            break
    return out


def breakdown_rows(parts: list[dict[str, float]]) -> None:
    """Where a multi-service solve's time goes, summed over the draws, and the search's size."""
    total = sum(p[k] for p in parts for k in ("build", "pass", "presolve", "search"))
    names = {"build": "PuLP model build", "pass": "PuLP -> HiGHS (addCol/addRow)", "presolve": "HiGHS presolve",
             "search": "HiGHS search (root LP, cuts, branch and bound)"}
    print(f"where the time goes ({len(parts)} draws, {total:.2f} s in all, the same solves again, instrumented):")
    for k, label in names.items():
        t = sum(p[k] for p in parts)
        print(f"  {label:<48} {1000 * t / len(parts):8.1f} ms a draw  {100 * t / total:5.1f} %")
    progs = [p["programs"] for p in parts]
    nodes = [p["feasible_nodes"] for p in parts]
    print(f"  programs a draw (1 + relaxations tried): mean {statistics.fmean(progs):.1f}, max {max(progs)}; "
          f"branch-and-bound nodes of the solve that gave the plan: p50 {pct(nodes, 0.5):.0f}, max {max(nodes)}")


def decomposed(prof, loads: dict[str, float], current: dict[str, float]) -> tuple[dict[str, float], float] | None:
    """The product's decomposition (:func:`infadapter.core.decompose.decomposed`, the exact solve's starting
    plan) alone: the cores and the full objective (transition included) of its plan, or None when no pick
    fits the budget (an overloaded draw: the exact solve's relaxations decide those)."""
    from infadapter.core.decompose import decomposed as decompose
    from infadapter.core.solver import objective_value

    got = decompose(prof, loads)
    if got is None:
        return None
    cores, shares = got
    return cores, objective_value(prof, shares, cores, current)


def decomposition_rows(prof, draws: list[tuple[dict[str, float], dict[str, float]]],
                       exact: list[float | None]) -> None:
    """The decomposition (:func:`decomposed`) on the same draws from the same plans: its time, and what it
    loses against the exact solve where every rule held."""
    times, cpu, gaps, none = [], [], [], 0
    for (loads, cur), obj in zip(draws, exact, strict=True):
        if obj is None:
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        got = decomposed(prof, loads, cur)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if got is None:
            none += 1
        else:
            gaps.append(obj - got[1])
    if not times:
        return
    print(row("decomposition", times, f"  on the {len(times)} draws where every rule held"))
    print(row("decomposition (CPU)", cpu))
    if gaps:
        same = sum(1 for g in gaps if abs(g) <= 1e-9)
        print(f"  objective lost against the exact solve: max {max(gaps):.5f}, mean {statistics.fmean(gaps):.5f} "
              f"(exact objective ~{statistics.fmean(o for o in exact if o is not None):.2f}); the same objective on "
              f"{same} of {len(gaps)}; no plan found on {none}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer loads")
    ap.add_argument("--services", type=int, default=0, help="time N services sharing 64 cores instead")
    ap.add_argument("--breakdown", action="store_true",
                    help="with --services: solve every draw again, instrumented, and say where the time goes")
    ap.add_argument("--no-pod-fit", action="store_true", help="with --services: the case without pod fit only")
    ap.add_argument("--window", default="paper", help="the trace case's window (simulate --window's forms)")
    ap.add_argument("--interval", type=int, default=30, help="the trace case's decision interval, s")
    ap.add_argument("--trace-only", action="store_true", help="only the trace case")
    args = ap.parse_args()
    if args.services:
        services_case(args.services, 10 if args.quick else 40, None, args.breakdown)
        if not args.no_pod_fit:
            print()
            services_case(args.services, 10 if args.quick else 40, 8.0, args.breakdown)
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
