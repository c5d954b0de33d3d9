"""Golden inputs: a package's own proof that the model runs here as it ran where it was made.

A package may carry `golden.npz` (named by the manifest's `golden.file`, listed in
SHA256SUMS): a few model-ready input tensors and the outputs the FP32 graph gave for them on
ONNX Runtime's CPU provider. The worker, `appliance selftest` and `appliance model import`
run the inputs on the configured backend and precision and compare: a package whose outputs
differ by more than `golden.tolerance.<precision>` (absolute) is not used. That catches what
checksums cannot: a backend, driver, TensorRT engine or quantization that computes something
else than the graph means.

The file (numpy `.npz`, compressed):
- `input`: N x C x H x W float16, the tensors as `prepare` makes them (NCHW whatever the
  graph's layout; the runtime transposes for an NHWC graph). float16 keeps the file small;
  the outputs were computed from exactly these values (widened to float32), so nothing is
  lost.
- `output.<name>`: one per scores and mask output of the manifest, N x ... as the graph
  gives it, after the output's `activation` (so a tolerance is in probability units),
  rounded to 3 decimals and kept as float16 (off by 1e-3 at most). Read back as float32;
  a file written with float32 values is read the same way.
  CAM outputs are not kept: their scale is the model's own and heatmaps are normalised for
  display anyway.

The inputs are deterministic (see `golden_pictures`), each fed through the runtime's own
preprocessing.
"""

from __future__ import annotations

import io
import math
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from ruamel.yaml.comments import CommentedMap

from appliance.paths import write_atomically
from appliance.runtime.backends import BackendOptions
from appliance.runtime.engine import Model
from appliance.runtime.errors import PackageError
from appliance.runtime.findings import activate
from appliance.runtime.manifest import MANIFEST_NAME, GoldenTolerance, InputSpec, Manifest
from appliance.runtime.manifest_edit import edit_manifest, plain
from appliance.runtime.package import ModelPackage, load_package, seal_package
from appliance.runtime.preprocess import prepare

FloatArray = npt.NDArray[np.float32]
GOLDEN_NAME = "golden.npz"
INPUT_KEY = "input"
OUTPUT_PREFIX = "output."
SEED = 20240613
# INT8 tolerance written by the tools: at least the default, and at least this many times the
# largest INT8 difference measured on the goldens where they are made (another CPU's integer
# kernels round differently: AVX2 without VNNI, Arm), rounded up to 2 decimals.
INT8_MARGIN = 2.0
OUTPUT_DECIMALS = 3
NO_GOLDENS = "no golden inputs to check"


@dataclass(frozen=True)
class Goldens:
    inputs: FloatArray  # N x C x H x W float32 (stored as float16)
    outputs: Mapping[str, FloatArray]  # output name -> activated values, N x ...


@dataclass(frozen=True)
class GoldenCheck:
    """One package's goldens run on one backend and precision."""

    precision: str
    tolerance: float
    largest: float  # the largest absolute difference over every kept output
    output: str  # the output where it was
    inputs: int
    seconds: float

    @property
    def passed(self) -> bool:
        return self.largest <= self.tolerance

    @property
    def reason(self) -> str:
        """Plain words for a failure ('' when passed)."""
        if self.passed:
            return ""
        largest = "not a number" if math.isnan(self.largest) else f"{self.largest:.3g}"
        return (
            f"self-test failed: output {self.output!r} differs from its golden value by "
            f"{largest}, more than {self.tolerance:g} allowed for {self.precision}"
        )


# --- making them ----------------------------------------------------------------------------


