"""Saving a frame or a clip: shots -> an ultrasound DICOM object -> `store.ingest`, exactly as
a pushed image, so a saved capture gets the normal analysis, audit and sending."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from appliance.capture.sources import CaptureError
from appliance.dicomout.ultrasound import build_ultrasound
from appliance.domain import Origin, Source
from appliance.imaging.header import read_header
from appliance.store import Store, analyses
from appliance.store import capture as capture_store
from appliance.worker.capture.area import AreaResolver, Shot
from appliance.worker.capture.publish import Publisher


class Saver:
    """Shots -> an ultrasound DICOM object -> `store.ingest`, exactly as a pushed image.

    `lossy_method` is how the source's frames were compressed on their way here (DICOM's
    Lossy Image Compression Method, see `capture.sources.lossy_method`).
    """

    def __init__(
        self,
        store: Store,
        area: AreaResolver,
        publisher: Publisher,
        lossy_method: str | None,
    ) -> None:
        self.store = store
        self.area = area
        self.publisher = publisher
        self.lossy_method = lossy_method

    def save(self, row: sqlite3.Row, shots: Sequence[Shot]) -> dict[str, Any]:
        target = self._target(row)
        area = self.area.current()
        dataset = build_ultrasound(
            [shot.pixels for shot in shots],
            patient_id=target.patient_id,
            patient_name=target.patient_name,
            study_uid=target.study_uid or None,
            accession=target.accession,
            device_name=self.publisher.device,
            mm_per_pixel=area.mm_per_pixel,
            frame_time_ms=frame_time_ms(shots, self.publisher.nominal_fps),
            captured_wall=shots[0].wall,
            lossy_method=self.lossy_method,
        )
        tmp = self.store.spool.new_tmp_path()
        try:
            dataset.save_as(tmp, enforce_file_format=True)
            header = read_header(tmp)
            origin = Origin(Source.CAPTURE, user=row["requested_by"])
            result = self.store.ingest(tmp, header, origin)
        finally:
            tmp.unlink(missing_ok=True)  # gone after a successful ingest; removed on failure
        return {
            "instance_id": result.instance_id,
            "sop_instance_uid": header.sop_instance_uid,
            "study_id": analyses.study_of(self.store.conn, result.instance_id),
            "outcome": result.outcome.value,
            "frames": len(shots),
            "frame_index": shots[0].index,  # the source's counter of the (first) frame
        }

    def _target(self, row: sqlite3.Row) -> capture_store.StudyForCapture:
        """The existing study's UID and patient, or the new patient the UI gave."""
        if row["study_ref"] is None:
            return capture_store.StudyForCapture("", row["patient_id"], row["patient_name"], "")
        found = capture_store.study_for_capture(self.store.conn, row["study_ref"])
        if found is None:
            raise CaptureError(f"study {row['study_ref']} is no longer in the store")
        return found


def frame_time_ms(shots: Sequence[Shot], fps: float) -> float:
    """The clip's mean frame interval as captured (the nominal one for a single frame)."""
    if len(shots) < 2:
        return 1000.0 / fps
    span = shots[-1].captured_at - shots[0].captured_at
    return span * 1000.0 / (len(shots) - 1) if span > 0 else 1000.0 / fps
