"""What both recipes share: phantom data sets, ONNX checks, INT8 quantization, evaluation,
latency and package writing. Torch-free: the training scripts bring torch (and `training`,
what they share that needs it), this does not.

Data sets are drawn from `appliance.phantoms` and fed through `appliance.phantoms.preprocess`,
the reference of what the runtime does per manifest, so the model sees exactly what the box
will give it. They are cached under the work folder, keyed by the seeds and by a hash of the
generator sources: a changed generator never reuses stale images.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import onnx
import onnxruntime as ort
import yaml

import appliance.phantoms as phantoms
import appliance.runtime.quantize as runtime_quantize
from appliance.runtime.golden import write_goldens
from appliance.runtime.precision import read_cpu_flags

REPO = Path(__file__).resolve().parents[2]
OPSET = 17
SIZE = 256  # the models' input is 1 x SIZE x SIZE
FP32_NAME, INT8_NAME = "model.onnx", "model.int8.onnx"
CAUTION = "Demo model trained on synthetic images only. Not for clinical use."

# Seed ranges: disjoint by construction; the package tests use 900000 and up.
TRAIN_SEEDS = 0
CALIBRATION_SEEDS = 50_000
VALIDATION_SEEDS = 100_000
TEST_SEEDS = 200_000
SPLITS = {
    "train": TRAIN_SEEDS,
    "calibration": CALIBRATION_SEEDS,
    "validation": VALIDATION_SEEDS,
    "test": TEST_SEEDS,
}


def parse_arguments(
    doc: str | None, package: str, batch: int, counts: Sequence[int]
) -> tuple[argparse.Namespace, dict[str, int]]:
    """The options both recipes take, and the images per split they ask for."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/appliance-recipes"))
    parser.add_argument("--out", type=Path, default=REPO / "models" / package)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument(
        "--counts",
        type=int,
        nargs=4,
        metavar=("TRAIN", "CAL", "VAL", "TEST"),
        default=list(counts),
        help="images per split (smaller for a quick dry run)",
    )
    args = parser.parse_args()
    return args, dict(zip(SPLITS, args.counts, strict=True))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def generator_hash(module: str) -> str:
    """Hash of the code that makes a data set: part of its cache key.

    Syntax trees, not bytes, so reformatting or a comment does not discard hours of images.
    """
    digest = hashlib.sha256()
    paths = [REPO / "appliance" / "phantoms" / f"{m}.py" for m in (module, "_draw", "preprocess")]
    paths += sorted((REPO / "appliance" / "imaging").glob("*.py"))
    for path in paths:
        digest.update(ast.dump(ast.parse(path.read_text(encoding="utf-8"))).encode())
    return digest.hexdigest()[:16]


