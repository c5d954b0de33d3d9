"""Which models apply to an image: the manifest's `applies_to` rules against the image's content.

Every non-empty rule must match. A tag the image does not have fails a non-empty rule, except
the view: images without ViewPosition are accepted with a note (models/README.md), because
many modalities leave it empty. Colour is compared as the decoder will deliver it (grey or
RGB), never as the raw Photometric Interpretation. The body part is BodyPartExamined when
present, else found by keyword rules in the descriptions (`routing.body_part_keywords`); a
local word in BodyPartExamined (THORAX) maps through the same rules to the name models list
(CHEST). PNG and JPEG pictures carry no tags; the caller supplies them (`appliance infer
--modality ...`), and a picture without them only reaches models whose rules are empty.

A Secondary Capture image (a picture imported through the UI, or a workstation's capture) has
no SOP class of its own modality: when its declared Modality is one the model takes, it counts
as that modality's image for the SOP class rule, with a note. A picture imported as ultrasound
is so analysed like an ultrasound frame; the plausibility check still holds back one that does
not look like the model's input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from appliance.config import DEFAULT_BODY_PART_KEYWORDS, fold_text
from appliance.imaging import colour_of
from appliance.runtime.errors import InputError
from appliance.runtime.manifest import AppliesTo

Keywords = Mapping[str, Sequence[str]]

# Secondary Capture Image Storage: single frame, and the multi-frame grayscale and true colour
# classes (PS3.4 B.5). Their Modality says what the picture shows.
SECONDARY_CAPTURE = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
    }
)

# Where body-part words are looked for when BodyPartExamined is empty, in this order.
DESCRIPTIONS = (
    ("study_description", "StudyDescription"),
    ("series_description", "SeriesDescription"),
    ("protocol_name", "ProtocolName"),
)


@dataclass(frozen=True)
class ImageTags:
    """The attributes routing looks at; empty text means unknown."""

    modality: str = ""
    body_part: str = ""
    view: str = ""
    sop_class: str = ""
    photometric: str = ""
    study_description: str = ""
    series_description: str = ""
    protocol_name: str = ""

    def __post_init__(self) -> None:
        for name in ("modality", "body_part", "view", "photometric"):
            object.__setattr__(self, name, getattr(self, name).strip().upper())
        for name in ("sop_class", "study_description", "series_description", "protocol_name"):
            object.__setattr__(self, name, getattr(self, name).strip())


@dataclass(frozen=True)
class BodyPart:
    """The body part routing uses: `names` are what a manifest's list may contain (the
    header's own word and the body part its keyword rules map it to); `note` says how it was
    found when it did not come from BodyPartExamined as written."""

    names: tuple[str, ...] = ()
    note: str = ""

    @property
    def name(self) -> str:
        """The body part to show: the mapped name when there is one, else the header's word."""
        return self.names[-1] if self.names else ""


@dataclass(frozen=True)
class Route:
    """Whether a model applies; `reasons` says why not, or notes what was assumed."""

    applies: bool
    reasons: tuple[str, ...] = ()
    failed_on: tuple[str, ...] = ()  # the rules that did not match, e.g. ("body part",)


def route(
    rules: AppliesTo, tags: ImageTags, keywords: Keywords = DEFAULT_BODY_PART_KEYWORDS
) -> Route:
    """Match one manifest's rules against an image's tags."""
    failures: list[str] = []
    failed_on: list[str] = []
    notes: list[str] = []
    checks = (
        ("modality", rules.modalities, tags.modality, "Modality"),
        ("view", rules.views, tags.view, "ViewPosition"),
        ("SOP class", rules.sop_classes, tags.sop_class, "SOPClassUID"),
    )
    for what, allowed, value, keyword in checks:
        if not allowed or value in allowed:
            continue
        if keyword == "SOPClassUID" and _picture_of_modality(rules, tags):
            notes.append(
                f"a Secondary Capture image declared as {tags.modality}: taken as a "
                f"{tags.modality} image for the SOP class rule"
            )
        elif not value and keyword == "ViewPosition":
            notes.append("the image has no ViewPosition; accepted without checking the view")
        elif not value:
            failures.append(f"{what} unknown ({keyword} missing); needs {', '.join(allowed)}")
            failed_on.append(what)
        else:
            failures.append(f"{what} {value!r} is not one of {', '.join(allowed)}")
            failed_on.append(what)
    for what, problem, note in (
        ("body part", *_body_part_check(rules, body_part_of(tags, keywords))),
        ("colour", _colour_problem(rules, tags), ""),
    ):
        if problem:
            failures.append(problem)
            failed_on.append(what)
        elif note:
            notes.append(note)
    if failures:
        return Route(False, tuple(failures), tuple(failed_on))
    return Route(True, tuple(notes))


