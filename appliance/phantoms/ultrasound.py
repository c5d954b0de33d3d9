"""Synthetic B-mode ultrasound: sector images and clips with fluid whose area is known exactly.

A scene (tissue layers, an organ with texture, a kidney-like structure, vessels, bone with an
acoustic shadow, anechoic fluid: cysts and free fluid) is sampled along the beam lines of a
curvilinear or phased-array probe. Along each line the echo is multiplied by Rayleigh speckle
and by the round-trip attenuation, which time-gain compensation only partly undoes: fluid
attenuates little, so the tissue behind it comes out brighter (posterior enhancement), and
bone attenuates a lot (shadow). Log compression and scan conversion then give the familiar fan,
with burned-in text and a depth ruler outside it, as a real scanner's video output has.

The fluid mask is evaluated on the output pixels from the same shapes, clipped to the fan, so
`fluid_area_mm2` is the area a perfect segmentation would report with the region's spacing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from appliance.phantoms._draw import BoolArray
from appliance.phantoms.ultrasound_beam import BeamSampler
from appliance.phantoms.ultrasound_geometry import SectorGeometry, draw_geometry
from appliance.phantoms.ultrasound_scene import Scene, draw_motion, draw_scene, fluid_mask
from appliance.samples import US, US_MULTIFRAME, file_meta_for, sample_uid

UNITS_CM = 3  # Physical Units X/Y Direction: centimetres (PS3.3 C.8.5.5.1.15)


@dataclass(frozen=True)
class UltrasoundPhantom:
    """One frame: pixels (rows x columns x 3 RGB, or rows x columns gray), fluid truth, fan.

    `fluid_area_mm2` is the mask's pixel count times the pixel area. `nominal_area_mm2` is the
    area of the drawn shapes, given only when every one lies wholly inside the fan.
    """

    pixels: npt.NDArray[np.uint8]
    fluid_mask: BoolArray
    fluid_area_mm2: float
    nominal_area_mm2: float | None
    geometry: SectorGeometry
    seed: int

    @property
    def has_fluid(self) -> bool:
        return bool(self.fluid_mask.any())


@dataclass(frozen=True)
class UltrasoundClip:
    """Frames (F x rows x columns x 3, or F x rows x columns) of one scene breathing."""

    frames: npt.NDArray[np.uint8]
    fluid_masks: BoolArray
    fluid_areas_mm2: tuple[float, ...]
    geometry: SectorGeometry
    frame_time_ms: float
    seed: int


def make_ultrasound(
    seed: int,
    *,
    rows: int = 480,
    columns: int = 640,
    fluid: bool | None = None,
    color: bool = True,
    mm_per_pixel: float | None = None,
) -> UltrasoundPhantom:
    """One B-mode frame drawn from `seed`; fluid is present in 3 of 4 unless `fluid` forces it.

    The pixel size follows from a random depth (8-18 cm) unless `mm_per_pixel` sets it; the
    anatomy is in mm, so a finer pixel shows less depth.
    """
    rng, geometry, scene = _setup(seed, rows, columns, fluid, mm_per_pixel)
    clip = _render(rng, geometry, scene, [(0.0, 1.0)], 40.0, color, seed)
    return UltrasoundPhantom(
        pixels=clip.frames[0],
        fluid_mask=clip.fluid_masks[0],
        fluid_area_mm2=clip.fluid_areas_mm2[0],
        nominal_area_mm2=_nominal_area(scene, geometry),
        geometry=geometry,
        seed=seed,
    )


def make_ultrasound_clip(
    seed: int,
    *,
    frames: int = 16,
    frame_time_ms: float = 40.0,
    rows: int = 480,
    columns: int = 640,
    fluid: bool | None = None,
    color: bool = True,
    mm_per_pixel: float | None = None,
) -> UltrasoundClip:
    """A clip of one scene: tissue and fluid move with breathing, speckle partly decorrelates."""
    rng, geometry, scene = _setup(seed, rows, columns, fluid, mm_per_pixel)
    motion = draw_motion(rng, frames, frame_time_ms)
    return _render(rng, geometry, scene, motion, frame_time_ms, color, seed)


def _setup(
    seed: int, rows: int, columns: int, fluid: bool | None, mm_per_pixel: float | None
) -> tuple[np.random.Generator, SectorGeometry, Scene]:
    if mm_per_pixel is not None and not 0.05 <= mm_per_pixel <= 2.0:
        raise ValueError(f"mm_per_pixel must be within 0.05..2.0, got {mm_per_pixel}")
    rng = np.random.default_rng(seed)
    geometry = draw_geometry(rng, rows, columns)
    if mm_per_pixel is not None:
        geometry = replace(geometry, mm_per_pixel=mm_per_pixel)
    return rng, geometry, draw_scene(rng, geometry, fluid)


def _render(
    rng: np.random.Generator,
    geometry: SectorGeometry,
    scene: Scene,
    motion: list[tuple[float, float]],
    frame_time_ms: float,
    color: bool,
    seed: int,
) -> UltrasoundClip:
    overlay = _overlay(rng, geometry)
    sampler = BeamSampler(geometry)
    speckle = sampler.fresh_speckle(rng)
    gain = (float(rng.uniform(-4.0, 4.0)), float(rng.uniform(40.0, 55.0)))
    pictures, masks = [], []
    for shift, scale in motion:
        speckle = 0.8 * speckle + 0.6 * sampler.fresh_speckle(rng)
        shown = sampler.render(scene, speckle, rng, gain, shift, scale)
        pictures.append(_compose(shown, overlay, color))
        masks.append(fluid_mask(scene, geometry, shift, scale))
    mask_stack = np.stack(masks)
    area = geometry.mm_per_pixel**2
    return UltrasoundClip(
        frames=np.stack(pictures),
        fluid_masks=mask_stack,
        fluid_areas_mm2=tuple(float(m.sum()) * area for m in mask_stack),
        geometry=geometry,
        frame_time_ms=frame_time_ms,
        seed=seed,
    )


def _nominal_area(scene: Scene, geometry: SectorGeometry) -> float | None:
    """The drawn shapes' area, when they lie wholly inside the fan and do not overlap."""
    if not scene.fluids:
        return 0.0
    masks = [
        fluid_mask(replace(scene, fluids=(blob,)), geometry, 0.0, 1.0, clip=False)
        for blob in scene.fluids
    ]
    union = np.logical_or.reduce(masks)
    if (union & ~geometry.mask()).any() or int(union.sum()) != sum(int(m.sum()) for m in masks):
        return None
    return sum(blob.nominal_area_mm2 for blob in scene.fluids)


