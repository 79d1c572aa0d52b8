"""Profiles with ``services:``: several inference services, one budget. Validation names the service and the
field; ``profiles/services.yaml`` is built from the paper's CSV. The joint program: tests/test_services.py."""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest

from infadapter.core.profile import dump_profile, load_profile, profile_from_dict
from infadapter.errors import BadInput
from tests.cli_helpers import ROOT

SERVICES_YAML = ROOT / "profiles" / "services.yaml"


def _variant(name: str, acc: float, slope: float, intercept: float = 0.0, load_time_s: float = 5.0) -> dict:
    return {"name": name, "accuracy": acc, "load_time_s": load_time_s,
            "capacity": {"kind": "linear", "slope": slope, "intercept": intercept, "safety": 1.0}}


def two_services(**overrides: Any) -> dict[str, Any]:
    """Two services, each a fast (acc 0.70, 20 req/s a core) and a slow (acc 0.78, 5 req/s a core) variant."""
    data: dict[str, Any] = {
        "budget_cores": 8, "core_step": 1, "min_cores": 1, "alpha": 0.05, "beta": 0.001,
        "services": [
            {"name": "gold", "slo_ms": 500, "weight": 3, "variants": [_variant("small", 0.70, 20),
                                                                      _variant("big", 0.78, 5)]},
            {"name": "bronze", "slo_ms": 1000, "weight": 1, "variants": [_variant("small", 0.70, 20),
                                                                         _variant("big", 0.78, 5)]},
        ],
    }
    data.update(overrides)
    return data


# -- profiles ---------------------------------------------------------------------------------------
def test_a_profile_without_services_is_one_service():
    paper = load_profile(ROOT / "profiles" / "paper.yaml")
    assert paper.services is None and paper.service_names == () and paper.service_of("resnet18") == ""


def test_services_are_flattened_into_prefixed_variants():
    prof = profile_from_dict(two_services())
    assert prof.names == ("gold-small", "gold-big", "bronze-small", "bronze-big")
    assert prof.slo_ms == 500  # the tightest service's
    assert prof.service_of("bronze-big") == "bronze" and prof.service_variants("gold") == ("gold-small", "gold-big")
    # Re-validated copies keep the services (and re-derive the variants).
    wider = prof.tuned(budget=12)
    assert wider.budget_cores == 12 and wider.names == prof.names and wider.services == prof.services


def test_the_shipped_services_profile_comes_from_the_paper_csv_at_each_sla():
    prof = load_profile(SERVICES_YAML)
    paper = load_profile(ROOT / "profiles" / "paper.yaml")
    assert prof.service_names == ("live", "feed", "archive")
    assert [s.slo_ms for s in prof.services] == [500, 750, 1000]
    assert len({s.weight for s in prof.services}) == 3
    assert len({s.window for s in prof.services}) == 3
    # feed is at the paper's SLA 750: the same fit as profiles/paper.yaml.
    for v in paper.variants:
        assert prof.variant(f"feed-{v.name}").capacity == v.capacity
    # live at SLA 500 serves less on the same cores (CSV: ResNet-18 slope 24.63, intercept -12.92).
    assert prof.capacity_rps("live-resnet18", 4) < prof.capacity_rps("feed-resnet18", 4)


@pytest.mark.skipif(not os.environ.get("INFADAPTER_PAPER_CSV") and not (ROOT / "../shared/data").exists(),
                    reason="the paper's CSV is not here")
def test_import_paper_services_reproduces_the_committed_yaml():
    from infadapter.commands.profile import SERVICES_HEADER
    from infadapter.paper import build_services_profile, default_csv

    prof = build_services_profile(default_csv(ROOT))
    assert dump_profile(prof, header=SERVICES_HEADER) == SERVICES_YAML.read_text()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["services"][1]["variants"][0].update(accuracy=7),
         "services[bronze].variants[0].accuracy: must be between 0 and 1, got 7"),
        (lambda d: d["services"][0].update(weight=0), "services[gold].weight: must be greater than 0, got 0"),
        (lambda d: d["services"][0].update(accuracy_floor=1.5), "services[gold].accuracy_floor: must be between 0"),
        (lambda d: d["services"][1].pop("slo_ms"), "services[bronze].slo_ms: is required"),
        (lambda d: d["services"][1].update(window="yesterday"), "services[bronze].window: must be paper or START:"),
        (lambda d: d["services"][1].update(name="gold"), "services: service names must be unique, repeated: gold"),
        (lambda d: d["services"][0].update(colour="red"), "services[gold].colour: is not a known field"),
        (lambda d: d.update(variants=[_variant("x", 0.7, 1)]), "variants: with services:, list each service's"),
        (lambda d: d.update(budget_cores=1), "budget_cores: 2 services need at least 2 x min_cores 1 cores, got 1"),
    ],
)
def test_validation_names_the_service_and_the_field(mutate, message):
    data = copy.deepcopy(two_services())
    mutate(data)
    with pytest.raises(BadInput) as exc:
        profile_from_dict(data, origin="s.yaml")
    assert str(exc.value).startswith(f"s.yaml: {message}"), str(exc.value)
    assert "\n" not in str(exc.value)
