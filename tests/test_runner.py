"""The one adapter runner: a backend added in the test alone (one class, one preparation step, one
registry entry) runs through the same lifecycle, state file and summary as the shipped ones."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from infadapter.adapter.runner import AdapterConfig, AdapterRun, Prepared
from infadapter.adapter.state import read_state, state_path
from infadapter.backends import BACKENDS, BackendEntry, backend_class, backend_setup
from infadapter.backends.base import ApplyResult, BackendState, VariantState
from infadapter.backends.kubernetes.setup import ReplayedLoad
from infadapter.core.control import ControlConfig
from infadapter.core.plan import Plan
from infadapter.errors import BadInput

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ToyBackend:
    """A backend that keeps the plan in memory (a real one would start something)."""

    name: str = "toy"
    in_place_resize: bool = False
    plan: Plan | None = None
    applied: list[Plan] = field(default_factory=list)
    stopped: bool = False

    def state(self) -> BackendState:
        allocs = self.plan.allocations if self.plan else ()
        return BackendState(tuple(VariantState(a.name, a.cores, True) for a in allocs), self.plan)

    def apply(self, plan: Plan) -> ApplyResult:
        self.plan = plan
        self.applied.append(plan)
        return ApplyResult(serving=plan, actions=("kept in memory",))

    def cpu_seconds(self) -> dict[str, float]:
        return {}

    def in_place_max_cores(self) -> dict[str, float]:
        return {}

    def health(self) -> bool:
        return True

    def heal(self) -> str | None:
        return None

    def watch_targets(self, callback) -> None:
        """Nothing to scrape."""

    def stop(self) -> None:
        self.stopped = True


class ToySetup:
    keep_state: tuple[str, ...] = ()
    last: ToyBackend | None = None

    def prepare(self, run: AdapterRun) -> Prepared:
        backend = backend_class("toy")()
        ToySetup.last = backend
        load = ReplayedLoad(run.config.rates_rps or (), "a toy load", run.started_s)
        return Prepared(backend=backend, observe=load.observe, observation="a toy replay", limit_mode="none (toy)",
                        summary=lambda _load: {"toy_applied": len(backend.applied)})


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(BACKENDS, "toy", BackendEntry(f"{__name__}:ToyBackend", f"{__name__}:ToySetup", "toy"))


def test_a_backend_added_in_the_test_runs_through_the_one_runner(toy_registered, tmp_path):
    cfg = AdapterConfig(backend="toy", profile_path=ROOT / "profiles" / "paper.yaml", run_dir=tmp_path / "run",
                        control=ControlConfig(interval_s=1.0, check_s=0.25),
                        rates_rps=(40.0,) * 2 + (160.0,) * 2, forecaster="ewma")
    summary = AdapterRun(cfg, backend_setup("toy")).run()
    backend = ToySetup.last
    assert backend is not None and backend.stopped
    assert summary["backend"] == "toy" and summary["observation"] == "a toy replay"
    assert summary["applies"] == summary["toy_applied"] >= 1 and summary["failed_applies"] == 0
    assert summary["plan"]["variants"] == backend.plan.as_dict()["variants"]
    # The replayed step from 40 to 160 req/s was seen and planned for.
    assert backend.plan.served_capacity_rps() >= 160
    state = read_state(state_path(cfg.run_dir))
    assert state["adapter"] is None and state["summary"]["backend"] == "toy"  # released on exit
    decisions = [json.loads(line) for line in (cfg.run_dir / "decisions.jsonl").read_text().splitlines()]
    assert decisions[0]["trigger"] == "start" and decisions[0]["policy"] == "infadapter"


def test_the_shipped_backends_resolve_and_an_unknown_one_is_one_line():
    for name in ("local", "kubernetes", "dry-run"):
        assert backend_class(name).name == name
        assert isinstance(backend_setup(name).keep_state, tuple)
    with pytest.raises(BadInput, match=r"--backend: unknown backend 'nope'; expected one of local, kubernetes"):
        backend_setup("nope")
