"""The structured report of one analysed image: a Comprehensive 3D SR holding a TID 1500
Measurement Report, built with highdicom, so that the clinic's PACS and reporting system
receive the findings as data, not only as pictures.

What it holds:

- the observation context: the box as the DEVICE observer; each model is named where its
  findings are, as TID 4019 Algorithm Identification (name, version, and as parameters its
  SHA-256, backend and precision);
- the procedure reported: a SNOMED CT imaging procedure chosen by the source's modality;
- per model with findings, one TID 1501 group per label: tracking identifier, algorithm, the
  finding (the label's code), Present or Absent (SNOMED CT), the score and the operating
  threshold, and the source image (with its frame when the source is multi-frame);
- per positive mask one TID 1410 group per outline: a closed SCOORD POLYLINE on the source
  image (and frame), Present, and the area in mm² (SNOMED CT Area, UCUM mm2) where the image
  has a calibrated pixel spacing; a mask of several regions gives its total area in a TID 1501
  group of its own, since one region's polygon must not carry all regions' area; a negative
  mask a TID 1501 group saying Absent;
- the TID 1500 "Qualitative Evaluations" container (UMLS C0034375), which highdicom's
  MeasurementReport does not offer and which is appended here: the caution first, plainly (a
  demo or not-for-clinical-use model), the outcome in words (held back, no model, failed, and
  why), each model's outcome, masks whose area could not be measured, the clinicians'
  feedback and the impression with who wrote it and when, as TEXT items.

The document is COMPLETE; it is VERIFIED, with the clinician as verifying observer and the site
as organisation, once the impression is final, else UNVERIFIED. A revision names the SR it
replaces in the Predecessor Documents Sequence. Everything comes from `ReportContent`; times
come from it too, so the same content gives the same object.

Outline coordinates: the findings give outlines as 0-based pixel indices (x = column, y = row,
the centres of border pixels); DICOM's 2D image coordinates put the top left corner of the top
left pixel at (0, 0), so each point is moved by half a pixel. An outline too small to be a
polygon (a lone pixel, a one-pixel-wide line) is written as the rectangle of the pixels it
covers.

The concepts, standard and local (the private scheme "99APPLNC" for labels without a code,
the score, the threshold and the TEXT items), and the scheme's documentation are in `codes`;
the words of the TEXT items in `sr_text`.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, Comprehensive3DSRStorage

from appliance.dicomout.codes import (
    ABSENT,
    AREA,
    NO_UNITS,
    PRESENT,
    QUALITATIVE_EVALUATIONS,
    SCORE,
    SQUARE_MM,
    THRESHOLD,
    finding_code,
    local_scheme,
    procedure_for,
)
from appliance.dicomout.common import LONG
from appliance.dicomout.derived import (
    SERIES_NUMBER,
    copy_patient_and_study,
    date_contributions,
    equipment,
    frame_count,
    person_name,
    plain,
    set_character_set,
    set_times,
    text_value,
    utc_datetime,
)
from appliance.dicomout.meta import file_meta_for
from appliance.dicomout.sr_text import text_items
from appliance.dicomout.uids import UID_ROOT, ObjectUids, deterministic_uid
from appliance.domain import (
    AnalysisState,
    Impression,
    LabelResult,
    MaskResult,
    ModelReport,
    ReportContent,
)

_Planar = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
_Group = hd.sr.MeasurementsAndQualitativeEvaluations
_CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS


class _Document(hd.sr.Comprehensive3DSR):
    """highdicom's Comprehensive 3D SR, except that the patient and study are copied by
    `copy_patient_and_study` (as text, any source character set, any SOP class) after it is
    built, not by highdicom from the source's module tables."""

    def copy_patient_and_study_information(self, dataset: Dataset) -> None:
        return None


def build_sr(
    content: ReportContent,
    source: Dataset,
    uids: ObjectUids,
    *,
    instance_number: int,
    institution: str = "",
    previous: Sequence[Dataset] = (),
    root: str = UID_ROOT,
) -> Dataset:
    """The SR of `content` about the image `source` (its header, read without pixels).

    `uids` come from `output_uids("sr", ...)`; `previous` are earlier SRs this one replaces
    (besides `content.replaces["sr"]`, which is referenced by its UID alone); `root` is the
    site's UID root, for the tracking and device UIDs.
    """
    groups = measurement_groups(content, source, root)
    report = _report(content, source, groups, root)
    signed = content.impression if content.impression and content.impression.final else None
    ds = _Document(
        evidence=[_evidence(source)],
        content=report,
        series_instance_uid=uids.series,
        series_number=SERIES_NUMBER["sr"],
        sop_instance_uid=uids.instance,
        instance_number=instance_number,
        manufacturer="",
        is_complete=True,
        is_final=signed is not None,
        previous_versions=_predecessors(content, source, uids, previous) or None,
        coding_schemes=[local_scheme()],
        series_description="Findings (structured report)",
        specific_character_set=None,
    )
    copy_patient_and_study(ds, source)
    equipment(ds, institution)
    set_times(ds, content.made_at, source, "Content", "InstanceCreation")
    date_contributions(ds, content.made_at)
    if signed is not None:
        _verify(ds, signed, plain(content.site_name or institution, LONG))
    set_character_set(ds)
    ds.file_meta = file_meta_for(ds)
    return ds


