"""`models.precision: auto`: the precision that is fastest without a measurable loss, by machine.

INT8 graphs are only faster than FP32 where the processor has 8-bit dot-product instructions:
x86 VNNI (AVX-512 VNNI, AVX-VNNI) or AMX, and Arm's dot product (`asimddp`, as on Jetson Orin's
Cortex-A78AE). On an AVX2-only x86 processor ONNX Runtime's INT8 kernels may be slower than
FP32, so `auto` chooses FP32 there. On TensorRT `auto` is FP16: near-lossless, and fast on every
Jetson and recent NVIDIA GPU without a calibration set. CUDA runs the FP32 graph.

The choice and its reason are logged by the worker and shown with the loaded models.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from appliance.runtime.backends import PRECISIONS, Precision
from appliance.runtime.errors import BackendError

CPUINFO = Path("/proc/cpuinfo")
# /proc/cpuinfo flags (x86 "flags", Arm "Features") of 8-bit integer dot-product instructions.
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})


@dataclass(frozen=True)
class Choice:
    precision: Precision
    reason: str


def choose_precision(wanted: str, backend: str, cpu_flags: frozenset[str] | None = None) -> Choice:
    """The precision to run for configured `wanted` ("auto" or a precision) on `backend`.

    `cpu_flags` defaults to this machine's (see `cpu_flags()`); tests pass their own.
    """
    if wanted != "auto":
        return Choice(_precision(wanted), "set in models.precision")
    if backend.startswith("tensorrt"):
        return Choice("fp16", "auto: TensorRT runs FP16 kernels")
    if backend != "cpu":
        return Choice("fp32", f"auto: the {backend} backend runs the FP32 graph")
    flags = cpu_flags if cpu_flags is not None else read_cpu_flags()
    found = sorted(flags & INT8_DOT_FLAGS)
    if found:
        return Choice("int8", f"auto: this CPU has 8-bit dot-product instructions ({found[0]})")
    return Choice(
        "fp32",
        f"auto: this {platform.machine() or 'CPU'} has no 8-bit dot-product instructions "
        "(no VNNI/AMX/dotprod), where INT8 is often not faster than FP32",
    )


def read_cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The first processor's feature flags; empty when /proc/cpuinfo cannot be read."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def _precision(text: str) -> Precision:
    if text not in PRECISIONS:
        raise BackendError(f"unknown precision {text!r}; choose auto or one of {PRECISIONS}")
    return cast(Precision, text)
