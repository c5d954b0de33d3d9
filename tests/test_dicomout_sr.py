"""The structured report (Comprehensive 3D SR, TID 1500): every SR written, checked by
dciodvfy, read back strictly, rendered by DCMTK's dsrdump and parsed by highdicom; the content
tree's codes, scores, thresholds, areas, outlines, references, verification, revisions and
character sets checked item by item."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage

from appliance.dicomout.codes import LOCAL
from appliance.dicomout.sr import build_sr, polygon
from appliance.dicomout.uids import output_uids
from appliance.domain import Impression, LabelResult

from dicom_checks import dciodvfy, dsrdump, needs_dciodvfy, needs_dsrdump, read_strict, save
from report_samples import (
    CAUTION,
    MADE_AT,
    NODULE,
    SHA,
    SIGNED_AT,
    bundled,
    chest_source,
    clinical,
    content,
    held_back,
    local_date_time,
    model,
    renamed,
)

Planar = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations


def sr_of(source: Dataset, report: object = None, **kwargs: object) -> Dataset:
    uids = output_uids("sr", source.StudyInstanceUID, source.SOPInstanceUID, "fingerprint-1")
    return build_sr(report or content(), source, uids, instance_number=7, **kwargs)  # type: ignore[arg-type]


def written(tmp_path: Path, ds: Dataset, name: str = "sr.dcm") -> tuple[Path, Dataset]:
    path = save(ds, tmp_path / name)
    return path, read_strict(path)


def parsed(ds: Dataset) -> hd.sr.MeasurementReport:
    document = hd.sr.Comprehensive3DSR.from_dataset(ds)
    report = document.content
    assert isinstance(report, hd.sr.MeasurementReport)
    return report


def finding(group: hd.sr.MeasurementsAndQualitativeEvaluations | Planar) -> hd.sr.CodedConcept:
    assert group.finding_type is not None
    return group.finding_type


def region(group: Planar) -> hd.sr.ImageRegion:
    assert isinstance(group.roi, hd.sr.ImageRegion)
    return group.roi


def evaluations(ds: Dataset) -> list[tuple[str, str]]:
    """(concept meaning, text) of the Qualitative Evaluations container's items."""
    container = next(
        item
        for item in ds.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "C0034375"
    )
    return [
        (item.ConceptNameCodeSequence[0].CodeMeaning, item.TextValue)
        for item in container.ContentSequence
    ]


@needs_dciodvfy
def test_an_sr_of_a_radiograph_passes_dciodvfy_and_reads_back_strictly(tmp_path: Path) -> None:
    source = chest_source()
    path, back = written(tmp_path, sr_of(source))
    errors, warnings = dciodvfy(path)
    print("dciodvfy warnings (SR):", *sorted(set(warnings)), sep="\n  ")
    assert errors == []
    assert back.SOPClassUID == Comprehensive3DSRStorage and back.Modality == "SR"
    assert (back.CompletionFlag, back.VerificationFlag, back.PreliminaryFlag) == (
        "COMPLETE",
        "VERIFIED",
        "FINAL",
    )
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SeriesInstanceUID != source.SeriesInstanceUID
    assert (back.PatientName, back.PatientID) == (source.PatientName, source.PatientID)
    assert back.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    schemes = {item.CodingSchemeDesignator for item in back.CodingSchemeIdentificationSequence}
    assert LOCAL in schemes


@needs_dsrdump
def test_dsrdump_renders_the_findings(tmp_path: Path) -> None:
    path, _ = written(tmp_path, sr_of(chest_source()))
    text = dsrdump(path)
    assert "Imaging Measurement Report" in text
    assert '(60046008,SCT,"Pleural effusion")' in text
    assert '"Model score")="0.91"' in text and '"Operating threshold")="0.5"' in text
    assert '"Area")="33.5" (mm2,UCUM' in text
    assert '(52101004,SCT,"Present")' in text and '(272519000,SCT,"Absent")' in text
    assert "POLYLINE" in text
    assert f'"Caution")="{CAUTION}"' in text
    assert "Łukasik, Ana (radiologist)" in text