def cached(
    work: Path,
    name: str,
    module: str,
    seeds: Sequence[int],
    build: Callable[[Sequence[int]], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """`build(seeds)` once per (name, seeds, generator code); kept as an .npz under `work`."""
    code = generator_hash(module)
    key = hashlib.sha256(f"{name}/{list(seeds)}/{code}".encode()).hexdigest()[:16]
    path = work / f"{name}-{key}.npz"
    if path.exists():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    started = time.perf_counter()
    arrays = build(seeds)
    work.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    log(f"built {name}: {len(seeds)} images in {time.perf_counter() - started:.0f} s")
    return arrays


def draw_sets(
    work: Path,
    prefix: str,
    module: str,
    counts: dict[str, int],
    build: Callable[[Sequence[int]], dict[str, np.ndarray]],
) -> dict[str, dict[str, np.ndarray]]:
    """Every split, `counts[split]` images from its first seed on, cached (see `cached`)."""
    return {
        name: cached(work, f"{prefix}-{name}", module, range(start, start + counts[name]), build)
        for name, start in SPLITS.items()
    }


# --- metrics -----------------------------------------------------------------------------


def auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged)."""
    truth = truth.astype(bool)
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[truth].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def youden_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    """The operating point that maximises sensitivity + specificity on a validation split."""
    truth = truth.astype(bool)
    candidates = np.unique(np.round(scores, 4))
    best, best_j = 0.5, -1.0
    for threshold in candidates:
        decided = scores >= threshold
        j = decided[truth].mean() + (~decided[~truth]).mean() - 1
        if j > best_j:
            best, best_j = float(threshold), float(j)
    return best


def sensitivity_specificity(
    scores: np.ndarray, truth: np.ndarray, threshold: float
) -> tuple[float, float]:
    truth = truth.astype(bool)
    decided = scores >= threshold
    return float(decided[truth].mean()), float((~decided[~truth]).mean())


def rounded(value: float, places: int = 4) -> float:
    return float(round(float(value), places))


# --- ONNX Runtime ------------------------------------------------------------------------


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_batches(
    sess: ort.InferenceSession, inputs: np.ndarray, batch: int = 32
) -> list[np.ndarray]:
    """All outputs of `sess` over `inputs` (N x C x H x W), concatenated per output."""
    name = sess.get_inputs()[0].name
    parts: list[list[np.ndarray]] = []
    for start in range(0, len(inputs), batch):
        chunk = np.ascontiguousarray(inputs[start : start + batch], dtype=np.float32)
        outputs = sess.run(None, {name: chunk})
        if not parts:
            parts = [[] for _ in outputs]
        for bucket, out in zip(parts, outputs, strict=True):
            bucket.append(out)
    return [np.concatenate(bucket) for bucket in parts]


def latency_ms(path: Path, sample: np.ndarray, threads: int, runs: int = 60) -> float:
    """Median wall time of one batch-1 inference after warm-up."""
    sess = session(path, threads)
    name = sess.get_inputs()[0].name
    feed = {name: np.ascontiguousarray(sample[:1], dtype=np.float32)}
    for _ in range(10):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - started) * 1000)
    return rounded(statistics.median(times), 2)


def latency(fp32: Path, int8: Path, sample: np.ndarray) -> dict[str, Any]:
    """Both files' batch-1 latency on one thread, and on what CPU: the manifests' figures."""
    return {
        "cpu": cpu_name(),
        "threads": 1,
        "batch": 1,
        "fp32": latency_ms(fp32, sample, 1),
        "int8": latency_ms(int8, sample, 1),
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                flags = read_cpu_flags()
                vnni = "VNNI" if "avx512_vnni" in flags or "avx_vnni" in flags else "no VNNI"
                return f"{line.split(':', 1)[1].strip()} ({vnni})"
    except OSError:
        pass
    return "unknown CPU"


# --- quantization ------------------------------------------------------------------------


# The appliance's own quantization (`appliance model quantize`) is the one used here, so the
# bundled INT8 files and a site's re-quantization are made the same way.
AGREEMENT_TOLERANCE = runtime_quantize.AGREEMENT_TOLERANCE
Variant: TypeAlias = runtime_quantize.Variant
VARIANTS = runtime_quantize.VARIANTS
pick_variant = runtime_quantize.pick_variant


def quantize(
    fp32: Path, out: Path, variant: Variant, calibration: np.ndarray, keep_float: Sequence[str]
) -> None:
    """Static INT8 QDQ quantization, per-channel weights, MinMax calibration on phantoms.

    Nodes of the op types in `keep_float` (the final pooling/resize and activations) stay in
    float, so probabilities and mask values are not rounded to 8 bits at the threshold.
    """
    runtime_quantize.quantize_graph(fp32, out, variant, calibration, keep_float=keep_float)


# What one variant's validation outputs come to: its figures for the report, (agreement,
# quality change) for `pick_variant`, and a note for the log.
Judged = tuple[dict[str, Any], tuple[float, float], str]


def choose_variant(
    work: Path,
    prefix: str,
    fp32: Path,
    calibration: np.ndarray,
    validation: np.ndarray,
    keep_float: Sequence[str],
    judge: Callable[[np.ndarray], Judged],
) -> tuple[Variant, dict[str, Any]]:
    """Quantize every variant (as `work/PREFIX-SLUG.onnx`), judge its first output on the
    validation images against FP32; the choice itself is `pick_variant`'s (agreement first,
    then reduce_range). The chosen variant and every variant's figures by slug."""
    scores: dict[str, Any] = {}
    measured: dict[Variant, tuple[float, float]] = {}
    for variant in VARIANTS:
        path = work / f"{prefix}-{variant.slug}.onnx"
        quantize(fp32, path, variant, calibration, keep_float=keep_float)
        figures, measured[variant], note = judge(run_batches(session(path), validation)[0])
        scores[variant.slug] = figures
        log(f"variant {variant.slug}: {note}")
    return pick_variant(measured), scores


