"""ONNX Runtime backend: the CPU, CUDA or TensorRT execution provider, exactly as configured.

ONNX Runtime quietly drops a GPU provider that fails to initialise and runs on the CPU. Here the
providers the session really got are compared with the one asked for, and a mismatch is an
error: a device that was set up for a GPU must not crawl on its CPU unnoticed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from appliance.runtime.backends.base import BackendOptions, ModelIO, Outputs, run_in_chunks
from appliance.runtime.errors import BackendError, GraphError

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_WORKSPACE_BYTES = 1 << 30
# ONNX Runtime's own exception classes (plain Exception subclasses, not RuntimeError).
_ORT_ERRORS = (
    "Fail",
    "InvalidArgument",
    "NoSuchFile",
    "NoModel",
    "EngineError",
    "RuntimeException",
    "InvalidProtobuf",
    "ModelLoaded",
    "NotImplemented",
    "InvalidGraph",
    "EPFail",
)


class OnnxRuntimeBackend:
    """One InferenceSession, created and warmed up at load."""

    def __init__(self, session: Any, io: ModelIO, options: BackendOptions) -> None:
        self._session = session
        self._io = io
        self.name = f"onnxruntime-{options.backend}"
        self.precision: str = options.precision
        self.providers: tuple[str, ...] = tuple(session.get_providers())
        self.max_batch = options.max_batch if io.dynamic_batch else 1

    @classmethod
    def load(cls, model_path: Path, io: ModelIO, options: BackendOptions) -> OnnxRuntimeBackend:
        """Create the session with the configured provider only; warm it up."""
        ort = _onnxruntime()
        wanted = PROVIDERS.get(options.backend)
        if wanted is None:
            raise BackendError(f"backend {options.backend!r} is not an ONNX Runtime provider")
        _check_available(ort, wanted, options.backend)
        try:
            session = ort.InferenceSession(
                str(model_path),
                sess_options=_session_options(ort, options),
                providers=_providers(options, io),
            )
        except _errors() as exc:
            raise GraphError(f"ONNX Runtime cannot load {model_path}: {exc}") from exc
        started = session.get_providers()
        if not started or started[0] != wanted:
            raise BackendError(
                f"{io.label}: ONNX Runtime could not start {wanted} (the session got "
                f"{', '.join(started)}); see ONNX Runtime's messages above for the cause"
            )
        backend = cls(session, io, options)
        backend.warm_up(options.backend == "tensorrt")
        return backend

    def warm_up(self, full_batch: bool = False) -> None:
        """Run a dummy batch so the first image does not pay for allocation and kernel tuning
        (and, with `full_batch`, for a TensorRT engine build at the largest batch)."""
        sizes = {1, self.max_batch} if full_batch else {1}
        for size in sorted(sizes):
            self.run(np.zeros((size, *self._io.sample_shape), dtype=np.float32))

    def run(self, batch: npt.NDArray[np.float32]) -> Outputs:
        return run_in_chunks(self._run_chunk, batch, self._io, self.max_batch)

    def _run_chunk(self, chunk: npt.NDArray[np.float32]) -> Outputs:
        names = list(self._io.output_names)
        try:
            values = self._session.run(names, {self._io.input_name: np.ascontiguousarray(chunk)})
        except _errors() as exc:
            raise GraphError(f"{self._io.label}: ONNX Runtime failed to run: {exc}") from exc
        return {
            name: np.asarray(v, dtype=np.float32) for name, v in zip(names, values, strict=True)
        }

    def close(self) -> None:
        self._session = None


def _onnxruntime() -> Any:
    try:
        import onnxruntime  # type: ignore[import-untyped]
    except ImportError as exc:
        raise BackendError("ONNX Runtime is not installed (pip package onnxruntime)") from exc
    return onnxruntime


def _errors() -> tuple[type[Exception], ...]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state  # type: ignore[import-untyped]

    found = tuple(getattr(state, name) for name in _ORT_ERRORS if hasattr(state, name))
    return (RuntimeError, ValueError, *found)


def available_providers() -> list[str]:
    """The execution providers this ONNX Runtime installation was built with."""
    return list(_onnxruntime().get_available_providers())


def _check_available(ort: Any, wanted: str, backend: str) -> None:
    available = list(ort.get_available_providers())
    if wanted not in available:
        hint = "onnxruntime-gpu" if backend in ("cuda", "tensorrt") else "onnxruntime"
        raise BackendError(
            f"backend {backend!r} needs ONNX Runtime's {wanted}, which this installation does "
            f"not have (available: {', '.join(available)}); install {hint} with its CUDA "
            "libraries, or configure a backend that is available"
        )


def _session_options(ort: Any, options: BackendOptions) -> Any:
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = options.threads
    session_options.inter_op_num_threads = 1
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads must not spin: the worker shares the CPU with the receiver and the UI.
    session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session_options.log_severity_level = 3 if options.backend == "cpu" else 2
    return session_options


def _providers(options: BackendOptions, io: ModelIO) -> list[Any]:
    """The provider list; GPU nodes TensorRT cannot take go to CUDA, never the whole graph."""
    cuda = ("CUDAExecutionProvider", {"device_id": options.device_id})
    if options.backend == "cpu":
        return ["CPUExecutionProvider"]
    if options.backend == "cuda":
        return [cuda, "CPUExecutionProvider"]
    return [("TensorrtExecutionProvider", _tensorrt_options(options, io)), cuda]


def _tensorrt_options(options: BackendOptions, io: ModelIO) -> dict[str, Any]:
    if options.cache_dir is None:
        raise BackendError("backend 'tensorrt' needs a cache folder for its engines (cache_dir)")
    cache = options.cache_dir / "ort-tensorrt"
    cache.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "device_id": options.device_id,
        "trt_max_workspace_size": _WORKSPACE_BYTES,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": options.precision == "fp16",
        "trt_int8_enable": options.precision == "int8",  # QDQ graph: TensorRT reads its scales
    }
    if io.dynamic_batch:
        c, h, w = io.sample_shape
        shape = f"{io.input_name}:{{}}x{c}x{h}x{w}"
        settings["trt_profile_min_shapes"] = shape.format(1)
        settings["trt_profile_opt_shapes"] = shape.format(options.max_batch)
        settings["trt_profile_max_shapes"] = shape.format(options.max_batch)
    return settings
