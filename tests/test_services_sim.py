"""``simulate`` with services: one simulation per service, planned by one joint solve or by independent
adapters on a static split of the budget (synthetic rates here: no trace needed; the CLI on the shipped
profile runs in tests/test_docs.py, from docs/core.md)."""

from __future__ import annotations

import pytest

from infadapter.core.control import ControlConfig
from infadapter.core.profile import load_profile
from infadapter.errors import BadInput
from infadapter.sim.services import ServiceRun, _Joint, service_profile, simulate_services, split_budget
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
    assert live["infadapter"]["slo_violation_rate"] <= live["infadapter-split"]["slo_violation_rate"] + 1e-9


def test_unknown_policy_with_services_is_one_line(prof):
    with pytest.raises(BadInput, match="--policy: with services: one of infadapter, infadapter-split"):
        simulate_services(prof, _runs({"live": [1.0], "feed": [1.0], "archive": [1.0]}), "msplus")
