"""The study view: each image at full resolution, the findings beside it, feedback on them.

Images are rendered from the spool (decode, then the window asked for) as 8-bit PNG by
`pictures`, which also keeps the cache of default renderings. Heatmaps and overlays are the
worker's stored files, served only to a user who may see that study's findings.

"Read first" (ui.read_first): until the user has recorded an impression of the study, its AI
findings are not sent to the browser at all: no findings, no summaries, no pictures.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydicom
from flask import (
    Blueprint,
    Response,
    abort,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from pydicom.errors import InvalidDicomError
from werkzeug.wrappers import Response as WerkzeugResponse

from appliance.imaging import DecodeError, Window
from appliance.store import audit, feedback, held_back
from appliance.store import worklist as stored
from appliance.store.refused import Refused
from appliance.store.worklist import ArtifactRow, FindingRow, ImageRow, StudyHeader
from appliance.web.db import get_conn, get_settings, get_store
from appliance.web.i18n import error_text, t
from appliance.web.params import whole_number
from appliance.web.pictures import cached_render, render_frame
from appliance.web.security import roles_required
from appliance.web.sending import SENDERS, sending_panel
from appliance.web.study_notes import leave_note, take_note
from appliance.web.worklist import patient_name

log = logging.getLogger(__name__)
bp = Blueprint("study", __name__)
FINALIZERS = ("clinician", "admin")  # who may mark an impression final
# Who may have a held-back image analysed anyway: the technologist at the machine who can
# look at the image, and those who read it.
ANYWAY_ROLES = ("technologist", "clinician", "admin")
_MAX_WINDOW_VALUE = 1e7  # beyond any stored pixel value (32-bit floats scaled by slope)
DEFAULT_FPS = 10.0  # a clip that does not say its frame rate plays at this rate
_FPS_RANGE = (1.0, 60.0)  # a rate outside this is a broken header, not a real clip


# --- who may see what -------------------------------------------------------------------------


def findings_visible(conn: sqlite3.Connection, study_id: int) -> bool:
    """False only in "read first" mode before this user's impression of the study."""
    if not get_settings().ui.read_first:
        return True
    return feedback.has_impression(conn, study_id, g.user.id)


def _header_or_404(conn: sqlite3.Connection, study_id: int) -> StudyHeader:
    header = stored.study_header(conn, study_id)
    if header is None:
        abort(404)
    return header


# --- the page ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelView:
    """One label or mask of a finding as the page shows it: a bar and a sentence."""

    finding_id: int
    label: str
    display: str
    kind: str  # "score" or "mask"
    positive: bool
    priority: str
    explanation: str
    detail: str  # the measure behind the sentence (score and threshold, area), for "Details"
    score: float | None
    threshold: float
    bar_score: float  # 0..100 on the bar (scores only: a mask's measure is its area)
    bar_threshold: float
    layer: ArtifactRow | None
    notes: tuple[str, ...]
    recorded: feedback.Feedback | None


@dataclass(frozen=True)
class FindingView:
    """What one model said about the image, with who made it and how far to trust it."""

    finding_id: int
    model: str
    version: str
    title: str
    state: str
    reason: str
    demo: bool
    caution: str
    frame: int
    labels: list[LabelView]
    notes: list[str]
    outlines: list[str] = field(default_factory=list)  # SVG polygon points, key frame
    outside_typical: bool = False  # analysed on request although the check held it back
    check_reasons: list[str] = field(default_factory=list)  # what the check saw then


