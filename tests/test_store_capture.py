"""Capture requests and calibration in a real store: queue, take in order, finish once, audit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.samples import write_sample
from appliance.store import Store
from appliance.store import capture as capture_store

from worker_fixtures import audit_rows, put_file


def study_of(store: Store, tmp_path: Path) -> int:
    source = tmp_path / "us.dcm"
    write_sample(source, "us", rows=32, columns=32)
    put_file(store, source)
    return int(store.conn.execute("SELECT id FROM studies").fetchone()[0])


def test_requests_are_taken_oldest_first_and_finished_once(store: Store, tmp_path: Path) -> None:
    conn = store.conn
    study = study_of(store, tmp_path)
    freeze = capture_store.queue_request(conn, "freeze", "tech")
    save = capture_store.queue_request(conn, "save_frame", "tech", study_id=study)
    first = capture_store.next_request(conn)
    assert first is not None and (first["id"], first["kind"]) == (freeze, "freeze")
    capture_store.finish_request(conn, freeze, {"frozen": True})
    second = capture_store.next_request(conn)
    assert second is not None and (second["id"], second["study_ref"]) == (save, study)
    capture_store.finish_request(conn, save, {"instance_id": 7, "sop_instance_uid": "1.2.3"})
    assert capture_store.next_request(conn) is None
    row = capture_store.request_row(conn, save)
    assert row is not None and row["state"] == "done"
    assert json.loads(row["result"]) == {"instance_id": 7, "sop_instance_uid": "1.2.3"}
    with pytest.raises(capture_store.CaptureRequestError, match="not queued"):
        capture_store.finish_request(conn, save, {"instance_id": 8})
    assert [r["action"] for r in audit_rows(conn, "capture.requested")] == ["capture.requested"] * 2
    [done] = audit_rows(conn, "capture.save_frame")
    assert done["actor"] == "capture:tech" and done["detail"]["instance_id"] == 7


def test_a_failed_request_keeps_its_reason(store: Store) -> None:
    conn = store.conn
    request = capture_store.queue_request(conn, "save_clip", "tech", patient_name="DOE^JANE")
    capture_store.finish_request(conn, request, None, error="no frames from the capture device")
    row = capture_store.request_row(conn, request)
    assert row is not None
    assert (row["state"], row["result"]) == ("failed", "no frames from the capture device")
    assert (row["patient_name"], row["patient_id"]) == ("DOE^JANE", "")
    [failed] = audit_rows(conn, "capture.save_clip.failed")
    assert failed["detail"]["reason"] == "no frames from the capture device"


def test_requests_left_queued_expire_when_a_loop_starts(store: Store) -> None:
    conn = store.conn
    done = capture_store.queue_request(conn, "resume", "tech")
    capture_store.finish_request(conn, done, {"frozen": False})
    stale = [capture_store.queue_request(conn, kind, "tech") for kind in ("freeze", "resume")]
    assert capture_store.expire_requests(conn) == 2
    for request in stale:
        row = capture_store.request_row(conn, request)
        assert row is not None and row["state"] == "failed" and "expired" in row["result"]
    assert capture_store.request_row(conn, done)["state"] == "done"  # type: ignore[index]
    assert capture_store.next_request(conn) is None


@pytest.mark.parametrize(
    ("kind", "fields", "message"),
    [
        ("zoom", {}, "not one of"),
        ("save_frame", {}, "needs a study, or a patient"),
        ("save_frame", {"study_id": 999}, "no study 999"),
        ("save_clip", {"patient_id": "X" * 65}, "at most 64"),
        ("save_clip", {"patient_name": "A\\B"}, "backslash"),
    ],
)
def test_bad_requests_are_refused(
    store: Store, kind: str, fields: dict[str, object], message: str
) -> None:
    with pytest.raises(capture_store.CaptureRequestError, match=message):
        capture_store.queue_request(store.conn, kind, "tech", **fields)  # type: ignore[arg-type]
    assert capture_store.next_request(store.conn) is None


def test_freeze_and_resume_ignore_patient_fields(store: Store) -> None:
    conn = store.conn
    request = capture_store.queue_request(conn, "resume", "tech", study_id=42, patient_name="X")
    row = capture_store.request_row(conn, request)
    assert row is not None and (row["study_ref"], row["patient_name"]) == (None, "")


def test_calibration_is_per_device_replaced_and_audited(store: Store) -> None:
    conn = store.conn
    assert capture_store.calibration(conn, "probe-a") is None
    capture_store.set_calibration(conn, "probe-a", 10, 20, 300, 200, 0.25, "admin")
    capture_store.set_calibration(conn, "probe-b", 0, 0, 64, 64, None, "admin")
    capture_store.set_calibration(conn, "probe-a", 12, 20, 300, 210, 0.3, "boss")
    x, y, width, height, mm = capture_store.calibration(conn, "probe-a") or (0, 0, 0, 0, 0)
    assert (x, y, width, height, mm) == (12, 20, 300, 210, 0.3)
    assert capture_store.calibration(conn, "probe-b") == capture_store.Calibration(
        0, 0, 64, 64, None
    )
    changes = list(audit_rows(conn, "capture.calibrated"))
    assert [(c["actor"], c["subject"]) for c in changes] == [
        ("ui:admin", "device:probe-a"),
        ("ui:admin", "device:probe-b"),
        ("ui:boss", "device:probe-a"),
    ]
    assert changes[2]["detail"]["previous"] == [10, 20, 300, 200]
    assert changes[2]["detail"]["previous_mm_per_pixel"] == 0.25
    assert changes[2]["detail"]["mm_per_pixel"] == 0.3


@pytest.mark.parametrize(
    ("box", "mm", "message"),
    [
        ((0, 0, 0, 10), 0.2, "positive size"),
        ((-1, 0, 10, 10), 0.2, "x, y >= 0"),
        ((0, 0, 10, 10), 0.0, "above 0"),
        ((0, 0, 10, 10), 11.0, "at most 10"),
    ],
)
def test_impossible_calibrations_are_refused(
    store: Store, box: tuple[int, int, int, int], mm: float, message: str
) -> None:
    with pytest.raises(capture_store.CaptureRequestError, match=message):
        capture_store.set_calibration(store.conn, "probe", *box, mm, "admin")
    assert capture_store.calibration(store.conn, "probe") is None
    assert list(audit_rows(store.conn, "capture.calibrated")) == []


def test_study_for_capture_gives_the_uid_and_patient(store: Store, tmp_path: Path) -> None:
    study = study_of(store, tmp_path)
    found = capture_store.study_for_capture(store.conn, study)
    row = store.conn.execute(
        "SELECT s.study_uid, s.accession_number, p.patient_id, p.patient_name FROM studies s"
        " JOIN patients p ON p.id = s.patient_ref"
    ).fetchone()
    assert found is not None and found.study_uid == row["study_uid"]
    assert tuple(found) == (row["study_uid"], row["patient_id"], row["patient_name"], row[1])
    assert capture_store.study_for_capture(store.conn, study + 1) is None
