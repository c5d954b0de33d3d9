"""The outputs job: the objects for the clinic's record of one analysed image, and their
deliveries.

After an image's findings and pictures are saved (and again when a clinician finalises, or
somebody asks to send again), this builds a TID 1500 SR, a Secondary Capture per heatmap or
outline overlay and an Encapsulated PDF report, writes them durably to the outputs folder and,
in one transaction with the job's end, records them and queues one delivery per object and
destination. UIDs follow from the inputs (`ReportRows.fingerprint`) and the revision: a job
repeated after a crash makes the same objects with the same UIDs, the same inputs never make a
second revision, and inputs that come back to what an older revision said still make objects
of their own. A later revision references the one it replaces. Once a clinician has given the
final word on an image's findings, its later revisions (the pictures drawn after it) go to the
destinations that wait for the final word too.
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom import Dataset

from appliance.config import Destination, Settings
from appliance.dicomout.heatmap import build_heatmap
from appliance.dicomout.pdf import encapsulate_pdf
from appliance.dicomout.sr import build_sr
from appliance.dicomout.uids import ObjectUids, output_uids
from appliance.domain import ModelReport, ReportContent, ReportPictures
from appliance.imaging import decode, to_display
from appliance.imaging.limits import Limits
from appliance.report.pdf import render_report
from appliance.store import Store, audit, jobs, outbox
from appliance.store.db import utc_now
from appliance.store.report_data import ReportRows, report_rows
from appliance.worker.report_content import model_report, report_content, report_header

log = logging.getLogger(__name__)

SEND_KINDS = {"sr": "sr", "heatmaps": "heatmap", "report": "report"}
REPORT_TITLE = "Image analysis report"
IMAGE_MAX_SIDE = 1024  # the report's picture: as large as the pictures drawn beside findings


@dataclass
class Plan:
    """What one outputs job does: reuse the newest revision, or build the next one."""

    rows: ReportRows
    purpose: str
    revision: int
    reuse: bool
    previous: list[sqlite3.Row] = field(default_factory=list)


@dataclass(frozen=True)
class Built:
    record: outbox.NewOutput  # file_name and size filled in once written
    data: bytes


def plan(store: Store, instance_id: int, purpose: str) -> Plan | None:
    """None when the image has no analysis, its file is gone or it is no image at all (an RT
    plan, a report): nothing to report."""
    rows = report_rows(store.conn, instance_id)
    if rows is None or not rows.present or not rows.is_image:
        return None
    latest = outbox.latest_revision(store.conn, instance_id)
    if latest is not None and latest["fingerprint"] == rows.fingerprint:
        return Plan(rows, purpose, latest["revision"], reuse=True)
    revision = 1 if latest is None else latest["revision"] + 1
    previous = list(outbox.latest_outputs(store.conn, instance_id))
    return Plan(rows, purpose, revision, reuse=False, previous=previous)


def build(store: Store, settings: Settings, job_plan: Plan) -> list[Built]:
    """Build the revision's objects (nothing when the newest revision still says it all)."""
    if job_plan.reuse:
        return []
    rows = job_plan.rows
    path = store.spool.path_of(rows.file_name)
    source = pydicom.dcmread(path, stop_before_pixels=True)
    replaces = {
        row["kind"]: row["sop_instance_uid"]
        for row in job_plan.previous
        if row["kind"] in ("sr", "report")
    }
    content = report_content(rows, settings.site_name, utc_now(), job_plan.revision, replaces)
    overlays = _overlays(store, rows)
    built = [_sr(content, source, rows, settings)]
    built += _heatmaps(source, rows, overlays, settings, content)
    pictures = ReportPictures(
        _image_png(path, content, settings),
        overlays=_overlay_pngs(o for o in overlays if not is_outline(o[0])),
        outlines=_overlay_pngs(o for o in overlays if is_outline(o[0])),
    )
    built.append(_report(content, source, pictures, rows, settings))
    return built


def commit(
    store: Store,
    job: jobs.Job,
    owner: str,
    job_plan: Plan,
    built: Sequence[Built],
    actor: str,
) -> int | None:
    """Write the files, then record them and queue their deliveries with the job's end.

    Returns the number of deliveries queued, or None when the lease was lost (the files are
    removed again: the job's new owner makes the same ones)."""
    if built:  # a reused revision writes nothing: it must not fail for want of space
        store.spool.check_space(sum(len(item.data) for item in built))
    names = store.outputs.write_all([item.data for item in built])
    try:
        return _record(store, job, owner, job_plan, built, names, actor)
    except Exception:  # the job is retried: leave no leftovers until the next start's sweep
        _remove_unrecorded(store, names)
        raise


