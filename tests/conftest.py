"""Shared fixtures: the repository root, the paper profile, and a small profile factory.

The test session is hermetic: before anything imports the package, this module points the user cache
(``XDG_CACHE_HOME``: decoded trace windows, dispatcher tokens) and config (``XDG_CONFIG_HOME``,
``MPLCONFIGDIR``) at a fresh folder of its own (the learned
forecaster is the committed ``profiles/forecaster.npz``), and drops every other
``INFADAPTER_*`` setting of the user's shell except the data locations (``INFADAPTER_TRACE``,
``INFADAPTER_PAPER_CSV``, ``INFADAPTER_PROMETHEUS_BIN``). Subprocesses (``tests/cli_helpers.run_cli``)
inherit ``os.environ``, so CLI tests see the same cache. No test reads or writes ``~/.cache``;
``tests/test_hermetic.py`` checks it.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

#: Settings that say where input data is (not where state goes): kept from the user's environment.
_KEEP_ENV = ("INFADAPTER_TRACE", "INFADAPTER_PAPER_CSV", "INFADAPTER_PROMETHEUS_BIN")
SESSION_DIR = Path(tempfile.mkdtemp(prefix="infadapter-tests-"))
for _k in [k for k in os.environ if k.startswith("INFADAPTER_") and k not in _KEEP_ENV]:
    del os.environ[_k]
os.environ["XDG_CACHE_HOME"] = str(SESSION_DIR / "cache")
os.environ["XDG_CONFIG_HOME"] = str(SESSION_DIR / "config")  # matplotlib and others create folders there
os.environ["MPLCONFIGDIR"] = str(SESSION_DIR / "config" / "matplotlib")
# The tests send Ctrl-C (SIGINT) to the adapters and servers they start, as a terminal would. A suite run as a
# background job of a non-interactive shell (`bash .ci/run &`, nohup) inherits SIGINT ignored, and an ignored
# signal stays ignored across exec: those children would never see it (a run then ended only by its --duration).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from collections.abc import Callable, Iterator  # noqa: E402  (after the environment is set)
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from infadapter.core.profile import Profile, load_profile, profile_from_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


#: Modules whose tests assert live behaviour that CPU contention would change (SLO attainment under load,
#: faults during load, soaks, measured capacities and calibration, HAProxy's latency under its health
#: checks): marked ``quiet``, so that scripts/test.sh runs them one at a time before the parallel phase.
QUIET_MODULES = frozenset({
    "test_adapt_e2e.py", "test_faults.py", "test_dispatcher_soak.py", "test_profiler.py", "test_haproxy.py",
    "test_routers.py",  # also: HAProxy's admin socket path must stay short (an xdist worker's tmp path is longer)
})
#: Modules whose tests are independent of each other and long: pytest-xdist may spread their tests over
#: workers (each worker then builds the module's fixtures once). Every other module runs whole on one
#: worker (its module fixtures once, its tests in order).
SPLIT_MODULES = frozenset({"test_docs_live.py"})
#: Modules that share one machine-wide resource run on one worker, one after the other: the local
#: Kubernetes cluster (its state folder and node bridge).
SHARED_GROUPS = {"test_k8s_real.py": "k8s", "test_k8s_real_node.py": "k8s"}


def _schedule_rank(item: pytest.Item) -> int:
    """The longest chains first: the cluster tests (their worker waits for the Kubernetes build that
    scripts/test.sh runs in the background, then runs two clusters one after the other), then the SSH
    hosts' converge, then the rest."""
    name = item.path.name
    return 0 if name in SHARED_GROUPS else 1 if name == "test_ansible_converge.py" else 2


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the xdist_group marks in each worker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        name = item.path.name
        if name in QUIET_MODULES:
            item.add_marker(pytest.mark.quiet)
        if name not in SPLIT_MODULES:
            item.add_marker(pytest.mark.xdist_group(SHARED_GROUPS.get(name, name)))
    items.sort(key=_schedule_rank)  # stable: the order within a rank is pytest's


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Any) -> Iterator[None]:
    """With TEST_TIMELINE=FILE, one line a test (worker, start, end in Unix seconds, test id) appended to FILE:
    which chain of tests bounds the parallel phase (CONTRIBUTING.md, "Test time")."""
    path = os.environ.get("TEST_TIMELINE")
    t0 = time.time()
    yield
    if path:
        with open(path, "a") as f:
            f.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')} {t0:.1f} {time.time():.1f} {item.nodeid}\n")


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


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
