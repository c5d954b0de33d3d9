"""Static INT8 quantization of a package's FP32 graph, calibrated on a site's own images.

Calibration images go through the runtime's own `prepare`, so the activation ranges are
measured on exactly what inference feeds the model. Every candidate variant (activations
QUInt8/QInt8 x reduce_range yes/no; weights always per-channel QInt8, QDQ format) is measured
against FP32 on the calibration images and the best one is kept (`pick_variant`). The recipes
in models/recipes use `quantize_graph`, `VARIANTS` and `pick_variant` from here, so a site
quantization and the bundled INT8 files are made the same way.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from ruamel.yaml.comments import CommentedMap

from appliance.imaging import DecodeError, decode
from appliance.paths import move_durably, write_atomically
from appliance.runtime.backends import BackendOptions, Outputs, open_backend
from appliance.runtime.engine import model_io
from appliance.runtime.errors import InputError, PackageError
from appliance.runtime.findings import activate
from appliance.runtime.manifest import MANIFEST_NAME, Manifest
from appliance.runtime.manifest_edit import edit_manifest, plain
from appliance.runtime.package import SUMS_NAME, ModelPackage, load_package, seal_package
from appliance.runtime.preprocess import ImageInput, prepare, read_picture, to_layout

FloatArray = npt.NDArray[np.float32]
Activation = Literal["QUInt8", "QInt8"]
INT8_NAME = "model.int8.onnx"
# Op types left in float by default: the final pooling/resize and activations, so scores and
# mask values are not rounded to 8 bits right at the threshold (as the recipes do).
KEEP_FLOAT = ("ReduceMean", "Resize", "Sigmoid", "Softmax")
# Agreement differences smaller than this (0.2 % of decisions) are not told apart.
AGREEMENT_TOLERANCE = 0.002
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"


@dataclass(frozen=True)
class Variant:
    """One way to quantize: the activation type and whether weights use 7 bits."""

    activation: Activation
    reduce_range: bool

    @property
    def slug(self) -> str:
        return f"{self.activation.lower()}-{'rr' if self.reduce_range else 'full'}"

    def describe(self) -> dict[str, Any]:
        return {
            "format": "QDQ",
            "activations": self.activation,
            "weights": "QInt8",
            "per_channel": True,
            "reduce_range": self.reduce_range,
        }


VARIANTS: tuple[Variant, ...] = tuple(
    Variant(a, r) for a in ("QUInt8", "QInt8") for r in (True, False)
)


def pick_variant(measured: Mapping[Variant, tuple[float, float]]) -> Variant:
    """The variant to ship, from (agreement with FP32, quality change) per variant.

    Best agreement wins, but variants within AGREEMENT_TOLERANCE of it count as equal and
    `reduce_range` then goes first: on AVX2 CPUs without VNNI, u8 x s8 products are summed in
    16 bits (`vpmaddubsw`) and 8-bit weights can saturate there; 7-bit weights cannot. Next
    comes higher agreement, then smaller quality change.
    """
    best = max(agreement for agreement, _ in measured.values())
    close = [v for v, (a, _) in measured.items() if a >= best - AGREEMENT_TOLERANCE]
    return min(close, key=lambda v: (not v.reduce_range, -measured[v][0], measured[v][1]))


def candidate_variants(activation: str = "auto", reduce_range: str = "auto") -> list[Variant]:
    """The variants the CLI's --variant quint8|qint8|auto and --reduce-range yes|no|auto allow."""
    wanted = {"auto": ("QUInt8", "QInt8"), "quint8": ("QUInt8",), "qint8": ("QInt8",)}
    ranges = {"auto": (True, False), "yes": (True,), "no": (False,)}
    if activation not in wanted or reduce_range not in ranges:
        raise ValueError(f"unknown variant {activation!r} / reduce range {reduce_range!r}")
    return [
        v
        for v in VARIANTS
        if v.activation in wanted[activation] and v.reduce_range in ranges[reduce_range]
    ]


# --- the graph -----------------------------------------------------------------------------


