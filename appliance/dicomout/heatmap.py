"""A heatmap or outline overlay as a DICOM image: a derived Secondary Capture (highdicom's
SCImage) in a series of its own in the source image's study, so that a PACS viewer shows what
the model looked at beside the image it looked at.

The picture is the source frame as displayed with the heatmap (or the mask outlines) drawn
over it, RGB. It references the source image (and frame) in the Source Image Sequence, says in
Derivation Description which label and which model made it, and carries the model's caution
in Image Comments when the model is not for clinical use. It has no pixel spacing: it may be
scaled down from the source, and nothing should be measured on it. Burned-in annotation is
what the source says, and unsaid when the source does not say (see `_burned_in`).

Patient and study are copied from the source (see `derived`); the UIDs come from
`output_uids("heatmap", ...)`, so the same overlay of the same content is the same instance.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from appliance.dicomout.derived import (
    SERIES_NUMBER,
    copy_patient_and_study,
    date_contributions,
    equipment,
    plain,
    set_character_set,
    set_times,
    source_reference,
)
from appliance.dicomout.meta import file_meta_for
from appliance.dicomout.uids import ObjectUids
from appliance.domain import ModelReport

SERIES_DESCRIPTION = "Heatmaps"
_ORIENTATION_LETTERS = frozenset("APLRHF")
_PLACEHOLDER_ORIENTATION = ("L", "F")  # replaced by the source's own, see _orientation


def build_heatmap(
    source: Dataset,
    overlay_rgb: npt.NDArray[np.uint8],
    label: str,
    display: str,
    model: ModelReport,
    uids: ObjectUids,
    *,
    instance_number: int,
    frame: int,
    institution: str = "",
    made_at: str = "",
    outline: bool = False,
) -> Dataset:
    """The overlay `overlay_rgb` (H x W x 3, uint8, RGB) of `label` on frame `frame` (0-based)
    of `source` (its header), made by `model`: a heatmap of its scores, or with `outline` the
    outline of what a mask marked.

    `made_at` (ISO 8601) dates the picture; without it the object holds no times at all, so
    that building it again gives the same bytes. Raises ValueError for pixels that are not an
    RGB image.
    """
    _check_pixels(overlay_rgb)
    ds = hd.sc.SCImage(
        pixel_array=np.ascontiguousarray(overlay_rgb),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=_PLACEHOLDER_ORIENTATION,
        study_instance_uid=source.StudyInstanceUID,
        series_instance_uid=uids.series,
        series_number=SERIES_NUMBER["heatmap"],
        sop_instance_uid=uids.instance,
        instance_number=instance_number,
        manufacturer="",
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=SERIES_DESCRIPTION,
    )
    copy_patient_and_study(ds, source)
    equipment(ds, institution)
    _image(ds, source, frame)
    _derivation(ds, label, display, model, "Outline" if outline else "Heatmap")
    _times(ds, made_at, source)
    date_contributions(ds, made_at)
    set_character_set(ds)
    ds.file_meta = file_meta_for(ds)
    return ds


def _check_pixels(pixels: npt.NDArray[np.uint8]) -> None:
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8 or 0 in pixels.shape:
        raise ValueError(
            f"an overlay must be H x W x 3 uint8 RGB, got {pixels.shape} {pixels.dtype}"
        )


def _image(ds: Dataset, source: Dataset, frame: int) -> None:
    """What the picture is and where it comes from."""
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ConversionType = "WSD"  # made on a workstation (the box), not digitised
    ds.PatientOrientation = _orientation(source)
    if "BodyPartExamined" in source:
        ds.BodyPartExamined = source.BodyPartExamined
    _laterality(ds, source)
    _burned_in(ds, source)
    if str(source.get("LossyImageCompression", "")) == "01":
        ds.LossyImageCompression = "01"  # its pixels are the source's, artefacts included
    reference = source_reference(source, frame)
    reference.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept("121322", "DCM", "Source image for image processing operation")
    ]
    ds.SourceImageSequence = [reference]


def _burned_in(ds: Dataset, source: Dataset) -> None:
    """The overlay is drawn over the source's pixels, text and all, and adds no text: it says
    what the source says. A source that does not say (many an ultrasound image with the name in
    its pixels) leaves it unsaid too (Type 3), never a "NO" that a de-identifying export would
    trust."""
    said = str(source.get("BurnedInAnnotation") or "").strip().upper()
    if said in ("YES", "NO"):
        ds.BurnedInAnnotation = said
    elif "BurnedInAnnotation" in ds:
        del ds.BurnedInAnnotation


def _laterality(ds: Dataset, source: Dataset) -> None:
    """Laterality is Type 2C, for a paired body part: the source's side when it says one;
    absent with a body part (the source, which knows the part, named no side); empty,
    unknown, when the part is not named either."""
    side = str(source.get("Laterality") or source.get("ImageLaterality") or "")
    if side in ("R", "L"):
        ds.Laterality = side
    elif "BodyPartExamined" not in ds:
        ds.Laterality = ""


def _orientation(source: Dataset) -> list[str] | str:
    """The source's Patient Orientation as it is (scaling keeps directions), or empty: Type
    2C, known to be unknown. highdicom wants one to build a patient image at all, so it is
    given a placeholder that this replaces."""
    value = source.get("PatientOrientation")
    if not value:
        return ""
    values = [str(value)] if isinstance(value, str) else [str(v) for v in value]
    if len(values) != 2 or not all(v and set(v) <= _ORIENTATION_LETTERS for v in values):
        return ""
    return values


def _derivation(ds: Dataset, label: str, display: str, model: ModelReport, what: str) -> None:
    ds.DerivationDescription = plain(
        f"{what} of {display or label} ({label}) drawn over the image by {model.title}: "
        f"model {model.name} version {model.version}, SHA-256 {model.sha256}, "
        f"{model.backend} {model.precision}",
        1024,
    )
    if model.not_for_clinical_use:
        ds.ImageComments = plain(model.caution or f"{model.title} is not for clinical use.", 10240)


def _times(ds: Dataset, made_at: str, source: Dataset) -> None:
    """The capture, content and creation times from `made_at`, or none at all (they are
    optional here) rather than the clock's."""
    if made_at:
        set_times(ds, made_at, source, "Content", "InstanceCreation")
        ds.DateOfSecondaryCapture, ds.TimeOfSecondaryCapture = ds.ContentDate, ds.ContentTime
        return
    for keyword in (
        "ContentDate",
        "ContentTime",
        "InstanceCreationDate",
        "InstanceCreationTime",
        "DateOfSecondaryCapture",
        "TimeOfSecondaryCapture",
    ):
        if keyword in ds:
            delattr(ds, keyword)
