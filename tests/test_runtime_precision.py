"""`models.precision: auto` chooses by the processor and backend; explicit choices stand."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from appliance.config import ModelSettings
from appliance.runtime import precision
from appliance.runtime.errors import BackendError
from appliance.runtime.precision import choose_precision, read_cpu_flags
from appliance.worker.models import ModelSet

from runtime_models import write_sums
from worker_fixtures import DEMO_MODELS

AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})
WITH_VNNI = AVX2_ONLY | {"avx512f", "avx512_vnni"}
ORIN = frozenset({"fp", "asimd", "asimddp", "sha2"})  # Arm Cortex-A78AE Features


@pytest.mark.parametrize(
    ("flags", "precision"), [(AVX2_ONLY, "fp32"), (WITH_VNNI, "int8"), (ORIN, "int8")]
)
def test_auto_takes_int8_only_where_the_cpu_has_8_bit_dot_products(
    flags: frozenset[str], precision: str
) -> None:
    choice = choose_precision("auto", "cpu", cpu_flags=flags)
    assert choice.precision == precision
    assert choice.reason.startswith("auto: ")


def test_auto_says_why_it_chose_fp32() -> None:
    assert "no 8-bit dot-product" in choose_precision("auto", "cpu", AVX2_ONLY).reason


@pytest.mark.parametrize(
    ("backend", "precision"),
    [("tensorrt", "fp16"), ("tensorrt-native", "fp16"), ("cuda", "fp32")],
)
def test_auto_on_a_gpu_backend(backend: str, precision: str) -> None:
    assert choose_precision("auto", backend, cpu_flags=WITH_VNNI).precision == precision


@pytest.mark.parametrize("wanted", ["fp32", "int8", "fp16"])
def test_an_explicit_precision_stands_whatever_the_cpu(wanted: str) -> None:
    choice = choose_precision(wanted, "cpu", cpu_flags=AVX2_ONLY if wanted == "int8" else ORIN)
    assert (choice.precision, choice.reason) == (wanted, "set in models.precision")


def test_an_unknown_precision_is_refused_by_name() -> None:
    with pytest.raises(BackendError, match="'int4'"):
        choose_precision("int4", "cpu")


def test_cpu_flags_are_read_from_x86_and_arm_cpuinfo(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd asimddp\n")
    assert read_cpu_flags(x86) == {"fpu", "avx2", "avx512_vnni"}
    assert read_cpu_flags(arm) == {"fp", "asimd", "asimddp"}
    assert read_cpu_flags(tmp_path / "missing") == frozenset()


def copy_without_int8(folder: Path) -> Path:
    """The ultrasound demo package without its INT8 file, resealed."""
    target = folder / "packages" / "demo-ultrasound-fluid"
    shutil.copytree(DEMO_MODELS / "demo-ultrasound-fluid", target)
    manifest = yaml.safe_load((target / "manifest.yaml").read_text())
    (target / manifest["files"].pop("int8")).unlink()
    (target / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    write_sums(target, ["manifest.yaml", manifest["files"]["fp32"], manifest["golden"]["file"]])
    return target


def test_a_package_without_int8_runs_fp32_under_auto_but_is_refused_under_int8(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = copy_without_int8(tmp_path)
    monkeypatch.setattr(precision, "read_cpu_flags", lambda: WITH_VNNI)
    auto = ModelSet.load(ModelSettings(dirs=[package.parent]), tmp_path / "cache")
    try:
        assert auto.precision == "int8" and auto.refused == []
        assert [(m.package.name, m.backend.precision) for m in auto.models] == [
            ("demo-ultrasound-fluid", "fp32")
        ]
    finally:
        auto.close()
    explicit = ModelSet.load(ModelSettings(dirs=[package.parent], precision="int8"), tmp_path)
    assert explicit.models == []
    assert "no INT8 file" in explicit.refused[0].reason
