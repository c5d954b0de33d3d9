"""Train the demo chest X-ray classifier on phantoms, export, quantize, validate, package.

    .venv/bin/python models/recipes/train_chest.py [--work /tmp/appliance-recipes]

A small CNN (about 160 K parameters) whose last feature map (32 x 32 for a 256 x 256 input) goes
through a 1 x 1 convolution with the classifier's weights: that is the class activation map,
exported as output `cam`, and its spatial mean through a sigmoid is output `probabilities`.
Global average pooling commutes with the 1 x 1 convolution, so the map is exactly what the
scores are made of, and the runtime needs no second pass to explain a finding.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import common as c
import cv2
import numpy as np
import torch
import training as t
from torch import nn

from appliance.phantoms import CHEST_FINDINGS

SIZE = c.SIZE
TRAIN_COUNT, CALIBRATION_COUNT, VALIDATION_COUNT, TEST_COUNT = 5000, 200, 600, 1000
LOCALISATION_WEIGHT = 0.2
LABELS: dict[str, dict[str, Any]] = {
    "lung_nodule": {"display": "Lung nodule or mass", "priority": "review"},
    "pleural_effusion": {
        "display": "Pleural effusion",
        "code": {"scheme": "SCT", "value": "60046008", "meaning": "Pleural effusion"},
        "priority": "urgent",
    },
    "consolidation": {"display": "Consolidation", "priority": "review"},
    "pneumothorax": {
        "display": "Pneumothorax",
        "code": {"scheme": "SCT", "value": "36118008", "meaning": "Pneumothorax"},
        "priority": "urgent",
    },
    "cardiomegaly": {
        "display": "Cardiomegaly",
        "code": {"scheme": "SCT", "value": "8186001", "meaning": "Cardiomegaly"},
        "priority": "routine",
    },
}


class ChestNet(nn.Module):
    """Stride-8 features (so the CAM resolves a 2 cm nodule), dilations for context."""

    def __init__(self, labels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            t.block(1, 16, 2),
            t.block(16, 32, 2),
            t.block(32, 32),
            t.block(32, 64, 2),
            t.block(64, 64),
            t.block(64, 64, dilation=2),
            t.block(64, 96, dilation=4),
        )
        self.classifier = nn.Conv2d(96, labels, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cam = self.classifier(self.features(image))
        return torch.sigmoid(cam.mean(dim=(2, 3))), cam

    def cam(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image))


def cam_targets(masks: np.ndarray) -> torch.Tensor:
    """Per image and label, the CAM cells (N x 5 x 32 x 32) whose peak would count as a hit.

    Bilinear upsampling peaks at a cell's centre, input pixels 8k+3 and 8k+4; a cell counts
    when its 2 x 2 centre lies in the lesion. A lesion too small to hold a centre falls back to
    every cell it touches.
    """
    labels = len(CHEST_FINDINGS)
    bits = (masks[:, None] >> np.arange(labels, dtype=np.uint8)[None, :, None, None]) & 1
    centre = bits[..., 3::8, 3::8] & bits[..., 4::8, 4::8] & bits[..., 3::8, 4::8]
    centre &= bits[..., 4::8, 3::8]
    n, _, rows, columns = bits.shape
    touched = bits.reshape(n, labels, rows // 8, 8, columns // 8, 8).max(axis=(3, 5))
    empty = centre.reshape(n, labels, -1).max(axis=2) == 0
    centre[empty] = touched[empty]
    return torch.from_numpy(centre.astype(bool))


def localisation_loss(
    cam: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """-log of the spatial-softmax mass of each positive label's CAM inside its lesion.

    The score stays the plain mean of the CAM; this only teaches where the evidence should
    sit, which phantoms can (their masks are exact) and real images rarely can.
    """
    positive = labels.bool()
    if not positive.any():
        return cam.sum() * 0.0
    flat = cam.flatten(2)[positive]
    inside = targets.flatten(2)[positive]
    log_p = torch.log_softmax(flat, dim=1)
    return -torch.logsumexp(log_p.masked_fill(~inside, float("-inf")), dim=1).mean()


def chest_loss(model: ChestNet, data: dict[str, np.ndarray]) -> t.Loss:
    """Binary cross-entropy on the scores plus the weighted localisation term."""
    labels = torch.from_numpy(data["labels"].astype(np.float32))
    targets = cam_targets(data["masks"])
    loss_fn = nn.BCEWithLogitsLoss()

    def loss(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        cam = model.cam(x)
        value = loss_fn(cam.mean(dim=(2, 3)), labels[index])
        return value + LOCALISATION_WEIGHT * localisation_loss(cam, labels[index], targets[index])

    return loss


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Small contrast/brightness jitter: windows differ between sites more than phantoms do."""
    return t.jitter(x, generator, gain=0.1, shift=0.15)


