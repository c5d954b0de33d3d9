"""Import through the UI on a real store: DICOM takes the C-STORE path (ingest, job, audit),
PNG/JPEG become Secondary Capture images with the details typed in, and bad input is refused
with a reason while the rest of the upload goes through."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom.dataset import Dataset, FileMetaDataset

from appliance.samples import make_dataset, write_sample
from appliance.store import Store, audit
from appliance.web import create_app

from conftest import add_user, csrf_of, make_settings, sign_in

DETAILS = {
    "patient_name": "Doe, Jane",
    "patient_id": "PID-0042",
    "modality": "DX",
    "body_part": "CHEST",
    "view": "PA",
    "study_description": "Chest from a USB stick",
}


def store_of(app: Flask) -> Store:
    store: Store = app.extensions["appliance.store"]
    return store


@pytest.fixture
def tech(app: Flask, client: FlaskClient) -> FlaskClient:
    """Signed in as a technologist: import is for every role, not only admins."""
    add_user(app, "root", "admin")  # without an admin, sign-in leads to the set-up page
    add_user(app, "tess", "technologist")
    sign_in(client, "tess")
    return client


def dicom_bytes(tmp_path: Path, kind: str = "cr", seed: int = 0) -> bytes:
    path = write_sample(tmp_path / f"{kind}-{seed}.dcm", kind, seed=seed, rows=64, columns=64)
    return path.read_bytes()


def png_bytes(pixels: np.ndarray[Any, Any]) -> bytes:
    ok, encoded = cv2.imencode(".png", pixels)
    assert ok
    return encoded.tobytes()


def upload(client: FlaskClient, files: list[tuple[bytes, str]], **fields: str) -> Any:
    data: dict[str, Any] = {"csrf_token": csrf_of(client, "/import"), **fields}
    data["files"] = [(io.BytesIO(content), name) for content, name in files]
    return client.post("/import", data=data, content_type="multipart/form-data")


def outcomes(response: Any) -> list[tuple[str, str, str]]:
    """(file name, outcome, reason) of each row of the result page."""
    page = response.get_data(as_text=True)
    rows = re.findall(
        r'<tr data-outcome="(\w+)">\s*<td>(.*?)</td>\s*<td>.*?</td>\s*<td>(.*?)</td>', page, re.S
    )
    return [(name, outcome, reason) for outcome, name, reason in rows]


def instances(app: Flask) -> list[Any]:
    return (
        store_of(app)
        .conn.execute(
            "SELECT i.id, i.source, i.sop_class_uid, i.file_name, j.state AS job_state"
            " FROM instances i JOIN jobs j ON j.instance_ref = i.id ORDER BY i.id"
        )
        .fetchall()
    )


def test_the_form_is_there_for_every_role(tech: FlaskClient) -> None:
    page = tech.get("/import").get_data(as_text=True)
    assert 'enctype="multipart/form-data"' in page and 'name="files"' in page
    assert "imports.js" in page and "<script>" not in page  # no inline script (CSP)
    assert 'href="/import"' in page


def test_signed_out_users_are_sent_to_sign_in(client: FlaskClient) -> None:
    assert client.get("/import").status_code == 302
    assert client.post("/import").status_code == 302


def test_a_dicom_file_is_ingested_queued_and_audited(
    app: Flask, tech: FlaskClient, tmp_path: Path
) -> None:
    content = dicom_bytes(tmp_path)
    response = upload(tech, [(content, "IM0001")])
    assert response.status_code == 200
    assert outcomes(response) == [("IM0001", "stored", "")]
    [row] = instances(app)
    assert (row["source"], row["job_state"]) == ("import", "queued")
    stored = store_of(app).spool.path_of(row["file_name"]).read_bytes()
    assert stored == content  # kept exactly as imported
    conn = store_of(app).conn
    [ingested] = audit.recent(conn, "ingest.stored")
    assert ingested["actor"] == "import:tess"
    [summary] = audit.recent(conn, "import")
    assert summary["detail"] == {
        "files": 1,
        "stored": 1,
        "replaced": 0,
        "duplicate": 0,
        "refused": 0,
    }
    again = upload(tech, [(content, "IM0001")])
    assert outcomes(again) == [("IM0001", "duplicate", "")]
    assert len(instances(app)) == 1
    assert len(audit.recent(conn, "ingest.duplicate")) == 1
    assert list(store_of(app).spool.tmp.iterdir()) == []  # nothing left behind


def test_bad_files_are_refused_with_a_reason_and_the_rest_stored(
    app: Flask, tech: FlaskClient, tmp_path: Path
) -> None:
    good = dicom_bytes(tmp_path, seed=1)
    broken = good[:200] + b"\x00" * 40  # a DICOM preamble and prefix, then nothing usable
    files = [
        (b"just some text, not an image", "notes.dcm"),  # the name says DICOM: ignored
        (good, "picture.png"),  # the name says PNG: its bytes say DICOM
        (broken, "broken.dcm"),
        (b"", "empty.dcm"),
    ]
    result = outcomes(upload(tech, files))
    assert result[0] == ("notes.dcm", "refused", "Not a DICOM, PNG or JPEG file.")
    assert result[1] == ("picture.png", "stored", "")
    assert result[2][:2] == ("broken.dcm", "refused")
    assert "cannot parse the dataset" in result[2][2] or "is missing" in result[2][2]
    assert result[3] == ("empty.dcm", "refused", "Not a DICOM, PNG or JPEG file.")
    assert len(instances(app)) == 1
    refused = audit.recent(store_of(app).conn, "import.refused")
    assert {row["detail"]["name"] for row in refused} == {"notes.dcm", "broken.dcm", "empty.dcm"}
    assert list(store_of(app).spool.tmp.iterdir()) == []


def test_a_dicomdir_is_refused_with_advice(tech: FlaskClient, tmp_path: Path) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.MediaStorageDirectoryStorage
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID("1.2.3.4")
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.FileSetID = "STICK"
    path = tmp_path / "DICOMDIR"
    ds.save_as(path, enforce_file_format=True)
    [(name, outcome, reason)] = outcomes(upload(tech, [(path.read_bytes(), "DICOMDIR")]))
    assert (name, outcome) == ("DICOMDIR", "refused")
    assert "DICOMDIR" in reason and "choose the image files" in reason


def test_a_png_with_its_details_becomes_a_secondary_capture(app: Flask, tech: FlaskClient) -> None:
    pixels = np.tile(np.arange(0, 250, 2, dtype=np.uint8), (40, 1))
    response = upload(tech, [(png_bytes(pixels), "xray.png")], **DETAILS)
    assert outcomes(response) == [("xray.png", "stored", "")]
    [row] = instances(app)
    assert (row["source"], row["sop_class_uid"], row["job_state"]) == (
        "import",
        "1.2.840.10008.5.1.4.1.1.7",
        "queued",
    )
    ds = pydicom.dcmread(store_of(app).spool.path_of(row["file_name"]))
    assert str(ds.PatientName) == "Doe^Jane" and ds.PatientID == "PID-0042"
    assert (ds.Modality, ds.BodyPartExamined, ds.ViewPosition) == ("DX", "CHEST", "PA")
    assert ds.StudyDescription == "Chest from a USB stick"
    assert (ds.ConversionType, ds.BurnedInAnnotation) == ("WSD", "YES")
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    np.testing.assert_array_equal(ds.pixel_array, pixels)
    series = store_of(app).conn.execute("SELECT modality, body_part FROM series").fetchone()
    assert tuple(series) == ("DX", "CHEST")  # what the worker routes by
    again = upload(tech, [(png_bytes(pixels), "xray-again.png")], **DETAILS)
    assert outcomes(again) == [("xray-again.png", "duplicate", "")]  # deterministic


def test_a_jpeg_is_marked_lossy_and_kept_in_colour(app: Flask, tech: FlaskClient) -> None:
    pixels = np.zeros((48, 64, 3), dtype=np.uint8)
    pixels[:, :32] = (0, 0, 255)  # red in OpenCV's BGR
    ok, encoded = cv2.imencode(".jpg", pixels)
    assert ok
    details = {**DETAILS, "modality": "US", "body_part": "ABDOMEN", "view": ""}
    response = upload(tech, [(encoded.tobytes(), "scan.jpeg")], **details)
    assert outcomes(response) == [("scan.jpeg", "stored", "")]
    [row] = instances(app)
    ds = pydicom.dcmread(store_of(app).spool.path_of(row["file_name"]))
    assert ds.PhotometricInterpretation == "RGB" and ds.LossyImageCompression == "01"
    assert ds.Modality == "US" and "ViewPosition" not in ds
    assert ds.pixel_array[10, 5, 0] > 200 and ds.pixel_array[10, 50, 0] < 50


def test_pictures_need_valid_details(app: Flask, tech: FlaskClient) -> None:
    picture = png_bytes(np.full((8, 8), 100, dtype=np.uint8))
    missing = upload(tech, [(picture, "a.png")])
    assert missing.status_code == 400
    assert "Enter this: pictures need it." in missing.get_data(as_text=True)  # the catalogue
    bad = upload(tech, [(picture, "a.png")], **{**DETAILS, "patient_id": "A\\B"})
    assert bad.status_code == 400
    page = bad.get_data(as_text=True)
    assert "No backslash here." in page and "patient_id:" not in page
    assert 'value="Doe, Jane"' in page  # what was typed is kept
    wrong = upload(tech, [(picture, "a.png")], **{**DETAILS, "modality": "CT"})
    assert wrong.status_code == 400
    assert "Choose one of CR, DX, US, OT." in wrong.get_data(as_text=True)
    assert instances(app) == []


def test_several_files_at_once(app: Flask, tech: FlaskClient, tmp_path: Path) -> None:
    files = [
        (dicom_bytes(tmp_path, "dx", 1), "one.dcm"),
        (dicom_bytes(tmp_path, "us", 2), "two.dcm"),
        (png_bytes(np.full((16, 16), 7, dtype=np.uint8)), "three.png"),
    ]
    result = outcomes(upload(tech, files, **DETAILS))
    assert [outcome for _, outcome, _ in result] == ["stored", "stored", "stored"]
    assert len(instances(app)) == 3


def test_no_file_chosen(tech: FlaskClient) -> None:
    response = tech.post("/import", data={"csrf_token": csrf_of(tech, "/import")})
    assert response.status_code == 400
    assert "Choose at least one file." in response.get_data(as_text=True)


def test_without_the_csrf_token_nothing_is_imported(
    app: Flask, tech: FlaskClient, tmp_path: Path
) -> None:
    response = tech.post(
        "/import",
        data={"files": [(io.BytesIO(dicom_bytes(tmp_path)), "a.dcm")]},
        content_type="multipart/form-data",
    )
    assert response.status_code == 400
    assert instances(app) == []


def test_an_oversized_upload_is_413(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, ui={"upload_max_mb": 1})
    app = create_app(settings, TESTING=True)
    try:
        client = app.test_client()
        add_user(app, "root", "admin")
        add_user(app, "tess", "technologist")
        sign_in(client, "tess")
        big = make_dataset("cr", rows=1024, columns=1024)  # 2 MiB of 16-bit pixels
        path = tmp_path / "big.dcm"
        big.save_as(path, enforce_file_format=True)
        response = upload(client, [(path.read_bytes(), "big.dcm")])
        assert response.status_code == 413
        assert "too large" in response.get_data(as_text=True)
        assert store_of(app).conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 0
    finally:
        store_of(app).close()
