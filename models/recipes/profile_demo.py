"""Profile the demo packages for the quality check, then measure the check on fresh phantoms.

    .venv/bin/python models/recipes/profile_demo.py [--work DIR] [--count 300] [--check 100]

1. Draws `--count` typical images per package into `--work` (default: a temporary folder,
   removed afterwards), seeds 300000 and up (no other recipe or test uses them):
   - chest: `make_chest(seed, rows=R)` with R cycling through 320, 384, 448, 512, 640, 768,
     1024, saved as DX and CR (alternately) DICOM files by `chest_dataset`; the photometric
     (MONOCHROME1 for about 3 in 10), window, bit depth, pose and findings come from the seed;
   - ultrasound: `make_ultrasound(seed, rows, columns)` with (rows, columns) cycling through
     (480, 640), (480, 640), (600, 800), (768, 1024), one in four MONOCHROME2, the rest RGB,
     saved by `ultrasound_dataset`.
2. Profiles each package as `appliance model profile PKG --dataset DIR` does (the same
   `profile_package`, default percentile), which writes the manifest's `quality` section and
   re-seals SHA256SUMS; prints the command's report; then makes the golden inputs again as
   `appliance model golden PKG` does, since they start from the new typical image.
3. Measures `check_quality` through the runtime's `prepare` on `--check` fresh phantoms per
   package (seeds 310000 and up): as drawn, rotated a quarter turn each way, upside down,
   and near-blank (uniform plus faint noise, min-max window); prints the correlations and how
   many were held back, the figures models/README.md records.

Deterministic: the same seeds give the same images, so the same reference and thresholds.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from appliance.imaging import DecodedImage, decode
from appliance.phantoms import chest_dataset, make_chest, make_ultrasound, ultrasound_dataset
from appliance.runtime.golden import write_goldens
from appliance.runtime.package import load_package
from appliance.runtime.preprocess import prepare
from appliance.runtime.quality import (
    QualityCheck,
    check_quality,
    format_report,
    profile_package,
)

REPO = Path(__file__).resolve().parents[2]
PROFILE_SEEDS = 300_000
CHECK_SEEDS = 310_000
CHEST_ROWS = (320, 384, 448, 512, 640, 768, 1024)
US_SIZES = ((480, 640), (480, 640), (600, 800), (768, 1024))


def chest_file(number: int, seed: int) -> Dataset:
    """The `number`-th chest image of a set: sizes and modality cycle, the rest is the seed's."""
    rows = CHEST_ROWS[number % len(CHEST_ROWS)]
    modality = "CR" if number % 2 else "DX"
    return chest_dataset(make_chest(seed, rows=rows), modality=modality)


def ultrasound_file(number: int, seed: int) -> Dataset:
    """The `number`-th ultrasound frame of a set: sizes cycle, one in four MONOCHROME2."""
    rows, columns = US_SIZES[number % len(US_SIZES)]
    phantom = make_ultrasound(seed, rows=rows, columns=columns, color=number % 4 != 0)
    return ultrasound_dataset(phantom)


MAKERS: dict[str, Callable[[int, int], Dataset]] = {
    "demo-chest-xray": chest_file,
    "demo-ultrasound-fluid": ultrasound_file,
}


def draw(package: str, folder: Path, count: int) -> Path:
    """`count` typical images of `package` as DICOM files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        seed = PROFILE_SEEDS + number
        path = folder / f"{package}-{seed}.dcm"
        MAKERS[package](number, seed).save_as(path, enforce_file_format=True)
    return folder


def turned(image: DecodedImage, how: str) -> DecodedImage:
    """`image` turned as a misplaced image would be; an ultrasound region turns with it."""
    rows, columns = image.pixels.shape[1:3]

    def move(x: int, y: int) -> tuple[int, int]:
        """Where pixel (x, y) goes."""
        if how == "rotated 90":  # a quarter turn counter-clockwise
            return y, columns - 1 - x
        if how == "rotated 270":  # a quarter turn clockwise
            return rows - 1 - y, x
        return x, rows - 1 - y  # upside down

    turns = {"rotated 90": 1, "rotated 270": -1}
    if how in turns:
        pixels = np.rot90(image.pixels, turns[how], axes=(1, 2))
    else:
        pixels = image.pixels[:, ::-1]
    region = image.region
    if region is not None:
        (ax, ay), (bx, by) = move(region.x0, region.y0), move(region.x1, region.y1)
        region = dataclasses.replace(
            region, x0=min(ax, bx), y0=min(ay, by), x1=max(ax, bx), y1=max(ay, by)
        )
    return dataclasses.replace(image, pixels=np.ascontiguousarray(pixels), region=region)


def near_blank(image: DecodedImage, rng: np.random.Generator) -> DecodedImage:
    """Uniform mid-grey plus faint noise, under a min-max window (which stretches the noise)."""
    top = 255 if image.pixels.dtype == np.uint8 else 2000
    noise = rng.normal(0.0, 0.01 * top, image.pixels.shape)
    pixels = np.clip(np.rint(top / 2 + noise), 0, top).astype(image.pixels.dtype)
    return dataclasses.replace(image, pixels=pixels, window=None, voi_lut=None)


def measure(package: str, count: int) -> None:
    """check_quality on fresh phantoms, as drawn and spoiled; prints one line per case."""
    manifest = load_package(REPO / "models" / package).manifest
    rng = np.random.default_rng(CHECK_SEEDS)
    cases = ("typical", "rotated 90", "rotated 270", "upside down", "near-blank")
    results: dict[str, list[QualityCheck]] = {case: [] for case in cases}
    for number in range(count):
        image = decode(MAKERS[package](number, CHECK_SEEDS + number))
        for case in cases:
            if case == "typical":
                shown = image
            elif case == "near-blank":
                shown = near_blank(image, rng)
            else:
                shown = turned(image, case)
            results[case].append(check_quality(manifest, prepare(shown, manifest.input)))
    for case, checks in results.items():
        print(f"{package:22} {case:12} {summary(checks)}", flush=True)


def summary(checks: list[QualityCheck]) -> str:
    """How many passed, why the others were held back, and the ranges of the statistics."""
    passed = sum(check.passed for check in checks)
    kinds = {"blank": "almost blank", "orientation": "appears to be", "typical": "does not look"}
    held = {
        kind: sum(any(words in r for r in check.reasons) for check in checks)
        for kind, words in kinds.items()
    }
    text = f"passed {passed:3}/{len(checks)}, held back as " + ", ".join(
        f"{kind} {number}" for kind, number in held.items()
    )
    for key in ("contrast", "correlation", "orientation_gap"):
        values = [check.statistics[key] for check in checks if key in check.statistics]
        if values:
            text += f"; {key} {min(values):.4f}..{max(values):.4f}"
    return text


def main_recipe() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--work", type=Path, help="folder for the drawn images (kept)")
    parser.add_argument("--count", type=int, default=300, help="profile images per package")
    parser.add_argument("--check", type=int, default=100, help="check images per package")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="appliance-profile-"))
    try:
        for package in MAKERS:
            dataset = draw(package, work / package, args.count)
            result = profile_package(REPO / "models" / package, dataset)
            for warning in result.warnings:
                print(f"warning: {warning}", file=sys.stderr)
            print(format_report(result), flush=True)
            write_goldens(result.package.folder)  # inputs made from the new typical image
        for package in MAKERS:
            measure(package, args.check)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main_recipe())