def cam_hits(cams: np.ndarray, data: dict[str, np.ndarray]) -> dict[str, tuple[int, int]]:
    """Per label: (positives whose upsampled CAM peaks inside the lesion mask, positives)."""
    out: dict[str, tuple[int, int]] = {}
    for k, name in enumerate(CHEST_FINDINGS):
        hits = total = 0
        for i in np.flatnonzero(data["labels"][:, k]):
            top, left, rows, columns = (int(v) for v in data["inner"][i])
            heat = cv2.resize(
                cams[i, k].astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR
            )
            inner = heat[top : top + rows, left : left + columns]
            y, x = np.unravel_index(int(np.argmax(inner)), inner.shape)
            hits += int((data["masks"][i, top + y, left + x] >> k) & 1)
            total += 1
        out[name] = (hits, total)
    return out


def judge_variant(
    validation: dict[str, np.ndarray], thresholds: np.ndarray, reference: np.ndarray
) -> Callable[[np.ndarray], c.Judged]:
    """Decisions at the operating thresholds against FP32's, and the largest change of AUC."""

    def judge(probabilities: np.ndarray) -> c.Judged:
        agreement = float(((probabilities >= thresholds) == (reference >= thresholds)).mean())
        auc_change = max(
            abs(
                c.auc(probabilities[:, k], validation["labels"][:, k])
                - c.auc(reference[:, k], validation["labels"][:, k])
            )
            for k in range(len(CHEST_FINDINGS))
        )
        figures = {"agreement": c.rounded(agreement), "max_auc_change": c.rounded(auc_change)}
        note = f"agreement {agreement:.4f}, max AUC change {auc_change:.4f}"
        return figures, (agreement, auc_change), note

    return judge


def evaluate(
    fp32: Path, int8: Path, test: dict[str, np.ndarray], thresholds: np.ndarray
) -> dict[str, Any]:
    probabilities, cams = c.run_batches(c.session(fp32), test["images"])
    quantized, quantized_cams = c.run_batches(c.session(int8), test["images"])
    fp32_hits, int8_hits = cam_hits(cams, test), cam_hits(quantized_cams, test)
    metrics: dict[str, Any] = {}
    for k, name in enumerate(CHEST_FINDINGS):
        truth = test["labels"][:, k]
        sensitivity, specificity = c.sensitivity_specificity(
            probabilities[:, k], truth, thresholds[k]
        )
        agree = (probabilities[:, k] >= thresholds[k]) == (quantized[:, k] >= thresholds[k])
        metrics[name] = {
            "auc": c.rounded(c.auc(probabilities[:, k], truth)),
            "sensitivity": c.rounded(sensitivity),
            "specificity": c.rounded(specificity),
            "positives": int(truth.sum()),
            "auc_int8": c.rounded(c.auc(quantized[:, k], truth)),
            "int8_agreement": c.rounded(float(agree.mean())),
            "cam_peak_in_lesion": c.rounded(fp32_hits[name][0] / max(fp32_hits[name][1], 1)),
            "cam_peak_in_lesion_int8": c.rounded(int8_hits[name][0] / max(int8_hits[name][1], 1)),
        }
    decisions_fp32, decisions_int8 = probabilities >= thresholds, quantized >= thresholds
    hits = sum(h for h, _ in fp32_hits.values()) / max(sum(t for _, t in fp32_hits.values()), 1)
    return {
        "metrics": metrics,
        "decision_agreement": c.rounded(float((decisions_fp32 == decisions_int8).mean())),
        "max_auc_difference": max(abs(m["auc"] - m["auc_int8"]) for m in metrics.values()),
        "cam_peak_in_lesion": c.rounded(hits),
    }


