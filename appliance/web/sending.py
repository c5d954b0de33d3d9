"""The study's results for the clinic's record, as a user sees them: how sending to each
destination goes, "Send again", and the PDF report.

The worker builds the objects (SR, heatmap images, PDF report) and queues their deliveries; the
sender role sends them. This page only reads what they wrote (`store.outbox`) and, for "Send
again", writes a request the worker acts on (an outputs job per analysed image, purpose
"manual:<destination>"), then rings its doorbell. Each destination gets one line in plain words:
what was sent and when, what waits and why, what failed and why.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path

import pydicom
from flask import Blueprint, abort, g, redirect, request, send_file, url_for
from pydicom.errors import InvalidDicomError
from werkzeug.wrappers import Response as WerkzeugResponse

from appliance.config import Destination, Settings
from appliance.store import audit, feedback, outbox
from appliance.store import worklist as stored
from appliance.store.db import transaction
from appliance.store.worklist import ImageRow
from appliance.web.db import get_conn, get_settings, get_store
from appliance.web.i18n import t
from appliance.web.security import roles_required
from appliance.web.study_notes import leave_note

log = logging.getLogger(__name__)
bp = Blueprint("sending", __name__)
SENDERS = ("clinician", "admin")  # who may send again (and export): those who read the study
KIND_ORDER = ("report", "sr", "heatmap", "image")
UNANALYSED = ("received", "analysing")  # image states with no analysis to build objects of
_IN_FLIGHT = (outbox.WAITING, outbox.SENDING)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


# --- what the page shows ----------------------------------------------------------------------


@dataclass(frozen=True)
class DestinationLine:
    """One destination's sending state for one study, counted over the study's current
    objects (and older ones still on their way)."""

    name: str
    address: str  # "PACS at 10.0.0.5:4242"; empty for a destination no longer configured
    when: str  # findings | final | manual; empty for a destination no longer configured
    idle: str  # why nothing is queued: findings | final | manual | gone (sending.none_*)
    state: str  # failed | waiting | sending | sent | none: the one that matters most
    total: int
    sent: int
    sent_at: str  # UTC ISO time of the newest one sent
    sending: int
    waiting: int
    waiting_since: str
    waiting_reason: str
    next_try: str  # UTC ISO time; empty when due now
    failed: int
    failed_reason: str
    kinds: str  # "report, structured report, 2 heatmaps"
    revision: int  # the newest revision among the objects; 0 when only originals

    @property
    def configured(self) -> bool:
        return bool(self.when)


@dataclass(frozen=True)
class ReportLink:
    """The newest PDF report of one analysed image."""

    output_id: int
    instance_id: int
    image_number: int  # 1-based, in the study's image order
    revision: int


@dataclass(frozen=True)
class SendingPanel:
    lines: list[DestinationLine]
    objects: int  # the study's current objects
    preparing: bool  # images analysed, objects not made yet
    reports: list[ReportLink]
    not_made: list[str]  # why the objects of some images could not be made


def sending_panel(
    conn: sqlite3.Connection, study_id: int, settings: Settings, images: Sequence[ImageRow]
) -> SendingPanel:
    """Everything the study page says about the clinic's record."""
    current = outbox.study_outputs(conn, study_id)
    analysed = any(image.state not in UNANALYSED for image in images)
    not_made = outbox.failed_outputs(conn, study_id)
    return SendingPanel(
        lines=destination_lines(conn, study_id, settings, current),
        objects=len(current),
        preparing=analysed and not current and not not_made,
        reports=report_links(current, images),
        not_made=not_made,
    )


