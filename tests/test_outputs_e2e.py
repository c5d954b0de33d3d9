"""Results reaching the clinic's record, on the whole appliance: `appliance run` with Orthanc as
the PACS and DCMTK's storescp as a second archive, the demo images pushed with storescu.

What arrived is checked where the clinic would find it: Orthanc's REST API and the files it
stored, storescp's files; what the box meant to send is read from its store. The objects are
read back strictly, checked with dciodvfy and dsrdump, and their content compared with the
store's findings. A PACS outage and a crossed disk floor lose nothing and duplicate nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, EncapsulatedPDFStorage

from appliance.bench.harness.dicom import AE_TITLE as STORESCP_AE
from appliance.bench.harness.orthanc import Orthanc
from appliance.bench.peers import Receiver, run_storescp
from appliance.phantoms import chest_dataset, make_chest
from appliance.phantoms.demo import DemoItem, write_demo_data
from appliance.store import outbox
from appliance.store.results import ResultFiles

from conftest import needs_dcmtk, storescu, wait_for
from dicom_checks import dciodvfy, dsrdump, needs_dciodvfy, needs_dsrdump, read_strict
from outputs_e2e_fixtures import (
    CLINICIAN_NAME,
    PACS,
    Box,
    add_clinician,
    children,
    code_of,
    concept,
    content_items,
    destination,
    fetch,
    final_impression,
    holdings,
    needs_pdftotext,
    new_orthanc,
    output_row,
    outputs_of,
    pacs_destination,
    pdf_text,
    received_by_storescp,
    running_box,
    texts,
)

pytestmark = [needs_dcmtk, needs_dciodvfy, needs_dsrdump, needs_pdftotext]

PRESENT, ABSENT = ("SCT", "52101004"), ("SCT", "272519000")
FINDING, GROUP, AREA = ("DCM", "121071"), ("DCM", "125007"), ("SCT", "42798000")
SCORE, THRESHOLD, LOCAL = ("99APPLNC", "SCORE"), ("99APPLNC", "THRESHOLD"), "99APPLNC"
ALGORITHM_NAME, ALGORITHM_VERSION = ("DCM", "111001"), ("DCM", "111003")
ALGORITHM_PARAMETERS, IMPRESSION = ("DCM", "111002"), ("99APPLNC", "IMPRESSION")
CAUTION = "Demo model trained on synthetic images only. Not for clinical use."
MUELLER = "Müller^Jürgen"
EFFUSION_ONLY = {
    "pleural_effusion": True,
    "lung_nodule": False,
    "consolidation": False,
    "pneumothorax": False,
    "cardiomegaly": False,
}
CHEST_ROWS = 512  # the default 2048 differs only in pixel count


@dataclass
class Record:
    """One appliance that analysed the demo set and a non-ASCII patient's image, and sent
    the results to Orthanc (`pacs`) and to storescp (`archive`: reports and originals)."""

    box: Box
    orthanc: Orthanc
    archive: Receiver
    demo: list[DemoItem]
    mueller_uid: str
    folder: Path

    def path_of(self, kind: str) -> Path:
        (item,) = (item for item in self.demo if item.kind == kind)
        return item.path

    def source_uid(self, kind: str) -> str:
        return str(read_strict(self.path_of(kind)).SOPInstanceUID)

    def fetched(self, uid: str) -> Path:
        """The file Orthanc holds for `uid`, once it holds one."""
        wait_for(lambda: uid in self.orthanc.instance_uids(), what=f"{uid} in Orthanc")
        return fetch(self.orthanc, uid, self.folder / "fetched")


def mueller_chest(folder: Path) -> tuple[Path, str]:
    """A chest radiograph of a patient whose name needs UTF-8 (ISO_IR 192)."""
    phantom = make_chest(700_123, rows=CHEST_ROWS, findings=EFFUSION_ONLY)
    ds = chest_dataset(
        phantom, patient_id="MUELLER01", patient_name=MUELLER, study_key="outputs-e2e/mueller"
    )
    ds.SpecificCharacterSet = "ISO_IR 192"
    path = folder / "mueller.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SOPInstanceUID)


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Record]:
    folder = tmp_path_factory.mktemp("record")
    demo = write_demo_data(folder / "demo", chest_rows=CHEST_ROWS)
    mueller, mueller_uid = mueller_chest(folder)
    orthanc = new_orthanc(folder / "orthanc")
    orthanc.start()
    try:
        with run_storescp(folder / "archive") as archive:
            archive_to = destination(
                "archive", archive.port, STORESCP_AE, send=["report", "images"], when="findings"
            )
            with running_box(folder, [pacs_destination(orthanc), archive_to]) as box:
                add_clinician(box.settings)
                box.push(*(item.path for item in demo), mueller)
                box.wait_settled()
                yield Record(box, orthanc, archive, demo, mueller_uid, folder)
    finally:
        orthanc.stop()


# ---- 1. every analysed image's objects reach the PACS, and say what the store found ----------


def test_every_analysed_image_reaches_the_pacs_as_sr_heatmaps_and_report(record: Record) -> None:
    conn, orthanc = record.box.conn, record.orthanc
    made = outputs_of(conn)
    wait_for(
        lambda: set(orthanc.instance_uids()) >= {row["sop_instance_uid"] for row in made},
        what="every object made in Orthanc",
        state=lambda: (orthanc.count_instances(), len(made)),
    )
    held = holdings(orthanc)
    assert Counter((h.study_uid, h.sop_class_uid) for h in held) == Counter(
        (row["study_uid"], row["sop_class_uid"]) for row in made
    )
    uids = [h.sop_instance_uid for h in held]
    assert len(uids) == len(set(uids)) == orthanc.count_instances()
    assert sorted(uids) == sorted(record.box.queued_uids(PACS))
    analysed = conn.execute("SELECT instance_ref FROM analyses").fetchall()
    assert len(analysed) == len(record.demo) + 1
    for (instance,) in analysed:
        first = Counter(
            r["kind"] for r in made if r["instance_ref"] == instance and r["revision"] == 1
        )
        overlays, positive = pictures_and_positives(conn, instance)
        assert (first["sr"], first["report"], first["heatmap"]) == (1, 1, overlays), instance
        assert bool(overlays) == positive, instance  # heatmaps exactly where something was found


def pictures_and_positives(conn: sqlite3.Connection, instance: int) -> tuple[int, bool]:
    overlays = conn.execute(
        "SELECT COUNT(*) FROM artifacts a JOIN findings f ON f.id = a.finding_ref"
        " WHERE f.instance_ref = ? AND a.kind = 'overlay'",
        (instance,),
    ).fetchone()[0]
    results = [
        json.loads(row[0])
        for row in conn.execute("SELECT result FROM findings WHERE instance_ref = ?", (instance,))
    ]
    return overlays, any(result.get("positives") for result in results)


def findings_of(conn: sqlite3.Connection, source_uid: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT f.* FROM findings f JOIN instances i ON i.id = f.instance_ref"
        " WHERE i.sop_instance_uid = ? ORDER BY f.id",
        (source_uid,),
    ).fetchall()
    return [{**dict(row), "result": json.loads(row["result"])} for row in rows]


@pytest.mark.parametrize(
    "kind", ["chest-dx-effusion", "chest-cr-normal", "us-fluid", "us-no-fluid", "us-cine-fluid"]
)
def test_the_sr_in_the_pacs_says_what_the_store_found(record: Record, kind: str) -> None:
    source = record.source_uid(kind)
    conn = record.box.conn
    path = record.fetched(output_row(conn, source, "sr")["sop_instance_uid"])
    ds = read_strict(path)
    assert ds.SOPClassUID == Comprehensive3DSRStorage
    assert dciodvfy(path)[0] == []
    assert source in evidence_uids(ds)
    groups = [item for item in content_items(ds) if concept(item) == GROUP]
    [finding] = findings_of(conn, source)
    check_algorithm(groups, finding)
    result = finding["result"]
    frames = int(read_strict(record.path_of(kind)).get("NumberOfFrames", 1))
    image = (source, str(result["frame"] + 1) if frames > 1 else "")  # the key frame, 1-based
    for label in result["labels"]:
        check_label(group_of(groups, label), label, image)
    for mask in result["masks"]:
        check_mask(group_of(groups, mask), mask, image)
    assert len(groups) == len(result["labels"]) + len(result["masks"])
    observer = [item for item in content_items(ds) if concept(item) == ("DCM", "121005")]
    assert [code_of(item) for item in observer] == [("DCM", "121007")]  # a device
    rendered = dsrdump(path)
    assert finding["model"] in rendered and source in rendered


def evidence_uids(ds: Dataset) -> set[str]:
    found = set()
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in ds.get(keyword, []):
            for series in study.ReferencedSeriesSequence:
                found |= {
                    str(item.ReferencedSOPInstanceUID) for item in series.ReferencedSOPSequence
                }
    return found


def group_of(groups: list[Dataset], item: dict[str, Any]) -> Dataset:
    """The measurement group of a label or mask, by its finding's code."""
    code = item["code"]
    expected = (code["scheme"], code["value"]) if code else (LOCAL, item["label"])
    [group] = [g for g in groups if [code_of(c) for c in children(g, FINDING)] == [expected]]
    return group


