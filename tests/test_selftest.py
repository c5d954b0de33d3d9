"""`appliance selftest` as the admin (and the update command) runs it: a real process, real
packages run by ONNX Runtime, and a loopback image through a real receiver and worker."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import numpy as np
import yaml

from appliance.runtime.golden import GOLDEN_NAME
from appliance.runtime.package import DEFAULT_MODELS_DIR, seal_package
from appliance.store import status

from conftest import REPO, RoleProcess, make_settings, read_only

CHEST = DEFAULT_MODELS_DIR / "demo-chest-xray"
ULTRASOUND = DEFAULT_MODELS_DIR / "demo-ultrasound-fluid"


def selftest(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "--config", str(config), "selftest", *extra],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        check=False,
    )


def write_config(tmp_path: Path, **sections: object) -> Path:
    settings = make_settings(tmp_path, storage={"free_space_floor_mb": 1}, **sections)
    config = tmp_path / "appliance.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return config


def models_with_a_changed_golden(tmp_path: Path) -> Path:
    """Both demo packages; the chest's golden outputs moved by 0.5 and the package re-sealed
    (its checksums are right: only the self-test can tell)."""
    models = tmp_path / "models"
    chest = shutil.copytree(CHEST, models / "chest")
    shutil.copytree(ULTRASOUND, models / "ultrasound")
    with np.load(chest / GOLDEN_NAME) as data:
        arrays = {k: data[k] + (0.5 if k.startswith("output.") else 0) for k in data.files}
    np.savez_compressed(chest / GOLDEN_NAME, **arrays)
    seal_package(chest)
    return models


def test_selftest_passes_on_the_demo_models_and_its_loopback_works(tmp_path: Path) -> None:
    config = write_config(tmp_path, models={"precision": "int8", "threads": 1})

    done = selftest(config)

    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for name, output in (("demo-chest-xray", "probabilities"), ("demo-ultrasound-fluid", "mask")):
        (line,) = [line for line in lines if f" {name} " in line]
        assert line.startswith(f"PASS {name} 0.1.0 (onnxruntime-cpu int8): largest difference")
        assert f"in {output!r}" in line and " allowed; " in line
    assert any(line.startswith("PASS loopback: analysed in ") for line in lines)
    assert lines[-1] == "selftest: passed"
    assert not (tmp_path / "data").exists()  # the loopback used a throwaway folder, not ours


def test_a_changed_golden_fails_the_selftest_with_the_reason(tmp_path: Path) -> None:
    models = models_with_a_changed_golden(tmp_path)
    config = write_config(tmp_path, models={"precision": "fp32", "threads": 1})

    done = selftest(config, "--models-dir", str(models), "--no-loopback")

    assert done.returncode == 1, done.stdout + done.stderr
    assert "PASS demo-ultrasound-fluid 0.1.0 (onnxruntime-cpu fp32)" in done.stdout
    (failed,) = [line for line in done.stdout.splitlines() if line.startswith("FAIL ")]
    assert failed.startswith("FAIL demo-chest-xray 0.1.0 (onnxruntime-cpu fp32): largest diff")
    last = done.stdout.splitlines()[-1]
    assert last.startswith("selftest: FAILED (1 problem(s)): demo-chest-xray: self-test failed: ")
    assert "differs from its golden value by 0.5" in last
    assert last.endswith("more than 0.005 allowed for fp32")
    assert "loopback" not in done.stdout


def test_a_box_without_models_fails_the_selftest(tmp_path: Path) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    config = write_config(tmp_path, models={"dirs": [str(empty)]})

    done = selftest(config)

    assert done.returncode == 1
    assert "FAIL models: no model package found in the configured folders" in done.stdout
    # the loopback still ran: the image went through, with no model to analyse it
    assert "PASS loopback: analysed in " in done.stdout and "(no findings: " in done.stdout


def test_the_worker_refuses_a_failing_package_and_says_why(
    tmp_path: Path, role_process: Callable[..., RoleProcess]
) -> None:
    models = models_with_a_changed_golden(tmp_path)
    worker = role_process(
        "worker",
        "worker: ready",
        storage={"free_space_floor_mb": 1},
        models={"dirs": [str(models)], "precision": "fp32"},
    )
    worker.start()  # ready once the packages are loaded and recorded

    with closing(read_only(worker)) as conn:
        rows = status.installed_models(conn)

    states = {row.name: (row.state, row.reason) for row in rows}
    assert states["demo-ultrasound-fluid"] == ("loaded", "")
    assert states["chest"][0] == "refused"
    assert states["chest"][1].startswith(
        "self-test failed: output 'probabilities' differs from its golden value by 0.5"
    )
    assert states["chest"][1].endswith("allowed for fp32")
    assert "demo-ultrasound-fluid" in "".join(worker.output)
