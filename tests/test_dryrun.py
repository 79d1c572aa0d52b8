"""Dry-run backend: numbered generation folders, a unified diff against the last run, read-back."""

from __future__ import annotations

import pytest

from infadapter.backends.dryrun.backend import DryRunBackend
from infadapter.core.plan import Plan
from infadapter.errors import BadInput

A = {
    "load": 80,
    "variants": [{"name": "resnet50", "cores": 4, "share": 0.7}, {"name": "resnet18", "cores": 2, "share": 0.3}],
}
B = {"load": 90, "variants": [{"name": "resnet50", "cores": 6, "share": 1.0}]}


def test_generations_and_diff(tmp_path, paper):
    backend = DryRunBackend(paper, tmp_path)
    first = backend.apply(Plan.from_dict(A))
    assert first.ok
    gen1 = tmp_path / "gen-0001"
    assert sorted(p.name for p in gen1.glob("*.yaml")) == [
        "tfs-resnet18.configmap.yaml",
        "tfs-resnet18.deployment.yaml",
        "tfs-resnet18.service.yaml",
        "tfs-resnet50.configmap.yaml",
        "tfs-resnet50.deployment.yaml",
        "tfs-resnet50.service.yaml",
    ]
    assert "6 added, 0 removed, 0 changed" in first.actions[1]
    assert (gen1 / "changes.diff").read_text().count("--- /dev/null") == 6

    again = backend.apply(Plan.from_dict(A))
    assert again.actions[0].startswith("no change")
    assert not (tmp_path / "gen-0002").exists()

    second = backend.apply(Plan.from_dict(B))
    patch = (tmp_path / "gen-0002" / "changes.diff").read_text()
    # resnet18's three objects go; resnet50's Deployment gets 6 cores (and its ConfigMap 6 batch threads).
    assert "3 added, 0 removed" not in second.actions[1] and "0 added, 3 removed" in second.actions[1]
    assert '-              cpu: "4"' in patch and '+              cpu: "6"' in patch
    assert "+++ /dev/null" in patch
    assert (tmp_path / "LATEST").read_text().strip() == "gen-0002"

    state = DryRunBackend(paper, tmp_path).state()  # a new instance reads the folder back
    assert state.plan is not None and state.plan.cores_by_name() == {"resnet50": 6.0}
    assert [v.name for v in state.variants] == ["resnet50"]


def test_unknown_variant_is_bad_input(tmp_path, paper):
    backend = DryRunBackend(paper, tmp_path)
    with pytest.raises(BadInput, match="resnet9"):
        backend.apply(Plan.from_dict({"load": 1, "variants": [{"name": "resnet9", "cores": 2}]}))
    assert not list(tmp_path.iterdir())
