"""``cli.py plan --load NAME=RPS,...`` on a profile with services: one plan whose variants carry their service,
within the budget (in process; tests/test_cli_plan.py runs the one-service command as a subprocess)."""

from __future__ import annotations

import json
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
    # adapt, experiment and render call Profile.single_service; render stands for them (no trace needed).
    from infadapter.__main__ import main

    plan = '{"load": 10, "variants": [{"name": "live-resnet18", "cores": 2, "share": 1}]}'
    args = ["render", "--profile", str(SERVICES_YAML), "--out", str(tmp_path / "out")]
    with pytest.raises(BadInput, match=r"render: this profile has services: \(live, feed, archive\); only plan"):
        CliRunner().invoke(main, args, input=plan, catch_exceptions=False, standalone_mode=False)