def check_algorithm(groups: list[Dataset], finding: dict[str, Any]) -> None:
    """Every group names the model, its version and its SHA-256 (TID 4019)."""
    assert groups
    for group in groups:
        assert [c.TextValue for c in children(group, ALGORITHM_NAME)] == [finding["model"]]
        assert [c.TextValue for c in children(group, ALGORITHM_VERSION)] == [finding["version"]]
        parameters = [c.TextValue for c in children(group, ALGORITHM_PARAMETERS)]
        assert f"sha256={finding['model_sha256']}" in parameters


def presence(group: Dataset) -> tuple[str, str]:
    [evaluation] = [
        item
        for item in group.ContentSequence
        if item.ValueType == "CODE" and concept(item) != FINDING
    ]
    return code_of(evaluation)


def number(group: Dataset, name: tuple[str, str]) -> float:
    [item] = children(group, name)
    return float(item.MeasuredValueSequence[0].NumericValue)


def check_label(group: Dataset, label: dict[str, Any], source: tuple[str, str]) -> None:
    assert presence(group) == (PRESENT if label["positive"] else ABSENT)
    assert number(group, SCORE) == pytest.approx(label["score"], abs=1e-6)
    assert number(group, THRESHOLD) == pytest.approx(label["threshold"], abs=1e-6)
    assert referenced(group) == [source]


