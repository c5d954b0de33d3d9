"""What a user sees and does about the clinic's record: the sending state of a study's objects
per destination in plain words, "Send again", the PDF report, a final impression that queues
the record's rebuild, and the destinations on the admin's health page.

The store is seeded directly, as the worker and the sender would have left it: a chest image
ingested for real, its analysis saved with a heatmap, the objects written as real DICOM files
(an SR, a heatmap Secondary Capture, an Encapsulated PDF around a PDF from fpdf2) and recorded
in `outputs`, and deliveries moved through the outbox's own functions to each state.
"""

from __future__ import annotations

import html as html_lib
import io
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom import dcmread
from pydicom.dataset import Dataset

from appliance.config import Settings
from appliance.domain import Analysis, AnalysisState, ArtifactRecord, ModelOutcome, Origin, Source
from appliance.imaging.header import read_header
from appliance.store import Store, feedback, jobs, open_store, outbox, status, users
from appliance.store.audit import recent
from appliance.store.db import transaction
from appliance.store.doorbell import Listener
from appliance.web import create_app, store_of

from conftest import make_settings, sign_in
from test_dicomout_fileset import (
    encapsulated_pdf,
    heatmap_sc,
    original_chest,
    small_pdf,
    text_sr,
)

# A time as the one time format shows it: "14:05", "3 Dec 14:05", "3 Dec 2024 2:05 PM".
CLOCK = r"(\d{1,2} \w+ (\d{4} )?)?\d{1,2}:\d\d( [AP]M)?"

USERS = {"admin": "admin0", "technologist": "tech1", "clinician": "doc1"}  # PIN 2468
CAUTION = "Demo model trained on synthetic images only. Not for clinical use."
REPORT_LINE = "Pleural effusion: score 0.91, above the operating threshold 0.45"
DESTINATIONS = [
    {"name": "pacs", "host": "10.0.0.5", "port": 4242, "called_ae_title": "PACS"},
    {"name": "backup", "host": "10.0.0.6", "port": 104, "called_ae_title": "BACKUP"},
    {
        "name": "archive",
        "host": "10.0.0.7",
        "port": 104,
        "called_ae_title": "ARCHIVE",
        "when": "final",
    },
]
FINDINGS_RESULT: dict[str, Any] = {
    "model": "demo-chest-xray",
    "version": "0.1.0",
    "title": "Chest X-ray findings (demo)",
    "frame": 0,
    "labels": [
        {
            "label": "pleural_effusion",
            "display": "Pleural effusion",
            "score": 0.91,
            "threshold": 0.45,
            "positive": True,
            "priority": "urgent",
        },
        {
            "label": "cardiomegaly",
            "display": "Cardiomegaly",
            "score": 0.12,
            "threshold": 0.25,
            "positive": False,
            "priority": "review",
        },
    ],
    "masks": [],
    "notes": [],
    "not_for_clinical_use": True,
    "caution": CAUTION,
}


# --- a seeded box ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """A data folder with users and one analysed study, made once per module."""

    root: Path
    study_id: int
    instance_id: int


@dataclass
class Box:
    """The UI on its own copy of the template's data folder."""

    app: Flask
    client: FlaskClient
    settings: Settings
    root: Path
    study_id: int
    instance_id: int

    @property
    def store(self) -> Store:
        return store_of(self.app)

    def sign_in(self, role: str = "clinician") -> str:
        sign_in(self.client, USERS[role])
        return USERS[role]

    def page(self, path: str | None = None) -> str:
        response = self.client.get(path or f"/study/{self.study_id}")
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_data(as_text=True)

    def text(self, path: str | None = None) -> str:
        """The page's words with the markup taken out and white space folded."""
        return plain_text(self.page(path))

    def token(self) -> str:
        match = re.search(r'<meta name="csrf-token" content="([^"]+)"', self.page("/"))
        assert match
        return match.group(1)


