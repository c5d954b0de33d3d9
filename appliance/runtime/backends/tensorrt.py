"""Native TensorRT backend: build an engine from the ONNX graph on the device, cache it, run it.

An engine is only valid for the TensorRT version and GPU that built it, so the cache key is the
model hash + TensorRT version + GPU name + precision + batch; a key that changed (new model,
TensorRT upgrade, other GPU) means a rebuild, and engines of the same model under an old key
are deleted. Builds take minutes on a Jetson, so progress is printed while building.

`tensorrt` and `cuda-python` (`cuda.bindings.runtime`, or `cuda.cudart` before 12.6) are
imported only when this backend is loaded. Needs TensorRT 8.6 or later (named-tensor API).
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from appliance.paths import write_atomically
from appliance.runtime.backends.base import BackendOptions, ModelIO, Outputs, run_in_chunks
from appliance.runtime.errors import BackendError

_WORKSPACE_BYTES = 1 << 30
_MIN_VERSION = (8, 6)


@dataclass(frozen=True)
class EngineKey:
    """What an engine depends on; its file name in the cache folder."""

    model_hash: str
    trt_version: str
    gpu: str
    precision: str
    max_batch: int

    @property
    def prefix(self) -> str:
        return self.model_hash[:16]

    @property
    def file_name(self) -> str:
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-")[:40] or "gpu"
        version = re.sub(r"[^0-9.]", "", self.trt_version)
        return f"{self.prefix}-trt{version}-{gpu}-{self.precision}-b{self.max_batch}.engine"


class TensorRTBackend:
    """A deserialised engine, one execution context, device buffers sized for `max_batch`."""

    def __init__(self, runner: _EngineRunner, io: ModelIO, options: BackendOptions) -> None:
        self._runner = runner
        self._io = io
        self.name = "tensorrt"
        self.precision: str = options.precision
        self.providers: tuple[str, ...] = (f"TensorRT {runner.trt_version} on {runner.gpu}",)
        self.max_batch = runner.max_batch

    @classmethod
    def load(cls, model_path: Path, io: ModelIO, options: BackendOptions) -> TensorRTBackend:
        """Load the cached engine for this model, GPU and TensorRT version, or build it."""
        trt, cudart = _tensorrt(), _cudart()
        _check_version(trt.__version__)
        if options.cache_dir is None:
            raise BackendError("backend 'tensorrt-native' needs a cache folder for its engines")
        gpu = _gpu_name(cudart, options.device_id)
        max_batch = options.max_batch if io.dynamic_batch else 1
        key = EngineKey(io.model_hash, trt.__version__, gpu, options.precision, max_batch)
        engine_bytes = _cached_or_built(trt, model_path, io, key, options.cache_dir / "tensorrt")
        runner = _EngineRunner(trt, cudart, engine_bytes, io, key, options.device_id)
        backend = cls(runner, io, options)
        backend.run(np.zeros((max_batch, *io.sample_shape), dtype=np.float32))  # warm-up
        return backend

    def run(self, batch: npt.NDArray[np.float32]) -> Outputs:
        return run_in_chunks(self._runner.run, batch, self._io, self.max_batch)

    def close(self) -> None:
        self._runner.close()


def _tensorrt() -> Any:
    try:
        import tensorrt  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError as exc:
        raise BackendError(
            "TensorRT is not installed: backend 'tensorrt-native' needs the Python package "
            "`tensorrt` (part of JetPack on a Jetson; `pip install tensorrt` on x86)"
        ) from exc
    return tensorrt


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        try:  # cuda-python before 12.6 kept the same module under another name
            from cuda import cudart as runtime  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise BackendError(
                "backend 'tensorrt-native' needs cuda-python (`pip install cuda-python`) "
                "to move data to and from the GPU"
            ) from exc
    return runtime


def _check_version(version: str) -> None:
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    if parts < _MIN_VERSION:
        raise BackendError(f"TensorRT {version} is too old: the runtime needs 8.6 or later")


def _call(cudart: Any, result: Any, what: str) -> Any:
    """Unpack a cuda-python (error, value...) tuple, raising on a CUDA error."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"CUDA {what} failed: {error}")
    return values[0] if len(values) == 1 else tuple(values)


def _gpu_name(cudart: Any, device_id: int) -> str:
    properties = _call(cudart, cudart.cudaGetDeviceProperties(device_id), "device query")
    name = properties.name
    return str(name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else name)


def _cached_or_built(trt: Any, model_path: Path, io: ModelIO, key: EngineKey, cache: Path) -> bytes:
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / key.file_name
    if path.is_file():
        data = path.read_bytes()
        if _deserialises(trt, data):
            return data
        print(f"TensorRT: cached engine {path.name} is unusable; rebuilding", file=sys.stderr)
    for stale in cache.glob(f"{key.prefix}-*.engine"):
        if stale != path:
            print(f"TensorRT: removing stale engine {stale.name}", file=sys.stderr)
            stale.unlink()
    data = build_engine(trt, model_path, io, key, cache / "timing.cache")
    write_atomically(path, data)
    return data


def _deserialises(trt: Any, data: bytes) -> bool:
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    return runtime.deserialize_cuda_engine(data) is not None


