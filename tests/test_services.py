"""Several services, one budget, one solve: the joint program equals enumeration, keeps every service's rules,
and gives way in the documented order (floors by reverse weight, then the lowest weight sheds first). A profile
without services is one service, as before (tests/test_solver.py::test_single_service_plans_are_unchanged).
Profiles: tests/test_service_profiles.py; ``cli.py plan``: tests/test_services_cli.py."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import pytest

from infadapter.core.decompose import greedy_shares, variant_options
from infadapter.core.plan import Plan
from infadapter.core.profile import Profile, load_profile, profile_from_dict
from infadapter.core.solver import Options, _assignments, objective_value, solve
from infadapter.errors import BadInput
from tests.cli_helpers import ROOT
from tests.test_service_profiles import two_services


# -- the joint program -----------------------------------------------------------------------------
def _enumerate(prof: Profile, loads: Mapping[str, float], floors: bool = True) -> float | None:
    """The best objective by enumerating every core assignment, each service's shares filled most
    accurate first (optimal for fixed cores), every service served in full and above its floor."""
    best = None
    for cores in _assignments(variant_options(prof), prof.budget_cores):
        shares: dict[str, float] = {}
        for svc in prof.services:
            mine = {n: c for n, c in cores.items() if prof.service_of(n) == svc.name}
            got = greedy_shares(prof, loads[svc.name], mine) if mine else None
            if got is None:
                break
            acc = sum(s * prof.variant(n).accuracy for n, s in got.items())
            if floors and svc.accuracy_floor is not None and acc < svc.accuracy_floor - 1e-12:
                break
            shares.update(got)
        else:
            obj = objective_value(prof, shares, cores, {})
            best = obj if best is None else max(best, obj)
    return best


@pytest.mark.parametrize("loads", [
    {"gold": 0, "bronze": 0}, {"gold": 10, "bronze": 10}, {"gold": 25, "bronze": 5}, {"gold": 40, "bronze": 30},
    {"gold": 5, "bronze": 40}, {"gold": 70, "bronze": 20},
])
@pytest.mark.parametrize("floor", [None, 0.74])
@pytest.mark.parametrize("pod_cores", [None, 3.0])  # 3-core pods: the option model, capacity per pod
def test_joint_solve_equals_enumeration_and_keeps_every_rule(loads, floor, pod_cores):
    data = two_services(max_pod_cores=pod_cores)
    data["services"][1]["accuracy_floor"] = floor
    prof = profile_from_dict(data)
    res = solve(prof, 0, {}, loads=loads)
    plan = res.plan
    assert plan.feasible and res.status == "optimal"
    assert plan.objective == pytest.approx(_enumerate(prof, loads), abs=1e-6)
    assert plan.cores <= prof.budget_cores
    for out in plan.services:
        mine = [a for a in plan.allocations if a.service == out.name]
        assert mine, "every service runs a variant"
        assert sum(a.share for a in mine) == pytest.approx(1.0)
        for a in mine:
            assert a.share * out.load_rps <= a.capacity_rps + 1e-6
        assert out.served_rps == pytest.approx(out.load_rps) and out.floor_met
    assert plan.load_rps == sum(loads.values())


def test_weight_decides_who_gets_the_accurate_variant():
    # 6 cores, both at 20 req/s: big alone needs 4 cores (5 req/s a core), small 1; only one service can run
    # big alone (4 + 1 + 1 spare). The one whose accuracy counts 3x gets it, whichever it is.
    prof = profile_from_dict(two_services(budget_cores=6))
    plan = solve(prof, 0, {}, loads={"gold": 20, "bronze": 20}).plan
    acc = {o.name: o.accuracy for o in plan.services}
    assert acc["gold"] > acc["bronze"]
    swapped = copy.deepcopy(two_services(budget_cores=6))
    swapped["services"][0]["weight"], swapped["services"][1]["weight"] = 1, 3
    plan = solve(profile_from_dict(swapped), 0, {}, loads={"gold": 20, "bronze": 20}).plan
    acc = {o.name: o.accuracy for o in plan.services}
    assert acc["bronze"] > acc["gold"]


def test_a_floor_holds_whenever_the_budget_allows_it():
    # gold 32 + bronze 15 req/s on 8 cores: without a floor bronze (weight 1) runs small on 1 core (acc 0.70)
    # and gold gets 7. A floor of 0.75 holds: bronze big on 3 cores (15 req/s), gold big 4 (20) + small 1.
    data = two_services()
    free = solve(profile_from_dict(data), 0, {}, loads={"gold": 32, "bronze": 15}).plan
    assert {o.name: o.accuracy for o in free.services}["bronze"] == pytest.approx(0.70)
    data["services"][1]["accuracy_floor"] = 0.75
    held = solve(profile_from_dict(data), 0, {}, loads={"gold": 32, "bronze": 15}).plan
    bronze = {o.name: o for o in held.services}["bronze"]
    assert bronze.accuracy >= 0.75 - 1e-9 and bronze.floor_met and held.feasible


def test_floors_give_way_lowest_weight_first_then_only_as_much_as_needed():
    # 40 req/s each on 8 cores. A floor of 0.74 is half the traffic on big: 20 req/s = 4 cores, + 1 core of
    # small = 5 cores a service, 10 for both: only one floor holds. Bronze (weight 1) gives way, and only as
    # much as it must: gold's 5 cores leave 3, best used as big 1 core (5 req/s) + small 2: 0.70 + 0.08 * 5/40.
    data = two_services()
    for svc in data["services"]:
        svc["accuracy_floor"] = 0.74
    plan = solve(profile_from_dict(data), 0, {}, loads={"gold": 40, "bronze": 40}).plan
    out = {o.name: o for o in plan.services}
    assert out["gold"].floor_met and not out["bronze"].floor_met
    assert out["bronze"].accuracy == pytest.approx(0.71)
    assert plan.feasible  # every request still served
    assert any("service bronze: accuracy" in n and "below its floor 0.74" in n for n in plan.notes)


def test_the_lowest_weight_service_sheds_first_and_the_plan_says_by_how_much():
    # 8 cores serve at most 160 req/s (small, 20 a core); gold needs 100 (5 cores), so bronze gets 3 cores:
    # 60 of its 100 req/s.
    prof = profile_from_dict(two_services())
    res = solve(prof, 0, {}, loads={"gold": 100, "bronze": 100})
    out = {o.name: o for o in res.plan.services}
    assert not res.plan.feasible and res.status == "infeasible-load"
    assert out["gold"].served_rps == pytest.approx(100) and out["gold"].shed_rps == 0
    assert out["bronze"].served_rps == pytest.approx(60) and out["bronze"].shed_rps == pytest.approx(40)
    assert "service bronze: served 60.0 of its 100.0 req/s forecast (short by 40.0 req/s, 40.0%)" in res.plan.notes
    assert res.plan.cores == 8


def test_when_even_the_highest_weight_cannot_be_served_the_others_get_nothing():
    prof = profile_from_dict(two_services())
    res = solve(prof, 0, {}, loads={"gold": 200, "bronze": 10})
    out = {o.name: o for o in res.plan.services}
    assert out["bronze"].served_rps == 0 and out["gold"].served_rps == pytest.approx(160)
    assert {a.service for a in res.plan.allocations} == {"gold"}


def test_service_loads_are_checked():
    prof = profile_from_dict(two_services())
    with pytest.raises(BadInput, match="no load for service 'bronze'"):
        solve(prof, 0, {}, loads={"gold": 1})
    with pytest.raises(BadInput, match="unknown service 'silver'"):
        solve(prof, 0, {}, loads={"gold": 1, "bronze": 1, "silver": 1})
    with pytest.raises(BadInput, match="give NAME=RPS"):
        solve(prof, 10)
    with pytest.raises(BadInput, match="exhaustive"):
        solve(prof, 0, loads={"gold": 1, "bronze": 1}, options=Options(solver="exhaustive"))
    with pytest.raises(BadInput, match="no services"):
        solve(load_profile(ROOT / "profiles" / "paper.yaml"), 10, loads={"a": 1})


def test_a_multi_service_plan_round_trips_through_json():
    plan = solve(profile_from_dict(two_services()), 0, {}, loads={"gold": 100, "bronze": 100}).plan
    again = Plan.from_json(plan.to_json())
    assert again == plan
    with pytest.raises(BadInput, match="shares of service gold must sum to 1"):
        d = plan.as_dict()
        d["variants"][0]["share"] = 0.5
        Plan.from_dict(d)


@pytest.mark.parametrize("beta", [0.001, 0.5])  # 0.5: keeping the running cores pays, even above the need
@pytest.mark.parametrize("before, after", [
    ({"gold": 40, "bronze": 30}, {"gold": 10, "bronze": 10}), ({"gold": 5, "bronze": 40}, {"gold": 25, "bronze": 5}),
    ({"gold": 70, "bronze": 20}, {"gold": 40, "bronze": 30}), ({"gold": 10, "bronze": 10}, {"gold": 0, "bronze": 0}),
])
def test_the_option_models_pruned_options_give_the_plan_all_options_give(before, after, beta, monkeypatch):
    """With pod fit the program keeps only the core options that serve more than a smaller one (and the
    current one): the same objective as with every option, from a running plan (the transition term)."""
    from infadapter.core import solver as solver_mod

    prof = profile_from_dict(two_services(max_pod_cores=3.0, beta=beta))
    current = solve(prof, 0, {}, loads=before).plan.cores_by_name()
    pruned = solve(prof, 0, current, loads=after).plan
    monkeypatch.setattr(solver_mod, "_useful_options", lambda choices, load, cores: choices)
    full = solve(prof, 0, current, loads=after).plan
    assert pruned.objective == pytest.approx(full.objective, abs=1e-9)
    assert pruned.cores <= full.cores + 1e-9


# -- the decomposition: the joint solve's starting plan --------------------------------------------
def _ten_services() -> Profile:
    """bench/solver.py --services 10's profile: the shipped services x 3, weights 1..10, every third floored."""
    shipped = load_profile(ROOT / "profiles" / "services.yaml").services
    services = []
    for i in range(10):
        base = shipped[i % len(shipped)]
        svc = {"name": f"s{i}", "slo_ms": base.slo_ms, "weight": float(i + 1),
               "variants": [v.model_dump(mode="json") for v in base.variants]}
        if i % 3 == 0:
            svc["accuracy_floor"] = 0.72
        services.append(svc)
    return profile_from_dict({"budget_cores": 64.0, "core_step": 1, "min_cores": 2, "alpha": 0.05, "beta": 0.001,
                              "services": services})


