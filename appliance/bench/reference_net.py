"""A reference-size classifier for `bench inference`: ResNet-50's shape with random weights.

Built with `onnx.helper` (no torch): the stem (7x7/2 convolution, 3x3/2 max pool), four stages
of 3, 4, 6 and 3 bottleneck blocks (1x1, 3x3, 1x1 convolutions; widths 64/256 to 512/2048;
stride on the 3x3 as in torchvision; a 1x1 projection on each stage's first shortcut), global
average pooling and a 1000-way fully connected layer. Batch norm is folded into the
convolutions' biases, as an exported, optimised model has it: 25.5 M parameters.
Its INT8 twin is QDQ, quantised statically with random calibration images.
"""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

SIZE = 224
CLASSES = 1000
STAGES = ((3, 64, 256, 1), (4, 128, 512, 2), (6, 256, 1024, 2), (3, 512, 2048, 2))
INPUT, OUTPUT = "image", "logits"
_OPSET = 17


@dataclass
class _Graph:
    """Nodes and weights collected while the network is laid out."""

    rng: np.random.Generator
    nodes: list[Any] = field(default_factory=list)
    weights: list[Any] = field(default_factory=list)

    def name(self, kind: str) -> str:
        return f"{kind}_{len(self.nodes)}"

    def conv(
        self, x: str, cin: int, cout: int, kernel: int, stride: int = 1, gain: float = 1.0
    ) -> str:
        from onnx import helper, numpy_helper

        std = np.float32(gain * np.sqrt(2.0 / (cin * kernel * kernel)))
        w = self.rng.standard_normal((cout, cin, kernel, kernel), dtype=np.float32) * std
        b = self.rng.standard_normal(cout, dtype=np.float32) * np.float32(0.01)
        out = self.name("conv")
        self.weights += [
            numpy_helper.from_array(w, f"{out}_w"),
            numpy_helper.from_array(b, f"{out}_b"),
        ]
        pad = kernel // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{out}_w", f"{out}_b"],
                [out],
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[pad] * 4,
            )
        )
        return out

    def op(self, kind: str, inputs: list[str], **attributes: Any) -> str:
        from onnx import helper

        out = self.name(kind.lower())
        self.nodes.append(helper.make_node(kind, inputs, [out], **attributes))
        return out

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])


def _bottleneck(g: _Graph, x: str, cin: int, mid: int, cout: int, stride: int) -> str:
    y = g.relu(g.conv(x, cin, mid, 1))
    y = g.relu(g.conv(y, mid, mid, 3, stride))
    y = g.conv(y, mid, cout, 1, gain=0.2)  # small last layer: the residual sum stays bounded
    shortcut = x if cin == cout and stride == 1 else g.conv(x, cin, cout, 1, stride)
    return g.relu(g.op("Add", [y, shortcut]))


def build_resnet50(seed: int = 0) -> Any:
    """The network as an `onnx.ModelProto` (dynamic batch, NCHW float32 input 3x224x224)."""
    from onnx import TensorProto, helper, numpy_helper

    g = _Graph(np.random.default_rng(seed))
    x = g.relu(g.conv(INPUT, 3, 64, 7, 2))
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    channels = 64
    for blocks, mid, cout, stride in STAGES:
        for block in range(blocks):
            x = _bottleneck(g, x, channels, mid, cout, stride if block == 0 else 1)
            channels = cout
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    fc_w = g.rng.standard_normal((CLASSES, channels), dtype=np.float32) / np.float32(channels**0.5)
    g.weights += [
        numpy_helper.from_array(fc_w, "fc_w"),
        numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fc_b"),
    ]
    g.nodes.append(helper.make_node("Gemm", [x, "fc_w", "fc_b"], [OUTPUT], transB=1))
    graph = helper.make_graph(
        g.nodes,
        "resnet50_reference",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", CLASSES])],
        g.weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 8
    return model


def parameter_count(model: Any) -> int:
    """Elements in the model's initializers (its weights and biases)."""
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


@dataclass(frozen=True)
class ReferenceFiles:
    fp32: Path
    int8: Path


def reference_files(folder: Path | None = None, calibration: int = 8) -> ReferenceFiles:
    """The FP32 and INT8 files, made once and cached under `folder` (default: the temp dir)."""
    import onnx

    folder = folder or Path(tempfile.gettempdir()) / "appliance-bench-reference"
    folder.mkdir(parents=True, exist_ok=True)
    files = ReferenceFiles(folder / "resnet50-random.onnx", folder / "resnet50-random.int8.onnx")
    if not files.fp32.exists():
        partial = files.fp32.with_suffix(".partial")
        onnx.save(build_resnet50(), str(partial))
        partial.replace(files.fp32)
    if not files.int8.exists():
        partial = files.int8.with_suffix(".partial")
        quantize(files.fp32, partial, calibration)
        partial.replace(files.int8)
    return files


def quantize(fp32: Path, int8: Path, images: int) -> None:
    """QDQ INT8 (QUInt8 activations, per-channel QInt8 weights) from random calibration data."""
    q = importlib.import_module("onnxruntime.quantization")

    reader: Any = q.CalibrationDataReader

    class RandomImages(reader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches: Iterator[dict[str, npt.NDArray[np.float32]]] = iter(
                {INPUT: _random_images(1, seed)} for seed in range(images)
            )

        def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
            return next(self._batches, None)

    q.quantize_static(
        str(fp32),
        str(int8),
        RandomImages(),
        quant_format=q.QuantFormat.QDQ,
        activation_type=q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
    )


def _random_images(count: int, seed: int = 0) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, 3, SIZE, SIZE), dtype=np.float32)
