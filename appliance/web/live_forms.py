"""What the live pages post, checked before anything is queued or stored: the target of a
save (an existing study or a new patient) and the scan region with its scale. A refusal names
the field and says why in words for people."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import request

from appliance.dicomout.secondary import DetailsError
from appliance.dicomout.ultrasound import patient_values
from appliance.store import capture
from appliance.web.i18n import error_text, t
from appliance.web.params import whole_number

_MAX_MM_PER_PIXEL = 10.0  # as CaptureSettings.mm_per_pixel
_MIN_MM_PER_PIXEL = 0.001  # a micrometre per pixel: finer is a typing slip
_MAX_DEPTH_CM = 50.0


class Refused(Exception):
    """A command the page sent that cannot be queued: which field, and why (for people)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def posted() -> Mapping[str, Any]:
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