@bp.route("/study/<int:study_id>")
def view(study_id: int) -> str:
    """One image of the study (`image`, else the most urgent) at `frame` (else the key
    frame), its findings and the impressions; who viewed which patient goes to the audit."""
    conn = get_conn()
    header = _header_or_404(conn, study_id)
    images = stored.study_images(conn, study_id)
    visible = findings_visible(conn, study_id)
    selected = _selected(images, request.args.get("image", type=int), visible)
    findings = stored.current_findings(conn, [selected.instance_id]) if selected and visible else []
    frame = _page_frame(selected, findings, request.args.get("frame", type=int))
    actor = f"ui:{g.user.username}"
    audit.append(conn, actor, "study.viewed", f"study:{study_id}", patient_id=header.patient_id)
    views = _finding_views(conn, findings)
    flagged = [label.display for view in views for label in view.labels if label.positive]
    return render_template(
        "study/view.html",
        study=header,
        patient=patient_name(header.patient_name),
        images=images,
        selected=selected,
        frame=frame,
        display=_display_info(selected, frame),
        fps=_frame_rate(selected),
        outcome=image_outcome(selected, views, visible),
        flagged=flagged,
        note=take_note(study_id),
        visible=visible,
        findings=views,
        layer=_first_layer(views),
        outlined=next((view for view in views if view.outlines), None),
        impressions=feedback.impressions_for(conn, study_id),
        may_finalize=g.user.role in FINALIZERS,
        may_analyse_anyway=g.user.role in ANYWAY_ROLES,
        may_send=g.user.role in SENDERS,
        sending=sending_panel(conn, study_id, get_settings(), images),
        site_name=get_settings().site_name,
    )


def _selected(images: Sequence[ImageRow], wanted: int | None, visible: bool) -> ImageRow | None:
    """The image asked for; else the most urgent one (the first while findings are hidden,
    as the order would give them away)."""
    for image in images:
        if image.instance_id == wanted:
            return image
    if not images:
        return None
    if not visible:
        return images[0]
    return min(images, key=lambda image: image.priority_rank)


def _page_frame(image: ImageRow | None, findings: Sequence[FindingRow], wanted: int | None) -> int:
    """The frame asked for if it exists, else the key frame the model chose (else the first)."""
    if image is None:
        return 0
    if wanted is not None and 0 <= wanted < image.frames:
        return wanted
    key = findings[0].key_frame if findings else 0
    return key if 0 <= key < image.frames else 0


def image_outcome(image: ImageRow | None, views: Sequence[FindingView], visible: bool) -> str:
    """The selected image's state in the page's words (study.outcome_*): findings and no
    findings are told apart by whether any label was flagged; while "read first" hides the
    findings, only that the image was analysed."""
    if image is None:
        return ""
    if image.state in ("received", "analysing", "held_back", "no_model", "failed"):
        return image.state
    if not visible:
        return "analysed"
    return "findings" if any(lb.positive for v in views for lb in v.labels) else "no_findings"


def _frame_rate(image: ImageRow | None) -> float:
    """Frames per second to play a clip at: the file's recommended rate, its cine rate, or
    1000 / its frame time, else DEFAULT_FPS. Only the header is read."""
    if image is None or image.frames < 2:
        return DEFAULT_FPS
    try:
        ds = pydicom.dcmread(
            get_store().file_of(image.instance_id),
            stop_before_pixels=True,
            specific_tags=["RecommendedDisplayFrameRate", "CineRate", "FrameTime"],
        )
        rates = [ds.get("RecommendedDisplayFrameRate"), ds.get("CineRate")]
        if ds.get("FrameTime"):
            rates.append(1000.0 / float(ds.FrameTime))
    except (OSError, KeyError, ValueError, TypeError, ZeroDivisionError, InvalidDicomError):
        return DEFAULT_FPS
    low, high = _FPS_RANGE
    for rate in rates:
        if rate not in (None, "") and low <= float(rate) <= high:
            return round(float(rate), 2)
    return DEFAULT_FPS


def _display_info(image: ImageRow | None, frame: int) -> dict[str, Any]:
    """The default rendering's window (for the window/level controls), or why the image cannot
    be shown. Rendering it now puts it in the cache the image request reads at once."""
    if image is None:
        return {}
    try:
        return cached_render(get_store(), image, frame, thumb=False).meta
    except (DecodeError, OSError, ValueError, KeyError) as exc:
        log.warning("cannot render instance %s: %s", image.instance_id, exc)
        return {"error": str(exc)}


def _finding_views(conn: sqlite3.Connection, findings: Sequence[FindingRow]) -> list[FindingView]:
    ids = [f.finding_id for f in findings]
    pictures = stored.artifacts_of(conn, ids)
    recorded = feedback.newest_feedback(feedback.feedback_for(conn, ids))
    return [_finding_view(f, pictures, recorded) for f in findings]