def destination_lines(
    conn: sqlite3.Connection,
    study_id: int,
    settings: Settings,
    current: Sequence[sqlite3.Row],
) -> list[DestinationLine]:
    """One line per configured destination, then per destination the study's deliveries
    still name although it is no longer configured."""
    uids = {row["sop_instance_uid"] for row in current}
    by_name: dict[str, list[sqlite3.Row]] = {}
    for row in outbox.study_deliveries(conn, study_id):
        if row["kind"] == "image" or row["sop_instance_uid"] in uids or row["state"] in _IN_FLIGHT:
            by_name.setdefault(row["destination"], []).append(row)
    names = [d.name for d in settings.destinations]
    names += sorted(name for name in by_name if name not in names)
    final = any(entry.final for entry in feedback.impressions_for(conn, study_id))
    return [_line(name, settings.destination(name), by_name.get(name, []), final) for name in names]


def _line(
    name: str, destination: Destination | None, rows: list[sqlite3.Row], final: bool
) -> DestinationLine:
    by_state = {
        state: [row for row in rows if row["state"] == state]
        for state in (outbox.WAITING, outbox.SENDING, outbox.SENT, outbox.FAILED)
    }
    waiting, failed = by_state[outbox.WAITING], by_state[outbox.FAILED]
    newest_reason = _newest(row for row in waiting if row["last_reason"])
    newest_failure = _newest(failed)
    next_try = min((float(row["next_try"]) for row in waiting), default=0.0)
    return DestinationLine(
        name=name,
        address=_address(destination),
        when=destination.when if destination else "",
        idle=_idle(destination, final),
        state=_state(by_state),
        total=len(rows),
        sent=len(by_state[outbox.SENT]),
        sent_at=max(
            (str(row["sent_at"]) for row in by_state[outbox.SENT] if row["sent_at"]), default=""
        ),
        sending=len(by_state[outbox.SENDING]),
        waiting=len(waiting),
        waiting_since=min((_queued_at(row) for row in waiting), default=""),
        waiting_reason=newest_reason["last_reason"] if newest_reason else "",
        next_try=_iso(next_try) if next_try > datetime.now(timezone.utc).timestamp() else "",
        failed=len(failed),
        failed_reason=newest_failure["last_reason"] if newest_failure else "",
        kinds=kinds_text(row["kind"] for row in rows),
        revision=max((int(row["revision"] or 0) for row in rows), default=0),
    )


def _idle(destination: Destination | None, final: bool) -> str:
    """Why a destination has nothing of the study: not set up any more, waiting for what its
    `when` asks (a final impression already given counts as there), or not yet queued."""
    if destination is None:
        return "gone"
    if destination.when == "final" and final:
        return "findings"
    return destination.when


def _state(by_state: dict[str, list[sqlite3.Row]]) -> str:
    for state in (outbox.FAILED, outbox.WAITING, outbox.SENDING, outbox.SENT):
        if by_state[state]:
            return state
    return "none"


def _newest(rows: Iterable[sqlite3.Row]) -> sqlite3.Row | None:
    return max(rows, key=lambda row: str(row["updated_at"]), default=None)


def _queued_at(row: sqlite3.Row) -> str:
    """When a delivery was queued (its creation where the row says, else its last change)."""
    keys = row.keys()
    return str(row["created_at"] if "created_at" in keys else row["updated_at"])


def _address(destination: Destination | None) -> str:
    if destination is None:
        return ""
    return t(
        "sending.address",
        ae=destination.called_ae_title,
        host=destination.host,
        port=destination.port,
    )


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def kinds_text(kinds: Iterable[str]) -> str:
    """The kinds of objects in words, with their counts: "report, structured report, 2
    heatmaps"."""
    counts: dict[str, int] = {}
    for kind in kinds:
        counts[kind] = counts.get(kind, 0) + 1
    ordered = sorted(counts, key=lambda k: KIND_ORDER.index(k) if k in KIND_ORDER else 99)
    words = [
        t(f"sending.kind_{kind}")
        if counts[kind] == 1
        else t(f"sending.kinds_{kind}", n=counts[kind])
        for kind in ordered
        if kind in KIND_ORDER
    ]
    return t("sending.list_separator").join(words)