def plain_text(html: str) -> str:
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", html)).split())


def put_file(store: Store, path: Path) -> int:
    """Ingest a file as an import would; return the instance id."""
    tmp = store.spool.new_tmp_path()
    shutil.copyfile(path, tmp)
    return store.ingest(tmp, read_header(tmp), Origin(Source.IMPORT, user="test")).instance_id


def heatmap_png(size: int = 128) -> bytes:
    ramp = np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))
    ok, png = cv2.imencode(".png", ramp)
    assert ok
    return bytes(png)


def analyse(store: Store, instance_id: int) -> None:
    """Save findings with a heatmap for the image, as the worker's analysis and pictures
    would (the analysis job is taken from the queue and ended with them)."""
    job = jobs.claim(store.conn, "seed", lease_s=60)
    assert job is not None and job.instance_id == instance_id
    [name] = store.results.write_all([heatmap_png()])
    heatmap = ArtifactRecord("heatmap", "pleural_effusion", 0, name, 128, 128)
    outcome = ModelOutcome(
        model="demo-chest-xray",
        version="0.1.0",
        model_sha256="0" * 64,
        backend="onnxruntime-cpu",
        precision="fp32",
        state=AnalysisState.FINDINGS,
        reason="",
        priority="urgent",
        summary="Pleural effusion 0.91",
        key_frame=0,
        duration_ms=5.0,
        result=FINDINGS_RESULT,
        artifacts=(heatmap,),
    )
    analysis = Analysis(AnalysisState.FINDINGS, "", "urgent", "Pleural effusion 0.91", (outcome,))
    assert store.complete(job, "seed", analysis, "seed")


def make_template(root: Path) -> Template:
    store = open_store(make_settings(root))
    try:
        for role, name in USERS.items():  # made once: each PIN hash takes a while, on purpose
            users.create_user(store.conn, name, name.title(), role, "2468", "test")
        source = root / "in" / "cxr.dcm"
        source.parent.mkdir()
        original_chest().save_as(source, enforce_file_format=True)
        instance_id = put_file(store, source)
        analyse(store, instance_id)
        study_id = int(store.conn.execute("SELECT id FROM studies").fetchone()[0])
    finally:
        store.close()
    return Template(root, study_id, instance_id)


def box_settings(tmp_path: Path, **sections: Any) -> Settings:
    """make_settings, taking lists (destinations) and plain values (site_name) as well as
    sections."""
    tops = {name: value for name, value in sections.items() if not isinstance(value, dict)}
    settings = make_settings(tmp_path, **{k: v for k, v in sections.items() if k not in tops})
    return Settings.model_validate({**settings.model_dump(), **tops})


def open_box(template: Template, tmp_path: Path, **sections: Any) -> Box:
    shutil.copytree(template.root / "data", tmp_path / "data")
    settings = box_settings(tmp_path, **sections)
    app = create_app(settings, TESTING=True)
    return Box(app, app.test_client(), settings, tmp_path, template.study_id, template.instance_id)


def dataset_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


REPORT_PDF = small_pdf("Findings report", REPORT_LINE)


def add_outputs(box: Box, revision: int = 1, purpose: str = "findings") -> dict[str, int]:
    return record_objects(box.store, box.instance_id, box.study_id, revision, purpose)


def record_objects(
    store: Store, instance_id: int, study_id: int, revision: int = 1, purpose: str = "findings"
) -> dict[str, int]:
    """The objects the worker makes of the image (SR, heatmap, PDF report), written to the
    outputs folder and recorded as one revision; returns their ids by kind."""
    original = dcmread(store.file_of(instance_id))
    made = {
        "sr": text_sr(original),
        "heatmap": heatmap_sc(original),
        "report": encapsulated_pdf(original, REPORT_PDF),
    }
    contents = [dataset_bytes(ds) for ds in made.values()]
    names = store.outputs.write_all(contents)
    objects = [
        outbox.NewOutput(
            kind=kind,
            label="pleural_effusion" if kind == "heatmap" else "",
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            file_name=name,
            size_bytes=len(data),
        )
        for (kind, ds), name, data in zip(made.items(), names, contents, strict=True)
    ]
    with transaction(store.conn):
        ids = outbox.record_outputs(
            store.conn,
            instance_id,
            study_id,
            revision,
            f"fingerprint-{revision}",
            purpose,
            objects,
        )
    return dict(zip(made, ids, strict=True))


