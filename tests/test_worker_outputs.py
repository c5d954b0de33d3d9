"""The outputs job on a real store with the real demo models: after findings and pictures, an
analysed image gets a TID 1500 SR, heatmap Secondary Captures and an Encapsulated PDF report,
each queued for the destinations that want it; the same inputs never make a second revision,
and a final impression makes one that references the first."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from appliance.phantoms import chest_dataset, make_chest
from appliance.samples import make_dataset
from appliance.store import Store, audit, feedback, jobs, open_store, outbox, users
from appliance.store.db import utc_now
from appliance.worker import outputs

from conftest import make_settings
from outputs_e2e_fixtures import texts
from worker_fixtures import drain, open_worker, put_dataset

EFFUSION_ONLY = {
    "pleural_effusion": True,
    "lung_nodule": False,
    "consolidation": False,
    "pneumothorax": False,
    "cardiomegaly": False,
}
DESTINATIONS = [
    {"name": "pacs", "host": "127.0.0.1", "port": 104, "called_ae_title": "PACS"},
    {
        "name": "archive",
        "host": "127.0.0.1",
        "port": 105,
        "called_ae_title": "ARCHIVE",
        "send": ["report", "images"],
        "when": "final",
    },
    {
        "name": "usb-desk",
        "host": "127.0.0.1",
        "port": 106,
        "called_ae_title": "DESK",
        "when": "manual",
    },
]


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[tuple[Store, Any]]:
    settings = make_settings(
        tmp_path, jobs={"pictures_quiet_s": 0}, destinations=DESTINATIONS, site_name="Río Clinic"
    )
    store = open_store(settings)
    yield store, open_worker(store, settings)
    store.close()


def effusion_chest() -> pydicom.Dataset:
    ds = chest_dataset(make_chest(11, rows=512, findings=EFFUSION_ONLY), modality="DX")
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Jürgen"
    return ds


def objects_of(conn: sqlite3.Connection, instance: int) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT * FROM outputs WHERE instance_ref = ? ORDER BY revision, id", (instance,)
    ).fetchall()


def deliveries(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    rows = conn.execute(
        "SELECT d.destination, COALESCE(o.kind, 'image') AS kind, d.state FROM deliveries d"
        " LEFT JOIN outputs o ON o.id = d.output_ref ORDER BY d.destination, d.id"
    ).fetchall()
    return [(r["destination"], r["kind"], r["state"]) for r in rows]


def test_findings_become_sr_heatmaps_and_report_queued_for_findings_destinations(
    opened: tuple[Store, Any], tmp_path: Path
) -> None:
    store, worker = opened
    instance = put_dataset(store, effusion_chest(), tmp_path, "cxr.dcm")
    drain(worker)
    made = objects_of(store.conn, instance)
    kinds = sorted({row["kind"] for row in made})
    assert kinds == ["heatmap", "report", "sr"]
    assert {row["revision"] for row in made} == {1}
    for row in made:
        ds = pydicom.dcmread(store.outputs.path_of(row["file_name"]))
        assert ds.SOPInstanceUID == row["sop_instance_uid"]
        assert ds.StudyInstanceUID == effusion_chest().StudyInstanceUID
        assert str(ds.PatientName) == "Müller^Jürgen"
    # Only `pacs` wants findings at once: its three kinds, nothing for the others yet.
    queued = deliveries(store.conn)
    assert {d for d, _, _ in queued} == {"pacs"}
    assert sorted({k for _, k, _ in queued}) == ["heatmap", "report", "sr"]
    assert all(state == "waiting" for _, _, state in queued)
    audit = store.conn.execute("SELECT COUNT(*) FROM audit WHERE action = 'outputs.made'")
    assert audit.fetchone()[0] == 1


def test_the_same_inputs_never_make_a_second_revision(
    opened: tuple[Store, Any], tmp_path: Path
) -> None:
    store, worker = opened
    instance = put_dataset(store, effusion_chest(), tmp_path, "cxr.dcm")
    drain(worker)
    first = [row["sop_instance_uid"] for row in objects_of(store.conn, instance)]
    waiting = deliveries(store.conn)
    with store.conn:
        outbox.request_outputs(store.conn, 1, "findings", 3)
    drain(worker)
    assert [row["sop_instance_uid"] for row in objects_of(store.conn, instance)] == first
    assert deliveries(store.conn) == waiting


def test_building_twice_gives_the_same_uids(opened: tuple[Store, Any], tmp_path: Path) -> None:
    """A job cut off between writing its files and recording them is done again: the objects
    it makes then are the same ones, UID for UID."""
    store, worker = opened
    instance = put_dataset(store, effusion_chest(), tmp_path, "cxr.dcm")
    drain(worker)
    store.conn.execute("DELETE FROM deliveries")
    store.conn.execute("DELETE FROM outputs")
    plan = outputs.plan(store, instance, "findings")
    assert plan is not None and not plan.reuse
    once = [b.record.sop_instance_uid for b in outputs.build(store, store.settings, plan)]
    again = [b.record.sop_instance_uid for b in outputs.build(store, store.settings, plan)]
    assert once == again and len(set(once)) == len(once)


def test_a_final_impression_makes_a_revision_that_replaces_the_first(
    opened: tuple[Store, Any], tmp_path: Path
) -> None:
    store, worker = opened
    instance = put_dataset(store, effusion_chest(), tmp_path, "cxr.dcm")
    drain(worker)
    first = {row["kind"]: row for row in objects_of(store.conn, instance)}
    clinician = users.create_user(store.conn, "dr", "Dr Ñúñez", "clinician", "246810", "test")
    study = store.conn.execute("SELECT id FROM studies").fetchone()[0]
    with store.conn:
        feedback.add_impression(store.conn, study, "Effusion confirmé.", True, clinician.id, "dr")
        outbox.request_outputs(store.conn, study, "final", 3)
    drain(worker)
    second = [row for row in objects_of(store.conn, instance) if row["revision"] == 2]
    assert sorted(row["kind"] for row in second if row["kind"] != "heatmap") == ["report", "sr"]
    sr_row = next(row for row in second if row["kind"] == "sr")
    assert sr_row["replaces_ref"] == first["sr"]["id"]
    sr = pydicom.dcmread(store.outputs.path_of(sr_row["file_name"]))
    predecessors = [
        item.ReferencedSOPInstanceUID
        for study_item in sr.PredecessorDocumentsSequence
        for series in study_item.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    ]
    assert predecessors == [first["sr"]["sop_instance_uid"]]
    assert sr.VerificationFlag == "VERIFIED"
    # `pacs` (findings) gets the new revision; `archive` (final) its report and the original.
    queued = deliveries(store.conn)
    assert ("archive", "report", "waiting") in queued and ("archive", "image", "waiting") in queued
    assert not any(k in ("sr", "heatmap") for d, k, _ in queued if d == "archive")
    pacs_srs = [k for d, k, _ in queued if d == "pacs" and k == "sr"]
    assert len(pacs_srs) == 2
    assert not any(d == "usb-desk" for d, _, _ in queued)


def test_send_again_queues_a_manual_destination_and_resends_what_was_sent(
    opened: tuple[Store, Any], tmp_path: Path
) -> None:
    store, worker = opened
    put_dataset(store, effusion_chest(), tmp_path, "cxr.dcm")
    drain(worker)
    store.conn.execute("UPDATE deliveries SET state = 'sent'")
    with store.conn:
        outbox.request_outputs(store.conn, 1, "manual:usb-desk", 3)
        outbox.request_outputs(store.conn, 1, "manual:pacs", 3)
    drain(worker)
    queued = deliveries(store.conn)
    assert {(k, s) for d, k, s in queued if d == "usb-desk"} == {
        ("sr", "waiting"),
        ("heatmap", "waiting"),
        ("report", "waiting"),
    }
    assert all(s == "waiting" for d, _, s in queued if d == "pacs")
    # Each destination's objects waiting anew have their audit row, beside the UI's request.
    newest_last = reversed(audit.recent(store.conn, "send.queued"))
    said = {row["detail"]["destination"]: row["detail"] for row in newest_last}
    assert (said["usb-desk"]["objects"], said["usb-desk"]["purpose"]) == (3, "manual:usb-desk")
    assert (said["pacs"]["objects"], said["pacs"]["purpose"]) == (3, "manual:pacs")


def test_an_image_no_model_applies_to_gets_an_sr_and_a_report_only(
    opened: tuple[Store, Any], tmp_path: Path
) -> None:
    store, worker = opened
    instance = put_dataset(store, make_dataset("ct"), tmp_path, "ct.dcm")
    drain(worker)
    made = objects_of(store.conn, instance)
    assert sorted(row["kind"] for row in made) == ["report", "sr"]
    state = store.conn.execute("SELECT state FROM analyses").fetchone()[0]
    assert state == "no_model"
    assert (
        store.conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE kind = ? AND state != 'done'", (jobs.OUTPUTS,)
        ).fetchone()[0]
        == 0
    )


def finalise(store: Store) -> None:
    """A clinician's final impression of the (only) study; it queues the final outputs jobs."""
    clinician = users.create_user(store.conn, "dr", "Dr Ñúñez", "clinician", "246810", "test")
    study = store.conn.execute("SELECT id FROM studies").fetchone()[0]
    feedback.add_impression(store.conn, study, "Effusion confirmé.", True, clinician.id, "dr")


