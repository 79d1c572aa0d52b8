"""``cli.py adapt --router haproxy|dispatcher``: the same run through either router, the same summary.

Real model servers (32 px ResNets), real HAProxy or our dispatcher, real load, loopback only. A
static plan (resnet18 on 0.25 core, resnet50 on 0.5 core: capacities 10 and 8 req/s in the tiny
profile, so shares 10/18 and 8/18) keeps the split fixed for the whole run, so the variants that
answered can be compared with the plan.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from infadapter.serving.haproxy import haproxy_binary
from tests.tiny_profile import TINY_PROFILE, tiny_setup

# Starts real servers, clusters or subprocesses: not in the edit-test loop (pytest -m "not slow").
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PROFILE = TINY_PROFILE
# The docs/routing.md example, run here with a hermetic profile, model folder and run folder appended.
DOC_COMMAND = "python cli.py adapt --router haproxy --rate 10 --duration 20 --policy static:resnet18=0.25,resnet50=0.5 --interval 5 --json"  # noqa: E501
SHARES = {"resnet18": 10 / 18, "resnet50": 8 / 18}  # capacity-proportional: 40*0.25 and 16*0.5 req/s


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("routers"), "tiny.yaml")


def _run(command: str, base: Path, run_dir: Path) -> dict:
    args = shlex.split(command)
    assert args[:2] == ["python", "cli.py"]
    cmd = [sys.executable, str(ROOT / "cli.py"), *args[2:], "--profile", str(base / "tiny.yaml"),
           "--models", str(base / "models"), "--resolution", "32", "--run-dir", str(run_dir)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.slow
@pytest.mark.skipif(haproxy_binary() is None, reason="haproxy is not installed (scripts/setup.sh installs it)")
def test_adapt_through_haproxy_serves_the_planned_split_with_the_dispatchers_summary(setup, tmp_path):
    through_haproxy = _run(DOC_COMMAND, setup, tmp_path / "haproxy")
    through_dispatcher = _run(DOC_COMMAND.replace("--router haproxy", "--router dispatcher"), setup,
                              tmp_path / "dispatcher")
    assert set(through_haproxy) == set(through_dispatcher)
    assert through_haproxy["router"] == "haproxy" and through_dispatcher["router"] == "dispatcher"
    for summary in (through_haproxy, through_dispatcher):
        assert summary["requests"] > 150 and summary["errors"] == 0 and summary["timeouts"] == 0
        assert summary["failed_applies"] == 0
        ok = sum(summary["by_variant"].values())
        assert ok == summary["ok"]
        split = {n: c / ok for n, c in summary["by_variant"].items()}
        # Both routers are smooth weighted round robin: within a few percent of the plan.
        assert split == pytest.approx(SHARES, abs=0.03), summary["router"]
    # The loop observed the load through HAProxy (its exporter, or its request log).
    decisions = [json.loads(ln) for ln in (tmp_path / "haproxy" / "decisions.jsonl").read_text().splitlines()]
    observed = [d["observed_rps"] for d in decisions[1:]]
    assert observed and max(observed) > 5
    assert any(d.get("p99_ms") for d in decisions[1:])
    # Nothing left behind: no process runs this run's HAProxy config any more.
    cfg = str(tmp_path / "haproxy" / "haproxy.cfg")
    assert cfg not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


def test_haproxy_router_is_local_only():
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "adapt", "--backend", "dry-run", "--out", "x",
                          "--router", "haproxy", "--rate", "1", "--duration", "1"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].endswith(
        "--router haproxy: only with --backend local, not with --backend dry-run")
    assert "Traceback" not in out.stderr


def test_missing_haproxy_is_one_line_naming_the_flag(setup, tmp_path):
    cmd = [sys.executable, str(ROOT / "cli.py"), "adapt", "--router", "haproxy", "--rate", "5", "--duration", "5",
           "--profile", str(setup / "tiny.yaml"), "--models", str(setup / "models"), "--resolution", "32",
           "--run-dir", str(tmp_path / "run")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "INFADAPTER_HAPROXY_BIN": str(tmp_path / "no-haproxy")})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: --router haproxy: the haproxy binary is not installed (apt-get install haproxy, or "
        "scripts/setup.sh as root); or use --router dispatcher"]


@pytest.mark.parametrize("command", ["adapt", "experiment"])
def test_router_option_is_offered(command):
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), command, "--help"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0
    choices = out.stdout.split("--router [", 1)[1].split("]", 1)[0].split("|")
    assert {"dispatcher", "haproxy"} <= set(choices)
