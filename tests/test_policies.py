"""Policies share one signature; each is checked on a case whose answer is known by hand."""

from __future__ import annotations

import math

import pytest

from infadapter.core import vpa
from infadapter.core.plan import Allocation, Plan
from infadapter.core.policies import Context, Decision, MsPlus, Stabilized, clamp_cores, make_policy
from infadapter.errors import BadInput


def make_ctx(profile, **overrides) -> Context:
    base = {"profile": profile, "now_s": 0.0, "forecast_rps": 10.0}
    base.update(overrides)
    return Context(**base)


def one(name: str, cores: float, cap: float = 100.0) -> Plan:
    return Plan((Allocation(name, cores, 1.0, cap),), 0.0)


def test_msplus_picks_one_variant_with_the_best_objective(paper):
    d = MsPlus().decide(make_ctx(paper, forecast_rps=45.0))
    # 45 req/s: resnet50 on 6 cores (0.8 * (10.3212 * 6 - 3.7917) = 46.5) beats the others' objective.
    assert [(a.name, a.cores, a.share) for a in d.plan.allocations] == [("resnet50", 6.0, 1.0)]


def test_msplus_infeasible_runs_the_biggest_single_capacity(paper):
    d = MsPlus().decide(make_ctx(paper, forecast_rps=500.0))
    assert not d.plan.feasible and d.plan.names == ("resnet18",) and d.plan.cores == 20


def test_infadapter_beats_or_equals_msplus(paper):
    for load in (10, 45, 120, 274):
        ctx = make_ctx(paper, forecast_rps=float(load), current=one("resnet152", 20))
        ia = make_policy("infadapter", paper, 1).decide(ctx).plan
        ms = make_policy("msplus", paper, 1).decide(ctx).plan
        assert ia.objective >= ms.objective - 1e-9


def test_oracle_plans_for_the_true_peak(paper):
    ctx = make_ctx(paper, forecast_rps=10.0, true_peak_rps=200.0)
    plan = make_policy("oracle", paper, 1).decide(ctx).plan
    assert plan.load_rps == 200.0 and plan.served_capacity_rps() >= 200.0 - 1e-6


def test_static_shares_follow_capacity(paper):
    plan = make_policy("static:resnet18=2,resnet50=4", paper, 1).decide(make_ctx(paper)).plan
    c18, c50 = paper.capacity_rps("resnet18", 2), paper.capacity_rps("resnet50", 4)
    assert plan.shares_by_name()["resnet18"] == pytest.approx(c18 / (c18 + c50))


@pytest.mark.parametrize(
    ("spec", "message"),
    [("bogus", "unknown policy 'bogus'"), ("vpa", "vpa needs a variant"), ("vpa:vgg", "unknown variant 'vgg'"),
     ("static:resnet18=x", "must be a number"), ("static:resnet18=30", "over the budget of 20")],
)
def test_bad_policy_specs(paper, spec, message):
    with pytest.raises(BadInput, match=message):
        make_policy(spec, paper)


# -- stabilization ----------------------------------------------------------------------------------
def test_scale_down_waits_for_the_window_and_scale_up_does_not(paper):
    pol = make_policy("infadapter", paper, stabilization_intervals=3)
    current = one("resnet18", 20, paper.capacity_rps("resnet18", 20))
    state = None
    kept = []
    for _ in range(3):
        d: Decision = pol.decide(make_ctx(paper, forecast_rps=20.0, current=current, state=state))
        state = d.state
        kept.append(d.plan.cores)
    # Two decisions hold the 20 cores; the third applies the scale-down.
    assert kept[:2] == [20.0, 20.0] and kept[2] < 20.0
    # Scale-up is immediate: a small plan facing a big load changes at once.
    small = one("resnet18", 2, paper.capacity_rps("resnet18", 2))
    d = pol.decide(make_ctx(paper, forecast_rps=300.0, current=small, state=None))
    assert d.plan.cores > 2


def test_a_wanted_increase_resets_the_scale_down_window(paper):
    pol = make_policy("infadapter", paper, stabilization_intervals=2)
    current = one("resnet18", 20, paper.capacity_rps("resnet18", 20))
    d1 = pol.decide(make_ctx(paper, forecast_rps=20.0, current=current))
    d2 = pol.decide(make_ctx(paper, forecast_rps=380.0, current=current, state=d1.state))
    d3 = pol.decide(make_ctx(paper, forecast_rps=20.0, current=current, state=d2.state))
    assert d3.plan.cores == 20.0  # the window restarted at d3


