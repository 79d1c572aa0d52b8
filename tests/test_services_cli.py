"""``cli.py plan --load NAME=RPS,...`` on a profile with services: one plan whose variants carry their service,
within the budget (in process; tests/test_cli_plan.py runs the one-service command as a subprocess)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from infadapter.errors import BadInput
from tests.test_service_profiles import SERVICES_YAML


# -- cli.py plan ----------------------------------------------------------------------------------
def _plan_cli(*args: str) -> Any:
    from infadapter.__main__ import main

    return CliRunner().invoke(main, ["plan", *args], catch_exceptions=False, standalone_mode=False)


def test_plan_cli_with_services_prints_one_plan_within_the_budget():
    r = _plan_cli("--profile", str(SERVICES_YAML), "--load", "live=100,feed=50,archive=20", "--json")
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert {v["service"] for v in obj["variants"]} == {"live", "feed", "archive"}
    assert sum(v["cores"] for v in obj["variants"]) == obj["cores"] <= 32
    assert [s["name"] for s in obj["services"]] == ["live", "feed", "archive"]
    assert obj["load"] == 170 and obj["feasible"] is True


@pytest.mark.parametrize(("load", "message"), [
    ("120", "--load: this profile has services; give NAME=RPS for each of live, feed, archive"),
    ("live=1,feed=2", "--load: no load for service 'archive'"),
    ("live=1,feed=x,archive=1", "--load: expected NAME=RPS with RPS a number >= 0, got 'feed=x'"),
])
def test_plan_cli_with_services_rejects_a_bad_load_in_one_line(load, message):
    # cli.run prints a BadInput as "error: MESSAGE" and exits 2 (tests/test_cli_plan.py runs it).
    with pytest.raises(BadInput) as exc:
        _plan_cli("--profile", str(SERVICES_YAML), "--load", load)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_commands_that_plan_one_service_refuse_a_services_profile_in_one_line(tmp_path):
    # experiment calls Profile.single_service (simulate --min-budget searches a shared budget: below).
    from infadapter.__main__ import main

    args = ["experiment", "--profile", str(SERVICES_YAML), "--policies", "infadapter", "--window", "paper",
            "--out", str(tmp_path / "exp")]
    with pytest.raises(BadInput, match=r"^experiment: this profile has services: \(live, feed, archive\); "
                                       r"experiment runs one service so far"):
        CliRunner().invoke(main, args, catch_exceptions=False, standalone_mode=False)
    assert not (tmp_path / "exp").exists()


# -- cli.py simulate --min-budget with services ---------------------------------------------------------
MIN_BUDGET_SERVICES = ("python cli.py simulate --profile profiles/services-local.yaml --scale 0.2 --min-budget "
                       "--max-violations 0.01 --json")


def _simulate_cli(*args: str) -> Any:
    from infadapter.__main__ import main

    r = CliRunner().invoke(main, ["simulate", *args], catch_exceptions=False, standalone_mode=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.slow
def test_min_budget_with_services_is_the_smallest_shared_budget_every_service_meets():
    import shlex

    local = str(SERVICES_YAML.parent / "services-local.yaml")
    found = _simulate_cli(*[local if a == "profiles/services-local.yaml" else a
                            for a in shlex.split(MIN_BUDGET_SERVICES)[3:]])
    budget, below = found["budget"], found["below"]
    assert budget is not None and below is not None and below["budget"] == budget - 0.25
    assert [s["name"] for s in found["services"]] == ["live", "batch"]
    assert found["slo_violation_rate"] == max(s["slo_violation_rate"] for s in found["services"]) <= 0.01
    # Plain simulate runs agree on both sides: every service meets 1 % at B, one service misses it a step lower.
    for cores, meets in ((budget, True), (below["budget"], False)):
        res = _simulate_cli("--profile", local, "--scale", "0.2", "--budget", str(cores),
                            "--policy", "infadapter", "--json")["results"][0]
        assert all(s["slo_violation_rate"] <= 0.01 for s in res["services"]) is meets, (cores, res["services"])


def test_min_budget_with_services_refuses_what_it_cannot_search_in_one_line():
    from infadapter.__main__ import main

    for args, message in ((["--policy", "infadapter,infadapter-split"], "--min-budget: give one --policy"),
                          (["--sweep", "budget=1,1.5"], "--sweep: give it without --min-budget"),
                          (["--max-violations", "1.5"], "--max-violations: must be a fraction in [0, 1)")):
        with pytest.raises(BadInput, match="^" + re.escape(message)):
            CliRunner().invoke(main, ["simulate", "--profile", str(SERVICES_YAML.parent / "services-local.yaml"),
                                      "--scale", "0.2",
                                      "--min-budget", *args], catch_exceptions=False, standalone_mode=False)


# -- cli.py render with services ---------------------------------------------------------------------
def test_render_labels_every_variant_object_with_its_service(tmp_path):
    import yaml

    from infadapter.__main__ import main

    plan = _plan_cli("--profile", str(SERVICES_YAML), "--load", "live=100,feed=50,archive=20", "--json").stdout
    args = ["render", "--profile", str(SERVICES_YAML), "--out", str(tmp_path / "out"), "--no-platform", "--json"]
    r = CliRunner().invoke(main, args, input=plan, catch_exceptions=False, standalone_mode=False)
    assert r.exit_code == 0, r.output
    seen: dict[str, set[str]] = {}
    for f in json.loads(r.stdout)["files"]:
        obj = yaml.safe_load(Path(f).read_text(encoding="utf-8"))
        labels = obj["metadata"]["labels"]
        variant, service = labels["infadapter.io/variant"], labels["infadapter.io/service"]
        assert variant.startswith(f"{service}-"), (f, labels)  # live-resnet50 serves live
        seen.setdefault(service, set()).add(obj["kind"])
        if obj["kind"] == "Deployment":
            assert obj["spec"]["template"]["metadata"]["labels"]["infadapter.io/service"] == service
            # The selector stays the variant's (a Deployment's selector cannot change once applied).
            assert "infadapter.io/service" not in obj["spec"]["selector"]["matchLabels"]
    assert set(seen) == {"live", "feed", "archive"}
    assert all(kinds == {"ConfigMap", "Deployment", "Service"} for kinds in seen.values())


def render_services_gateway(out: Path, *extra: str) -> tuple[dict, dict[str, dict]]:
    """``render --router gateway`` of a plan of the shipped services: (the plan, the HTTPRoutes by name)."""
    import yaml

    from infadapter.__main__ import main

    plan = _plan_cli("--profile", str(SERVICES_YAML), "--load", "live=100,feed=50,archive=20", "--json").stdout
    args = ["render", "--profile", str(SERVICES_YAML), "--router", "gateway", "--out", str(out), *extra]
    r = CliRunner().invoke(main, args, input=plan, catch_exceptions=False, standalone_mode=False)
    assert r.exit_code == 0, r.output
    routes = {}
    for f in sorted(out.glob("*.httproute.yaml")):
        obj = yaml.safe_load(f.read_text(encoding="utf-8"))
        routes[obj["metadata"]["name"]] = obj
    return json.loads(plan), routes


def test_render_with_services_writes_one_gateway_route_per_service_over_its_own_variants(tmp_path):
    import yaml

    plan, routes = render_services_gateway(tmp_path / "out")
    assert set(routes) == {"infadapter-live", "infadapter-feed", "infadapter-archive"}
    for v in plan["variants"]:
        svc = v["service"]
        route = routes[f"infadapter-{svc}"]
        assert route["metadata"]["labels"]["infadapter.io/service"] == svc
        (rule,) = route["spec"]["rules"]
        # Each service's weights are its own shares (they add up to 1000 per route, not across routes).
        weights = {b["name"]: b["weight"] for b in rule["backendRefs"]}
        assert weights[f"tfs-{v['name']}"] == round(v["share"] * 1000)
        assert all(n.startswith(f"tfs-{svc}-") for n in weights)
        # A path prefix matches whole segments, so :predict needs its own exact match.
        paths = {(m["path"]["type"], m["path"]["value"]) for m in rule["matches"]}
        assert ("Exact", f"/v1/models/{svc}:predict") in paths and ("PathPrefix", f"/v1/models/{svc}") in paths
        # The variant serves its model under the service's name, the path the route matches.
        cm = yaml.safe_load((tmp_path / "out" / f"tfs-{v['name']}.configmap.yaml").read_text(encoding="utf-8"))
        assert f'name: "{svc}"' in cm["data"]["models.config"]


# -- cli.py simulate --sweep budget=... ----------------------------------------------------------------
def test_simulate_budget_sweep_with_services_prints_points_bound_and_plot(tmp_path):
    # A synthetic trace: live bursts in its minute while feed and archive stay quiet in theirs.
    from infadapter.__main__ import main

    trace = tmp_path / "rates.txt"
    trace.write_text("\n".join(["40"] * 30 + ["300"] * 30 + ["30"] * 60 + ["60"] * 60))
    png = tmp_path / "sweep.png"
    args = ["simulate", "--profile", str(SERVICES_YAML), "--trace", str(trace), "--service-window", "live=0:60",
            "--service-window", "feed=60:60", "--service-window", "archive=120:60", "--forecaster", "ewma",
            "--sweep", "budget=16,32", "--policy", "infadapter,infadapter-split,infadapter-split-peak",
            "--plot", str(png), "--json"]
    r = CliRunner().invoke(main, args, catch_exceptions=False, standalone_mode=False)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["windows"] == {"live": "0:60", "feed": "60:60", "archive": "120:60"}
    assert [p["budget"] for p in doc["points"]] == [16, 32]
    for p in doc["points"]:
        assert [x["policy"] for x in p["results"]] == ["infadapter", "infadapter-split", "infadapter-split-peak"]
        assert 0 <= p["pooled_bound"] <= min(x["slo_violation_rate"] for x in p["results"]) + 0.01
        for c in p["comparison"]:  # only splits at >= 2% violations are compared
            split = next(x for x in p["results"] if x["policy"] == c["split"])
            assert split["slo_violation_rate"] >= 0.02
            assert c["violation_ratio"] == pytest.approx(p["results"][0]["slo_violation_rate"]
                                                         / split["slo_violation_rate"], abs=1e-4)
    # More budget never raises the bound.
    assert doc["points"][1]["pooled_bound"] <= doc["points"][0]["pooled_bound"]
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize(("args", "message"), [
    (["--service-window", "nope=paper"], "--service-window: no service 'nope'; give one of live, feed, archive"),
    (["--service-window", "live"], "--service-window: expected NAME=WINDOW"),
    (["--sweep", "alpha=0.01,0.1"], "--sweep: with services, sweep the shared budget"),
    (["--plot", "x.png"], "--plot: with services, only with --sweep budget="),
])
def test_simulate_with_services_rejects_bad_flags_in_one_line(tmp_path, args, message):
    from infadapter.__main__ import main

    trace = tmp_path / "rates.txt"
    trace.write_text("\n".join(["10"] * 60))
    base = ["simulate", "--profile", str(SERVICES_YAML), "--trace", str(trace), "--service-window", "live=0:20",
            "--service-window", "feed=20:20", "--service-window", "archive=40:20"]
    with pytest.raises(BadInput) as exc:
        CliRunner().invoke(main, [*base, *args], catch_exceptions=False, standalone_mode=False)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_plan_cli_on_the_local_services_profile_fits_this_machine_s_budget():
    # profiles/services-local.yaml: two services from profiles/local.yaml's measured variants on 1.75 cores.
    from tests.cli_helpers import ROOT

    r = _plan_cli("--profile", str(ROOT / "profiles" / "services-local.yaml"), "--load", "live=20,batch=25", "--json")
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert obj["feasible"] is True and obj["cores"] <= 1.75
    live = next(s for s in obj["services"] if s["name"] == "live")
    assert live["floor_met"] is True and live["accuracy"] >= 0.72
    assert {v["service"] for v in obj["variants"]} == {"live", "batch"}


# -- --what-if with services ----------------------------------------------------------------------------
def test_plan_what_if_with_services_changes_one_service_s_load_or_the_shared_budget():
    r = _plan_cli("--profile", str(SERVICES_YAML), "--load", "live=100,feed=50,archive=20",
                  "--what-if", "budget=16", "--what-if", "traffic.live=2,traffic=0.5", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert sum(v["cores"] for v in doc["today"]["variants"]) <= 32
    small, live2 = doc["what_if"]
    assert small["scenario"] == "budget=16" and small["load_by_service"] == {"live": 100, "feed": 50, "archive": 20}
    assert sum(v["cores"] for v in small["plan"]["variants"]) <= 16 < doc["today"]["cores"]
    # traffic scales every service, traffic.live live on top of it.
    assert live2["scenario"] == "traffic=0.5,traffic.live=2"
    assert live2["load_by_service"] == {"live": 100, "feed": 25, "archive": 10} and live2["load"] == 135
    served = {s["name"]: s["load"] for s in live2["plan"]["services"]}
    assert served == {"live": 100, "feed": 25, "archive": 10}


@pytest.mark.parametrize(("profile", "what_if", "message"), [
    ("services", "slo=500", "--what-if: slo=500: each service of "),
    ("services", "traffic.nope=2", "--what-if: traffic.nope: no service 'nope'; give one of live, feed, archive"),
    ("services", "traffic.=2", "--what-if: traffic.: name the service (e.g. traffic.live=2)"),
    ("services", "traffic.live=0", "--what-if: traffic.live must be a finite number > 0"),
    ("one", "traffic.live=2", "--what-if: traffic.live: a factor per service needs a profile with services"),
])
def test_what_if_per_service_is_refused_in_one_line_where_it_means_nothing(profile, what_if, message):
    from tests.cli_helpers import ROOT

    path = SERVICES_YAML if profile == "services" else ROOT / "profiles" / "paper.yaml"
    load = "live=100,feed=50,archive=20" if profile == "services" else "120"
    with pytest.raises(BadInput) as exc:
        _plan_cli("--profile", str(path), "--load", load, "--what-if", what_if)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_simulate_what_if_with_services_runs_each_scenario_on_the_same_arrivals(tmp_path):
    from infadapter.__main__ import main

    trace = tmp_path / "rates.txt"
    trace.write_text("\n".join(["40"] * 30 + ["300"] * 30 + ["30"] * 60 + ["60"] * 60))
    base = ["simulate", "--profile", str(SERVICES_YAML), "--trace", str(trace), "--service-window", "live=0:60",
            "--service-window", "feed=60:60", "--service-window", "archive=120:60", "--forecaster", "ewma",
            "--policy", "infadapter", "--json"]

    def run(*extra: str) -> Any:
        r = CliRunner().invoke(main, [*base, *extra], catch_exceptions=False, standalone_mode=False)
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    doc = run("--what-if", "budget=16", "--what-if", "traffic.live=2")
    today, small, live2 = doc["scenarios"]
    assert [s["scenario"] for s in doc["scenarios"]] == ["today", "budget=16", "traffic.live=2"]
    # today is the plain run, and budget=16 the run on --budget 16, on the same seed and arrivals.
    plain = run()["results"][0]
    assert {k: today[k] for k in plain} == plain
    assert {k: small[k] for k in plain} == {**run("--budget", "16")["results"][0], "policy": "infadapter"}
    assert small["budget_cores"] == 16 and today["budget_cores"] == 32
    by = {s["name"]: s for s in live2["services"]}
    was = {s["name"]: s for s in today["services"]}
    assert by["live"]["requests"] == pytest.approx(2 * was["live"]["requests"], rel=0.05)
    assert by["feed"]["requests"] == was["feed"]["requests"]


def test_simulate_what_if_with_services_refuses_a_second_question_in_one_line(tmp_path):
    from infadapter.__main__ import main

    trace = tmp_path / "rates.txt"
    trace.write_text("\n".join(["10"] * 60))
    base = ["simulate", "--profile", str(SERVICES_YAML), "--trace", str(trace), "--service-window", "live=0:20",
            "--service-window", "feed=20:20", "--service-window", "archive=40:20", "--what-if", "budget=16"]
    for extra, message in ((["--sweep", "budget=16,32"], "--what-if: give it without --sweep and --min-budget"),
                           (["--policy", "infadapter,infadapter-split"], "--what-if: give one --policy")):
        with pytest.raises(BadInput) as exc:
            CliRunner().invoke(main, [*base, *extra], catch_exceptions=False, standalone_mode=False)
        assert str(exc.value).startswith(message) and "\n" not in str(exc.value)
