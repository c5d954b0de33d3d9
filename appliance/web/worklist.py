"""The worklist: studies by triage priority, then arrival, updating by itself.

The page is rendered whole on the server (it works without script); worklist.js then asks
`/api/worklist` every POLL_S with the version it has. While nothing changed the answer is an
empty 304 after a few index lookups; otherwise it carries the rows, rendered by the same
template as the page, so the two can never disagree.

Every open worklist asks the same question at once when something changes, so a listing (the
rows and their HTML) is kept per store version and query: the first client renders it, the
others are served the copy. A new version makes a new key, so a copy is never stale.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, render_template, request, url_for
from markupsafe import Markup

from appliance.store import feedback
from appliance.store.worklist import STATE_ORDER, TRIAGE_RANKS, StudyRow, WorklistQuery
from appliance.store.worklist import version as worklist_version
from appliance.store.worklist import worklist as list_worklist
from appliance.web.db import get_conn, get_settings
from appliance.web.i18n import t

bp = Blueprint("worklist", __name__)
POLL_S = 1.0  # how often an open worklist asks for news (worklist.js reads it from the page)
PAGE_ROWS = 100  # a light page: a touch panel shows a dozen rows; search finds the rest
_MAX_SEARCH = 64
_MAX_OFFSET_MIN = 14 * 60  # UTC-14 .. UTC+14
_LISTINGS_KEPT = 32
_LISTINGS = "appliance.worklist.listings"
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Listing:
    """One page of rows: as data (the JSON's `rows`) and as the table body's HTML."""

    rows: list[dict[str, Any]]
    html: Markup


@bp.route("/")
def index() -> str:
    """The page with its filters and the first PAGE_ROWS rows; worklist.js keeps it current."""
    conn = get_conn()
    current = worklist_version(conn)  # read first: a change while listing shows next poll
    filters = _filters(request.args)
    listing = _listing(conn, current, _query(filters))
    settings = get_settings().ui
    return render_template(
        "worklist/index.html",
        listing=listing,
        filters=filters,
        version=current,
        priorities=list(TRIAGE_RANKS),
        states=STATE_ORDER,
        limit=PAGE_ROWS,
        poll_ms=int(POLL_S * 1000),
        idle_ms=settings.session_timeout_min * 60_000,
    )


@bp.route("/api/worklist")
def api() -> Response:
    """The rows for the page's filters, or 304 when the version `v` the page has is current."""
    conn = get_conn()
    current = worklist_version(conn)
    if request.args.get("v") == current:
        return Response(status=304)
    listing = _listing(conn, current, _query(_filters(request.args)))
    rows = [_row_json(row) for row in listing.rows]
    note = t("worklist.shown", n=len(rows), limit=PAGE_ROWS)
    return jsonify(version=current, count=len(rows), rows=rows, html=listing.html, note=note)


def _filters(args: Mapping[str, str]) -> dict[str, str]:
    """The filters asked for, each kept only if it is one the page offers."""
    return {
        "day": "today" if args.get("day") == "today" else "",
        "priority": args.get("priority", "") if args.get("priority") in TRIAGE_RANKS else "",
        "state": args.get("state", "") if args.get("state") in STATE_ORDER else "",
        "q": " ".join(args.get("q", "").split())[:_MAX_SEARCH],
        "tzo": _offset_text(args.get("tzo")),
    }


def _query(filters: Mapping[str, str]) -> WorklistQuery:
    return WorklistQuery(
        since=start_of_today(_offset(filters["tzo"])) if filters["day"] else None,
        priority=filters["priority"] or None,
        state=filters["state"] or None,
        search=filters["q"],
        limit=PAGE_ROWS,
    )


def _listing(conn: sqlite3.Connection, version: str, query: WorklistQuery) -> Listing:
    """The rows `query` selects at this version: kept, unless "read first" makes them
    depend on who asks."""
    if get_settings().ui.read_first:
        return _make_listing(conn, query)
    key = (version, query)
    kept: OrderedDict[tuple[str, WorklistQuery], Listing]
    kept = current_app.extensions.setdefault(_LISTINGS, OrderedDict())
    with _LOCK:
        found = kept.get(key)
    if found is not None:
        return found
    made = _make_listing(conn, query)
    with _LOCK:
        kept[key] = made
        while len(kept) > _LISTINGS_KEPT:
            kept.popitem(last=False)
    return made


def _make_listing(conn: sqlite3.Connection, query: WorklistQuery) -> Listing:
    studies = list_worklist(conn, query)
    hidden = _findings_hidden(conn, [s.study_id for s in studies])
    rows = [row_view(study, study.study_id in hidden) for study in studies]
    html = render_template("worklist/_rows.html", rows=rows)  # autoescaped: safe to embed
    return Listing(rows, Markup(html))  # noqa: S704


def _findings_hidden(conn: sqlite3.Connection, study_ids: list[int]) -> set[int]:
    """Studies whose top finding this user may not see yet ("read first" mode: the AI's
    findings stay hidden until the user has recorded an impression of the study)."""
    if not get_settings().ui.read_first:
        return set()
    seen = feedback.studies_with_impression(conn, g.user.id, study_ids)
    return set(study_ids) - seen


_JSON_FIELDS = ("id", "patient_id", "received_at", "triage", "state", "top_finding", "reported")


def _row_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """What the JSON says of a row beside its HTML: enough to find and follow a study."""
    return {name: row[name] for name in _JSON_FIELDS}


def row_view(study: StudyRow, hide_findings: bool) -> dict[str, Any]:
    """One worklist row as the template and the JSON API show it."""
    return {
        "id": study.study_id,
        "url": url_for("study.view", study_id=study.study_id),
        "patient_name": patient_name(study.patient_name),
        "patient_id": study.patient_id,
        "modalities": study.modalities.replace(",", ", "),
        "received_at": study.received_at,
        "received_text": utc_text(study.received_at),
        "triage": study.triage,
        "triage_text": t(f"triage.{study.triage}"),
        "state": study.state,
        "state_text": t(f"states.{study.state}"),
        "reason": _reason(study, hide_findings),
        "images": study.images,
        "images_text": t("worklist.images", n=study.images) if study.images > 1 else "",
        "top_finding": "" if hide_findings else study.triage_reason,
        "findings_hidden": hide_findings,
        "reported": study.reported,
    }


def _reason(study: StudyRow, hide_findings: bool) -> str:
    """Why the study is held back, failed or has no model, unless its top finding (shown in
    the next column) already says so."""
    if not hide_findings and study.reason in study.triage_reason:
        return ""
    return study.reason


def patient_name(name: str) -> str:
    """A DICOM person name for people: 'DOE^JANE' -> 'DOE, JANE'."""
    parts = [part for part in name.split("^") if part]
    if len(parts) < 2:
        return " ".join(parts)
    return f"{parts[0]}, {' '.join(parts[1:])}"


def utc_text(iso: str) -> str:
    """The server's fallback for a time the browser shows in local time (worklist.js)."""
    try:
        when = datetime.fromisoformat(iso).astimezone(timezone.utc)
    except ValueError:
        return iso
    return when.strftime("%Y-%m-%d %H:%M UTC")


def start_of_today(offset_min: int | None, now: datetime | None = None) -> str:
    """Midnight of the user's day as a UTC time in the store's form. `offset_min` is the
    browser's `Date.getTimezoneOffset()` (UTC minus local); without it, the appliance's own
    time zone is the clinic's."""
    now = now or datetime.now(timezone.utc)
    if offset_min is None:
        local = now.astimezone()
    else:
        local = now.astimezone(timezone(-timedelta(minutes=offset_min)))
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _offset_text(value: str | None) -> str:
    offset = _offset(value)
    return "" if offset is None else str(offset)


def _offset(value: str | None) -> int | None:
    try:
        minutes = int(value or "")
    except ValueError:
        return None
    return minutes if abs(minutes) <= _MAX_OFFSET_MIN else None