def quantize_graph(
    fp32: Path,
    out: Path,
    variant: Variant,
    calibration: FloatArray,
    keep_float: Sequence[str] = KEEP_FLOAT,
    batch: int = 16,
) -> None:
    """Static INT8 QDQ quantization of `fp32` into `out`: per-channel weights, MinMax ranges
    from `calibration` (N x C x H x W prepared inputs). Nodes of the op types in `keep_float`
    stay in float."""
    import onnx
    from onnxruntime.quantization import (  # type: ignore[import-untyped]
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import (  # type: ignore[import-untyped]
        quant_pre_process,
    )

    prepared = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    try:
        graph = onnx.load(str(prepared)).graph
        name = graph.input[0].name
        exclude = [node.name for node in graph.node if node.op_type in keep_float]
        quantize_static(
            str(prepared),
            str(out),
            _reader(name, calibration, batch),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=variant.reduce_range,
            activation_type=getattr(QuantType, variant.activation),
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
        )
    finally:
        prepared.unlink(missing_ok=True)


def _reader(name: str, inputs: FloatArray, batch: int) -> Any:
    """A CalibrationDataReader over `inputs` in batches (built here: onnxruntime is untyped)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Calibration(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches: Iterator[dict[str, FloatArray]] = iter(
                {name: np.ascontiguousarray(inputs[i : i + batch], dtype=np.float32)}
                for i in range(0, len(inputs), batch)
            )

        def get_next(self) -> dict[str, FloatArray] | None:
            return next(self._batches, None)

    return _Calibration()


# --- images ----------------------------------------------------------------------------------


def list_images(folder: Path) -> list[Path]:
    """Plain files directly in `folder` (hidden files and CSVs skipped), sorted by name."""
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() != ".csv"
    )


def read_image(path: Path, first_frame_only: bool = True) -> ImageInput:
    """A DICOM, PNG or JPEG file as the runtime reads it; the kind comes from the first bytes."""
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    if head.startswith(_PNG) or head.startswith(_JPEG):
        try:
            return read_picture(path)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from exc
    try:
        return decode(path, index=0 if first_frame_only else None)
    except DecodeError as exc:
        raise InputError(f"{path}: not a readable DICOM, PNG or JPEG image: {exc}") from exc


def calibration_inputs(
    paths: Sequence[Path], manifest: Manifest, max_images: int | None = None
) -> tuple[FloatArray, list[str]]:
    """Prepared tensors of the readable images in `paths` and a warning per skipped file."""
    tensors: list[FloatArray] = []
    warnings: list[str] = []
    first_only = manifest.input.frames == "first"
    for number, path in enumerate(paths, start=1):
        if max_images is not None and len(tensors) >= max_images:
            break
        if number % 25 == 0 or number == len(paths):
            progress(f"reading calibration image {number}/{len(paths)}")
        try:
            tensors.append(prepare(read_image(path, first_only), manifest.input).tensor)
        except (InputError, DecodeError, ValueError) as exc:
            warnings.append(f"skipped {path.name}: {exc}")
    progress_done()
    if not tensors:
        return np.zeros((0,), dtype=np.float32), warnings
    batch = np.concatenate(tensors)
    if max_images is not None:
        batch = batch[:max_images]
    return to_layout(batch, manifest.input.layout), warnings  # as the graph takes it


# --- agreement -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Agreement:
    """How an INT8 graph's outputs compare with FP32's on the calibration images.

    `decisions`: share of (image, label) decisions at the manifest thresholds that match, over
    scores outputs; `pixels`: share of mask pixels on the same side of the mask threshold;
    `max_difference`: largest absolute difference of activated scores/mask values.
    """

    decisions: float | None
    pixels: float | None
    max_difference: float

    @property
    def overall(self) -> float:
        """The worst of the agreements measured: what the choice is made on."""
        shares = [s for s in (self.decisions, self.pixels) if s is not None]
        return min(shares) if shares else 1.0


def agreement(manifest: Manifest, fp32: Outputs, int8: Outputs) -> Agreement:
    """Agreement of `int8` with `fp32` raw outputs under the manifest's thresholds."""
    decided: list[FloatArray] = []
    pixels: list[FloatArray] = []
    difference = 0.0
    for output in manifest.outputs:
        if output.kind == "cam":
            continue
        a = activate(fp32[output.name], output.activation)
        b = activate(int8[output.name], output.activation)
        positions = [position for position, _ in output.finding_labels]
        a, b = a[:, positions], b[:, positions]  # a negative label is never decided on
        difference = max(difference, float(np.max(np.abs(a - b))) if a.size else 0.0)
        shape = (1, -1) + (1,) * (a.ndim - 2)
        thresholds = np.array(
            [output.label_threshold(label) for _, label in output.finding_labels],
            dtype=np.float32,
        ).reshape(shape)
        same = ((a >= thresholds) == (b >= thresholds)).astype(np.float32).ravel()
        (decided if output.kind == "scores" else pixels).append(same)
    return Agreement(
        decisions=float(np.concatenate(decided).mean()) if decided else None,
        pixels=float(np.concatenate(pixels).mean()) if pixels else None,
        max_difference=difference,
    )


def run_graph(package: ModelPackage, path: Path, inputs: FloatArray, threads: int) -> Outputs:
    """Raw outputs of the graph at `path` on `inputs`, through the runtime's CPU backend."""
    io = dataclasses.replace(model_io(package, "fp32"), label=f"{package.name} ({path.name})")
    backend = open_backend(path, io, BackendOptions(backend="cpu", threads=threads))
    try:
        return backend.run(inputs)
    finally:
        backend.close()


# --- the whole step ------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizeResult:
    """What `quantize_package` did: every variant's agreement and the one kept."""

    package: ModelPackage
    images: int
    warnings: tuple[str, ...]
    measured: Mapping[Variant, Agreement]
    chosen: Variant


def quantize_package(
    folder: Path,
    calibration_dir: Path,
    *,
    max_images: int | None = None,
    variants: Sequence[Variant] = VARIANTS,
    threads: int = 1,
    keep_float: Sequence[str] = KEEP_FLOAT,
) -> QuantizeResult:
    """Quantize the package in `folder`, keep the best variant as its INT8 file and re-seal.

    Refuses (PackageError/InputError) before writing anything when the package does not verify
    or no calibration image is usable.
    """
    if max_images is not None and max_images < 1:
        raise InputError(f"--max-images must be 1 or more, got {max_images}")
    package = load_package(folder)
    paths = list_images(calibration_dir)
    if not paths:
        raise InputError(f"{calibration_dir}: no calibration images (DICOM, PNG or JPEG) in it")
    inputs, warnings = calibration_inputs(paths, package.manifest, max_images)
    if len(inputs) == 0:
        raise InputError(
            f"{calibration_dir}: none of its {len(paths)} file(s) is a usable image "
            f"(first problem: {warnings[0]})"
        )
    work = Path(folder) / ".quantize-partial"  # hidden: `find_packages` and sums ignore it
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        measured = _measure(package, inputs, variants, work, threads, keep_float)
        chosen = pick_variant({v: (a.overall, a.max_difference) for v, a in measured.items()})
        sealed = _install(package, work / f"{chosen.slug}.onnx", chosen, measured[chosen], inputs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return QuantizeResult(sealed, len(inputs), tuple(warnings), measured, chosen)


def _measure(
    package: ModelPackage,
    inputs: FloatArray,
    variants: Sequence[Variant],
    work: Path,
    threads: int,
    keep_float: Sequence[str],
) -> dict[Variant, Agreement]:
    progress(f"running FP32 on {len(inputs)} calibration input(s)")
    reference = run_graph(package, package.model_file("fp32"), inputs, threads)
    measured: dict[Variant, Agreement] = {}
    for number, variant in enumerate(variants, start=1):
        progress(f"quantizing and measuring variant {number}/{len(variants)}: {variant.slug}")
        path = work / f"{variant.slug}.onnx"
        batch = 16 if package.manifest.input.batch == "dynamic" else 1  # a fixed-batch graph
        quantize_graph(package.model_file("fp32"), path, variant, inputs, keep_float, batch)
        outputs = run_graph(package, path, inputs, threads)
        measured[variant] = agreement(package.manifest, reference, outputs)
    progress_done()
    return measured


def _install(
    package: ModelPackage, path: Path, variant: Variant, measured: Agreement, inputs: FloatArray
) -> ModelPackage:
    """Move the chosen graph into the package, name it in the manifest and re-seal."""
    from appliance.runtime.graph import check_graph

    check_graph(path, package.manifest)
    name = int8_name(package.manifest.files.fp32, package.manifest.files.int8)
    notes = {**variant.describe(), "calibration": f"{len(inputs)} site images, MinMax"}
    notes["decision_agreement"] = measured.decisions
    notes["pixel_agreement"] = measured.pixels
    notes["max_score_difference"] = round(measured.max_difference, 6)
    with _restored_on_failure(package.folder, name):
        move_durably(path, package.folder / name)
        update_manifest(package.folder / MANIFEST_NAME, name, notes)
        return seal_package(package.folder)


def int8_name(fp32: str, int8: str | None) -> str:
    """The INT8 file's name: the manifest's, else model.int8.onnx, never the FP32 file's."""
    if int8 and int8 != fp32:
        return int8
    if fp32 != INT8_NAME:
        return INT8_NAME
    return f"{Path(fp32).stem}.q8.onnx"


@contextmanager
def _restored_on_failure(folder: Path, int8: str) -> Iterator[None]:
    """Put the INT8 file, the manifest and SHA256SUMS back as they were if the block fails,
    so that a failed quantize leaves the package as valid as it found it."""
    names = (int8, MANIFEST_NAME, SUMS_NAME)
    saved = {n: (folder / n).read_bytes() for n in names if (folder / n).is_file()}
    try:
        yield
    except BaseException:
        for n in names:
            if n in saved:
                write_atomically(folder / n, saved[n], durable=True)
            else:
                (folder / n).unlink(missing_ok=True)
        raise


STALE_NOTE = "INT8 figures of the previous INT8 file removed: run `appliance model validate`"


def update_manifest(path: Path, int8_name: str, int8_notes: Mapping[str, Any]) -> None:
    """Set files.int8 and (when the manifest has a validation section) validation.int8,
    keeping every other field, its order and the admin's comments; written atomically.

    Figures measured on the previous INT8 file (per-label `*_int8` and `int8_agreement`, the
    INT8 latency) are removed rather than left to describe a file that is gone.
    """

    def change(data: CommentedMap) -> None:
        files = data.get("files")
        if not isinstance(files, dict):
            raise PackageError(f"{path}: no files mapping to name the INT8 graph in")
        files["int8"] = int8_name
        validation = data.get("validation")
        if isinstance(validation, dict):
            notes = {k: v for k, v in int8_notes.items() if v is not None}
            if drop_int8_figures(validation):
                notes["note"] = STALE_NOTE
            validation["int8"] = plain(notes)

    edit_manifest(path, change)


def drop_int8_figures(validation: dict[str, Any]) -> bool:
    """Remove the INT8 figures from a manifest's validation section; True if there were any."""
    dropped = False
    metrics = validation.get("metrics")
    labels = metrics.values() if isinstance(metrics, dict) else ()
    for figures in labels:
        if isinstance(figures, dict):
            stale = [k for k in figures if k.endswith("_int8") or k == "int8_agreement"]
            for key in stale:
                del figures[key]
            dropped = dropped or bool(stale)
    latency = validation.get("latency_ms")
    if isinstance(latency, dict) and "int8" in latency:
        del latency["int8"]
        dropped = True
    return dropped


def format_table(result: QuantizeResult) -> str:
    """The variants, their agreement with FP32 and the choice, as a plain-text table."""
    lines = [f"{'variant':<12} {'decisions':>10} {'pixels':>10} {'max |diff|':>11}"]
    for variant, measured in result.measured.items():
        mark = "  <- chosen" if variant == result.chosen else ""
        lines.append(
            f"{variant.slug:<12} {_share(measured.decisions):>10} {_share(measured.pixels):>10} "
            f"{measured.max_difference:>11.4f}{mark}"
        )
    chosen = result.chosen
    lines.append(
        f"chosen: {chosen.slug} (activations {chosen.activation}, weights QInt8 per channel, "
        f"reduce_range {'yes' if chosen.reduce_range else 'no'}), calibrated on "
        f"{result.images} input(s)"
    )
    return "\n".join(lines)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def progress(message: str) -> None:
    """One overwritten status line on stderr for long steps (a plain line when not a tty)."""
    if sys.stderr.isatty():
        print(f"\r\033[K{message}", end="", file=sys.stderr, flush=True)
    else:
        print(message, file=sys.stderr, flush=True)


def progress_done() -> None:
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr, flush=True)