def test_labels_are_groups_with_code_score_threshold_and_verdict(tmp_path: Path) -> None:
    source = chest_source()
    _, back = written(tmp_path, sr_of(source))
    groups = {finding(g).meaning: g for g in parsed(back).get_image_measurement_groups()}
    effusion, nodule = groups["Pleural effusion"], groups["Lung nodule"]
    assert (finding(effusion).value, finding(effusion).scheme_designator) == ("60046008", "SCT")
    assert (finding(nodule).value, finding(nodule).scheme_designator) == ("lung_nodule", LOCAL)
    measured = {m.name.meaning: (m.value, m.unit.value) for m in effusion.get_measurements()}
    assert measured == {"Model score": (0.91, "1"), "Operating threshold": (0.5, "1")}
    assert [q.value for q in effusion.get_qualitative_evaluations()] == [codes.SCT.Present]
    assert [q.value for q in nodule.get_qualitative_evaluations()] == [codes.SCT.Absent]
    assert effusion.tracking_identifier == "chest-demo pleural_effusion"
    sources = [s.referenced_sop_instance_uid for s in effusion.source_images]
    assert sources == [source.SOPInstanceUID]
    assert "ReferencedFrameNumber" not in effusion.source_images[0].ReferencedSOPSequence[0]


def test_the_algorithm_is_named_with_its_hash_backend_and_precision(tmp_path: Path) -> None:
    _, back = written(tmp_path, sr_of(chest_source()))
    group = parsed(back).get_image_measurement_groups()[0]
    texts = {
        (item.ConceptNameCodeSequence[0].CodeMeaning, item.TextValue)
        for item in group[0].ContentSequence
        if item.ValueType == "TEXT"
    }
    assert ("Algorithm Name", "chest-demo") in texts
    assert ("Algorithm Version", "1.4.2") in texts
    assert ("Algorithm Parameters", f"sha256={SHA}") in texts
    assert ("Algorithm Parameters", "backend=onnxruntime") in texts
    assert ("Algorithm Parameters", "precision=int8") in texts


def test_a_measured_mask_is_a_closed_outline_on_the_source_with_its_area(tmp_path: Path) -> None:
    source = chest_source()
    _, back = written(tmp_path, sr_of(source))
    report = parsed(back)
    (group,) = report.get_planar_roi_measurement_groups(finding_type=codes.SCT.Pneumothorax)
    outline = region(group)
    assert outline.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    points = outline.value
    np.testing.assert_allclose(points[0], points[-1])  # closed
    np.testing.assert_allclose(points[:4], [[10.5, 12.5], [20.5, 12.5], [20.5, 22.5], [10.5, 22.5]])
    reference = outline.ContentSequence[0].ReferencedSOPSequence[0]
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert "ReferencedFrameNumber" not in reference
    (area,) = group.get_measurements(name=codes.SCT.Area)
    assert (area.value, area.unit.value, area.unit.scheme_designator) == (33.5, "mm2", "UCUM")
    assert [q.value for q in group.get_qualitative_evaluations()] == [codes.SCT.Present]


def test_a_mask_without_spacing_has_outlines_and_says_why_it_has_no_area(tmp_path: Path) -> None:
    _, back = written(tmp_path, sr_of(chest_source()))
    report = parsed(back)
    regions = [
        g
        for g in report.get_planar_roi_measurement_groups()
        if finding(g).meaning == "Consolidation"
    ]
    assert len(regions) == 2
    assert all(g.get_measurements(name=codes.SCT.Area) == [] for g in regions)
    assert [g.tracking_identifier for g in regions] == [
        "chest-demo consolidation region 1",
        "chest-demo consolidation region 2",
    ]
    assert len({g.tracking_uid for g in regions}) == 2
    # The lone pixel (50, 8) becomes the square it covers.
    np.testing.assert_allclose(
        region(regions[1]).value, [[50, 8], [51, 8], [51, 9], [50, 9], [50, 8]]
    )
    notes = [text for name, text in evaluations(back) if name == "Area not measured"]
    assert notes == [
        "Consolidation: area not measured in mm², the image has no calibrated pixel spacing "
        "(60 pixels)."
    ]


def test_a_negative_mask_is_reported_absent(tmp_path: Path) -> None:
    _, back = written(tmp_path, sr_of(chest_source()))
    (group,) = [
        g for g in parsed(back).get_image_measurement_groups() if finding(g).value == "free_fluid"
    ]
    assert [q.value for q in group.get_qualitative_evaluations()] == [codes.SCT.Absent]
    assert group.get_measurements() == []


def test_a_mask_of_several_measured_regions_gives_its_total_area_once(tmp_path: Path) -> None:
    source = chest_source()
    (mask,) = [m for m in model().masks if m.label == "consolidation"]
    measured = replace(mask, area_mm2=12.25)
    report = content(models=(model(labels=(), masks=(measured,)),))
    _, back = written(tmp_path, sr_of(source, report))
    parsed_report = parsed(back)
    regions = parsed_report.get_planar_roi_measurement_groups()
    assert len(regions) == 2 and all(g.get_measurements() == [] for g in regions)
    (whole,) = parsed_report.get_image_measurement_groups()
    assert [m.value for m in whole.get_measurements(name=codes.SCT.Area)] == [12.25]


