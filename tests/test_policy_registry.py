"""A new policy is one class and one registry entry: a toy policy registered here alone runs through
``plan``, ``simulate`` and ``adapt --backend dry-run`` (in-process, since the registry is per process)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from infadapter.core import policies
from infadapter.core.policies import Context, Decision, PolicyEntry, single_variant_plan


@dataclass(frozen=True)
class Smallest:
    """Toy: always the least accurate variant on the fewest cores that serve the load."""

    name: str = "smallest"

    def decide(self, ctx: Context) -> Decision:
        v = min(ctx.profile.variants, key=lambda x: x.accuracy)
        cores = ctx.profile.cores_for(v.name, ctx.forecast_rps)
        return Decision(single_variant_plan(ctx.profile, v.name, cores, ctx.forecast_rps, ctx.current_cores),
                        ctx.state, f"smallest: {v.name} x{cores:g}")


@pytest.fixture
def toy() -> Iterator[str]:
    policies.register(PolicyEntry("smallest", "smallest", lambda a, p, c: Smallest(), from_load=True,
                                  compare=lambda p: ["smallest"]))
    try:
        yield "smallest"
    finally:
        del policies.REGISTRY["smallest"]


def invoke(*args: str) -> tuple[int, str]:
    from cli import main

    r = CliRunner().invoke(main, list(args), catch_exceptions=False, standalone_mode=False)
    return r.exit_code, r.stdout


@pytest.mark.slow
def test_toy_policy_runs_in_plan_simulate_and_adapt(toy: str, tmp_path: Path) -> None:
    code, out = invoke("plan", "--load", "100", "--policy", toy, "--json")
    assert code == 0
    assert [v["name"] for v in json.loads(out)["variants"]] == ["resnet18"]

    code, out = invoke("simulate", "--window", "1300920:180", "--policy", f"{toy},infadapter", "--json")
    assert code == 0
    rows = {r["policy"]: r for r in json.loads(out)["results"]}
    assert rows[toy]["mean_accuracy"] == pytest.approx(0.69758, abs=1e-4)
    assert rows["infadapter"]["mean_accuracy"] > rows[toy]["mean_accuracy"]

    code, out = invoke("adapt", "--backend", "dry-run", "--out", str(tmp_path / "dry"), "--policy", toy,
                       "--rate", "40", "--duration", "3", "--interval", "1", "--json")
    assert code == 0
    assert [v["name"] for v in json.loads(out)["plan"]["variants"]] == ["resnet18"]


def test_unregistered_policy_is_one_line_of_bad_input() -> None:
    with pytest.raises(policies.BadInput, match=r"unknown policy 'smallest'.*infadapter"):
        policies.make_policy("smallest", policies.Profile.__new__(policies.Profile))


@pytest.mark.parametrize("args", [
    ["adapt", "--policy", "oracle", "--backend", "dry-run", "--out", "{tmp}/x"],
    ["adapt", "--policy", "oracle", "--rate", "5", "--duration", "5", "--run-dir", "{tmp}/run"],
    ["experiment", "--policies", "infadapter,oracle", "--window", "paper", "--scale", "0.25", "--out", "{tmp}/e"],
])
def test_simulator_only_policy_is_refused_live(args: list[str], tmp_path: Path) -> None:
    """``oracle`` (``simulator_only``: it plans on the true future load) must never run live: one line naming
    the policy and the flag, exit 2, and nothing started or written."""
    import subprocess
    import sys

    from infadapter import paths

    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = subprocess.run([sys.executable, str(paths.CLI), *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "oracle" in lines[0] and "simulator" in lines[0]
    assert lines[0].startswith("error: --policies:" if argv[0] == "experiment" else "error: --policy:")
    assert not any(tmp_path.iterdir())
