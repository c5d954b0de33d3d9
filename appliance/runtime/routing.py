"""Which models apply to an image: the manifest's `applies_to` rules against the image's tags.

Every non-empty rule must match. A tag the image does not have fails a non-empty rule, except
the view: images without ViewPosition are accepted with a note (models/README.md), because
many modalities leave it empty. PNG and JPEG pictures carry no tags; the caller supplies them
(`appliance infer --modality ...`), and a picture without them only reaches models whose rules
are empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from appliance.runtime.errors import InputError
from appliance.runtime.manifest import AppliesTo


@dataclass(frozen=True)
class ImageTags:
    """The attributes routing looks at; empty text means unknown."""

    modality: str = ""
    body_part: str = ""
    view: str = ""
    sop_class: str = ""
    photometric: str = ""

    def __post_init__(self) -> None:
        for name in ("modality", "body_part", "view", "photometric"):
            object.__setattr__(self, name, getattr(self, name).strip().upper())
        object.__setattr__(self, "sop_class", self.sop_class.strip())


@dataclass(frozen=True)
class Route:
    """Whether a model applies; `reasons` says why not, or notes what was assumed."""

    applies: bool
    reasons: tuple[str, ...] = ()
    failed_on: tuple[str, ...] = ()  # the rules that did not match, e.g. ("body part",)


def route(rules: AppliesTo, tags: ImageTags) -> Route:
    """Match one manifest's rules against an image's tags."""
    failures: list[str] = []
    failed_on: list[str] = []
    notes: list[str] = []
    checks = (
        ("modality", rules.modalities, tags.modality, "Modality"),
        ("body part", rules.body_parts, tags.body_part, "BodyPartExamined"),
        ("view", rules.views, tags.view, "ViewPosition"),
        ("SOP class", rules.sop_classes, tags.sop_class, "SOPClassUID"),
        ("photometric interpretation", rules.photometric, tags.photometric, "Photometric"),
    )
    for what, allowed, value, keyword in checks:
        if not allowed or value in allowed:
            continue
        if not value and keyword == "ViewPosition":
            notes.append("the image has no ViewPosition; accepted without checking the view")
        elif not value:
            failures.append(f"{what} unknown ({keyword} missing); needs {', '.join(allowed)}")
            failed_on.append(what)
        else:
            failures.append(f"{what} {value!r} is not one of {', '.join(allowed)}")
            failed_on.append(what)
    if failures:
        return Route(False, tuple(failures), tuple(failed_on))
    return Route(True, tuple(notes))


def dicom_tags(path: Path) -> ImageTags:
    """Routing tags from a DICOM file's header (pixel data is not read)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
        raise InputError(f"not a readable DICOM file: {exc}") from exc
    return ImageTags(
        modality=str(ds.get("Modality", "") or ""),
        body_part=str(ds.get("BodyPartExamined", "") or ""),
        view=str(ds.get("ViewPosition", "") or ""),
        sop_class=str(ds.get("SOPClassUID", "") or ""),
        photometric=str(ds.get("PhotometricInterpretation", "") or ""),
    )