# Total loads (req/s) from light to where floors give way (~880) and past what the budget serves (~1250).
@pytest.mark.parametrize("total", [320.0, 650.0, 880.0, 1250.0])
def test_the_decompositions_start_keeps_every_rule_and_the_joint_optimum(total, monkeypatch):
    import random

    from infadapter.core import solver as solver_mod
    from infadapter.core.decompose import decomposed

    prof = _ten_services()
    rng = random.Random(int(total))
    raw = [rng.random() + 0.2 for _ in prof.services]
    loads = {s.name: total * r / sum(raw) for s, r in zip(prof.services, raw, strict=True)}
    got = decomposed(prof, loads)
    exact = solve(prof, 0, {}, loads=loads)
    if got is not None:  # a plan that keeps every rule, never better than the exact one
        cores, shares = got
        assert sum(cores.values()) <= prof.budget_cores + 1e-9
        for svc in prof.services:
            mine = [n for n in cores if prof.service_of(n) == svc.name]
            assert mine and sum(shares[n] for n in mine) == pytest.approx(1.0)
            for n in mine:
                assert shares[n] * loads[svc.name] <= prof.capacity_rps(n, cores[n]) + 1e-6
            if svc.accuracy_floor is not None:
                assert sum(shares[n] * prof.variant(n).accuracy for n in mine) >= svc.accuracy_floor - 1e-9
        assert objective_value(prof, shares, cores, {}) <= exact.plan.objective + 1e-9
    elif total < 800:
        pytest.fail(f"no decomposition at {total} req/s, which the budget serves with every rule")
    # The start changes how soon HiGHS finds the optimum, not which: the same objective without it.
    monkeypatch.setattr(solver_mod, "decomposed", lambda *a, **k: None)
    cold = solve(prof, 0, {}, loads=loads)
    assert exact.status == cold.status
    assert exact.plan.objective == pytest.approx(cold.plan.objective, abs=1e-9)
    assert exact.plan.feasible == cold.plan.feasible and exact.plan.notes == cold.plan.notes


