"""Backends: exactly the provider asked for or a clear error; one output contract.

Tests marked `gpu` need an NVIDIA GPU with onnxruntime-gpu / TensorRT; they are deselected by
default (pyproject addopts) and run with `pytest -m gpu` on a device.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from appliance.runtime import BackendError, InferenceError, Model
from appliance.runtime.backends import BackendOptions
from appliance.runtime.backends.onnxrt import available_providers

from runtime_models import blob_image, classifier_manifest, write_package

GpuPrecision = Literal["fp32", "fp16"]


@pytest.fixture
def package(tmp_path: Path) -> Path:
    return write_package(tmp_path / "classifier", classifier_manifest())


needs_no_cuda = pytest.mark.skipif(
    "CUDAExecutionProvider" in available_providers(), reason="CUDA is available here"
)


@needs_no_cuda
@pytest.mark.parametrize(
    ("backend", "provider"), [("cuda", "CUDAExecutionProvider"), ("tensorrt", "Tensorrt")]
)
def test_an_unavailable_provider_is_an_error_listing_the_available_ones(
    package: Path, tmp_path: Path, backend: str, provider: str
) -> None:
    options = BackendOptions(backend=backend, cache_dir=tmp_path / "cache")  # type: ignore[arg-type]
    with pytest.raises(BackendError) as info:
        Model.open(package, options)
    message = str(info.value)
    assert f"backend {backend!r} needs ONNX Runtime's {provider}" in message
    assert "CPUExecutionProvider" in message  # what is available instead


def test_native_tensorrt_says_when_it_is_not_installed(package: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    options = BackendOptions(backend="tensorrt-native", cache_dir=tmp_path / "cache")
    with pytest.raises(BackendError, match="TensorRT is not installed"):
        Model.open(package, options)


def test_fp16_is_refused_outside_tensorrt() -> None:
    with pytest.raises(BackendError, match="precision 'fp16' needs a TensorRT backend"):
        BackendOptions(backend="cpu", precision="fp16")


def test_unknown_backend_names_the_choices() -> None:
    with pytest.raises(BackendError, match="unknown backend 'gpu'"):
        BackendOptions(backend="gpu")  # type: ignore[arg-type]


def test_the_cpu_backend_reports_what_runs_the_graph(package: Path) -> None:
    with Model.open(package, BackendOptions(threads=1)) as model:
        assert model.backend.providers == ("CPUExecutionProvider",)
        assert model.backend.name == "onnxruntime-cpu"


def test_a_batch_of_the_wrong_shape_is_refused(package: Path) -> None:
    with Model.open(package, BackendOptions(threads=1)) as model:
        with pytest.raises(
            InferenceError, match=r"float32 N x 1 x 64 x 64, got float32 2 x 1 x 32"
        ):
            model.run(np.zeros((2, 1, 32, 32), dtype=np.float32))
        with pytest.raises(InferenceError, match="got float64"):
            model.run(np.zeros((1, 1, 64, 64)))  # type: ignore[arg-type]  # float64 on purpose


def test_large_batches_run_in_pieces_of_max_batch(package: Path) -> None:
    with Model.open(package, BackendOptions(threads=1, max_batch=4)) as model:
        batch = np.random.default_rng(0).normal(size=(10, 1, 64, 64)).astype(np.float32)
        outputs = model.run(batch)
        assert outputs["logits"].shape == (10, 2) and outputs["cam"].shape == (10, 2, 16, 16)
        np.testing.assert_allclose(outputs["logits"][:, 0], batch.mean(axis=(1, 2, 3)), atol=1e-5)


def _gpu_check(package: Path, options: BackendOptions) -> None:
    image = blob_image(128, 128, (64, 64), 40)
    with Model.open(package, options) as model:
        cpu = Model.open(package, BackendOptions(threads=1))
        expected = [f.score for f in cpu.infer([image])[0].labels]
        actual = [f.score for f in model.infer([image])[0].labels]
        assert actual == pytest.approx(expected, abs=1e-2)


@pytest.mark.gpu
def test_cuda_provider_matches_cpu(package: Path) -> None:
    _gpu_check(package, BackendOptions(backend="cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_provider_matches_cpu_and_caches(
    package: Path, tmp_path: Path, precision: GpuPrecision
) -> None:
    options = BackendOptions(backend="tensorrt", precision=precision, cache_dir=tmp_path)
    _gpu_check(package, options)
    assert any((tmp_path / "ort-tensorrt").iterdir())


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_native_tensorrt_matches_cpu_and_reuses_its_engine(
    package: Path, tmp_path: Path, precision: GpuPrecision
) -> None:
    options = BackendOptions(backend="tensorrt-native", precision=precision, cache_dir=tmp_path)
    _gpu_check(package, options)
    engines = list((tmp_path / "tensorrt").glob("*.engine"))
    assert len(engines) == 1
    built = engines[0].stat().st_mtime_ns
    _gpu_check(package, options)
    assert engines[0].stat().st_mtime_ns == built  # loaded from the cache, not rebuilt


def test_engine_cache_keys_change_with_model_tensorrt_and_gpu() -> None:
    from appliance.runtime.backends.tensorrt import EngineKey

    key = EngineKey("ab" * 32, "10.3.0.26", "Orin (nvgpu)", "fp16", 8)
    assert key.file_name == "abababababababab-trt10.3.0.26-orin-nvgpu-fp16-b8.engine"
    others = [
        EngineKey("cd" * 32, "10.3.0.26", "Orin (nvgpu)", "fp16", 8),
        EngineKey("ab" * 32, "10.4.0", "Orin (nvgpu)", "fp16", 8),
        EngineKey("ab" * 32, "10.3.0.26", "NVIDIA H200", "fp16", 8),
        EngineKey("ab" * 32, "10.3.0.26", "Orin (nvgpu)", "int8", 8),
        EngineKey("ab" * 32, "10.3.0.26", "Orin (nvgpu)", "fp16", 1),
    ]
    assert len({key.file_name, *(other.file_name for other in others)}) == 6
    assert all("/" not in other.file_name for other in others)