def test_pictures_drawn_after_the_final_word_reach_the_final_destinations_too(
    opened: tuple[Store, Any], tmp_path: Path
) -> None:
    """A clinician finalises before the heatmaps are drawn (they wait for a quiet moment):
    the revision made with them goes to `archive` (final) too, not only to `pacs`."""
    store, worker = opened
    instance = put_dataset(store, effusion_chest(), tmp_path, "cxr.dcm")
    assert worker.run_once()  # the analysis alone: its pictures job waits
    finalise(store)
    drain(worker)  # the final outputs job, then the pictures and their outputs job
    made = objects_of(store.conn, instance)
    assert [row["revision"] for row in made if row["kind"] == "heatmap"] == [2]
    latest_report = next(r for r in made if r["kind"] == "report" and r["revision"] == 2)
    archive = store.conn.execute(
        "SELECT output_ref FROM deliveries WHERE destination = 'archive' AND output_ref IS NOT NULL"
    ).fetchall()
    assert latest_report["id"] in {row[0] for row in archive}


def test_an_image_that_arrives_after_the_final_word_waits_for_one_of_its_own(
    opened: tuple[Store, Any], tmp_path: Path
) -> None:
    store, worker = opened
    seen = put_dataset(store, effusion_chest(), tmp_path, "seen.dcm")
    drain(worker)
    finalise(store)
    drain(worker)
    later = effusion_chest()
    later.SOPInstanceUID = generate_uid()  # the same study, another image
    unseen = put_dataset(store, later, tmp_path, "unseen.dcm")
    drain(worker)
    assert objects_of(store.conn, unseen)  # made, and queued for `pacs` (findings) ...
    archive = store.conn.execute(
        "SELECT COALESCE(o.instance_ref, d.original_ref) FROM deliveries d"
        " LEFT JOIN outputs o ON o.id = d.output_ref WHERE d.destination = 'archive'"
    ).fetchall()
    assert {row[0] for row in archive} == {seen}  # ... but not for `archive` (final)
    # Nobody signed for the later image: its report is not made out as signed by anyone.
    signed = sr_of(store, seen)
    assert signed.VerificationFlag == "VERIFIED"
    assert "Effusion confirmé." in texts(signed)
    unsigned = sr_of(store, unseen)
    assert unsigned.VerificationFlag == "UNVERIFIED"
    assert "Effusion confirmé." not in texts(unsigned)


