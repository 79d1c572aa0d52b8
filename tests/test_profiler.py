"""The profiler: a short real run (server under cgroup quotas, open-loop traffic) that writes a valid
profile and resumes from its results file; the fitting helpers on their own."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from infadapter.commands.profile_measure import measure
from infadapter.core.profile import load_profile
from infadapter.errors import BadInput
from infadapter.profiler import Measurement, ProfilerConfig, accuracy_of, build_profile, memory_quantity, monotone
from infadapter.serving.cgroups import probe
from infadapter.serving.resnet import write_model


def _m(variant: str, cores: float, rps: float, load_s: float = 1.0, rss: float = 200.0) -> Measurement:
    return Measurement(variant=variant, cores=cores, slo_ms=300, capacity_rps=rps, load_time_s=load_s,
                       service_ms=10, saturation_rps=rps * 1.1, peak_rss_mb=rss, threads=1, resolution=64,
                       cpu_seconds=1.0)  # fmt: skip


def test_monotone_keeps_capacity_from_falling_with_cores():
    # 1.0 core measured below 0.5 core (noise under contention): it takes 0.5's value.
    assert monotone([(1.0, 40.0), (0.5, 45.0), (0.25, 20.0), (2.0, 80.0)]) == {0.25: 20, 0.5: 45, 1.0: 45, 2.0: 80}


@pytest.mark.parametrize(("peak_mb", "quantity"), [(0, "128Mi"), (200, "256Mi"), (230, "320Mi"), (1000, "1280Mi")])
def test_memory_has_headroom_rounded_to_64_mib(peak_mb, quantity):
    # 230 MB * 1.25 = 287.5 -> next multiple of 64 is 320
    assert memory_quantity(peak_mb) == quantity


def test_build_profile_is_a_valid_points_profile():
    ms = [_m("resnet18", 0.25, 10, 2.0), _m("resnet18", 0.5, 22, 1.0), _m("resnet18", 1, 40, 1.5),
          _m("resnet152", 0.5, 0, 3.0, 500), _m("resnet152", 1, 6, 2.0, 520)]  # fmt: skip
    p = build_profile(ms, slo_ms=300, budget_cores=1.75, core_step=0.25, min_cores=0.25, safety=0.8, source="t")
    assert p.names == ("resnet18", "resnet152")
    r18 = p.variant("resnet18")
    assert r18.accuracy == 0.69758 and r18.load_time_s == 1.5  # median of 2.0, 1.0, 1.5
    assert r18.capacity.points == {0.25: 10, 0.5: 22, 1.0: 40}
    assert p.capacity_rps("resnet18", 0.5) == pytest.approx(0.8 * 22)
    assert p.demand == "rate"  # measured Poisson rates: decisions plan for the forecast's rate
    assert p.variant("resnet152").memory == "704Mi"  # 520 * 1.25 = 650 -> 704
    assert p.capacity_rps("resnet152", 0.5) == 0


def test_accuracy_comes_from_the_published_top1():
    assert accuracy_of("resnet152") == 0.78312
    with pytest.raises(BadInput, match="no published accuracy"):
        accuracy_of("mobilenet")


def test_measure_refuses_bad_flags(tmp_path):
    res = CliRunner().invoke(measure, ["--cores", "0.5,x", "--model-dir", str(tmp_path), "--out", str(tmp_path / "p")])
    assert isinstance(res.exception, BadInput) and "--cores" in str(res.exception)
    res = CliRunner().invoke(measure, ["--variants", "resnet18", "--model-dir", str(tmp_path)])
    assert isinstance(res.exception, BadInput) and "--model-dir" in str(res.exception)


def test_a_step_lasts_long_enough_for_its_requests(tmp_path):
    config = ProfilerConfig(model_dir=tmp_path, variants=("resnet18",), cores=(0.25,), slo_ms=300,
                            results_path=tmp_path / "r.jsonl", step_s=3.0, step_requests=200)
    assert config.step_seconds(100.0) == 3.0  # fast: step_s already brings 300 requests
    assert config.step_seconds(5.0) == pytest.approx(40.0)  # slow: 200 requests take 40 s
    assert replace(config, step_requests=0).step_seconds(5.0) == 3.0
    with pytest.raises(BadInput, match="--step-requests"):
        replace(config, step_requests=-1).check()
    res = CliRunner().invoke(measure, ["--step-requests", "-5", "--model-dir", str(tmp_path),
                                       "--out", str(tmp_path / "p")])
    assert isinstance(res.exception, BadInput) and "--step-requests" in str(res.exception)


@pytest.mark.slow
def test_short_real_run_writes_a_profile_and_resumes(tmp_path):
    models = tmp_path / "models"
    write_model(models, "resnet18", resolution=64)
    out = tmp_path / "local.yaml"
    args = ["--model-dir", str(models), "--variants", "resnet18", "--cores", "0.5,1", "--slo-ms", "300",
            "--step-s", "1", "--step-requests", "120", "--max-steps", "3", "--out", str(out), "--json"]  # fmt: skip
    res = CliRunner().invoke(measure, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (summary["measured"], summary["reused"]) == (2, 0)
    assert summary["resolution"] == 64
    for m in summary["measurements"]:
        assert m["threads"] == 1 and 1 <= m["steps"] <= 3
        assert m["load_time_s"] > 0 and m["peak_rss_mb"] > 50
        # the server lived inside its cgroup: the quota bounds the CPU it used while measured
        # (+0.2 s: one 100 ms period at each end of the window)
        assert 0 < m["cpu_seconds"] <= m["cores"] * m["wall_seconds"] + 0.2
        assert m["capacity_rps"] <= m["saturation_rps"]  # never above the measured service rate
    profile = load_profile(out)
    (variant,) = profile.variants
    assert variant.name == "resnet18" and variant.accuracy == 0.69758
    assert set(variant.capacity.points) == {0.5, 1.0}
    assert profile.capacity_rps("resnet18", 1.0) > 0
    assert profile.slo_ms == 300 and profile.core_step == 0.25
    text = out.read_text()
    assert text.startswith("# Generated by: ") and "load average" in text
    results = Path(summary["results"])
    assert len(results.read_text().splitlines()) == 2
    # --step-requests stretched the 1-s steps: each sent about 120 requests (Poisson), not rate x 1 s.
    for line in results.read_text().splitlines():
        for step in json.loads(line)["steps"]:
            assert step["sent"] >= 80, step
    # A second run finds both measurements in the results file and starts no server.
    res = CliRunner().invoke(measure, args)
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)
    assert (again["measured"], again["reused"]) == (0, 2)
    assert again["measurements"] == summary["measurements"]
    driver = probe().driver
    assert driver is not None
    leftovers = [p.name for p in driver.parent.glob("profile-resnet18-*")] if driver.parent.exists() else []
    assert leftovers == []


def test_build_profile_keeps_the_one_core_request_time_as_reference():
    ms = [_m("resnet18", 0.5, 22), _m("resnet18", 1, 40)]  # service_ms 10 in _m
    p = build_profile(ms, slo_ms=300, budget_cores=1.75, core_step=0.25, min_cores=0.25, safety=0.8, source="t")
    assert p.variant("resnet18").reference_ms == 10
    # no one-core measurement: no reference, so no calibration for that profile
    p = build_profile(ms[:1], slo_ms=300, budget_cores=1.75, core_step=0.25, min_cores=0.25, safety=0.8, source="t")
    assert p.variant("resnet18").reference_ms is None


def _refs(make_profile, **refs: float):
    p = make_profile()
    variants = tuple(v.model_copy(update={"reference_ms": refs.get(v.name)}) for v in p.variants)
    return p.model_copy(update={"variants": variants})


@pytest.mark.parametrize(("measured", "factor", "words"), [
    (20.0, 0.5, "2.00x slower, so every capacity is scaled by 0.50"),  # big: 10 ms in the profile
    (328.0, 0.0305, "32.80x slower, so every capacity is scaled by 0.03"),  # 3 significant figures, not 0.030
    (11.0, 1.0, "capacities kept (within 15%)"),  # 1.1x: noise, not a slower machine
    (5.0, 1.0, "2.00x faster; capacities kept"),  # faster: keep the headroom
])
def test_calibration_scales_capacities_on_a_slower_machine_only(make_profile, measured, factor, words):
    from infadapter.profiler import calibrate

    profile = _refs(make_profile, small=4.0, big=10.0)
    seen = []
    cal = calibrate(profile, Path("models"), measure=lambda d, v, w: seen.append(v) or measured)
    assert seen == ["big"]  # the slowest variant with a reference: the least overhead-dominated
    assert cal is not None and cal.factor == factor and words in cal.message("p.yaml")
    scaled = profile.scaled_capacity(cal.factor)
    # linear capacities: slope and intercept both scaled, so every core count serves factor x as much
    assert scaled.capacity_rps("small", 3) == pytest.approx(factor * profile.capacity_rps("small", 3))
    assert calibrate(make_profile(), Path("models"), measure=lambda d, v, w: 1.0) is None  # no reference_ms


def test_reference_ms_must_be_positive(make_profile):
    from infadapter.core.profile import profile_from_dict
    from tests.conftest import make_profile_dict

    data = make_profile_dict()
    data["variants"][0]["reference_ms"] = 0
    with pytest.raises(BadInput, match=r"variants\[0\]\.reference_ms|reference_ms: must be > 0"):
        profile_from_dict(data)


@pytest.mark.slow
def test_adapt_calibrates_on_a_machine_slower_than_its_profile(tmp_path):
    # The tiny profile with a reference three times faster than this machine's own measurement: adapt
    # must scale every capacity by about a third, say so, and record it so explain --replay reproduces.
    from infadapter.profiler import one_request_ms
    from tests.cli_helpers import run_cli
    from tests.tiny_profile import tiny_setup

    base = tiny_setup(tmp_path)
    here = one_request_ms(base / "models", "resnet50")
    assert 0 < here < 1000
    text = (base / "tiny.yaml").read_text().replace(
        "  capacity: {kind: linear, slope: 16, intercept: 0}",
        f"  capacity: {{kind: linear, slope: 16, intercept: 0}}\n  reference_ms: {here / 3:.3f}")
    (base / "tiny.yaml").write_text(text)
    run = base / "run"
    res = run_cli("adapt", "--profile", str(base / "tiny.yaml"), "--models", str(base / "models"), "--rate", "4",
                  "--duration", "6", "--interval", "2", "--run-dir", str(run), "--prometheus", "off", "--json",
                  timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    cal = json.loads(res.stdout)["calibration"]
    # at least 3x slower than the reference (more when the machine got busier between the two measurements)
    assert cal["variant"] == "resnet50" and 0 < cal["capacity_scale"] < 0.6, cal
    assert cal["capacity_scale"] == pytest.approx(cal["reference_ms"] / cal["measured_ms"], rel=0.01)
    messages = json.loads((run / "state.json").read_text())["messages"]  # what status shows
    assert any("every capacity is scaled by" in m for m in messages), messages
    first = json.loads((run / "decisions.jsonl").read_text().splitlines()[0])
    assert first["replay"]["capacity_scale"] == cal["capacity_scale"]
    replay = run_cli("explain", "--run-dir", str(run), "--replay", timeout=120)
    assert replay.returncode == 0, replay.stdout + replay.stderr
