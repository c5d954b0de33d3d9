"""The live ultrasound view: the worker's newest frame as MJPEG, its overlay, and commands.

The worker role owns the capture device (DESIGN.md). It publishes into the live folder
(`Paths.live_dir`, RAM-backed) `frame.jpg`, `status.json` and `overlay.json`, each replaced
atomically. This blueprint only reads those files and writes requests into the store
(`store.capture`): freeze, resume, save a frame or a clip, and (admins) the scan region and its
scale. It never touches the device, so the page works, and says "capture stopped", whether or
not the worker runs.

MJPEG over waitress holds one of its threads per viewer for as long as the stream runs, so
streams are capped (`LIVE_MAX_STREAMS`, and never more than the UI's threads less two; a
viewer that reconnects takes over its own slot) and each ends after `LIVE_STREAM_MAX_S` (the
page reconnects): the rest of the UI always has threads left. A screen refused a stream shows
a still picture once a second instead (`/live/frame.jpg`, an ordinary short request).
"""

from __future__ import annotations

import json
import math
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.blueprints import BlueprintSetupState

from appliance.config import Settings
from appliance.dicomout.secondary import DetailsError
from appliance.dicomout.ultrasound import patient_values
from appliance.store import Store, analyses, capture
from appliance.store.worklist import StudyRow, WorklistQuery, worklist
from appliance.web.i18n import error_text, t
from appliance.web.params import whole_number
from appliance.web.security import ViewResult, roles_required
from appliance.web.worklist import patient_name, utc_text

bp = Blueprint("live", __name__)

FRAME, STATUS, OVERLAY = "frame.jpg", "status.json", "overlay.json"  # the worker's files
STATES = ("live", "no_signal", "black", "frozen", "stopped")
STALE_S = 3.0  # files older than this mean the capture loop is not running
MAX_STREAMS = 2  # default for app.config["LIVE_MAX_STREAMS"]
STREAM_MAX_S = 180.0  # default for app.config["LIVE_STREAM_MAX_S"]
SPARE_THREADS = 2  # waitress threads never taken by streams
KEEPALIVE_S = 1.0  # an unchanged picture is sent again this often: a closed client shows up
POLL_S = 0.15  # how often the page asks /api/live/status (about 7 times a second)
RECENT_HOURS = 24  # studies offered to save into
RECENT_STUDIES = 20
BOUNDARY = "frame"
_SLOTS = "appliance.live.streams"
_VIEWER = re.compile(r"^[A-Za-z0-9_-]{8,64}\Z")
_MAX_MM_PER_PIXEL = 10.0  # as CaptureSettings.mm_per_pixel
_MIN_MM_PER_PIXEL = 0.001  # a micrometre per pixel: finer is a typing slip
_MAX_DEPTH_CM = 50.0


# --- the worker's files -------------------------------------------------------------------------


def _store() -> Store:
    from appliance.web import store_of

    return store_of(current_app)


def _settings() -> Settings:
    settings: Settings = current_app.extensions["appliance.settings"]
    return settings


def _live_dir() -> Path:
    return _store().paths.live_dir


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from the live folder, or None: missing, or not what the worker writes.
    The worker replaces its files atomically, so a reader never sees half of one."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _number(value: Any) -> float | None:
    """A finite JSON number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _fresh(wall: Any, now: float) -> bool:
    stamp = _number(wall)
    return stamp is not None and now - stamp <= STALE_S


def fresh_status(folder: Path, now: float) -> dict[str, Any] | None:
    """status.json if the capture loop wrote it within STALE_S and it names a known state."""
    status = read_json(folder / STATUS)
    if status is None or not _fresh(status.get("updated_wall"), now):
        return None
    return status if status.get("state") in STATES else None


def fresh_overlay(folder: Path, status: Mapping[str, Any], now: float) -> dict[str, Any] | None:
    """overlay.json if it was written within STALE_S (capture time + its age), or belongs to
    the picture the user froze: an old overlay over a new picture would mislead."""
    overlay = read_json(folder / OVERLAY)
    if overlay is None:
        return None
    captured, age_ms = _number(overlay.get("captured_wall")), _number(overlay.get("age_ms"))
    if captured is None:
        return None
    written = captured + (age_ms or 0.0) / 1000.0
    return overlay if status.get("frozen") is True or now - written <= STALE_S else None


def live_state(folder: Path, now: float) -> dict[str, Any]:
    """What /api/live/status answers: the worker's status and overlay, or "stopped"."""
    status = fresh_status(folder, now)
    if status is None:
        return {"status": {"state": "stopped"}, "overlay": None}
    return {"status": status, "overlay": fresh_overlay(folder, status, now)}


