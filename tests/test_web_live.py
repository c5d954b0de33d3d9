"""The live view's routes through Flask's test client, on a real store: the page and its DOM,
the status API over live files this test writes as the worker's capture loop would, the MJPEG
stream (frames, its cap on viewers, its time limit), commands queued into the store with
CSRF and audit, the request's state, and calibration for admins only."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from appliance.domain import Origin, Source
from appliance.imaging.header import read_header
from appliance.samples import write_sample
from appliance.store import Store, audit, capture
from appliance.web import create_app
from appliance.web.live_files import still_picture
from appliance.web.live_stream import BOUNDARY, StreamSlots

from conftest import add_user, csrf_of, make_settings, sign_in

WIDTH, HEIGHT = 320, 180  # the configured source size (small: quick to encode)


@pytest.fixture
def live_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "live"
    folder.mkdir()
    return folder


def make_app(tmp_path: Path, live_dir: Path, **config: Any) -> Flask:
    source = {"kind": "generated", "width": WIDTH, "height": HEIGHT, "fps": 30.0, "name": "usb"}
    settings = make_settings(tmp_path, capture={"live_dir": str(live_dir), "source": source})
    return create_app(settings, TESTING=True, **config)


@pytest.fixture
def app(tmp_path: Path, live_dir: Path) -> Iterator[Flask]:
    application = make_app(tmp_path, live_dir)
    add_user(application, "root", "admin")
    add_user(application, "tess", "technologist")
    yield application
    application.extensions["appliance.store"].close()


def store_of(app: Flask) -> Store:
    store: Store = app.extensions["appliance.store"]
    return store


@pytest.fixture
def tech(client: FlaskClient) -> FlaskClient:
    sign_in(client, "tess")
    return client


@pytest.fixture
def admin(client: FlaskClient) -> FlaskClient:
    sign_in(client, "root", "2468")
    return client


# --- the worker's files, as its capture loop writes them ----------------------------------------


def write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_bytes(data)
    os.replace(partial, path)


def jpeg(level: int, size: tuple[int, int] = (WIDTH, HEIGHT)) -> bytes:
    pixels = np.full((size[1], size[0], 3), level, dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", pixels)
    assert ok
    return encoded.tobytes()


def write_live(
    folder: Path, seq: int, *, state: str = "live", frozen: bool = False, age_s: float = 0.0
) -> dict[str, Any]:
    """frame.jpg (grey level from seq) and status.json, `age_s` old."""
    write_atomically(folder / "frame.jpg", jpeg(10 * seq % 250))
    status = {
        "state": state,
        "frozen": frozen,
        "seq": seq,
        "frame_index": seq,
        "captured_wall": time.time() - age_s - 0.02,
        "source_fps": 30.0,
        "published_fps": 29.8,
        "dropped": 0,
        "device": "usb",
        "size": [WIDTH, HEIGHT],
        "region": [40, 20, 200, 150],
        "mm_per_pixel": None,
        "updated_wall": time.time() - age_s,
    }
    write_atomically(folder / "status.json", json.dumps(status).encode())
    return status


def write_overlay(folder: Path, frame_index: int, age_s: float = 0.0) -> dict[str, Any]:
    overlay = {
        "frame_index": frame_index,
        "captured_wall": time.time() - age_s - 0.08,
        "age_ms": 80.0,
        "inference_fps": 12.5,
        "model": "demo-ultrasound-fluid",
        "version": "0.1.0",
        "not_for_clinical_use": True,
        "label": "Anechoic fluid",
        "area_mm2": 412.0,
        "outlines": [[[60, 40], [90, 40], [90, 70], [60, 70]]],
        "region": [40, 20, 200, 150],
    }
    write_atomically(folder / "overlay.json", json.dumps(overlay).encode())
    return overlay


def add_study(app: Flask, tmp_path: Path) -> int:
    """An image through the one way in (Store.ingest); its study's id."""
    store = store_of(app)
    path = write_sample(tmp_path / "us.dcm", "us", rows=64, columns=64, patient_id="P-7")
    tmp = store.spool.new_tmp_path()
    tmp.write_bytes(path.read_bytes())
    store.ingest(tmp, read_header(tmp), Origin(Source.IMPORT, user="test"))
    return int(store.conn.execute("SELECT id FROM studies").fetchone()[0])