def build_engine(
    trt: Any, model_path: Path, io: ModelIO, key: EngineKey, timing_cache: Path
) -> bytes:
    """Parse the ONNX graph and build a serialised engine, printing progress to stderr."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {model_path}: {errors}")
    config = _builder_config(trt, builder, io, key)
    cache = _load_timing_cache(config, timing_cache)
    print(
        f"TensorRT: building the {key.precision} engine for {io.label} on {key.gpu} "
        "(minutes on a Jetson; cached afterwards)",
        file=sys.stderr,
        flush=True,
    )
    started = time.monotonic()
    serialised = builder.build_serialized_network(network, config)
    if serialised is None:
        raise BackendError(f"TensorRT could not build an engine for {io.label}; see its log above")
    write_atomically(timing_cache, bytes(memoryview(cache.serialize())))
    elapsed = time.monotonic() - started
    print(f"TensorRT: engine built in {elapsed:.0f} s", file=sys.stderr, flush=True)
    return bytes(memoryview(serialised))


def _network_flags(trt: Any) -> int:
    """TensorRT 8 needs the explicit-batch flag; 10 made it the only mode and deprecated it."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if flag is None or int(trt.__version__.split(".")[0]) >= 10:
        return 0
    return 1 << int(flag)


def _builder_config(trt: Any, builder: Any, io: ModelIO, key: EngineKey) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, _WORKSPACE_BYTES)
    if key.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if key.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # QDQ graph: explicit scales, no calibrator
    profile = builder.create_optimization_profile()
    smallest = (1, *io.sample_shape)
    largest = (key.max_batch, *io.sample_shape)
    profile.set_shape(io.input_name, smallest, largest, largest)
    config.add_optimization_profile(profile)
    if hasattr(trt, "IProgressMonitor"):  # TensorRT 10
        config.progress_monitor = _progress_monitor(trt, sys.stderr)
    return config


def _load_timing_cache(config: Any, path: Path) -> Any:
    """Reuse kernel timings of earlier builds on this device: rebuilds become much faster."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise BackendError(f"TensorRT refused its timing cache {path}; delete it to start anew")
    return cache


def _progress_monitor(trt: Any, out: TextIO) -> Any:
    """A TensorRT progress monitor printing one line per phase step (journald-friendly)."""

    class Progress(trt.IProgressMonitor):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._steps[phase_name] = num_steps
            depth = "  " if parent_phase else ""
            print(f"TensorRT: {depth}{phase_name} ({num_steps} steps)", file=out, flush=True)

        def step_complete(self, phase_name: str, step: int) -> bool:
            total = self._steps.get(phase_name, 0)
            if total >= 10 and (step + 1) % max(1, total // 10) == 0:
                print(f"TensorRT:   {phase_name}: {step + 1}/{total}", file=out, flush=True)
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            self._steps.pop(phase_name, None)

    return Progress()


class _EngineRunner:
    """Owns the engine, its execution context, a CUDA stream and the device buffers."""

    def __init__(
        self, trt: Any, cudart: Any, data: bytes, io: ModelIO, key: EngineKey, device_id: int
    ) -> None:
        self._trt, self._cudart, self._io = trt, cudart, io
        self.trt_version, self.gpu, self.max_batch = key.trt_version, key.gpu, key.max_batch
        _call(cudart, cudart.cudaSetDevice(device_id), "set device")
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise BackendError(f"TensorRT cannot deserialise the engine of {io.label}")
        self._context = self._engine.create_execution_context()
        self._stream = _call(cudart, cudart.cudaStreamCreate(), "stream create")
        self._buffers = self._allocate()

    def _allocate(self) -> dict[str, int]:
        """Device memory for every I/O tensor at the largest batch."""
        self._context.set_input_shape(self._io.input_name, (self.max_batch, *self._io.sample_shape))
        buffers = {}
        for name in (self._io.input_name, *self._io.output_names):
            shape = tuple(self._context.get_tensor_shape(name))
            dtype = self._dtype(name)
            size = int(np.prod(shape)) * dtype.itemsize
            buffers[name] = int(_call(self._cudart, self._cudart.cudaMalloc(size), "malloc"))
            self._context.set_tensor_address(name, buffers[name])
        return buffers

    def run(self, chunk: npt.NDArray[np.float32]) -> Outputs:
        cudart, context = self._cudart, self._context
        host_in = np.ascontiguousarray(chunk, dtype=self._dtype(self._io.input_name))
        context.set_input_shape(self._io.input_name, host_in.shape)
        self._copy(self._buffers[self._io.input_name], host_in.ctypes.data, host_in.nbytes, True)
        if not context.execute_async_v3(int(self._stream)):
            raise BackendError(f"TensorRT failed to run {self._io.label}")
        outputs = {}
        for name in self._io.output_names:
            host = np.empty(tuple(context.get_tensor_shape(name)), dtype=self._dtype(name))
            self._copy(host.ctypes.data, self._buffers[name], host.nbytes, False)
            outputs[name] = host
        _call(cudart, cudart.cudaStreamSynchronize(self._stream), "synchronize")
        return {name: value.astype(np.float32, copy=False) for name, value in outputs.items()}

    def _dtype(self, name: str) -> np.dtype[Any]:
        dtype: np.dtype[Any] = np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name)))
        return dtype

    def _copy(self, dst: int, src: int, size: int, to_device: bool) -> None:
        kinds = self._cudart.cudaMemcpyKind
        kind = kinds.cudaMemcpyHostToDevice if to_device else kinds.cudaMemcpyDeviceToHost
        result = self._cudart.cudaMemcpyAsync(dst, src, size, kind, self._stream)
        _call(self._cudart, result, "copy")

    def close(self) -> None:
        for pointer in self._buffers.values():
            _call(self._cudart, self._cudart.cudaFree(pointer), "free")
        self._buffers = {}
        _call(self._cudart, self._cudart.cudaStreamDestroy(self._stream), "stream destroy")