def queue(box: Box, destination: str, outputs: dict[str, int]) -> list[outbox.Delivery]:
    return queue_objects(box.store, box.study_id, destination, outputs)


def queue_objects(
    store: Store, study_id: int, destination: str, outputs: dict[str, int]
) -> list[outbox.Delivery]:
    """Queue the objects for a destination and let the sender claim them (now `sending`)."""
    conn = store.conn
    items = []
    for output_id in outputs.values():
        row = outbox.output_by_id(conn, output_id)
        assert row is not None
        items.append((output_id, None, str(row["sop_instance_uid"])))
    with transaction(conn):
        outbox.queue_deliveries(conn, destination, study_id, items)
    return outbox.claim(conn, destination, limit=10)


def sent(box: Box, deliveries: list[outbox.Delivery]) -> None:
    for delivery in deliveries:
        with transaction(box.store.conn):
            outbox.mark_sent(box.store.conn, delivery, "sender")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return make_template(tmp_path_factory.mktemp("sending"))


@pytest.fixture
def box(template: Template, tmp_path: Path) -> Iterator[Box]:
    opened = open_box(template, tmp_path, destinations=DESTINATIONS)
    yield opened
    opened.store.close()


@pytest.fixture
def bare_box(template: Template, tmp_path: Path) -> Iterator[Box]:
    """No destination set up: results stay on the box."""
    opened = open_box(template, tmp_path)
    yield opened
    opened.store.close()


def line_of(html: str, name: str) -> str:
    """The words of one destination's line on the study page."""
    match = re.search(
        rf'<li class="destination state-(\w+)" data-destination="{name}".*?</li>', html, re.S
    )
    assert match, f"no line for {name}"
    return f"{match.group(1)}: {plain_text(match.group(0))}"


def jobs_of(box: Box, purpose: str) -> list[int]:
    rows = box.store.conn.execute(
        "SELECT instance_ref FROM jobs WHERE kind = ? AND purpose = ? AND state = 'queued'",
        (jobs.OUTPUTS, purpose),
    )
    return [int(row[0]) for row in rows]


# --- the panel ---------------------------------------------------------------------------------


def test_without_destinations_results_stay_on_the_box_and_export_is_offered(
    bare_box: Box,
) -> None:
    bare_box.sign_in("clinician")
    html = bare_box.page()
    text = plain_text(html)
    assert "No PACS is set up: the results stay on this box. To take them away, use" in text
    assert f'href="/study/{bare_box.study_id}/export"' in html
    assert 'class="destination ' not in html and "send-again" not in html
    bare_box.client.post("/signout", data={"csrf_token": bare_box.token()})
    bare_box.sign_in("technologist")
    html = bare_box.page()
    assert "A clinician or an administrator can export them" in plain_text(html)
    assert "/export" not in html


def test_before_the_objects_exist_they_are_being_prepared(box: Box) -> None:
    box.sign_in("clinician")
    text = box.text()
    assert "The results for the record (report, heatmaps, structured report) are being" in text
    html = box.page()
    assert (
        line_of(html, "pacs") == "none: pacs : nothing queued yet. PACS at 10.0.0.5:4242 Send again"
    )
    assert "sent once a clinician records a final impression" in line_of(html, "archive")
    assert "Report (PDF)" not in text


