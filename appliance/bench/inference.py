"""`appliance bench inference`: FP32 and INT8 side by side on ONNX Runtime, and where time goes.

Every bundled model package and a reference-size classifier (ResNet-50's shape at 224 px with
random weights, see `bench.reference_net`) run FP32 and INT8 in the same process: latency
p50/p95 at batch 1 and the best throughput over the batch sizes asked for, with the INT8/FP32
ratios. For the demo models the end-to-end split follows: decode (DICOM -> pixels), preprocess
(pixels -> tensor), model, postprocess (outputs -> findings) as the engine times them, and the
explanation (heatmap or mask overlay, PNG) apart; pre+post is shown as a share of the model's
own time (target: under 50%). GPU rows need TensorRT or ONNX Runtime's GPU providers.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from appliance.bench.harness.command import Bench
from appliance.bench.harness.command import progress as progress_line
from appliance.bench.harness.options import OptionRow, check_options, number_list
from appliance.bench.harness.tables import percentile
from appliance.bench.reference_net import reference_files
from appliance.runtime.backends import BackendOptions, Precision

MODELS = Path(__file__).resolve().parents[2] / "models"
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8")
NAME = "inference"
TARGET_SHARE = 50.0  # pre+post as % of the model's time
Runner = Callable[[npt.NDArray[np.float32]], object]


@dataclass(frozen=True)
class InferenceOptions:
    repeat: int = 50
    threads: int = 1
    batches: tuple[int, ...] = (1, 2, 4, 8)
    skip_reference: bool = False
    cr_rows: int = 2048
    models: Path = MODELS

    def __post_init__(self) -> None:
        check_options(
            (self.repeat >= 2, f"--repeat must be at least 2, got {self.repeat}"),
            (self.threads >= 0, f"--threads must be >= 0 (0: all cores), got {self.threads}"),
            (bool(self.batches) and min(self.batches) >= 1, "--batches: every batch >= 1"),
            (
                256 <= self.cr_rows <= 4096,
                f"--cr-rows must be within 256..4096, got {self.cr_rows}",
            ),
        )


@dataclass(frozen=True)
class Speed:
    """One model at one precision on one backend."""

    model: str
    precision: str
    p50_ms: float
    p95_ms: float
    best_batch: int
    images_per_s: float


@dataclass(frozen=True)
class Split:
    """Median milliseconds per stage of one image through a demo model (FP32)."""

    model: str
    image: str
    decode_ms: float
    preprocess_ms: float
    model_ms: float
    postprocess_ms: float
    explain_ms: float

    @property
    def share(self) -> float:
        """Preprocess + postprocess as % of the model's own time."""
        return 100.0 * (self.preprocess_ms + self.postprocess_ms) / self.model_ms


@dataclass(frozen=True)
class InferenceReport:
    options: InferenceOptions
    speeds: tuple[Speed, ...]
    splits: tuple[Split, ...]
    gpu_note: str


def _batches(text: str) -> tuple[int, ...]:
    return number_list(text, "batch size")


# flag, InferenceOptions field, type, metavar, help
_OPTIONS: tuple[OptionRow, ...] = (
    ("--repeat", "repeat", int, "N", "timed runs per measurement"),
    ("--threads", "threads", int, "T", "ONNX Runtime intra-op threads, 0: all cores"),
    ("--batches", "batches", _batches, "N,N...", "batch sizes for throughput"),
    ("--cr-rows", "cr_rows", int, "N", "rows of the chest split's CR image"),
)


def _add_skip_reference(parser: argparse.ArgumentParser, defaults: InferenceOptions) -> None:
    reference = "leave out the ResNet-50-sized reference network"
    parser.add_argument("--skip-reference", action="store_true", help=reference)


def _measure(options: InferenceOptions, folder: Path) -> InferenceReport:
    """Every package at both precisions, the reference network, then the demo splits (their
    files written in `folder`)."""
    from appliance.runtime.package import load_package

    packages = [load_package(p.parent) for p in sorted(options.models.glob("*/manifest.yaml"))]
    speeds: list[Speed] = []
    for package in packages:
        for precision in PRECISIONS:
            progress(f"{package.name} {precision}")
            speeds.append(package_speed(package, precision, options))
    if not options.skip_reference:
        speeds += reference_speeds(options)
    splits = tuple(demo_splits(packages, folder, options))
    return InferenceReport(options, tuple(speeds), splits, gpu_note())


def package_speed(package: Any, precision: Precision, options: InferenceOptions) -> Speed:
    from appliance.runtime.engine import Model

    backend = BackendOptions(
        precision=precision, threads=options.threads, max_batch=max(options.batches)
    )
    with Model.open(package, backend) as model:
        spec = model.manifest.input
        shape = (spec.channels, spec.height, spec.width)
        return measure(package.name, precision, model.run, shape, options)