def _finding_view(
    finding: FindingRow,
    pictures: Sequence[ArtifactRow],
    recorded: Mapping[tuple[int, str], feedback.Feedback],
) -> FindingView:
    result = finding.result
    layers = _layers(finding.finding_id, pictures)
    labels = [
        _label_view(finding.finding_id, item, kind, layers.get(item["label"]), recorded)
        for kind, key in (("score", "labels"), ("mask", "masks"))
        for item in result.get(key, [])
    ]
    return FindingView(
        finding_id=finding.finding_id,
        model=finding.model,
        version=finding.version,
        title=str(result.get("title") or finding.model),
        state=finding.state,
        reason=finding.reason,
        demo=bool(result.get("not_for_clinical_use")),
        caution=str(result.get("caution", "")),
        frame=int(result.get("frame", finding.key_frame)),
        labels=sorted(labels, key=_label_order),
        notes=[str(note) for note in result.get("notes", [])],
        outlines=_outlines(result),
        outside_typical=bool(result.get("outside_typical_input")),
        check_reasons=[str(reason) for reason in result.get("plausibility_reasons", [])],
    )


def _first_layer(views: Sequence[FindingView]) -> ArtifactRow | None:
    """The picture shown over the image at first: the most urgent positive label's."""
    for view in views:
        for label in view.labels:
            if label.positive and label.layer is not None:
                return label.layer
    return None


def _label_order(label: LabelView) -> tuple[int, int]:
    """Positive findings first, most urgent first; then the rest in the model's order."""
    rank = {"urgent": 0, "review": 1, "routine": 2}.get(label.priority, 3)
    return (0 if label.positive else 1, rank if label.positive else 0)


def _layers(finding_id: int, pictures: Sequence[ArtifactRow]) -> dict[str, ArtifactRow]:
    """Per label, the picture to lay over the image: its heatmap, else its overlay."""
    layers: dict[str, ArtifactRow] = {}
    for kind in ("overlay", "heatmap"):  # a heatmap replaces an overlay
        for picture in pictures:
            if picture.finding_id == finding_id and picture.kind == kind:
                layers[picture.label] = picture
    return layers


def _label_view(
    finding_id: int,
    item: Mapping[str, Any],
    kind: str,
    layer: ArtifactRow | None,
    recorded: Mapping[tuple[int, str], feedback.Feedback],
) -> LabelView:
    score = float(item["score"]) if kind == "score" else None
    threshold = float(item.get("threshold", 0.0))
    return LabelView(
        finding_id=finding_id,
        label=str(item["label"]),
        display=str(item.get("display") or item["label"]),
        kind=kind,
        positive=bool(item.get("positive")),
        priority=str(item.get("priority", "")),
        explanation=explain(item, kind),
        detail=measure(item, kind),
        score=score,
        threshold=threshold,
        bar_score=_percent(score or 0.0),
        bar_threshold=_percent(threshold),
        layer=layer,
        notes=tuple(str(note) for note in item.get("notes", [])),
        recorded=recorded.get((finding_id, str(item["label"]))),
    )


def explain(item: Mapping[str, Any], kind: str) -> str:
    """One plain sentence: what the model says and what that means here, e.g. "Pleural
    effusion: flagged urgent". The measure behind it is `measure`, shown under "Details"."""
    name = str(item.get("display") or item["label"])
    outcome = (
        t(f"study.flag_{item.get('priority')}") if item.get("positive") else t("study.unflagged")
    )
    if kind == "mask":
        if not item.get("positive"):
            return t("study.explain_mask_none", label=name, outcome=outcome)
        if item.get("area_mm2") is not None:
            area = f"{float(item['area_mm2']):.0f}"
            return t("study.explain_mask", label=name, area=area, outcome=outcome)
        return t("study.explain_outlined", label=name, outcome=outcome)
    return t("study.explain", label=name, outcome=outcome)


def measure(item: Mapping[str, Any], kind: str) -> str:
    """The technical measure behind a label's sentence: its score against the operating
    threshold, or its outlined area in pixels where the image has no calibrated spacing."""
    name = str(item.get("display") or item["label"])
    if kind == "mask":
        if not item.get("positive") or item.get("area_mm2") is not None:
            return ""
        return t("study.measure_mask_px", label=name, area=item.get("area_px", 0))
    key = "study.measure_above" if item.get("positive") else "study.measure_below"
    score, threshold = f"{float(item['score']):.2f}", f"{float(item['threshold']):.2f}"
    return t(key, label=name, score=score, threshold=threshold)


