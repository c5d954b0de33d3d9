"""The phantom generators: deterministic, varied, truthful masks, valid DICOM that decodes."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from appliance.imaging import SpacingSource, decode, to_display
from appliance.phantoms import (
    CHEST_FINDINGS,
    SectorGeometry,
    chest_dataset,
    chest_model_input,
    make_chest,
    make_ultrasound,
    make_ultrasound_clip,
    ultrasound_dataset,
    ultrasound_model_input,
)
from appliance.samples import CR, DX_PRESENTATION, US, US_MULTIFRAME

ROWS = 256  # small, fast; the anatomy is in mm and does not depend on it
NONE = dict.fromkeys(CHEST_FINDINGS, False)


# --- chest ---------------------------------------------------------------------------------


def test_chest_is_deterministic_from_its_seed() -> None:
    a, b = make_chest(11, rows=ROWS), make_chest(11, rows=ROWS)
    assert np.array_equal(a.pixels, b.pixels)
    assert a.labels == b.labels and a.window == b.window and a.photometric == b.photometric
    assert a.masks.keys() == b.masks.keys()
    assert all(np.array_equal(a.masks[k], b.masks[k]) for k in a.masks)


def test_chest_varies_with_the_seed() -> None:
    images = [make_chest(seed, rows=ROWS) for seed in range(16)]
    assert len({image.pixels.tobytes() for image in images}) == 16
    assert {image.photometric for image in images} == {"MONOCHROME1", "MONOCHROME2"}
    assert len({image.bits_stored for image in images}) >= 3
    assert {image.window is None for image in images} == {True, False}
    assert len({image.columns for image in images}) > 1  # aspect ratio varies
    for name in CHEST_FINDINGS:  # each finding is present in some and absent in others
        assert {image.labels[name] for image in images} == {True, False}, name


def test_chest_values_fit_the_stored_bits() -> None:
    for seed in range(8):
        image = make_chest(seed, rows=ROWS)
        assert image.pixels.dtype == np.uint16
        assert int(image.pixels.max()) < 2**image.bits_stored
        assert 10 <= image.bits_stored <= 16
        assert 0.15 <= image.spacing_mm * image.rows / 2048 <= 0.2


@pytest.mark.parametrize("name", CHEST_FINDINGS)
def test_chest_mask_marks_the_pixels_the_finding_changed(name: str) -> None:
    """Same seed with and without the finding: the difference lies in (and fills) its mask."""
    without = make_chest(3, rows=384, findings=NONE)
    with_it = make_chest(3, rows=384, findings={**NONE, name: True})
    assert with_it.labels == {**NONE, name: True} and list(with_it.masks) == [name]
    changed = np.abs(with_it.pixels.astype(float) - without.pixels) > 0.02 * 2**without.bits_stored
    mask = with_it.masks[name]
    near = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    assert changed.sum() > 100
    assert (changed & near).sum() >= 0.9 * changed.sum()
    assert (changed & mask).sum() >= 0.4 * mask.sum()


def test_chest_boxes_enclose_their_masks() -> None:
    image = make_chest(5, rows=ROWS, findings=dict.fromkeys(CHEST_FINDINGS, True))
    assert set(image.boxes) == set(CHEST_FINDINGS)
    for name, (x0, y0, x1, y1) in image.boxes.items():
        mask = image.masks[name]
        assert mask[y0 : y1 + 1, x0 : x1 + 1].sum() == mask.sum()
        assert mask[y0].any() and mask[y1].any() and mask[:, x0].any() and mask[:, x1].any()


def test_cardiomegaly_means_a_cardiothoracic_ratio_over_half() -> None:
    for seed in range(6):
        enlarged = make_chest(seed, rows=ROWS, findings={"cardiomegaly": True})
        normal = make_chest(seed, rows=ROWS, findings={"cardiomegaly": False})
        assert enlarged.cardiothoracic_ratio > 0.52 > 0.5 > normal.cardiothoracic_ratio


def test_unknown_chest_finding_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown chest findings"):
        make_chest(1, rows=ROWS, findings={"fracture": True})


@pytest.mark.parametrize("modality", ["CR", "DX"])
def test_chest_dataset_writes_and_decodes(tmp_path: Path, modality: str) -> None:
    image = make_chest(21, rows=512)
    path = tmp_path / "chest.dcm"
    chest_dataset(image, modality=modality).save_as(path, enforce_file_format=True)
    ds = dcmread(path)
    assert ds.SOPClassUID == (CR if modality == "CR" else DX_PRESENTATION)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert (ds.Modality, ds.ViewPosition, ds.BodyPartExamined) == (modality, "PA", "CHEST")
    assert ds.PhotometricInterpretation == image.photometric
    assert float(ds.ImagerPixelSpacing[0]) == pytest.approx(image.spacing_mm, rel=1e-5)
    decoded = decode(path)
    assert np.array_equal(decoded.pixels[0], image.pixels.astype(np.float32))
    assert decoded.spacing_source is SpacingSource.PIXEL_SPACING
    assert (decoded.window is None) == (image.window is None)


def test_chest_display_is_upright_whatever_the_photometric() -> None:
    """After windowing and MONOCHROME1 inversion the mediastinum is brighter than the lungs."""
    seen = set()
    for seed in range(10):
        image = make_chest(seed, rows=ROWS, findings=NONE)
        shown = to_display(decode(chest_dataset(image)))[0]
        row = shown[int(image.rows * 0.45)]
        middle = row[int(image.columns * 0.47) : int(image.columns * 0.53)].mean()
        lungs = np.r_[
            row[int(image.columns * 0.22) : int(image.columns * 0.3)],
            row[int(image.columns * 0.7) : int(image.columns * 0.78)],
        ].mean()
        assert middle > lungs + 0.15, (seed, image.photometric)
        seen.add(image.photometric)
    assert seen == {"MONOCHROME1", "MONOCHROME2"}


def test_chest_model_input_letterboxes_to_the_manifest_size() -> None:
    image = make_chest(8, rows=400)
    x, placement = chest_model_input(chest_dataset(image))
    assert x.shape == (1, 1, 256, 256) and x.dtype == np.float32
    assert placement.inner_rows == 256 and placement.inner_columns <= 256  # portrait: pad sides
    assert np.all(x[0, 0, :, : placement.left] == pytest.approx(-2.0))  # black, normalised
    shown = x[0, 0][placement.inner] * 0.25 + 0.5
    assert shown.min() >= 0.0 and shown.max() <= 1.0 + 1e-6


# --- ultrasound ------------------------------------------------------------------------------


def test_ultrasound_is_deterministic_and_varied() -> None:
    a, b = make_ultrasound(4), make_ultrasound(4)
    assert np.array_equal(a.pixels, b.pixels) and np.array_equal(a.fluid_mask, b.fluid_mask)
    images = [make_ultrasound(seed) for seed in range(8)]
    assert len({image.pixels.tobytes() for image in images}) == 8
    assert len({round(image.geometry.mm_per_pixel, 4) for image in images}) == 8
    assert {image.has_fluid for image in images} == {True, False}
    assert (
        make_ultrasound(4, fluid=True).has_fluid and not make_ultrasound(4, fluid=False).has_fluid
    )


def test_fluid_area_matches_its_mask_and_its_shapes() -> None:
    checked = 0
    for seed in range(12):
        image = make_ultrasound(seed, fluid=True)
        spacing = image.geometry.mm_per_pixel
        assert image.fluid_area_mm2 == pytest.approx(image.fluid_mask.sum() * spacing**2)
        assert not (image.fluid_mask & ~image.geometry.mask()).any()  # clipped to the fan
        if image.nominal_area_mm2 is not None:  # every shape wholly inside the fan
            assert image.fluid_area_mm2 == pytest.approx(image.nominal_area_mm2, rel=0.03)
            checked += 1
    assert checked >= 4


def test_pixel_size_can_be_set() -> None:
    image = make_ultrasound(3, fluid=True, mm_per_pixel=0.3)
    assert image.geometry.mm_per_pixel == 0.3
    assert image.fluid_area_mm2 == pytest.approx(image.fluid_mask.sum() * 0.09)
    assert make_ultrasound(3).pixels.shape == image.pixels.shape
    with pytest.raises(ValueError, match="mm_per_pixel"):
        make_ultrasound(3, mm_per_pixel=0.0)


def test_fluid_is_anechoic() -> None:
    for seed in range(6):
        image = make_ultrasound(seed, fluid=True, color=False)
        core = cv2.erode(image.fluid_mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        around = cv2.dilate(image.fluid_mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        tissue = image.geometry.mask() & ~around
        assert image.pixels[core].mean() < 0.35 * image.pixels[tissue].mean(), seed


def _enhancement(seed: int) -> float | None:
    """Brightness just behind the fluid over that at the same depths beside it."""
    image = make_ultrasound(seed, fluid=True, color=False)
    g = image.geometry
    y, x = np.mgrid[0 : g.rows, 0 : g.columns].astype(np.float32)
    radius, angle = g.polar(x, y)
    low, high = np.percentile(angle[image.fluid_mask], [25, 75])
    deepest = radius[image.fluid_mask].max()
    band = (radius > deepest + 3) & (radius < deepest + 3 + 12 / g.mm_per_pixel) & g.mask()
    behind = band & (angle > low) & (angle < high)
    width = high - low
    beside = band & (
        ((angle > high + width) & (angle < high + 2 * width))
        | ((angle < low - width) & (angle > low - 2 * width))
    )
    if behind.sum() < 50 or beside.sum() < 50:
        return None
    return float(image.pixels[behind].mean() / image.pixels[beside].mean())


def test_fluid_casts_posterior_enhancement() -> None:
    """Fluid attenuates little, so tissue behind it is brighter than tissue beside it."""
    ratios = [r for r in (_enhancement(seed) for seed in range(12)) if r is not None]
    assert len(ratios) >= 8
    assert float(np.median(ratios)) > 1.15


def test_burned_in_text_stays_outside_the_scan_region() -> None:
    image = make_ultrasound(9)
    x0, y0, x1, y1 = image.geometry.region
    rgb = image.pixels.astype(int)
    inside = np.zeros(rgb.shape[:2], dtype=bool)
    inside[y0 : y1 + 1, x0 : x1 + 1] = True
    assert (rgb[~inside].sum(axis=1) > 0).sum() > 200  # text, ruler, grey bar
    coloured = (rgb[:, :, 0] != rgb[:, :, 1]) | (rgb[:, :, 1] != rgb[:, :, 2])
    assert coloured.any() and not (coloured & inside).any()
    assert not (image.pixels[inside & ~image.geometry.mask()]).any()  # black outside the fan


def test_clip_moves_the_fluid_a_little() -> None:
    clip = make_ultrasound_clip(6, frames=8, fluid=True)
    assert clip.frames.shape == (8, 480, 640, 3) and clip.fluid_masks.shape == (8, 480, 640)
    assert len({mask.tobytes() for mask in clip.fluid_masks}) > 1
    areas = np.array(clip.fluid_areas_mm2)
    assert areas.min() > 0 and areas.max() / areas.min() < 1.3
    assert not np.array_equal(clip.frames[0], clip.frames[1])  # speckle decorrelates


def _check_region(ds: Dataset, geometry: SectorGeometry) -> None:
    (item,) = ds.SequenceOfUltrasoundRegions
    corners = (
        item.RegionLocationMinX0,
        item.RegionLocationMinY0,
        item.RegionLocationMaxX1,
        item.RegionLocationMaxY1,
    )
    assert corners == geometry.region
    assert (item.PhysicalUnitsXDirection, item.PhysicalUnitsYDirection) == (3, 3)
    assert item.PhysicalDeltaX == pytest.approx(geometry.mm_per_pixel / 10)
    assert item.PhysicalDeltaY == pytest.approx(geometry.mm_per_pixel / 10)


@pytest.mark.parametrize("color", [True, False])
def test_ultrasound_dataset_writes_and_decodes(tmp_path: Path, color: bool) -> None:
    image = make_ultrasound(12, color=color)
    path = tmp_path / "us.dcm"
    ultrasound_dataset(image).save_as(path, enforce_file_format=True)
    ds = dcmread(path)
    assert ds.SOPClassUID == US and ds.Modality == "US"
    assert ds.PhotometricInterpretation == ("RGB" if color else "MONOCHROME2")
    _check_region(ds, image.geometry)
    decoded = decode(path)
    assert decoded.spacing_source is SpacingSource.ULTRASOUND_REGION
    assert decoded.spacing_mm == pytest.approx((image.geometry.mm_per_pixel,) * 2)
    assert decoded.region is not None
    assert (decoded.region.x0, decoded.region.y0) == image.geometry.region[:2]
    if color:
        assert np.array_equal(decoded.pixels[0], image.pixels)
    x, placement = ultrasound_model_input(ds)
    assert x.shape == (1, 1, 256, 256)
    x0, y0, x1, y1 = image.geometry.region
    assert (placement.source_rows, placement.source_columns) == (y1 - y0 + 1, x1 - x0 + 1)


def test_multiframe_dataset_writes_and_decodes(tmp_path: Path) -> None:
    clip = make_ultrasound_clip(13, frames=5)
    path = tmp_path / "clip.dcm"
    ultrasound_dataset(clip).save_as(path, enforce_file_format=True)
    ds = dcmread(path)
    assert ds.SOPClassUID == US_MULTIFRAME and int(ds.NumberOfFrames) == 5
    assert float(ds.FrameTime) == pytest.approx(clip.frame_time_ms)
    _check_region(ds, clip.geometry)
    decoded = decode(path)
    assert decoded.pixels.shape == (5, 480, 640, 3)
    assert np.array_equal(decoded.pixels, clip.frames)


def test_sector_region_bounds_the_fan() -> None:
    for seed in range(5):
        geometry = make_ultrasound(seed).geometry
        x0, y0, x1, y1 = geometry.region
        ys, xs = np.nonzero(geometry.mask())
        assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1
        assert xs.min() - x0 <= 2 and x1 - xs.max() <= 2 and ys.max() >= y1 - 2
        assert 0.15 < geometry.mm_per_pixel < 0.6
        assert math.degrees(geometry.half_angle) <= 45
