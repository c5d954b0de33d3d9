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

This module holds the routes; reading the worker's files is `live_files`, the stream and its
slots `live_stream`, and checking what the pages post `live_forms`.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

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

from appliance.store import analyses, capture
from appliance.store.worklist import StudyRow, WorklistQuery, worklist
from appliance.web.db import SETTINGS, get_conn, get_settings, get_store
from appliance.web.i18n import t
from appliance.web.live_files import frame_bytes, fresh_status, live_state, still_picture
from appliance.web.live_forms import Refused, parse_calibration, posted, save_target
from appliance.web.live_stream import BOUNDARY, FrameStream, StreamSlots
from appliance.web.reasons import describe
from appliance.web.security import ViewResult, roles_required
from appliance.web.worklist import patient_name, utc_text

bp = Blueprint("live", __name__)

MAX_STREAMS = 2  # default for app.config["LIVE_MAX_STREAMS"]
STREAM_MAX_S = 180.0  # default for app.config["LIVE_STREAM_MAX_S"]
SPARE_THREADS = 2  # waitress threads never taken by streams
POLL_S = 0.15  # how often the page asks /api/live/status (about 7 times a second)
RECENT_HOURS = 24  # studies offered to save into
RECENT_STUDIES = 20
_SLOTS = "appliance.live.streams"
_VIEWER = re.compile(r"^[A-Za-z0-9_-]{8,64}\Z")


def _live_dir() -> Path:
    return get_store().paths.live_dir


def _still() -> bytes:
    source = get_settings().capture.source
    return still_picture(source.width, source.height)


# --- streams ------------------------------------------------------------------------------------


@bp.record_once
def _make_slots(state: BlueprintSetupState) -> None:
    """One set of stream slots per app, sized by its config (create_app's overrides apply)."""
    app = state.app
    threads = app.extensions[SETTINGS].ui.threads
    wanted = int(app.config.get("LIVE_MAX_STREAMS", MAX_STREAMS))
    app.extensions[_SLOTS] = StreamSlots(max(0, min(wanted, threads - SPARE_THREADS)))


def _slots() -> StreamSlots:
    slots: StreamSlots = current_app.extensions[_SLOTS]
    return slots


def _viewer_key() -> str:
    """The page names itself (`viewer`, random per page load) so that its reconnects take
    over its own slot; the user is part of the key, so nobody can take over another's."""
    return _named_viewer() or f"{g.user.id}:anonymous:{secrets.token_hex(8)}"


def _named_viewer() -> str:
    viewer = request.args.get("viewer", "")
    return f"{g.user.id}:{viewer}" if _VIEWER.match(viewer) else ""


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
        default_fps=get_settings().capture.source.fps,
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
    picture = frame_bytes(folder) if status is not None else None
    return Response(picture or _still(), 200, mimetype="image/jpeg")


@bp.route("/api/live/status")
def status() -> Response:
    """status.json and overlay.json together, or {"status": {"state": "stopped"}}; with the
    stream slots and, for the page that names itself (`viewer`), whether its last try for a
    stream was refused (so it says why it has no stream), and the server's clock."""
    now = time.time()
    answer = live_state(_live_dir(), now)
    slots = _slots()
    viewer = _named_viewer()
    streams = {"open": slots.open, "max": slots.limit}
    answer.update(streams={**streams, "refused": bool(viewer) and slots.was_refused(viewer)})
    answer["server_wall"] = now
    _plain_held_back(answer.get("overlay"))
    return jsonify(answer)


def _plain_held_back(overlay: Any) -> None:
    """Why the live picture has no outline, in plain words (the check's own text stays)."""
    if (
        isinstance(overlay, dict)
        and isinstance(overlay.get("held_back"), str)
        and overlay["held_back"]
    ):
        overlay["held_back_text"] = describe(overlay["held_back"], "held_back").plain


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
    settings = get_settings()
    idle_ms = settings.ui.session_timeout_min * 60_000
    return render_template(
        "live/index.html",
        studies=recent_studies(get_conn()),
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


def _queue(data: Mapping[str, Any]) -> int:
    kind = str(data.get("kind", ""))
    if kind not in capture.KINDS:
        raise Refused("kind", t("live.bad_kind"))
    conn = get_conn()
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
    if get_settings().capture.source.kind == "none":  # nobody would ever carry it out
        return jsonify(error=t("live.not_configured"), field=""), 409
    try:
        request_id = _queue(posted())
    except Refused as refused:
        return jsonify(error=refused.message, field=refused.field), 400
    url = url_for("live.request_state", request_id=request_id)
    return jsonify(request_id=request_id, status_url=url), 202


@bp.route("/api/live/request/<int:request_id>")
def request_state(request_id: int) -> Response:
    """A queued request's state; once a save is done, the study it went into."""
    conn = get_conn()
    row = capture.request_row(conn, request_id)
    if row is None:
        abort(404)
    answer: dict[str, Any] = {"id": row["id"], "kind": row["kind"], "state": row["state"]}
    if row["state"] == "failed":
        reason = describe(row["result"] or "", "capture")
        answer.update(reason=f"{reason.plain} {reason.advice}", detail=reason.detail)
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
    return get_settings().capture.source.name


def _frame_size(status: Mapping[str, Any] | None) -> tuple[int, int]:
    size = status.get("size") if status else None
    if isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return int(size[0]), int(size[1])
    source = get_settings().capture.source
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
    saved = capture.calibration(get_conn(), device)
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


@bp.route("/live/calibrate/clear", methods=["POST"])
@roles_required("admin")
def clear_calibration() -> ViewResult:
    """Forget this device's calibration: the loop finds the scan area itself again."""
    status = fresh_status(_live_dir(), time.time())
    if capture.clear_calibration(get_conn(), _device(status), g.user.username):
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
            get_conn(),
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
