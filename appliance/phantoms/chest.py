"""Synthetic frontal (PA) chest radiographs with findings whose extent is known exactly.

The picture is a sum of densities in mm space: body outline, lungs (air lowers the density),
mediastinum and heart (cancel the air), ribs, clavicles, spine, vessels; then the findings:
nodule/mass, pleural effusion (meniscus, blunted costophrenic angle), consolidation (patchy),
pneumothorax (absent lung markings outside a visceral pleural line) and cardiomegaly
(cardiothoracic ratio > 0.5). Each present finding comes with the mask of the pixels it changed,
so that an explanation heatmap can be checked for pointing at it. Exposure, noise, bit depth,
photometric interpretation, small rotation and anatomy sizes vary with the seed.

Images are drawn at up to 512 rows and resized, then noise is added at full size: a 2048-row
image costs little more than a 512-row one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from appliance.phantoms._draw import BoolArray, FloatArray, Grid, bounding_box
from appliance.phantoms.chest_anatomy import Layers, anatomy, draw_thorax
from appliance.phantoms.chest_findings import add_findings
from appliance.samples import CR, DX_PRESENTATION, file_meta_for, sample_uid

CHEST_FINDINGS = (
    "lung_nodule",
    "pleural_effusion",
    "consolidation",
    "pneumothorax",
    "cardiomegaly",
)
_DRAW_ROWS = 512  # anatomy is drawn at most this tall, then resized
_AIR = 0.42  # density lost where the beam crosses aerated lung
_SOFT = 0.62  # density of the full soft-tissue thickness at the midline


@dataclass(frozen=True)
class ChestPhantom:
    """One synthetic radiograph: stored pixel values plus the truth about what is in it.

    `pixels` are the values as they go into Pixel Data (MONOCHROME1 already inverted), in
    `bits_stored` bits. `masks` and `boxes` ((x0, y0, x1, y1), inclusive) exist for every
    finding whose label is True. `window` is (centre, width) on stored values, or None when the
    file should carry no VOI window (readers then use the full range).
    """

    pixels: npt.NDArray[np.uint16]
    photometric: str
    bits_stored: int
    spacing_mm: float
    window: tuple[float, float] | None
    labels: dict[str, bool]
    masks: dict[str, BoolArray]
    boxes: dict[str, tuple[int, int, int, int]]
    cardiothoracic_ratio: float
    seed: int

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def columns(self) -> int:
        return int(self.pixels.shape[1])


def make_chest(
    seed: int,
    *,
    rows: int = 2048,
    findings: Mapping[str, bool] | None = None,
    prevalence: float = 0.3,
) -> ChestPhantom:
    """A radiograph drawn from `seed`; each finding is present with `prevalence` unless forced.

    `findings` forces labels by name (e.g. {"pneumothorax": True}); unknown names are errors.
    """
    unknown = set(findings or {}) - set(CHEST_FINDINGS)
    if unknown:
        raise ValueError(f"unknown chest findings {sorted(unknown)}; known: {CHEST_FINDINGS}")
    streams = _streams(seed)
    forced = dict(findings or {})
    labels: dict[str, bool] = {}
    for name in CHEST_FINDINGS:
        drawn = bool(streams["labels"].random() < prevalence)
        labels[name] = bool(forced[name]) if name in forced else drawn
    rng = streams["anatomy"]
    height_mm = float(rng.uniform(340.0, 400.0))
    aspect = float(rng.uniform(0.82, 1.0))
    columns = round(rows * aspect)
    spacing = height_mm / rows
    thorax = draw_thorax(rng, columns * spacing, height_mm, labels["cardiomegaly"])
    draw_rows = min(rows, _DRAW_ROWS)
    draw_columns = round(draw_rows * columns / rows)
    grid = Grid.make(draw_rows, draw_columns, height_mm / draw_rows)
    layers = anatomy(rng, grid, thorax)
    add_findings(streams, grid, thorax, layers, labels)
    pose = _pose(streams["pose"], _compose(layers), layers.masks, (rows, columns))
    return _expose(streams["exposure"], *pose, labels, spacing, thorax.ctr, seed)


def _streams(seed: int) -> dict[str, np.random.Generator]:
    """One random stream per concern: forcing a finding on or off changes only its pixels,
    so an image with and without it can be compared (and its mask checked) pixel by pixel."""
    names = ("labels", "anatomy", "pose", "exposure", *CHEST_FINDINGS)
    return {name: np.random.default_rng([seed, index]) for index, name in enumerate(names)}


def _compose(layers: Layers) -> FloatArray:
    lungs = np.maximum(layers.lungs[-1], layers.lungs[1])
    aerated = np.maximum(layers.aerated[-1], layers.aerated[1]) * (1.0 - layers.heart)
    markings = layers.markings * lungs * (1.0 - layers.heart)
    density = np.float32(_SOFT) * layers.body - np.float32(_AIR) * aerated
    density += layers.bones * layers.body + markings + layers.extra * (layers.body > 0.05)
    return np.asarray(density, dtype=np.float32)


# --- pose, exposure, storage ---------------------------------------------------------------


def _pose(
    rng: np.random.Generator,
    density: FloatArray,
    masks: dict[str, FloatArray],
    size: tuple[int, int],
) -> tuple[FloatArray, dict[str, BoolArray]]:
    """Small rotation and shift of patient against detector, then resize to the output size."""
    rows, columns = density.shape
    angle = float(rng.uniform(-5.0, 5.0))
    shift = rng.uniform(-0.03, 0.03, 2) * np.array([columns, rows])
    matrix = cv2.getRotationMatrix2D((columns / 2, rows / 2), angle, 1.0)
    matrix[:, 2] += shift
    out_size = (size[1], size[0])

    def move(image: FloatArray, border: int) -> FloatArray:
        moved = cv2.warpAffine(
            image, matrix, (columns, rows), flags=cv2.INTER_LINEAR, borderMode=border
        )
        resized = cv2.resize(moved, out_size, interpolation=cv2.INTER_LINEAR)
        return np.asarray(resized, dtype=np.float32)

    moved_masks = {name: move(mask, cv2.BORDER_CONSTANT) > 0.5 for name, mask in masks.items()}
    return move(density, cv2.BORDER_REPLICATE), moved_masks


def _expose(
    rng: np.random.Generator,
    density: FloatArray,
    masks: dict[str, BoolArray],
    labels: dict[str, bool],
    spacing: float,
    ctr: float,
    seed: int,
) -> ChestPhantom:
    """Density -> stored values: contrast, gamma, heel effect, marker, noise, bit depth."""
    rows = density.shape[0]
    shown = np.clip((density + np.float32(rng.uniform(0.0, 0.08))) / np.float32(0.95), 0, 1)
    shown = shown ** np.float32(rng.uniform(0.8, 1.25))
    heel = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None] * np.float32(
        rng.uniform(-0.04, 0.04)
    )
    shown = shown * (1.0 + heel)
    _marker(shown, rng)
    bits = int(rng.choice([10, 12, 12, 14, 15, 16]))
    top = float(2**bits - 1)
    offset, span = float(rng.uniform(0.0, 0.05)) * top, float(rng.uniform(0.6, 0.93)) * top
    noise = rng.standard_normal(shown.shape, dtype=np.float32) * np.float32(
        rng.uniform(0.004, 0.02)
    )
    values = np.clip(np.float32(offset) + (shown + noise) * np.float32(span), 0, top)
    photometric = "MONOCHROME1" if rng.random() < 0.3 else "MONOCHROME2"
    if photometric == "MONOCHROME1":
        values = np.float32(top) - values
    pixels = np.rint(values).astype(np.uint16)
    window = _window(rng, pixels) if rng.random() < 0.7 else None
    present = {name: masks[name] for name in CHEST_FINDINGS if labels[name] and masks[name].any()}
    return ChestPhantom(
        pixels=pixels,
        photometric=photometric,
        bits_stored=bits,
        spacing_mm=spacing,
        window=window,
        labels={name: name in present for name in CHEST_FINDINGS},
        masks=present,
        boxes={name: bounding_box(mask) for name, mask in present.items()},
        cardiothoracic_ratio=ctr,
        seed=seed,
    )


def _marker(shown: FloatArray, rng: np.random.Generator) -> None:
    """The lead 'R' marker on the patient's right (the image's left on a PA view)."""
    rows, columns = shown.shape
    scale = rows / 700.0
    origin = (int(columns * rng.uniform(0.04, 0.1)), int(rows * rng.uniform(0.06, 0.12)))
    ink = np.zeros(shown.shape, dtype=np.uint8)  # OpenCV draws text on 8-bit images only
    thickness = max(1, round(2 * scale))
    cv2.putText(ink, "R", origin, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA)
    alpha = ink.astype(np.float32) / np.float32(255.0)
    shown *= 1.0 - alpha
    shown += alpha


def _window(rng: np.random.Generator, pixels: npt.NDArray[np.uint16]) -> tuple[float, float]:
    """A VOI window as a modality would choose it: the useful range, a little off-centre."""
    sample = pixels[:: max(1, pixels.shape[0] // 256), :: max(1, pixels.shape[1] // 256)]
    low, high = (float(v) for v in np.percentile(sample, [1.0, 99.5]))
    width = max((high - low) * float(rng.uniform(0.9, 1.15)), 2.0)
    centre = (high + low) / 2 + float(rng.uniform(-0.05, 0.05)) * width
    return round(centre, 1), round(width, 1)


def chest_dataset(
    phantom: ChestPhantom,
    *,
    modality: str = "DX",
    patient_id: str = "SYNCXR0001",
    patient_name: str = "SYNTHETIC^CHEST",
    study_key: str = "chest-study-1",
) -> Dataset:
    """The phantom as a valid CR or DX (for presentation) instance, PA view, in memory."""
    if modality not in ("CR", "DX"):
        raise ValueError(f"modality must be 'CR' or 'DX', got {modality!r}")
    ds = Dataset()
    ds.SOPClassUID = CR if modality == "CR" else DX_PRESENTATION
    ds.SOPInstanceUID = sample_uid("chest", phantom.seed, study_key, modality, "instance")
    ds.StudyInstanceUID = sample_uid(study_key, "study")
    ds.SeriesInstanceUID = sample_uid(study_key, "chest", modality, "series")
    ds.PatientID, ds.PatientName = patient_id, patient_name
    ds.AccessionNumber = f"CXR{phantom.seed:06d}"[:16]
    ds.StudyDate, ds.StudyTime = "20261101", "093000"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = modality, "CHEST", "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImageType = ["DERIVED", "SECONDARY"]
    if modality == "DX":  # the DX Image module's type 1 attributes
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        # -1: higher values mean less X-ray intensity (bone bright), as MONOCHROME2 shows it.
        ds.PixelIntensityRelationshipSign = -1 if phantom.photometric == "MONOCHROME2" else 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    spacing = f"{phantom.spacing_mm:.6f}"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelSpacing = [spacing, spacing]
    _chest_pixels(ds, phantom)
    ds.file_meta = file_meta_for(ds)
    return ds


def _chest_pixels(ds: Dataset, phantom: ChestPhantom) -> None:
    ds.Rows, ds.Columns, ds.SamplesPerPixel = phantom.rows, phantom.columns, 1
    ds.PhotometricInterpretation = phantom.photometric
    ds.BitsAllocated, ds.BitsStored = 16, phantom.bits_stored
    ds.HighBit, ds.PixelRepresentation = phantom.bits_stored - 1, 0
    if phantom.window is not None:
        ds.WindowCenter, ds.WindowWidth = phantom.window
        ds.VOILUTFunction = "LINEAR"
    ds.PixelData = np.ascontiguousarray(phantom.pixels, dtype="<u2").tobytes()
