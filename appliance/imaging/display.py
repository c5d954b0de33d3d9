"""Modality values -> display values in [0, 1]: VOI window or LUT, then MONOCHROME1 inversion.

A separate, optional step: decoding keeps modality values (Hounsfield units, raw detector
counts) because models choose their own windowing; the viewer and models trained on displayed
images call `to_display`. After it, 1.0 is white whatever the file's photometric interpretation.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_voi

from appliance.imaging._attributes import as_floats, lookup, tag_text
from appliance.imaging.image import DecodedImage, VoiLut, Window

FloatArray = npt.NDArray[np.float32]


class Voi(NamedTuple):
    window: Window | None
    lut: VoiLut | None
    notes: tuple[str, ...]


def apply_window(
    values: npt.NDArray[Any], centre: float, width: float, function: str = "LINEAR"
) -> FloatArray:
    """Map modality values through a VOI window to float32 in [0, 1] (PS3.3 C.11.2.1.2)."""
    window = Window(float(centre), float(width), function)
    x = np.asarray(values, dtype=np.float32)
    c, w = window.centre, window.width
    if window.function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    elif window.function == "LINEAR_EXACT":
        out = np.clip((x - c) / w + 0.5, 0.0, 1.0)
    elif w == 1:
        out = (x > c - 0.5).astype(np.float32)
    else:
        # Clipping the standard's middle segment gives exactly its piecewise definition.
        out = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)
    return np.asarray(out, dtype=np.float32)


def apply_voi_lut(values: npt.NDArray[Any], lut: VoiLut) -> FloatArray:
    """Map modality values through a VOI LUT to float32 in [0, 1] of the LUT's bit depth.

    Values below the first mapped value take the first entry, values past the end the last.
    """
    index = np.rint(np.asarray(values, dtype=np.float64)) - lut.first_mapped
    index = np.clip(index, 0, lut.table.size - 1).astype(np.intp)
    scale = float(2**lut.bits - 1)
    return np.asarray(lut.table[index] / scale, dtype=np.float32)


def full_range(values: npt.NDArray[Any]) -> FloatArray:
    """Min..max of the values to 0..1: the default when neither caller nor file gives a window."""
    x = np.asarray(values, dtype=np.float32)
    low, high = float(x.min()), float(x.max())
    if high <= low:
        return np.zeros(x.shape, dtype=np.float32)
    return np.asarray((x - low) / (high - low), dtype=np.float32)


def to_display(image: DecodedImage, window: Window | None = None) -> FloatArray:
    """Display values in [0, 1] (1 = white), same shape as `image.pixels`.

    Grayscale VOI, first that applies: the `window` given, the file's VOI LUT, the file's
    window, the full value range. MONOCHROME1 is then inverted, so a MONOCHROME1 image and its
    MONOCHROME2 twin display alike. RGB is scaled from 0..255.
    """
    if image.photometric == "RGB":
        return np.asarray(image.pixels / np.float32(255.0), dtype=np.float32)
    shown = _apply_voi(image, window)
    if image.inverted:
        shown = np.float32(1.0) - shown
    return shown


def _apply_voi(image: DecodedImage, window: Window | None) -> FloatArray:
    if window is not None:
        return apply_window(image.pixels, window.centre, window.width, window.function)
    if image.voi_lut is not None:
        return apply_voi_lut(image.pixels, image.voi_lut)
    if image.window is not None:
        file_window = image.window
        return apply_window(
            image.pixels, file_window.centre, file_window.width, file_window.function
        )
    return full_range(image.pixels)


def voi_from_dataset(ds: Dataset, frame: int = 0) -> Voi:
    """The file's first VOI window and VOI LUT; unusable ones are left out with a note."""
    window, window_notes = _file_window(ds, frame)
    lut, lut_notes = _file_voi_lut(ds)
    return Voi(window, lut, window_notes + lut_notes)


def _file_window(ds: Dataset, frame: int) -> tuple[Window | None, tuple[str, ...]]:
    centre = lookup(ds, frame, "FrameVOILUTSequence", "WindowCenter")
    width = lookup(ds, frame, "FrameVOILUTSequence", "WindowWidth")
    if centre is None or width is None or centre == "" or width == "":
        return None, ()
    centres, widths = as_floats(centre), as_floats(width)
    function = lookup(ds, frame, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR"
    try:
        if centres is None or widths is None:
            raise ValueError("not numeric")
        return Window(centres[0], widths[0], str(function)), ()
    except ValueError as exc:
        note = (
            f"{tag_text('WindowCenter')}/{tag_text('WindowWidth')} "
            f"{centre!r}/{width!r} unusable ({exc}); ignored"
        )
        return None, (note,)


def _file_voi_lut(ds: Dataset) -> tuple[VoiLut | None, tuple[str, ...]]:
    items = ds.get("VOILUTSequence")
    if not items:
        return None, ()
    try:
        count, first, bits = (int(v) for v in items[0].LUTDescriptor)
        count = count or 2**16  # PS3.3 C.11.2.1.1: 0 means 65536 entries
        # pydicom's reader handles the US/OW ambiguity and byte order of LUT Data.
        table = apply_voi(np.arange(first, first + count, dtype=np.int64), ds, 0)
        return VoiLut(first, bits, np.asarray(table, dtype=np.uint16)), ()
    except (AttributeError, TypeError, ValueError, NotImplementedError, struct.error) as exc:
        return None, (f"{tag_text('VOILUTSequence')} unusable ({exc}); ignored",)