# -- programs proven infeasible before they are searched ---------------------------------------------
def _three_variant_service(pod_cores: float | None) -> Profile:
    from tests.test_service_profiles import _variant

    data = two_services(budget_cores=12, max_pod_cores=pod_cores)
    data["services"][0]["variants"] = [_variant("fast", 0.70, 20, -2), _variant("mid", 0.76, 10, -1),
                                       _variant("slow", 0.80, 4)]
    return profile_from_dict(data)


def _fewest_by_enumeration(prof: Profile, service: str, load: float, floor: float | None) -> float:
    names = set(prof.service_variants(service))
    opts = {n: o for n, o in variant_options(prof).items() if n in names}
    best = float("inf")
    for cores in _assignments(opts, 3 * prof.budget_cores):  # every variant on any of its core counts
        if not cores:
            continue
        shares = greedy_shares(prof, load, cores)
        if shares is None:
            continue
        if floor is not None and sum(s * prof.variant(n).accuracy for n, s in shares.items()) < floor - 1e-12:
            continue
        best = min(best, sum(cores.values()))
    return best


@pytest.mark.parametrize("pod_cores", [None, 3.0])
@pytest.mark.parametrize("floor", [None, 0.75, 0.79])
def test_a_services_fewest_cores_are_the_fewest_of_every_mix(floor, pod_cores):
    """fewest_cores (the check that skips programs) against enumerating every core assignment of the
    service's three variants (mixes of three included), shares filled most accurate first."""
    from infadapter.core.decompose import fewest_cores, one_service

    prof = _three_variant_service(pod_cores)
    opts = variant_options(prof)
    for load in (0.0, 3.0, 17.0, 41.0, 77.0, 130.0, 400.0):
        want = _fewest_by_enumeration(prof, "gold", load, floor)
        assert fewest_cores(prof, "gold", load, floor, opts) == pytest.approx(want), (load, floor)
        if floor is None:  # read off the capacity table: the integer program gives the same
            assert one_service(prof, "gold", load, opts, "cores") == pytest.approx(want), load