def check_mask(group: Dataset, mask: dict[str, Any], source: tuple[str, str]) -> None:
    assert presence(group) == (PRESENT if mask["positive"] else ABSENT)
    assert referenced(group) == [source]
    if not mask["positive"]:
        assert children(group, AREA) == []
        return
    assert number(group, AREA) == pytest.approx(mask["area_mm2"], abs=1e-3)
    [unit] = children(group, AREA)[0].MeasuredValueSequence[0].MeasurementUnitsCodeSequence
    assert (unit.CodingSchemeDesignator, unit.CodeValue) == ("UCUM", "mm2")
    [region] = [item for item in group.ContentSequence if item.ValueType == "SCOORD"]
    points = [float(v) for v in region.GraphicData]
    assert region.GraphicType == "POLYLINE" and points[:2] == points[-2:]  # closed


def referenced(group: Dataset) -> list[tuple[str, str]]:
    """(SOP Instance UID, frame number or "") of the IMAGE items under a group: its source,
    or its region's."""
    return [
        (str(ref.ReferencedSOPInstanceUID), str(ref.get("ReferencedFrameNumber", "")))
        for item in content_items(group)
        if item.ValueType == "IMAGE"
        for ref in item.ReferencedSOPSequence
    ]


def test_every_object_in_the_pacs_passes_dciodvfy(record: Record) -> None:
    problems = {}
    for row in outputs_of(record.box.conn):
        path = record.fetched(row["sop_instance_uid"])
        read_strict(path)
        errors, _ = dciodvfy(path)
        if errors:
            problems[f"{row['kind']} {row['label']} of {row['source_uid']}"] = errors
    assert problems == {}


@pytest.mark.parametrize("kind", ["chest-cr-pneumothorax", "us-fluid", "cr-hand-no-model"])
def test_the_pdf_in_the_pacs_reads_as_the_report(record: Record, kind: str) -> None:
    source = record.source_uid(kind)
    (item,) = (item for item in record.demo if item.kind == kind)
    row = output_row(record.box.conn, source, "report")
    path = record.fetched(row["sop_instance_uid"])
    ds = read_strict(path)
    assert ds.SOPClassUID == EncapsulatedPDFStorage and dciodvfy(path)[0] == []
    text = " ".join(pdf_text(ds, record.folder / "pdf").split())
    patient = ", ".join(str(read_strict(item.path).PatientName).split("^"))
    assert patient in text
    for finding in findings_of(record.box.conn, source):
        result = finding["result"]
        assert CAUTION in text
        for entry in [*result["labels"], *result["masks"]]:
            assert entry["display"] in text
    if item.expected_model == "none":
        assert CAUTION not in text and "No installed model applies" in text


