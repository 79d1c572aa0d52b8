"""Shared fixtures: the repository root, the paper profile, and a small profile factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from infadapter.profile import Profile, load_profile, profile_from_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def paper() -> Profile:
    return load_profile(ROOT / "profiles" / "paper.yaml")


def make_profile_dict(**overrides: Any) -> dict[str, Any]:
    """A small valid profile as plain data; keyword overrides replace top-level fields."""
    data: dict[str, Any] = {
        "slo_ms": 500,
        "budget_cores": 8,
        "core_step": 1,
        "min_cores": 1,
        "alpha": 0.05,
        "beta": 0.001,
        "variants": [
            {"name": "small", "accuracy": 0.70, "load_time_s": 5, "memory": "1Gi",
             "capacity": {"kind": "linear", "slope": 20, "intercept": -4, "safety": 1.0}},
            {"name": "big", "accuracy": 0.78, "load_time_s": 8, "memory": "2Gi",
             "capacity": {"kind": "linear", "slope": 5, "intercept": -1, "safety": 1.0}},
        ],
    }
    data.update(overrides)
    return data


@pytest.fixture()
def make_profile() -> Callable[..., Profile]:
    def factory(**overrides: Any) -> Profile:
        return profile_from_dict(make_profile_dict(**overrides))

    return factory


@pytest.fixture
def cluster() -> Iterator[Any]:
    """Real small TF-Serving-speaking backends plus a dispatcher (tests/test_dispatcher_support.py)."""
    from tests.test_dispatcher_support import Cluster

    c = Cluster()
    try:
        yield c
    finally:
        c.close()