def golden_pictures(manifest: Manifest) -> list[npt.NDArray[np.uint8]]:
    """The three pictures the golden inputs are made from, at the input's size (uint8).

    With a quality profile they are the package's typical image and two seeded variants of it
    (faint coarse texture, a bright blob): inputs like the ones the model was made for, on
    which an INT8 graph keeps close to FP32. Without one: seeded patterns in the display range.
    """
    spec = manifest.input
    rows, columns = spec.height, spec.width
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    rng = np.random.default_rng(SEED)

    def blown_up(small: FloatArray, how: int = cv2.INTER_LINEAR) -> FloatArray:
        return np.asarray(cv2.resize(small, (columns, rows), interpolation=how), np.float32)

    texture = blown_up(rng.normal(size=(8, 8)).astype(np.float32))
    spot = np.exp(-(((x - 0.3 * columns) / (0.08 * columns)) ** 2)) * np.exp(
        -(((y - 0.6 * rows) / (0.08 * rows)) ** 2)
    )
    if manifest.quality is not None:
        typical = blown_up(np.asarray(manifest.quality.reference, dtype=np.float32))
        pictures = [typical, typical + 0.08 * texture, typical + 0.3 * spot]
    else:
        gradient = (x + y) / float(rows + columns - 2)
        coarse = rng.uniform(0.0, 1.0, size=(16, 16)).astype(np.float32)
        pictures = [
            0.7 * gradient + 0.3 * spot,
            0.5 + 0.15 * texture,
            blown_up(coarse, cv2.INTER_NEAREST),
        ]
    grey = [np.round(255.0 * np.clip(p, 0.0, 1.0)).astype(np.uint8) for p in pictures]
    if spec.channels == 3:
        return [np.repeat(p[:, :, np.newaxis], 3, axis=2) for p in grey]
    return grey


def golden_inputs(spec: InputSpec, pictures: list[npt.NDArray[np.uint8]]) -> FloatArray:
    """The pictures prepared as the runtime prepares them, rounded to float16 and widened
    back, so the outputs are computed from exactly what the file stores."""
    batch = np.concatenate([prepare(picture, spec).tensor for picture in pictures])
    return batch.astype(np.float16).astype(np.float32)


def kept_outputs(manifest: Manifest) -> list[str]:
    """The outputs a golden file keeps: every scores and mask output."""
    return [o.name for o in manifest.outputs if o.kind != "cam"]


def run_goldens(model: Model, inputs: FloatArray) -> dict[str, FloatArray]:
    """The kept outputs of `model` for `inputs`, activated as the manifest says."""
    raw = model.run(inputs)
    return {
        name: activate(raw[name], model.manifest.output(name).activation)
        for name in kept_outputs(model.manifest)
    }


def rounded(values: FloatArray) -> FloatArray:
    """Outputs as the file keeps them: 3 decimals as float16 (off by 1e-3 at most, a fifth of
    the FP32 tolerance), so that a mask compresses to a small file."""
    kept = np.round(np.asarray(values, dtype=np.float32), OUTPUT_DECIMALS).astype(np.float16)
    return kept.astype(np.float32)


def make_goldens(package: ModelPackage) -> Goldens:
    """Golden inputs for `package` and the outputs its FP32 graph gives on ONNX Runtime CPU."""
    inputs = golden_inputs(package.manifest.input, golden_pictures(package.manifest))
    options = BackendOptions(backend="cpu", precision="fp32", threads=1)
    with Model.open(package, options) as model:
        outputs = run_goldens(model, inputs)
    return Goldens(inputs, {name: rounded(values) for name, values in outputs.items()})


def encode(goldens: Goldens) -> bytes:
    """The golden file's bytes (compressed .npz)."""
    arrays: dict[str, npt.NDArray[np.generic]] = {INPUT_KEY: goldens.inputs.astype(np.float16)}
    for name, values in goldens.outputs.items():
        arrays[OUTPUT_PREFIX + name] = np.asarray(values, dtype=np.float16)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def write_goldens(folder: Path) -> tuple[ModelPackage, dict[str, float]]:
    """(Re)make the package's golden file, write the manifest's `golden` section and re-seal.

    Tolerances already written are kept; the INT8 one is raised where needed so the package's
    own INT8 file passes here with a margin (`INT8_MARGIN`). Returns the sealed package and
    the largest difference measured per precision other than FP32.
    """
    package = load_package(folder)
    goldens = make_goldens(package)
    measured: dict[str, float] = {}
    if "int8" in package.precisions:
        options = BackendOptions(backend="cpu", precision="int8", threads=1)
        with Model.open(package, options) as model:
            measured["int8"] = largest_difference(goldens, run_goldens(model, goldens.inputs))[0]
    old = package.manifest.golden
    name = old.file if old is not None else GOLDEN_NAME
    tolerance = old.tolerance if old is not None else GoldenTolerance()
    int8 = tolerance.int8
    if "int8" in measured:
        int8 = min(1.0, max(int8, math.ceil(INT8_MARGIN * measured["int8"] * 100) / 100))
    written = {"fp32": tolerance.fp32, "fp16": tolerance.fp16, "int8": int8}
    write_atomically(package.folder / name, encode(goldens), durable=True)

    def change(data: CommentedMap) -> None:
        data["golden"] = plain({"file": name, "tolerance": written})

    edit_manifest(package.folder / MANIFEST_NAME, change)
    return seal_package(package.folder), measured