def test_objects_that_could_not_be_made_are_said_with_the_reason(box: Box) -> None:
    conn = box.store.conn
    with conn:
        job = jobs.enqueue(conn, box.instance_id, 1, kind=jobs.OUTPUTS, purpose="findings")
        conn.execute(
            "UPDATE jobs SET state = 'failed', error = ? WHERE id = ?",
            ("the disk is full: 10 MiB free, the floor is 512 MiB", job),
        )
    box.sign_in("clinician")
    text = box.text()
    assert "could not be made for some images (the disk is full: 10 MiB free" in text
    assert "Press Send again once this is fixed" in text
    assert "are being prepared" not in text
    box.sign_in("technologist")
    assert "Ask a clinician or the admin to send them again" in box.text()


def test_each_destination_says_in_words_how_sending_goes(box: Box) -> None:
    made = add_outputs(box)
    sent(box, queue(box, "pacs", made))
    waiting = queue(box, "backup", made)
    retry_at = time.time() + 300
    with transaction(box.store.conn):
        reason = "cannot reach 10.0.0.6:104 (connection refused)"
        outbox.put_back(box.store.conn, waiting, "sender", reason, retry_at)
    gone = queue(box, "oldpacs", {"report": made["report"]})
    with transaction(box.store.conn):
        outbox.mark_failed(box.store.conn, gone[0], "sender", "the PACS refused the object")
    box.sign_in("clinician")
    html = box.page()
    pacs = line_of(html, "pacs")
    assert re.match(
        rf"sent: pacs : 3 of 3 sent at {CLOCK} report, structured report,"
        r" heatmap\. PACS at 10\.0\.0\.5:4242 Send again$",
        pacs,
    ), pacs
    backup = line_of(html, "backup")
    assert re.match(
        r"waiting: backup : 3 of 3 waiting since .+ — cannot reach 10\.0\.0\.6:104 "
        r"\(connection refused\) ?; next try at .+",
        backup,
    ), backup
    next_try = re.search(
        r'data-destination="backup".*?next try at <time datetime="([^"]+)"',
        html,
        re.S,
    )
    assert next_try and abs(time_of(next_try.group(1)) - retry_at) < 2
    old = line_of(html, "oldpacs")
    assert old.startswith("failed: oldpacs : 1 of 1 failed — the PACS refused the object report.")
    assert "no longer set up" in old and "Send again" not in old  # nothing can go there now
    assert "being prepared" not in plain_text(html)


