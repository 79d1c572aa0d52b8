"""``simulate`` with services: one simulation per service, planned by one joint solve or by independent
adapters on a static split of the budget (synthetic rates here: no trace needed; the CLI on the shipped
profile runs in tests/test_docs.py, from docs/core.md)."""

from __future__ import annotations

import pytest

from infadapter.core import solver as solver_mod
from infadapter.core.control import ControlConfig
from infadapter.core.policies import joint_solve
from infadapter.core.profile import load_profile
from infadapter.errors import BadInput
from infadapter.sim.fluid import max_service_rps, service_rps_by_steps
from infadapter.sim.services import (
    ServiceRun,
    _Joint,
    pooled_bound,
    service_profile,
    simulate_services,
    split_budget,
)
from infadapter.sim.simulation import SimConfig
from tests.test_service_profiles import SERVICES_YAML


@pytest.fixture(scope="module")
def prof():
    return load_profile(SERVICES_YAML)


def test_split_budget_follows_mean_load_in_whole_steps_within_the_budget(prof):
    # 32 cores by 100 : 100 : 200 req/s: 8, 8, 16.
    assert split_budget(prof, {"live": 100, "feed": 100, "archive": 200}) == {"live": 8, "feed": 8, "archive": 16}
    # 1 : 1 : 98: the quiet ones keep min_cores (2), the rest goes to archive.
    got = split_budget(prof, {"live": 1, "feed": 1, "archive": 98})
    assert got == {"live": 2, "feed": 2, "archive": 28} and sum(got.values()) <= prof.budget_cores


def test_service_profile_is_one_service_at_its_slo(prof):
    live = service_profile(prof, "live", 7)
    assert live.services is None and live.slo_ms == 500 and live.budget_cores == 7
    assert live.names[0] == "live-resnet18"
    assert live.capacity_rps("live-resnet18", 4) == prof.capacity_rps("live-resnet18", 4)


def _runs(rates: dict[str, list[float]]) -> dict[str, ServiceRun]:
    cfg = SimConfig(control=ControlConfig(interval_s=10), seed=3)
    return {n: ServiceRun(r, cfg) for n, r in rates.items()}


def test_a_burst_borrows_the_quiet_services_cores(prof, monkeypatch):
    # live bursts to 300 req/s for the second half while feed and archive idle at 10. The split by mean load
    # (155 : 10 : 10 req/s) gives live 32 x 155/175 = 28.3 -> 28 cores, the others min_cores 2; the joint solve
    # gives live what it needs when it needs it, and every joint plan stays within the budget.
    rates = {"live": [10.0] * 60 + [300.0] * 60, "feed": [10.0] * 120, "archive": [10.0] * 120}
    seen = []
    real = _Joint.plan_at

    def spy(self, now_s, solver):
        plan = real(self, now_s, solver)
        seen.append(plan)
        return plan

    monkeypatch.setattr(_Joint, "plan_at", spy)
    joint = simulate_services(prof, _runs(rates), "infadapter")
    split = simulate_services(prof, _runs(rates), "infadapter-split")
    assert seen and all(p.cores <= prof.budget_cores for p in seen)
    for res in (joint, split):
        assert [s["name"] for s in res["services"]] == ["live", "feed", "archive"]
        assert set(res["services"][0]) >= {"name", "slo_violation_rate", "mean_cores", "mean_accuracy"}
        assert res["requests"] == sum(s["requests"] for s in res["services"])
        assert res["mean_cores"] == pytest.approx(sum(s["mean_cores"] for s in res["services"]), abs=1e-3)
    assert [s["budget_cores"] for s in split["services"]] == [28, 2, 2]
    live = {r["policy"]: r["services"][0] for r in (joint, split)}
    # No budget serves a 30x step at once: both lose about 22 % of live's requests. The split holds live's 28
    # cores from the start (it knows the mean ahead); the joint solve moves them at the step, and while the
    # quiet services' new variants load their old ones hold their cores (the live loop's rule), so it may
    # lose a point more there, for 2.6 points more accuracy on the quiet ones.
    assert live["infadapter"]["slo_violation_rate"] <= live["infadapter-split"]["slo_violation_rate"] + 0.01
    assert joint["services"][1]["mean_accuracy"] > split["services"][1]["mean_accuracy"] + 0.02


