"""The locked wall view: what a screen shows once its session ended for inactivity.

The studies still waiting (not yet reported), most urgent first, in the privacy-safe form
`ui.wall.fields` chooses (priority, time, modality, initials, accession, state; the full name
only where configured), an urgent banner and, with `ui.wall.sound`, a short tone (wall.js).
It keeps updating every `ui.wall.refresh_s` without a session, and has no way into a study: a
touch asks for the PIN and goes back to the page the user was on (`back`).

Who may read it (security.locked_screen): a signed-in user, or a browser that holds the wall
cookie a sign-in on that same screen left within security.WALL_HOURS (signed, HttpOnly,
SameSite=Strict, Secure through the TLS proxy; signing out on purpose deletes it). The
address a request comes from decides nothing: the TLS proxy on the box reaches the UI from
127.0.0.1 too, so "only localhost" would let every screen behind the proxy in.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    jsonify,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response as WerkzeugResponse

from appliance.config import WallSettings
from appliance.store import users
from appliance.store.worklist import StudyRow, WorklistQuery, accession_numbers, worklist
from appliance.store.worklist import version as worklist_version
from appliance.web.db import get_conn, get_settings
from appliance.web.i18n import t
from appliance.web.reasons import shown_state
from appliance.web.security import locked_screen, safe_next, set_wall_cookie

bp = Blueprint("wall", __name__)
WALL_ROWS = 50  # more than any panel shows; the rest wait their turn
_URGENT = "urgent"


@bp.route("/wall")
@locked_screen
def page() -> str | WerkzeugResponse:
    """The wall. Opening it with a live session locks the screen: the session ends here."""
    back = safe_next(request.args.get("back", ""))
    wall = get_settings().ui.wall
    body = render_template(
        "wall/index.html",
        fields=wall.fields,
        refresh_ms=wall.refresh_s * 1000,
        sound=wall.sound,
        back=back,
        unlock=url_for("auth.signin", next=back),
        headers={field: t(f"wall.field_{field}") for field in wall.fields},
        texts=texts(),
    )
    response = WerkzeugResponse(body, mimetype="text/html")
    session.pop("timed_out", None)  # said here; a touch must get the PIN form, not the wall
    if g.user is not None:
        users.close_session(get_conn(), session.get("sid"))
        session.clear()
        set_wall_cookie(response, g.user.id)
    return response


@bp.route("/api/wall")
@locked_screen
def data() -> Response:
    """The waiting studies with the configured fields only, or 304 while the version `v` the
    screen has is current."""
    session.pop("timed_out", None)
    conn = get_conn()
    current = worklist_version(conn)
    if request.args.get("v") == current:
        return Response(status=304)
    wall = get_settings().ui.wall
    studies = [s for s in worklist(conn, WorklistQuery(limit=WALL_ROWS)) if not s.reported]
    rows = wall_rows(conn, studies, wall)
    urgent = [s.study_id for s in studies if s.triage == _URGENT]
    return jsonify(
        version=current,
        fields=wall.fields,
        rows=rows,
        urgent=len(urgent),
        # Changes when another study becomes urgent (for the tone); says nothing of which.
        urgent_mark=_mark(urgent),
    )


def wall_rows(
    conn: sqlite3.Connection, studies: list[StudyRow], wall: WallSettings
) -> list[dict[str, str]]:
    """Per study, the configured fields' texts and nothing else (`level`, the priority for
    the row's colour, only when priority is one of them)."""
    wanted = set(wall.fields)
    accessions = (
        accession_numbers(conn, [s.study_id for s in studies]) if "accession" in wanted else {}
    )
    rows = []
    for study in studies:
        values = _values(study, accessions.get(study.study_id, ""))
        row: dict[str, str] = {field: values[field] for field in wall.fields}
        if "priority" in wanted:
            row["level"] = study.triage
        rows.append(row)
    return rows


def _values(study: StudyRow, accession: str) -> dict[str, str]:
    return {
        "priority": t(f"triage.{study.triage}"),
        "time": study.received_at,
        "modality": study.modalities.replace(",", ", "),
        "initials": initials(study.patient_name),
        "accession": accession,
        "name": full_name(study.patient_name),
        "state": t("states." + shown_state(study.state, study.triage_reason)),
    }


def initials(name: str) -> str:
    """A DICOM person name's initials, given names first: 'DOE^JANE^ANN' -> 'J.A.D.'."""
    parts = [part.strip() for part in name.split("=")[0].split("^")]
    family, given = (parts[0] if parts else ""), parts[1:3]
    words = [word for part in [*given, family] for word in part.replace("-", " ").split()]
    return "".join(word[0].upper() + "." for word in words if word[0].isalnum())


def full_name(name: str) -> str:
    """'DOE^JANE' -> 'DOE, JANE' (a reading room may show names: `name` in ui.wall.fields)."""
    parts = [part for part in name.split("=")[0].split("^") if part]
    if len(parts) < 2:
        return " ".join(parts)
    return f"{parts[0]}, {' '.join(parts[1:3])}"


def _mark(urgent: list[int]) -> str:
    """Keyed with the app's secret, so that it cannot be turned back into study ids."""
    if not urgent:
        return ""
    text = ",".join(str(i) for i in sorted(urgent)).encode()
    key = str(current_app.secret_key or "").encode()
    return hmac.new(key, text, hashlib.sha256).hexdigest()[:16]


def texts() -> dict[str, Any]:
    """Words wall.js needs, rendered into the page (no English in scripts)."""
    return {
        "urgent_one": t("wall.urgent_one"),
        "urgent_many": t("wall.urgent_many"),
        "updated": t("wall.updated"),
        "offline": t("wall.offline"),
    }
