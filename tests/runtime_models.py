"""Tiny ONNX models and real packages for the runtime tests, built with onnx.helper.

The models compute things a test can work out by hand:

- classifier: two class maps, the input (`bright`) and its negative (`dark`), averaged over
  the image give the logits (sigmoid activation); the CAM output is the same maps average-
  pooled by 4, so a bright blob is where the `bright` CAM peaks.
- segmenter: the mask is `input > 0.5` (with mean 0 / std 1 the input is the display value).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper

from imaging_fixtures import image_dataset, save

OPSET = 17
CAM_STRIDE = 4


def _input(size: int, channels: int, dynamic: bool) -> onnx.ValueInfoProto:
    batch: str | int = "N" if dynamic else 1
    return helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, channels, size, size])


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def classifier_onnx(path: Path, size: int = 64, channels: int = 1, dynamic: bool = True) -> Path:
    """logits (N, 2) = mean of [x, -x]; cam (N, 2, size/4, size/4) = their 4x4 averages."""
    batch: str | int = "N" if dynamic else 1
    low = size // CAM_STRIDE
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["gray"], axes=[1], keepdims=1),
        helper.make_node("Neg", ["gray"], ["negative"]),
        helper.make_node("Concat", ["gray", "negative"], ["maps"], axis=1),
        helper.make_node("GlobalAveragePool", ["maps"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["logits"], axis=1),
        helper.make_node(
            "AveragePool",
            ["maps"],
            ["cam"],
            kernel_shape=[CAM_STRIDE, CAM_STRIDE],
            strides=[CAM_STRIDE, CAM_STRIDE],
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [_input(size, channels, dynamic)],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 2]),
            helper.make_tensor_value_info("cam", TensorProto.FLOAT, [batch, 2, low, low]),
        ],
    )
    return _save(graph, path)


def segmenter_onnx(path: Path, size: int = 64, dynamic: bool = True) -> Path:
    """mask (N, 1, size, size) = 1.0 where the input is above 0.5, else 0.0."""
    batch: str | int = "N" if dynamic else 1
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["gray"], axes=[1], keepdims=1),
        helper.make_node("Greater", ["gray", "half"], ["above"]),
        helper.make_node("Cast", ["above"], ["mask"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "segmenter",
        [_input(size, 1, dynamic)],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [batch, 1, size, size])],
        initializer=[half],
    )
    return _save(graph, path)


def classifier_manifest(size: int = 64, **changes: Any) -> dict[str, Any]:
    """A valid format-1 manifest for `classifier_onnx`; `changes` replace top-level fields."""
    manifest: dict[str, Any] = {
        "format": 1,
        "name": "test-classifier",
        "version": "0.1.0",
        "task": "classification",
        "title": "Bright blob finder (test)",
        "intended_use": "Tests of the runtime.",
        "not_for_clinical_use": True,
        "caution": "Test model. Not for clinical use.",
        "applies_to": {"modalities": ["CR", "DX"], "body_parts": [], "views": []},
        "input": {
            "name": "image",
            "height": size,
            "width": size,
            "channels": 1,
            "layout": "NCHW",
            "resize": "letterbox",
            "window": "minmax",
            "mean": [0.5],
            "std": [0.25],
            "frames": "first",
            "crop_to_ultrasound_region": False,
            "batch": "dynamic",
        },
        "outputs": [
            {
                "name": "logits",
                "kind": "scores",
                "activation": "sigmoid",
                "labels": [
                    {
                        "name": "bright",
                        "display": "Bright area",
                        "code": {"scheme": "99TEST", "value": "1", "meaning": "Bright"},
                        "threshold": 0.5,
                        "priority": "urgent",
                    },
                    {
                        "name": "dark",
                        "display": "Dark area",
                        "threshold": 0.5,
                        "priority": "routine",
                    },
                ],
            },
            {"name": "cam", "kind": "cam", "for": "logits"},
        ],
        "explanation": {"method": "cam", "patch": 16, "stride": 8},
        "files": {"fp32": "model.onnx"},
    }
    manifest.update(changes)
    return manifest


def segmenter_manifest(size: int = 64, **changes: Any) -> dict[str, Any]:
    manifest = classifier_manifest(size)
    manifest.update(
        name="test-segmenter",
        task="segmentation",
        title="Bright disc outliner (test)",
        outputs=[
            {
                "name": "mask",
                "kind": "mask",
                "threshold": 0.5,
                "labels": [{"name": "disc", "display": "Disc", "priority": "review"}],
            }
        ],
        explanation={"method": "none"},
    )
    manifest["input"] = {**manifest["input"], "mean": [0.0], "std": [1.0]}
    manifest.update(changes)
    return manifest


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_package(folder: Path, manifest: dict[str, Any], build: Any = classifier_onnx) -> Path:
    """A package folder: manifest.yaml, model.onnx built by `build`, SHA256SUMS."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    size = manifest["input"]["height"]
    dynamic = manifest["input"]["batch"] == "dynamic"
    build(folder / manifest["files"]["fp32"], size=size, dynamic=dynamic)
    write_sums(folder, ["manifest.yaml", manifest["files"]["fp32"]])
    return folder