def check_graph(path: Path, input_name: str, outputs: Sequence[str]) -> None:
    """The exported graph has the names and opset the manifest promises."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == OPSET, f"{path.name}: opset {opset}, expected {OPSET}"
    assert [i.name for i in model.graph.input] == [input_name], model.graph.input
    assert [o.name for o in model.graph.output] == list(outputs), model.graph.output


# --- packages ----------------------------------------------------------------------------


def write_package(folder: Path, manifest: dict[str, Any]) -> None:
    """manifest.yaml, then SHA256SUMS over it and every file it names."""
    folder.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True, width=100)
    (folder / "manifest.yaml").write_text(text, encoding="utf-8")
    names = ["manifest.yaml", *manifest["files"].values()]
    lines = [f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}" for n in names]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n", encoding="ascii")


def demo_manifest(
    *,
    name: str,
    task: str,
    title: str,
    intended_use: str,
    applies_to: dict[str, Any],
    crop_to_ultrasound_region: bool,
    outputs: list[dict[str, Any]],
    explanation: str,
    validation: dict[str, Any],
) -> dict[str, Any]:
    """A demo package's manifest: what is the same for every demo model (format, version,
    the caution, the input as `appliance.phantoms.preprocess` made it in training, the file
    names) around what each recipe says of its own model."""
    return {
        "format": 1,
        "name": name,
        "version": "0.1.0",
        "task": task,
        "title": title,
        "intended_use": intended_use,
        "not_for_clinical_use": True,
        "caution": CAUTION,
        "applies_to": applies_to,
        "input": {
            "name": "image",
            "height": SIZE,
            "width": SIZE,
            "channels": 1,
            "layout": "NCHW",
            "resize": "letterbox",
            "window": "file",
            "mean": [0.5],
            "std": [0.25],
            "frames": "first",
            "crop_to_ultrasound_region": crop_to_ultrasound_region,
            "batch": "dynamic",
        },
        "outputs": outputs,
        "explanation": {"method": explanation},
        "files": {"fp32": FP32_NAME, "int8": INT8_NAME},
        "validation": validation,
    }


def int8_calibration(variant: Variant, counts: dict[str, int]) -> dict[str, Any]:
    """How the INT8 file was made: the manifests' `validation.int8` less its figures."""
    return {**variant.describe(), "calibration": f"{counts['calibration']} phantoms, MinMax"}


def recipe_report(
    seconds: float,
    variants: dict[str, Any],
    chosen: Variant,
    results: dict[str, Any],
    latency: dict[str, Any],
) -> dict[str, Any]:
    """The run's report (kept as JSON under --work; the README's figures come from it)."""
    return {
        "train_seconds": round(seconds),
        "variants": variants,
        "chosen": chosen.slug,
        **results,
        "latency_ms": latency,
    }


def finish(
    args: argparse.Namespace,
    section: str,
    prefix: str,
    manifest: dict[str, Any],
    report: dict[str, Any],
    readme: list[str],
) -> None:
    """Write the package (with its golden inputs), the report and the README's figures for
    `section`."""
    write_package(args.out, manifest)
    write_goldens(args.out)  # made again by profile_demo.py, from the typical image
    write_report(args.work / f"{prefix}-report.json", report)
    write_readme_results(section, readme)
    log(f"report: {report}")