def reference_speeds(options: InferenceOptions) -> list[Speed]:
    from appliance.bench.reference_net import INPUT, SIZE

    ort = importlib.import_module("onnxruntime")

    progress("reference network: building / loading the cached FP32 and INT8 files")
    files = reference_files()
    settings = ort.SessionOptions()
    settings.intra_op_num_threads = options.threads
    speeds = []
    for precision, path in zip(PRECISIONS, (files.fp32, files.int8), strict=True):
        progress(f"resnet50-shaped reference {precision}")
        session = ort.InferenceSession(
            str(path), sess_options=settings, providers=["CPUExecutionProvider"]
        )

        def run(batch: npt.NDArray[np.float32], session: Any = session) -> object:
            return session.run(None, {INPUT: batch})

        speeds.append(measure("resnet50-ref (224)", precision, run, (3, SIZE, SIZE), options))
    return speeds


def measure(
    name: str,
    precision: str,
    run: Runner,
    shape: tuple[int, int, int],
    options: InferenceOptions,
) -> Speed:
    """Latency at batch 1 and the best throughput over `options.batches`."""
    rng = np.random.default_rng(0)
    single = timings(run, rng.standard_normal((1, *shape), dtype=np.float32), options.repeat)
    best_batch, best_rate = 1, 1000.0 / statistics.median(single)
    for size in sorted(set(options.batches) - {1}):
        batch = rng.standard_normal((size, *shape), dtype=np.float32)
        rate = 1000.0 * size / statistics.median(timings(run, batch, _batch_repeat(size, options)))
        if rate > best_rate:
            best_batch, best_rate = size, rate
    p50, p95 = percentile(single, 50), percentile(single, 95)
    return Speed(name, precision, p50, p95, best_batch, best_rate)


