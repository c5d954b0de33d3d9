"""One YAML file, validated into typed settings.

Unknown keys, wrong types and impossible values are errors that name the dotted key and the line
it sits on, so an admin editing the file on a device can fix it without reading code.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from appliance.domain import is_valid_uid
from appliance.errors import ConfigError
from appliance.yamlfile import describe_errors, line_of, parse_yaml, read_text

# The YAML helpers are part of this module's interface (model manifests use them too).
__all__ = ["describe_errors", "line_of", "parse_yaml", "read_text"]

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}\Z")  # printable ASCII except backslash


def check_ae_title(value: str) -> str:
    """Return the AE title stripped of padding, or raise naming what is wrong with it."""
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(stripped):
        raise ValueError(
            f"AE title {value!r} must be 1-16 printable ASCII characters without a backslash"
        )
    return stripped


def check_network(value: str) -> str:
    """Return `value` if it is an IP address or network (CIDR), else raise quoting it."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IP address or network") from exc
    return value


def check_uid(value: str) -> str:
    """Return `value` if it is a DICOM UID (dot-separated numbers, at most 64 characters)."""
    if not is_valid_uid(value):
        raise ValueError(
            f"{value!r} is not a DICOM UID: numbers without leading zeros joined by dots, "
            "at most 64 characters (e.g. 1.2.826.0.1.3680043.9.1234.1)"
        )
    return value