def requests_of(app: Flask) -> list[dict[str, Any]]:
    rows = store_of(app).conn.execute("SELECT * FROM capture_requests ORDER BY id")
    return [dict(row) for row in rows]


def post_command(client: FlaskClient, **body: Any) -> TestResponse:
    token = csrf_of(client, "/live")
    return client.post("/live/command", json=body, headers={"X-CSRF-Token": token})


# --- access -------------------------------------------------------------------------------------


def test_signed_out_every_live_route_asks_to_sign_in(client: FlaskClient) -> None:
    for path in ("/live", "/live/stream.mjpg", "/live/frame.jpg", "/live/calibrate"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert "/signin" in response.headers["Location"]
    for path in ("/api/live/status", "/api/live/request/1"):
        assert client.get(path).status_code == 401, path
    for path in ("/live/command", "/live/calibrate"):
        response = client.post(path, data={})
        assert response.status_code == 302 and "/signin" in response.headers["Location"]


def test_calibration_is_for_admins_only(app: Flask, tech: FlaskClient, live_dir: Path) -> None:
    write_live(live_dir, 1)
    token = csrf_of(tech, "/live")
    assert tech.get("/live/calibrate").status_code == 403
    form = {"x": "1", "y": "1", "width": "10", "height": "10", "csrf_token": token}
    assert tech.post("/live/calibrate", data=form).status_code == 403
    assert capture.calibration(store_of(app).conn, "usb") is None
    assert 'id="live-calibrate"' not in tech.get("/live").get_data(as_text=True)


def test_every_state_change_needs_the_csrf_token(app: Flask, admin: FlaskClient) -> None:
    assert admin.post("/live/command", json={"kind": "freeze"}).status_code == 400
    form = {"x": "1", "y": "1", "width": "10", "height": "10"}
    assert admin.post("/live/calibrate", data=form).status_code == 400
    assert requests_of(app) == []
    assert capture.calibration(store_of(app).conn, "usb") is None


# --- the page -----------------------------------------------------------------------------------


def test_the_page_has_the_live_elements_and_no_inline_script_or_style(
    app: Flask, tech: FlaskClient, tmp_path: Path
) -> None:
    study_id = add_study(app, tmp_path)
    response = tech.get("/live")
    html = response.get_data(as_text=True)

    assert response.status_code == 200
    for needed in (
        '<img id="live-image"',
        '<svg id="live-overlay"',
        'id="live-state"',
        'data-state="stopped"',
        'id="inference-fps"',
        'id="overlay-age"',
        'id="freeze"',
        'id="resume"',
        'id="save-frame"',
        'id="save-clip"',
        '<select id="live-study"',
        'id="live-patient-name"',
        'id="live-patient-id"',
        'id="live-saved"',
        f'viewBox="0 0 {WIDTH} {HEIGHT}"',
        "Save clip (4\u00a0s)",
    ):
        assert needed in html, needed
    options = re.findall(r'<option value="(\w+)"', html)
    assert options == ["new", str(study_id)]
    assert "SYNTHETIC, PATIENT · P-7" in html
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script"
    assert not re.search(r"\sstyle=", html), "inline style"
    assert "<style" not in html
    assert "unsafe-inline" not in response.headers["Content-Security-Policy"]


def test_every_page_links_to_live_and_admins_to_calibration(admin: FlaskClient) -> None:
    worklist = admin.get("/").get_data(as_text=True)
    assert '<a class="button" href="/live">Live</a>' in worklist
    assert 'href="/live/calibrate"' in admin.get("/live").get_data(as_text=True)


def test_the_page_says_when_capture_is_not_set_up(tmp_path: Path, live_dir: Path) -> None:
    settings = make_settings(tmp_path, capture={"live_dir": str(live_dir)})
    app = create_app(settings, TESTING=True)
    try:
        add_user(app, "root", "admin")
        client = app.test_client()
        sign_in(client, "root")
        assert "capture.source.kind is none" in client.get("/live").get_data(as_text=True)
        token = csrf_of(client, "/live")
        refused = client.post(
            "/live/command", json={"kind": "freeze"}, headers={"X-CSRF-Token": token}
        )
        assert refused.status_code == 409  # nobody would ever carry it out
        count = store_of(app).conn.execute("SELECT COUNT(*) FROM capture_requests").fetchone()[0]
        assert count == 0
    finally:
        store_of(app).close()


# --- status ------------------------------------------------------------------------------------


def test_status_is_stopped_without_files(tech: FlaskClient) -> None:
    answer = tech.get("/api/live/status").get_json()

    assert answer["status"] == {"state": "stopped"}
    assert answer["overlay"] is None
    assert answer["streams"] == {"open": 0, "max": 2, "refused": False}


def test_status_merges_the_worker_files(tech: FlaskClient, live_dir: Path) -> None:
    status = write_live(live_dir, 7)
    overlay = write_overlay(live_dir, 6)

    answer = tech.get("/api/live/status").get_json()
    assert answer["status"] == status
    assert answer["overlay"] == overlay
    assert abs(answer["server_wall"] - time.time()) < 60


def test_a_held_back_frame_is_explained_in_plain_words(tech: FlaskClient, live_dir: Path) -> None:
    write_live(live_dir, 7)
    overlay = write_overlay(live_dir, 7)
    why = "the image is almost blank (contrast 0.4% of the display range, below 2.0%): check it"
    overlay.update(held_back=why, outlines=[])
    write_atomically(live_dir / "overlay.json", json.dumps(overlay).encode())
    answer = tech.get("/api/live/status").get_json()["overlay"]
    assert answer["held_back"] == why  # kept for the record
    assert answer["held_back_text"] == "The image is almost blank."


@pytest.mark.parametrize("state", ["no_signal", "black", "frozen"])
def test_status_passes_on_the_signal_state(tech: FlaskClient, live_dir: Path, state: str) -> None:
    write_live(live_dir, 3, state=state)
    assert tech.get("/api/live/status").get_json()["status"]["state"] == state


def test_stale_or_broken_files_mean_stopped(tech: FlaskClient, live_dir: Path) -> None:
    write_live(live_dir, 7, age_s=10.0)
    write_overlay(live_dir, 7)
    assert tech.get("/api/live/status").get_json() == {
        "status": {"state": "stopped"},
        "overlay": None,
        "streams": {"open": 0, "max": 2, "refused": False},
        "server_wall": pytest.approx(time.time(), abs=60),
    }
    (live_dir / "status.json").write_text("{not json", encoding="utf-8")
    assert tech.get("/api/live/status").get_json()["status"] == {"state": "stopped"}
    write_live(live_dir, 8, state="exploded")
    assert tech.get("/api/live/status").get_json()["status"] == {"state": "stopped"}


def test_an_old_overlay_is_left_out_unless_the_user_froze_its_picture(
    tech: FlaskClient, live_dir: Path
) -> None:
    write_live(live_dir, 9)
    write_overlay(live_dir, 2, age_s=10.0)
    assert tech.get("/api/live/status").get_json()["overlay"] is None

    write_live(live_dir, 9, frozen=True)
    assert tech.get("/api/live/status").get_json()["overlay"]["frame_index"] == 2


# --- frames -------------------------------------------------------------------------------------


def decoded(data: bytes) -> np.ndarray:
    picture = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None
    return picture


def test_frame_is_the_newest_picture_or_a_still_one(tech: FlaskClient, live_dir: Path) -> None:
    still = tech.get("/live/frame.jpg")
    assert still.status_code == 200 and still.mimetype == "image/jpeg"
    assert decoded(still.data).shape == (HEIGHT, WIDTH, 3)

    write_live(live_dir, 5)
    assert tech.get("/live/frame.jpg").data == (live_dir / "frame.jpg").read_bytes()
    write_live(live_dir, 6, age_s=10.0)  # stopped: never an old frame taken for a live one
    assert tech.get("/live/frame.jpg").data == still.data


class Parts:
    """Reads an MJPEG response part by part (each chunk: a JPEG, then the next part's head)."""

    def __init__(self, response: TestResponse) -> None:
        assert response.status_code == 200
        assert response.mimetype == "multipart/x-mixed-replace"
        assert response.mimetype_params == {"boundary": BOUNDARY}
        self.response = response
        # A streamed response's body is bytes chunks; werkzeug types it as any iterable.
        self.chunks = cast(Iterator[bytes], iter(response.response))
        assert next(self.chunks) == f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n\r\n".encode()

    def next(self) -> bytes:
        chunk = next(self.chunks)
        end = f"\r\n--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n\r\n".encode()
        assert chunk.endswith(end)
        return chunk[: -len(end)]

    def until(self, picture: bytes, limit: int = 200) -> None:
        for _ in range(limit):
            if self.next() == picture:
                return
        raise AssertionError(f"not among the next {limit} parts")


def test_the_stream_sends_each_new_frame(tech: FlaskClient, live_dir: Path) -> None:
    write_live(live_dir, 1)
    parts = Parts(tech.get("/live/stream.mjpg?viewer=testviewer1", buffered=False))
    try:
        assert parts.next() == (live_dir / "frame.jpg").read_bytes()
        for number in (2, 3):
            write_live(live_dir, number)
            parts.until((live_dir / "frame.jpg").read_bytes())
        write_live(live_dir, 4, age_s=10.0)  # the capture loop stopped: the still picture
        parts.until(still_picture(WIDTH, HEIGHT))
        assert decoded(still_picture(WIDTH, HEIGHT)).shape == (HEIGHT, WIDTH, 3)
    finally:
        parts.response.close()


def test_an_unchanged_picture_is_sent_again_about_once_a_second(
    tech: FlaskClient, live_dir: Path
) -> None:
    write_live(live_dir, 1)
    parts = Parts(tech.get("/live/stream.mjpg", buffered=False))
    try:
        first = parts.next()
        started = time.monotonic()
        assert parts.next() == first  # nothing new: the keep-alive copy (a closed client fails it)
        assert time.monotonic() - started >= 0.5
    finally:
        parts.response.close()


def test_a_third_viewer_is_refused_with_a_message(
    app: Flask, tech: FlaskClient, live_dir: Path
) -> None:
    write_live(live_dir, 1)
    first = tech.get("/live/stream.mjpg?viewer=viewer-one", buffered=False)
    second = tech.get("/live/stream.mjpg?viewer=viewer-two", buffered=False)
    third = tech.get("/live/stream.mjpg?viewer=viewer-three", buffered=False)
    try:
        assert third.status_code == 503
        assert third.mimetype == "text/plain"
        assert "already shows on 2 screens" in third.get_data(as_text=True)
        # the third page asks why its <img> failed: refused (other screens), not "lost"
        refused = tech.get("/api/live/status?viewer=viewer-three").get_json()["streams"]
        assert refused == {"open": 2, "max": 2, "refused": True}
        assert not tech.get("/api/live/status?viewer=viewer-one").get_json()["streams"]["refused"]
        assert not tech.get("/api/live/status").get_json()["streams"]["refused"]
        assert tech.get("/live").status_code == 200  # the rest of the UI still answers
    finally:
        first.close()
    again = tech.get("/live/stream.mjpg?viewer=viewer-three", buffered=False)
    try:
        assert again.status_code == 200  # a closed stream gave its slot back
        assert not tech.get("/api/live/status?viewer=viewer-three").get_json()["streams"]["refused"]
    finally:
        again.close()
        second.close()
    assert tech.get("/api/live/status").get_json()["streams"]["open"] == 0


def test_a_viewer_reconnecting_takes_over_its_own_slot(tech: FlaskClient, live_dir: Path) -> None:
    write_live(live_dir, 1)
    old = Parts(tech.get("/live/stream.mjpg?viewer=same-page", buffered=False))
    other = tech.get("/live/stream.mjpg?viewer=other-page", buffered=False)
    new = Parts(tech.get("/live/stream.mjpg?viewer=same-page", buffered=False))
    try:
        assert new.next() == (live_dir / "frame.jpg").read_bytes()
        with pytest.raises(StopIteration):  # the old stream ends at its next frame
            for _ in range(100):
                old.next()
    finally:
        for response in (old.response, other, new.response):
            response.close()


def test_streams_end_after_their_time_and_never_outnumber_spare_threads(
    tmp_path: Path, live_dir: Path
) -> None:
    app = make_app(tmp_path, live_dir, LIVE_STREAM_MAX_S=0.3)
    try:
        add_user(app, "tess", "technologist")
        add_user(app, "root", "admin")
        client = app.test_client()
        sign_in(client, "tess")
        write_live(live_dir, 1)
        parts = Parts(client.get("/live/stream.mjpg", buffered=False))
        started = time.monotonic()
        with pytest.raises(StopIteration):
            for _ in range(1000):
                parts.next()
        assert time.monotonic() - started < 5
        parts.response.close()
        assert 'data-stream-max-ms="300"' in client.get("/live").get_data(as_text=True)
    finally:
        store_of(app).close()
    few = make_settings(tmp_path / "few", ui={"threads": 3})
    assert create_app(few, TESTING=True).extensions["appliance.live.streams"].limit == 1


def test_stream_slots_count_viewers_not_connections() -> None:
    slots = StreamSlots(2)
    a, b = slots.take("a"), slots.take("b")
    assert a is not None and b is not None and slots.take("c") is None
    a2 = slots.take("a")
    assert a2 is not None and not slots.holds(a) and slots.holds(a2) and slots.open == 2
    slots.give_back(a)  # the old stream ending gives nothing back: its viewer still streams
    assert slots.open == 2
    slots.give_back(a2)
    slots.give_back(a2)
    assert slots.open == 1 and slots.take("c") is not None


# --- commands -----------------------------------------------------------------------------------


def test_freeze_and_resume_are_queued_and_audited(app: Flask, tech: FlaskClient) -> None:
    for kind in ("freeze", "resume"):
        response = post_command(tech, kind=kind, patient_id="ignored")
        assert response.status_code == 202
        answer = response.get_json()
        assert answer["status_url"] == f"/api/live/request/{answer['request_id']}"
    rows = requests_of(app)
    assert [(r["kind"], r["state"], r["requested_by"], r["patient_id"]) for r in rows] == [
        ("freeze", "queued", "tess", ""),
        ("resume", "queued", "tess", ""),
    ]
    trail = audit.recent(store_of(app).conn, "capture.requested")
    assert [(e["actor"], e["detail"]["kind"]) for e in trail] == [
        ("ui:tess", "resume"),
        ("ui:tess", "freeze"),
    ]


def test_a_save_for_a_new_patient_names_the_patient(app: Flask, tech: FlaskClient) -> None:
    response = post_command(
        tech, kind="save_frame", study_id="new", patient_name=" Doe, Jane ", patient_id="PID-9"
    )
    assert response.status_code == 202
    row = requests_of(app)[0]
    assert (row["kind"], row["study_ref"], row["patient_id"], row["patient_name"]) == (
        "save_frame",
        None,
        "PID-9",
        "Doe^Jane",
    )


def test_a_save_into_an_existing_study(app: Flask, tech: FlaskClient, tmp_path: Path) -> None:
    study_id = add_study(app, tmp_path)
    assert post_command(tech, kind="save_clip", study_id=str(study_id)).status_code == 202
    row = requests_of(app)[0]
    assert (row["kind"], row["study_ref"], row["patient_id"]) == ("save_clip", study_id, "")


def test_a_form_post_works_as_well_as_json(app: Flask, tech: FlaskClient) -> None:
    token = csrf_of(tech, "/live")
    form = {"kind": "save_frame", "patient_id": "F-1", "csrf_token": token}
    assert tech.post("/live/command", data=form).status_code == 202
    assert requests_of(app)[0]["patient_id"] == "F-1"


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"kind": "explode"}, "kind", "not something live capture can do"),
        ({"kind": "save_frame"}, "patient_id", "Enter the new patient"),
        ({"kind": "save_frame", "study_id": "new", "patient_id": " "}, "patient_id", "Enter"),
        ({"kind": "save_frame", "study_id": "9999"}, "study_id", "not in the store"),
        ({"kind": "save_frame", "study_id": "1; DROP"}, "study_id", "not in the store"),
        ({"kind": "save_clip", "patient_id": "A\\B"}, "patient_id", "No backslash"),
        ({"kind": "save_clip", "patient_name": "x" * 65}, "patient_name", "At most 64"),
        ({"kind": "save_frame", "patient_id": ["a"]}, "patient_id", "No backslash"),
        ({"kind": "save_frame", "patient_name": {"x": "y"}}, "patient_name", "No backslash"),
        ({"kind": "save_frame", "patient_id": 123}, "patient_id", "No backslash"),
        ({"kind": "save_frame", "patient_name": "a\u0085b"}, "patient_name", "invisible"),
        ({"kind": "save_frame", "patient_name": "a\u2028b"}, "patient_name", "invisible"),
        ({"kind": "save_frame", "patient_name": "=Müller, Jürgen"}, "patient_name", "'='"),
        ({"kind": "save_frame", "patient_name": "a^b^c^d^e^f"}, "patient_name", "five parts"),
    ],
)
def test_a_command_that_cannot_be_queued_says_why(
    app: Flask, tech: FlaskClient, body: dict[str, Any], field: str, words: str
) -> None:
    response = post_command(tech, **body)
    assert response.status_code == 400
    assert response.get_json()["field"] == field
    assert words in response.get_json()["error"]
    assert requests_of(app) == []


