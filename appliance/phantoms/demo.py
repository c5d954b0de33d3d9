"""`appliance demo-data DIR`: a folder of synthetic DICOM files to push to a fresh appliance.

A newcomer who starts the box with its demo models has no images to show it. This writes a
small, fixed set: chest radiographs (CR and DX, MONOCHROME1 and 2) with one forced finding
each and two normals, ultrasound frames with and without fluid, a cine clip, and a hand
radiograph that no demo model applies to. Every file is a different synthetic patient and
study; the truth (findings, fluid area in mm²) and the model expected to answer go to
`index.csv`, so what the appliance shows can be checked against it.

Files are deterministic for a seed (UIDs and pixels alike), written in Explicit VR Little
Endian, and named by this code only: no DICOM value ever becomes part of a path.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypedDict

import cv2
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from appliance.errors import ApplianceError
from appliance.phantoms.chest import CHEST_FINDINGS, ChestPhantom, chest_dataset, make_chest
from appliance.phantoms.ultrasound import (
    make_ultrasound,
    make_ultrasound_clip,
    ultrasound_dataset,
)
from appliance.samples import make_dataset

CHEST_MODEL = "demo-chest-xray"
ULTRASOUND_MODEL = "demo-ultrasound-fluid"
NO_MODEL = "none"
SEND_HINT = "appliance send {folder} --to 127.0.0.1:11112"  # sends the DICOM files only
CLIP_FRAMES = 12
MAX_SEED = 99_999
_SEED_BASE = 700_000  # phantom seeds 700000 and up: no recipe or test uses them
_HAND_SHAPE = (1024, 832)  # rows, columns
_HAND_SPACING_MM = 0.2
_NUMBERS = (
    *("ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN"),
    *("EIGHT", "NINE", "TEN", "ELEVEN", "TWELVE", "THIRTEEN", "FOURTEEN"),
)

Truth = dict[str, bool | float]


@dataclass(frozen=True)
class DemoItem:
    """One written file: what it is, what it truly shows, and which model should answer."""

    path: Path
    kind: str  # e.g. "chest-dx-effusion"; also the file name without number and suffix
    description: str
    truth: Truth
    modality: str
    expected_model: str

    @property
    def truth_text(self) -> str:
        """The truth as one short line for index.csv and the command's output."""
        if self.expected_model == NO_MODEL:
            return "n/a (no model applies)"
        if "fluid_area_mm2" in self.truth:
            return f"fluid_area_mm2={self.truth['fluid_area_mm2']:.1f}"
        present = "+".join(name for name in CHEST_FINDINGS if self.truth.get(name) is True)
        ctr = self.truth["cardiothoracic_ratio"]
        return f"{present or 'no findings'}; cardiothoracic_ratio={ctr:.2f}"


@dataclass(frozen=True)
class _Chest:
    """One chest file: modality and photometric are forced so that every seed gives the mix."""

    kind: str
    modality: Literal["CR", "DX"]
    photometric: str
    findings: tuple[str, ...]


_CHESTS = (
    _Chest("chest-dx-effusion", "DX", "MONOCHROME2", ("pleural_effusion",)),
    _Chest("chest-cr-pneumothorax", "CR", "MONOCHROME1", ("pneumothorax",)),
    _Chest("chest-dx-cardiomegaly", "DX", "MONOCHROME1", ("cardiomegaly",)),
    _Chest("chest-cr-nodule", "CR", "MONOCHROME2", ("lung_nodule",)),
    _Chest("chest-dx-consolidation", "DX", "MONOCHROME2", ("consolidation",)),
    _Chest("chest-cr-normal", "CR", "MONOCHROME1", ()),
    _Chest("chest-dx-normal", "DX", "MONOCHROME2", ()),
)
# (kind, fluid, colour): a grey one too, as some scanners' outputs are.
_FRAMES = (
    ("us-fluid", True, True),
    ("us-fluid-gray", True, False),
    ("us-no-fluid", False, True),
)


class _Who(TypedDict):
    """A demo file's patient and study, as keywords of the dataset builders."""

    patient_id: str
    patient_name: str
    study_key: str


