"""The worklist: studies by triage priority, then arrival, updating by itself.

Made for a 7-inch panel (800 x 480): one line of search and a "Filters" toggle (the other
filters open on demand), compact rows a finger can still hit, each a link as a whole, and a
short page (PAGE_ROWS rows; "show more" adds as many again). Every state and reason is said in
plain words (appliance.web.reasons); findings without their scores and thresholds (the study
page has those).

The page is rendered whole on the server (it works without script); worklist.js then asks
`/api/worklist` every POLL_S with the version it has. While nothing changed the answer is an
empty 304 after a few index lookups; otherwise it carries the rows, rendered by the same
template as the page, so the two can never disagree.

Every open worklist asks the same question at once when something changes, so a listing (the
rows and their HTML) is kept per store version and query: the first client renders it, the
others are served the copy. A new version makes a new key, so a copy is never stale.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, render_template, request, url_for
from markupsafe import Markup

from appliance.store import feedback
from appliance.store.worklist import MAX_LIMIT, STATE_ORDER, TRIAGE_RANKS, StudyRow, WorklistQuery
from appliance.store.worklist import version as worklist_version
from appliance.store.worklist import worklist as list_worklist
from appliance.web.db import get_conn, get_settings
from appliance.web.i18n import current_language, t
from appliance.web.reasons import describe, shown_state

bp = Blueprint("worklist", __name__)
POLL_S = 1.0  # how often an open worklist asks for news (worklist.js reads it from the page)
PAGE_ROWS = 25  # a short page: a panel shows 6 to 8 rows; "show more" adds as many again
_MAX_SEARCH = 64
_MAX_OFFSET_MIN = 14 * 60  # UTC-14 .. UTC+14
_LISTINGS_KEPT = 32
_LISTINGS = "appliance.worklist.listings"
_LOCK = threading.Lock()


_STATES_NEEDING_REASON = ("held_back", "failed", "no_model")
_FILTERS = ("day", "priority", "state")  # behind the "Filters" toggle (the search is not)
_NO_MODEL_SUMMARY = "no applicable model"  # worker/analyse.py: a no_model analysis' summary
# The worker's summaries (worker/triage.py describe): "Pleural effusion 0.91 (threshold
# 0.45) (+2 more)" and "Anechoic fluid 1,696 pixels (no physical pixel size)". The worklist
# says what was found; its score, threshold and pixel count are on the study page.
_SCORED = re.compile(r"^(?P<name>.+?) \d+(?:\.\d+)? \(threshold \d+(?:\.\d+)?\)")
_UNCALIBRATED = re.compile(r"^(?P<name>.+?) [\d,]+ pixels \(no physical pixel size\)")
_MORE = re.compile(r" \(\+(?P<n>\d+) more\)$")


@dataclass(frozen=True)
class Listing:
    """One page of rows: as data (the JSON's `rows`) and as the table body's HTML; `more`
    when the query has rows beyond this page."""

    rows: list[dict[str, Any]]
    html: Markup
    more: bool


@bp.route("/")
def index() -> str:
    """The page with its filters and the first rows; worklist.js keeps it current."""
    conn = get_conn()
    current = worklist_version(conn)  # read first: a change while listing shows next poll
    filters = _filters(request.args)
    listing = _listing(conn, current, _query(filters))
    shown = _rows_wanted(filters)
    return render_template(
        "worklist/index.html",
        listing=listing,
        filters=filters,
        active=sum(1 for name in _FILTERS if filters[name]),
        version=current,
        priorities=list(TRIAGE_RANKS),
        states=STATE_ORDER,
        limit=shown,
        more_url=_more_url(filters, shown),
        poll_ms=int(POLL_S * 1000),
    )


@bp.route("/api/worklist")
def api() -> Response:
    """The rows for the page's filters, or 304 when the version `v` the page has is current."""
    conn = get_conn()
    current = worklist_version(conn)
    if request.args.get("v") == current:
        return Response(status=304)
    filters = _filters(request.args)
    listing = _listing(conn, current, _query(filters))
    rows = [_row_json(row) for row in listing.rows]
    return jsonify(
        version=current,
        count=len(rows),
        rows=rows,
        html=listing.html,
        more=listing.more,
        note=_note(len(rows)),
    )


def _note(count: int) -> str:
    return t("worklist.shown", n=count)


def _filters(args: Mapping[str, str]) -> dict[str, str]:
    """The filters asked for, each kept only if it is one the page offers."""
    return {
        "day": "today" if args.get("day") == "today" else "",
        "priority": args.get("priority", "") if args.get("priority") in TRIAGE_RANKS else "",
        "state": args.get("state", "") if args.get("state") in STATE_ORDER else "",
        "q": " ".join(args.get("q", "").split())[:_MAX_SEARCH],
        "tzo": _offset_text(args.get("tzo")),
        "rows": _rows_text(args.get("rows")),
    }


def _rows_text(value: str | None) -> str:
    """How many rows "show more" asked for: a whole number of pages up to the store's cap;
    anything else is the first page ("")."""
    try:
        wanted = int(value or "")
    except ValueError:
        return ""
    if wanted <= PAGE_ROWS:
        return ""
    pages = -(-wanted // PAGE_ROWS)  # rounded up
    return str(min(pages * PAGE_ROWS, MAX_LIMIT - 1))


def _rows_wanted(filters: Mapping[str, str]) -> int:
    return int(filters["rows"] or PAGE_ROWS)


def _more_url(filters: Mapping[str, str], shown: int) -> str:
    """The page again with PAGE_ROWS more rows, or "" when the store's cap is reached."""
    if shown + 1 >= MAX_LIMIT:
        return ""
    kept: dict[str, Any] = {k: v for k, v in filters.items() if v and k != "rows"}
    return url_for("worklist.index", **kept, rows=shown + PAGE_ROWS)


def _query(filters: Mapping[str, str]) -> WorklistQuery:
    return WorklistQuery(
        since=start_of_today(_offset(filters["tzo"])) if filters["day"] else None,
        priority=filters["priority"] or None,
        state=filters["state"] or None,
        search=filters["q"],
        limit=_rows_wanted(filters) + 1,  # one more than shown: are there more?
    )


def _listing(conn: sqlite3.Connection, version: str, query: WorklistQuery) -> Listing:
    """The rows `query` selects at this version: kept, unless "read first" makes them
    depend on who asks. Kept per day too (a time shows its date once it is not today's) and
    per language (the rows are rendered text)."""
    if get_settings().ui.read_first:
        return _make_listing(conn, query)
    key = (version, query, date.today(), current_language())
    kept: OrderedDict[tuple[str, WorklistQuery, date, str], Listing]
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
    found = list_worklist(conn, query)
    studies = found[: query.limit - 1]
    hidden = _findings_hidden(conn, [s.study_id for s in studies])
    rows = [row_view(study, study.study_id in hidden) for study in studies]
    filtered = bool(query.since or query.priority or query.state or query.search)
    # autoescaped: safe to embed
    html = render_template("worklist/_rows.html", rows=rows, filtered=filtered)
    return Listing(rows, Markup(html), more=len(found) > len(studies))  # noqa: S704


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
    """One worklist row as the template and the JSON API show it. `state` is the state to
    show: the store's, with "no_findings" for a study analysed without a positive finding."""
    state = shown_state(study.state, _findings_summary(study))
    return {
        "id": study.study_id,
        "url": url_for("study.view", study_id=study.study_id),
        "patient_name": patient_name(study.patient_name),
        "patient_id": study.patient_id,
        "modalities": study.modalities.replace(",", ", "),
        "received_at": study.received_at,
        "triage": study.triage,
        "triage_text": t(f"triage.{study.triage}"),
        "state": state,
        "state_text": state_words(state),
        "reason": _reason(study),
        "images": study.images,
        "images_text": t("worklist.images", n=study.images) if study.images > 1 else "",
        "top_finding": "" if hide_findings else finding_words(_findings_summary(study)),
        "findings_hidden": hide_findings and bool(_findings_summary(study)),
        "reported": study.reported,
    }


def state_words(state: str) -> str:
    """A study's state in plain words; a study still waiting for analysis says so."""
    return t("worklist.state_received") if state == "received" else t(f"states.{state}")


def _findings_summary(study: StudyRow) -> str:
    """The study's top summary when it comes from an image's findings; "" when it is the
    summary of a held-back, failed or unanswered image (its reason says that better)."""
    summary = study.triage_reason.strip()
    if not summary or summary == _NO_MODEL_SUMMARY or summary.startswith("held back: "):
        return ""
    if any(reason and reason in summary for reason in study.reasons.values()):
        return ""
    return summary


def _reason(study: StudyRow) -> str:
    """Why the study is held back, failed or has no model, in one plain sentence."""
    if study.state not in _STATES_NEEDING_REASON:
        return ""
    return describe(study.reason, study.state).plain


def finding_words(summary: str) -> str:
    """A findings summary as the worklist says it: what was found (and how many more), without
    score, threshold or pixel count; "" when nothing was found above its threshold."""
    if shown_state("findings", summary) == "no_findings":
        return ""
    more = _MORE.search(summary)
    text = summary[: more.start()] if more else summary
    plain = _SCORED.match(text) or _UNCALIBRATED.match(text)
    words = plain.group("name") if plain else text
    return t("worklist.more_found", finding=words, n=more.group("n")) if more else words


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
