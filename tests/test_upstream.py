"""The upstream baselines (``hpa-upstream``, ``vpa-upstream``): the cluster's own HPA or VPA, not ours.

What runs without a cluster: the policy's first plan and its following of what runs, where it may run (the
Kubernetes backend only: one-line errors elsewhere), the objects it renders, and the VPA history it writes as
upstream's checkpoint. On a cluster: tests/test_k8s_real.py (kwok: the HPA object, following, teardown) and
tests/test_k8s_real_node.py (real node: metrics-server, the HPA scaling, a warm VPA resizing in place).
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pytest
import yaml
from cli_helpers import run_cli

from infadapter.backends.kubernetes.setup import pod_rules
from infadapter.core.plan import Allocation, Plan
from infadapter.core.policies import (
    Context,
    entry,
    make_policy,
    simulated_spec,
    upstream_vpa_history,
)
from infadapter.core.profile import load_profile
from infadapter.core.vpa import MAX_CHECKPOINT_WEIGHT, checkpoint_status, find_bucket
from infadapter.errors import BadInput
from infadapter.render import RenderConfig, UpstreamAutoscaler, render_autoscaler

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "profiles" / "local.yaml"


def test_an_upstream_policy_runs_only_on_kubernetes_and_names_its_simulated_model() -> None:
    profile = load_profile(LOCAL)
    with pytest.raises(BadInput, match=r"^--policy hpa-upstream:resnet50: the cluster's own HPA runs only live on "
                                       r"--backend kubernetes \(not in the simulator and plan\); the simulator's "
                                       r"model of it is hpa:resnet50$"):
        make_policy("hpa-upstream:resnet50", profile)
    with pytest.raises(BadInput, match="not in --backend local"):
        make_policy("vpa-upstream:resnet101", profile, backend="local")
    assert make_policy("vpa-upstream:resnet101", profile, backend="kubernetes").name == "vpa-upstream:resnet101"
    assert simulated_spec("hpa-upstream:resnet50=0.5") == "hpa:resnet50=0.5"
    assert simulated_spec("vpa-upstream:resnet101") == "vpa-updater:resnet101"
    assert simulated_spec("infadapter") == "infadapter"


@pytest.mark.parametrize("argv", [
    ["simulate", "--policy", "hpa-upstream:resnet50", "--window", "paper", "--profile", "profiles/local.yaml"],
    ["adapt", "--backend", "local", "--policy", "vpa-upstream:resnet50", "--rate", "5", "--duration", "5",
     "--profile", "profiles/local.yaml"],
])
def test_an_upstream_policy_elsewhere_is_one_line_and_exit_2(argv: list[str], tmp_path: Path) -> None:
    r = run_cli(*argv, *(["--run-dir", str(tmp_path / "x")] if argv[0] == "adapt" else []), timeout=120)
    assert r.returncode == 2, r.stderr
    assert "runs only live on --backend kubernetes" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_the_first_plan_is_the_models_then_the_policy_follows_what_runs() -> None:
    """HPA starts in whole pods within the budget (its replica limit), VPA on the budget (its CPU limit), as the
    simulated hpa:/vpa: do; afterwards each decision is the cores the cluster runs, whatever they are."""
    profile = load_profile(LOCAL)
    budget = profile.budget_cores
    hpa = make_policy("hpa-upstream:resnet50=0.5", profile, backend="kubernetes")
    first = hpa.decide(Context(profile, 0.0, 30.0))
    assert first.plan.cores_by_name() == {"resnet50": math.floor(budget / 0.5) * 0.5}
    assert entry("hpa-upstream").initial_plan(profile, hpa).cores == first.plan.cores  # type: ignore[misc]
    vpa = make_policy("vpa-upstream:resnet101", profile, backend="kubernetes")
    assert vpa.decide(Context(profile, 0.0, 30.0)).plan.cores_by_name() == {"resnet101": budget}
    running = Plan((Allocation("resnet101", 0.671, 1.0, 10.0),), 30.0)
    d = vpa.decide(Context(profile, 30.0, 80.0, current=running))
    assert d.plan.cores_by_name() == {"resnet101": 0.671}
    assert "the cluster's VPA runs resnet101 on 0.671 cores" in d.reason


def test_the_autoscalers_are_rendered_from_their_models_settings() -> None:
    profile = load_profile(LOCAL)
    hpa = pod_rules("hpa-upstream:resnet50=0.5", profile)
    assert (hpa.in_place, hpa.pod_cores) == (False, 0.5)  # replicas of the pod size, as hpa:
    assert hpa.autoscaler == UpstreamAutoscaler("hpa", "resnet50", pod_cores=0.5,
                                                max_replicas=math.floor(profile.budget_cores / 0.5),
                                                target_utilization=0.7)
    vpa = pod_rules("vpa-upstream:resnet101", profile)
    assert vpa.in_place and vpa.autoscaler is not None
    assert (vpa.autoscaler.min_cores, vpa.autoscaler.max_cores) == (profile.min_cores, profile.budget_cores)
    assert pod_rules("infadapter", profile).autoscaler is None
    config = RenderConfig(namespace="ml")
    h = yaml.safe_load(render_autoscaler(hpa.autoscaler, config).text)
    assert h["kind"] == "HorizontalPodAutoscaler" and h["metadata"]["name"] == config.object_name("resnet50")
    assert h["spec"]["scaleTargetRef"]["name"] == config.object_name("resnet50")
    assert h["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    v = yaml.safe_load(render_autoscaler(vpa.autoscaler, config).text)
    assert v["spec"]["updatePolicy"]["updateMode"] == "InPlaceOrRecreate"
    own = v["spec"]["resourcePolicy"]["containerPolicies"][0]
    assert (own["containerName"], own["controlledResources"]) == ("tfserving", ["cpu"])
    assert v["metadata"]["labels"]["app.kubernetes.io/component"] == "autoscaler"


def test_the_vpa_history_is_upstreams_checkpoint_of_a_day_compressed_as_the_run() -> None:
    """A day at speedup 10 is 8,640 replayed seconds: 1,440 samples (one a trace minute), 6 s apart, the last at
    ``now``, half-life 24 h / 10. The checkpoint scales the weights so that the largest is 10,000 and keeps the
    true total, with RFC 3339 times, as upstream's SaveToChekpoint writes it."""
    profile = load_profile(LOCAL)
    now = 1_800_000_000.0
    rates = [20.0] * 4320 + [40.0] * 4320
    h = upstream_vpa_history(profile, "resnet50", rates, 10, now)
    assert h.samples == 1440 and h.half_life_s == 8640.0
    assert (h.first_sample_s, h.last_sample_s) == (now - 1439 * 6, now)
    c = checkpoint_status(h)
    weights = c["cpuHistogram"]["bucketWeights"]  # type: ignore[index]
    assert max(weights.values()) == MAX_CHECKPOINT_WEIGHT and len(weights) == 2
    cores = profile.cores_for("resnet50", 20.0)
    assert str(find_bucket(cores * 20.0 / profile.capacity_rps("resnet50", cores))) in weights
    # The later half (40 req/s) weighs more: the same count, decayed less.
    assert weights[max(weights, key=int)] == MAX_CHECKPOINT_WEIGHT
    assert c["cpuHistogram"]["totalWeight"] == pytest.approx(h.total_weight)  # type: ignore[index]
    assert c["totalSamplesCount"] == 1440 and c["version"] == "v3"
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert c["lastSampleStart"] == stamp and c["memoryHistogram"]["totalWeight"] == 0.0  # type: ignore[index]


