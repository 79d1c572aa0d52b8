"""Pods sized to the nodes: ``pod_layout`` and the solver's capacity of a variant run as replicas."""

from __future__ import annotations

import pytest

from infadapter.core import solver
from infadapter.core.profile import pod_layout


@pytest.mark.parametrize(
    ("cores", "max_pod", "layout"),
    [
        (6, 8, (1, 6)),  # fits one pod
        (6, None, (1, 6)),  # no limit: always one pod
        (16, 8, (2, 8.0)),  # two full nodes
        (12, 8, (3, 4.0)),  # 2 x 6 would strand 2 cores a node; 3 x 4 fills nodes (<= 2 x the fewest pods)
        (20, 8, (5, 4.0)),  # 3 pods would be 6.667 (not whole millicores), 4 x 5 strands 3; 5 x 4 fills
        (13, 8, (2, 6.5)),  # nothing in 2..4 pods divides 8: the fewest exact, 2 x 6.5
        (17, 8, (4, 4.25)),  # 3 pods: 5.667 not exact; 4 x 4.25 is
        (0, 8, (0, 0.0)),
    ],
)
def test_pod_layout(cores, max_pod, layout):
    assert pod_layout(cores, max_pod) == layout
    k, c = layout
    assert k * c == pytest.approx(cores)
    assert max_pod is None or c <= max_pod


@pytest.mark.parametrize("load", [0, 50, 150, 250, 380])
def test_solver_plans_replicas_with_their_capacity(paper, load):
    """With max_pod_cores 8 every variant's capacity is replicas x capacity(cores per pod), as the
    cluster will run it (the linear fit's intercept counts once per pod)."""
    p = paper.with_overrides(max_pod_cores=8)
    plan = solver.solve(p, load).plan
    assert plan.cores <= p.budget_cores + 1e-9
    for a in plan.allocations:
        k, c = p.pod_layout(a.cores)
        assert c <= 8
        assert a.capacity_rps == pytest.approx(k * p.variant(a.name).capacity.rps(c))


@pytest.mark.parametrize("load", [0, 50, 150, 250, 380])
def test_no_pod_limit_or_one_at_the_budget_changes_nothing(paper, load):
    """Backward compatible: without max_pod_cores, or with one the budget fits in, plans are the same."""
    base = solver.solve(paper, load).plan
    same = solver.solve(paper.with_overrides(max_pod_cores=paper.budget_cores), load).plan
    assert base.cores_by_name() == same.cores_by_name()
    assert base.objective == pytest.approx(same.objective)


def test_a_policy_that_scales_by_replicas_never_keeps_a_pod_count_to_resize(paper):
    """The kubernetes backend's layout: a running variant keeps its pod count when new cores fit them (an
    in-place resize); under HPA's PodRules the pod size stays and the replicas change instead."""
    from infadapter.backends.kubernetes.layout import layout
    from infadapter.render import PodRules, RenderConfig

    rc = RenderConfig.model_validate({"tfserving": {"max_pod_cores": 8}})
    assert layout(6.0, paper, rc, now=(2, 2.0)) == (2, 3.0)  # other policies: 2 pods resized to 3 in place
    hpa = PodRules(in_place=False, pod_cores=2.0)
    assert layout(6.0, paper, rc, now=(2, 2.0), pods=hpa) == (3, 2.0)
    assert layout(2.0, paper, rc, now=(3, 2.0), pods=hpa) == (1, 2.0)
    assert layout(6.0, paper, rc, now=(1, 6.0), pods=hpa) == (3, 2.0)  # resumed from another policy's pod


def test_pod_rules_follow_the_policy_registry(paper):
    """What the kubernetes and dry-run backends are given: the entry's flags, HPA's pod size (hpa:V=P, or the
    profile's min_cores); every other policy the defaults (render byte-identical to before)."""
    from infadapter.backends.kubernetes.setup import pod_rules
    from infadapter.render import PodRules

    assert pod_rules("hpa:resnet50=2", paper) == PodRules(in_place=False, cpu_limited=True, pod_cores=2.0)
    assert pod_rules("hpa:resnet50", paper).pod_cores == paper.min_cores
    assert pod_rules("vpa-requests:resnet50", paper) == PodRules(cpu_limited=False)
    for spec in ("infadapter", "msplus", "vpa:resnet50", "static:resnet50=4"):
        assert pod_rules(spec, paper) == PodRules(), spec