def manifest(
    thresholds: np.ndarray,
    variant: c.Variant,
    results: dict[str, Any],
    latency: dict[str, Any],
    counts: dict[str, int],
) -> dict[str, Any]:
    labels = []
    for k, name in enumerate(CHEST_FINDINGS):
        entry: dict[str, Any] = {"name": name, "display": LABELS[name]["display"]}
        if "code" in LABELS[name]:
            entry["code"] = LABELS[name]["code"]
        entry["threshold"] = float(thresholds[k])
        entry["priority"] = LABELS[name]["priority"]
        labels.append(entry)
    return c.demo_manifest(
        name="demo-chest-xray",
        task="classification",
        title="Chest X-ray findings (demo)",
        intended_use=(
            "Demonstrates the appliance on frontal chest radiographs: five findings with a "
            "class activation map each. Trained and validated on synthetic phantoms only."
        ),
        applies_to={
            "modalities": ["CR", "DX"],
            "body_parts": ["CHEST"],
            "views": ["PA", "AP"],
            "sop_classes": [],
            "colour": "grey",
        },
        crop_to_ultrasound_region=False,
        outputs=[
            {"name": "probabilities", "kind": "scores", "activation": "none", "labels": labels},
            {"name": "cam", "kind": "cam", "for": "probabilities"},
        ],
        explanation="cam",
        validation={
            "dataset": (
                f"synthetic held-out chest phantoms, {counts['test']:,} images, seeds "
                f"{c.TEST_SEEDS}-{c.TEST_SEEDS + counts['test'] - 1}; thresholds chosen on a "
                f"separate {counts['validation']}-image validation split (maximum Youden index); "
                f"trained on {counts['train']:,} phantoms"
            ),
            "metrics": results["metrics"],
            "int8": {
                **c.int8_calibration(variant, counts),
                "decision_agreement": results["decision_agreement"],
                "max_auc_difference": c.rounded(results["max_auc_difference"]),
            },
            "cam_peak_in_lesion": results["cam_peak_in_lesion"],
            "latency_ms": latency,
        },
    )


def readme_lines(report: dict[str, Any], counts: dict[str, int], epochs: int) -> list[str]:
    lines = [
        f"Trained in {report['train_seconds']} s ({epochs} epochs over {counts['train']:,} "
        f"phantoms, 1 thread). Held-out test: {counts['test']:,} phantoms; thresholds from the "
        f"{counts['validation']}-image validation split.",
        "",
        "| label | positives | threshold | AUC FP32 | AUC INT8 | sensitivity | specificity "
        "| FP32/INT8 agreement | CAM peak in lesion FP32 / INT8 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, name in enumerate(CHEST_FINDINGS):
        m = report["metrics"][name]
        lines.append(
            f"| {name} | {m['positives']} | {report['thresholds'][k]:.3f} | {m['auc']:.4f} "
            f"| {m['auc_int8']:.4f} | {m['sensitivity']:.3f} | {m['specificity']:.3f} "
            f"| {m['int8_agreement']:.3f} | {m['cam_peak_in_lesion']:.3f} / "
            f"{m['cam_peak_in_lesion_int8']:.3f} |"
        )
    variants = [
        f"| {slug} | {v['agreement']:.4f} | {v['max_auc_change']:.4f} |"
        for slug, v in report["variants"].items()
    ]
    lines += [
        "",
        f"All decisions, FP32 vs INT8: agreement {report['decision_agreement']:.4f}; largest AUC "
        f"difference {report['max_auc_difference']:.4f}; CAM peak inside the lesion mask for "
        f"{report['cam_peak_in_lesion']:.3f} of positive labels (FP32).",
        *c.variant_lines(("decision agreement", "largest AUC change"), variants, report),
    ]
    return lines


def main() -> None:
    args, counts = c.parse_arguments(
        __doc__,
        "demo-chest-xray",
        batch=32,
        counts=(TRAIN_COUNT, CALIBRATION_COUNT, VALIDATION_COUNT, TEST_COUNT),
    )
    t.seed_everything()
    sets = c.draw_sets(args.work, "chest", "chest", counts, c.build_chest_set)
    model = ChestNet(len(CHEST_FINDINGS))
    loss = chest_loss(model, sets["train"])
    outputs = ("probabilities", "cam")
    seconds, fp32 = t.fit_and_export(model, sets["train"]["images"], args, loss, augment, outputs)
    reference = c.run_batches(c.session(fp32), sets["validation"]["images"])[0]
    thresholds = np.array(  # rounded as the manifest states them, before any figure uses them
        [
            round(c.youden_threshold(reference[:, k], sets["validation"]["labels"][:, k]), 3)
            for k in range(len(CHEST_FINDINGS))
        ]
    )
    judge = judge_variant(sets["validation"], thresholds, reference)
    variant, variants = c.choose_variant(
        args.work,
        "chest",
        fp32,
        sets["calibration"]["images"],
        sets["validation"]["images"],
        ("ReduceMean", "Sigmoid"),
        judge,
    )
    int8 = args.out / c.INT8_NAME
    (args.work / f"chest-{variant.slug}.onnx").replace(int8)
    results = evaluate(fp32, int8, sets["test"], thresholds)
    latency = c.latency(fp32, int8, sets["test"]["images"][:1])
    figures = {"thresholds": thresholds.tolist(), **results}
    report = c.recipe_report(seconds, variants, variant, figures, latency)
    package = manifest(thresholds, variant, results, latency, counts)
    readme = readme_lines(report, counts, args.epochs)
    c.finish(args, "chest", "chest", package, report, readme)


if __name__ == "__main__":
    main()