def _evidence(source: Dataset) -> Dataset:
    """What highdicom reads of the source: its identity, and empty patient and study values
    (the real ones are copied afterwards, as text)."""
    item = Dataset()
    item.SOPClassUID = source.SOPClassUID
    item.SOPInstanceUID = source.SOPInstanceUID
    item.StudyInstanceUID = source.StudyInstanceUID
    item.SeriesInstanceUID = source.SeriesInstanceUID
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex"):
        setattr(item, keyword, "")
    for keyword in ("AccessionNumber", "StudyID", "StudyDate", "StudyTime"):
        setattr(item, keyword, "")
    return item


def _predecessors(
    content: ReportContent, source: Dataset, uids: ObjectUids, previous: Sequence[Dataset]
) -> list[Dataset]:
    """The SRs this one replaces: `previous` as given, and the one `content.replaces` names,
    which lives in this study's SR series (its UID depends only on the kind and the study)."""
    found = {str(ds.SOPInstanceUID): ds for ds in previous}
    replaced = content.replaces.get("sr")
    if replaced and replaced not in found:
        item = Dataset()
        item.SOPClassUID = Comprehensive3DSRStorage
        item.SOPInstanceUID = UID(replaced)
        item.StudyInstanceUID = source.StudyInstanceUID
        item.SeriesInstanceUID = uids.series
        found[replaced] = item
    return list(found.values())


def _verify(ds: Dataset, impression: Impression, organisation: str) -> None:
    """VERIFIED by the clinician who signed the final impression, at the time they signed."""
    observer = Dataset()
    observer.VerifyingObserverName = person_name(impression.author) or "unknown"
    observer.VerifyingObserverIdentificationCodeSequence = []  # Type 2: none known
    observer.VerifyingOrganization = organisation or "unknown"
    observer.VerificationDateTime = utc_datetime(impression.at)
    ds.VerificationFlag = "VERIFIED"
    ds.VerifyingObserverSequence = [observer]


# ---- the content tree ------------------------------------------------------------------------


def _report(
    content: ReportContent,
    source: Dataset,
    groups: list[_Group | _Planar],
    root: str,
) -> Dataset:
    """The TID 1500 root container: highdicom's Measurement Report, without its Imaging
    Measurements container when there is nothing measured (highdicom insists on one group, TID
    1500 asks for measurements or qualitative evaluations), and with the Qualitative
    Evaluations container appended."""
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=_device(content, root),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=procedure_for(source),
        imaging_measurements=groups or [_placeholder()],
        title=codes.DCM.ImagingMeasurementReport,
    )
    container = report[0]
    if not groups:
        kept = [
            item for item in container.ContentSequence if item.name != codes.DCM.ImagingMeasurements
        ]
        container.ContentSequence = hd.sr.ContentSequence(kept)
    container.ContentSequence.append(_evaluations(content))
    return container


def _placeholder() -> _Group:
    """A group that only lets highdicom build the report; `_report` removes it again."""
    tracking = hd.sr.TrackingIdentifier(uid=deterministic_uid("placeholder"), identifier="none")
    return _Group(tracking_identifier=tracking)


def _device(content: ReportContent, root: str) -> hd.sr.DeviceObserverIdentifyingAttributes:
    """The box as the observer: its UID is stable per site, so that a PACS sees one device."""
    site = plain(content.site_name)
    return hd.sr.DeviceObserverIdentifyingAttributes(
        uid=deterministic_uid("device-observer", site, root=root),
        name="appliance",
        model_name="appliance",
        physical_location=site or None,
    )


def _evaluations(content: ReportContent) -> hd.sr.ContainerContentItem:
    """TID 1500's Qualitative Evaluations container with the report's words as TEXT items."""
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, is_content_continuous=False, relationship_type=_CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(name=name, value=text_value(text), relationship_type=_CONTAINS)
            for name, text in text_items(content)
        ]
    )
    return container


# ---- the measurement groups ------------------------------------------------------------------


def measurement_groups(
    content: ReportContent, source: Dataset, root: str
) -> list[_Group | _Planar]:
    """TID 1501 and 1410 groups of every model that gave findings, labels first."""
    groups: list[_Group | _Planar] = []
    for model in content.models:
        if model.state is not AnalysisState.FINDINGS:
            continue
        algorithm = algorithm_of(model)
        for label in model.labels:
            groups.append(_label_group(model, label, algorithm, source, root))
        for mask in model.masks:
            groups.extend(_mask_groups(model, mask, algorithm, source, root))
    return groups


