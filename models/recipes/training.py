"""What both training scripts share that needs torch: the conv-BN-ReLU block, the intensity
jitter, the training loop, the ONNX export, and the step that fits, then exports, a model.

Kept apart from `common`, which stays torch-free (profile_demo.py uses it without torch).
The loop draws its random numbers in one fixed order, so a rerun gives the same weights.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import common as c
import numpy as np
import torch
from torch import nn

# (augmented batch, its indices into the training set) -> the batch's loss
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def seed_everything() -> None:
    """One thread and fixed seeds: training is reproducible on one machine."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    np.random.seed(0)


def block(inputs: int, outputs: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
    )


def jitter(x: torch.Tensor, generator: torch.Generator, gain: float, shift: float) -> torch.Tensor:
    """Per image, a gain within 1 +- `gain` and an offset within +- `shift`."""
    n = len(x)
    gains = 1.0 + gain * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 2
    shifts = shift * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 2
    return x * gains + shifts


def train(
    model: nn.Module, images: torch.Tensor, epochs: int, batch: int, loss: Loss, augment: Augment
) -> float:
    """AdamW with a one-cycle schedule; returns the wall time in seconds."""
    steps = epochs * math.ceil(len(images) / batch)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(images), batch):
            index = order[start : start + batch]
            x = augment(images[index].float(), generator)
            value = loss(x.contiguous(memory_format=torch.channels_last), index)
            optimiser.zero_grad()
            value.backward()
            optimiser.step()
            schedule.step()
            total += float(value.detach()) * len(index)
        c.log(f"epoch {epoch + 1}/{epochs}: loss {total / len(images):.4f}")
    return time.perf_counter() - started


def export(model: nn.Module, path: Path, outputs: Sequence[str]) -> None:
    """FP32 ONNX with input `image` and a dynamic batch axis on every tensor, checked."""
    model.eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, c.SIZE, c.SIZE),),
        str(path),
        input_names=["image"],
        output_names=list(outputs),
        dynamic_axes={name: {0: "batch"} for name in ("image", *outputs)},
        opset_version=c.OPSET,
        dynamo=False,
    )
    c.check_graph(path, "image", outputs)


def fit_and_export(
    model: nn.Module,
    images: np.ndarray,
    args: argparse.Namespace,
    loss: Loss,
    augment: Augment,
    outputs: Sequence[str],
) -> tuple[float, Path]:
    """Train (channels-last) as the arguments say, export the FP32 file into the package
    folder; the training seconds and that file."""
    model.to(memory_format=torch.channels_last)
    c.log(f"parameters: {sum(p.numel() for p in model.parameters()):,}")
    seconds = train(model, torch.from_numpy(images), args.epochs, args.batch, loss, augment)
    c.log(f"trained in {seconds:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    fp32 = args.out / c.FP32_NAME
    export(model.to(memory_format=torch.contiguous_format), fp32, outputs)
    return seconds, fp32