def _remove_unrecorded(store: Store, names: Sequence[str]) -> None:
    """Remove the files of a commit that failed, unless a row names them after all; when the
    store cannot even say, keep them (the sweep at start removes leftovers; a recorded object
    must never lose its file)."""
    try:
        recorded = outbox.recorded_files(store.conn, names)
    except sqlite3.Error:
        return
    store.outputs.remove_all(name for name in names if name not in recorded)


def _record(
    store: Store,
    job: jobs.Job,
    owner: str,
    job_plan: Plan,
    built: Sequence[Built],
    names: Sequence[str],
    actor: str,
) -> int | None:
    records = [
        _named(item.record, name, len(item.data)) for item, name in zip(built, names, strict=True)
    ]
    queued = 0

    def save(conn: sqlite3.Connection) -> None:
        nonlocal queued
        rows = job_plan.rows
        if records:
            outbox.record_outputs(
                conn,
                rows.instance_id,
                rows.study_id,
                job_plan.revision,
                rows.fingerprint,
                job_plan.purpose,
                records,
            )
            audit.append(
                conn,
                actor,
                "outputs.made",
                f"instance:{rows.instance_id}",
                revision=job_plan.revision,
                purpose=job_plan.purpose,
                objects=[f"{r.kind}:{r.sop_instance_uid}" for r in records],
            )
        queued = _queue(conn, store.settings, job_plan, actor)

    if not store.finish_job(job, owner, "", save):
        store.outputs.remove_all(names)
        return None
    return queued


def _named(record: outbox.NewOutput, name: str, size: int) -> outbox.NewOutput:
    return outbox.NewOutput(
        record.kind,
        record.label,
        record.sop_class_uid,
        record.sop_instance_uid,
        record.series_instance_uid,
        name,
        size,
    )


def destinations_for(
    purpose: str, settings: Settings, finalised: bool = False
) -> list[tuple[Destination, bool]]:
    """The destinations a job of this purpose delivers to, and whether to send again what
    was already sent (a person asked for it). Once the image's findings are `finalised`,
    a revision made for its pictures goes to the destinations that wait for the final word
    too: theirs would otherwise stay the revision made before the pictures."""
    if purpose.startswith("manual:"):
        destination = settings.destination(purpose.removeprefix("manual:"))
        return [] if destination is None else [(destination, True)]
    if purpose == "findings" and finalised:
        purpose = "final"
    wanted = {"findings": {"findings"}, "final": {"findings", "final"}}.get(purpose, set())
    return [(d, False) for d in settings.destinations if d.when in wanted]


def _queue(conn: sqlite3.Connection, settings: Settings, job_plan: Plan, actor: str) -> int:
    """Queue the newest revision's objects (and the original, if asked) per destination,
    with an audit row for each destination that has objects waiting anew."""
    rows = job_plan.rows
    objects = outbox.latest_outputs(conn, rows.instance_id)
    queued = 0
    for destination, again in destinations_for(job_plan.purpose, settings, rows.finalised):
        kinds = {SEND_KINDS[k] for k in destination.send if k in SEND_KINDS}
        items: list[tuple[int | None, int | None, str]] = [
            (row["id"], None, row["sop_instance_uid"]) for row in objects if row["kind"] in kinds
        ]
        if "images" in destination.send:
            items.append((None, rows.instance_id, rows.source_uid))
        count = outbox.queue_deliveries(conn, destination.name, rows.study_id, items, again=again)
        if count:
            audit.append(
                conn,
                actor,
                "send.queued",
                f"instance:{rows.instance_id}",
                destination=destination.name,
                objects=count,
                revision=job_plan.revision,
                purpose=job_plan.purpose,
            )
        queued += count
    return queued


def _uids(
    kind: str, rows: ReportRows, revision: int, settings: Settings, label: str = ""
) -> ObjectUids:
    """An object's UIDs, from its image, what it reports and its revision: should the
    inputs come back to what an older revision reported, the new revision (which says what
    it replaces) still gets UIDs of its own."""
    return output_uids(
        kind,
        rows.study_uid,
        rows.source_uid,
        f"{rows.fingerprint}:{revision}",
        label=label,
        root=settings.outputs.uid_root,
    )


# ---- the objects --------------------------------------------------------------------------


