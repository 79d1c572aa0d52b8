"""ResNet-18/34/50/101/152 as ONNX graphs, built with ``onnx.helper`` (no torch).

The architecture is torchvision's (v1.5: the stride of a Bottleneck sits on its 3x3 convolution).
Weights are random (He/Kaiming normal, fan_out, as torchvision initializes them) from a seed: no model
hub is reachable here, and capacity does not depend on the weights' values.

Design decision: BatchNorm is folded into the preceding convolution (a conv with a bias), which is
what an inference runtime does to a trained model anyway, so the graph costs what a deployed
ResNet costs. Because there is no trained BatchNorm to keep activations in range, the last
convolution of every residual branch is scaled by ``1/sqrt(blocks)`` (the folded form of a small
last-BN gamma, torchvision's ``zero_init_residual`` idea); this keeps activations O(1) through 50
blocks, so no float ever overflows or turns denormal (denormals are slow on CPUs).

Input: ``input`` float32 ``[batch, 3, R, R]`` (NCHW, batch dynamic, R = ``resolution``). Output:
``logits`` float32 ``[batch, 1000]``. Any R that is a multiple of 32 keeps torchvision's feature map
sizes; the global average pool makes every R >= 32 valid.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from infadapter.errors import BadInput

#: depth -> (block kind, blocks per stage), torchvision's table.
ARCHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
VARIANT_NAMES = tuple(f"resnet{d}" for d in ARCHS)
NUM_CLASSES = 1000
OPSET = 17
# IR 8 / opset 17 load in every onnxruntime that requirements.txt allows (>= 1.17).
IR_VERSION = 8
MIN_RESOLUTION = 32
MODEL_FILE = "model.onnx"


def depth_of(name: str) -> int:
    """``resnet50`` -> 50; BadInput naming the known variants otherwise."""
    if name.startswith("resnet") and name[6:].isdigit() and int(name[6:]) in ARCHS:
        return int(name[6:])
    raise BadInput(f"--variants: unknown variant {name!r}, expected some of {', '.join(VARIANT_NAMES)}")


@dataclass
class _Builder:
    """Accumulates nodes and initializers; names are unique by a counter."""

    rng: np.random.Generator
    residual_scale: float
    nodes: list[onnx.NodeProto]
    inits: list[onnx.TensorProto]
    count: int = 0

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}_{self.count}"

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int, scale: float = 1.0) -> str:
        name = self._name("conv")
        # Kaiming normal, mode fan_out, gain sqrt(2): torchvision's init of every Conv2d.
        std = math.sqrt(2.0 / (cout * k * k)) * scale
        w = self.rng.standard_normal((cout, cin, k, k), dtype=np.float32)
        w *= np.float32(std)
        self.inits.append(numpy_helper.from_array(w, f"{name}.weight"))
        self.inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}.bias"))
        pad = k // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}.weight", f"{name}.bias"],
                [name],
                name=name,
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad, pad, pad, pad],
            )
        )
        return name

    def op(self, kind: str, inputs: list[str], **attrs: object) -> str:
        name = self._name(kind.lower())
        self.nodes.append(helper.make_node(kind, inputs, [name], name=name, **attrs))
        return name

    def basic(self, x: str, cin: int, planes: int, stride: int) -> tuple[str, int]:
        y = self.op("Relu", [self.conv(x, cin, planes, 3, stride)])
        y = self.conv(y, planes, planes, 3, 1, self.residual_scale)
        short = x if stride == 1 and cin == planes else self.conv(x, cin, planes, 1, stride)
        return self.op("Relu", [self.op("Add", [y, short])]), planes

    def bottleneck(self, x: str, cin: int, planes: int, stride: int) -> tuple[str, int]:
        out = planes * 4
        y = self.op("Relu", [self.conv(x, cin, planes, 1, 1)])
        y = self.op("Relu", [self.conv(y, planes, planes, 3, stride)])
        y = self.conv(y, planes, out, 1, 1, self.residual_scale)
        short = x if stride == 1 and cin == out else self.conv(x, cin, out, 1, stride)
        return self.op("Relu", [self.op("Add", [y, short])]), out


def build_resnet(depth: int, resolution: int = 224, seed: int = 0) -> onnx.ModelProto:
    """The ONNX model of ResNet-``depth`` for ``resolution`` x ``resolution`` RGB input."""
    if depth not in ARCHS:
        raise BadInput(f"depth: ResNet-{depth} is not built, expected one of {', '.join(map(str, ARCHS))}")
    if resolution < MIN_RESOLUTION:
        raise BadInput(f"--resolution: must be at least {MIN_RESOLUTION} pixels, got {resolution}")
    kind, stages = ARCHS[depth]
    b = _Builder(
        rng=np.random.default_rng([seed, depth]),
        residual_scale=1.0 / math.sqrt(sum(stages)),
        nodes=[],
        inits=[],
    )
    x = b.op("Relu", [b.conv("input", 3, 64, 7, 2)])
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    block = b.basic if kind == "basic" else b.bottleneck
    cin = 64
    for stage, blocks in enumerate(stages):
        planes = 64 * 2**stage
        for i in range(blocks):
            x, cin = block(x, cin, planes, 2 if stage > 0 and i == 0 else 1)
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])], axis=1)
    fc_w = b.rng.standard_normal((NUM_CLASSES, cin), dtype=np.float32) * np.float32(0.01)
    b.inits.append(numpy_helper.from_array(fc_w, "fc.weight"))
    b.inits.append(numpy_helper.from_array(np.zeros(NUM_CLASSES, np.float32), "fc.bias"))
    b.nodes.append(helper.make_node("Gemm", [x, "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        b.nodes,
        f"resnet{depth}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, resolution, resolution])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES])],
        initializer=b.inits,
    )
    model = helper.make_model(
        graph,
        producer_name="infadapter",
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string=f"ResNet-{depth} (torchvision architecture, BatchNorm folded), random weights seed {seed}",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"resolution": str(resolution), "seed": str(seed), "depth": str(depth)})
    return model


def parameter_count(model: onnx.ModelProto) -> int:
    """Number of weights (all initializer elements)."""
    return sum(math.prod(t.dims) for t in model.graph.initializer)


INFO_FILE = "build.json"


def model_path(out_dir: Path, name: str, version: int = 1) -> Path:
    """TF-Serving-like layout: ``<out>/<name>/<version>/model.onnx``."""
    return Path(out_dir) / name / str(version) / MODEL_FILE


def write_model(out_dir: Path, name: str, resolution: int = 224, seed: int = 0) -> Path:
    """Build ``name`` (e.g. ``resnet50``) and write it; returns the file written."""
    model = build_resnet(depth_of(name), resolution, seed)
    path = model_path(out_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    # Written whole then renamed, so a server never reads a half-written model.
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(path)
    # A small sidecar lets callers check the input size without parsing hundreds of MB of weights.
    path.with_name(INFO_FILE).write_text(json.dumps({"resolution": resolution, "seed": seed, "name": name}))
    return path


def built_resolution(out_dir: Path, name: str) -> int | None:
    """The input size a model under ``out_dir`` was built for, or None when unknown (no sidecar)."""
    try:
        info = json.loads(model_path(out_dir, name).with_name(INFO_FILE).read_text())
        return int(info["resolution"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