# --- what the scanner burns in -----------------------------------------------------------


def _overlay(rng: np.random.Generator, g: SectorGeometry) -> npt.NDArray[np.uint8]:
    """Text, depth ruler and grey bar as RGB on black, kept outside the fan's bounding box."""
    canvas = np.zeros((g.rows, g.columns, 3), dtype=np.uint8)
    small = 0.38 * g.rows / 480
    white, green = (235, 235, 235), (120, 230, 120)
    probe = "P4-1" if g.inner_radius < 10 else "C5-2"
    line = max(10, round(g.rows * 0.032))
    _text(canvas, "SYNTHETIC DEMO  not for clinical use", (6, line), small, white)
    _text(canvas, f"{probe}  {rng.uniform(2.5, 5.0):.1f}MHz  ABD", (6, 2 * line), small, green)
    _text(canvas, f"D {g.depth_mm / 10:.1f}cm", (6, 4 * line), small, white)
    _text(canvas, f"G {int(rng.integers(35, 70))}%", (6, 5 * line), small, white)
    _text(canvas, "FR 25Hz", (6, 6 * line), small, white)
    _ruler(canvas, g, small)
    _grey_bar(canvas, g)
    x0, y0, x1, y1 = g.region
    canvas[y0 : y1 + 1, x0 : x1 + 1] = 0
    return canvas