def test_unknown_policy_with_services_is_one_line(prof):
    with pytest.raises(BadInput, match="--policy: with services: one of infadapter, infadapter-split, "
                       "infadapter-split-peak, vpa:VARIANT or hpa:VARIANT"):
        simulate_services(prof, _runs({"live": [1.0], "feed": [1.0], "archive": [1.0]}), "msplus")


def test_split_by_peak_follows_each_service_s_peak(prof):
    # live: mean 155, peak 300; feed and archive steady at 100. By mean 155 : 100 : 100 -> 13.97, 9.01, 9.01
    # -> 14, 9, 9; by peak 300 : 100 : 100 -> 19.2, 6.4, 6.4 -> 19, 6, 6 and the core left to a 0.4 remainder.
    rates = {"live": [10.0] * 60 + [300.0] * 60, "feed": [100.0] * 120, "archive": [100.0] * 120}
    mean = simulate_services(prof, _runs(rates), "infadapter-split")
    peak = simulate_services(prof, _runs(rates), "infadapter-split-peak")
    assert [s["budget_cores"] for s in mean["services"]] == [14, 9, 9]
    assert [s["budget_cores"] for s in peak["services"]] == [19, 7, 6]
    assert peak["policy"] == "infadapter-split-peak"


def test_forecast_headroom_gives_way_before_a_service_sheds(prof):
    # 300 req/s forecast for each service does not fit in 32 cores (ResNet-18 alone needs ~15 cores each at
    # 300 req/s); the 100 req/s observed do. The plan keeps as much of the headroom as fits and sheds nothing.
    forecast, observed = {"live": 300.0, "feed": 300.0, "archive": 300.0}, {"live": 100.0, "feed": 100.0,
                                                                            "archive": 100.0}
    opts = solver_mod.Options()
    assert not solver_mod.solve(prof, 0.0, {}, opts, loads=forecast).plan.feasible
    plan = joint_solve(prof, forecast, observed, {}, opts)[0].plan
    assert plan.feasible and plan.cores <= prof.budget_cores
    for out in plan.services:
        assert 100.0 < out.load_rps < 300.0 and out.shed_rps == 0
    # Observed rates that do not fit either: the plan at the observed rates, the lowest weight (archive) sheds.
    plan = joint_solve(prof, {n: 400.0 for n in forecast}, {n: 350.0 for n in forecast}, {}, opts)[0].plan
    got = {o.name: o for o in plan.services}
    assert not plan.feasible and got["archive"].load_rps == 350.0 and got["archive"].shed_rps > 0
    assert got["live"].shed_rps == 0


@pytest.mark.parametrize("spec", ["vpa:resnet18", "hpa:resnet34=2"])
def test_per_service_baselines_run_on_the_split_by_mean(prof, spec):
    rates = {"live": [10.0] * 60 + [300.0] * 60, "feed": [100.0] * 120, "archive": [100.0] * 120}
    res = simulate_services(prof, _runs(rates), spec)
    assert res["policy"] == spec
    assert [s["budget_cores"] for s in res["services"]] == [14, 9, 9]
    for s in res["services"]:
        assert 0 < s["mean_cores"] <= s["budget_cores"] + 1e-9
    assert res["requests"] == sum(s["requests"] for s in res["services"])


def test_per_service_baseline_of_an_unknown_variant_is_one_line(prof):
    with pytest.raises(BadInput, match=r"--policy: service live has no variant 'resnet99'; give one of resnet18"):
        simulate_services(prof, _runs({"live": [1.0], "feed": [1.0], "archive": [1.0]}), "vpa:resnet99")


def test_pooled_bound_is_what_no_sharing_of_the_budget_serves(prof):
    sub = service_profile(prof, "live")
    steps = service_rps_by_steps(sub, prof.budget_cores)
    assert steps == sorted(steps) and steps[-1] == max_service_rps(sub, prof.budget_cores)
    # One service over what the whole budget serves, the others idle: all of the budget goes to it.
    rates = {"live": [1000.0] * 10, "feed": [0.0] * 10, "archive": [0.0] * 10}
    assert pooled_bound(prof, rates) == pytest.approx((1000.0 - steps[-1]) / 1000.0)
    # Bursts that take turns: pooled, nothing is late; a split by mean (16/8/8) misses live's burst.
    turns = {"live": [400.0] * 10 + [10.0] * 10, "feed": [10.0] * 10 + [200.0] * 10, "archive": [10.0] * 20}
    shares = {"live": 16.0, "feed": 8.0, "archive": 8.0}
    assert pooled_bound(prof, turns) == 0.0
    assert pooled_bound(prof, turns, shares=shares) > 0.1
    assert pooled_bound(prof, {n: [0.0] * 5 for n in turns}) == 0.0