@dataclass(frozen=True)
class _Slot:
    """Where one file goes and who its synthetic patient is; all derived from the seed."""

    folder: Path
    number: int
    seed: int
    chest_rows: int

    def path(self, kind: str) -> Path:
        """The file's name comes from its number and kind, never from a DICOM value."""
        return self.folder / f"{self.number:02d}-{kind}.dcm"

    @property
    def phantom_seed(self) -> int:
        return _SEED_BASE + self.seed * 100 + self.number

    @property
    def patient_id(self) -> str:
        return f"DEMO{self.number:04d}"

    def patient_name(self, group: str) -> str:
        return f"DEMO^{group}^{_NUMBERS[self.number - 1]}"

    @property
    def study_key(self) -> str:
        return f"demo-data/{self.seed}/{self.number}"

    def who(self, group: str) -> _Who:
        """The patient and study every dataset builder is given for this slot."""
        return {
            "patient_id": self.patient_id,
            "patient_name": self.patient_name(group),
            "study_key": self.study_key,
        }


Maker = Callable[[_Slot], tuple[Dataset, DemoItem]]


def write_demo_data(
    folder: Path, *, chest_rows: int = 2048, seed: int = 1, overwrite: bool = False
) -> list[DemoItem]:
    """Write the demo set, index.csv and README.txt into `folder`; return what was written.

    A folder that exists and holds anything is refused unless `overwrite`: a mistyped path must
    not mix demo images into someone's own files. With `overwrite`, files of the same names are
    replaced and anything else in the folder is left alone.
    """
    _check_options(chest_rows, seed)
    _prepare_folder(folder, overwrite)
    items: list[DemoItem] = []
    for number, maker in enumerate(_makers(), start=1):
        ds, item = maker(_Slot(folder, number, seed, chest_rows))
        _describe_study(ds, item, number)
        ds.save_as(item.path, enforce_file_format=True)
        items.append(item)
    _write_index(folder / "index.csv", items)
    (folder / "README.txt").write_text(_readme(folder), encoding="utf-8")
    return items


def _check_options(chest_rows: int, seed: int) -> None:
    if not 256 <= chest_rows <= 4096:
        raise ApplianceError(f"chest rows must be within 256..4096, got {chest_rows}")
    if not 0 <= seed <= MAX_SEED:
        raise ApplianceError(f"seed must be within 0..{MAX_SEED}, got {seed}")


