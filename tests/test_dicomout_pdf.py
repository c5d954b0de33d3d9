"""The printed report as Encapsulated PDF: written, checked by dciodvfy, read back strictly; the
document comes back byte for byte, with its title, code and source, in the source's study and
a series of its own; a revision names the report it replaces."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import EncapsulatedPDFStorage

from appliance.dicomout.pdf import encapsulate_pdf
from appliance.dicomout.uids import output_uids
from appliance.domain import ReportPictures
from appliance.report.pdf import render_report

from dicom_checks import dciodvfy, needs_dciodvfy, read_strict, save
from report_samples import (
    MADE_AT,
    bundled,
    chest_source,
    content,
    header_of,
    local_date_time,
    renamed,
)

TITLE = "Findings report"


@pytest.fixture(scope="module")
def pdf() -> bytes:
    """A real report, as the worker would make it."""
    source = chest_source()
    return render_report(content(), header_of(source), ReportPictures(None))


def wrapped(source: Dataset, document: bytes, **kwargs: object) -> Dataset:
    uids = output_uids("report", source.StudyInstanceUID, source.SOPInstanceUID, "fingerprint-1")
    return encapsulate_pdf(source, document, TITLE, uids, instance_number=3, **kwargs)  # type: ignore[arg-type]


@needs_dciodvfy
def test_an_encapsulated_report_passes_dciodvfy_and_gives_its_pdf_back(
    tmp_path: Path, pdf: bytes
) -> None:
    source = chest_source()
    path = save(wrapped(source, pdf, institution="Klinik Süd", made_at=MADE_AT), tmp_path / "r.dcm")
    errors, warnings = dciodvfy(path)
    print("dciodvfy warnings (Encapsulated PDF):", *sorted(set(warnings)), sep="\n  ")
    assert errors == []
    back = read_strict(path)
    assert back.SOPClassUID == EncapsulatedPDFStorage
    assert back.EncapsulatedDocumentLength == len(pdf)
    assert back.EncapsulatedDocument[: len(pdf)] == pdf
    assert len(back.EncapsulatedDocument) % 2 == 0
    assert back.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert (back.Modality, back.ConversionType, back.BurnedInAnnotation) == ("DOC", "WSD", "YES")
    assert back.DocumentTitle == TITLE
    code = back.ConceptNameCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("18748-4", "LN")
    assert (back.ContentDate, back.ContentTime) == local_date_time(MADE_AT)
    assert back.AcquisitionDateTime == "20260304110500+0000"
    assert back.InstitutionName == "Klinik Süd"


def test_it_references_its_source_in_the_same_study(tmp_path: Path, pdf: bytes) -> None:
    source = chest_source()
    back = read_strict(save(wrapped(source, pdf), tmp_path / "r.dcm"))
    (reference,) = back.SourceInstanceSequence
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == source.SOPClassUID
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SeriesInstanceUID != source.SeriesInstanceUID
    assert (back.PatientName, back.PatientID) == (source.PatientName, source.PatientID)
    assert back.ContentDate == "" and back.AcquisitionDateTime == ""  # Type 2, no made_at


def test_an_odd_length_pdf_is_padded_to_even(tmp_path: Path) -> None:
    odd = b"%PDF-1.4\n%%EOF\n"
    assert len(odd) % 2 == 1
    back = read_strict(save(wrapped(chest_source(), odd), tmp_path / "r.dcm"))
    assert back.EncapsulatedDocument == odd + b"\x00"
    assert back.EncapsulatedDocumentLength == len(odd)


def test_a_revision_names_the_report_it_replaces(tmp_path: Path, pdf: bytes) -> None:
    source = chest_source()
    first = wrapped(source, pdf)
    second = wrapped(source, pdf, replaces=str(first.SOPInstanceUID))
    back = read_strict(save(second, tmp_path / "r.dcm"))
    (study,) = back.PredecessorDocumentsSequence
    (series,) = study.ReferencedSeriesSequence
    (instance,) = series.ReferencedSOPSequence
    assert study.StudyInstanceUID == source.StudyInstanceUID
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    assert instance.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert instance.ReferencedSOPClassUID == EncapsulatedPDFStorage


@pytest.mark.parametrize("name", ["chrX1.dcm", "chrRuss.dcm", "chrH31.dcm"])
def test_the_patient_is_copied_in_any_character_set(tmp_path: Path, pdf: bytes, name: str) -> None:
    source = bundled(name)
    back = read_strict(save(wrapped(source, pdf), tmp_path / "r.dcm"))
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert str(back.PatientName) == str(source.PatientName)


def test_a_name_with_accents_round_trips(tmp_path: Path, pdf: bytes) -> None:
    back = read_strict(save(wrapped(renamed("MR_small.dcm", "Müller^Jürgen"), pdf), tmp_path / "r"))
    assert back.PatientName == "Müller^Jürgen" and back.SpecificCharacterSet == "ISO_IR 192"


def test_the_same_report_gives_the_same_object(tmp_path: Path, pdf: bytes) -> None:
    source = chest_source()
    first = save(wrapped(source, pdf), tmp_path / "a.dcm").read_bytes()
    assert first == save(wrapped(source, pdf), tmp_path / "b.dcm").read_bytes()


def test_bytes_that_are_not_a_pdf_are_refused() -> None:
    with pytest.raises(ValueError, match="not a PDF"):
        wrapped(chest_source(), b"<html>report</html>")