AETitle = Annotated[str, AfterValidator(check_ae_title)]
NetworkText = Annotated[str, AfterValidator(check_network)]
UIDText = Annotated[str, AfterValidator(check_uid)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_yes_no_for_numbers(cls, data: Any) -> Any:
        """`port: true` is a slip, not port 1: pydantic would take a boolean for a number."""
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None and _numeric(field.annotation):
                    raise ValueError(f"{name}: expected a number, got {str(value).lower()}")
        return data


def _numeric(annotation: Any) -> bool:
    """Whether a field holds a number (int or float, possibly optional), not a yes/no."""
    kinds = get_args(annotation) or (annotation,)
    return bool({int, float} & set(kinds)) and bool not in kinds


class ReceiverTLS(_Section):
    """DICOM TLS (PS3.15 B.2): off while `port` is 0."""

    port: int = Field(0, ge=0, le=65535)
    certificate: Path | None = None  # PEM, the box's certificate chain
    key: Path | None = None  # PEM, its private key (readable by the appliance user only)
    # PEM bundle of the CAs whose client certificates are accepted; empty: no client
    # certificate is asked for.
    client_ca: Path | None = None

    @model_validator(mode="after")
    def _files(self) -> ReceiverTLS:
        if self.port and (self.certificate is None or self.key is None):
            raise ValueError("a TLS port needs both certificate and key")
        return self


class ReceiverSettings(_Section):
    """The DICOM SCP that modalities push to."""

    ae_title: str = "APPLIANCE"
    bind_address: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    allowed_calling_aets: list[AETitle] = Field(default_factory=list)
    allowed_networks: list[NetworkText] = Field(default_factory=list)
    max_associations: int = Field(10, ge=1, le=200)
    # At most this many associations at once from one IP address, so one stalled or hostile
    # peer cannot take every slot from the modalities.
    max_associations_per_address: int = Field(4, ge=1, le=200)
    # Connections the kernel holds while the receiver is busy accepting (listen(2) backlog).
    listen_backlog: int = Field(128, ge=5, le=4096)
    # Largest P-DATA PDU we accept (advertised); a longer one aborts the association unread.
    # 0 advertises no limit and bounds a PDU by max_dataset_mb instead.
    max_pdu_bytes: int = Field(1_048_576, ge=0, le=2**32 - 1)
    acse_timeout_s: float = Field(30.0, gt=0, le=3600)
    dimse_timeout_s: float = Field(60.0, gt=0, le=3600)
    network_timeout_s: float = Field(60.0, gt=0, le=3600)
    # Private SOP classes (UIDs) accepted beside every standard storage class.
    extra_sop_classes: list[UIDText] = Field(default_factory=list)
    # Largest dataset taken in (over DICOM or the import page), in MiB, also once inflated.
    max_dataset_mb: int = Field(512, ge=1, le=65536)
    # Largest image, as Rows x Columns x Number of Frames, in millions of pixels.
    max_image_megapixels: int = Field(500, ge=1, le=100_000)
    # DICOM over TLS on a second port (the plain port stays for modalities without TLS).
    tls: ReceiverTLS = Field(default_factory=lambda: ReceiverTLS())

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return check_ae_title(value)

    @field_validator("max_pdu_bytes")
    @classmethod
    def _pdu(cls, value: int) -> int:
        if 0 < value < 4096:
            raise ValueError("must be 0 (unlimited) or at least 4096")
        return value


class StorageSettings(_Section):
    """Where the store lives and how much disk it must leave free."""

    data_dir: Path | None = None
    cache_dir: Path | None = None
    # The receiver refuses an image that would leave less free than this (checked against
    # the size it announces before it is written). Never 0: a full disk stops the database.
    free_space_floor_mb: int = Field(512, ge=1)


class JobSettings(_Section):
    """How the worker's job queue treats crashed and failing jobs."""

    max_attempts: int = Field(3, ge=1, le=20)
    lease_s: float = Field(120.0, ge=5, le=3600)
    retry_delay_s: float = Field(5.0, ge=0, le=3600)
    poll_s: float = Field(1.0, gt=0, le=60)
    pictures_quiet_s: float = Field(0.5, ge=0, le=60)
    # Seconds between looks for jobs whose worker stopped renewing their lease.
    reap_every_s: float = Field(30.0, gt=0, le=3600)


BackendText = Literal["cpu", "cuda", "tensorrt", "tensorrt-native"]
PrecisionText = Literal["auto", "fp32", "fp16", "int8"]
Priority = Literal["urgent", "review", "routine"]


class ModelSettings(_Section):
    """Which model packages the worker runs, and on what."""

    # Folders of packages; empty: the demo packages bundled with the software.
    dirs: list[Path] = Field(default_factory=list)
    backend: BackendText = "cpu"
    # auto: INT8 on CPUs with 8-bit dot-product instructions (VNNI, Arm dotprod), else FP32;
    # FP16 on TensorRT (see appliance.runtime.precision).
    precision: PrecisionText = "auto"
    threads: int = Field(0, ge=0, le=256)
    # Package names present in `dirs` that the worker must not run.
    disabled: list[str] = Field(default_factory=list)
    # Heatmaps for the positive labels only (default), for every label, or none.
    explain: Literal["positive", "all", "none"] = "positive"


_BODY_PART = re.compile(r"^[A-Z0-9 _]{1,16}\Z")  # a DICOM code string, as BodyPartExamined
_KEYWORD = re.compile(r"^[A-Z0-9][A-Z0-9 _/-]{0,63}\Z")

# Words radiographs carry instead of (or beside) BodyPartExamined, in the languages seen at
# sites; accents are ignored when matching (TÓRAX is TORAX). The body part's own name counts.
DEFAULT_BODY_PART_KEYWORDS: dict[str, tuple[str, ...]] = {
    "CHEST": ("THORAX", "TORAX", "PECHO", "CHEST PA", "CHEST AP", "CXR", "THORACIC", "LUNG"),
    "ABDOMEN": ("ABDOMINAL", "ABDOMINAL CAVITY", "ABDOMEN SIMPLE"),
    "PELVIS": ("PELVIC", "BASSIN"),
    "SKULL": ("CRANEO", "CRANIO", "CRANE", "HEAD"),
}


def fold_text(value: str) -> str:
    """Upper case without accents, spaces collapsed: how body-part words are compared."""
    plain = unicodedata.normalize("NFKD", value)
    plain = "".join(c for c in plain if not unicodedata.combining(c))
    return " ".join(plain.upper().split())


class RoutingSettings(_Section):
    """How the worker finds an image's body part when routing it to models."""

    # BodyPartExamined when present, else these words in StudyDescription, SeriesDescription
    # and ProtocolName (case and accents ignored, whole words). A local word in
    # BodyPartExamined (THORAX) is mapped the same way, to the name models list (CHEST).
    body_part_keywords: dict[str, tuple[str, ...]] = Field(
        default_factory=lambda: dict(DEFAULT_BODY_PART_KEYWORDS)
    )

    @field_validator("body_part_keywords")
    @classmethod
    def _keywords(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        folded: dict[str, tuple[str, ...]] = {}
        owner: dict[str, str] = {}
        for part, words in value.items():
            name = fold_text(part)
            if not _BODY_PART.match(name):
                raise ValueError(
                    f"body part {part!r} is not a DICOM code string (1-16 of A-Z, 0-9, space, _)"
                )
            cleaned = tuple(dict.fromkeys(fold_text(word) for word in words))
            for word in (name, *cleaned):
                if not _KEYWORD.match(word):
                    raise ValueError(
                        f"keyword {word!r} of {name}: use 1-64 letters, digits, spaces, / or -"
                    )
                if owner.setdefault(word, name) != name:
                    raise ValueError(
                        f"keyword {word!r} is listed under both {owner[word]} and {name}: "
                        "keep it under one body part"
                    )
            folded[name] = cleaned
        return folded


class TriageOverride(_Section):
    """Give a label another priority than its manifest's, optionally only above a score."""

    label: str
    model: str = ""  # empty: any model with this label
    min_score: float | None = Field(None, ge=0, le=1)
    priority: Priority


class TriageSettings(_Section):
    """How a study's triage priority follows from its images' outcomes (worst one wins)."""

    negative: Priority = "routine"
    held_back: Priority = "review"
    failed: Priority = "review"
    no_model: Priority = "routine"
    overrides: list[TriageOverride] = Field(default_factory=list)


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class CaptureSource(_Section):
    """Where live ultrasound video comes from: a USB (UVC) grabber, a GStreamer pipeline (Jetson),
    a video file, or a generated B-mode sector (to try and test the feature anywhere)."""

    kind: Literal["none", "device", "gstreamer", "file", "generated"] = "none"
    device: str = "0"  # a device index or a /dev/video* path
    pipeline: str = ""  # a GStreamer pipeline ending in appsink
    file: Path | None = None
    width: int = Field(1280, ge=64, le=7680)
    height: int = Field(720, ge=64, le=4320)
    fps: float = Field(30.0, gt=0, le=240)
    fourcc: Literal["", "MJPG", "YUYV"] = ""  # V4L2 pixel format; empty: the device's default
    name: str = "ultrasound"  # recorded as the capture device in saved DICOM objects


class CaptureSettings(_Section):
    """Live ultrasound over USB capture, owned by the worker role."""

    source: CaptureSource = Field(default_factory=lambda: CaptureSource())
    # The package whose output is drawn over the live image.
    model: str = "demo-ultrasound-fluid"
    # Seconds of video kept for "Save clip".
    clip_seconds: float = Field(4.0, gt=0, le=60)
    # Where live frames are published for the UI (a RAM-backed folder: they change 30 times a
    # second and must not wear out an SD card). Default: $RUNTIME_DIRECTORY, else /dev/shm.
    live_dir: Path | None = None
    # The scan area inside the grabbed frame [x, y, width, height] and its mm per pixel, until
    # an admin sets them in the UI (stored per device); empty: found automatically.
    region: list[int] = Field(default_factory=list)
    mm_per_pixel: float | None = Field(None, gt=0, le=10)

    @field_validator("region")
    @classmethod
    def _region(cls, value: list[int]) -> list[int]:
        if value and (len(value) != 4 or min(value) < 0 or value[2] == 0 or value[3] == 0):
            raise ValueError("region is [x, y, width, height] with a positive width and height")
        return value


WallField = Literal["priority", "time", "modality", "initials", "accession", "name", "state"]
_WALL_FIELDS: tuple[WallField, ...] = ("priority", "time", "modality", "initials", "state")


class WallSettings(_Section):
    """What a locked screen keeps showing: the worklist in a form safe for passers-by."""

    # Columns shown while locked; `name` (the full name) only where nobody else can see the
    # screen (a reading room).
    fields: list[WallField] = Field(default_factory=lambda: list(_WALL_FIELDS))
    # Seconds between refreshes of the locked worklist.
    refresh_s: int = Field(10, ge=2, le=600)
    # A short tone when an urgent study arrives while locked.
    sound: bool = False


class PinPolicy(_Section):
    """Which PINs are refused when a user sets one."""

    min_digits: int = Field(4, ge=4, le=8)
    # 1111, 0000: one digit repeated.
    refuse_repeated: bool = True
    # 1234, 9876, 0123: a straight run up or down.
    refuse_sequences: bool = True
    # Further PINs refused by the site (e.g. a birth year everyone uses).
    refuse: list[str] = Field(default_factory=list)


class UISettings(_Section):
    """The touchscreen web UI."""

    # Other screens reach the UI through the TLS proxy (deploy/nginx); the box's own touchscreen
    # uses localhost. 0.0.0.0 serves plain HTTP to the whole network.
    bind_address: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    # Minutes without a request after which a user must sign in again.
    session_timeout_min: int = Field(15, ge=1, le=24 * 60)
    # Wrong PINs in a row before the account is locked, and for how long.
    lockout_attempts: int = Field(5, ge=1, le=100)
    lockout_min: int = Field(5, ge=1, le=24 * 60)
    # Hide the AI findings of a study until the user has recorded their own impression.
    read_first: bool = False
    # Largest file accepted by the import page, in MiB.
    upload_max_mb: int = Field(200, ge=1, le=4096)
    # Set when a TLS proxy serves the UI: session cookies are then sent over TLS only.
    behind_tls: bool = False
    threads: int = Field(8, ge=1, le=64)
    # The screen's language until a user picks their own (en, fr).
    language: Literal["en", "fr"] = "en"
    # One time format on every page: 24-hour (14:05) or 12-hour (2:05 PM).
    time_format: Literal["24h", "12h"] = "24h"
    wall: WallSettings = Field(default_factory=lambda: WallSettings())
    pin_policy: PinPolicy = Field(default_factory=lambda: PinPolicy())


SendKind = Literal["sr", "heatmaps", "report", "images"]
SendWhen = Literal["findings", "final", "manual"]
_DEFAULT_SEND: tuple[SendKind, ...] = ("sr", "heatmaps", "report")
_DESTINATION_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}\Z")


class Destination(_Section):
    """A DICOM peer the sender delivers to (the clinic's PACS, a second archive).

    `send` says which objects: the structured report (sr), the heatmap images (heatmaps), the
    PDF report (report), and the received originals (images) for sites whose modalities send
    only to the box. `when`: as soon as findings are saved (and again when a clinician
    finalises), only once finalised, or only when somebody presses "send" on the study page.
    """

    name: str
    host: str
    port: int = Field(ge=1, le=65535)
    called_ae_title: AETitle
    calling_ae_title: AETitle | None = None  # default: receiver.ae_title
    send: list[SendKind] = Field(default_factory=lambda: list(_DEFAULT_SEND))
    when: SendWhen = "findings"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _DESTINATION_NAME.match(value):
            raise ValueError(
                f"destination name {value!r}: use 1-32 lower-case letters, digits, - or _"
            )
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value.strip() or any(c.isspace() for c in value.strip()):
            raise ValueError(f"host {value!r} must be a host name or an IP address")
        return value.strip()

    @field_validator("send")
    @classmethod
    def _send(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("send must list at least one of sr, heatmaps, report, images")
        return list(dict.fromkeys(value))


class SenderSettings(_Section):
    """How the sender retries a destination that is down: capped exponential back-off."""

    retry_min_s: float = Field(5.0, ge=0.1, le=3600)
    retry_max_s: float = Field(120.0, ge=1, le=86400)
    # Objects sent on one association before it is released and the queue looked at again.
    batch: int = Field(50, ge=1, le=1000)
    connect_timeout_s: float = Field(10.0, gt=0, le=600)
    dimse_timeout_s: float = Field(60.0, gt=0, le=3600)
    poll_s: float = Field(2.0, gt=0, le=60)

    @model_validator(mode="after")
    def _order(self) -> SenderSettings:
        if self.retry_max_s < self.retry_min_s:
            raise ValueError("retry_max_s must not be less than retry_min_s")
        return self


class OutputSettings(_Section):
    """The objects the box writes: their UID root and the names they carry."""

    # Every UID the box makes starts with this root: pydicom's by default; a site with its
    # own organisation root puts it here (at most 40 characters, leaving room for the hash).
    uid_root: UIDText = "1.2.826.0.1.3680043.8.498"
    institution_name: str = Field("", max_length=64)
    # The TrueType font of the PDF report (it must cover the patients' names); empty: DejaVu
    # Sans from the system (Debian: fonts-dejavu-core).
    report_font: Path | None = None

    @field_validator("uid_root")
    @classmethod
    def _root(cls, value: str) -> str:
        if len(value) > 40:
            raise ValueError("uid_root must be at most 40 characters (a UID is at most 64)")
        return value


class ExportSettings(_Section):
    """Folders the study page may export a DICOM File-set to (a USB stick's mount point)."""

    folders: list[Path] = Field(default_factory=lambda: [Path("/media")])


class RetentionSettings(_Section):
    """What may be removed when the disk fills: the oldest images whose findings are complete
    and which every destination has acknowledged, never an undelivered or unreviewed one
    unless allowed here."""

    # Start removing when free space falls under this many MiB (0: never remove anything).
    free_below_mb: int = Field(0, ge=0)
    # ... and stop once this much is free again.
    free_target_mb: int = Field(0, ge=0)
    # Keep every image at least this many days, whatever the disk.
    min_age_days: float = Field(7.0, ge=0)
    allow_unreviewed: bool = False
    allow_undelivered: bool = False

    @model_validator(mode="after")
    def _target(self) -> RetentionSettings:
        if self.free_below_mb and self.free_target_mb < self.free_below_mb:
            raise ValueError("free_target_mb must be at least free_below_mb")
        return self


class BackupSettings(_Section):
    """Nightly backups (`appliance backup`, systemd/appliance-backup.timer)."""

    folder: Path | None = None  # empty: <data folder>/backups (better: another disk)
    keep: int = Field(7, ge=1, le=365)


class Settings(_Section):
    """All settings of one appliance."""

    site_name: str = "Clinic"
    receiver: ReceiverSettings = Field(default_factory=lambda: ReceiverSettings())
    storage: StorageSettings = Field(default_factory=lambda: StorageSettings())
    jobs: JobSettings = Field(default_factory=lambda: JobSettings())
    models: ModelSettings = Field(default_factory=lambda: ModelSettings())
    routing: RoutingSettings = Field(default_factory=lambda: RoutingSettings())
    triage: TriageSettings = Field(default_factory=lambda: TriageSettings())
    ui: UISettings = Field(default_factory=lambda: UISettings())
    capture: CaptureSettings = Field(default_factory=lambda: CaptureSettings())
    logging: LoggingSettings = Field(default_factory=lambda: LoggingSettings())
    destinations: list[Destination] = Field(default_factory=list)
    sender: SenderSettings = Field(default_factory=lambda: SenderSettings())
    outputs: OutputSettings = Field(default_factory=lambda: OutputSettings())
    export: ExportSettings = Field(default_factory=lambda: ExportSettings())
    retention: RetentionSettings = Field(default_factory=lambda: RetentionSettings())
    backup: BackupSettings = Field(default_factory=lambda: BackupSettings())

    @model_validator(mode="after")
    def _names_differ(self) -> Settings:
        seen: set[str] = set()
        for destination in self.destinations:
            if destination.name in seen:
                raise ValueError(f"destinations: the name {destination.name!r} is used twice")
            seen.add(destination.name)
        return self

    def destination(self, name: str) -> Destination | None:
        """The destination called `name`, or None."""
        return next((d for d in self.destinations if d.name == name), None)

    def calling_ae_title(self, destination: Destination) -> str:
        """The AE title the box presents to `destination`."""
        return destination.calling_ae_title or self.receiver.ae_title

    @model_validator(mode="after")
    def _ports_differ(self) -> Settings:
        ports = {"ui.port": self.ui.port, "receiver.port": self.receiver.port}
        if self.receiver.tls.port:
            ports["receiver.tls.port"] = self.receiver.tls.port
        seen: dict[int, str] = {}
        for key, port in ports.items():
            if port in seen:
                raise ValueError(f"{seen[port]} and {key} are both {port}: each needs its own port")
            seen[port] = key
        return self


def load_settings(path: Path | None) -> Settings:
    """Read and validate the YAML file at `path`; with no path, the built-in defaults."""
    if path is None:
        return Settings()
    return parse_settings(read_text(path, "the configuration file", ConfigError), str(path))


def parse_settings(text: str, source: str = "<config>") -> Settings:
    """Validate YAML `text`; errors name `source`, the line and the dotted key."""
    root, data = parse_yaml(text, source, ConfigError)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the top level must be a mapping of sections")
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, root, source)) from exc
