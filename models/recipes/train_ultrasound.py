"""Train the demo ultrasound fluid segmenter on phantoms, export, quantize, validate, package.

    .venv/bin/python models/recipes/train_ultrasound.py [--work /tmp/appliance-recipes]

A small U-Net-like network: a stride-2 stem (the fan's speckle needs no full-resolution
features), two more downsamplings with a dilated block for context (fluid is told from acoustic
shadow by what lies around it), additive skips on the way up, and a bilinear upsampling of the
logits to the input size. The sigmoid is in the graph: output `mask` is a probability.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import common as c
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from appliance.phantoms import Letterbox

SIZE = 256
TRAIN_COUNT, CALIBRATION_COUNT, VALIDATION_COUNT, TEST_COUNT = 3000, 150, 300, 600
FP32_NAME, INT8_NAME = "model.onnx", "model.int8.onnx"
THRESHOLD = 0.5


def block(inputs: int, outputs: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
    )


def up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class FluidNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(block(1, 16, 2), block(16, 16))  # 1/2
        self.middle = nn.Sequential(block(16, 32, 2), block(32, 32))  # 1/4
        self.deep = nn.Sequential(block(32, 64, 2), block(64, 64, dilation=2))  # 1/8
        self.lateral_deep = nn.Conv2d(64, 32, 1)
        self.decode_middle = block(32, 32)
        self.lateral_middle = nn.Conv2d(32, 16, 1)
        self.decode_stem = block(16, 16)
        self.head = nn.Conv2d(16, 1, 1)

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        stem = self.stem(image)
        middle = self.middle(stem)
        deep = self.deep(middle)
        x = self.decode_middle(up(self.lateral_deep(deep)) + middle)
        x = self.decode_stem(up(self.lateral_middle(x)) + stem)
        return up(self.head(x))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(image))


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    probability = torch.sigmoid(logits)
    overlap = (probability * target).sum()
    return 1 - (2 * overlap + 1) / (probability.sum() + target.sum() + 1)


def train(model: FluidNet, data: dict[str, np.ndarray], epochs: int, batch: int) -> float:
    images = torch.from_numpy(data["images"])
    targets = torch.from_numpy(data["targets"].astype(np.float32))[:, None]
    steps = epochs * math.ceil(len(images) / batch)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
    bce = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(images), batch):
            index = order[start : start + batch]
            x = augment(images[index].float(), generator)
            x = x.contiguous(memory_format=torch.channels_last)
            logits = model.logits(x)
            loss = bce(logits, targets[index]) + dice_loss(logits, targets[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(index)
        c.log(f"epoch {epoch + 1}/{epochs}: loss {total / len(images):.4f}")
    return time.perf_counter() - started


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Overall gain and offset: scanners' gain and dynamic range differ more than phantoms'."""
    n = len(x)
    gain = 1.0 + 0.15 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 2
    shift = 0.2 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 2
    return x * gain + shift


def export(model: FluidNet, path: Path) -> None:
    model.eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, SIZE, SIZE),),
        str(path),
        input_names=["image"],
        output_names=["mask"],
        dynamic_axes={"image": {0: "batch"}, "mask": {0: "batch"}},
        opset_version=c.OPSET,
        dynamo=False,
    )
    c.check_graph(path, "image", ["mask"])