def _percent(value: float) -> float:
    return round(min(max(float(value), 0.0), 1.0) * 100.0, 1)


def _outlines(result: Mapping[str, Any]) -> list[str]:
    """Mask outlines as SVG polygon points ("x,y x,y ..."), in image pixels."""
    polygons = []
    for mask in result.get("masks", []):
        for outline in mask.get("outlines", []):
            points = " ".join(f"{int(x)},{int(y)}" for x, y in outline)
            if points:
                polygons.append(points)
    return polygons


# --- images -----------------------------------------------------------------------------------


@bp.route("/study/<int:study_id>/image/<int:instance_id>.png")
def image(study_id: int, instance_id: int) -> WerkzeugResponse:
    """One frame as PNG: the default rendering (cached), or at the window `wc`/`ww` asked for."""
    conn = get_conn()
    _header_or_404(conn, study_id)
    images = stored.study_images(conn, study_id)
    found = next((i for i in images if i.instance_id == instance_id), None)
    if found is None:
        abort(404)
    frame = _frame_arg(found)
    window = _window_arg()
    thumb = request.args.get("thumb") == "1"
    try:
        if window is None or thumb or not found.photometric.startswith("MONOCHROME"):
            return send_file(cached_render(get_store(), found, frame, thumb).png, "image/png")
        png, _ = render_frame(get_store(), found, frame, window, thumb=False)
        return Response(png, 200, mimetype="image/png")
    except (DecodeError, OSError) as exc:
        log.warning("cannot render instance %s: %s", instance_id, exc)
        abort(404)


def _frame_arg(image: ImageRow) -> int:
    frame = whole_number(request.args.get("frame", "0"))
    if frame is None:
        abort(400)
    if frame >= image.frames:
        abort(404)
    return frame


def _window_arg() -> Window | None:
    """The window asked for (both `wc` and `ww`, finite, width >= 1), None for the default."""
    centre, width = request.args.get("wc"), request.args.get("ww")
    if centre is None and width is None:
        return None
    try:
        values = (float(centre or ""), float(width or ""))
        if not all(math.isfinite(v) and abs(v) < _MAX_WINDOW_VALUE for v in values):
            raise ValueError("window out of range")
        return Window(*values)
    except ValueError:
        abort(400)


# --- stored pictures --------------------------------------------------------------------------


@bp.route("/artifact/<int:artifact_id>.png")
def artifact(artifact_id: int) -> WerkzeugResponse:
    """A heatmap, overlay or mask, for a user who may see its study's findings (403 in "read
    first" mode before the user's impression; 404 for an id that is not a picture)."""
    conn = get_conn()
    found = stored.artifact_file(conn, artifact_id)
    if found is None:
        abort(404)
    if not findings_visible(conn, found.study_id):
        abort(403)
    try:
        path = get_store().results.path_of(found.file_name)
    except ValueError:
        abort(404)
    if not path.is_file():
        abort(404)
    return send_file(path, found.media_type)


# --- feedback and impressions -----------------------------------------------------------------


def _posted() -> Mapping[str, Any]:
    """The request's fields, from JSON (appFetch) or a plain form."""
    if request.is_json:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            abort(400)
        return data
    return request.form


def _wants_json() -> bool:
    return request.is_json or request.accept_mimetypes.best == "application/json"


@bp.route("/study/<int:study_id>/feedback", methods=["POST"])
def add_feedback(study_id: int) -> WerkzeugResponse:
    """Agree, disagree or unsure on one label of a finding, with an optional comment."""
    conn = get_conn()
    _header_or_404(conn, study_id)
    data = _posted()
    finding = _finding_arg(conn, study_id, data.get("finding_id"))
    if not findings_visible(conn, study_id):
        abort(403)
    label = str(data.get("label", ""))
    if label not in _labels_of(finding):
        abort(400)
    verdict, comment = data.get("verdict", ""), data.get("comment", "")
    if not isinstance(verdict, str) or not isinstance(comment, str):
        abort(400)
    actor = f"ui:{g.user.username}"
    try:
        entry = feedback.add_feedback(
            conn, finding.finding_id, label, verdict, comment, g.user.id, actor
        )
    except feedback.FeedbackError:
        abort(400)
    if _wants_json():
        html = render_template("study/_recorded.html", recorded=entry)
        return jsonify(feedback=_feedback_json(entry), html=html)
    target = url_for("study.view", study_id=study_id, image=finding.instance_id)
    return redirect(f"{target}#finding-{finding.finding_id}-{label}")