def test_stabilized_wraps_any_policy(paper):
    assert isinstance(make_policy("msplus", paper, 4), Stabilized)
    assert not isinstance(make_policy("msplus", paper, 1), Stabilized)


# -- VPA ---------------------------------------------------------------------------------------------
def test_vpa_histogram_buckets_match_upstream():
    # Upstream: first bucket 0.01 cores, ratio 1.05; bucket i starts at 0.01 * (1.05^i - 1) / 0.05.
    assert vpa.bucket_start(1) == pytest.approx(0.01)
    assert vpa.bucket_start(2) == pytest.approx(0.0205)
    assert vpa.find_bucket(0.005) == 0 and vpa.find_bucket(0.0204) == 1 and vpa.find_bucket(0.0206) == 2


def test_vpa_target_is_p90_times_margin():
    st = vpa.VpaState.empty()
    # 10 samples of weight ~0.1 (every CPU sample's, upstream): first one at 5 cores, then nine at 1 core.
    # Later samples weigh a little more (decay), so the nine hold just over 90% of the weight.
    st = st.add_sample(0.0, 5.0, 2.0)
    for i in range(1, 10):
        st = st.add_sample(float(i), 1.0, 2.0)
    rec = vpa.recommend(st)
    assert rec is not None
    # p90 reaches the cumulative 90% inside the 1-core bucket: its end, bucket_start(find_bucket(1) + 1).
    end_of_one = vpa.bucket_start(vpa.find_bucket(1.0) + 1)
    assert rec.target_cores == pytest.approx(end_of_one * 1.15, abs=0.002)  # whole millicores, rounded down
    # Confidence is tiny (10 samples over 9 s): the upper bound is widened by (1 + 1/conf).
    assert rec.upper_cores > 100


def test_vpa_decay_weights_recent_samples_more():
    st = vpa.VpaState.empty(vpa.VpaConfig(half_life_s=60.0))
    for i in range(10):
        st = st.add_sample(float(i), 1.0, 1.0)  # old: 1 core
    for i in range(3):
        st = st.add_sample(600.0 + i, 4.0, 1.0)  # 10 half-lives later: 4 cores, weight 1024x
    assert st.percentile(0.5) > 3.9


def test_vpa_policy_follows_usage_and_clamps(paper):
    pol = make_policy("vpa:resnet50", paper, 1)
    usage = {"resnet50": [(float(t), 3.2) for t in range(30)]}
    d = pol.decide(make_ctx(paper, current=one("resnet50", 20), cpu_usage=usage))
    # p90 of 3.2 cores -> bucket end ~3.2x, times 1.15 = ~3.7 -> rounded up to 4 cores.
    assert d.plan.names == ("resnet50",) and d.plan.cores == 4.0
    idle = {"resnet50": [(float(t), 0.1) for t in range(30)]}
    d2 = make_policy("vpa:resnet50", paper, 1).decide(make_ctx(paper, current=one("resnet50", 20), cpu_usage=idle))
    assert d2.plan.cores == 2.0  # clamped to the minimum


def test_vpa_without_samples_keeps_the_request(paper):
    d = make_policy("vpa:resnet18", paper, 1).decide(make_ctx(paper, current=one("resnet18", 7)))
    assert d.plan.cores == 7.0 and "no usage samples" in d.reason


@pytest.mark.parametrize(("cores", "expected"), [(0.1, 2.0), (2.0, 2.0), (2.01, 3.0), (7.5, 8.0), (55.0, 20.0)])
def test_clamp_cores_rounds_up_to_the_grid(paper, cores, expected):
    assert clamp_cores(paper, cores) == expected
    assert not math.isnan(expected)


def test_min_gain_keeps_current_cores_unless_they_cannot_serve(paper):
    current = one("resnet50", 10, paper.capacity_rps("resnet50", 10))
    # 50 req/s: resnet50 on 10 cores (78.5 req/s) still serves it; any new plan gains < 1.0.
    sticky = make_policy("infadapter", paper, 1, min_gain=1.0)
    held = sticky.decide(make_ctx(paper, forecast_rps=50.0, current=current))
    assert held.plan.cores_by_name() == {"resnet50": 10.0} and "kept the current cores" in held.reason
    free = make_policy("infadapter", paper, 1, min_gain=0.0).decide(make_ctx(paper, forecast_rps=50.0, current=current))
    assert free.plan.cores_by_name() != {"resnet50": 10.0}
    # 150 req/s is beyond resnet50 on 10 cores: the plan must change whatever the threshold.
    grow = sticky.decide(make_ctx(paper, forecast_rps=150.0, current=current))
    assert grow.plan.served_capacity_rps() >= 150.0 - 1e-6
    # VPA does not maximize the objective: the threshold does not apply to it.
    assert not isinstance(make_policy("vpa:resnet50", paper, 1, min_gain=1.0), Stabilized)