def test_a_body_that_is_not_an_object_is_refused(tech: FlaskClient) -> None:
    token = csrf_of(tech, "/live")
    response = tech.post("/live/command", json=["freeze"], headers={"X-CSRF-Token": token})
    assert response.status_code == 400


# --- a request's state --------------------------------------------------------------------------


def test_a_request_is_followed_until_done_with_its_study(
    app: Flask, tech: FlaskClient, tmp_path: Path
) -> None:
    study_id = add_study(app, tmp_path)
    request_id = post_command(tech, kind="save_frame", patient_id="N-1").get_json()["request_id"]
    url = f"/api/live/request/{request_id}"
    assert tech.get(url).get_json() == {"id": request_id, "kind": "save_frame", "state": "queued"}

    conn = store_of(app).conn
    instance_id = int(conn.execute("SELECT id FROM instances").fetchone()[0])
    result = {"instance_id": instance_id, "sop_instance_uid": "1.2.3"}
    capture.finish_request(conn, request_id, result)
    assert tech.get(url).get_json() == {
        "id": request_id,
        "kind": "save_frame",
        "state": "done",
        "result": result,
        "study_id": study_id,
        "study_url": f"/study/{study_id}",
    }


def test_a_failed_request_gives_its_reason(app: Flask, tech: FlaskClient) -> None:
    request_id = post_command(tech, kind="save_clip", patient_id="N-2").get_json()["request_id"]
    why = "not saved: no image has come from the capture device yet"  # as the worker writes
    capture.finish_request(store_of(app).conn, request_id, None, why)
    answer = tech.get(f"/api/live/request/{request_id}").get_json()
    assert answer["state"] == "failed" and answer["detail"] == why
    assert answer["reason"].startswith("No picture has come from the ultrasound machine yet.")
    assert "cable" in answer["reason"]  # what to check
    assert tech.get("/api/live/request/999").status_code == 404


