"""The printed report as a DICOM object: Encapsulated PDF Storage in a series of its own in the
source image's study, so that the PACS keeps and shows the same pages the box printed.

highdicom has no builder for it, so it is built here by hand after PS3.3 A.45.1 (Encapsulated
PDF IOD): Patient and General Study copied from the source (see `derived`), Encapsulated
Document Series (modality DOC), General and SC Equipment (the box, converted on a workstation),
Encapsulated Document (the PDF, its title and code, the source image it reports on, the report
it replaces) and SOP Common. Burned-in annotation is YES: the pages name the patient.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import EncapsulatedPDFStorage

from appliance.dicomout.derived import (
    SERIES_NUMBER,
    copy_patient_and_study,
    equipment,
    plain,
    set_character_set,
    set_times,
    source_reference,
    utc_datetime,
)
from appliance.dicomout.meta import file_meta_for
from appliance.dicomout.uids import ObjectUids

SERIES_DESCRIPTION = "Findings report (PDF)"
PDF_SIGNATURE = b"%PDF-"


def _title_code() -> Dataset:
    """LOINC 18748-4, CID 7000's "Diagnostic Imaging Report" document title."""
    code = Dataset()
    code.CodeValue = "18748-4"
    code.CodingSchemeDesignator = "LN"
    code.CodeMeaning = "Diagnostic Imaging Report"
    return code


def encapsulate_pdf(
    source: Dataset,
    pdf: bytes,
    title: str,
    uids: ObjectUids,
    *,
    instance_number: int,
    institution: str = "",
    replaces: str | None = None,
    made_at: str = "",
) -> Dataset:
    """`pdf` as an Encapsulated PDF about the image `source` (its header).

    `replaces` is the SOP Instance UID of the report this revision replaces (in the same
    series: the series depends only on the kind and the study). `made_at` (ISO 8601) dates the
    document; without it the Type 2 dates are empty, never the clock's, so that the same
    report gives the same bytes. Raises ValueError for bytes that are not a PDF.
    """
    if not pdf.startswith(PDF_SIGNATURE):
        raise ValueError(f"not a PDF: the document starts with {pdf[:8]!r}")
    ds = Dataset()
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.SOPInstanceUID = uids.instance
    copy_patient_and_study(ds, source)
    _series(ds, uids)
    equipment(ds, institution)
    ds.ConversionType = "WSD"  # SC Equipment: made on a workstation (the box)
    _document(ds, source, pdf, title, instance_number)
    _times(ds, made_at, source)
    if replaces:
        ds.PredecessorDocumentsSequence = [_predecessor(source, uids, replaces)]
    set_character_set(ds)
    ds.file_meta = file_meta_for(ds)
    return ds


def _series(ds: Dataset, uids: ObjectUids) -> None:
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = uids.series
    ds.SeriesNumber = SERIES_NUMBER["report"]
    ds.SeriesDescription = SERIES_DESCRIPTION


def _document(ds: Dataset, source: Dataset, pdf: bytes, title: str, instance_number: int) -> None:
    ds.InstanceNumber = instance_number
    ds.BurnedInAnnotation = "YES"  # the pages show the patient's name and ID
    ds.DocumentTitle = plain(title, 1024)
    ds.ConceptNameCodeSequence = [_title_code()]
    ds.SourceInstanceSequence = [source_reference(source)]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    # OB values have even length; the length says where the PDF ends, before the pad byte.
    ds.EncapsulatedDocument = pdf + b"\x00" if len(pdf) % 2 else pdf
    ds.EncapsulatedDocumentLength = len(pdf)


def _times(ds: Dataset, made_at: str, source: Dataset) -> None:
    if made_at:
        set_times(ds, made_at, source, "Content", "InstanceCreation")
        ds.AcquisitionDateTime = utc_datetime(made_at)
    else:
        ds.ContentDate = ds.ContentTime = ds.AcquisitionDateTime = ""  # Type 2: unknown


def _predecessor(source: Dataset, uids: ObjectUids, replaced: str) -> Dataset:
    """The replaced report, as a Hierarchical SOP Instance Reference."""
    instance = Dataset()
    instance.ReferencedSOPClassUID = EncapsulatedPDFStorage
    instance.ReferencedSOPInstanceUID = replaced
    series = Dataset()
    series.SeriesInstanceUID = uids.series
    series.ReferencedSOPSequence = [instance]
    study = Dataset()
    study.StudyInstanceUID = source.StudyInstanceUID
    study.ReferencedSeriesSequence = [series]
    return study