def test_a_multi_frame_source_is_referenced_with_the_key_frame(tmp_path: Path) -> None:
    source = bundled("examples_ybr_color.dcm")  # US multi-frame, 30 frames
    assert int(source.NumberOfFrames) > 1
    _, back = written(tmp_path, sr_of(source, content(models=(model(frame=4),))))
    report = parsed(back)
    for group in report.get_image_measurement_groups():
        assert group.source_images[0].ReferencedSOPSequence[0].ReferencedFrameNumber == 5
    for planar in report.get_planar_roi_measurement_groups():
        reference = region(planar).ContentSequence[0].ReferencedSOPSequence[0]
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert reference.ReferencedFrameNumber == 5


def test_the_source_is_the_evidence(tmp_path: Path) -> None:
    source = chest_source()
    _, back = written(tmp_path, sr_of(source))
    document = hd.sr.Comprehensive3DSR.from_dataset(back)
    assert document.get_evidence(current_procedure_only=True) == [
        (
            source.StudyInstanceUID,
            source.SeriesInstanceUID,
            source.SOPInstanceUID,
            source.SOPClassUID,
        )
    ]
    assert "PertinentOtherEvidenceSequence" not in back


def test_the_box_is_the_device_observer_and_the_procedure_is_coded(tmp_path: Path) -> None:
    _, back = written(tmp_path, sr_of(chest_source()))
    report = parsed(back)
    (observer,) = report.get_observer_contexts()
    assert observer.observer_type == codes.DCM.Device
    attributes = observer.observer_identifying_attributes
    assert isinstance(attributes, hd.sr.DeviceObserverIdentifyingAttributes)
    assert attributes.name == "appliance" and attributes.physical_location == "Klinik Süd"
    procedure = [
        item.ConceptCodeSequence[0]
        for item in back.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Procedure reported"
    ]
    assert [(p.CodeValue, p.CodingSchemeDesignator) for p in procedure] == [("168537006", "SCT")]


def test_the_words_come_first_with_the_caution(tmp_path: Path) -> None:
    _, back = written(tmp_path, sr_of(chest_source()))
    items = evaluations(back)
    assert items[0] == ("Caution", CAUTION)
    assert items[1] == ("Analysis outcome", "Findings: Pleural effusion 0.91.")
    assert ("Clinician impression", "Right pleural effusion; no pneumothorax on review.") in items
    assert (
        "Impression by",
        f"Łukasik, Ana (radiologist), {SIGNED_AT}, final",
    ) in items
    feedback = [text for name, text in items if name == "Clinician feedback"]
    assert feedback == [
        "Pleural effusion: agree: Clear meniscus on the right. "
        "(Dr Ana Łukasik, radiologist, 2026-03-04T10:40:00+00:00)"
    ]
    assert back.SpecificCharacterSet == "ISO_IR 192"  # Ł and ü


def test_a_clinical_model_has_no_caution(tmp_path: Path) -> None:
    _, back = written(tmp_path, sr_of(chest_source(), clinical(content())))
    assert "Caution" not in [name for name, _ in evaluations(back)]


@needs_dciodvfy
def test_a_held_back_image_is_reported_in_words_without_measurements(tmp_path: Path) -> None:
    path, back = written(tmp_path, sr_of(chest_source(), held_back()))
    errors, _ = dciodvfy(path)
    assert errors == []
    names = [item.ConceptNameCodeSequence[0].CodeMeaning for item in back.ContentSequence]
    assert "Imaging Measurements" not in names and "Qualitative Evaluations" in names
    items = dict(evaluations(back))
    assert items["Analysis outcome"] == (
        "Held back: the image failed the plausibility check: the image looks like a lateral "
        "view; the model reads PA chest radiographs."
    )
    assert items["Model outcome"].startswith("Chest X-ray demo (chest-demo 1.4.2, SHA-256 ")
    assert "held back" in items["Model outcome"]
    assert back.VerificationFlag == "UNVERIFIED" and "VerifyingObserverSequence" not in back
    assert parsed(back).get_image_measurement_groups() == []