# -- the static split as a live policy (adapt --policy infadapter-split) -----------------------------------
@pytest.mark.parametrize("loads", [{"live": 40, "feed": 20, "archive": 5}, {"live": 300, "feed": 10, "archive": 10}])
def test_static_split_is_each_services_own_solve_on_its_share(prof, loads):
    from infadapter.core.policies import Context, StaticSplit, joint_policy

    budgets = split_budget(prof, {"live": 155, "feed": 10, "archive": 10})
    policy = joint_policy(prof, 0.0, "infadapter-split", budgets)
    assert isinstance(policy, StaticSplit)
    plan = policy.decide(Context(prof, 0.0, sum(loads.values()), forecast_by_service=loads)).plan
    for name, share in budgets.items():
        mine = [a for a in plan.allocations if a.service == name]
        assert mine and sum(a.cores for a in mine) <= share + 1e-9  # never another service's cores
        alone = solver_mod.solve(service_profile(prof, name, share), loads[name], {}).plan
        assert {a.name: a.cores for a in mine} == {a.name: a.cores for a in alone.allocations}
    # live at 300 req/s outgrows its share: the plan says how much it serves, as the joint solve's does.
    out = {o.name: o for o in plan.services}
    assert plan.feasible == all(o.shed_rps <= 1e-6 for o in out.values())


def test_a_static_split_needs_services_and_the_windows_loads(prof):
    from infadapter.core.policies import joint_policy, make_policy

    with pytest.raises(BadInput, match=r"^--policy infadapter-split: the split needs each service's load"):
        joint_policy(prof, 0.0, "infadapter-split")
    one = load_profile(SERVICES_YAML.parent / "local.yaml")
    with pytest.raises(BadInput, match=r"^--policy infadapter-split-peak: a static split of the budget between"):
        make_policy("infadapter-split-peak", one)


def test_a_service_s_growth_while_its_variants_load_keeps_to_what_the_others_hold(prof, monkeypatch):
    """The live loop grows a loading service's running variants only on the cores the other services leave
    (control.services_bridge_plan); each service's replay keeps to the same, never the whole budget."""
    from infadapter.core import control
    from infadapter.sim import simulation

    rates = {"live": [10.0] * 60 + [300.0] * 60, "feed": [150.0] * 120, "archive": [150.0] * 120}
    calls = []
    real = control.bridge_plan

    def spy(profile, serving, target, load_rps, max_cores=None, room_cores=None, limit_cores=None):
        grown = real(profile, serving, target, load_rps, max_cores, room_cores, limit_cores=limit_cores)
        if profile.services is None:  # a service's replay (services_bridge_plan calls it for the joint plan)
            calls.append((limit_cores, grown))
        return grown

    monkeypatch.setattr(simulation.control, "bridge_plan", spy)
    limits: list[float] = []
    real_limit = _Joint.bridge_limit

    def spy_limit(self, service, now_s):
        got = real_limit(self, service, now_s)
        key = round(now_s, 6)
        held = self.bridges.get(key) or self.plans[key]
        assert got == pytest.approx(prof.budget_cores - sum(a.cores for a in held.allocations
                                                           if a.service != service))
        limits.append(got)
        return got

    monkeypatch.setattr(_Joint, "bridge_limit", spy_limit)
    simulate_services(prof, _runs(rates), "infadapter")
    grown = [(limit, g) for limit, g in calls if g is not None]
    assert grown, "live's burst makes its running variants grow while the new ones load"
    assert all(limit is not None for limit, _ in calls)
    assert min(limits) < prof.budget_cores - 1  # the others hold cores: a real limit, not the budget
    for limit, g in grown:
        assert g.cores <= limit + 1e-9, (limit, g)
    # A split's parts have budgets of their own: no limit from the others.
    calls.clear()
    simulate_services(prof, _runs(rates), "infadapter-split")
    assert all(limit is None for limit, _ in calls)
