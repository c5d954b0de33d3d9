"""Inference backends: one module each, one output contract.

Every backend is loaded once (`load`), warmed up with a dummy batch before it is handed out, and
answers `run(batch)` for a float32 N x C x H x W batch of any N with a dict of float32 arrays,
one per manifest output, each with N rows. Backends that take a fixed batch run it in pieces.

The backend is chosen by name and never changes behind the caller's back: when the one asked
for cannot load, `BackendError` says why and lists what is available.
"""

from __future__ import annotations

from pathlib import Path

from appliance.runtime.backends.base import (
    BACKENDS,
    PRECISIONS,
    Backend,
    BackendName,
    BackendOptions,
    ModelIO,
    Outputs,
    Precision,
    check_batch,
    run_in_chunks,
)

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "Backend",
    "BackendName",
    "BackendOptions",
    "ModelIO",
    "Outputs",
    "Precision",
    "check_batch",
    "open_backend",
    "run_in_chunks",
]


def open_backend(model_path: Path, io: ModelIO, options: BackendOptions) -> Backend:
    """Load `model_path` with the backend `options` name (imported only when asked for)."""
    if options.backend == "tensorrt-native":
        from appliance.runtime.backends.tensorrt import TensorRTBackend

        return TensorRTBackend.load(model_path, io, options)
    from appliance.runtime.backends.onnxrt import OnnxRuntimeBackend

    return OnnxRuntimeBackend.load(model_path, io, options)