def time_of(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_a_sending_destination_and_the_newest_revision_count(box: Box) -> None:
    first = add_outputs(box)
    sent(box, queue(box, "pacs", first))
    second = add_outputs(box, revision=2, purpose="final")
    queue(box, "pacs", second)  # claimed: being sent now
    box.sign_in("clinician")
    pacs = line_of(box.page(), "pacs")
    assert pacs.startswith("sending: pacs : 3 of 3 being sent now.")
    assert "revision 2" in pacs and "sent at" not in pacs  # revision 1 is replaced


def test_the_panel_escapes_what_the_sender_wrote(box: Box) -> None:
    [first, *_] = queue(box, "pacs", add_outputs(box))
    with transaction(box.store.conn):
        outbox.mark_failed(box.store.conn, first, "sender", "<script>alert(1)</script>")
    box.sign_in("clinician")
    html = box.page()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


# --- send again --------------------------------------------------------------------------------


def send_again(box: Box, destination: str, token: str | None = None) -> Any:
    return box.client.post(
        f"/study/{box.study_id}/send-again",
        data={"destination": destination, "csrf_token": token or box.token()},
    )


def test_send_again_queues_the_objects_rings_the_worker_and_is_audited(box: Box) -> None:
    listener = Listener(box.store.paths.doorbell)
    try:
        name = box.sign_in("clinician")
        response = send_again(box, "pacs")
        assert response.status_code == 302
        assert response.headers["Location"].endswith(f"/study/{box.study_id}#sending")
        assert listener.wait(5)
    finally:
        listener.close()
    assert jobs_of(box, "manual:pacs") == [box.instance_id]
    [entry] = recent(box.store.conn, "send.requested")
    assert (entry["actor"], entry["subject"]) == (f"ui:{name}", f"study:{box.study_id}")
    assert entry["detail"] == {"destination": "pacs", "jobs": 1}
    assert "will be sent to pacs: this page shows how it goes" in box.text()
    send_again(box, "pacs")  # pressed twice: one job
    assert jobs_of(box, "manual:pacs") == [box.instance_id]
    assert "already being prepared for pacs" in box.text()


def test_send_again_is_for_clinicians_and_admins_with_a_token(box: Box) -> None:
    box.sign_in("technologist")
    assert send_again(box, "pacs").status_code == 403
    assert "send-again" not in box.page()
    box.client.post("/signout", data={"csrf_token": box.token()})
    box.sign_in("admin")
    assert send_again(box, "pacs", token="forged").status_code == 400
    assert jobs_of(box, "manual:pacs") == []
    assert send_again(box, "pacs").status_code == 302
    assert jobs_of(box, "manual:pacs") == [box.instance_id]
    assert (
        box.client.post("/study/9999/send-again", data={"csrf_token": box.token()}).status_code
        == 404
    )


def test_send_again_refuses_a_destination_that_is_not_set_up(box: Box) -> None:
    box.sign_in("clinician")
    for name in ("nowhere", "", "pacs' OR 1=1 --", "oldpacs"):
        response = send_again(box, name)
        assert response.status_code == 302
        text = box.text()
        assert f"There is no destination called “{name}”: nothing was sent." in text
    assert (
        box.store.conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE purpose LIKE 'manual:%'"
        ).fetchone()[0]
        == 0
    )
    assert recent(box.store.conn, "send.requested") == []


def test_send_again_with_nothing_analysed_says_so(box: Box, tmp_path: Path) -> None:
    other = original_chest(seed=8, accession="ACC-43")
    source = tmp_path / "other.dcm"
    other.save_as(source, enforce_file_format=True)
    put_file(box.store, source)  # received, never analysed
    study = int(box.store.conn.execute("SELECT MAX(id) FROM studies").fetchone()[0])
    box.sign_in("clinician")
    response = box.client.post(
        f"/study/{study}/send-again", data={"destination": "pacs", "csrf_token": box.token()}
    )
    assert response.status_code == 302
    assert "Nothing to send yet: no image of this study has been analysed." in box.text(
        f"/study/{study}"
    )
    assert "The results for the record are made once the images are analysed." in box.text(
        f"/study/{study}"
    )


# --- a final impression --------------------------------------------------------------------------


def impression(box: Box, text: str, final: bool) -> Any:
    data = {"text": text, "csrf_token": box.token()}
    if final:
        data["final"] = "1"
    return box.client.post(f"/study/{box.study_id}/impression", data=data)


def test_a_final_impression_queues_the_records_rebuild_and_rings_the_worker(box: Box) -> None:
    name = box.sign_in("clinician")
    assert impression(box, "Effusion likely; review tomorrow.", final=False).status_code == 302
    assert jobs_of(box, "final") == []
    assert "sent once a clinician records a final impression" in line_of(box.page(), "archive")
    listener = Listener(box.store.paths.doorbell)
    try:
        assert (
            impression(box, "Right pleural effusion.\r\nNo pneumothorax.", final=True).status_code
            == 302
        )
        assert listener.wait(5)
    finally:
        listener.close()
    assert jobs_of(box, "final") == [box.instance_id]
    entries = recent(box.store.conn, "impression.recorded")
    assert [e["detail"]["text"] for e in entries] == [
        "Right pleural effusion.\nNo pneumothorax.",
        "Effusion likely; review tomorrow.",
    ]
    assert [e["detail"]["final"] for e in entries] == [True, False]
    assert entries[0]["detail"]["outputs_queued"] == 1 and entries[0]["actor"] == f"ui:{name}"
    assert "nothing queued yet" in line_of(box.page(), "archive")  # the final one is given