def write_sums(folder: Path, names: list[str]) -> None:
    lines = "".join(f"{sha256(folder / name)}  {name}\n" for name in names)
    (folder / "SHA256SUMS").write_text(lines)


def stripes_dataset(folder: Path, rows: Sequence[int], labels: Sequence[int] | None = None) -> Path:
    """`folder` with one 64 x 64 PNG per entry of `rows`, bright in that many top rows, and a
    labels.csv giving each its `bright` label (by default 1 when over half the rows are
    bright). The classifier's `bright` score ranks them by rows."""
    folder.mkdir()
    marks = [int(count > 32) for count in rows] if labels is None else list(labels)
    lines = ["file,bright"]
    for number, (count, label) in enumerate(zip(rows, marks, strict=True)):
        picture = np.zeros((64, 64), dtype=np.uint8)
        picture[:count] = 255
        cv2.imwrite(str(folder / f"p{number}.png"), picture)
        lines.append(f"p{number}.png,{label}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def blob_image(
    rows: int,
    columns: int,
    centre: tuple[int, int],
    radius: float,
    low: int = 200,
    high: int = 3000,
) -> np.ndarray:
    """uint16 background `low` with a disc of `high` around (x, y) `centre`."""
    yy, xx = np.mgrid[0:rows, 0:columns]
    disc = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2
    return np.where(disc, high, low).astype(np.uint16)


def dicom_file(
    folder: Path, pixels: np.ndarray, name: str = "image.dcm", **attributes: Any
) -> Path:
    """A 12-bit MONOCHROME2 CR file (unless attributes say otherwise) holding `pixels`."""
    photometric = attributes.pop("photometric", "MONOCHROME2")
    defaults = {"Modality": "CR", "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.3"}
    cr = "1.2.840.10008.5.1.4.1.1.1"
    ds = image_dataset(pixels, photometric, 12, sop_class=cr, **{**defaults, **attributes})
    return save(ds, folder, name)


def nhwc_classifier_onnx(path: Path, size: int = 64, dynamic: bool = True) -> Path:
    """`classifier_onnx` taking N x H x W x 1: a Transpose to NCHW, then the same nodes, so
    its scores and CAM for an image equal the NCHW classifier's."""
    nchw = classifier_onnx(path.with_suffix(".nchw.onnx"), size=size, dynamic=dynamic)
    model = onnx.load(str(nchw))
    nchw.unlink()
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["image_nchw" if name == "image" else name for name in node.input]
    graph.node.insert(
        0, helper.make_node("Transpose", ["image"], ["image_nchw"], perm=[0, 3, 1, 2])
    )
    batch: str | int = "N" if dynamic else 1
    del graph.input[:]
    graph.input.append(
        helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, size, size, 1])
    )
    return _save(graph, path)


def third_party_onnx(path: Path, size: int = 150, dynamic: bool = True, seed: int = 3) -> Path:
    """A small Keras-shaped binary classifier: N x size x size x 3 in, two logits out
    (Transpose, two 3x3 stride-2 Conv + Relu, global average pool, Gemm), fixed random
    weights from `seed`."""
    rng = np.random.default_rng(seed)
    batch: str | int = "N" if dynamic else 1

    def weight(name: str, *shape: int, scale: float = 0.5) -> onnx.TensorProto:
        values = rng.normal(0.0, scale, size=shape).astype(np.float32)
        return helper.make_tensor(name, TensorProto.FLOAT, list(shape), values.ravel().tolist())

    initializers = [
        weight("w1", 4, 3, 3, 3),
        weight("b1", 4),
        weight("w2", 4, 4, 3, 3),
        weight("b2", 4),
        weight("w3", 4, 2, scale=4.0),  # large: the logits follow the picture closely
        weight("b3", 2),
    ]
    conv: dict[str, Any] = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Transpose", ["image"], ["x0"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x0", "w1", "b1"], ["c1"], **conv),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], **conv),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w3", "b3"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "third_party",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, size, size, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 2])],
        initializer=initializers,
    )
    return _save(graph, path)


def third_party_manifest(size: int = 150, **changes: Any) -> dict[str, Any]:
    """The manifest a site writes for `third_party_onnx`: NHWC RGB, stretch with nearest
    neighbour, raw window, pixel / 255 (mean 0, std 1), two-logit softmax whose first class
    (normal) is the negative one."""
    manifest = classifier_manifest(size)
    manifest.update(
        name="third-party-pneumonia",
        title="Pneumonia (third-party, test)",
        outputs=[
            {
                "name": "logits",
                "kind": "scores",
                "activation": "softmax",
                "labels": [
                    {"name": "normal", "display": "Normal", "negative": True},
                    {
                        "name": "pneumonia",
                        "display": "Pneumonia",
                        "threshold": 0.5,
                        "priority": "urgent",
                    },
                ],
            }
        ],
        explanation={"method": "occlusion", "patch": 30, "stride": 30},
    )
    manifest["input"] = {
        **manifest["input"],
        "channels": 3,
        "layout": "NHWC",
        "resize": "stretch",
        "interpolation": "nearest",
        "window": "raw",
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
    }
    manifest.update(changes)
    return manifest