def crop_masks(
    masks: np.ndarray, data: dict[str, np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Per image: (predicted mask, true mask) on the cropped region's pixels, and mm/pixel."""
    out = []
    for i, probability in enumerate(masks[:, 0]):
        rows, columns, top, left, inner_rows, inner_columns = (
            int(v) for v in data["placements"][i]
        )
        placement = Letterbox(rows, columns, SIZE, SIZE, top, left, inner_rows, inner_columns)
        predicted = placement.inverse(probability) >= THRESHOLD
        truth = np.unpackbits(data["crops"][i])[: 480 * 640].reshape(480, 640)
        out.append((predicted, truth[:rows, :columns].astype(bool), float(data["mm_per_pixel"][i])))
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2 * int((a & b).sum()) / total


def segmentation_figures(masks: np.ndarray, data: dict[str, np.ndarray]) -> dict[str, Any]:
    """Dice and area error on images with fluid; image-level presence on all of them."""
    dices, relative, absolute = [], [], []
    found, truth = [], []
    for predicted, true, spacing in crop_masks(masks, data):
        has_fluid = bool(true.any())
        truth.append(has_fluid)
        found.append(bool(predicted.any()))
        if has_fluid:
            dices.append(dice(predicted, true))
            area_true = float(true.sum()) * spacing**2
            area_pred = float(predicted.sum()) * spacing**2
            absolute.append(abs(area_pred - area_true))
            relative.append(abs(area_pred - area_true) / area_true)
    found_a, truth_a = np.array(found), np.array(truth)
    return {
        "images": len(truth),
        "with_fluid": int(truth_a.sum()),
        "dice_mean": c.rounded(float(np.mean(dices))),
        "dice_median": c.rounded(float(np.median(dices))),
        "area_error_median_pct": c.rounded(100 * float(np.median(relative)), 2),
        "area_error_mean_pct": c.rounded(100 * float(np.mean(relative)), 2),
        "area_error_median_mm2": c.rounded(float(np.median(absolute)), 1),
        "sensitivity": c.rounded(float(found_a[truth_a].mean())),
        "specificity": c.rounded(float((~found_a[~truth_a]).mean())),
    }


def agreement(reference: np.ndarray, quantized: np.ndarray, data: dict[str, np.ndarray]) -> dict:
    """FP32 vs INT8: pixel decisions inside the image, mask Dice, image-level decisions."""
    pixels, dices, images = [], [], []
    for (a, _, _), (b, _, _) in zip(
        crop_masks(reference, data), crop_masks(quantized, data), strict=True
    ):
        pixels.append(float((a == b).mean()))
        if a.any() or b.any():
            dices.append(dice(a, b))
        images.append(a.any() == b.any())
    return {
        "pixel_agreement": c.rounded(float(np.mean(pixels)), 5),
        "mask_dice_fp32_vs_int8": c.rounded(float(np.mean(dices)) if dices else 1.0),
        "decision_agreement": c.rounded(float(np.mean(images))),
    }


def choose_variant(
    work: Path, fp32: Path, calibration: np.ndarray, validation: dict[str, np.ndarray]
) -> tuple[c.Variant, dict[str, Any]]:
    """As for the chest model: measured on validation, chosen by `common.pick_variant` with
    pixel agreement as the agreement and 1 - Dice(FP32, INT8) as the quality change."""
    reference = c.run_batches(c.session(fp32), validation["images"])[0]
    scores: dict[str, Any] = {}
    measured: dict[c.Variant, tuple[float, float]] = {}
    for variant in c.VARIANTS:
        path = work / f"us-{variant.slug}.onnx"
        c.quantize(fp32, path, variant, calibration, keep_float=("Resize", "Sigmoid"))
        quantized = c.run_batches(c.session(path), validation["images"])[0]
        figures = agreement(reference, quantized, validation)
        scores[variant.slug] = figures
        c.log(f"variant {variant.slug}: {figures}")
        measured[variant] = (
            figures["pixel_agreement"],
            1.0 - figures["mask_dice_fp32_vs_int8"],
        )
    return c.pick_variant(measured), scores


def manifest(
    variant: c.Variant, results: dict[str, Any], latency: dict[str, Any], counts: dict[str, int]
) -> dict[str, Any]:
    return {
        "format": 1,
        "name": "demo-ultrasound-fluid",
        "version": "0.1.0",
        "task": "segmentation",
        "title": "Ultrasound free fluid and cysts (demo)",
        "intended_use": (
            "Demonstrates segmentation on B-mode ultrasound: outlines anechoic fluid (free fluid, "
            "cysts) in the scan region and reports its area in mm² from the region's calibration. "
            "Trained and validated on synthetic phantoms only."
        ),
        "not_for_clinical_use": True,
        "caution": c.CAUTION,
        "applies_to": {
            "modalities": ["US"],
            "body_parts": [],
            "views": [],
            "sop_classes": ["1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.3.1"],
            "photometric": ["RGB", "YBR_FULL", "YBR_FULL_422", "MONOCHROME2"],
        },
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
            "crop_to_ultrasound_region": True,
            "batch": "dynamic",
        },
        "outputs": [
            {
                "name": "mask",
                "kind": "mask",
                "activation": "none",
                "labels": [
                    {
                        "name": "fluid",
                        "display": "Anechoic fluid",
                        "threshold": THRESHOLD,
                        "priority": "review",
                    }
                ],
            }
        ],
        "explanation": {"method": "none"},
        "files": {"fp32": FP32_NAME, "int8": INT8_NAME},
        "validation": {
            "dataset": (
                f"synthetic held-out ultrasound phantoms, {counts['test']:,} images, seeds "
                f"{c.TEST_SEEDS}-{c.TEST_SEEDS + counts['test'] - 1}; Dice and area on the "
                f"cropped scan region at threshold {THRESHOLD}; trained on "
                f"{counts['train']:,} phantoms"
            ),
            "metrics": {"fluid": results["fp32"]},
            "int8": {
                **variant.describe(),
                "calibration": f"{counts['calibration']} phantoms, MinMax",
                "metrics": results["int8"],
                **results["agreement"],
            },
            "latency_ms": latency,
        },
    }


def readme_lines(report: dict[str, Any], counts: dict[str, int], epochs: int) -> list[str]:
    latency = report["latency_ms"]
    rows = []
    for which in ("fp32", "int8"):
        f = report[which]
        rows.append(
            f"| {which.upper()} | {f['dice_mean']:.4f} | {f['dice_median']:.4f} "
            f"| {f['area_error_median_pct']:.2f} % | {f['area_error_mean_pct']:.2f} % "
            f"| {f['area_error_median_mm2']:.1f} | {f['sensitivity']:.3f} "
            f"| {f['specificity']:.3f} |"
        )
    agreement = report["agreement"]
    fp32 = report["fp32"]
    return [
        f"Trained in {report['train_seconds']} s ({epochs} epochs over {counts['train']:,} "
        f"phantoms, 1 thread). Held-out test: {fp32['images']} phantoms, {fp32['with_fluid']} "
        "with fluid; figures on the cropped scan region's pixels, threshold 0.5.",
        "",
        "| model | Dice mean | Dice median | area error median | area error mean "
        "| median abs. area error (mm²) | sensitivity (image) | specificity (image) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"FP32 vs INT8: pixel agreement {agreement['pixel_agreement']:.5f}, mask Dice "
        f"{agreement['mask_dice_fp32_vs_int8']:.4f}, image-level decision agreement "
        f"{agreement['decision_agreement']:.4f}.",
        "",
        "Quantization variants (validation split):",
        "",
        "| variant | pixel agreement | mask Dice FP32 vs INT8 | image decision agreement |",
        "|---|---|---|---|",
        *[
            f"| {slug} | {v['pixel_agreement']:.5f} | {v['mask_dice_fp32_vs_int8']:.4f} "
            f"| {v['decision_agreement']:.4f} |"
            for slug, v in report["variants"].items()
        ],
        "",
        f"Chosen: `{report['chosen']}`. Latency, batch 1, 1 thread, {latency['cpu']}: "
        f"FP32 {latency['fp32']} ms, INT8 {latency['int8']} ms (median of 60 runs).",
    ]


def main() -> None:
    args, counts = c.parse_arguments(
        __doc__,
        "demo-ultrasound-fluid",
        batch=16,
        counts=(TRAIN_COUNT, CALIBRATION_COUNT, VALIDATION_COUNT, TEST_COUNT),
    )
    torch.set_num_threads(1)
    torch.manual_seed(0)
    np.random.seed(0)
    starts = {
        "train": c.TRAIN_SEEDS,
        "calibration": c.CALIBRATION_SEEDS,
        "validation": c.VALIDATION_SEEDS,
        "test": c.TEST_SEEDS,
    }
    sets = {
        name: c.cached(
            args.work,
            f"us-{name}",
            "ultrasound",
            range(starts[name], starts[name] + counts[name]),
            c.build_ultrasound_set,
        )
        for name in starts
    }
    model = FluidNet().to(memory_format=torch.channels_last)
    c.log(f"parameters: {sum(p.numel() for p in model.parameters()):,}")
    seconds = train(model, sets["train"], args.epochs, args.batch)
    c.log(f"trained in {seconds:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    fp32, int8 = args.out / FP32_NAME, args.out / INT8_NAME
    export(model.to(memory_format=torch.contiguous_format), fp32)
    variant, variants = choose_variant(
        args.work, fp32, sets["calibration"]["images"], sets["validation"]
    )
    (args.work / f"us-{variant.slug}.onnx").replace(int8)
    test = sets["test"]
    reference = c.run_batches(c.session(fp32), test["images"])[0]
    quantized = c.run_batches(c.session(int8), test["images"])[0]
    results = {
        "fp32": segmentation_figures(reference, test),
        "int8": segmentation_figures(quantized, test),
        "agreement": agreement(reference, quantized, test),
    }
    sample = test["images"][:1]
    latency = {
        "cpu": c.cpu_name(),
        "threads": 1,
        "batch": 1,
        "fp32": c.latency_ms(fp32, sample, 1),
        "int8": c.latency_ms(int8, sample, 1),
    }
    c.write_package(args.out, manifest(variant, results, latency, counts))
    report = {
        "train_seconds": round(seconds),
        "variants": variants,
        "chosen": variant.slug,
        **results,
        "latency_ms": latency,
    }
    c.write_report(args.work / "us-report.json", report)
    c.write_readme_results("ultrasound", readme_lines(report, counts, args.epochs))
    c.log(f"report: {report}")


if __name__ == "__main__":
    main()