def test_the_simulated_upstream_vpa_moves_only_outside_its_bounds() -> None:
    """``vpa-updater`` (the model of ``vpa-upstream``): the first decision sizes the variant at the warm target, as
    the live run does before it starts; later the cores stay while they lie within [lower, upper] (upstream's
    updater), where ``vpa:`` (the paper's rule) follows the target every decision."""
    from infadapter.core.policies import Vpa

    profile = load_profile(LOCAL)
    before = tuple([20.0] * 86400)
    updater = make_policy("vpa-updater:resnet50", profile, 1)
    assert isinstance(updater, Vpa) and updater.updater and updater.name == "vpa-updater:resnet50"
    first = updater.decide(Context(profile, 86400.0, 20.0, rates_before=before))
    target = first.plan.cores
    assert profile.min_cores < target < profile.budget_cores  # at the target, not on the budget it started on
    busy = {"resnet50": [(86400.0 + i, target) for i in range(60)]}  # saturated: usage at the limit
    running = Plan((Allocation("resnet50", target, 1.0, 10.0),), 60.0)
    held = updater.decide(Context(profile, 86460.0, 60.0, current=running, state=first.state, cpu_usage=busy))
    assert held.plan.cores == target and "the updater leaves the pod" in held.reason
    small = Plan((Allocation("resnet50", profile.min_cores, 1.0, 10.0),), 60.0)  # under the lower bound
    below = updater.decide(Context(profile, 86460.0, 60.0, current=small, state=first.state))
    assert below.plan.cores == target and "within them" not in below.reason, below.reason
    paper_rule = make_policy("vpa:resnet50", profile, 1)
    moved = paper_rule.decide(Context(profile, 86460.0, 60.0, current=running, state=first.state, cpu_usage=busy))
    assert "within them" not in moved.reason