def _frame_bytes(folder: Path) -> bytes | None:
    try:
        return (folder / FRAME).read_bytes()
    except OSError:
        return None


@lru_cache(maxsize=4)
def still_picture(width: int, height: int) -> bytes:
    """A plain dark picture of the frame's size, shown while there is no live frame: the
    page's layout does not jump, and nobody takes an old frame for a live one."""
    pixels = np.full((height, width, 3), 32, dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 60])
    if not ok:
        raise OSError("JPEG encoding failed")
    return bytes(encoded.tobytes())


def _still() -> bytes:
    source = _settings().capture.source
    return still_picture(source.width, source.height)


# --- streams ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ticket:
    """One open stream: its viewer and which of that viewer's streams it is."""

    key: str
    generation: int


class StreamSlots:
    """The viewers with a stream open: at most `limit`. A viewer's new stream (the page
    reconnecting) takes over its slot, and the old stream stops at its next frame, so a
    reconnect is never refused because of the viewer's own previous stream."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._current: dict[str, int] = {}
        self._generation = 0

    def take(self, key: str) -> Ticket | None:
        with self._lock:
            if key not in self._current and len(self._current) >= self.limit:
                return None
            self._generation += 1
            self._current[key] = self._generation
            return Ticket(key, self._generation)

    def holds(self, ticket: Ticket) -> bool:
        with self._lock:
            return self._current.get(ticket.key) == ticket.generation

    def give_back(self, ticket: Ticket) -> None:
        """Idempotent: called when the stream ends and again when the server closes it."""
        with self._lock:
            if self._current.get(ticket.key) == ticket.generation:
                del self._current[ticket.key]

    @property
    def open(self) -> int:
        with self._lock:
            return len(self._current)


@bp.record_once
def _make_slots(state: BlueprintSetupState) -> None:
    """One set of stream slots per app, sized by its config (create_app's overrides apply)."""
    app = state.app
    threads = app.extensions["appliance.settings"].ui.threads
    wanted = int(app.config.get("LIVE_MAX_STREAMS", MAX_STREAMS))
    app.extensions[_SLOTS] = StreamSlots(max(0, min(wanted, threads - SPARE_THREADS)))


def _slots() -> StreamSlots:
    slots: StreamSlots = current_app.extensions[_SLOTS]
    return slots


PART_HEAD = b"Content-Type: image/jpeg\r\n\r\n"
STREAM_START = f"--{BOUNDARY}\r\n".encode("ascii") + PART_HEAD
PART_END = f"\r\n--{BOUNDARY}\r\n".encode("ascii") + PART_HEAD


def frame_part(picture: bytes) -> bytes:
    """One JPEG of the multipart stream, followed at once by the next part's boundary and
    headers: a browser (Chromium at least) shows a part only once the next one has begun, so
    anything less would show every frame one frame late, and the last one before a pause (a
    freeze) not until the next keep-alive copy. Parts carry no length for the same reason:
    the next frame's is not known when its headers go out."""
    return picture + PART_END


@dataclass
class FrameStream:
    """The MJPEG body: the newest frame whenever status.json's `seq` changes, at most at the
    source's frame rate; the same picture again every KEEPALIVE_S (so a closed client is
    noticed by a failed write); the still picture while capture is stopped. Ends after
    `max_s`, when its viewer opened a newer stream, or when the client goes away (the server
    closes the body, see `Response.call_on_close`)."""

    folder: Path
    still: bytes
    holds: Callable[[], bool]
    max_s: float
    default_fps: float

    def __iter__(self) -> Iterator[bytes]:
        yield STREAM_START
        deadline = time.monotonic() + self.max_s
        sent_seq: int | None = None
        sent_at = 0.0
        while self.holds() and time.monotonic() < deadline:
            status = fresh_status(self.folder, time.time())
            seq = _seq_of(status)
            gap = 0.8 / self._fps(status)  # a little slack: a frame on time is never skipped
            now = time.monotonic()
            if (seq != sent_seq and now - sent_at >= gap) or now - sent_at >= KEEPALIVE_S:
                picture = _frame_bytes(self.folder) if seq is not None else None
                yield frame_part(picture or self.still)
                sent_seq, sent_at = seq, now
            time.sleep(min(max(gap / 2, 0.005), 0.05))

    def _fps(self, status: Mapping[str, Any] | None) -> float:
        fps = _number(status.get("source_fps")) if status else None
        return fps if fps is not None and fps > 0 else self.default_fps


def _seq_of(status: Mapping[str, Any] | None) -> int | None:
    seq = status.get("seq") if status else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def _viewer_key() -> str:
    """The page names itself (`viewer`, random per page load) so that its reconnects take
    over its own slot; the user is part of the key, so nobody can take over another's."""
    viewer = request.args.get("viewer", "")
    if _VIEWER.match(viewer):
        return f"{g.user.id}:{viewer}"
    return f"{g.user.id}:anonymous:{secrets.token_hex(8)}"


@bp.route("/live/stream.mjpg")
def stream() -> Response:
    """The live picture as multipart/x-mixed-replace JPEG, or 503 when the screens allowed
    a stream already have one (the page then shows a still picture every second)."""
    slots = _slots()
    ticket = slots.take(_viewer_key())
    if ticket is None:
        text = t("live.busy", n=slots.limit) + "\n"
        return Response(text, 503, mimetype="text/plain", headers={"Retry-After": "10"})
    body = FrameStream(
        folder=_live_dir(),
        still=_still(),
        holds=lambda: slots.holds(ticket),
        max_s=_stream_max_s(),
        default_fps=_settings().capture.source.fps,
    )
    response = Response(iter(body), mimetype=f"multipart/x-mixed-replace; boundary={BOUNDARY}")
    response.call_on_close(lambda: slots.give_back(ticket))
    return response


@bp.route("/live/frame.jpg")
def frame() -> Response:
    """The newest frame as one JPEG (calibration, and screens refused a stream); the still
    picture while capture is stopped."""
    folder = _live_dir()
    status = fresh_status(folder, time.time())
    picture = _frame_bytes(folder) if status is not None else None
    return Response(picture or _still(), 200, mimetype="image/jpeg")


@bp.route("/api/live/status")
def status() -> Response:
    """status.json and overlay.json together, or {"status": {"state": "stopped"}}; with the
    stream slots (so the page can say why it has no stream) and the server's clock."""
    now = time.time()
    answer = live_state(_live_dir(), now)
    slots = _slots()
    answer.update(streams={"open": slots.open, "max": slots.limit}, server_wall=now)
    return jsonify(answer)


# --- the page -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyChoice:
    """One study offered in the picker: its patient, and when it arrived (the page shows
    that in local time)."""

    study_id: int
    text: str
    received_at: str


def recent_studies(conn: sqlite3.Connection, now: datetime | None = None) -> list[StudyChoice]:
    """Studies received in the last RECENT_HOURS, newest first (the patient being scanned is
    most likely one of them), at most RECENT_STUDIES."""
    since = (now or datetime.now(timezone.utc)) - timedelta(hours=RECENT_HOURS)
    query = WorklistQuery(since=since.isoformat(timespec="microseconds"), limit=500)
    rows = sorted(worklist(conn, query), key=lambda row: row.received_at, reverse=True)
    return [_choice(row) for row in rows[:RECENT_STUDIES]]


def _choice(row: StudyRow) -> StudyChoice:
    name = patient_name(row.patient_name) or t("live.no_name")
    text = " · ".join(part for part in (name, row.patient_id) if part)
    return StudyChoice(row.study_id, text, row.received_at)


def _stream_max_s() -> float:
    return float(current_app.config.get("LIVE_STREAM_MAX_S", STREAM_MAX_S))


@bp.route("/live")
def page() -> str:
    """The live picture with its overlay, the state in plain words, and the buttons."""
    settings = _settings()
    idle_ms = settings.ui.session_timeout_min * 60_000
    return render_template(
        "live/index.html",
        studies=recent_studies(_store().conn),
        utc_text=utc_text,
        configured=settings.capture.source.kind != "none",
        source=settings.capture.source,
        clip_seconds=settings.capture.clip_seconds,
        poll_ms=int(POLL_S * 1000),
        stream_max_ms=int(_stream_max_s() * 1000),
        idle_ms=idle_ms,
        viewer=secrets.token_urlsafe(12),
    )


# --- commands -----------------------------------------------------------------------------------


class Refused(Exception):
    """A command the page sent that cannot be queued: which field, and why (for people)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _posted() -> Mapping[str, Any]:
    """The request's fields, from JSON (appFetch) or a plain form."""
    if request.is_json:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise Refused("", t("live.bad_request"))
        return data
    return request.form


def _text_field(data: Mapping[str, Any], name: str) -> str:
    """A patient field as typed; JSON may carry a list or a number, which is not a name."""
    value = data.get(name) or ""
    if not isinstance(value, str):
        raise Refused(name, t("live.bad_characters"))
    return value


def save_target(conn: sqlite3.Connection, data: Mapping[str, Any]) -> tuple[int | None, str, str]:
    """(study id, patient ID, patient name) of a save: an existing study, or a new patient."""
    chosen = str(data.get("study_id") or "").strip()
    if chosen and chosen != "new":
        study_id = whole_number(chosen, low=1)
        if study_id is None or capture.study_for_capture(conn, study_id) is None:
            raise Refused("study_id", t("live.no_such_study"))
        return study_id, "", ""
    try:  # the builder's own rules, now rather than when the worker saves
        patient_id, name = patient_values(
            _text_field(data, "patient_id"), _text_field(data, "patient_name")
        )
    except DetailsError as exc:
        raise Refused(exc.field, error_text(exc, "imports.detail_")) from exc
    if not patient_id and not name:
        raise Refused("patient_id", t("live.patient_needed"))
    return None, patient_id, name


def _queue(data: Mapping[str, Any]) -> int:
    kind = str(data.get("kind", ""))
    if kind not in capture.KINDS:
        raise Refused("kind", t("live.bad_kind"))
    conn = _store().conn
    study_id, patient_id, name = (
        save_target(conn, data) if kind in capture.SAVES else (None, "", "")
    )
    try:
        return capture.queue_request(conn, kind, g.user.username, study_id, patient_id, name)
    except capture.CaptureRequestError as exc:  # the store's own checks: says why
        raise Refused("", str(exc)) from exc


@bp.route("/live/command", methods=["POST"])
def command() -> tuple[Response, int]:
    """Queue freeze, resume, save_frame or save_clip for the worker's capture loop (audited
    by the store); the request's id and where to follow it."""
    if _settings().capture.source.kind == "none":  # nobody would ever carry it out
        return jsonify(error=t("live.not_configured"), field=""), 409
    try:
        request_id = _queue(_posted())
    except Refused as refused:
        return jsonify(error=refused.message, field=refused.field), 400
    url = url_for("live.request_state", request_id=request_id)
    return jsonify(request_id=request_id, status_url=url), 202


@bp.route("/api/live/request/<int:request_id>")
def request_state(request_id: int) -> Response:
    """A queued request's state; once a save is done, the study it went into."""
    conn = _store().conn
    row = capture.request_row(conn, request_id)
    if row is None:
        abort(404)
    answer: dict[str, Any] = {"id": row["id"], "kind": row["kind"], "state": row["state"]}
    if row["state"] == "failed":
        answer["reason"] = row["result"]
    elif row["state"] == "done":
        answer.update(_done(conn, row["result"]))
    return jsonify(answer)


def _done(conn: sqlite3.Connection, text: str) -> dict[str, Any]:
    """The worker's result, and for a saved image the study it is in (and its page)."""
    try:
        result = json.loads(text) if text else {}
    except ValueError:
        result = {}
    result = result if isinstance(result, dict) else {}
    answer: dict[str, Any] = {"result": result}
    instance_id = result.get("instance_id")
    if isinstance(instance_id, int) and not isinstance(instance_id, bool):
        try:
            study_id = analyses.study_of(conn, instance_id)
        except KeyError:
            return answer
        answer.update(study_id=study_id, study_url=url_for("study.view", study_id=study_id))
    return answer


# --- calibration (admins) -----------------------------------------------------------------------


def _device(status: Mapping[str, Any] | None) -> str:
    """The capture device's name as the capture loop reports it (the name its calibration
    is stored under), else as configured."""
    device = status.get("device") if status else None
    if isinstance(device, str) and device.strip():
        return device
    return _settings().capture.source.name


def _frame_size(status: Mapping[str, Any] | None) -> tuple[int, int]:
    size = status.get("size") if status else None
    if isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return int(size[0]), int(size[1])
    source = _settings().capture.source
    return source.width, source.height


def _region(value: Any) -> list[int] | None:
    ok = isinstance(value, list) and len(value) == 4
    return [int(v) for v in value] if ok and all(isinstance(v, int) for v in value) else None


@bp.route("/live/calibrate", methods=["GET"])
@roles_required("admin")
def calibrate_form() -> str:
    return _calibrate_page({}, {})


def _calibrate_page(values: Mapping[str, str], errors: Mapping[str, str]) -> str:
    status = fresh_status(_live_dir(), time.time())
    device = _device(status)
    width, height = _frame_size(status)
    saved = capture.calibration(_store().conn, device)
    detected = _region(status.get("region")) if status else None
    if not values and saved is not None:
        values = {
            "x": str(saved.x),
            "y": str(saved.y),
            "width": str(saved.width),
            "height": str(saved.height),
            "mm_per_pixel": "" if saved.mm_per_pixel is None else f"{saved.mm_per_pixel:g}",
        }
    return render_template(
        "live/calibrate.html",
        device=device,
        running=status is not None,
        width=width,
        height=height,
        saved=saved,
        detected=detected,
        values=values,
        errors=errors,
    )


@dataclass(frozen=True)
class CalibrationForm:
    x: int
    y: int
    width: int
    height: int
    mm_per_pixel: float | None


def parse_calibration(form: Mapping[str, str], size: tuple[int, int]) -> CalibrationForm:
    """The box (inside the frame) and its scale: mm per pixel as entered, or worked out from
    a known depth in cm over the box's height; neither leaves the scale unknown."""
    x, y = _int_field(form, "x", 0), _int_field(form, "y", 0)
    width, height = _int_field(form, "width", 1), _int_field(form, "height", 1)
    if x + width > size[0] or y + height > size[1]:
        raise Refused("width", t("live.box_outside", width=size[0], height=size[1]))
    mm = _float_field(form, "mm_per_pixel", _MAX_MM_PER_PIXEL)
    depth = _float_field(form, "depth_cm", _MAX_DEPTH_CM)
    if depth is not None:  # the measured depth wins over a scale typed before the box changed
        mm = round(depth * 10.0 / height, 6)
        if not _MIN_MM_PER_PIXEL <= mm <= _MAX_MM_PER_PIXEL:
            raise Refused("depth_cm", t("live.bad_number", high=f"{_MAX_DEPTH_CM:g}"))
    elif mm is not None and mm < _MIN_MM_PER_PIXEL:
        raise Refused("mm_per_pixel", t("live.bad_number", high=f"{_MAX_MM_PER_PIXEL:g}"))
    return CalibrationForm(x, y, width, height, mm)


def _int_field(form: Mapping[str, str], name: str, low: int) -> int:
    number = whole_number(str(form.get(name, "")), low=low)
    if number is None:
        raise Refused(name, t("live.bad_whole", low=low))
    return number


def _float_field(form: Mapping[str, str], name: str, high: float) -> float | None:
    text = str(form.get(name, "")).strip().replace(",", ".")
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or not 0 < value <= high:
        raise Refused(name, t("live.bad_number", high=f"{high:g}"))
    return value


@bp.route("/live/calibrate/clear", methods=["POST"])
@roles_required("admin")
def clear_calibration() -> ViewResult:
    """Forget this device's calibration: the loop finds the scan area itself again."""
    status = fresh_status(_live_dir(), time.time())
    if capture.clear_calibration(_store().conn, _device(status), g.user.username):
        flash(t("live.calibration_cleared"))
    return redirect(url_for("live.calibrate_form"))


@bp.route("/live/calibrate", methods=["POST"])
@roles_required("admin")
def calibrate() -> ViewResult:
    """Store the scan region and scale for this device (audited by the store); the capture
    loop uses them from its next frame on."""
    status = fresh_status(_live_dir(), time.time())
    try:
        box = parse_calibration(request.form, _frame_size(status))
        capture.set_calibration(
            _store().conn,
            _device(status),
            box.x,
            box.y,
            box.width,
            box.height,
            box.mm_per_pixel,
            g.user.username,
        )
    except Refused as refused:
        return _calibrate_page(request.form, {refused.field: refused.message}), 400
    except capture.CaptureRequestError as exc:
        return _calibrate_page(request.form, {"width": str(exc)}), 400
    flash(t("live.calibrated"))
    return redirect(url_for("live.calibrate_form"))
