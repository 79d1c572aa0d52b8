"""The control loop with several services (profiles/services-local.yaml: live and batch on 1.75 cores), an injected
clock and the in-test backend of tests/test_loop.py: one joint decision for both, each service's own counts and
forecast, the same policy call as the simulator's joint policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from infadapter.adapter.loop import ControlLoop, LoopConfig
from infadapter.adapter.records import DecisionLog, read_records
from infadapter.core import solver as solver_mod
from infadapter.core.control import ControlConfig
from infadapter.core.policies import joint_solve, make_policy
from infadapter.core.profile import load_profile
from infadapter.observe.monitor import Observation
from tests.test_loop import FakeBackend, FakeClock, PeakForecaster

ROOT = Path(__file__).resolve().parents[1]
PROFILE = load_profile(ROOT / "profiles" / "services-local.yaml")


@dataclass
class TwoLoads:
    """live at ``live`` req/s, batch at ``batch`` req/s, one count per second each (their sum as the total)."""

    live: float = 10.0
    batch: float = 60.0
    seen: dict[str, list[float]] = field(default_factory=lambda: {"live": [], "batch": []})

    def observe(self, now: float) -> Observation:
        while len(self.seen["live"]) < int(now - 1_000_000.0):
            self.seen["live"].append(self.live)
            self.seen["batch"].append(self.batch)
        by = {k: tuple(v[-600:]) for k, v in self.seen.items()}
        total = tuple(a + b for a, b in zip(by["live"], by["batch"], strict=True))
        return Observation(now, total, None, "fake", history_by_service=by)


def _loop(tmp_path: Path) -> tuple[ControlLoop, FakeClock, TwoLoads, FakeBackend]:
    clock, load, backend = FakeClock(), TwoLoads(), FakeBackend()
    ctl = ControlConfig(interval_s=5.0, check_s=1.0, react=False)
    loop = ControlLoop(PROFILE, make_policy("infadapter", PROFILE, 1), PeakForecaster(), backend, load.observe,
                       LoopConfig(ctl), clock=clock, sleep=clock.sleep,
                       records=DecisionLog(tmp_path / "decisions.jsonl"),
                       service_forecasters={"live": PeakForecaster(), "batch": PeakForecaster()},
                       service_controls={"live": ctl, "batch": ctl})
    return loop, clock, load, backend


def test_one_joint_decision_per_interval_from_each_service_s_own_counts(tmp_path: Path) -> None:
    loop = _loop(tmp_path)[0]
    loop.run(duration_s=16)
    records = list(read_records(tmp_path / "decisions.jsonl"))
    assert [r["trigger"] for r in records] == ["start", "interval", "interval", "interval"]
    last = records[-1]
    # Each service's forecast is its own peak (PeakForecaster): live 10, batch 60; the total is their sum.
    assert last["inputs"]["services"] == {"live": {"observed_rps": 10.0, "forecast_rps": 10.0},
                                          "batch": {"observed_rps": 60.0, "forecast_rps": 60.0}}
    assert last["forecast_rps"] == pytest.approx(70.0)
    # The plan is the joint solve's for those loads (the simulator's joint policy makes the same call).
    want = joint_solve(PROFILE, {"live": 10.0, "batch": 60.0}, {"live": 10.0, "batch": 60.0},
                       {a["name"]: a["cores"] for a in records[-2]["serving"]["variants"]},
                       solver_mod.Options())[0].plan
    assert last["plan_after"]["variants"] == want.as_dict()["variants"]
    assert {v["service"] for v in last["plan_after"]["variants"]} == {"live", "batch"}
    assert sum(v["cores"] for v in last["plan_after"]["variants"]) <= PROFILE.budget_cores + 1e-9
    # The loop's totals and snapshot per service.
    totals = loop.totals.as_dict()
    assert [s["name"] for s in totals["services"]] == ["live", "batch"]
    assert sum(s["mean_cores"] for s in totals["services"]) == pytest.approx(totals["mean_cores"], abs=1e-3)
    snap = loop.snapshot().as_dict()
    assert [s["name"] for s in snap["services"]] == ["live", "batch"]
    assert snap["services"][1]["forecast_rps"] == 60.0


def test_a_crash_routes_around_it_per_service_and_re_plans_all_services_at_once(tmp_path: Path) -> None:
    # One service's server dies: its survivors (within its service) take its traffic, then the loop decides
    # again for both at once and starts what the plan needs.
    loop, clock, _, backend = _loop(tmp_path)
    loop.tick()
    dead = backend.plan.allocations[0].name
    backend.dead.add(dead)
    clock.now_s += 1
    rec = loop.tick()
    assert rec is not None and rec.trigger == "crash"
    assert "is down" in rec.reason
    shares: dict[str, float] = {}
    for a in backend.plan.allocations:
        shares[a.service] = shares.get(a.service, 0.0) + a.share
    assert shares == pytest.approx({"live": 1.0, "batch": 1.0})
    assert dead in backend.plan.names  # started again: the joint plan still wants it
    degraded = [c for c in backend.calls if c.startswith("apply")][-2]
    assert dead not in degraded  # the degraded routing left the dead server out


def test_one_service_over_its_capacity_re_plans_all_at_once(tmp_path: Path) -> None:
    # live jumps from 10 to 40 req/s between decisions: its rate runs over its own part of the plan, so an overload
    # decision comes before the interval's, raising live's load (40 x 1.1 by the overload rule) and planning batch
    # as at an interval (its own peak, 60).
    clock, load, backend = FakeClock(), TwoLoads(), FakeBackend()
    ctl = ControlConfig(interval_s=30.0, check_s=1.0)
    loop = ControlLoop(PROFILE, make_policy("infadapter", PROFILE, 1), PeakForecaster(), backend, load.observe,
                       LoopConfig(ctl), clock=clock, sleep=clock.sleep,
                       records=DecisionLog(tmp_path / "decisions.jsonl"),
                       service_forecasters={"live": PeakForecaster(), "batch": PeakForecaster()},
                       service_controls={"live": ctl, "batch": ctl})
    loop.run(duration_s=8)
    load.live = 40.0
    loop.run(duration_s=8)
    records = list(read_records(tmp_path / "decisions.jsonl"))
    # (The first seconds re-plan on overload too: the start planned for 0 req/s, nothing observed yet.)
    over = [r for r in records if r["trigger"] == "overload" and r["time_s"] >= clock.now_s - 8]
    assert over, [r["trigger"] for r in records]
    inputs = over[0]["inputs"]["services"]
    assert inputs["live"]["forecast_rps"] == pytest.approx(44.0)
    assert inputs["batch"]["forecast_rps"] == pytest.approx(60.0)
    live_cap = sum(v["capacity"] for v in over[0]["plan_after"]["variants"] if v["service"] == "live")
    assert live_cap >= 44.0 - 1e-6


def _mix(profile, cores: dict[str, float], service: str):
    """``cores`` of one service's variants, shares in proportion to capacity, as the service's allocations."""
    from dataclasses import replace as _replace

    from infadapter.core.plan import plan_from_cores

    p = plan_from_cores(cores, 1.0, {n: profile.capacity_rps(n, c) for n, c in cores.items()},
                        {n: profile.variant(n).accuracy for n in cores})
    return tuple(_replace(a, service=service) for a in p.allocations)


def test_while_a_service_waits_for_new_variants_its_running_ones_grow_on_what_the_others_leave() -> None:
    """The live run's case (budget 1.25): live's burst at 26 req/s makes the plan swap ResNet-18 for ResNet-34,
    which loads for a second or more. Meanwhile batch takes its part of the plan at once (its ResNet-50 goes,
    0.25 core freed) and live's ResNet-18 grows in place from 0.25 to 0.5 core (41.6 req/s): never beyond what
    batch leaves of the budget."""
    from infadapter.core.control import services_bridge_plan
    from infadapter.core.plan import Plan

    profile = PROFILE.tuned(budget=1.25)
    serving = Plan((*_mix(profile, {"live-resnet18": 0.25}, "live"),
                    *_mix(profile, {"batch-resnet18": 0.75, "batch-resnet50": 0.25}, "batch")), 70.0)
    target = Plan((*_mix(profile, {"live-resnet34": 0.5}, "live"),
                   *_mix(profile, {"batch-resnet18": 0.75}, "batch")), 86.0)
    bridge = services_bridge_plan(profile, serving, target, {"live": 25.7, "batch": 60.4})
    assert bridge is not None
    assert bridge.cores_by_name() == {"batch-resnet18": 0.75, "live-resnet18": 0.5}
    assert bridge.served_capacity_rps("live") >= 25.7 and bridge.cores <= profile.budget_cores + 1e-9
    assert {a.name: a.service for a in bridge.allocations} == {"batch-resnet18": "batch", "live-resnet18": "live"}
    # A burst beyond what batch leaves: live grows to the budget's edge, no further.
    assert services_bridge_plan(profile, serving, target, {"live": 90.0, "batch": 60.4}).cores_by_name() == {
        "batch-resnet18": 0.75, "live-resnet18": 0.5}
    # Live's running variant already serves its load, or no service starts a variant: nothing to grow.
    assert services_bridge_plan(profile, serving, target, {"live": 15.0, "batch": 60.4}) is None
    same = Plan((*_mix(profile, {"live-resnet18": 0.5}, "live"), *_mix(profile, {"batch-resnet18": 0.75}, "batch")),
                86.0)
    assert services_bridge_plan(profile, serving, same, {"live": 40.0, "batch": 60.4}) is None


def test_the_loop_grows_a_waiting_service_in_place_before_it_applies_the_plan(tmp_path: Path) -> None:
    """The loop applies that growth first (a backend that resizes in place), then the plan."""
    from infadapter.core.plan import Plan
    from infadapter.core.policies import REGISTRY, Decision, PolicyEntry, register

    profile = PROFILE.tuned(budget=1.25)
    serving = Plan((*_mix(profile, {"live-resnet18": 0.25}, "live"),
                    *_mix(profile, {"batch-resnet18": 0.75, "batch-resnet50": 0.25}, "batch")), 70.0)
    target = Plan((*_mix(profile, {"live-resnet34": 0.5}, "live"),
                   *_mix(profile, {"batch-resnet18": 0.75}, "batch")), 86.0)

    @dataclass(frozen=True)
    class Swap:
        name: str = "toy-swap"

        def decide(self, ctx):
            return Decision(target, ctx.state, "swap")

    register(PolicyEntry("toy-swap", "toy-swap", lambda a, p, c: Swap()))
    try:
        clock, load, backend = FakeClock(), TwoLoads(live=26.0, batch=60.0), FakeBackend(in_place_resize=True)
        backend.plan = serving
        ctl = ControlConfig(interval_s=5.0, check_s=1.0, react=False)
        loop = ControlLoop(profile, Swap(), PeakForecaster(), backend, load.observe, LoopConfig(ctl), clock=clock,
                           sleep=clock.sleep, records=DecisionLog(None), initial_plan=serving,
                           service_forecasters={"live": PeakForecaster(), "batch": PeakForecaster()},
                           service_controls={"live": ctl, "batch": ctl})
        loop.next_decision_s = clock() + 3.0
        while loop.tick() is None:
            clock.sleep(1.0)
    finally:
        del REGISTRY["toy-swap"]
    applies = [c for c in backend.calls if c.startswith("apply")]
    assert applies == ["apply batch-resnet18=0.75,live-resnet18=0.5", "apply live-resnet34=0.5,batch-resnet18=0.75"]
