"""Parity with a third-party model's own preprocessing.

The model is shaped like a Keras export (NHWC, 150 x 150, RGB, pixel / 255, two-logit softmax);
its maker resized with OpenCV's INTER_NEAREST. The reference here is written independently of
the appliance: files read with Pillow (PNG) and pydicom (DICOM), nearest neighbour by integer
indexing as OpenCV's resizeNN computes it (destination pixel x takes source pixel
floor(x * scale), scale = 1 / (dst / src) in double precision: not the exact quotient, so
850 -> 150 takes source pixel 50 for x = 9, where exact arithmetic gives 51),
the graph run directly by ONNX Runtime and the softmax in float64. The appliance's pneumonia
probability, through its real decoding, preprocessing and engine, must agree within 1e-4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime  # type: ignore[import-untyped]
import pydicom
import pytest
import yaml
from PIL import Image

from appliance.imaging import decode
from appliance.runtime.backends import BackendOptions
from appliance.runtime.engine import Model
from appliance.runtime.preprocess import read_picture

from runtime_models import dicom_file, third_party_manifest, third_party_onnx, write_package

SIZE = 150
SHAPES = [(600, 480), (512, 512), (437, 389), (1024, 850)]


def radiograph(rows: int, columns: int, seed: int) -> npt.NDArray[np.uint16]:
    """A 12-bit frontal-chest-like picture: bright mediastinum and edges, two darker lung
    fields, a soft vertical gradient and detector noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns] / np.array([rows, columns])[:, None, None]
    exposure, darkness = rng.uniform(1200, 3000), rng.uniform(400, 1800)  # differ by seed
    body = exposure + 600 * y
    for centre in (0.3, 0.7):
        lung = ((x - centre) / 0.17) ** 2 + ((y - 0.45) / 0.3) ** 2 < 1
        body = np.where(lung, body - darkness + 300 * y, body)
    body += rng.normal(0, 60, size=body.shape)
    pixels: npt.NDArray[np.uint16] = np.clip(body, 0, 4095).astype(np.uint16)
    return pixels


def reference_probability(session: Any, grey: npt.NDArray[np.float64]) -> float:
    """The maker's pipeline on display values in [0, 1]: nearest to 150 x 150, grey to RGB,
    NHWC, the graph, softmax; the probability of class 1 (pneumonia)."""
    rows, columns = grey.shape
    ys = np.minimum(np.floor(np.arange(SIZE) * (1.0 / (SIZE / rows))).astype(int), rows - 1)
    xs = np.minimum(np.floor(np.arange(SIZE) * (1.0 / (SIZE / columns))).astype(int), columns - 1)
    small = grey[ys][:, xs]
    batch = np.repeat(small[np.newaxis, :, :, np.newaxis], 3, axis=3).astype(np.float32)
    logits = session.run(["logits"], {"image": batch})[0][0].astype(np.float64)
    exp = np.exp(logits - logits.max())
    return float(exp[1] / exp.sum())


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("third-party")
    return write_package(folder / "pkg", third_party_manifest(SIZE), third_party_onnx)


def inputs(folder: Path) -> list[tuple[Path, npt.NDArray[np.float64]]]:
    """(file, the reference's display values) for DICOM and PNG versions of each picture."""
    made = []
    for seed, (rows, columns) in enumerate(SHAPES):
        pixels = radiograph(rows, columns, seed)
        dicom = dicom_file(folder, pixels, name=f"r{seed}.dcm")
        made.append((dicom, pydicom.dcmread(dicom).pixel_array.astype(np.float64) / 4095.0))
        png = folder / f"r{seed}.png"
        Image.fromarray((pixels >> 4).astype(np.uint8)).save(png)  # an 8-bit export
        made.append((png, np.asarray(Image.open(png), dtype=np.float64) / 255.0))
    return made


def appliance_probabilities(package: Path, files: list[Path], **changes: Any) -> list[float]:
    if changes:  # the same package with other input settings
        text = yaml.safe_load((package / "manifest.yaml").read_text())
        text["input"].update(changes)
        package = write_package(package.parent / "changed", text, third_party_onnx)
    images = [decode(f) if f.suffix == ".dcm" else read_picture(f) for f in files]
    with Model.open(package, BackendOptions(backend="cpu", threads=1)) as model:
        results = [model.infer([image])[0] for image in images]
    assert all([f.label for f in r.labels] == ["pneumonia"] for r in results)
    return [r.labels[0].score for r in results]


def test_probabilities_match_the_makers_preprocessing(package: Path, tmp_path: Path) -> None:
    made = inputs(tmp_path)
    session = onnxruntime.InferenceSession(
        str(package / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    expected = [reference_probability(session, grey) for _, grey in made]
    assert max(expected) - min(expected) > 0.01  # the inputs do move the model
    actual = appliance_probabilities(package, [path for path, _ in made])
    difference = np.abs(np.array(actual) - np.array(expected))
    print(f"largest difference from the reference: {difference.max():.2e}")
    assert difference.max() < 1e-4, list(zip(actual, expected, strict=True))
    # The test can tell: the default (area) resize is measurably off the maker's numbers.
    area = appliance_probabilities(package, [path for path, _ in made], interpolation="area")
    assert np.abs(np.array(area) - np.array(expected)).max() > 1e-3