# --- calibration --------------------------------------------------------------------------------


def test_the_calibration_page_offers_the_detected_region(
    admin: FlaskClient, live_dir: Path
) -> None:
    write_live(live_dir, 1)
    html = admin.get("/live/calibrate").get_data(as_text=True)
    for needed in (
        'id="calibrate-image"',
        'id="calibrate-box"',
        'data-detected="40,20,200,150"',
        'id="cal-detected"',
        'id="cal-mm-per-pixel"',
        'id="cal-depth-cm"',
        "Device usb",
        "Not calibrated yet",
    ):
        assert needed in html, needed


def calibrate(client: FlaskClient, **fields: str) -> TestResponse:
    return client.post("/live/calibrate", data={**fields, "csrf_token": csrf_of(client, "/live")})


def test_an_admin_sets_the_region_and_scale(app: Flask, admin: FlaskClient, live_dir: Path) -> None:
    write_live(live_dir, 1)
    box = {"x": "40", "y": "20", "width": "200", "height": "150"}
    response = calibrate(admin, **box, mm_per_pixel="0,25")
    assert response.status_code == 302 and response.headers["Location"] == "/live/calibrate"
    conn = store_of(app).conn
    assert tuple(capture.calibration(conn, "usb") or ()) == (40, 20, 200, 150, 0.25)
    html = admin.get("/live/calibrate").get_data(as_text=True)
    assert "Calibration saved" in html and "0.25 mm per pixel" in html

    assert calibrate(admin, **box, depth_cm="6").status_code == 302  # 60 mm over 150 px
    assert capture.calibration(conn, "usb") == (40, 20, 200, 150, 0.4)
    assert calibrate(admin, **box).status_code == 302
    assert capture.calibration(conn, "usb") == (40, 20, 200, 150, None)
    entry = audit.recent(conn, "capture.calibrated")[0]
    assert entry["actor"] == "ui:root" and entry["subject"] == "device:usb"
    # A depth measured on the screen wins over a scale typed for an earlier box.
    assert calibrate(admin, **box, mm_per_pixel="0.2974", depth_cm="6").status_code == 302
    assert capture.calibration(conn, "usb") == (40, 20, 200, 150, 0.4)