def report_links(current: Sequence[sqlite3.Row], images: Sequence[ImageRow]) -> list[ReportLink]:
    """The newest PDF report of each analysed image, in the study's image order."""
    number = {image.instance_id: index for index, image in enumerate(images, start=1)}
    links = [
        ReportLink(row["id"], row["instance_ref"], number[row["instance_ref"]], row["revision"])
        for row in current
        if row["kind"] == "report" and row["instance_ref"] in number
    ]
    return sorted(links, key=lambda link: link.image_number)


# --- send again -------------------------------------------------------------------------------


@bp.route("/study/<int:study_id>/send-again", methods=["POST"])
@roles_required(*SENDERS)
def send_again(study_id: int) -> WerkzeugResponse:
    """Build the study's objects again and queue them for one destination, whatever was sent
    before (the peer sees a repeat as a duplicate of the same SOP Instance UID)."""
    conn = get_conn()
    if stored.study_header(conn, study_id) is None:
        abort(404)
    settings = get_settings()
    name = request.form.get("destination", "")
    back = url_for("study.view", study_id=study_id) + "#sending"
    if settings.destination(name) is None:
        leave_note(study_id, "sending", t("sending.unknown_destination", name=name[:64]), True)
        return redirect(back)
    place = f"destination:{name}"  # the message shows beside the button pressed
    with transaction(conn):
        queued = outbox.request_outputs(
            conn, study_id, f"manual:{name}", settings.jobs.max_attempts
        )
        audit.append(
            conn,
            f"ui:{g.user.username}",
            "send.requested",
            f"study:{study_id}",
            destination=name,
            jobs=queued,
        )
    if queued:
        get_store().doorbell.ring()
        leave_note(study_id, place, t("sending.again_queued", name=name))
    elif any(i.state not in UNANALYSED for i in stored.study_images(conn, study_id)):
        leave_note(study_id, place, t("sending.again_pending", name=name))
    else:
        leave_note(study_id, place, t("sending.again_nothing"), error=True)
    return redirect(back)


# --- the PDF report ---------------------------------------------------------------------------


@bp.route("/study/<int:study_id>/report/<int:output_id>.pdf")
def report_pdf(study_id: int, output_id: int) -> WerkzeugResponse:
    """The PDF inside an Encapsulated PDF object the box made, as a download named without the
    patient's name. Hidden, as the findings are, in "read first" mode."""
    conn = get_conn()
    header = stored.study_header(conn, study_id)
    row = outbox.output_by_id(conn, output_id)
    if header is None or row is None or row["study_ref"] != study_id or row["kind"] != "report":
        abort(404)
    if get_settings().ui.read_first and not feedback.has_impression(conn, study_id, g.user.id):
        abort(403)
    try:
        pdf = encapsulated_pdf(get_store().outputs.path_of(row["file_name"]))
    except (ValueError, OSError, InvalidDicomError, AttributeError) as exc:
        log.warning("cannot serve the report of output %s: %s", output_id, exc)
        abort(404)
    name = report_file_name(header.accession_number or str(study_id), row["instance_ref"])
    audit.append(
        conn,
        f"ui:{g.user.username}",
        "report.downloaded",
        f"study:{study_id}",
        output=output_id,
        instance=row["instance_ref"],
        revision=row["revision"],
    )
    return send_file(BytesIO(pdf), "application/pdf", as_attachment=True, download_name=name)


def encapsulated_pdf(path: Path) -> bytes:
    """The PDF document of an Encapsulated PDF file, without the pad byte DICOM adds to an
    odd length."""
    ds = pydicom.dcmread(path)
    document = bytes(ds.EncapsulatedDocument)
    length = ds.get("EncapsulatedDocumentLength")
    if length is not None:
        document = document[: int(length)]
    if not document.startswith(b"%PDF-"):
        raise ValueError(f"{path.name} does not hold a PDF document")
    return document


def report_file_name(label: str, instance_id: int) -> str:
    """report-<accession or study id>-<instance id>.pdf, in characters any file system takes."""
    cleaned = _SAFE_NAME.sub("_", label).strip("._-")[:64] or "study"
    return f"report-{cleaned}-{instance_id}.pdf"