def _sr(content: ReportContent, source: Dataset, rows: ReportRows, settings: Settings) -> Built:
    uids = _uids("sr", rows, content.revision, settings)
    ds = build_sr(
        content,
        source,
        uids,
        instance_number=rows.instance_id,
        institution=settings.outputs.institution_name,
    )
    return _built("sr", "", ds)


def _heatmaps(
    source: Dataset,
    rows: ReportRows,
    overlays: Sequence[tuple[sqlite3.Row, npt.NDArray[np.uint8]]],
    settings: Settings,
    content: ReportContent,
) -> list[Built]:
    by_finding = {row["id"]: row for row in rows.findings}
    built = []
    for index, (picture, rgb) in enumerate(overlays, start=1):
        finding = by_finding[picture["finding_ref"]]
        model = model_report(finding)
        label = str(picture["label"])
        uids = _uids("heatmap", rows, content.revision, settings, f"{label}:{picture['id']}")
        ds = build_heatmap(
            source,
            rgb,
            label,
            _display_of(model, label),
            model,
            uids,
            instance_number=rows.instance_id * 100 + index % 100,
            frame=int(picture["frame"]),
            institution=settings.outputs.institution_name,
            made_at=content.made_at,
            outline=is_outline(picture),
        )
        built.append(_built("heatmap", label, ds))
    return built


def _report(
    content: ReportContent,
    source: Dataset,
    pictures: ReportPictures,
    rows: ReportRows,
    settings: Settings,
) -> Built:
    header = report_header(source)
    pdf = render_report(content, header, pictures, font=settings.outputs.report_font)
    uids = _uids("report", rows, content.revision, settings)
    ds = encapsulate_pdf(
        source,
        pdf,
        REPORT_TITLE,
        uids,
        instance_number=rows.instance_id,
        institution=settings.outputs.institution_name,
        replaces=content.replaces.get("report"),
        made_at=content.made_at,
    )
    return _built("report", "", ds)


def _built(kind: str, label: str, ds: Dataset) -> Built:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    record = outbox.NewOutput(
        kind,
        label,
        str(ds.SOPClassUID),
        str(ds.SOPInstanceUID),
        str(ds.SeriesInstanceUID),
        "",
        0,
    )
    return Built(record, buffer.getvalue())


def _display_of(model: ModelReport, label: str) -> str:
    names = {item.label: item.display for item in model.labels}
    names.update((item.label, item.display) for item in model.masks)
    return " + ".join(names.get(part, part) for part in label.split("+"))


def _overlays(store: Store, rows: ReportRows) -> list[tuple[sqlite3.Row, npt.NDArray[np.uint8]]]:
    """The overlay pictures of the findings as RGB arrays (a missing file is skipped)."""
    found = []
    for picture in rows.pictures:
        path = store.results.path_of(picture["file_name"])
        pixels = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if pixels is None:
            log.warning("overlay %s is missing; the report goes without it", picture["id"])
            continue
        found.append((picture, np.asarray(cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB), np.uint8)))
    return found


def is_outline(picture: sqlite3.Row) -> bool:
    """Whether an overlay outlines masks (its detail lists their labels) rather than showing
    a heatmap of scores (see worker/pictures.py)."""
    return "labels" in json.loads(picture["detail"] or "{}")


def _overlay_pngs(
    overlays: Iterable[tuple[sqlite3.Row, npt.NDArray[np.uint8]]],
) -> tuple[tuple[str, bytes], ...]:
    pngs = []
    for picture, rgb in overlays:
        ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if ok:
            pngs.append((str(picture["label"]), data.tobytes()))
    return tuple(pngs)


def _image_png(path: Path, content: ReportContent, settings: Settings) -> bytes | None:
    """The key frame as displayed, at most IMAGE_MAX_SIDE pixels; None when it cannot be
    decoded (the report then says so)."""
    frame = content.models[0].frame if content.models else 0
    try:
        decoded = decode(path, index=frame, limits=Limits.from_settings(settings.receiver))
    except Exception as exc:  # an image that failed analysis may not decode either
        log.info("no picture for the report: %s", exc)
        return None
    shown = np.rint(to_display(decoded)[0] * np.float32(255.0)).astype(np.uint8)
    scale = min(1.0, IMAGE_MAX_SIDE / max(shown.shape[:2]))
    if scale < 1.0:
        size = (max(1, round(shown.shape[1] * scale)), max(1, round(shown.shape[0] * scale)))
        shown = np.asarray(cv2.resize(shown, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    if shown.ndim == 3:
        shown = cv2.cvtColor(shown, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", shown)
    return data.tobytes() if ok else None