def test_the_store_queues_the_rebuild_with_the_impression_or_not_at_all(box: Box) -> None:
    conn = box.store.conn
    clinician = next(u for u in users.list_users(conn) if u.username == USERS["clinician"])
    with pytest.raises(feedback.FeedbackError):
        feedback.add_impression(conn, box.study_id, "   ", True, clinician.id, "t")
    assert jobs_of(box, "final") == []
    entry = feedback.add_impression(conn, box.study_id, "Final.", True, clinician.id, "t", 5)
    assert entry.outputs_queued == 1
    [attempts] = conn.execute("SELECT max_attempts FROM jobs WHERE purpose = 'final'").fetchone()
    assert attempts == 5
    again = feedback.add_impression(conn, box.study_id, "Final, again.", True, clinician.id, "t")
    assert again.outputs_queued == 0 and jobs_of(box, "final") == [box.instance_id]


def test_the_feedback_audit_keeps_the_comment(box: Box) -> None:
    box.sign_in("clinician")
    finding = int(box.store.conn.execute("SELECT id FROM findings").fetchone()[0])
    response = box.client.post(
        f"/study/{box.study_id}/feedback",
        data={
            "finding_id": str(finding),
            "label": "pleural_effusion",
            "verdict": "disagree",
            "comment": "Fluid is a skin fold.",
            "csrf_token": box.token(),
        },
    )
    assert response.status_code == 302
    [entry] = recent(box.store.conn, "feedback.recorded")
    assert entry["detail"] == {
        "label": "pleural_effusion",
        "verdict": "disagree",
        "comment": "Fluid is a skin fold.",
    }


# --- the PDF report ---------------------------------------------------------------------------


def test_the_report_downloads_as_the_pdf_inside_the_dicom_object(box: Box) -> None:
    made = add_outputs(box)
    name = box.sign_in("technologist")
    html = box.page()
    link = f"/study/{box.study_id}/report/{made['report']}.pdf"
    assert f'href="{link}"' in html and "Report (PDF)" in plain_text(html)
    response = box.client.get(link)
    assert response.status_code == 200
    assert response.mimetype == "application/pdf"
    assert response.data == REPORT_PDF
    disposition = response.headers["Content-Disposition"]
    assert disposition == f"attachment; filename=report-ACC-42-{box.instance_id}.pdf"
    assert "PEREZ" not in disposition.upper()
    words = subprocess.run(
        ["pdftotext", "-", "-"], input=response.data, capture_output=True, timeout=60, check=True
    ).stdout.decode()
    assert REPORT_LINE in words
    [entry] = recent(box.store.conn, "report.downloaded")
    assert (entry["actor"], entry["subject"]) == (f"ui:{name}", f"study:{box.study_id}")
    assert entry["detail"]["output"] == made["report"]


def test_the_newest_revisions_report_is_offered(box: Box) -> None:
    add_outputs(box)
    second = add_outputs(box, revision=2, purpose="final")
    box.sign_in("clinician")
    html = box.page()
    assert re.findall(r'href="(/study/\d+/report/\d+\.pdf)"', html) == [
        f"/study/{box.study_id}/report/{second['report']}.pdf"
    ]


def test_only_a_report_of_this_study_is_served_to_a_signed_in_user(box: Box) -> None:
    made = add_outputs(box)
    link = f"/study/{box.study_id}/report/{made['report']}.pdf"
    response = box.client.get(link)
    assert response.status_code == 302 and "/signin" in response.headers["Location"]
    box.sign_in("clinician")
    for path in (
        f"/study/{box.study_id}/report/{made['sr']}.pdf",  # not a report
        f"/study/{box.study_id + 1}/report/{made['report']}.pdf",  # another study
        f"/study/{box.study_id}/report/99999.pdf",
        f"/study/{box.study_id}/report/{'9' * 25}.pdf",
    ):
        assert box.client.get(path).status_code == 404, path
    box.store.outputs.path_of(
        str(outbox.output_by_id(box.store.conn, made["report"])["file_name"])  # type: ignore[index]
    ).unlink()
    assert box.client.get(link).status_code == 404  # the file is gone: said, not a 500
    assert recent(box.store.conn, "report.downloaded") == []