def _best_by_enumeration(prof: Profile, service: str, load: float, max_cores: float) -> tuple[float, float]:
    """(the highest accuracy serving all of ``load``, the largest share of it served) on at most ``max_cores``."""
    names = set(prof.service_variants(service))
    opts = {n: o for n, o in variant_options(prof).items() if n in names}
    accuracy, served = float("-inf"), 0.0
    for cores in _assignments(opts, max_cores):
        if not cores:
            continue
        order = sorted(cores, key=lambda n: -prof.variant(n).accuracy)
        caps = [min(1.0, prof.capacity_rps(n, cores[n]) / load) if load > 0 else 1.0 for n in order]
        served = max(served, min(1.0, sum(caps)))
        shares = greedy_shares(prof, load, cores)
        if shares is not None:
            accuracy = max(accuracy, sum(s * prof.variant(n).accuracy for n, s in shares.items()))
    return accuracy, served


@pytest.mark.parametrize("pod_cores", [None, 3.0])
def test_a_services_best_accuracy_and_most_served_on_few_cores_are_those_of_every_mix(pod_cores):
    """one_service's bounds (a soft floor's least shortfall, a soft shed's least shed) against enumerating
    every core assignment of the three variants on at most so many cores."""
    from infadapter.core.decompose import most_served, one_service

    prof = _three_variant_service(pod_cores)
    opts = variant_options(prof)
    for load in (3.0, 17.0, 41.0, 77.0, 130.0):
        for max_cores in (2.0, 5.0, 8.0, 12.0):
            accuracy, served = _best_by_enumeration(prof, "gold", load, max_cores)
            got = one_service(prof, "gold", load, opts, "accuracy", max_cores=max_cores)
            assert got == pytest.approx(accuracy, abs=1e-7), (load, max_cores)
            got = one_service(prof, "gold", load, opts, "served", max_cores=max_cores)
            assert got == pytest.approx(served, abs=1e-7), (load, max_cores)
            assert most_served(prof, "gold", load, opts, max_cores) == pytest.approx(served, abs=1e-12)