def algorithm_of(model: ModelReport) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[
            f"sha256={model.sha256}",
            f"backend={model.backend}",
            f"precision={model.precision}",
        ],
    )


def _tracking(
    source: Dataset, model: ModelReport, kind: str, name: str, root: str, n: int = 0
) -> hd.sr.TrackingIdentifier:
    """The same finding of the same model on the same image keeps its tracking UID across
    revisions, so that a reader can follow it from one report to the next."""
    uid = deterministic_uid("tracking", source.SOPInstanceUID, model.name, kind, name, n, root=root)
    suffix = f" region {n}" if n else ""
    return hd.sr.TrackingIdentifier(uid=uid, identifier=f"{model.name} {name}{suffix}")


def _frames(source: Dataset, model: ModelReport) -> list[int] | None:
    return [model.frame + 1] if frame_count(source) > 1 else None


def _label_group(
    model: ModelReport,
    label: LabelResult,
    algorithm: hd.sr.AlgorithmIdentification,
    source: Dataset,
    root: str,
) -> _Group:
    code = finding_code(label.code, label.label, label.display)
    return _Group(
        tracking_identifier=_tracking(source, model, "label", label.label, root),
        finding_type=code,
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=SCORE, value=float(label.score), unit=NO_UNITS),
            hd.sr.Measurement(name=THRESHOLD, value=float(label.threshold), unit=NO_UNITS),
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=code, value=PRESENT if label.positive else ABSENT)
        ],
        source_images=[_group_source(source, model)],
    )


def _group_source(source: Dataset, model: ModelReport) -> hd.sr.SourceImageForMeasurementGroup:
    return hd.sr.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        referenced_frame_numbers=_frames(source, model),
    )


def _mask_groups(
    model: ModelReport,
    mask: MaskResult,
    algorithm: hd.sr.AlgorithmIdentification,
    source: Dataset,
    root: str,
) -> list[_Group | _Planar]:
    code = finding_code(mask.code, mask.label, mask.display)
    polygons = [polygon(outline) for outline in mask.outlines]
    if not mask.positive or not polygons:
        return [
            _whole_mask_group(model, mask, code, algorithm, source, root, present=mask.positive)
        ]
    single = len(polygons) == 1
    groups: list[_Group | _Planar] = [
        _Planar(
            tracking_identifier=_tracking(
                source, model, "mask", mask.label, root, 0 if single else n
            ),
            referenced_region=_region(points, source, model),
            finding_type=code,
            algorithm_id=algorithm,
            measurements=_area(mask) if single else None,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=code, value=PRESENT)],
        )
        for n, points in enumerate(polygons, start=1)
    ]
    if not single and mask.area_mm2 is not None:
        groups.append(_whole_mask_group(model, mask, code, algorithm, source, root, present=True))
    return groups


def _whole_mask_group(
    model: ModelReport,
    mask: MaskResult,
    code: hd.sr.CodedConcept,
    algorithm: hd.sr.AlgorithmIdentification,
    source: Dataset,
    root: str,
    *,
    present: bool,
) -> _Group:
    """The mask as a whole: Absent, or Present with the total area of all its regions."""
    return _Group(
        tracking_identifier=_tracking(source, model, "mask", mask.label, root),
        finding_type=code,
        algorithm_id=algorithm,
        measurements=_area(mask) if present else None,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=code, value=PRESENT if present else ABSENT)
        ],
        source_images=[_group_source(source, model)],
    )


def _area(mask: MaskResult) -> list[hd.sr.Measurement] | None:
    if mask.area_mm2 is None:
        return None  # said in words in the Qualitative Evaluations container
    return [hd.sr.Measurement(name=AREA, value=float(mask.area_mm2), unit=SQUARE_MM)]


def _region(
    points: npt.NDArray[np.float64], source: Dataset, model: ModelReport
) -> hd.sr.ImageRegion:
    reference = hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        referenced_frame_numbers=_frames(source, model),
    )
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=points, source_image=reference
    )


def polygon(outline: Sequence[tuple[float, float]]) -> npt.NDArray[np.float64]:
    """A closed polygon (first point repeated last) in DICOM image coordinates of an outline
    of pixel indices; fewer than three corners become the rectangle of the pixels covered."""
    points = np.asarray(outline, dtype=np.float64).reshape(-1, 2)
    distinct = np.unique(points, axis=0)
    if len(distinct) < 3 or _area_of(points) == 0.0:
        (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0) + 1.0
        corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    else:
        corners = points + 0.5  # pixel centres
    return np.vstack([corners, corners[:1]])


def _area_of(points: npt.NDArray[np.float64]) -> float:
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)
