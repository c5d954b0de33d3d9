"""Image plausibility check ("quality check"): is this image fit for this model at all?

Run on the prepared input, just before the model scores it, so it sees exactly what the model
would see. Everything works on a thumbnail: the content box of the letterboxed input (padding
left out), normalisation undone (display values 0..1, gray), area-averaged to size x size
(16 x 16 by default, whatever the box's aspect). Averaging removes pixel noise and keeps the
layout of the picture, which is what "blank", "upside down" and "not this kind of image" are
about. Three tests, in this order; the first that fails gives the one reason shown:

1. blank (every package): contrast = standard deviation of the thumbnail. Below `min_contrast`
   (default 2 % of the display range) the image is held back. Not the pixels' spread: a
   min-max window stretches a blank detector's noise over the whole range, so the pixels of a
   blank image spread as much as a real one's; averaged into the thumbnail the noise is gone.
2. orientation (with a profile, `quality:` in the manifest): the thumbnail turned back a
   quarter turn either way, half a turn, or flipped top to bottom, is compared with the
   profile's reference thumbnail (the mean thumbnail of typical images). When a turned copy
   matches better than the image as received (orientation gap = correlation as received minus
   the best turned one, below `min_orientation_gap`, at most 0) and matches well (at least
   `min_correlation`), the image is held back as rotated or upside down.
3. typical (with a profile): Pearson correlation of the thumbnail with the reference below
   `min_correlation` holds the image back as not looking like this model's input.

`appliance model profile` measures the reference and the thresholds on a folder of typical
images (`profile_package`); see models/README.md for the figures of the demo packages.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from appliance.imaging import DecodeError
from appliance.runtime.errors import InputError
from appliance.runtime.manifest import (
    MANIFEST_NAME,
    QUALITY_METHOD,
    QUALITY_MIN_CONTRAST,
    QUALITY_SIZE,
    InputSpec,
    Manifest,
    Quality,
)
from appliance.runtime.manifest_edit import edit_manifest, flow_rows, plain, set_last
from appliance.runtime.package import ModelPackage, load_package, seal_package
from appliance.runtime.preprocess import Prepared, prepare
from appliance.runtime.quantize import list_images, progress, progress_done, read_image

FloatArray = npt.NDArray[np.float32]
Thumb = npt.NDArray[np.float64]
# BT.601 luma, as OpenCV's RGB2GRAY that preprocessing uses for RGB into a 1-channel model.
_LUMA = (np.float32(0.299), np.float32(0.587), np.float32(0.114))
# `appliance model profile`: thresholds = a low percentile of the typical images' figures
# minus a margin, so the few typical images just below the percentile still pass. On 1,000
# fresh phantoms per demo package (models/README.md) the lowest correlations lay 0.07-0.09
# below the 1st percentile: a margin of 0.05 held back 1 and 3 of them, 0.1 none.
PROFILE_PERCENTILE = 1.0
CORRELATION_MARGIN = 0.1
ORIENTATION_MARGIN = 0.1
MIN_PROFILE_IMAGES = 10


@dataclass(frozen=True)
class QualityCheck:
    """Whether frame `position` of a prepared input is plausible for the model.

    `reasons` (plain language, each ending with what to do) say why it was held back; empty
    when `passed`. `statistics` are the measured numbers, for the record; `notes` say which
    tests did not run and why.
    """

    passed: bool
    reasons: tuple[str, ...]
    statistics: dict[str, float]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Turn:
    """One way an image can arrive turned: how it looks, and how to turn its thumbnail back."""

    looks: str
    back: Callable[[Thumb], Thumb]


_TURNS = (
    _Turn("rotated by 90 degrees", lambda t: np.rot90(t, 1)),
    _Turn("rotated by 90 degrees", lambda t: np.rot90(t, -1)),
    _Turn("upside down", lambda t: np.rot90(t, 2)),
    _Turn("upside down", lambda t: t[::-1]),
)


# --- measuring -------------------------------------------------------------------------------


def display_content(spec: InputSpec, prepared: Prepared, position: int = 0) -> FloatArray:
    """Gray display values (0..1) of the content box of frame `position`: what the model sees
    of the image, without the letterbox padding and with the normalisation undone."""
    count = prepared.tensor.shape[0]
    if not 0 <= position < count:
        raise InputError(f"frame position {position} is out of range: the input has {count}")
    left, top, width, height = prepared.geometry.content
    box = prepared.tensor[position, :, top : top + height, left : left + width]
    planes = [box[c] * np.float32(spec.std[c]) + np.float32(spec.mean[c]) for c in range(len(box))]
    gray = planes[0]
    if len(planes) == 3:
        red, green, blue = planes
        gray = red * _LUMA[0] + green * _LUMA[1] + blue * _LUMA[2]
    return np.asarray(np.clip(gray, 0.0, 1.0), dtype=np.float32)


def thumbnail(content: FloatArray, size: int = QUALITY_SIZE) -> Thumb:
    """`content` area-averaged to size x size (aspect not kept: the reference is made so too);
    float64 from here on, the statistics are sums over few values."""
    small = cv2.resize(content, (size, size), interpolation=cv2.INTER_AREA)
    return np.asarray(small, dtype=np.float64)


def correlation(a: Thumb, b: Thumb) -> float | None:
    """Pearson correlation of two thumbnails; None when either is constant (undefined)."""
    x, y = a.ravel() - a.mean(), b.ravel() - b.mean()
    scale = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / scale if scale > 1e-12 else None


def _best_turn(thumb: Thumb, reference: Thumb) -> tuple[float, _Turn] | None:
    """The turn whose turned-back thumbnail matches the reference best, and that correlation."""
    scored = [(correlation(turn.back(thumb), reference), turn) for turn in _TURNS]
    defined = [(value, turn) for value, turn in scored if value is not None]
    return max(defined, key=lambda pair: pair[0]) if defined else None


# --- the check -------------------------------------------------------------------------------


def check_quality(manifest: Manifest, prepared: Prepared, position: int = 0) -> QualityCheck:
    """Plausibility of frame `position` of a prepared input for this model."""
    profile = manifest.quality
    size = profile.size if profile is not None else QUALITY_SIZE
    thumb = thumbnail(display_content(manifest.input, prepared, position), size)
    contrast = float(thumb.std())
    statistics = {"contrast": round(contrast, 4)}
    floor = profile.min_contrast if profile is not None else QUALITY_MIN_CONTRAST
    if contrast < floor:
        notes = () if profile is None else ("the profile check did not run: the image is blank",)
        return QualityCheck(False, (_blank_reason(contrast, floor),), statistics, notes)
    if profile is None:
        notes = ("the package has no input profile: only the blank-image check ran",)
        return QualityCheck(True, (), statistics, notes)
    reasons = _profile_reasons(thumb, profile, statistics)
    return QualityCheck(not reasons, reasons, statistics)


def _blank_reason(contrast: float, floor: float) -> str:
    return (
        f"the image is almost blank (contrast {_percent(contrast)} of the display range, "
        f"below {_percent(floor)}): check the image, the exposure settings and the detector"
    )


def _profile_reasons(
    thumb: Thumb, profile: Quality, statistics: dict[str, float]
) -> tuple[str, ...]:
    """Orientation, then typicality, against the profile; fills in `statistics`."""
    reference = np.asarray(profile.reference, dtype=np.float64)
    upright = correlation(thumb, reference)
    best = _best_turn(thumb, reference)
    if upright is None or best is None:  # a constant image let through by min_contrast 0
        return (
            "the image is uniform and cannot be compared with this model's typical input: "
            "check the image and the exposure settings",
        )
    turned, turn = best
    gap = upright - turned
    statistics.update(
        correlation=round(upright, 4),
        correlation_turned=round(turned, 4),
        orientation_gap=round(gap, 4),
    )
    if gap < profile.min_orientation_gap and turned >= profile.min_correlation:
        return (
            f"the image appears to be {turn.looks} (turned back it matches this model's typical "
            f"input better: correlation {turned:.2f} against {upright:.2f} as received): check "
            "the orientation and send it again the right way up",
        )
    if upright < profile.min_correlation:
        return (
            "the image does not look like a typical input of this model (correlation "
            f"{upright:.2f} with its reference image, below {profile.min_correlation:g}): "
            "check that it is the right kind of image for this model (modality, body part, "
            "view) and the right way up",
        )
    return ()


def _percent(fraction: float) -> str:
    return f"{100.0 * fraction:.1f}%"


# --- profiling ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileResult:
    """What `profile_package` measured and wrote: the section, and per image the correlation
    with the reference and the orientation gap (the distributions the thresholds come from)."""

    package: ModelPackage
    quality: Quality
    percentile: float
    correlations: tuple[float, ...]
    gaps: tuple[float, ...]
    files: int
    warnings: tuple[str, ...]


def profile_thumbnails(
    paths: Sequence[Path], manifest: Manifest, size: int = QUALITY_SIZE
) -> tuple[list[Thumb], list[str]]:
    """Thumbnails of the first frame of each readable, non-blank image in `paths`, and a warning
    per skipped file. Blank images are skipped: they would only flatten the reference."""
    thumbs: list[Thumb] = []
    warnings: list[str] = []
    for number, path in enumerate(paths, start=1):
        if number % 25 == 0 or number == len(paths):
            progress(f"reading profile image {number}/{len(paths)}")
        try:
            prepared = prepare(read_image(path), manifest.input)
        except (InputError, DecodeError, ValueError) as exc:
            warnings.append(f"skipped {path.name}: {exc}")
            continue
        thumb = thumbnail(display_content(manifest.input, prepared), size)
        contrast = float(thumb.std())
        if contrast < QUALITY_MIN_CONTRAST:
            warnings.append(f"skipped {path.name}: {_blank_reason(contrast, QUALITY_MIN_CONTRAST)}")
            continue
        thumbs.append(thumb)
    progress_done()
    return thumbs, warnings


def build_profile(
    thumbs: Sequence[Thumb], percentile: float = PROFILE_PERCENTILE
) -> tuple[Quality, list[float], list[float]]:
    """The quality section from typical images' thumbnails, and each image's correlation and
    orientation gap against the (rounded, as stored) reference."""
    reference: Thumb = np.asarray(np.stack(thumbs).mean(axis=0).round(3), dtype=np.float64)
    correlations, gaps = [], []
    for thumb in thumbs:
        upright, best = correlation(thumb, reference), _best_turn(thumb, reference)
        if upright is None or best is None:
            raise InputError("the profile images average to a constant picture: no reference")
        correlations.append(upright)
        gaps.append(upright - best[0])
    low_correlation = float(np.percentile(correlations, percentile)) - CORRELATION_MARGIN
    low_gap = float(np.percentile(gaps, percentile)) - ORIENTATION_MARGIN
    quality = Quality(
        method=QUALITY_METHOD,
        size=int(reference.shape[0]),
        images=len(thumbs),
        min_contrast=QUALITY_MIN_CONTRAST,
        min_correlation=max(-1.0, _floor3(low_correlation)),
        # Capped at 0: "turned back it matches better" must stay true of every held-back image.
        # A profile whose typical images do not tell orientation apart gets a value below 0.
        min_orientation_gap=max(-2.0, min(0.0, _floor3(low_gap))),
        reference=tuple(tuple(float(v) for v in row) for row in reference),
    )
    return quality, correlations, gaps


def _floor3(value: float) -> float:
    """Rounded down to 3 decimals: a stored threshold is never stricter than measured."""
    return math.floor(value * 1000.0 + 1e-9) / 1000.0


def profile_package(
    folder: Path,
    dataset: Path,
    *,
    percentile: float = PROFILE_PERCENTILE,
    size: int = QUALITY_SIZE,
) -> ProfileResult:
    """Measure the input profile of the package in `folder` on the typical images in `dataset`,
    write it as the manifest's `quality` section and re-seal the package.

    Refuses (PackageError/InputError) before writing anything when the package does not verify
    or fewer than MIN_PROFILE_IMAGES images are usable.
    """
    if not 0.0 <= percentile <= 50.0:
        raise InputError(f"--percentile must be within 0..50, got {percentile}")
    package = load_package(folder)
    paths = list_images(dataset)
    thumbs, warnings = profile_thumbnails(paths, package.manifest, size)
    if len(thumbs) < MIN_PROFILE_IMAGES:
        first = f" (first problem: {warnings[0]})" if warnings else ""
        raise InputError(
            f"{dataset}: {len(thumbs)} usable image(s) of {len(paths)} file(s); a profile needs "
            f"at least {MIN_PROFILE_IMAGES}{first}"
        )
    quality, correlations, gaps = build_profile(thumbs, percentile)
    write_quality(package.folder / MANIFEST_NAME, quality)
    sealed = seal_package(package.folder)
    return ProfileResult(
        package=sealed,
        quality=quality,
        percentile=percentile,
        correlations=tuple(correlations),
        gaps=tuple(gaps),
        files=len(paths),
        warnings=tuple(warnings),
    )


# --- the manifest --------------------------------------------------------------------------------


def write_quality(path: Path, quality: Quality) -> None:
    """Set the manifest's `quality` section, keeping every other field, its order and the
    admin's comments; the section goes last, its reference one flow-style row per line.
    Validated, then written atomically: a failure leaves the manifest as it was."""
    fields = quality.model_dump(mode="json")
    rows = [[round(value, 3) for value in row] for row in fields.pop("reference")]
    node = plain(fields)
    node["reference"] = flow_rows(rows)
    edit_manifest(path, lambda data: set_last(data, "quality", node))


# --- the report ----------------------------------------------------------------------------------


def format_report(result: ProfileResult) -> str:
    """Images used and skipped, the distributions the thresholds come from, and the thresholds."""
    q = result.quality
    lines = [
        f"profile of {result.package.manifest.identity}: {q.images} image(s) used, "
        f"{result.files - q.images} skipped, thumbnail {q.size} x {q.size}",
        _distribution("correlation with the reference", result.correlations),
        _distribution("orientation gap (as received - best turned)", result.gaps),
        f"min_correlation {q.min_correlation:.3f} (percentile {result.percentile:g} minus "
        f"{CORRELATION_MARGIN:g}), min_orientation_gap {q.min_orientation_gap:.3f} "
        f"(percentile {result.percentile:g} minus {ORIENTATION_MARGIN:g}, at most 0), "
        f"min_contrast {q.min_contrast:g}",
    ]
    atypical = sum(value < q.min_correlation for value in result.correlations)
    turned = sum(value < q.min_orientation_gap for value in result.gaps)
    lines.append(
        f"profile images below the thresholds: correlation {atypical}, orientation gap {turned} "
        f"(of {q.images})"
    )
    return "\n".join(lines)


def _distribution(name: str, values: Sequence[float]) -> str:
    p1, p5, median = (float(np.percentile(values, p)) for p in (1, 5, 50))
    return (
        f"{name}: min {min(values):.3f}, 1st percentile {p1:.3f}, 5th {p5:.3f}, "
        f"median {median:.3f}, max {max(values):.3f}"
    )