@pytest.mark.parametrize("pod_cores", [None, 8.0])
@pytest.mark.parametrize("total", [320.0, 650.0, 800.0, 1000.0, 1250.0])
def test_the_bounds_on_each_service_leave_the_plan_as_it_was(total, pod_cores, monkeypatch):
    """The rows that tighten the joint program (each service's fewest cores, a soft floor's least shortfall, a
    soft shed's least shed) change how fast HiGHS proves the optimum, not the optimum: without them, the same
    plan. Draws from light to where floors give way (800, 1000) and services shed (1250)."""
    import random

    from infadapter.core import solver as solver_mod

    prof = _ten_services() if pod_cores is None else _ten_services().with_overrides(max_pod_cores=pod_cores)
    rng = random.Random(int(total) + 7)
    raw = [rng.random() + 0.2 for _ in prof.services]
    loads = {s.name: total * r / sum(raw) for s, r in zip(prof.services, raw, strict=True)}
    rows: list[str] = []
    bound = solver_mod._Fewest.bound

    def recorded(self, prob, groups):
        bound(self, prob, groups)
        rows.extend(c.name for c in prob.constraints())

    monkeypatch.setattr(solver_mod._Fewest, "bound", recorded)
    tight = solve(prof, 0, {}, loads=loads)
    assert any(r.startswith("fewest_cores_") for r in rows)
    if total >= 800:  # a floor gives way or a service sheds: its bound is there
        assert any(r.startswith(("least_shortfall_", "least_shed_")) for r in rows), total
    monkeypatch.setattr(solver_mod._Fewest, "bound", lambda self, prob, groups: None)
    loose = solve(prof, 0, {}, loads=loads)
    assert tight.status == loose.status
    assert tight.plan.cores_by_name() == loose.plan.cores_by_name()
    assert tight.plan.objective == pytest.approx(loose.plan.objective, abs=1e-6)
    assert tight.plan.notes == loose.plan.notes


@pytest.mark.parametrize("pod_cores", [None, 8.0])
@pytest.mark.parametrize("total", [880.0, 1000.0, 1250.0, 1500.0])
def test_skipping_the_programs_proven_infeasible_gives_the_plans_of_searching_them(total, pod_cores, monkeypatch):
    """Overloads of the ten services (floors give way, services shed): the plan is the one searching every
    program in turn gives, and fewer programs are searched."""
    import random

    from infadapter.core import solver as solver_mod

    prof = _ten_services() if pod_cores is None else _ten_services().with_overrides(max_pod_cores=pod_cores)
    rng = random.Random(int(total))
    raw = [rng.random() + 0.2 for _ in prof.services]
    loads = {s.name: total * r / sum(raw) for s, r in zip(prof.services, raw, strict=True)}
    built: list[int] = []
    model = solver_mod._model
    monkeypatch.setattr(solver_mod, "_model", lambda *a: (built.append(1), model(*a))[1])
    fast = solve(prof, 0, {}, loads=loads)
    searched = len(built)
    monkeypatch.setattr(solver_mod._Fewest, "proves_infeasible", lambda self, groups: False)
    built.clear()
    full = solve(prof, 0, {}, loads=loads)
    assert searched < len(built), "an overload proves some program infeasible"
    assert fast.status == full.status
    assert fast.plan.cores_by_name() == full.plan.cores_by_name()
    assert fast.plan.objective == pytest.approx(full.plan.objective, abs=1e-9)
    assert fast.plan.notes == full.plan.notes