def test_read_first_hides_the_report_until_the_users_impression(
    template: Template, tmp_path: Path
) -> None:
    box = open_box(template, tmp_path, ui={"read_first": True})
    try:
        made = add_outputs(box)
        box.sign_in("clinician")
        link = f"/study/{box.study_id}/report/{made['report']}.pdf"
        assert link not in box.page()
        assert box.client.get(link).status_code == 403
        impression(box, "My own reading.", final=False)
        assert link in box.page()
        assert box.client.get(link).status_code == 200
    finally:
        box.store.close()


# --- the admin's health page and /health ---------------------------------------------------------


def test_the_health_page_has_a_line_per_destination(box: Box) -> None:
    made = add_outputs(box)
    conn = box.store.conn
    sent(box, queue(box, "pacs", made))
    waiting = queue(box, "backup", made)
    with transaction(conn):
        outbox.put_back(conn, waiting[:2], "sender", "cannot reach", time.time() + 60)
        outbox.mark_failed(conn, waiting[2], "sender", "refused: unknown SOP class")
        outbox.record_destination(conn, "pacs", True, "C-ECHO answered")
        outbox.record_destination(
            conn, "backup", False, "cannot reach 10.0.0.6:104 (connection refused)", 3
        )
        conn.execute(
            "UPDATE deliveries SET created_at = '2020-01-01T00:00:00+00:00'"
            " WHERE destination = 'backup'"
        )
    box.sign_in("admin")
    html = box.page("/admin/health")
    rows = dict(re.findall(r'<tr data-destination="(\w+)" class="([^"]+)">', html))
    assert rows == {
        "pacs": "destination-reachable",
        "backup": "destination-unreachable has-failed",
        "archive": "destination-unknown",
    }
    backup = row_text(html, "backup")
    assert re.search(rf"not reachable \(checked {CLOCK}", backup), backup
    assert "cannot reach 10.0.0.6:104 (connection refused)" in backup
    assert re.search(r"BACKUP@10\.0\.0\.6:104 .* 2 1 for \d+ d \d+ h$", backup), backup
    none = "\u2013"  # the admin pages' dash for "none"
    assert re.search(
        rf"reachable \(checked .*\) C-ECHO answered 0 0 {none}$", row_text(html, "pacs")
    )
    assert "not tried yet" in row_text(html, "archive")


def row_text(html: str, name: str) -> str:
    match = re.search(rf'<tr data-destination="{name}".*?</tr>', html, re.S)
    assert match
    return plain_text(match.group(0))


def test_the_sender_is_listed_with_the_roles_and_needed_by_health(box: Box) -> None:
    box.sign_in("admin")
    html = box.page("/admin/health")
    assert re.search(r'<tr data-role="sender" class="not-running">', html)
    problems = box.client.get("/health").get_json()["problems"]
    assert "sender has not started" in problems
    with transaction(box.store.conn):
        status.record_start(box.store.conn, "sender", destinations=3)
    html = box.page("/admin/health")
    assert re.search(r'<tr data-role="sender" class="running">', html)
    assert "sender has not started" not in box.client.get("/health").get_json()["problems"]


def test_without_destinations_the_health_page_says_results_stay(bare_box: Box) -> None:
    bare_box.sign_in("admin")
    html = bare_box.page("/admin/health")
    assert 'id="health-no-destinations"' in html and 'data-role="sender"' not in html
    assert "sender" not in " ".join(bare_box.client.get("/health").get_json()["problems"])