def _prepare_folder(folder: Path, overwrite: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise ApplianceError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise ApplianceError(
            f"{folder} is not empty; choose an empty or new folder, or overwrite (--force)"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ApplianceError(f"cannot create {folder}: {exc.strerror or exc}") from exc


def _makers() -> list[Maker]:
    """One maker per file, in file order; the order fixes file numbers and patient IDs."""
    makers: list[Maker] = [_chest_maker(spec) for spec in _CHESTS]
    makers += [_frame_maker(kind, fluid, colour) for kind, fluid, colour in _FRAMES]
    return [*makers, _clip, _hand]


# --- chest ---------------------------------------------------------------------------------


def _chest_maker(spec: _Chest) -> Maker:
    def make(slot: _Slot) -> tuple[Dataset, DemoItem]:
        forced = {name: name in spec.findings for name in CHEST_FINDINGS}
        phantom = make_chest(slot.phantom_seed, rows=slot.chest_rows, findings=forced)
        phantom = _with_photometric(phantom, spec.photometric)
        ds = chest_dataset(
            phantom,
            modality=spec.modality,
            **slot.who("CHEST"),
        )
        shows = ", ".join(name.replace("_", " ") for name in spec.findings) or "no findings"
        truth: Truth = {
            **phantom.labels,
            "cardiothoracic_ratio": round(phantom.cardiothoracic_ratio, 4),
        }
        described = f"{spec.modality} chest PA, {spec.photometric}: {shows}"
        return ds, DemoItem(
            slot.path(spec.kind), spec.kind, described, truth, spec.modality, CHEST_MODEL
        )

    return make


def _with_photometric(phantom: ChestPhantom, photometric: str) -> ChestPhantom:
    """The same radiograph stored the other way round when the seed drew the other one.

    The seed draws MONOCHROME1 or 2 (and its draw changes with the row count), but the demo
    set must always show both; inverting stored values and window is exactly what a modality
    does when it writes the other interpretation.
    """
    if phantom.photometric == photometric:
        return phantom
    top = 2**phantom.bits_stored - 1
    window = phantom.window
    flipped = None if window is None else (round(top - window[0], 1), window[1])
    pixels = (np.uint16(top) - phantom.pixels).astype(np.uint16)
    return dataclasses.replace(phantom, pixels=pixels, photometric=photometric, window=flipped)


# --- ultrasound ----------------------------------------------------------------------------


def _frame_maker(kind: str, fluid: bool, colour: bool) -> Maker:
    def make(slot: _Slot) -> tuple[Dataset, DemoItem]:
        phantom = make_ultrasound(slot.phantom_seed, fluid=fluid, color=colour)
        ds = ultrasound_dataset(phantom, **slot.who("ULTRASOUND"))
        truth: Truth = {"fluid": phantom.has_fluid, "fluid_area_mm2": phantom.fluid_area_mm2}
        look = "RGB" if colour else "grey"
        shows = "anechoic fluid" if phantom.has_fluid else "no fluid"
        described = f"US abdomen, one {look} frame: {shows}"
        return ds, DemoItem(slot.path(kind), kind, described, truth, "US", ULTRASOUND_MODEL)

    return make


def _clip(slot: _Slot) -> tuple[Dataset, DemoItem]:
    clip = make_ultrasound_clip(slot.phantom_seed, frames=CLIP_FRAMES, fluid=True)
    ds = ultrasound_dataset(clip, **slot.who("CINE"))
    areas = clip.fluid_areas_mm2
    truth: Truth = {
        "fluid": areas[0] > 0,
        "fluid_area_mm2": areas[0],  # the demo model reads the first frame only
        "fluid_area_min_mm2": min(areas),
        "fluid_area_max_mm2": max(areas),
    }
    described = (
        f"US abdomen, cine of {CLIP_FRAMES} frames (US Multi-frame): anechoic fluid, "
        f"{min(areas):.0f}-{max(areas):.0f} mm² with breathing"
    )
    return ds, DemoItem(
        slot.path("us-cine-fluid"), "us-cine-fluid", described, truth, "US", ULTRASOUND_MODEL
    )


# --- a radiograph no demo model applies to ---------------------------------------------------


def _hand(slot: _Slot) -> tuple[Dataset, DemoItem]:
    """A CR of a hand: the chest model's rules refuse the body part, the ultrasound model's
    the modality, so the appliance shows "no applicable model" instead of a guess."""
    rows, columns = _HAND_SHAPE
    ds = make_dataset(
        "cr",
        seed=slot.phantom_seed,
        rows=rows,
        columns=columns,
        **slot.who("HAND"),
        body_part="HAND",
    )
    ds.InstanceNumber = 1
    ds.Laterality = "R"  # type 2C: a hand is a paired body part
    spacing = f"{_HAND_SPACING_MM:.6f}"
    ds.ImagerPixelSpacing = [spacing, spacing]
    pixels = _hand_pixels(np.random.default_rng(slot.phantom_seed), rows, columns)
    ds.PixelData = pixels.astype("<u2").tobytes()
    described = "CR hand PA: no demo model applies (body part HAND)"
    return ds, DemoItem(
        slot.path("cr-hand-no-model"), "cr-hand-no-model", described, {}, "CR", NO_MODEL
    )


def _hand_pixels(rng: np.random.Generator, rows: int, columns: int) -> npt.NDArray[np.uint16]:
    """A crude hand radiograph in 12 bits, MONOCHROME2: soft tissue, bones, noise.

    Only its tags matter to the routing; the picture is there so a person recognises it.
    """
    tissue = np.zeros((rows, columns), dtype=np.float32)
    bone = np.zeros_like(tissue)
    size = np.array([columns, rows], dtype=np.float64)
    finger = round(0.07 * columns)
    for base, tip in _RAYS:
        _line(tissue, np.multiply(base, size), np.multiply(tip, size), finger)
        for start, stop in itertools.pairwise((0.0, 0.42, 0.66, 0.84, 0.97)):
            joint = (start + 0.035, stop - 0.035)  # a gap between neighbouring bones
            ends = [np.multiply(base, size) + np.subtract(tip, base) * size * t for t in joint]
            _line(bone, ends[0], ends[1], round(0.03 * columns))
    for x in (0.41, 0.54):  # radius and ulna
        _line(bone, np.multiply((x, 0.88), size), np.multiply((x, 1.0), size), finger // 2)
    centre = (round(0.47 * columns), round(0.7 * rows))
    cv2.ellipse(tissue, centre, (round(0.2 * columns), round(0.16 * rows)), 0, 0, 360, 1.0, -1)
    forearm = ((round(0.33 * columns), centre[1]), (round(0.61 * columns), rows))
    cv2.rectangle(tissue, *forearm, 1.0, -1)
    density = cv2.GaussianBlur(0.35 * tissue + 0.3 * bone * tissue, (0, 0), 2.0)
    noise = np.float32(0.01) * rng.standard_normal(density.shape, dtype=np.float32)
    return np.asarray(np.clip((0.08 + density + noise) * 4095, 0, 4095).round(), np.uint16)


# (base, tip) as fractions of (width, height): four fingers and the thumb.
_RAYS = (
    ((0.36, 0.78), (0.27, 0.2)),
    ((0.44, 0.76), (0.42, 0.1)),
    ((0.52, 0.77), (0.56, 0.13)),
    ((0.58, 0.8), (0.7, 0.24)),
    ((0.34, 0.84), (0.12, 0.5)),
)


def _line(
    out: npt.NDArray[np.float32],
    start: npt.NDArray[np.float64],
    end: npt.NDArray[np.float64],
    thickness: int,
) -> None:
    p0, p1 = (round(start[0]), round(start[1])), (round(end[0]), round(end[1]))
    cv2.line(out, p0, p1, 1.0, max(thickness, 2), cv2.LINE_AA)


# --- study attributes, index, README --------------------------------------------------------


def _describe_study(ds: Dataset, item: DemoItem, number: int) -> None:
    """Type 2 attributes the phantom builders leave out (empty is allowed, absent is not), and
    descriptions that say the images are synthetic wherever a viewer lists them."""
    if "PatientOrientation" not in ds:
        ds.PatientOrientation = ""
    ds.Manufacturer = "appliance demo-data (synthetic)"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"DEMO{number:02d}"
    ds.StudyDescription = "SYNTHETIC DEMO - NOT PATIENT DATA"
    ds.SeriesDescription = f"demo {item.kind}"[:64]
    ds.InstitutionName = "Appliance demo data"


def _write_index(path: Path, items: list[DemoItem]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file", "modality", "shows", "truth", "expected_model"])
        for item in items:
            row = [item.path.name, item.modality, item.description, item.truth_text]
            writer.writerow([*row, item.expected_model])


def send_hint(folder: Path) -> str:
    """The command that pushes the set, ready to paste into a shell (`appliance send DIR`
    sends the DICOM files of a folder and skips the index and README)."""
    return SEND_HINT.format(folder=shlex.quote(str(folder)))


def _readme(folder: Path) -> str:
    return f"""\
Appliance demo data
===================

These DICOM files are SYNTHETIC: drawn by `appliance demo-data` from simple anatomy and
physics. They are not patient data and not for clinical use; names such as DEMO^CHEST^ONE
and IDs such as DEMO0001 are made up.

index.csv lists every file with what it shows, the truth (findings present; fluid area in
mm² for ultrasound) and the demo model expected to answer ("none": no model applies, and the
appliance should say so).

Send them to the appliance (receiver on its default port):

  {send_hint(folder)}

or with DCMTK: storescu -aec APPLIANCE 127.0.0.1 11112 {shlex.quote(str(folder))}/*.dcm
"""
