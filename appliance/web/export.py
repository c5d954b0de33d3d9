"""Export a study to a USB stick, where no network reaches the clinic's record.

The page lists where an export may go: the configured export folders (export.folders) and the
sticks mounted under them that this process may write to. The form sends back one of those
places as text, and only a place on that list, as listed now, is written to: a path typed into
the request, or one with "..", names nothing on the list and is refused. What is written is a
DICOM File-set (DICOMDIR and files) of the study's originals and the newest objects the box
made of them, in a new sub-folder, and the export is audited with where it went.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for

from appliance.dicomout.fileset import ExportError, export_study, export_targets, fileset_id_for
from appliance.store import audit
from appliance.store import export as exported
from appliance.store import worklist as stored
from appliance.store.worklist import StudyHeader
from appliance.web.db import get_conn, get_settings, get_store
from appliance.web.i18n import error_text, t
from appliance.web.security import ViewResult, roles_required
from appliance.web.sending import SENDERS
from appliance.web.study import findings_visible
from appliance.web.study_notes import leave_note
from appliance.web.worklist import patient_name

log = logging.getLogger(__name__)
bp = Blueprint("export", __name__)


def _header_or_404(study_id: int) -> StudyHeader:
    header = stored.study_header(get_conn(), study_id)
    if header is None:
        abort(404)
    return header


def _study_files(study_id: int) -> list[Path]:
    store = get_store()
    return exported.study_files(store.conn, store.spool, store.outputs, study_id)


@bp.route("/study/<int:study_id>/export")
@roles_required(*SENDERS)
def form(study_id: int) -> ViewResult:
    """Where the study may go now, one button per place."""
    header = _header_or_404(study_id)
    if not findings_visible(get_conn(), study_id):
        return _read_first(study_id)
    return render_template(
        "study/export.html",
        study=header,
        patient=patient_name(header.patient_name),
        targets=export_targets(get_settings().export.folders),
        folders=get_settings().export.folders,
        files=len(_study_files(study_id)),
    )


@bp.route("/study/<int:study_id>/export", methods=["POST"])
@roles_required(*SENDERS)
def write(study_id: int) -> ViewResult:
    """Write the File-set to the place chosen, if it is one the page lists now."""
    header = _header_or_404(study_id)
    if not findings_visible(get_conn(), study_id):
        return _read_first(study_id)
    chosen = request.form.get("target", "")
    target = next(
        (p for p in export_targets(get_settings().export.folders) if str(p) == chosen), None
    )
    actor = f"ui:{g.user.username}"
    conn = get_conn()
    back = url_for("export.form", study_id=study_id)
    if target is None:
        audit.append(conn, actor, "export.refused", f"study:{study_id}", target=chosen[:256])
        flash(t("export.not_a_target", folder=chosen[:256]))
        return redirect(back)
    label = exported.study_label(conn, study_id)
    try:
        result = export_study(_study_files(study_id), target, fileset_id_for(label))
    except ExportError as exc:
        log.warning("export of study %s to %s failed: %s", study_id, target, exc)
        audit.append(
            conn, actor, "export.failed", f"study:{study_id}", target=str(target), reason=str(exc)
        )
        flash(error_text(exc, "export.error_"))
        return redirect(back)
    audit.append(
        conn,
        actor,
        "export",
        f"study:{study_id}",
        patient_id=header.patient_id,
        folder=str(result.folder),
        files=result.files,
        size_bytes=result.size_bytes,
    )
    leave_note(study_id, "export", t("export.done", n=result.files, folder=str(result.folder)))
    return redirect(url_for("study.view", study_id=study_id) + "#sending")


def _read_first(study_id: int) -> ViewResult:
    """In "read first" mode the stick would carry the findings the page still hides."""
    leave_note(study_id, "export", t("export.read_first"), error=True)
    return redirect(url_for("study.view", study_id=study_id))