def test_an_admin_forgets_a_calibration(app: Flask, admin: FlaskClient, live_dir: Path) -> None:
    write_live(live_dir, 1)
    assert calibrate(admin, x="0", y="0", width="320", height="180").status_code == 302
    assert 'id="cal-clear"' in admin.get("/live/calibrate").get_data(as_text=True)
    token = csrf_of(admin, "/live/calibrate")
    response = admin.post("/live/calibrate/clear", data={"csrf_token": token})
    assert response.status_code == 302
    conn = store_of(app).conn
    assert capture.calibration(conn, "usb") is None
    [entry] = audit.recent(conn, "capture.calibration_cleared")
    assert entry["detail"]["previous"] == [0, 0, 320, 180]
    html = admin.get("/live/calibrate").get_data(as_text=True)
    assert "Calibration forgotten" in html and 'id="cal-clear"' not in html


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        (
            {"x": "300", "y": "0", "width": "100", "height": "10"},
            "inside the 320 \u00d7 180 picture",
        ),
        ({"x": "-1", "y": "0", "width": "10", "height": "10"}, "whole number"),
        ({"x": "0", "y": "0", "width": "0", "height": "10"}, "whole number of at least 1"),
        ({"x": "0", "y": "0", "width": "10", "height": "10", "mm_per_pixel": "11"}, "at most 10"),
        ({"x": "0", "y": "0", "width": "10", "height": "10", "mm_per_pixel": "nan"}, "above 0"),
        ({"x": "0", "y": "0", "width": "10", "height": "1", "depth_cm": "2"}, "at most 50"),
        ({"x": "0", "y": "0", "width": "10", "height": "10", "mm_per_pixel": "1e-320"}, "above 0"),
    ],
)
def test_a_calibration_that_cannot_be_right_is_refused(
    app: Flask, admin: FlaskClient, live_dir: Path, fields: dict[str, str], words: str
) -> None:
    write_live(live_dir, 1)
    response = calibrate(admin, **fields)
    assert response.status_code == 400
    assert words in response.get_data(as_text=True)
    assert capture.calibration(store_of(app).conn, "usb") is None
