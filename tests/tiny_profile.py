"""The tiny two-variant profile of the live tests (32 px models, capacities kept low so that plans change
with small loads): one copy for every test that starts real servers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TINY_PROFILE = """\
name: tiny-test
source: hand-set for tests (32 px models, conservative capacities)
slo_ms: 500
budget_cores: 1.0
core_step: 0.25
min_cores: 0.25
alpha: 0.05
beta: 0.001
variants:
- name: resnet18
  accuracy: 0.69758
  load_time_s: 2
  capacity: {kind: linear, slope: 40, intercept: 0}
- name: resnet50
  accuracy: 0.7613
  load_time_s: 3
  capacity: {kind: linear, slope: 16, intercept: 0}
"""


def tiny_setup(base: Path, profile_name: str = "tiny.yaml") -> Path:
    """``base`` with the tiny profile and its two variants built as 32 px ONNX models in ``base/models``."""
    (base / profile_name).write_text(TINY_PROFILE)
    subprocess.run([sys.executable, str(ROOT / "cli.py"), "build-models", "--out", str(base / "models"),
                    "--variants", "resnet18,resnet50", "--resolution", "32"], check=True, capture_output=True)
    return base