# -- the standby (infadapter:standby) ---------------------------------------------------------------
def test_standby_fills_the_idle_budget_with_the_fastest_variant_and_no_share(paper):
    from infadapter.core.policies import standby_variant

    pol = make_policy("infadapter:standby", paper)
    d = pol.decide(make_ctx(paper, forecast_rps=30.0))
    served = [a for a in d.plan.allocations if a.share > 0]
    idle = [a for a in d.plan.allocations if a.share == 0]
    assert standby_variant(paper) == "resnet18"  # most req/s on the smallest pod
    assert [a.name for a in idle] == ["resnet18"] and "resnet18" not in [a.name for a in served]
    assert math.isclose(d.plan.cores, paper.budget_cores)  # every idle core given to it
    assert idle[0].capacity_rps == paper.capacity_rps("resnet18", idle[0].cores)
    assert f"standby: resnet18 on {idle[0].cores:g} cores" in d.reason
    # The served part is exactly infadapter's own plan: the standby takes nothing from it.
    plain = make_policy("infadapter", paper).decide(make_ctx(paper, forecast_rps=30.0)).plan
    assert [(a.name, a.cores, a.share) for a in served] == [(a.name, a.cores, a.share) for a in plain.allocations]


def test_standby_is_not_a_scale_down_and_leaves_the_next_plan_alone(paper):
    pol = make_policy("infadapter:standby", paper)
    first = pol.decide(make_ctx(paper, forecast_rps=30.0))
    again = pol.decide(make_ctx(paper, forecast_rps=30.0, current=first.plan, state=first.state))
    # Without the rule the standby's cores would read as "more cores than wanted" and hold a scale-down.
    assert "held" not in again.reason and "kept warm" not in again.reason
    assert again.plan.cores_by_name() == first.plan.cores_by_name()


def test_no_standby_when_the_plan_leaves_no_pod_free(paper):
    pol = make_policy("infadapter:standby", paper)
    full = pol.decide(make_ctx(paper, forecast_rps=250.0)).plan
    assert all(a.share > 0 for a in full.allocations)  # the budget serves: nothing idle to keep


def test_infadapter_takes_only_the_standby_argument(paper):
    with pytest.raises(BadInput, match=r"infadapter takes no argument or :standby, got infadapter:warm"):
        make_policy("infadapter:warm", paper)


def test_min_gain_keeps_a_joint_plan_of_several_services_only_while_it_serves_every_service():
    from infadapter.core import solver
    from infadapter.core.policies import joint_policy
    from infadapter.core.profile import load_profile
    from tests.cli_helpers import ROOT

    p = load_profile(ROOT / "profiles" / "services-local.yaml")
    big = solver.solve(p, 0.0, loads={"live": 40.0, "batch": 50.0}).plan  # resnet50 in both services
    quiet = {"live": 20.0, "batch": 25.0}

    def decide(min_gain: float, current: Plan, loads: dict[str, float]) -> Decision:
        return joint_policy(p, min_gain).decide(Context(p, 0.0, sum(loads.values()), current=current,
                                                         forecast_by_service=loads))

    free = decide(0.0, big, quiet)
    assert set(free.plan.cores_by_name()) != set(big.cores_by_name())  # the solver alone swaps variants
    held = decide(1.0, big, quiet)
    assert held.plan.cores_by_name() == big.cores_by_name() and "kept the current cores" in held.reason
    assert held.held_by == "min_gain"
    # Kept as a plan of services: each variant keeps its service, each service is served whole on its own.
    assert {a.name: a.service for a in held.plan.allocations} == {a.name: a.service for a in big.allocations}
    assert {o.name: o.shed_rps for o in held.plan.services} == {"live": 0.0, "batch": 0.0}
    for svc in ("live", "batch"):
        assert sum(a.share for a in held.plan.allocations if a.service == svc) == pytest.approx(1.0)
    # A current plan that cannot serve one service's forecast changes whatever the threshold.
    small = solver.solve(p, 0.0, loads={"live": 10.0, "batch": 10.0}).plan
    grown = decide(1.0, small, quiet)
    assert "kept the current cores" not in grown.reason
    assert all(o.shed_rps <= 1e-6 for o in grown.plan.services)