def _batch_repeat(size: int, options: InferenceOptions) -> int:
    return max(2, options.repeat // size)


def timings(run: Runner, batch: npt.NDArray[np.float32], repeat: int) -> list[float]:
    """Milliseconds of `repeat` calls, after one untimed warm-up call."""
    run(batch)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run(batch)
        times.append((time.perf_counter() - started) * 1000.0)
    return times


# --- end-to-end split ---------------------------------------------------------------------


def demo_splits(packages: Sequence[Any], folder: Path, options: InferenceOptions) -> list[Split]:
    """The split for each demo model that has a generator for its inputs."""
    makers = {"demo-chest-xray": _chest_file, "demo-ultrasound-fluid": _ultrasound_file}
    splits = []
    for package in packages:
        maker = makers.get(package.name)
        if maker is None:
            continue
        progress(f"{package.name}: end-to-end split")
        path, label = maker(folder, options)
        splits.append(split(package, path, label, options))
    return splits


def _chest_file(folder: Path, options: InferenceOptions) -> tuple[Path, str]:
    from appliance.phantoms.chest import chest_dataset, make_chest

    phantom = make_chest(7, rows=options.cr_rows)
    path = folder / "chest.dcm"
    chest_dataset(phantom, modality="CR").save_as(path, enforce_file_format=True)
    return path, f"CR {phantom.rows}x{phantom.columns}"


def _ultrasound_file(folder: Path, options: InferenceOptions) -> tuple[Path, str]:
    from appliance.phantoms.ultrasound import make_ultrasound, ultrasound_dataset

    phantom = make_ultrasound(7, fluid=True)
    path = folder / "us.dcm"
    ultrasound_dataset(phantom).save_as(path, enforce_file_format=True)
    rows, columns = phantom.pixels.shape[:2]
    return path, f"US {columns}x{rows}"


def split(package: Any, path: Path, label: str, options: InferenceOptions) -> Split:
    """Median stage times of `options.repeat` passes of the image at `path` (FP32, CPU)."""
    from appliance.imaging import decode
    from appliance.runtime.engine import Model

    stages: dict[str, list[float]] = {k: [] for k in ("decode", "pre", "model", "post", "explain")}
    with Model.open(package, BackendOptions(threads=options.threads)) as model:
        for _ in range(options.repeat + 1):  # the first pass warms caches and is dropped
            started = time.perf_counter()
            image = decode(path, index=0)
            stages["decode"].append((time.perf_counter() - started) * 1000.0)
            result = model.infer([image])[0]
            stages["pre"].append(result.timing.preprocess_ms)
            stages["model"].append(result.timing.model_ms)
            stages["post"].append(result.timing.postprocess_ms)
            started = time.perf_counter()
            explain_and_overlay(model, result)
            stages["explain"].append((time.perf_counter() - started) * 1000.0)
    m = {k: statistics.median(v[1:]) for k, v in stages.items()}
    return Split(package.name, label, m["decode"], m["pre"], m["model"], m["post"], m["explain"])


def explain_and_overlay(model: Any, result: Any) -> int:
    """What the viewer shows: heatmaps over the image (classifiers) or mask outlines, as PNG."""
    from appliance.explain import explain, mask_overlay_png, overlay_png

    if result.masks:
        return len(mask_overlay_png(result.display, [m.mask for m in result.masks]))
    heatmaps = explain(model, result, which="all")
    return sum(len(overlay_png(result.display, h.values)) for h in heatmaps[:1])


# --- GPU ----------------------------------------------------------------------------------


def gpu_note() -> str:
    """Why there are no GPU rows: this bench measures them only where a GPU runtime exists."""
    providers: list[str] = []
    try:
        ort = importlib.import_module("onnxruntime")
        providers = list(ort.get_available_providers())
    except ImportError:
        pass
    gpu = [p for p in providers if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")]
    has_trt = importlib.util.find_spec("tensorrt") is not None
    if not gpu and not has_trt:
        return (
            "GPU rows (TensorRT, CUDA): not measured - neither `tensorrt` nor ONNX Runtime's "
            "CUDA/TensorRT providers are installed here; GPU rows need a GPU machine."
        )
    found = ", ".join(gpu + (["tensorrt"] if has_trt else []))
    return (
        f"GPU rows: {found} installed, but this bench measures ONNX Runtime CPU only; "
        "run `appliance infer --backend tensorrt` timings on the GPU machine."
    )


# --- report -------------------------------------------------------------------------------


def format_report(report: InferenceReport) -> str:
    o = report.options
    batches = ",".join(map(str, o.batches))
    lines = [
        f"bench inference: ONNX Runtime CPU, {o.threads or 'default'} intra-op thread(s), "
        f"{o.repeat} runs per figure; throughput = best of batches {batches}",
        "",
        f"{'model':<24}{'prec':<6}{'p50 ms':>9}{'p95 ms':>9}{'batch':>7}{'img/s':>9}",
    ]
    by_model: dict[str, dict[str, Speed]] = {}
    for s in report.speeds:
        by_model.setdefault(s.model, {})[s.precision] = s
        lines.append(
            f"{s.model:<24}{s.precision:<6}{s.p50_ms:>9.2f}{s.p95_ms:>9.2f}"
            f"{s.best_batch:>7}{s.images_per_s:>9.0f}"
        )
    lines += ["", "INT8 / FP32 (latency p50: below 1 is faster; throughput: above 1 is faster)"]
    for name, rows in by_model.items():
        if "fp32" in rows and "int8" in rows:
            lat = rows["int8"].p50_ms / rows["fp32"].p50_ms
            thr = rows["int8"].images_per_s / rows["fp32"].images_per_s
            lines.append(f"  {name:<24} latency x{lat:.2f}   throughput x{thr:.2f}")
    lines += ["", *format_splits(report.splits), *beside_reference(report), ""]
    lines += [report.gpu_note, ""]
    return "\n".join(lines)


def format_splits(splits: Sequence[Split]) -> list[str]:
    if not splits:
        return ["end-to-end split: no demo model found"]
    lines = [
        "end-to-end, one image, FP32, median ms (pre/post as the engine times them)",
        f"{'model':<24}{'image':<16}{'decode':>8}{'pre':>8}{'model':>8}{'post':>8}"
        f"{'explain':>9}{'(pre+post)/model':>18}",
    ]
    for s in splits:
        lines.append(
            f"{s.model:<24}{s.image:<16}{s.decode_ms:>8.2f}{s.preprocess_ms:>8.2f}"
            f"{s.model_ms:>8.2f}{s.postprocess_ms:>8.2f}{s.explain_ms:>9.2f}{s.share:>17.0f}%"
        )
    for s in splits:
        verdict = "met" if s.share < TARGET_SHARE else "NOT met"
        lines.append(
            f"  {s.model}: pre+post is {s.share:.1f}% of the model's time - target "
            f"<{TARGET_SHARE:.0f}% {verdict}"
        )
    note = "decode and explain are outside the target; explain = heatmap or mask overlay as PNG"
    lines.append(f"  ({note})")
    return lines


def beside_reference(report: InferenceReport) -> list[str]:
    """The same pre+post against the reference-size classifier's own time: the demo models are
    far smaller than a model a site would bring, so their ratio says little about a real one."""
    reference = {s.precision: s for s in report.speeds if s.model.startswith("resnet50-ref")}
    if not reference or not report.splits:
        return []
    lines = ["  beside the reference-size classifier (its batch-1 p50), same pre+post:"]
    for s in report.splits:
        parts = [
            f"{100.0 * (s.preprocess_ms + s.postprocess_ms) / speed.p50_ms:.0f}% of its {name}"
            for name, speed in sorted(reference.items())
        ]
        lines.append(f"    {s.model} ({s.image}): {', '.join(parts)}")
    return lines


def progress(message: str) -> None:
    progress_line(NAME, message)


INFERENCE = Bench(
    NAME,
    "model latency and throughput, FP32 vs INT8, and the end-to-end split",
    __doc__,
    InferenceOptions,
    _OPTIONS,
    _measure,
    format_report,
    more_options=_add_skip_reference,
    more_fields=("skip_reference",),
)
add_parser = INFERENCE.add_parser
run_inference = INFERENCE.run
