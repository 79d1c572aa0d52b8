"""The docs' examples that need real servers, run verbatim (tests/test_docs.py finds each string here).

Each command is the page's string, run with hermetic options appended (a later flag wins in click):
a tiny two-variant profile, 32 px models built here, run folders, outputs and free ports under
``tmp_path``. Nothing is written to the repository (``--out profiles/local.yaml`` is overridden) or to
the default ports. Long examples were shortened in the docs themselves. Experiments run here for
15-20 s of their load, and the profiler for one variant at one core value: for the commands that
produced recorded figures (README "Results", docs/adapt.md, docs/serving.md) this checks that the
exact command still works; it does not measure again.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from infadapter.ports import free_port
from tests.tiny_profile import TINY_PROFILE, tiny_setup

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

PROFILE = TINY_PROFILE

# docs/adapt.md: the local control loop.
ADAPT_RATE = "python cli.py adapt --rate 20 --duration 30 --interval 5"
ADAPT_WINDOW = "python cli.py adapt --window paper --scale 0.06 --speedup 30 --interval 1"
ADAPT_NO_LOAD = "python cli.py adapt --duration 20 --run-dir runs/demo"
EXPERIMENT = ("python cli.py experiment --policies infadapter,vpa:resnet50 --window paper --scale 0.06 "
              "--speedup 30 --interval 1")
# README "Results" and docs/adapt.md "Measured figures": the command of the live figures (15 s of it here).
EXPERIMENT_RESULTS = ("python cli.py experiment --policies infadapter,vpa:resnet50,msplus --window paper "
                      "--scale 0.1 --speedup 10 --interval 3 --alpha 0.5 --out runs/exp6")
# README "Results" and docs/adaptation.md "Live": today's defaults on two windows (10 s of each here).
EXPERIMENT_PAPER = ("python cli.py experiment --policies infadapter,vpa:resnet50,vpa:resnet101,vpa:resnet152 "
                    "--window paper --scale 0.25 --speedup 10 --interval 3 --out runs/exp14t")
EXPERIMENT_SECOND = ("python cli.py experiment --policies infadapter,vpa:resnet50,vpa:resnet101 "
                     "--window 1554600:1260 --scale 0.25 --speedup 10 --interval 3 --out runs/exp14u")
# README "Results" and docs/adaptation.md "Default flags, in real time" (10 s of its 21 minutes here).
EXPERIMENT_DEFAULT = ("python cli.py experiment --policies infadapter,vpa:resnet101 --window paper --scale 0.25 "
                      "--out runs/exp14w")
EXPERIMENT_DEFAULT_SECOND = ("python cli.py experiment --policies infadapter --window 1554600:1260 --scale 0.25 "
                             "--out runs/exp13x")
EXPERIMENT_DEFAULT_SECOND_VPA = ("python cli.py experiment --policies vpa:resnet101 --window 1554600:1260 "
                                 "--scale 0.25 --out runs/exp14x")
# README "Results" and docs/adaptation.md "Against VPA at no more cores": infadapter on VPA's cores.
EXPERIMENT_EQUAL_COST = ("python cli.py experiment --policies infadapter,vpa:resnet101 --budget 0.75 --window paper "
                         "--scale 0.25 --out runs/exp15b")
EXPERIMENT_SLOWER = ("python cli.py experiment --policies infadapter,vpa:resnet101 --window paper --scale 0.25 "
                     "--speedup 5 --interval 6 --out runs/exp14v")
# docs/serving.md: models, the model server, the profiler (the profile's own command, cut to one point).
BUILD_ALL = "python cli.py build-models"
BUILD_64 = "python cli.py build-models --resolution 64"
BUILD_JSON = "python cli.py build-models --variants resnet18,resnet50 --out /tmp/models --seed 1 --json"
SERVE = "python cli.py serve-model --name resnet18 --port 8501 --threads 1 --warmup 3"
MEASURE = ("python cli.py profile measure --slo-ms 300 --cores 0.25,0.5,0.75,1,1.75 --step-s 3 --max-steps 6 "
           "--budget-cores 1.75 --out profiles/local.yaml")
MEASURE_FRESH = ("python cli.py profile measure --slo-ms 300 --cores 0.25,0.5,0.75,1,1.75 --step-s 3 "
                 "--max-steps 6 --budget-cores 1.75 --out profiles/local.yaml --fresh")
# docs/dispatcher.md: the dispatcher and the load generator.
DISPATCH = ("python cli.py dispatch --port 8500 --admin-token-file runs/admin.token "
            "--backend resnet18=http://127.0.0.1:9001@0.7 --backend resnet50=http://127.0.0.1:9002@0.3")
LOAD_RATE = "python cli.py load --url http://127.0.0.1:8500 --rate 50 --duration 10 --out runs/requests.csv"
LOAD_WINDOW = ("python cli.py load --url http://127.0.0.1:8500 --window paper --scale 0.33 --speedup 60 "
               "--out runs/paper.csv")


def _argv(command: str, *extra: str) -> list[str]:
    args = shlex.split(command)
    assert args[:2] == ["python", "cli.py"], command
    return [sys.executable, str(ROOT / "cli.py"), *args[2:], *extra]


def _run(command: str, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(_argv(command, *extra), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, f"{command} {' '.join(extra)}\n{out.stderr[-3000:]}"
    return out


def _wait_http(url: str, timeout_s: float = 60) -> bytes:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tiny_setup(tmp_path_factory.mktemp("docs-live"))
    # The live figures' commands name ResNet-101 and -152: here they are more variants of the built
    # ResNet-50 file (a profile's ``model``), so the commands run as written without building more.
    more = "".join(f"- name: {name}\n  model: resnet50\n  accuracy: {acc}\n  load_time_s: 3\n"
                   f"  capacity: {{kind: linear, slope: {slope}, intercept: 0}}\n"
                   for name, acc, slope in (("resnet101", 0.77374, 10), ("resnet152", 0.78312, 7)))
    (base / "tiny4.yaml").write_text((base / "tiny.yaml").read_text() + more)
    return base


def _hermetic(base: Path) -> list[str]:
    return ["--profile", str(base / "tiny.yaml"), "--models", str(base / "models"), "--resolution", "32"]


@pytest.mark.parametrize("command", [ADAPT_RATE, ADAPT_WINDOW, ADAPT_NO_LOAD])
def test_adapt_examples(base: Path, tmp_path: Path, command: str) -> None:
    run_dir = tmp_path / "run"
    out = _run(command, *_hermetic(base), "--run-dir", str(run_dir), "--json", timeout=240)
    summary = json.loads(out.stdout)
    assert summary["decisions"] >= 1 and (run_dir / "adapt.png").exists()
    if "--rate" in command or "--window" in command:
        assert summary["requests"] > 0


@pytest.mark.parametrize("command,extra", [(EXPERIMENT, ("--duration", "20")),
                                           (EXPERIMENT_RESULTS, ("--duration", "15")),
                                           (EXPERIMENT_PAPER, ("--duration", "10")),
                                           (EXPERIMENT_SECOND, ("--duration", "10")),
                                           (EXPERIMENT_SLOWER, ("--duration", "10")),
                                           (EXPERIMENT_DEFAULT, ("--duration", "10")),
                                           (EXPERIMENT_DEFAULT_SECOND, ("--duration", "10")),
                                           (EXPERIMENT_DEFAULT_SECOND_VPA, ("--duration", "10")),
                                           (EXPERIMENT_EQUAL_COST, ("--duration", "10"))])
def test_experiment_examples(base: Path, tmp_path: Path, command: str, extra: tuple[str, ...]) -> None:
    out_dir = tmp_path / "exp"
    hermetic = _hermetic(base)
    if "resnet101" in command:
        hermetic[1] = str(base / "tiny4.yaml")
    _run(command, *hermetic, *extra, "--out", str(out_dir), timeout=420)
    doc = json.loads((out_dir / "experiment.json").read_text())
    policies = shlex.split(command)[shlex.split(command).index("--policies") + 1].split(",")
    assert [r["policy"] for r in doc["results"]] == policies
    assert (out_dir / "experiment.png").exists()
    if "--budget" in command:  # no plan holds more than the budget, live or simulated
        budget = float(shlex.split(command)[shlex.split(command).index("--budget") + 1])
        for r in doc["results"]:
            assert r["live"]["plan"]["cores"] <= budget + 1e-9
            assert r["simulated"]["mean_planned_cores"] <= budget + 1e-9


@pytest.mark.parametrize("command", [BUILD_ALL, BUILD_64, BUILD_JSON])
def test_build_models_examples(tmp_path: Path, command: str) -> None:
    out_dir = tmp_path / "models"
    try:
        _run(command, "--out", str(out_dir), timeout=240)
        assert list(out_dir.glob("*/1/model.onnx"))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)  # up to 625 MB at 224 px


@pytest.fixture()
def model_server(base: Path) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(_argv(SERVE, "--model-dir", str(base / "models"), "--port", str(port)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while b"AVAILABLE" not in _wait_http(f"http://127.0.0.1:{port}/v1/models/resnet18"):
            assert time.monotonic() < deadline, "serve-model did not become AVAILABLE in 60 s"
            time.sleep(0.3)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_model_example_answers_the_shown_requests(model_server: int) -> None:
    status = json.loads(_wait_http(f"http://127.0.0.1:{model_server}/v1/models/resnet18"))
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    metrics = _wait_http(f"http://127.0.0.1:{model_server}/monitoring/prometheus/metrics").decode()
    assert ":tensorflow:" in metrics


def test_dispatch_example_starts_and_answers(tmp_path: Path) -> None:
    """The page's dispatcher (its backends need not be up) listens and answers /healthz."""
    port = free_port()
    proc = subprocess.Popen(_argv(DISPATCH, "--port", str(port), "--admin-token-file", str(tmp_path / "token")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz")
    finally:
        proc.terminate()
        proc.wait(timeout=40)


@pytest.mark.parametrize("command", [LOAD_RATE, LOAD_WINDOW])
def test_load_examples(model_server: int, tmp_path: Path, command: str) -> None:
    """The load generator's examples against a real model server (instead of a dispatcher on 8500)."""
    csv = tmp_path / "requests.csv"
    out = _run(command, "--url", f"http://127.0.0.1:{model_server}", "--model", "resnet18", "--out", str(csv),
               "--resolution", "32", "--json", timeout=240)
    assert json.loads(out.stdout)["sent"] > 0 and csv.exists()


@pytest.mark.parametrize("command", [MEASURE, MEASURE_FRESH])
def test_profile_measure_examples(base: Path, tmp_path: Path, command: str) -> None:
    out = tmp_path / "local.yaml"
    _run(command, "--model-dir", str(base / "models"), "--variants", "resnet18", "--cores", "0.5",
         "--max-steps", "2", "--results", str(tmp_path / "results.jsonl"), "--out", str(out), timeout=240)
    assert "resnet18" in out.read_text()