def test_a_final_impression_verifies_the_report(tmp_path: Path) -> None:
    _, back = written(tmp_path, sr_of(chest_source(), institution="Clinic of the North"))
    (observer,) = back.VerifyingObserverSequence
    assert observer.VerifyingObserverName == "Łukasik^Ana"
    assert observer.VerifyingOrganization == "Klinik Süd"
    assert observer.VerificationDateTime == "20260304110000+0000"
    assert back.InstitutionName == "Clinic of the North"
    assert (back.ContentDate, back.ContentTime) == local_date_time(MADE_AT)


def test_a_draft_impression_leaves_it_unverified_and_preliminary(tmp_path: Path) -> None:
    draft = Impression("Probably effusion.", "Dr Berg", "resident", SIGNED_AT, False)
    _, back = written(tmp_path, sr_of(chest_source(), content(impression=draft)))
    assert (back.VerificationFlag, back.PreliminaryFlag) == ("UNVERIFIED", "PRELIMINARY")
    assert back.CompletionFlag == "COMPLETE"
    assert ("Impression by", f"Dr Berg (resident), {SIGNED_AT}, draft, not signed") in evaluations(
        back
    )


def test_a_revision_references_the_sr_it_replaces(tmp_path: Path) -> None:
    source = chest_source()
    first = sr_of(source)
    revised = content(revision=2, replaces={"sr": str(first.SOPInstanceUID)})
    uids = output_uids("sr", source.StudyInstanceUID, source.SOPInstanceUID, "fingerprint-2")
    second = build_sr(revised, source, uids, instance_number=8)
    _, back = written(tmp_path, second)
    (study,) = back.PredecessorDocumentsSequence
    (series,) = study.ReferencedSeriesSequence
    (instance,) = series.ReferencedSOPSequence
    assert study.StudyInstanceUID == source.StudyInstanceUID
    assert series.SeriesInstanceUID == first.SeriesInstanceUID == second.SeriesInstanceUID
    assert instance.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert instance.ReferencedSOPClassUID == Comprehensive3DSRStorage
    assert second.SOPInstanceUID != first.SOPInstanceUID


def test_previous_documents_given_are_referenced_once(tmp_path: Path) -> None:
    source = chest_source()
    first = sr_of(source)
    revised = content(revision=2, replaces={"sr": str(first.SOPInstanceUID)})
    uids = output_uids("sr", source.StudyInstanceUID, source.SOPInstanceUID, "fingerprint-2")
    back = build_sr(revised, source, uids, instance_number=8, previous=[first])
    instances = [
        sop.ReferencedSOPInstanceUID
        for study in back.PredecessorDocumentsSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    ]
    assert instances == [first.SOPInstanceUID]


@pytest.mark.parametrize(
    "name",
    ["chrX1.dcm", "chrGreek.dcm", "chrRuss.dcm", "chrH31.dcm", "chrFren.dcm", "chrArab.dcm"],
)
def test_patient_names_in_any_character_set_round_trip_as_utf8(tmp_path: Path, name: str) -> None:
    source = bundled(name)
    path, back = written(tmp_path, sr_of(source))
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert str(back.PatientName) == str(source.PatientName)
    assert pydicom.dcmread(path).PatientName == source.PatientName


@needs_dsrdump
def test_a_name_with_accents_round_trips_through_dcmtk(tmp_path: Path) -> None:
    source = renamed("CT_small.dcm", "Müller^Jürgen")
    path, back = written(tmp_path, sr_of(source))
    assert back.PatientName == "Müller^Jürgen" and back.SpecificCharacterSet == "ISO_IR 192"
    assert "Müller^Jürgen" in dsrdump(path)


def test_a_source_value_of_several_values_is_copied_as_those_values(tmp_path: Path) -> None:
    """A modality's "CHEST\\PA" description (two values; LO allows one, sources do it anyway)
    is copied as it is, not as the text of a Python list."""
    source = chest_source()
    source.StudyDescription = ["CHEST", "PA"]
    _, back = written(tmp_path, sr_of(source))
    assert list(back.StudyDescription) == ["CHEST", "PA"]


def test_an_ascii_only_report_declares_no_character_set(tmp_path: Path) -> None:
    source = renamed("CT_small.dcm", "Doe^Jane", charset=None)
    ascii_only = content(
        site_name="North Clinic", models=(model(masks=()),), feedback=(), impression=None
    )
    _, back = written(tmp_path, sr_of(source, ascii_only))
    assert "SpecificCharacterSet" not in back
    assert back.PatientName == "Doe^Jane"


