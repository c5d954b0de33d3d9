"""Train the demo chest X-ray classifier on phantoms, export, quantize, validate, package.

    .venv/bin/python models/recipes/train_chest.py [--work /tmp/appliance-recipes]

A small CNN (about 160 K parameters) whose last feature map (32 x 32 for a 256 x 256 input) goes
through a 1 x 1 convolution with the classifier's weights: that is the class activation map,
exported as output `cam`, and its spatial mean through a sigmoid is output `probabilities`.
Global average pooling commutes with the 1 x 1 convolution, so the map is exactly what the
scores are made of, and the runtime needs no second pass to explain a finding.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import common as c
import cv2
import numpy as np
import torch
from torch import nn

from appliance.phantoms import CHEST_FINDINGS

SIZE = 256
TRAIN_COUNT, CALIBRATION_COUNT, VALIDATION_COUNT, TEST_COUNT = 5000, 200, 600, 1000
FP32_NAME, INT8_NAME = "model.onnx", "model.int8.onnx"
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


def block(inputs: int, outputs: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
    )


class ChestNet(nn.Module):
    """Stride-8 features (so the CAM resolves a 2 cm nodule), dilations for context."""

    def __init__(self, labels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            block(1, 16, 2),
            block(16, 32, 2),
            block(32, 32),
            block(32, 64, 2),
            block(64, 64),
            block(64, 64, dilation=2),
            block(64, 96, dilation=4),
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


def train(model: ChestNet, data: dict[str, np.ndarray], epochs: int, batch: int) -> float:
    """AdamW with a one-cycle schedule; returns the wall time in seconds."""
    images = torch.from_numpy(data["images"])
    labels = torch.from_numpy(data["labels"].astype(np.float32))
    targets = cam_targets(data["masks"])
    steps = epochs * math.ceil(len(images) / batch)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(images), batch):
            index = order[start : start + batch]
            x = augment(images[index].float(), generator).contiguous(
                memory_format=torch.channels_last
            )
            cam = model.cam(x)
            loss = loss_fn(cam.mean(dim=(2, 3)), labels[index])
            loss = loss + LOCALISATION_WEIGHT * localisation_loss(
                cam, labels[index], targets[index]
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(index)
        c.log(f"epoch {epoch + 1}/{epochs}: loss {total / len(images):.4f}")
    return time.perf_counter() - started


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Small contrast/brightness jitter: windows differ between sites more than phantoms do."""
    n = len(x)
    gain = 1.0 + 0.1 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 2
    shift = 0.15 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 2
    return x * gain + shift


def export(model: ChestNet, path: Path) -> None:
    model.eval()
    sample = torch.zeros(1, 1, SIZE, SIZE)
    torch.onnx.export(
        model,
        (sample,),
        str(path),
        input_names=["image"],
        output_names=["probabilities", "cam"],
        dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}, "cam": {0: "batch"}},
        opset_version=c.OPSET,
        dynamo=False,
    )
    c.check_graph(path, "image", ["probabilities", "cam"])


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


def choose_variant(
    work: Path,
    fp32: Path,
    calibration: np.ndarray,
    validation: dict[str, np.ndarray],
    thresholds: np.ndarray,
    reference: np.ndarray,
) -> tuple[c.Variant, dict[str, Any]]:
    """Quantize every variant and measure it against FP32 on the validation split; the
    choice itself is `common.pick_variant`'s (agreement first, then reduce_range)."""
    scores: dict[str, Any] = {}
    measured: dict[c.Variant, tuple[float, float]] = {}
    for variant in c.VARIANTS:
        path = work / f"chest-{variant.slug}.onnx"
        c.quantize(fp32, path, variant, calibration, keep_float=("ReduceMean", "Sigmoid"))
        probabilities = c.run_batches(c.session(path), validation["images"])[0]
        agreement = float(((probabilities >= thresholds) == (reference >= thresholds)).mean())
        auc_change = max(
            abs(
                c.auc(probabilities[:, k], validation["labels"][:, k])
                - c.auc(reference[:, k], validation["labels"][:, k])
            )
            for k in range(len(CHEST_FINDINGS))
        )
        scores[variant.slug] = {
            "agreement": c.rounded(agreement),
            "max_auc_change": c.rounded(auc_change),
        }
        c.log(f"variant {variant.slug}: agreement {agreement:.4f}, max AUC change {auc_change:.4f}")
        measured[variant] = (agreement, auc_change)
    return c.pick_variant(measured), scores


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
    return {
        "format": 1,
        "name": "demo-chest-xray",
        "version": "0.1.0",
        "task": "classification",
        "title": "Chest X-ray findings (demo)",
        "intended_use": (
            "Demonstrates the appliance on frontal chest radiographs: five findings with a "
            "class activation map each. Trained and validated on synthetic phantoms only."
        ),
        "not_for_clinical_use": True,
        "caution": c.CAUTION,
        "applies_to": {
            "modalities": ["CR", "DX"],
            "body_parts": ["CHEST"],
            "views": ["PA", "AP"],
            "sop_classes": [],
            "photometric": ["MONOCHROME1", "MONOCHROME2"],
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
            "crop_to_ultrasound_region": False,
            "batch": "dynamic",
        },
        "outputs": [
            {"name": "probabilities", "kind": "scores", "activation": "none", "labels": labels},
            {"name": "cam", "kind": "cam", "for": "probabilities"},
        ],
        "explanation": {"method": "cam"},
        "files": {"fp32": FP32_NAME, "int8": INT8_NAME},
        "validation": {
            "dataset": (
                f"synthetic held-out chest phantoms, {counts['test']:,} images, seeds "
                f"{c.TEST_SEEDS}-{c.TEST_SEEDS + counts['test'] - 1}; thresholds chosen on a "
                f"separate {counts['validation']}-image validation split (maximum Youden index); "
                f"trained on {counts['train']:,} phantoms"
            ),
            "metrics": results["metrics"],
            "int8": {
                **variant.describe(),
                "calibration": f"{counts['calibration']} phantoms, MinMax",
                "decision_agreement": results["decision_agreement"],
                "max_auc_difference": c.rounded(results["max_auc_difference"]),
            },
            "cam_peak_in_lesion": results["cam_peak_in_lesion"],
            "latency_ms": latency,
        },
    }