def variant_lines(columns: Sequence[str], rows: list[str], report: dict[str, Any]) -> list[str]:
    """The README's closing lines of a model's figures: the variants' table (`rows` under
    `columns`, after the variant's name), the variant chosen and the latencies."""
    latency = report["latency_ms"]
    return [
        "",
        "Quantization variants (validation split):",
        "",
        "| " + " | ".join(("variant", *columns)) + " |",
        "|" + "---|" * (len(columns) + 1),
        *rows,
        "",
        f"Chosen: `{report['chosen']}`. Latency, batch 1, 1 thread, {latency['cpu']}: "
        f"FP32 {latency['fp32']} ms, INT8 {latency['int8']} ms (median of 60 runs).",
    ]


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def chest_sample(seed: int, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Input 1 x 256 x 256, labels (5,), lesion masks as bits of a uint8 256 x 256 image, and
    where the image sits in the input (top, left, rows, columns)."""
    phantom = phantoms.make_chest(seed, rows=rows)
    image, placement = phantoms.chest_model_input(phantoms.chest_dataset(phantom))
    bits = np.zeros((256, 256), dtype=np.uint8)
    for index, name in enumerate(phantoms.CHEST_FINDINGS):
        if name in phantom.masks:
            placed = placement.forward(phantom.masks[name].astype(np.float32)) > 0.5
            bits |= placed.astype(np.uint8) << index
    labels = np.array([phantom.labels[n] for n in phantoms.CHEST_FINDINGS], dtype=np.uint8)
    inner = [placement.top, placement.left, placement.inner_rows, placement.inner_columns]
    return image[0], labels, bits, inner


def chest_rows(seed: int) -> int:
    """Stored sizes vary (320-448 rows); all reach the model at 256 x 256."""
    return 320 + 64 * (seed % 3)


def build_chest_set(seeds: Sequence[int]) -> dict[str, np.ndarray]:
    images, labels, masks, inners = [], [], [], []
    for seed in seeds:
        image, label, bits, inner = chest_sample(seed, chest_rows(seed))
        images.append(image.astype(np.float16))
        labels.append(label)
        masks.append(bits)
        inners.append(inner)
    return {
        "images": np.stack(images),
        "labels": np.stack(labels),
        "masks": np.stack(masks),
        "inner": np.array(inners, dtype=np.int32),
    }


def ultrasound_sample(seed: int) -> dict[str, Any]:
    """Input, target mask in input space, and what area/Dice need on the cropped region."""
    color = seed % 4 != 0  # one in four as MONOCHROME2, the rest RGB
    phantom = phantoms.make_ultrasound(seed, color=color)
    image, placement = phantoms.ultrasound_model_input(phantoms.ultrasound_dataset(phantom))
    x0, y0, x1, y1 = phantom.geometry.region
    crop = phantom.fluid_mask[y0 : y1 + 1, x0 : x1 + 1]
    target = placement.forward(crop.astype(np.float32)) > 0.5
    return {
        "image": image[0],
        "target": target,
        "crop": crop,
        "placement": placement,
        "mm_per_pixel": phantom.geometry.mm_per_pixel,
        "area_mm2": phantom.fluid_area_mm2,
    }


def build_ultrasound_set(seeds: Sequence[int]) -> dict[str, np.ndarray]:
    """Inputs and targets, plus the cropped truth (padded to 480 x 640) and its placement."""
    images, targets, crops, boxes, spacing, areas = [], [], [], [], [], []
    for seed in seeds:
        sample = ultrasound_sample(seed)
        images.append(sample["image"].astype(np.float16))
        targets.append(sample["target"])
        crop = sample["crop"]
        padded = np.zeros((480, 640), dtype=bool)
        padded[: crop.shape[0], : crop.shape[1]] = crop
        crops.append(np.packbits(padded))
        p = sample["placement"]
        boxes.append(
            [p.source_rows, p.source_columns, p.top, p.left, p.inner_rows, p.inner_columns]
        )
        spacing.append(sample["mm_per_pixel"])
        areas.append(sample["area_mm2"])
    return {
        "images": np.stack(images),
        "targets": np.stack(targets),
        "crops": np.stack(crops),
        "placements": np.array(boxes, dtype=np.int32),
        "mm_per_pixel": np.array(spacing, dtype=np.float64),
        "area_mm2": np.array(areas, dtype=np.float64),
    }


def write_readme_results(section: str, lines: list[str]) -> None:
    """Replace the README's measured-results block for `section` with `lines`.

    The figures in models/recipes/README.md are written here from the run's own measurements,
    never typed in, so they cannot drift from the packages' manifests.
    """
    path = Path(__file__).with_name("README.md")
    text = path.read_text(encoding="utf-8")
    begin, end = f"<!-- results:{section} -->", f"<!-- /results:{section} -->"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    block = "\n".join([begin, *lines, end])
    path.write_text(head + block + tail, encoding="utf-8")
