"""The worker in-process on a real store with the real demo models: findings, routing, the
plausibility check, multi-frame key frames, failing models and triage."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from appliance.phantoms import chest_dataset, make_chest, make_ultrasound_clip, ultrasound_dataset
from appliance.runtime.package import load_package
from appliance.samples import make_dataset
from appliance.store import Store, held_back, jobs, open_store
from appliance.store.refused import Refused
from appliance.worker.role import Heartbeat

from conftest import make_settings
from runtime_models import classifier_onnx, write_package
from worker_fixtures import (
    DEMO_MODELS,
    analysis_of,
    artifacts_of,
    audit_rows,
    broken_manifest,
    copy_package,
    cr_of,
    drain,
    findings_of,
    flattened,
    open_worker,
    positive_labels,
    put_dataset,
)

EFFUSION_ONLY = {
    "pleural_effusion": True,
    "lung_nodule": False,
    "consolidation": False,
    "pneumothorax": False,
    "cardiomegaly": False,
}


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[Any]:
    """Open a store and worker for settings sections; everything closed at teardown."""
    handles: list[Store] = []

    def open_with(**sections: dict[str, Any]) -> tuple[Store, Any]:
        # Pictures at once: these tests drain the queue rather than wait for a quiet moment.
        sections["jobs"] = {"pictures_quiet_s": 0, **sections.get("jobs", {})}
        settings = make_settings(tmp_path, **sections)
        store = open_store(settings)
        handles.append(store)
        return store, open_worker(store, settings)

    yield open_with
    for store in handles:
        store.close()


def effusion_chest(seed: int = 11, rows: int = 1024) -> Any:
    return chest_dataset(make_chest(seed, rows=rows, findings=EFFUSION_ONLY), modality="DX")


def test_a_chest_radiograph_gets_findings_heatmaps_triage_and_audit(
    opened: Any, tmp_path: Path
) -> None:
    store, worker = opened(models={"precision": "int8"})
    instance = put_dataset(store, effusion_chest(), tmp_path, "cxr.dcm")
    assert worker.run_once()  # the analysis
    conn = store.conn
    [finding] = findings_of(conn, instance)
    assert artifacts_of(conn, finding["id"]) == []  # pictures follow in their own job
    assert drain(worker) == 2  # the pictures, then the objects for the clinic's record
    analysis = analysis_of(conn, instance)
    assert (analysis["state"], analysis["priority"]) == ("findings", "urgent")
    [finding] = findings_of(conn, instance)
    package = load_package(DEMO_MODELS / "demo-chest-xray")
    assert (finding["model"], finding["version"]) == ("demo-chest-xray", package.version)
    assert finding["model_sha256"] == package.model_hash("int8")
    assert (finding["backend"], finding["precision"]) == ("onnxruntime-cpu", "int8")
    assert "pleural_effusion" in positive_labels(finding)
    assert finding["result"]["not_for_clinical_use"] is True
    explained = positive_labels(finding)
    kinds = {(a["kind"], a["label"]) for a in artifacts_of(conn, finding["id"])}
    assert kinds == {(kind, label) for label in explained for kind in ("heatmap", "overlay")}
    for artifact in artifacts_of(conn, finding["id"]):
        picture = cv2.imread(str(store.results.path_of(artifact["file_name"])), -1)
        assert picture is not None
        assert picture.shape[:2] == (artifact["height"], artifact["width"])
        assert max(picture.shape[:2]) <= 1024  # preview size, the image's aspect
        assert json.loads(artifact["detail"])["method"] == "cam"
    study = conn.execute("SELECT triage, triage_rank, triage_reason FROM studies").fetchone()
    assert (study["triage"], study["triage_rank"]) == ("urgent", 0)
    assert "Pleural effusion" in study["triage_reason"]
    [inference] = audit_rows(conn, "inference")
    detail = inference["detail"]
    assert (detail["model"], detail["backend"], detail["precision"]) == (
        "demo-chest-xray",
        "onnxruntime-cpu",
        "int8",
    )
    assert detail["model_sha256"] == package.model_hash("int8") and detail["duration_ms"] > 0
    assert detail["outcome"] == "findings" and inference["subject"] == f"instance:{instance}"
    kinds_done = conn.execute("SELECT kind, state FROM jobs ORDER BY id").fetchall()
    assert [tuple(row) for row in kinds_done] == [
        ("analyse", "done"),
        ("pictures", "done"),
        ("outputs", "done"),
    ]
    [pictures] = audit_rows(conn, "pictures")
    assert pictures["detail"]["pictures"] == 2 * len(explained)


def test_a_normal_chest_is_routine(opened: Any, tmp_path: Path) -> None:
    store, worker = opened()
    normal = {name: False for name in EFFUSION_ONLY}
    ds = chest_dataset(make_chest(12, rows=1024, findings=normal), modality="CR")
    instance = put_dataset(store, ds, tmp_path, "normal.dcm")
    drain(worker)
    analysis = analysis_of(store.conn, instance)
    assert (analysis["state"], analysis["priority"]) == ("findings", "routine")
    [finding] = findings_of(store.conn, instance)
    assert positive_labels(finding) == set()
    assert artifacts_of(store.conn, finding["id"]) == []


@pytest.mark.parametrize(
    ("kind", "options", "expected"),
    [
        ("cr", {"body_part": "HAND"}, "CR HAND: no model for this body part"),
        ("ct", {}, "CT CHEST: no model for this modality"),
        (
            "sc-gray",
            {},
            "OT CHEST (Secondary Capture Image Storage): no model for this modality",
        ),
    ],
)
def test_images_no_model_applies_to_say_why(
    opened: Any, tmp_path: Path, kind: str, options: dict[str, Any], expected: str
) -> None:
    store, worker = opened()
    instance = put_dataset(store, make_dataset(kind, **options), tmp_path, f"{kind}.dcm")
    drain(worker)
    analysis = analysis_of(store.conn, instance)
    assert analysis["state"] == "no_model"
    assert analysis["reason"].startswith(expected)
    assert analysis["priority"] == "routine"
    assert findings_of(store.conn, instance) == []
    assert [row["detail"]["reason"] for row in audit_rows(store.conn, "analysis.no_model")] == [
        analysis["reason"]
    ]


def test_an_almost_blank_chest_is_held_back_not_scored(opened: Any, tmp_path: Path) -> None:
    store, worker = opened()
    ds = effusion_chest(seed=13, rows=512)
    noise = np.random.default_rng(0).integers(0, 3, size=(ds.Rows, ds.Columns))
    ds.PixelData = (np.full((ds.Rows, ds.Columns), 1800) + noise).astype(np.uint16).tobytes()
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction"):
        if keyword in ds:
            delattr(ds, keyword)
    instance = put_dataset(store, ds, tmp_path, "blank.dcm")
    drain(worker)
    analysis = analysis_of(store.conn, instance)
    assert (analysis["state"], analysis["priority"]) == ("held_back", "review")
    assert "blank" in analysis["reason"] and "check the image" in analysis["reason"]
    assert "retake" not in analysis["reason"]  # a statistical miss never asks for an exposure
    [finding] = findings_of(store.conn, instance)
    assert finding["state"] == "held_back" and "labels" not in finding["result"]
    study = store.conn.execute("SELECT triage FROM studies").fetchone()
    assert study["triage"] == "review"


def blank_chest(seed: int = 13) -> Any:
    """A chest radiograph whose pixels are almost flat: the plausibility check holds it back."""
    ds = effusion_chest(seed=seed, rows=512)
    return flattened(ds)


def test_a_held_back_chest_analysed_anyway_gets_marked_findings_and_triage(
    opened: Any, tmp_path: Path
) -> None:
    store, worker = opened()
    instance = put_dataset(store, blank_chest(), tmp_path, "blank.dcm")
    drain(worker)
    [held] = findings_of(store.conn, instance)
    assert held["state"] == "held_back"

    asked = held_back.request_analysis_anyway(store.conn, instance, "ui:tech1", 3)
    again = held_back.request_analysis_anyway(store.conn, instance, "ui:doc1", 3)
    assert asked.queued and not again.queued and again.job_id == asked.job_id
    [request] = audit_rows(store.conn, held_back.REQUESTED)
    assert (request["actor"], request["subject"]) == ("ui:tech1", f"instance:{instance}")
    assert request["at"].endswith("+00:00") and request["detail"]["job"] == asked.job_id
    assert request["detail"]["held_back_by"] == [
        {"model": held["model"], "version": held["version"], "model_sha256": held["model_sha256"]}
    ]
    assert "blank" in request["detail"]["reason"]

    assert drain(worker) == 3  # analysis, pictures and outputs: one set for both requests
    analysis = analysis_of(store.conn, instance)
    assert (analysis["state"], analysis["job_ref"]) == ("findings", asked.job_id)
    old, new = findings_of(store.conn, instance)
    assert old == held  # the held-back record stays as it was
    assert new["state"] == "findings" and len(new["result"]["labels"]) == 5
    assert new["result"]["outside_typical_input"] is True
    assert "almost blank" in new["result"]["plausibility_reasons"][0]
    study = store.conn.execute("SELECT triage, triage_reason FROM studies").fetchone()
    assert (study["triage"], study["triage_reason"]) == (new["priority"], new["summary"])
    inference = [row["detail"] for row in audit_rows(store.conn, "inference")]
    assert [d.get("outside_typical_input", False) for d in inference] == [False, True]

    with pytest.raises(Refused, match="not held back") as refused:
        held_back.request_analysis_anyway(store.conn, instance, "ui:tech1", 3)
    assert refused.value.key == "not_held_back"
    assert len(list(audit_rows(store.conn, held_back.REQUESTED))) == 1


def test_only_a_held_back_image_can_be_analysed_anyway(opened: Any, tmp_path: Path) -> None:
    store, worker = opened()
    normal = put_dataset(store, effusion_chest(seed=12, rows=512), tmp_path, "chest.dcm")
    with pytest.raises(Refused, match="not analysed, not held back"):
        held_back.request_analysis_anyway(store.conn, 999, "ui:tech1", 3)
    assert not held_back.request_analysis_anyway(store.conn, normal, "ui:tech1", 3).queued
    drain(worker)
    with pytest.raises(Refused, match="is findings, not held back"):
        held_back.request_analysis_anyway(store.conn, normal, "ui:tech1", 3)
    [finding] = findings_of(store.conn, normal)
    assert "outside_typical_input" not in finding["result"]
    assert list(audit_rows(store.conn, held_back.REQUESTED)) == []


def test_a_cine_loop_is_analysed_frame_by_frame_with_a_key_frame(
    opened: Any, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    copy_package(DEMO_MODELS / "demo-ultrasound-fluid", models / "us-all", frames="all")
    store, worker = opened(models={"dirs": [str(models)]})
    clip = make_ultrasound_clip(21, frames=8, fluid=True)
    instance = put_dataset(store, ultrasound_dataset(clip), tmp_path, "clip.dcm")
    drain(worker)
    assert analysis_of(store.conn, instance)["state"] == "findings"
    [finding] = findings_of(store.conn, instance)
    frames = finding["result"]["frames"]
    assert [f["frame"] for f in frames] == list(range(8))
    areas = [f["areas_mm2"]["fluid"] for f in frames]
    assert finding["key_frame"] == int(np.argmax(areas))
    truth = clip.fluid_areas_mm2[finding["key_frame"]]
    [mask] = finding["result"]["masks"]
    assert mask["area_mm2"] == pytest.approx(truth, rel=0.10)
    kinds = sorted(a["kind"] for a in artifacts_of(store.conn, finding["id"]))
    assert kinds == ["mask", "overlay"]


def test_a_failing_model_ends_failed_after_its_attempts_and_others_go_on(
    opened: Any, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    write_package(models / "broken", broken_manifest("PELVIS"), classifier_onnx)
    shutil.copytree(DEMO_MODELS / "demo-chest-xray", models / "chest")
    store, worker = opened(
        models={"dirs": [str(models)], "precision": "fp32"},
        jobs={"max_attempts": 2, "retry_delay_s": 0},
    )
    pelvis = put_dataset(store, cr_of("PELVIS"), tmp_path, "pelvis.dcm")
    chest = put_dataset(store, effusion_chest(), tmp_path, "chest.dcm")
    assert drain(worker) == 6  # pelvis twice, chest's analysis and pictures, outputs of both
    failed = analysis_of(store.conn, pelvis)
    assert failed["state"] == "failed" and "test-broken" in failed["reason"]
    job = store.conn.execute(
        "SELECT state, attempts, error FROM jobs WHERE instance_ref = ?", (pelvis,)
    ).fetchone()
    assert (job["state"], job["attempts"]) == ("failed", 2)
    assert job["error"] == failed["reason"]
    assert len(list(audit_rows(store.conn, "job.retry"))) == 1
    assert analysis_of(store.conn, chest)["state"] == "findings"


def test_triage_overrides_from_the_config(opened: Any, tmp_path: Path) -> None:
    override = {"label": "pleural_effusion", "priority": "routine"}
    store, worker = opened(triage={"overrides": [override]})
    instance = put_dataset(store, effusion_chest(), tmp_path, "cxr.dcm")
    drain(worker)
    [finding] = findings_of(store.conn, instance)
    assert positive_labels(finding) == {"pleural_effusion"}  # urgent by its manifest
    assert analysis_of(store.conn, instance)["priority"] == "routine"
    study = store.conn.execute("SELECT triage FROM studies").fetchone()
    assert study["triage"] == "routine"


def test_a_replaced_image_gets_new_findings_and_keeps_the_old(opened: Any, tmp_path: Path) -> None:
    store, worker = opened()
    first = effusion_chest(seed=14, rows=512)
    instance = put_dataset(store, first, tmp_path, "a.dcm")
    drain(worker)
    second = effusion_chest(seed=15, rows=512)
    second.SOPInstanceUID = first.SOPInstanceUID  # the modality re-sends a corrected image
    second.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    assert put_dataset(store, second, tmp_path, "b.dcm") == instance
    drain(worker)
    rows = findings_of(store.conn, instance)
    assert len(rows) == 2 and rows[0]["job_ref"] != rows[1]["job_ref"]
    assert analysis_of(store.conn, instance)["job_ref"] == rows[1]["job_ref"]


def test_the_heartbeat_keeps_the_lease_of_the_job_in_progress(opened: Any, tmp_path: Path) -> None:
    store, _ = opened()
    put_dataset(store, effusion_chest(seed=16, rows=256), tmp_path, "c.dcm")
    job = jobs.claim(store.conn, "beating", lease_s=0.3)
    assert job is not None
    heart = Heartbeat(store, "beating", lease_s=0.3)
    heart.watch(job.id)
    deadline = time.monotonic() + 30
    expires = store.conn.execute("SELECT lease_expires FROM jobs").fetchone()[0]
    while store.conn.execute("SELECT lease_expires FROM jobs").fetchone()[0] == expires:
        assert time.monotonic() < deadline, "the lease was never extended"
        time.sleep(0.02)
    heart.stop()
    assert jobs.reap_stale(store.conn, now=expires + 0.01) == 0  # still ours


@pytest.mark.parametrize(
    ("body_part", "description", "routed"),
    [
        ("", "RX TÓRAX PA", True),  # no BodyPartExamined: the description's word
        ("THORAX", "", True),  # a local word maps to the name the manifest lists
        ("", "Routine", False),
        ("HAND", "CHEST PA", False),  # BodyPartExamined wins over the description
    ],
)
def test_body_part_keywords_route_radiographs_to_the_chest_model(
    opened: Any, tmp_path: Path, body_part: str, description: str, routed: bool
) -> None:
    store, worker = opened()
    ds = cr_of(body_part)
    if not body_part:
        del ds.BodyPartExamined
    ds.SeriesDescription = description
    instance = put_dataset(store, ds, tmp_path, "cr.dcm")
    drain(worker)
    analysis = analysis_of(store.conn, instance)
    if routed:
        assert analysis["state"] != "no_model", analysis["reason"]
        assert {f["model"] for f in findings_of(store.conn, instance)} == {"demo-chest-xray"}
    else:
        assert analysis["state"] == "no_model"
        assert analysis["reason"].startswith("CR"), analysis["reason"]
        assert "no model for this body part" in analysis["reason"]