# --- reading and checking them --------------------------------------------------------------


def read_goldens(package: ModelPackage) -> Goldens | None:
    """The package's goldens, None when it has none; PackageError when the file does not fit
    the manifest (a wrong shape, a missing output, values that are not numbers)."""
    if package.manifest.golden is None:
        return None
    path = package.folder / package.manifest.golden.file
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: np.asarray(data[key]) for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise PackageError(f"{path}: not a readable golden file (.npz): {exc}") from exc
    spec = package.manifest.input
    inputs = arrays.pop(INPUT_KEY, None)
    wanted = (spec.channels, spec.height, spec.width)
    if inputs is None or inputs.ndim != 4 or inputs.shape[1:] != wanted or not len(inputs):
        got = "nothing" if inputs is None else f"shape {inputs.shape}"
        raise PackageError(
            f"{path}: {INPUT_KEY!r} must be N x {' x '.join(map(str, wanted))} "
            f"(the model's input as the runtime prepares it), got {got}"
        )
    outputs: dict[str, FloatArray] = {}
    for name in kept_outputs(package.manifest):
        values = arrays.pop(OUTPUT_PREFIX + name, None)
        if values is None or values.ndim < 1 or values.shape[0] != inputs.shape[0]:
            got = "nothing" if values is None else f"shape {values.shape}"
            raise PackageError(
                f"{path}: '{OUTPUT_PREFIX}{name}' must hold output {name!r} for each of the "
                f"{inputs.shape[0]} input(s), got {got}"
            )
        outputs[name] = values.astype(np.float32)
    if arrays:
        raise PackageError(f"{path}: unknown entries {', '.join(sorted(arrays))}")
    for key, array in [(INPUT_KEY, inputs), *outputs.items()]:
        if not np.all(np.isfinite(array)):
            raise PackageError(f"{path}: {key!r} holds values that are not finite numbers")
    return Goldens(inputs.astype(np.float32), outputs)


def largest_difference(expected: Goldens, actual: Mapping[str, FloatArray]) -> tuple[float, str]:
    """The largest absolute difference over every kept output, and the output it is in (NaN
    counts as the largest of all)."""
    worst, where = 0.0, ""
    for name, values in expected.outputs.items():
        got = np.asarray(actual[name], dtype=np.float32)
        if got.shape != values.shape:
            raise PackageError(
                f"output {name!r} has shape {got.shape} but its golden value {values.shape}"
            )
        difference = np.abs(got - values)
        largest = math.nan if np.isnan(difference).any() else float(difference.max(initial=0.0))
        if math.isnan(largest) or largest > worst or not where:
            worst, where = largest, name
            if math.isnan(largest):
                break
    return worst, where


def check_goldens(model: Model) -> GoldenCheck | None:
    """Run the package's goldens on `model` (its backend and precision); None without any."""
    started = time.perf_counter()
    goldens = read_goldens(model.package)
    if goldens is None or model.manifest.golden is None:
        return None
    largest, output = largest_difference(goldens, run_goldens(model, goldens.inputs))
    precision = model.backend.precision
    tolerance = getattr(model.manifest.golden.tolerance, precision, None)
    if not isinstance(tolerance, float):  # a backend precision the manifest does not know
        tolerance = model.manifest.golden.tolerance.fp32
    return GoldenCheck(
        precision=precision,
        tolerance=tolerance,
        largest=largest,
        output=output,
        inputs=int(goldens.inputs.shape[0]),
        seconds=time.perf_counter() - started,
    )


def verify_goldens(package: ModelPackage, threads: int = 1) -> list[GoldenCheck]:
    """Run the goldens at every precision the package has, on ONNX Runtime's CPU provider;
    PackageError with the reason of the first that fails. No goldens: an empty list."""
    checks: list[GoldenCheck] = []
    for precision in package.precisions:
        options = BackendOptions(backend="cpu", precision=precision, threads=threads)
        with Model.open(package, options) as model:
            check = check_goldens(model)
        if check is None:
            return []
        if not check.passed:
            raise PackageError(f"{package.folder}: {check.reason}")
        checks.append(check)
    return checks
