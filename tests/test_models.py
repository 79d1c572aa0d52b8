"""ResNet ONNX builder and `cli.py build-models`: architecture, real ONNX Runtime inference, CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from infadapter.errors import BadInput
from infadapter.serving.resnet import build_resnet, depth_of, model_path, parameter_count, write_model

ROOT = Path(__file__).resolve().parents[1]


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


# Expected weights = torchvision's parameter count - BatchNorm's 2 parameters per channel + the
# folded conv bias (1 per channel), i.e. torchvision - BN channels. BN channels:
#  resnet18: stem 64 + layer1 2*2*64 + layer2 (2*2*128 + 128 downsample) + layer3 (4*256 + 256)
#            + layer4 (4*512 + 512) = 64 + 256 + 640 + 1280 + 2560 = 4,800 -> 11,689,512 - 4,800.
#  resnet50: 26,560 BN channels (53,120 BN parameters in torchvision's 25,557,032).
@pytest.mark.parametrize(
    ("depth", "torchvision_params", "bn_channels", "convs"),
    [
        (18, 11_689_512, 4_800, 20),  # 1 stem + 16 block convs + 3 downsample
        (34, 21_797_672, 8_512, 36),  # 1 + 32 + 3
        (50, 25_557_032, 26_560, 53),  # 1 + 48 + 4
    ],
)
def test_architecture_matches_torchvision(depth, torchvision_params, bn_channels, convs):
    model = build_resnet(depth, resolution=32)
    onnx.checker.check_model(model)
    assert parameter_count(model) == torchvision_params - bn_channels
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["Conv"] == convs
    assert ops["MaxPool"] == 1 and ops["GlobalAveragePool"] == 1 and ops["Gemm"] == 1


@pytest.mark.slow
def test_deep_model_counts_blocks_and_keeps_activations_in_range():
    # ResNet-101 has [3,4,23,3] = 33 bottlenecks: 33 Adds and 3*33 + 1 stem + 4 downsample convs.
    model = build_resnet(101, resolution=32)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["Add"] == 33 and ops["Conv"] == 3 * 33 + 1 + 4
    (out,) = _session(model).run(None, {"input": np.ones((1, 3, 32, 32), np.float32)})
    assert np.isfinite(out).all() and np.abs(out).max() < 1e3


def test_seed_decides_the_weights():
    a, b, c = (build_resnet(18, 32, seed) for seed in (1, 1, 2))
    wa, wb, wc = (onnx.numpy_helper.to_array(m.graph.initializer[0]) for m in (a, b, c))
    assert np.array_equal(wa, wb) and not np.array_equal(wa, wc)


def test_write_model_uses_tf_serving_layout(tmp_path):
    path = write_model(tmp_path, "resnet18", resolution=32, seed=0)
    assert path == model_path(tmp_path, "resnet18") == tmp_path / "resnet18" / "1" / "model.onnx"
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["resolution"] == "32" and props["depth"] == "18"
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize("bad", ["resnet19", "vgg16", "resnet", "ResNet18"])
def test_unknown_variant_is_bad_input(bad):
    with pytest.raises(BadInput, match="--variants: unknown variant"):
        depth_of(bad)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_build_models_cli_json(tmp_path):
    res = _cli("build-models", "--out", str(tmp_path), "--variants", "resnet18,resnet34", "--resolution", "32",
               "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert [m["name"] for m in data["models"]] == ["resnet18", "resnet34"]
    assert data["resolution"] == 32
    for m in data["models"]:
        assert (tmp_path / m["name"] / "1" / "model.onnx").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variants", "resnet19"], "--variants: unknown variant 'resnet19'"),
        (["--resolution", "16"], "--resolution: must be at least 32"),
        (["--variants", ","], "--variants: expected names"),
    ],
)
def test_build_models_cli_bad_input(tmp_path, args, message):
    res = _cli("build-models", "--out", str(tmp_path), *args)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