def _finding_arg(conn: sqlite3.Connection, study_id: int, value: Any) -> FindingRow:
    finding_id = whole_number(value, low=1)
    if finding_id is None:
        abort(400)
    finding = stored.finding_in_study(conn, study_id, finding_id)
    if finding is None:
        abort(404)
    return finding


def _labels_of(finding: FindingRow) -> set[str]:
    items = [*finding.result.get("labels", []), *finding.result.get("masks", [])]
    return {str(item["label"]) for item in items}


def _feedback_json(entry: feedback.Feedback) -> dict[str, Any]:
    return {
        "id": entry.feedback_id,
        "finding_id": entry.finding_id,
        "label": entry.label,
        "verdict": entry.verdict,
        "comment": entry.comment,
        "user": entry.username,
        "at": entry.at,
    }


@bp.route("/study/<int:study_id>/impression", methods=["POST"])
def add_impression(study_id: int) -> WerkzeugResponse | tuple[WerkzeugResponse, int]:
    """The user's impression of the study; only clinicians and admins may mark it final."""
    conn = get_conn()
    _header_or_404(conn, study_id)
    data = _posted()
    final = str(data.get("final", "")).lower() in ("1", "on", "true", "yes")
    if final and g.user.role not in FINALIZERS:
        abort(403)
    text = data.get("text", "")
    if not isinstance(text, str):
        abort(400)
    actor, max_attempts = f"ui:{g.user.username}", get_settings().jobs.max_attempts
    try:
        entry = feedback.add_impression(conn, study_id, text, final, g.user.id, actor, max_attempts)
    except feedback.FeedbackError as exc:
        if _wants_json():
            abort(400)
        too_long = exc.reason == "too_long"
        words = t("study.impression_too_long" if too_long else "study.impression_needs_text")
        leave_note(study_id, "impression", words, error=True)
        image = request.args.get("image", type=int)
        return redirect(url_for("study.view", study_id=study_id, image=image) + "#impression")
    if entry.outputs_queued:  # final: the worker rebuilds the SR and report with it
        get_store().doorbell.ring()
    if _wants_json():
        saved = {"id": entry.impression_id, "final": entry.final, "user": entry.username}
        return jsonify(impression={**saved, "at": entry.at})
    leave_note(study_id, "impression", t("study.impression_saved"))
    image = request.args.get("image", type=int)
    return redirect(url_for("study.view", study_id=study_id, image=image) + "#impression")


# --- analyse anyway ---------------------------------------------------------------------------


@bp.route("/study/<int:study_id>/image/<int:instance_id>/analyse-anyway", methods=["POST"])
@roles_required(*ANYWAY_ROLES)
def analyse_anyway(study_id: int, instance_id: int) -> WerkzeugResponse:
    """Ask the worker to analyse a held-back image without the plausibility check: a user who
    looked at the image judged it fine. The store audits the request; the page says what
    happens next."""
    conn = get_conn()
    _header_or_404(conn, study_id)
    if not any(image.instance_id == instance_id for image in stored.study_images(conn, study_id)):
        abort(404)
    actor = f"ui:{g.user.username}"
    max_attempts = get_settings().jobs.max_attempts
    try:
        asked = held_back.request_analysis_anyway(conn, instance_id, actor, max_attempts)
    except Refused as exc:
        leave_note(study_id, "image", error_text(exc, "study.anyway_"), error=True)
    else:
        if asked.queued:
            get_store().doorbell.ring()
        words = t("study.anyway_queued" if asked.queued else "study.anyway_pending")
        leave_note(study_id, "image", words)
    return redirect(url_for("study.view", study_id=study_id, image=instance_id) + "#image-state")
