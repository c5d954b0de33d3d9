"""The appliance as processes: `appliance run` turns a DCMTK push into findings; a worker
killed in the middle of a job finishes it exactly once after its restart."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import pytest

from appliance.phantoms import chest_dataset, make_chest, make_ultrasound, ultrasound_dataset
from appliance.samples import make_dataset
from appliance.store import open_store

from conftest import RoleProcess, dcmtk, needs_dcmtk, read_only, wait_for
from runtime_models import write_package
from worker_fixtures import (
    analyse_job,
    analysis_of,
    artifacts_of,
    audit_rows,
    cr_of,
    findings_of,
    positive_labels,
    put_dataset,
    slow_manifest,
    slow_onnx,
)

pytestmark = pytest.mark.slow


def analysed(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM analyses ORDER BY instance_ref").fetchall()


@needs_dcmtk
def test_run_turns_a_dicom_push_into_findings(
    role_process: Callable[..., RoleProcess], tmp_path: Path
) -> None:
    proc = role_process("run", ready="worker: ready")
    proc.start(timeout_s=120)
    wait_for(lambda: any("receiver: listening" in line for line in proc.output), 60)
    effusion = {"pleural_effusion": True, "pneumothorax": False, "lung_nodule": False}
    chest = tmp_path / "chest.dcm"
    chest_dataset(make_chest(31, rows=1024, findings=effusion)).save_as(chest)
    fluid = make_ultrasound(32, fluid=True)
    frame = tmp_path / "us.dcm"
    ultrasound_dataset(fluid).save_as(frame)
    hand = tmp_path / "hand.dcm"
    make_dataset("cr", body_part="HAND").save_as(hand, enforce_file_format=True)
    command = [dcmtk("storescu"), "-aec", "APPLIANCE", "127.0.0.1", str(proc.port)]
    subprocess.run([*command, str(chest), str(frame), str(hand)], check=True, timeout=60)

    conn = read_only(proc)
    rows = wait_for(lambda: len(analysed(conn)) == 3 and analysed(conn))
    by_state = {row["state"]: row for row in rows}
    assert set(by_state) == {"findings", "no_model"}
    assert by_state["no_model"]["reason"].startswith("CR HAND: no model for this body part")
    findings = [f for row in rows for f in findings_of(conn, row["instance_ref"])]
    by_model = {f["model"]: f for f in findings}
    assert set(by_model) == {"demo-chest-xray", "demo-ultrasound-fluid"}
    assert "pleural_effusion" in positive_labels(by_model["demo-chest-xray"])
    [mask] = by_model["demo-ultrasound-fluid"]["result"]["masks"]
    assert mask["area_mm2"] == pytest.approx(fluid.fluid_area_mm2, rel=0.10)
    results = proc.paths.results
    wait_for(lambda: not conn.execute("SELECT 1 FROM jobs WHERE state != 'done'").fetchall())
    for finding in findings:
        overlays = [a for a in artifacts_of(conn, finding["id"]) if a["kind"] == "overlay"]
        assert overlays, f"{finding['model']} stored no overlay"
        for overlay in overlays:
            name = overlay["file_name"]
            assert cv2.imread(str(results / name)) is not None
    inferences = list(audit_rows(conn, "inference"))
    assert sorted(row["detail"]["model"] for row in inferences) == sorted(by_model)
    conn.close()
    assert proc.stop(signal.SIGINT) == 0


def test_a_worker_killed_mid_job_finishes_it_exactly_once(
    role_process: Callable[..., RoleProcess], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    write_package(models / "slow", slow_manifest("PELVIS"), slow_onnx)
    proc = role_process(
        "worker",
        ready="worker: ready",
        models={"dirs": [str(models)], "precision": "fp32"},
        jobs={"lease_s": 600},  # the restart must not rely on the lease running out
    )
    proc.start(timeout_s=120)
    store = open_store(proc.settings)
    instance = put_dataset(store, cr_of("PELVIS"), tmp_path, "p.dcm")
    conn = read_only(proc)
    job = partial(analyse_job, conn, instance)  # the job as it stands at each call

    wait_for(lambda: job()["state"] == "running", 60)
    proc.kill()
    assert job()["state"] == "running" and findings_of(conn, instance) == []
    proc.start(timeout_s=120)
    assert "1 interrupted job(s) taken back" in "".join(proc.output)
    wait_for(
        lambda: job()["state"] == "done",
        what="the taken-back job to finish",
        state=lambda: (dict(job()), proc.output[-3:]),
    )
    assert job()["attempts"] == 2
    assert len(findings_of(conn, instance)) == 1
    assert analysis_of(conn, instance)["state"] == "findings"
    assert len(list(audit_rows(conn, "inference"))) == 1
    [reaped] = audit_rows(conn, "job.reaped")
    assert reaped["detail"]["outcome"] == "queued"
    conn.close()
    store.close()
