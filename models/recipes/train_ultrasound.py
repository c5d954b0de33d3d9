"""Train the demo ultrasound fluid segmenter on phantoms, export, quantize, validate, package.

    .venv/bin/python models/recipes/train_ultrasound.py [--work /tmp/appliance-recipes]

A small U-Net-like network: a stride-2 stem (the fan's speckle needs no full-resolution
features), two more downsamplings with a dilated block for context (fluid is told from acoustic
shadow by what lies around it), additive skips on the way up, and a bilinear upsampling of the
logits to the input size. The sigmoid is in the graph: output `mask` is a probability.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import common as c
import numpy as np
import torch
import torch.nn.functional as F
import training as t
from torch import nn

from appliance.phantoms import Letterbox

SIZE = c.SIZE
TRAIN_COUNT, CALIBRATION_COUNT, VALIDATION_COUNT, TEST_COUNT = 3000, 150, 300, 600
THRESHOLD = 0.5
VARIANT_COLUMNS = ("pixel agreement", "mask Dice FP32 vs INT8", "image decision agreement")


def up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class FluidNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(t.block(1, 16, 2), t.block(16, 16))  # 1/2
        self.middle = nn.Sequential(t.block(16, 32, 2), t.block(32, 32))  # 1/4
        self.deep = nn.Sequential(t.block(32, 64, 2), t.block(64, 64, dilation=2))  # 1/8
        self.lateral_deep = nn.Conv2d(64, 32, 1)
        self.decode_middle = t.block(32, 32)
        self.lateral_middle = nn.Conv2d(32, 16, 1)
        self.decode_stem = t.block(16, 16)
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


def fluid_loss(model: FluidNet, data: dict[str, np.ndarray]) -> t.Loss:
    """Binary cross-entropy plus soft Dice on the mask's logits."""
    targets = torch.from_numpy(data["targets"].astype(np.float32))[:, None]
    bce = nn.BCEWithLogitsLoss()

    def loss(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        logits = model.logits(x)
        return bce(logits, targets[index]) + dice_loss(logits, targets[index])

    return loss


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Overall gain and offset: scanners' gain and dynamic range differ more than phantoms'."""
    return t.jitter(x, generator, gain=0.15, shift=0.2)


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


def judge_variant(
    reference: np.ndarray, validation: dict[str, np.ndarray]
) -> Callable[[np.ndarray], c.Judged]:
    """As for the chest model, with pixel agreement as the agreement and 1 - Dice(FP32, INT8)
    as the quality change."""

    def judge(quantized: np.ndarray) -> c.Judged:
        figures = agreement(reference, quantized, validation)
        quality = (figures["pixel_agreement"], 1.0 - figures["mask_dice_fp32_vs_int8"])
        return figures, quality, f"{figures}"

    return judge


def manifest(
    variant: c.Variant, results: dict[str, Any], latency: dict[str, Any], counts: dict[str, int]
) -> dict[str, Any]:
    return c.demo_manifest(
        name="demo-ultrasound-fluid",
        task="segmentation",
        title="Ultrasound free fluid and cysts (demo)",
        intended_use=(
            "Demonstrates segmentation on B-mode ultrasound: outlines anechoic fluid (free fluid, "
            "cysts) in the scan region and reports its area in mm² from the region's calibration. "
            "Trained and validated on synthetic phantoms only."
        ),
        applies_to={
            "modalities": ["US"],
            "body_parts": [],
            "views": [],
            "sop_classes": ["1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.3.1"],
            "colour": "either",
        },
        crop_to_ultrasound_region=True,
        outputs=[
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
        explanation="none",
        validation={
            "dataset": (
                f"synthetic held-out ultrasound phantoms, {counts['test']:,} images, seeds "
                f"{c.TEST_SEEDS}-{c.TEST_SEEDS + counts['test'] - 1}; Dice and area on the "
                f"cropped scan region at threshold {THRESHOLD}; trained on "
                f"{counts['train']:,} phantoms"
            ),
            "metrics": {"fluid": results["fp32"]},
            "int8": {
                **c.int8_calibration(variant, counts),
                "metrics": results["int8"],
                **results["agreement"],
            },
            "latency_ms": latency,
        },
    )


def readme_lines(report: dict[str, Any], counts: dict[str, int], epochs: int) -> list[str]:
    variants = [
        f"| {slug} | {v['pixel_agreement']:.5f} | {v['mask_dice_fp32_vs_int8']:.4f} "
        f"| {v['decision_agreement']:.4f} |"
        for slug, v in report["variants"].items()
    ]
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
        *c.variant_lines(VARIANT_COLUMNS, variants, report),
    ]


def main() -> None:
    args, counts = c.parse_arguments(
        __doc__,
        "demo-ultrasound-fluid",
        batch=16,
        counts=(TRAIN_COUNT, CALIBRATION_COUNT, VALIDATION_COUNT, TEST_COUNT),
    )
    t.seed_everything()
    sets = c.draw_sets(args.work, "us", "ultrasound", counts, c.build_ultrasound_set)
    model = FluidNet()
    loss = fluid_loss(model, sets["train"])
    seconds, fp32 = t.fit_and_export(model, sets["train"]["images"], args, loss, augment, ["mask"])
    validation = sets["validation"]
    reference = c.run_batches(c.session(fp32), validation["images"])[0]
    variant, variants = c.choose_variant(
        args.work,
        "us",
        fp32,
        sets["calibration"]["images"],
        validation["images"],
        ("Resize", "Sigmoid"),
        judge_variant(reference, validation),
    )
    int8 = args.out / c.INT8_NAME
    (args.work / f"us-{variant.slug}.onnx").replace(int8)
    test = sets["test"]
    reference = c.run_batches(c.session(fp32), test["images"])[0]
    quantized = c.run_batches(c.session(int8), test["images"])[0]
    results = {
        "fp32": segmentation_figures(reference, test),
        "int8": segmentation_figures(quantized, test),
        "agreement": agreement(reference, quantized, test),
    }
    latency = c.latency(fp32, int8, test["images"][:1])
    report = c.recipe_report(seconds, variants, variant, results, latency)
    package = manifest(variant, results, latency, counts)
    readme = readme_lines(report, counts, args.epochs)
    c.finish(args, "ultrasound", "us", package, report, readme)


if __name__ == "__main__":
    main()
