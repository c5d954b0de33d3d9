"""Plain data shared by the rooms: no behaviour beyond validation of its own values."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\Z")


def is_valid_uid(value: str) -> bool:
    """A DICOM UID: dot-separated numbers without leading zeros, at most 64 characters."""
    return 0 < len(value) <= 64 and _UID.match(value) is not None


class StoreStatus(enum.IntEnum):
    """C-STORE response statuses the receiver uses (PS3.4 B.2.3)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    SOP_MISMATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    PROCESSING_FAILURE = 0x0110


class Source(str, enum.Enum):
    """How an image reached the store: every source goes through `ingest`."""

    DICOM = "dicom"
    CAPTURE = "capture"
    IMPORT = "import"
    RECOVERED = "recovered"


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class IngestOutcome(str, enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    REPLACED = "replaced"


@dataclass(frozen=True)
class InstanceHeader:
    """The DICOM attributes the store indexes, read from an image's header."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    modality: str = ""
    body_part: str = ""
    view_position: str = ""
    series_number: int | None = None
    series_description: str = ""
    instance_number: int | None = None
    photometric: str = ""
    rows: int | None = None
    columns: int | None = None
    frames: int = 1


@dataclass(frozen=True)
class Origin:
    """Who delivered an image: the calling AE and peer address for DICOM, a user for imports."""

    source: Source
    calling_aet: str = ""
    peer_address: str = ""
    user: str = ""

    @property
    def actor(self) -> str:
        if self.source is Source.DICOM:
            return f"ae:{self.calling_aet}@{self.peer_address}"
        return f"{self.source.value}:{self.user or 'system'}"


@dataclass(frozen=True)
class IngestResult:
    outcome: IngestOutcome
    instance_id: int
    job_id: int | None


class AnalysisState(str, enum.Enum):
    """What came of analysing one image (the worklist shows it with its reason)."""

    FINDINGS = "findings"  # at least one model ran; its findings may be all negative
    NO_MODEL = "no_model"  # no installed model applies to this kind of image
    HELD_BACK = "held_back"  # a model applies but the image failed its plausibility check
    FAILED = "failed"  # decoding or a model failed after the bounded attempts


PRIORITY_RANK = {"urgent": 0, "review": 1, "routine": 2}
PENDING_RANK = 3  # a study none of whose images has been analysed yet


@dataclass(frozen=True)
class ArtifactRecord:
    """A picture stored beside a finding: `file_name` is relative to the results folder."""

    kind: str  # "heatmap" (8-bit map), "overlay" (heatmap blended over the image), "mask"
    label: str
    frame: int
    file_name: str
    width: int
    height: int
    media_type: str = "image/png"
    detail: dict[str, object] = field(default_factory=dict)  # e.g. a heatmap's peak


@dataclass(frozen=True)
class ModelOutcome:
    """One model's contribution to an analysis: findings, or why it was held back or failed.

    `result` is the JSON form kept in the store (labels, masks, provenance, timing, frames).
    """

    model: str
    version: str
    model_sha256: str
    backend: str
    precision: str
    state: AnalysisState
    reason: str
    priority: str  # "urgent" | "review" | "routine"
    summary: str  # one line, e.g. "Pleural effusion 0.91"
    key_frame: int
    duration_ms: float
    result: dict[str, object]
    artifacts: tuple[ArtifactRecord, ...] = ()


@dataclass(frozen=True)
class Analysis:
    """The outcome of one job on one image, saved in one transaction with the job's end."""

    state: AnalysisState
    reason: str
    priority: str
    summary: str
    outcomes: tuple[ModelOutcome, ...] = ()


# What the box sends to the clinic's record (DICOM SR, heatmap images, a PDF report), as plain
# data: the worker gathers it from the store, the builders in dicomout/ and report/ turn it into
# objects. Everything a report says comes from here, never from the builders' own queries.


@dataclass(frozen=True)
class CodedTerm:
    """A coded concept (SNOMED CT from a manifest, or the box's local scheme, see
    dicomout/sr.py)."""

    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class LabelResult:
    """One label of one model: its score against the operating threshold."""

    label: str
    display: str
    code: CodedTerm | None
    score: float
    threshold: float
    positive: bool
    priority: str


@dataclass(frozen=True)
class MaskResult:
    """One mask of one model: its area and outlines, in the source image's pixel coordinates
    (x = column, y = row, 0-based, of frame `frame`)."""

    label: str
    display: str
    code: CodedTerm | None
    area_px: int
    area_mm2: float | None  # None: the image has no physical pixel spacing
    outlines: tuple[tuple[tuple[float, float], ...], ...]
    notes: tuple[str, ...] = ()

    @property
    def positive(self) -> bool:
        return self.area_px > 0


@dataclass(frozen=True)
class ModelReport:
    """What one model said of the image, with its identity, or why it did not."""

    name: str
    version: str
    title: str
    sha256: str
    backend: str
    precision: str
    state: AnalysisState  # findings, held_back or failed
    reason: str
    summary: str
    frame: int  # the key frame, 0-based
    not_for_clinical_use: bool
    caution: str
    labels: tuple[LabelResult, ...] = ()
    masks: tuple[MaskResult, ...] = ()


@dataclass(frozen=True)
class Remark:
    """A person's feedback on one finding (agree, disagree, unsure), with who and when."""

    label: str
    verdict: str
    comment: str
    author: str
    role: str
    at: str  # ISO 8601, UTC


@dataclass(frozen=True)
class Impression:
    """A clinician's impression of the study; `final` once signed."""

    text: str
    author: str
    role: str
    at: str  # ISO 8601, UTC
    final: bool


@dataclass(frozen=True)
class ReportContent:
    """Everything reported about one analysed image, at one revision.

    `revision` counts from 1; a later revision (final impression, new model, override)
    replaces the earlier objects, which the builders reference by `replaces` (their SOP
    Instance UIDs, by kind: "sr", "report").
    """

    site_name: str
    state: AnalysisState
    reason: str
    summary: str
    priority: str
    models: tuple[ModelReport, ...]
    feedback: tuple[Remark, ...]
    impression: Impression | None
    made_at: str  # ISO 8601, UTC
    revision: int = 1
    replaces: dict[str, str] = field(default_factory=dict)

    @property
    def caution(self) -> str:
        """What the reader must be told first: a demo or not-for-clinical-use model."""
        notes = [
            m.caution or f"{m.title} is not for clinical use."
            for m in self.models
            if m.not_for_clinical_use
        ]
        return " ".join(dict.fromkeys(notes))


@dataclass(frozen=True)
class ReportHeader:
    """Who and what a printed report is about, as text from the source image's header
    (DICOM dates as YYYYMMDD, names as written there with ^ between parts)."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    study_date: str
    study_time: str
    accession_number: str
    study_description: str
    modality: str
    body_part: str
    sop_instance_uid: str


@dataclass(frozen=True)
class ReportPictures:
    """The pictures a printed report shows: the image as displayed, and the overlays drawn over
    it (label, PNG): heatmaps of scores, and outlines of masks."""

    image_png: bytes | None
    overlays: tuple[tuple[str, bytes], ...] = ()
    outlines: tuple[tuple[str, bytes], ...] = ()