def readme_lines(report: dict[str, Any], counts: dict[str, int], epochs: int) -> list[str]:
    latency = report["latency_ms"]
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
    lines += [
        "",
        f"All decisions, FP32 vs INT8: agreement {report['decision_agreement']:.4f}; largest AUC "
        f"difference {report['max_auc_difference']:.4f}; CAM peak inside the lesion mask for "
        f"{report['cam_peak_in_lesion']:.3f} of positive labels (FP32).",
        "",
        "Quantization variants (validation split):",
        "",
        "| variant | decision agreement | largest AUC change |",
        "|---|---|---|",
        *[
            f"| {slug} | {v['agreement']:.4f} | {v['max_auc_change']:.4f} |"
            for slug, v in report["variants"].items()
        ],
        "",
        f"Chosen: `{report['chosen']}`. Latency, batch 1, 1 thread, {latency['cpu']}: "
        f"FP32 {latency['fp32']} ms, INT8 {latency['int8']} ms (median of 60 runs).",
    ]
    return lines


def main() -> None:
    args, counts = c.parse_arguments(
        __doc__,
        "demo-chest-xray",
        batch=32,
        counts=(TRAIN_COUNT, CALIBRATION_COUNT, VALIDATION_COUNT, TEST_COUNT),
    )
    torch.set_num_threads(1)
    torch.manual_seed(0)
    np.random.seed(0)
    sets = {
        name: c.cached(
            args.work, f"chest-{name}", "chest", range(start, start + count), c.build_chest_set
        )
        for name, start, count in (
            ("train", c.TRAIN_SEEDS, counts["train"]),
            ("calibration", c.CALIBRATION_SEEDS, counts["calibration"]),
            ("validation", c.VALIDATION_SEEDS, counts["validation"]),
            ("test", c.TEST_SEEDS, counts["test"]),
        )
    }
    model = ChestNet(len(CHEST_FINDINGS)).to(memory_format=torch.channels_last)
    c.log(f"parameters: {sum(p.numel() for p in model.parameters()):,}")
    seconds = train(model, sets["train"], args.epochs, args.batch)
    c.log(f"trained in {seconds:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    fp32 = args.out / FP32_NAME
    export(model.to(memory_format=torch.contiguous_format), fp32)
    reference = c.run_batches(c.session(fp32), sets["validation"]["images"])[0]
    thresholds = np.array(  # rounded as the manifest states them, before any figure uses them
        [
            round(c.youden_threshold(reference[:, k], sets["validation"]["labels"][:, k]), 3)
            for k in range(len(CHEST_FINDINGS))
        ]
    )
    variant, variants = choose_variant(
        args.work, fp32, sets["calibration"]["images"], sets["validation"], thresholds, reference
    )
    int8 = args.out / INT8_NAME
    (args.work / f"chest-{variant.slug}.onnx").replace(int8)
    results = evaluate(fp32, int8, sets["test"], thresholds)
    sample = sets["test"]["images"][:1]
    latency = {
        "cpu": c.cpu_name(),
        "threads": 1,
        "batch": 1,
        "fp32": c.latency_ms(fp32, sample, 1),
        "int8": c.latency_ms(int8, sample, 1),
    }
    c.write_package(args.out, manifest(thresholds, variant, results, latency, counts))
    report = {
        "train_seconds": round(seconds),
        "variants": variants,
        "chosen": variant.slug,
        "thresholds": thresholds.tolist(),
        **results,
        "latency_ms": latency,
    }
    c.write_report(args.work / "chest-report.json", report)
    c.write_readme_results("chest", readme_lines(report, counts, args.epochs))
    c.log(f"report: {report}")


if __name__ == "__main__":
    main()
