"""The coded concepts the box's structured reports use, in one place: standard ones (SNOMED CT,
DICOM, UCUM, UMLS) and the box's own local scheme for what no standard scheme offers.

The local coding scheme
-----------------------

Designator "99APPLNC" (PS3.16 section 8.1: designators that begin with "99" are private),
declared in the Coding Scheme Identification Sequence of every SR that uses it.

- A label whose model manifest gives no code: value = the label's name as the manifest writes
  it (e.g. "pleural_effusion"; a name longer than 16 characters goes in Long Code Value),
  meaning = its display name (at most 64 characters). With a code in the manifest (SNOMED CT
  as a rule), that code is used as given.
- SCORE "Model score", THRESHOLD "Operating threshold": numeric measurements in UCUM "1" (no
  units): the model's output probability for a label, and the operating point it is compared
  with (a score at or above it is reported as Present).
- TEXT items of the TID 1500 Qualitative Evaluations container: CAUTION "Caution" (a demo or
  not-for-clinical-use model: read first), OUTCOME "Analysis outcome" (findings, none above
  the thresholds, held back, no model, failed, with the reason), MODELOUTCOME "Model outcome"
  (one model's outcome and identity), AREANOTE "Area not measured" (a mask on an image without
  calibrated pixel spacing), MEASURENOTE "Measurement note" (how an area was measured, e.g. at
  the detector plane), FEEDBACK "Clinician feedback" (label, verdict, comment, author, role,
  time), IMPRESSION "Clinician impression" (the text), IMPRESSIONBY "Impression by" (author,
  role, time, final or draft).

A value never changes meaning; a new concept gets a new value.
"""

from __future__ import annotations

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from appliance.dicomout.common import LONG
from appliance.dicomout.derived import plain
from appliance.domain import CodedTerm

LOCAL = "99APPLNC"
_MEANING = LONG  # Code Meaning is a DICOM LO


def local_scheme() -> CodingSchemeIdentificationItem:
    """The Coding Scheme Identification Sequence item that declares the local scheme."""
    return CodingSchemeIdentificationItem(
        designator=LOCAL,
        name="Appliance local concepts",
        responsible_organization="appliance (documented in appliance/dicomout/codes.py)",
    )


def local(value: str, meaning: str) -> hd.sr.CodedConcept:
    """A concept of the local scheme."""
    return hd.sr.CodedConcept(value=value, scheme_designator=LOCAL, meaning=_meaning(meaning))


def _meaning(text: str) -> str:
    """A Code Meaning (LO) of a display name as a manifest writes it, which may hold what an
    LO cannot: a backslash (it would make two values), a line break, over 64 characters."""
    return plain(text, _MEANING)


SCORE = local("SCORE", "Model score")
THRESHOLD = local("THRESHOLD", "Operating threshold")
CAUTION = local("CAUTION", "Caution")
OUTCOME = local("OUTCOME", "Analysis outcome")
MODEL_OUTCOME = local("MODELOUTCOME", "Model outcome")
AREA_NOTE = local("AREANOTE", "Area not measured")
MEASURE_NOTE = local("MEASURENOTE", "Measurement note")
FEEDBACK = local("FEEDBACK", "Clinician feedback")
IMPRESSION = local("IMPRESSION", "Clinician impression")
IMPRESSION_BY = local("IMPRESSIONBY", "Impression by")

QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
AREA = hd.sr.CodedConcept.from_code(codes.SCT.Area)  # 42798000
PRESENT = hd.sr.CodedConcept.from_code(codes.SCT.Present)  # 52101004
ABSENT = hd.sr.CodedConcept.from_code(codes.SCT.Absent)  # 272519000
NO_UNITS = hd.sr.CodedConcept.from_code(codes.UCUM.NoUnits)  # "1"
SQUARE_MM = hd.sr.CodedConcept.from_code(codes.UCUM.SquareMillimeter)  # "mm2"

# The procedure reported, by the source's modality (SNOMED CT, as CID 100 and its kin list).
IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
_PROCEDURES = {
    "CR": hd.sr.CodedConcept("168537006", "SCT", "Plain radiography"),
    "DX": hd.sr.CodedConcept("168537006", "SCT", "Plain radiography"),
    "US": hd.sr.CodedConcept("16310003", "SCT", "Diagnostic ultrasonography"),
    "CT": hd.sr.CodedConcept("77477000", "SCT", "Computed tomography"),
    "MR": hd.sr.CodedConcept("113091000", "SCT", "Magnetic resonance imaging"),
}


def finding_code(term: CodedTerm | None, label: str, display: str) -> hd.sr.CodedConcept:
    """The label's code from its manifest, or the local code made of its name."""
    if term is not None:
        return hd.sr.CodedConcept(plain(term.value), plain(term.scheme), _meaning(term.meaning))
    return local(label, plain(display) or label)


def procedure_for(source: Dataset) -> hd.sr.CodedConcept:
    """The imaging procedure that made `source`, by its modality; generic when unknown."""
    return _PROCEDURES.get(str(source.get("Modality", "")).upper(), IMAGING_PROCEDURE)