def _text(
    canvas: npt.NDArray[np.uint8],
    text: str,
    origin: tuple[int, int],
    scale: float,
    colour: tuple[int, int, int],
) -> None:
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def _ruler(canvas: npt.NDArray[np.uint8], g: SectorGeometry, scale: float) -> None:
    """Depth ticks every centimetre along the centre line, labelled every 5 cm."""
    x = min(g.region[2] + 6, g.columns - 24)
    per_cm = 10.0 / g.mm_per_pixel
    start = g.apex_y + g.inner_radius
    for cm in range(int(g.depth_mm // 10) + 1):
        y = round(start + cm * per_cm)
        length = 8 if cm % 5 == 0 else 4
        cv2.line(canvas, (x, y), (x + length, y), (200, 200, 90), 1)
        if cm % 5 == 0 and cm:
            _text(canvas, str(cm), (x + 10, y + 4), scale, (200, 200, 90))


def _grey_bar(canvas: npt.NDArray[np.uint8], g: SectorGeometry) -> None:
    """The grey-scale bar scanners show beside the image, at the bottom left."""
    top, bottom = round(g.rows * 0.55), round(g.rows * 0.9)
    ramp = np.linspace(255, 0, bottom - top).astype(np.uint8)
    canvas[top:bottom, 8:16] = ramp[:, None, None]


def _compose(
    shown: npt.NDArray[np.uint8], overlay: npt.NDArray[np.uint8], color: bool
) -> npt.NDArray[np.uint8]:
    rgb = np.repeat(shown[:, :, None], 3, axis=2)
    written = overlay.any(axis=2)
    rgb[written] = overlay[written]
    if color:
        return rgb
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return np.asarray(gray, dtype=np.uint8)


# --- DICOM -------------------------------------------------------------------------------


def ultrasound_dataset(
    image: UltrasoundPhantom | UltrasoundClip,
    *,
    patient_id: str = "SYNUS0001",
    patient_name: str = "SYNTHETIC^ULTRASOUND",
    study_key: str = "us-study-1",
) -> Dataset:
    """US Image Storage (one frame) or US Multi-frame (a clip), with its ultrasound region."""
    clip = isinstance(image, UltrasoundClip)
    pixels = image.frames if isinstance(image, UltrasoundClip) else image.pixels[None]
    ds = Dataset()
    ds.SOPClassUID = US_MULTIFRAME if clip else US
    kind = "clip" if clip else "frame"
    ds.SOPInstanceUID = sample_uid("us", kind, image.seed, study_key, "instance")
    ds.StudyInstanceUID = sample_uid(study_key, "study")
    ds.SeriesInstanceUID = sample_uid(study_key, "us", "series")
    ds.PatientID, ds.PatientName = patient_id, patient_name
    ds.AccessionNumber = f"US{image.seed:06d}"[:16]
    ds.StudyDate, ds.StudyTime = "20261101", "093000"
    ds.Modality, ds.BodyPartExamined = "US", "ABDOMEN"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
    ds.SequenceOfUltrasoundRegions = Sequence([_region_item(image.geometry)])
    _us_pixels(ds, pixels)
    if isinstance(image, UltrasoundClip):
        _cine(ds, len(pixels), image.frame_time_ms)
    ds.file_meta = file_meta_for(ds)
    return ds


def _region_item(g: SectorGeometry) -> Dataset:
    x0, y0, x1, y1 = g.region
    item = Dataset()
    item.RegionSpatialFormat = 1  # 2D
    item.RegionDataType = 1  # tissue
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1, y1
    item.ReferencePixelX0 = round(g.apex_x) - x0
    item.ReferencePixelY0 = round(g.apex_y) - y0
    item.PhysicalUnitsXDirection = UNITS_CM
    item.PhysicalUnitsYDirection = UNITS_CM
    item.ReferencePixelPhysicalValueX = 0.0
    item.ReferencePixelPhysicalValueY = 0.0
    item.PhysicalDeltaX = g.mm_per_pixel / 10.0
    item.PhysicalDeltaY = g.mm_per_pixel / 10.0
    return item


def _us_pixels(ds: Dataset, pixels: npt.NDArray[np.uint8]) -> None:
    color = pixels.ndim == 4
    ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
    ds.SamplesPerPixel = 3 if color else 1
    ds.PhotometricInterpretation = "RGB" if color else "MONOCHROME2"
    if color:
        ds.PlanarConfiguration = 0
    else:  # the identity window: a region crop must not be stretched by a min-max default
        ds.WindowCenter, ds.WindowWidth = 127.5, 256.0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()


def _cine(ds: Dataset, frames: int, frame_time_ms: float) -> None:
    ds.NumberOfFrames = frames
    ds.FrameTime = f"{frame_time_ms:.1f}"
    ds.FrameIncrementPointer = Tag(0x0018, 0x1063)  # Frame Time
    ds.CineRate = round(1000.0 / frame_time_ms)
    ds.RecommendedDisplayFrameRate = round(1000.0 / frame_time_ms)