# ---- 2. a patient's name in UTF-8 --------------------------------------------------------------


def test_a_non_ascii_patient_name_reaches_the_pacs_intact(record: Record) -> None:
    conn, source = record.box.conn, record.mueller_uid
    made = [row for row in outputs_of(conn) if row["source_uid"] == source]
    assert {row["kind"] for row in made} == {"sr", "heatmap", "report"}
    wait_for(
        lambda: {row["sop_instance_uid"] for row in made} <= set(record.orthanc.instance_uids())
    )
    for row in made:
        ds = read_strict(record.fetched(row["sop_instance_uid"]))
        assert ds.SpecificCharacterSet == "ISO_IR 192", row["kind"]
        assert str(ds.PatientName) == MUELLER, row["kind"]
        if row["kind"] == "report":
            assert "Müller, Jürgen" in pdf_text(ds, record.folder / "pdf")
    patients = record.orthanc.post(
        "/tools/find", {"Level": "Patient", "Query": {"PatientID": "MUELLER01"}, "Expand": True}
    )
    assert [p["MainDicomTags"]["PatientName"] for p in patients] == [MUELLER]


# ---- 3. a final impression makes a second, verified revision -----------------------------------


def test_a_final_impression_reaches_the_pacs_as_a_verified_revision(record: Record) -> None:
    conn, source = record.box.conn, record.source_uid("chest-cr-pneumothorax")
    first = output_row(conn, source, "sr")
    study = conn.execute("SELECT study_ref FROM outputs WHERE id = ?", (first["id"],)).fetchone()[0]
    text = "Pneumothorax bestätigt; Drainage empfohlen."
    saved = final_impression(record.box.settings, study, text)
    assert saved["final"] is True
    second = wait_for(
        lambda: second_sr(conn, source),
        what="the second revision's SR sent",
        state=record.box.jobs,
    )
    ds = read_strict(record.fetched(second["sop_instance_uid"]))
    predecessors = [
        item.ReferencedSOPInstanceUID
        for study_item in ds.PredecessorDocumentsSequence
        for series in study_item.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    ]
    assert predecessors == [first["sop_instance_uid"]]
    assert (ds.VerificationFlag, ds.PreliminaryFlag) == ("VERIFIED", "FINAL")
    assert "Ñúñez" in str(ds.VerifyingObserverSequence[0].VerifyingObserverName)
    impressions = [item.TextValue for item in content_items(ds) if concept(item) == IMPRESSION]
    assert impressions == [text]
    assert CLINICIAN_NAME in " ".join(texts(ds))
    assert dciodvfy(record.fetched(second["sop_instance_uid"]))[0] == []
    held = record.orthanc.instance_uids()
    assert first["sop_instance_uid"] in held and second["sop_instance_uid"] in held
    kept = read_strict(record.fetched(first["sop_instance_uid"]))  # Orthanc holds both
    assert kept.VerificationFlag == "UNVERIFIED"
    report = output_row(conn, source, "report", revision=2)
    printed = pdf_text(read_strict(record.fetched(report["sop_instance_uid"])), record.folder)
    assert text in " ".join(printed.split())


def second_sr(conn: sqlite3.Connection, source: str) -> sqlite3.Row | None:
    row = conn.execute(
        "SELECT o.* FROM outputs o JOIN instances i ON i.id = o.instance_ref"
        " JOIN deliveries d ON d.output_ref = o.id WHERE i.sop_instance_uid = ?"
        " AND o.kind = 'sr' AND o.revision = 2 AND d.destination = ? AND d.state = 'sent'",
        (source, PACS),
    ).fetchone()
    return row if isinstance(row, sqlite3.Row) else None


# ---- 6. a second destination that wants reports and originals only -----------------------------


def test_a_second_destination_gets_reports_and_originals_but_no_sr(record: Record) -> None:
    box = record.box
    box.wait_sent("archive")
    received = received_by_storescp(record.archive.accepted)
    assert sorted(received) == sorted(box.queued_uids("archive"))
    sources = {str(read_strict(item.path).SOPInstanceUID) for item in record.demo}
    sources.add(record.mueller_uid)
    reports = {
        row["sop_instance_uid"]
        for row in outputs_of(box.conn)
        if row["kind"] == "report" and row["revision"] == 1
    }
    assert sources <= set(received) and reports <= set(received)
    assert set(received) - sources - reports <= {
        row["sop_instance_uid"] for row in outputs_of(box.conn) if row["kind"] == "report"
    }  # later revisions' reports, when a final impression came first
    assert Comprehensive3DSRStorage not in received.values()
    assert {received[uid] for uid in reports} == {EncapsulatedPDFStorage}


