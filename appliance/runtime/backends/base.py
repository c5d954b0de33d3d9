"""The contract every backend shares: options, what the graph looks like, the output contract.

Kept apart from the package's `__init__` so that a concrete backend module imports this and
never the package that chooses between them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, get_args

import numpy as np
import numpy.typing as npt

from appliance.runtime.errors import BackendError, InferenceError

BackendName = Literal["cpu", "cuda", "tensorrt", "tensorrt-native"]
Precision = Literal["fp32", "fp16", "int8"]
BACKENDS: tuple[str, ...] = get_args(BackendName)
PRECISIONS: tuple[str, ...] = get_args(Precision)
Outputs = dict[str, npt.NDArray[np.float32]]


@dataclass(frozen=True)
class BackendOptions:
    """How to run a model: which backend, what precision, how many threads, where caches go.

    `cpu`, `cuda` and `tensorrt` are ONNX Runtime with that execution provider;
    `tensorrt-native` builds and runs a TensorRT engine directly. `fp16` is for the TensorRT
    backends (the FP32 graph built with FP16 kernels); `int8` runs the package's INT8 file.
    """

    backend: BackendName = "cpu"
    precision: Precision = "fp32"
    threads: int = 0  # intra-op threads; 0: the runtime's default (one per core)
    cache_dir: Path | None = None  # TensorRT engines and timing caches
    device_id: int = 0
    max_batch: int = 8

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise BackendError(f"unknown backend {self.backend!r}; choose one of {BACKENDS}")
        if self.precision not in PRECISIONS:
            raise BackendError(f"unknown precision {self.precision!r}; choose one of {PRECISIONS}")
        if self.precision == "fp16" and not self.backend.startswith("tensorrt"):
            raise BackendError(
                f"precision 'fp16' needs a TensorRT backend, not {self.backend!r} "
                "(packages hold FP32 and INT8 graphs only)"
            )
        if self.threads < 0 or self.max_batch < 1:
            raise BackendError(
                f"threads must be >= 0 and max_batch >= 1, got {self.threads}/{self.max_batch}"
            )


@dataclass(frozen=True)
class ModelIO:
    """What a backend needs to know about the graph, taken from the manifest."""

    input_name: str
    channels: int
    height: int
    width: int
    dynamic_batch: bool
    output_names: tuple[str, ...]
    model_hash: str
    label: str  # the model's identity, for messages and progress

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self.channels, self.height, self.width


class Backend(Protocol):
    """The one output contract every backend module implements."""

    name: str  # e.g. "onnxruntime-cpu", "tensorrt"
    precision: str
    providers: tuple[str, ...]  # what actually runs the graph, in priority order
    max_batch: int

    @classmethod
    def load(cls, model_path: Path, io: ModelIO, options: BackendOptions) -> Backend:
        """Load and warm up the model; BackendError when it cannot run as asked."""
        ...

    def run(self, batch: npt.NDArray[np.float32]) -> Outputs:
        """Outputs for a N x C x H x W float32 batch, N rows each."""
        ...

    def close(self) -> None:
        """Release the session or engine and its device memory."""
        ...


def run_in_chunks(
    run_chunk: Callable[[npt.NDArray[np.float32]], Outputs],
    batch: npt.NDArray[np.float32],
    io: ModelIO,
    max_batch: int,
) -> Outputs:
    """Check `batch`, run it `max_batch` samples at a time and join the outputs."""
    check_batch(batch, io)
    pieces = [run_chunk(batch[i : i + max_batch]) for i in range(0, batch.shape[0], max_batch)]
    joined: Outputs = {}
    for name in io.output_names:
        parts = [piece[name] for piece in pieces]
        joined[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if joined[name].shape[0] != batch.shape[0]:
            raise InferenceError(
                f"{io.label}: output {name!r} has {joined[name].shape[0]} rows "
                f"for a batch of {batch.shape[0]}"
            )
    return joined


def check_batch(batch: npt.NDArray[np.float32], io: ModelIO) -> None:
    expected = io.sample_shape
    if batch.dtype != np.float32 or batch.ndim != 4 or batch.shape[1:] != expected:
        raise InferenceError(
            f"{io.label}: a batch must be float32 N x {' x '.join(map(str, expected))}, "
            f"got {batch.dtype} {' x '.join(map(str, batch.shape))}"
        )
    if batch.shape[0] < 1:
        raise InferenceError(f"{io.label}: an empty batch")