def sr_of(store: Store, instance: int) -> pydicom.Dataset:
    """The SR of the image's newest revision."""
    [row] = [row for row in outbox.latest_outputs(store.conn, instance) if row["kind"] == "sr"]
    return pydicom.dcmread(store.outputs.path_of(row["file_name"]))


def test_inputs_back_as_an_older_revision_had_them_get_uids_of_their_own(
    opened: tuple[Store, Any], tmp_path: Path
) -> None:
    store, worker = opened
    instance = put_dataset(store, effusion_chest(), tmp_path, "cxr.dcm")
    drain(worker)
    first = {row["sop_instance_uid"] for row in objects_of(store.conn, instance)}
    # As if revision 1 reported other inputs, and today's are back to what it replaced.
    store.conn.execute("UPDATE outputs SET fingerprint = 'other inputs'")
    with store.conn:
        outbox.request_outputs(store.conn, 1, "findings", 3)
    drain(worker)
    second = [row for row in objects_of(store.conn, instance) if row["revision"] == 2]
    assert second and not first & {row["sop_instance_uid"] for row in second}
    failed = store.conn.execute("SELECT error FROM jobs WHERE state = 'failed'").fetchall()
    assert [row[0] for row in failed] == []


def test_a_commit_that_fails_leaves_no_files_behind(
    opened: tuple[Store, Any], tmp_path: Path
) -> None:
    store, worker = opened
    instance = put_dataset(store, effusion_chest(), tmp_path, "cxr.dcm")
    drain(worker)
    finalise(store)
    job = jobs.claim(store.conn, worker.owner, 60)
    assert job is not None and job.kind == jobs.OUTPUTS
    plan = outputs.plan(store, instance, job.purpose)
    assert plan is not None and not plan.reuse
    built = outputs.build(store, store.settings, plan)
    # Something already holds the new SR's UID: recording the revision fails.
    store.conn.execute(
        "INSERT INTO outputs (instance_ref, study_ref, kind, label, sop_class_uid,"
        " sop_instance_uid, series_instance_uid, file_name, size_bytes, revision, fingerprint,"
        " purpose, made_at) SELECT instance_ref, study_ref, kind, label, sop_class_uid, ?,"
        " series_instance_uid, 'zz/taken.dcm', 0, 9, 'x', 'x', ? FROM outputs LIMIT 1",
        (built[0].record.sop_instance_uid, utc_now()),
    )
    with pytest.raises(sqlite3.IntegrityError):
        outputs.commit(store, job, worker.owner, plan, built, "worker")
    on_disk = {f"{p.parent.name}/{p.name}" for p in store.outputs.root.glob("*/*.dcm")}
    assert on_disk == outbox.output_files(store.conn) - {"zz/taken.dcm"}


