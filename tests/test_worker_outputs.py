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

from appliance.phantoms import chest_dataset, make_chest
from appliance.samples import make_dataset
from appliance.store import Store, feedback, jobs, open_store, outbox, users
from appliance.worker import outputs

from conftest import make_settings
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