def _picture_of_modality(rules: AppliesTo, tags: ImageTags) -> bool:
    """A Secondary Capture whose declared modality the model takes (and names)."""
    return (
        tags.sop_class in SECONDARY_CAPTURE
        and bool(tags.modality)
        and (tags.modality in rules.modalities)
    )


def _body_part_check(rules: AppliesTo, found: BodyPart) -> tuple[str, str]:
    """(the reason it fails, "" when it matches; the note saying how it was found)."""
    allowed = rules.body_parts
    if not allowed or set(found.names) & set(allowed):
        return "", found.note if allowed else ""
    needs = ", ".join(allowed)
    if not found.names:
        where = ", ".join(keyword for _, keyword in DESCRIPTIONS)
        return (
            f"body part unknown (BodyPartExamined missing, and no body-part word in "
            f"{where}); needs {needs}",
            "",
        )
    shown = " or ".join(repr(name) for name in found.names)
    via = f" ({found.note})" if found.note else ""
    return f"body part {shown}{via} is not one of {needs}", ""


def _colour_problem(rules: AppliesTo, tags: ImageTags) -> str:
    if rules.colour == "either":
        return ""
    colour = colour_of(tags.photometric)
    if colour is None:
        return f"colour unknown (PhotometricInterpretation missing); needs {rules.colour} images"
    if colour != rules.colour:
        return (
            f"the image is {colour} ({tags.photometric}); the model takes {rules.colour} "
            "images only"
        )
    return ""


def body_part_of(tags: ImageTags, keywords: Keywords = DEFAULT_BODY_PART_KEYWORDS) -> BodyPart:
    """BodyPartExamined (with the body part its word maps to), else the one body part whose
    keywords appear in the descriptions; nothing when none or several do."""
    if tags.body_part:
        mapped = _mapped_word(tags.body_part, keywords)
        if mapped is None or mapped == tags.body_part:
            return BodyPart((tags.body_part,))
        note = f"BodyPartExamined {tags.body_part!r} read as {mapped}"
        return BodyPart((tags.body_part, mapped), note)
    for attribute, keyword in DESCRIPTIONS:
        found = _parts_in(getattr(tags, attribute), keywords)
        if len(found) == 1:
            part, word = found[0]
            text = getattr(tags, attribute)
            return BodyPart((part,), f"body part {part} from {keyword} {text!r} ({word})")
        if len(found) > 1:
            parts = " and ".join(part for part, _ in found)
            text = getattr(tags, attribute)
            return BodyPart((), f"{keyword} {text!r} names more than one body part ({parts})")
    return BodyPart()


def _mapped_word(word: str, keywords: Keywords) -> str | None:
    """The body part whose rules list `word` (or that is `word`), compared folded."""
    folded = fold_text(word)
    for part, words in keywords.items():
        if folded == fold_text(part) or folded in (fold_text(w) for w in words):
            return fold_text(part)
    return None


def _parts_in(text: str, keywords: Keywords) -> list[tuple[str, str]]:
    """Each body part with a keyword in `text` as a whole word, with the word that matched."""
    folded = fold_text(text)
    if not folded:
        return []
    found: list[tuple[str, str]] = []
    for part, words in keywords.items():
        for word in (fold_text(part), *(fold_text(w) for w in words)):
            if re.search(rf"(?<![A-Z0-9]){re.escape(word)}(?![A-Z0-9])", folded):
                found.append((fold_text(part), word))
                break
    return found


def dicom_tags(path: Path) -> ImageTags:
    """Routing tags from a DICOM file's header (pixel data is not read)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
        raise InputError(f"not a readable DICOM file: {exc}") from exc
    return ImageTags(
        modality=_value(ds, "Modality"),
        body_part=_value(ds, "BodyPartExamined"),
        view=_value(ds, "ViewPosition"),
        sop_class=_value(ds, "SOPClassUID"),
        photometric=_value(ds, "PhotometricInterpretation"),
        study_description=_value(ds, "StudyDescription"),
        series_description=_value(ds, "SeriesDescription"),
        protocol_name=_value(ds, "ProtocolName"),
    )


def descriptions(path: Path) -> dict[str, str]:
    """The description texts body-part keywords are looked for in, read from the file's
    header (the store does not index ProtocolName)."""
    tags = dicom_tags(path)
    return {attribute: getattr(tags, attribute) for attribute, _ in DESCRIPTIONS}


def _value(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value or "").replace("\x00", "")