def test_outputs_wait_while_images_arrive_so_that_each_gets_its_findings_first(
    opened: tuple[Store, Any], tmp_path: Path
) -> None:
    store, worker = opened
    put_dataset(store, make_dataset("ct", seed=1), tmp_path, "ct-1.dcm")
    assert worker.run_once()  # its analysis: no model applies, so its outputs job comes at once
    put_dataset(store, make_dataset("ct", seed=2), tmp_path, "ct-2.dcm")
    first = jobs.claim(store.conn, "w", 60, quiet_s=60)
    assert first is not None and first.kind == jobs.ANALYSE
    assert jobs.claim(store.conn, "w", 60, quiet_s=60) is None  # an image has just arrived
    assert jobs.pictures_waiting(store.conn)  # so the worker looks again after a quiet moment
    later = jobs.claim(store.conn, "w", 60, quiet_s=0)
    assert later is not None and later.kind == jobs.OUTPUTS


def test_a_corrected_resend_into_another_study_is_taken_after_its_objects_were_made(
    opened: tuple[Store, Any], tmp_path: Path
) -> None:
    """The objects made of the first version keep their study; the corrected image moves."""
    store, worker = opened
    first = effusion_chest()
    instance = put_dataset(store, first, tmp_path, "cxr.dcm")
    drain(worker)
    corrected = effusion_chest()
    corrected.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.99"
    corrected.PatientID = "CORRECTED-1"
    again = put_dataset(store, corrected, tmp_path, "corrected.dcm")
    assert again == instance
    studies = {row[0] for row in store.conn.execute("SELECT study_uid FROM studies")}
    assert studies == {first.StudyInstanceUID, corrected.StudyInstanceUID}
    drain(worker)
    revisions = [row["revision"] for row in objects_of(store.conn, instance) if row["kind"] == "sr"]
    assert revisions == [1, 2]


def test_an_object_that_is_no_image_gets_no_report(
    opened: tuple[Store, Any], tmp_path: Path
) -> None:
    """An RT plan (pydicom's own test file) is stored and its analysis says no model; a report
    on it would say nothing, so none is made."""
    from pydicom.data import get_testdata_file

    store, worker = opened
    plan = get_testdata_file("rtplan.dcm")
    assert plan is not None
    instance = put_dataset(store, pydicom.dcmread(plan), tmp_path, "rtplan.dcm")
    drain(worker)
    assert objects_of(store.conn, instance) == []
    states = store.conn.execute("SELECT kind, state FROM jobs ORDER BY id").fetchall()
    assert [tuple(row) for row in states] == [("analyse", "done"), ("outputs", "done")]


def test_a_mask_outline_is_called_an_outline_not_a_heatmap(
    opened: tuple[Store, Any], tmp_path: Path
) -> None:
    import subprocess

    from appliance.phantoms.demo import write_demo_data

    store, worker = opened
    [fluid] = [i for i in write_demo_data(tmp_path / "demo") if i.path.name == "08-us-fluid.dcm"]
    instance = put_dataset(store, pydicom.dcmread(fluid.path), tmp_path, "us.dcm")
    drain(worker)
    made = {row["kind"]: row for row in objects_of(store.conn, instance)}
    picture = pydicom.dcmread(store.outputs.path_of(made["heatmap"]["file_name"]))
    assert str(picture.DerivationDescription).startswith("Outline of ")
    report = pydicom.dcmread(store.outputs.path_of(made["report"]["file_name"]))
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(bytes(report.EncapsulatedDocument)[: report.EncapsulatedDocumentLength])
    text = subprocess.run(
        ["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    assert "Outlined:" in text and "With heatmap" not in text
