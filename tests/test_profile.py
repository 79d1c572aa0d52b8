"""Profile loading and validation: every invalid file fails with one line naming the field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from infadapter.core.profile import dump_profile, load_profile, profile_from_dict
from infadapter.errors import BadInput
from infadapter.paper import build_paper_profile, default_csv
from tests.conftest import ROOT, make_profile_dict


def write(tmp_path: Path, data: object, name: str = "x.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def test_paper_profile_loads_with_the_paper_setting(paper):
    assert (paper.slo_ms, paper.budget_cores, paper.core_step, paper.min_cores) == (750, 20, 1, 2)
    assert (paper.alpha, paper.beta) == (0.05, 0.001)
    assert paper.names == ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


@pytest.mark.parametrize(
    ("name", "slope", "intercept"),
    # REFERENCE.md: fitted slope/intercept per variant (before the 0.8 safety factor).
    [("resnet18", 24.45, -6.17), ("resnet34", 13.04, -1.88), ("resnet50", 10.32, -3.79),
     ("resnet101", 5.09, 0.04), ("resnet152", 3.81, -2.25)],
)
def test_paper_fit_matches_the_reference(paper, name, slope, intercept):
    cap = paper.variant(name).capacity
    assert cap.safety == 0.8
    assert cap.slope == pytest.approx(slope, abs=0.01)
    assert cap.intercept == pytest.approx(intercept, abs=0.01)


def test_paper_budget_serves_about_386_rps(paper):
    # REFERENCE.md: the released code hangs above ~386 req/s = 0.8 * (24.446 * 20 - 6.167).
    assert paper.capacity_rps("resnet18", 20) == pytest.approx(386.2, abs=0.1)


def test_import_paper_reproduces_the_committed_yaml(tmp_path):
    from infadapter.commands.profile import PAPER_HEADER

    prof = build_paper_profile(default_csv(ROOT))
    assert dump_profile(prof, header=PAPER_HEADER) == (ROOT / "profiles" / "paper.yaml").read_text()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["variants"][1].update(accuracy=76.1), "variants[1].accuracy: must be between 0 and 1, got 76.1"),
        (lambda d: d.pop("slo_ms"), "slo_ms: is required"),
        (lambda d: d.update(budget_cores=0), "budget_cores: must be greater than 0, got 0"),
        (lambda d: d.update(alpha=-1), "alpha: must be >= 0, got -1"),
        (lambda d: d.update(colour="red"), "colour: is not a known field"),
        (lambda d: d["variants"][0].update(name="ResNet 18"), "variants[0].name: must be a lowercase DNS label"),
        (lambda d: d["variants"][0].update(load_time_s=-2), "variants[0].load_time_s: must be >= 0 seconds, got -2"),
        (lambda d: d["variants"][0].update(memory="lots"), "variants[0].memory: must be a quantity"),
        (lambda d: d["variants"][0].update(accuracy="high"), "variants[0].accuracy: must be a number, got 'high'"),
        (lambda d: d["variants"][0]["capacity"].update(kind="cubic"), "variants[0].capacity: needs kind: linear"),
        (lambda d: d["variants"][0].update(capacity={"kind": "points", "points": {}}),
         "variants[0].capacity.points: must hold at least one"),
        (lambda d: d["variants"][0].update(capacity={"kind": "points", "points": {1: -3}}),
         "variants[0].capacity.points: capacity at 1 cores must be >= 0 req/s, got -3"),
        (lambda d: d.update(variants=[]), "variants: must list at least one variant"),
        (lambda d: d["variants"][1].update(name="small"), "variants: variant names must be unique, repeated: small"),
        (lambda d: d.update(core_step=0.5, min_cores=0.75), "min_cores: must be a multiple of core_step 0.5, got 0.75"),
        (lambda d: d.update(min_cores=10), "min_cores: must not exceed budget_cores 8, got 10"),
    ],
)
def test_invalid_profiles_fail_with_one_line_naming_the_field(tmp_path, mutate, message):
    data = copy.deepcopy(make_profile_dict())
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(BadInput) as err:
        load_profile(path)
    text = str(err.value)
    assert text.startswith(f"{path}: {message}")
    assert "\n" not in text


@pytest.mark.parametrize(
    ("content", "message"),
    [("slo_ms: [1, 2\n", "not valid YAML at line"), ("- 1\n- 2\n", "must be a YAML mapping")],
)
def test_unreadable_files(tmp_path, content, message):
    with pytest.raises(BadInput, match=message):
        load_profile(write(tmp_path, content))


def test_missing_file_names_the_flag(tmp_path):
    with pytest.raises(BadInput, match=r"profile file not found \(pass --profile PATH\)"):
        load_profile(tmp_path / "nope.yaml")


def test_points_capacity_interpolates_and_flags_extrapolation():
    data = make_profile_dict(budget_cores=4, core_step=0.5, min_cores=0.5)
    data["variants"][0]["capacity"] = {"kind": "points", "points": {0.5: 10, 1: 30, 2: 50}, "safety": 0.5}
    prof = profile_from_dict(data)
    # Between points: linear; 1.5 cores lies halfway between 30 and 50 -> 40, times safety 0.5.
    assert prof.capacity_rps("small", 1.5) == pytest.approx(20.0)
    # Below the first point: falls linearly to 0 at 0 cores (0.25 of 0.5 cores -> half of 10).
    assert prof.variant("small").capacity.rps(0.25) == pytest.approx(2.5)
    # Past the last point: the last segment's slope (20 req/s per core) extended, and flagged.
    assert prof.capacity_rps("small", 3) == pytest.approx(0.5 * 70)
    warnings = prof.extrapolation_warnings()
    assert len(warnings) == 1 and "measured up to 2 cores, extrapolated up to the budget of 4 cores" in warnings[0]


def test_core_options_follow_the_grid(make_profile):
    prof = make_profile(budget_cores=2, core_step=0.25, min_cores=0.5)
    assert prof.core_options() == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def test_overrides_are_revalidated(make_profile):
    prof = make_profile()
    assert prof.with_overrides(alpha=0.2, beta=None).alpha == 0.2
    with pytest.raises(BadInput, match="overrides: budget_cores: must be greater than 0"):
        prof.with_overrides(budget_cores=-1)


def test_profiles_are_immutable(make_profile):
    prof = make_profile()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError for frozen models
        prof.alpha = 1.0  # type: ignore[misc]


def test_serving_rules_shared_by_the_local_backend_and_the_simulator():
    from infadapter.core.profile import threads_for_cores

    assert [threads_for_cores(c) for c in (0.25, 0.999999999999, 1.0, 1.75, 2.0)] == [1, 1, 1, 1, 2]
    local = load_profile(ROOT / "profiles" / "local.yaml")
    # ResNet-50 on 0.25 core: 10.68 req/s x 0.3 s = 3.2 -> 4; ResNet-18 on 1 core: 99.58 x 0.3 -> 30.
    assert local.queue_bound("resnet50", 0.25) == 4
    assert local.queue_bound("resnet18", 1.0) == 30


def test_accuracy_of_counts_is_over_the_requests_each_variant_served():
    prof = load_profile(ROOT / "profiles" / "local.yaml")
    a18, a50 = prof.variant("resnet18").accuracy, prof.variant("resnet50").accuracy
    # 3 requests on ResNet-18 for every one on ResNet-50; names the profile does not know ("-": no variant
    # header, a failed request) do not count
    got = prof.accuracy_of_counts({"resnet18": 300, "resnet50": 100, "-": 50})
    assert got == pytest.approx((3 * a18 + a50) / 4)
    assert prof.accuracy_of_counts({"-": 5}) is None and prof.accuracy_of_counts(None) is None