# ---- 4. the PACS away, then back ---------------------------------------------------------------


def demo_subset(folder: Path) -> list[Path]:
    kinds = ("chest-dx-effusion", "chest-dx-normal", "us-fluid")
    items = write_demo_data(folder, chest_rows=CHEST_ROWS)
    return [item.path for item in items if item.kind in kinds]


def waiting_for_pacs(box: Box, orthanc: Orthanc) -> None:
    """Every delivery to the PACS waits, tried at least once, saying it cannot reach it."""
    reason = f"cannot reach 127.0.0.1:{orthanc.dicom_port}"

    def waiting() -> bool:
        rows = box.deliveries(PACS)
        return bool(rows) and all(
            r["state"] == "waiting" and r["attempts"] >= 1 and r["last_reason"].startswith(reason)
            for r in rows
        )

    box.wait_settled()
    wait_for(waiting, what="deliveries waiting for the PACS", state=lambda: box.states(PACS))


def test_a_pacs_outage_delivers_everything_exactly_once(orthanc: Orthanc, tmp_path: Path) -> None:
    orthanc.stop()
    with running_box(tmp_path, [pacs_destination(orthanc)]) as box:
        box.push(*demo_subset(tmp_path / "demo"))
        waiting_for_pacs(box, orthanc)
        status = outbox.destination_status(box.conn, PACS)
        assert status is not None and status["reachable"] == 0
        orthanc.start()  # the same ports and storage
        box.wait_sent(PACS)
        held = orthanc.instance_uids()
        assert len(held) == len(set(held)) == orthanc.count_instances()
        assert sorted(held) == sorted(box.queued_uids(PACS))
        sent = Counter(
            row["subject"]
            for row in box.conn.execute("SELECT subject FROM audit WHERE action = 'send.sent'")
        )
        assert sent == Counter(f"object:{uid}" for uid in held)  # one success each


# ---- 5. the disk floor removes nothing that still waits ----------------------------------------


def test_a_crossed_disk_floor_removes_no_object_that_waits_for_the_pacs(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    """The floor refuses new work (the receiver answers out of resources; the outputs job
    cannot write); it deletes nothing. The only deletion, the sweep of files no row names,
    runs at the worker's start and here once more with no age limit: the waiting objects stay,
    and reach the PACS once it is back."""
    orthanc.stop()
    files = demo_subset(tmp_path / "demo")
    with running_box(tmp_path, [pacs_destination(orthanc)]) as box:
        box.push(*files[:2])
        waiting_for_pacs(box, orthanc)
        waiting = outbox.undelivered_files(box.conn)
        assert waiting and len(waiting) == len(box.queued_uids(PACS))
        outputs = ResultFiles(box.proc.paths.outputs, suffix=".dcm")
        instances = box.conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    stale, fresh = orphan(outputs, age_s=7200), orphan(outputs, age_s=0)
    floor_mb = shutil.disk_usage(tmp_path).free // 2**20 + 1024
    with running_box(
        tmp_path, [pacs_destination(orthanc)], storage={"free_space_floor_mb": floor_mb}
    ) as box:
        refused = storescu(("127.0.0.1", box.proc.port), files[2], options=["-v"])
        assert "Refused: OutOfResources" in refused.stderr  # 0xA700, before anything is lost
        assert box.conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == instances
        assert not stale.exists()  # the worker's start-up sweep ran
        outputs.sweep_unreferenced(outbox.output_files(box.conn), older_than_s=0)
        assert not fresh.exists()  # the sweep, with no age limit
        assert all(outputs.path_of(name).is_file() for name in waiting)
        assert outbox.undelivered_files(box.conn) == waiting
        orthanc.start()
        box.wait_sent(PACS)
        assert sorted(orthanc.instance_uids()) == sorted(box.queued_uids(PACS))


def orphan(outputs: ResultFiles, age_s: float) -> Path:
    """An object file no row names (as a crash before its commit leaves), `age_s` old."""
    [name] = outputs.write_all([b"left by a crash"])
    path = outputs.path_of(name)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path
