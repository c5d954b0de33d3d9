"""Plain data shared by the rooms: no behaviour beyond validation of its own values."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(value: str) -> bool:
    """A DICOM UID: dot-separated numbers without leading zeros, at most 64 characters."""
    return 0 < len(value) <= 64 and _UID.match(value) is not None


class StoreStatus(enum.IntEnum):
    """C-STORE response statuses the receiver uses (PS3.4 B.2.3)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    SOP_MISMATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC000


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