def test_a_long_label_name_goes_in_long_code_value(tmp_path: Path) -> None:
    long_label = LabelResult(
        "interstitial_pattern_bilateral", "Interstitial", None, 0.7, 0.5, True, "review"
    )
    _, back = written(
        tmp_path, sr_of(chest_source(), content(models=(model(labels=(long_label,), masks=()),)))
    )
    (group,) = parsed(back).get_image_measurement_groups()
    assert finding(group).value == "interstitial_pattern_bilateral"
    coded = next(i for i in group[0].ContentSequence if i.ValueType == "CODE")
    assert coded.ConceptCodeSequence[0].LongCodeValue == "interstitial_pattern_bilateral"


@needs_dciodvfy
def test_names_a_manifest_or_a_site_gives_are_made_fit_for_their_value_representations(
    tmp_path: Path,
) -> None:
    """A display name with a backslash (an LO's value separator) or a line break, and a site
    name of 64 letters with accents (over 64 bytes in UTF-8), still make a valid SR."""
    odd = replace(NODULE, display="Nodule \\ mass\nof the " + "ü" * 80)
    report = content(
        models=(model(labels=(odd,)),),
        site_name="Klinikum " + "Süd" * 30,
    )
    path, back = written(tmp_path, sr_of(chest_source(), report))
    assert dciodvfy(path)[0] == []
    groups = {finding(g).value: g for g in parsed(back).get_image_measurement_groups()}
    meaning = finding(groups["lung_nodule"]).meaning
    assert meaning.startswith("Nodule mass of the üü") and len(meaning.encode()) <= 64
    (observer,) = back.VerifyingObserverSequence
    organisation = observer.VerifyingOrganization
    assert organisation.startswith("Klinikum SüdSüd") and len(organisation.encode()) <= 64


@needs_dciodvfy
def test_text_pasted_with_tabs_and_control_characters_is_valid_text(tmp_path: Path) -> None:
    """UT allows line breaks but not tabs or other control characters, which a text pasted
    into the impression may hold: they become spaces, the lines stay."""
    pasted = Impression(
        "Effusion:\tright\r\nNo pneumothorax\x0b\x00.", "Berg", "r", SIGNED_AT, True
    )
    path, back = written(tmp_path, sr_of(chest_source(), content(impression=pasted)))
    assert dciodvfy(path)[0] == []
    assert ("Clinician impression", "Effusion: right\r\nNo pneumothorax  .") in evaluations(back)


def test_building_twice_gives_the_same_object(tmp_path: Path) -> None:
    source = chest_source()
    first, second = save(sr_of(source), tmp_path / "a.dcm"), save(sr_of(source), tmp_path / "b.dcm")
    assert first.read_bytes() == second.read_bytes()
    other = sr_of(source, content(made_at="2026-03-05T08:00:00Z"))
    assert other.SOPInstanceUID == sr_of(source).SOPInstanceUID  # the UID is the fingerprint's


def test_polygons_are_closed_in_dicom_image_coordinates() -> None:
    np.testing.assert_allclose(
        polygon(((0, 0), (4, 0), (4, 3))), [[0.5, 0.5], [4.5, 0.5], [4.5, 3.5], [0.5, 0.5]]
    )
    np.testing.assert_allclose(polygon(((2, 5), (6, 5))), [[2, 5], [7, 5], [7, 6], [2, 6], [2, 5]])


def test_output_uids_give_one_series_per_kind_and_study_and_an_instance_per_content() -> None:
    study = "1.2.826.0.1.3680043.8.498.1"
    base = output_uids("sr", study, "1.2.3.1", "fp-1")
    assert base == output_uids("sr", study, "1.2.3.1", "fp-1")
    assert base.study == study
    others = [
        output_uids("sr", study, "1.2.3.2", "fp-1"),
        output_uids("sr", study, "1.2.3.1", "fp-2"),
        output_uids("sr", study, "1.2.3.1", "fp-1", label="x"),
    ]
    assert {uids.series for uids in others} == {base.series}
    assert len({base.instance, *(uids.instance for uids in others)}) == 4
    kinds = [output_uids(kind, study, "1.2.3.1", "fp-1") for kind in ("sr", "heatmap", "report")]
    assert len({uids.series for uids in kinds}) == 3 and len({u.instance for u in kinds}) == 3
    assert output_uids("sr", "1.2.826.0.1.3680043.8.498.2", "1.2.3.1", "fp-1").series != base.series
    rooted = output_uids("sr", study, "1.2.3.1", "fp-1", root="1.2.840.99999")
    for uid in (*base[1:], *rooted[1:]):
        assert uid.is_valid and len(uid) <= 64
    assert rooted.series.startswith("1.2.840.99999.") and rooted.instance != base.instance
