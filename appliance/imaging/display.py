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
    return _window(values, Window(float(centre), float(width), function), invert=False)


def _window(values: npt.NDArray[Any], window: Window, invert: bool) -> FloatArray:
    """`apply_window`, optionally followed by 1 - value (MONOCHROME1), in one new float32 array.

    Linear functions are a multiply-add and a clip, all in place in float32: no float64 and no
    full-size temporaries.
    """
    c, w = window.centre, window.width
    if window.function == "SIGMOID":
        x = np.asarray(values, dtype=np.float32)
        out = np.asarray(1.0 / (1.0 + np.exp(-4.0 * (x - c) / w)), dtype=np.float32)
        return np.subtract(np.float32(1.0), out, out=out) if invert else out
    if window.function == "LINEAR_EXACT":
        scale, offset = 1.0 / w, 0.5 - c / w
    elif w == 1:
        x = np.asarray(values, dtype=np.float32)
        return np.asarray((x <= c - 0.5) if invert else (x > c - 0.5), dtype=np.float32)
    else:
        # Clipping the standard's middle segment gives exactly its piecewise definition.
        scale, offset = 1.0 / (w - 1), 0.5 - (c - 0.5) / (w - 1)
    if invert:  # 1 - clip(a x + b) == clip(-a x + 1 - b)
        scale, offset = -scale, 1.0 - offset
    out = _scaled(values, scale, offset)
    return np.clip(out, 0.0, 1.0, out=out)


def _scaled(values: npt.NDArray[Any], scale: float, offset: float) -> FloatArray:
    """`values * scale + offset` as a new float32 array, without temporaries."""
    out: FloatArray = np.multiply(values, np.float32(scale), dtype=np.float32)
    out += np.float32(offset)
    return out


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
    return _full_range(values, invert=False)


def _full_range(values: npt.NDArray[Any], invert: bool) -> FloatArray:
    x = np.asarray(values)
    low, high = float(np.float32(x.min())), float(np.float32(x.max()))
    if high <= low:
        return np.full(x.shape, 1.0 if invert else 0.0, dtype=np.float32)
    out: FloatArray = np.subtract(x, np.float32(low), dtype=np.float32)
    out /= np.float32(high - low)
    return np.subtract(np.float32(1.0), out, out=out) if invert else out


def to_display(image: DecodedImage, window: Window | None = None) -> FloatArray:
    """Display values in [0, 1] (1 = white), same shape as `image.pixels`.

    Grayscale VOI, first that applies: the `window` given, the file's VOI LUT, the file's
    window, the full value range. MONOCHROME1 is then inverted, so a MONOCHROME1 image and its
    MONOCHROME2 twin display alike. RGB is scaled from 0..255.
    """
    if image.photometric == "RGB":
        scaled: FloatArray = np.divide(image.pixels, np.float32(255.0), dtype=np.float32)
        return scaled
    invert = image.inverted
    if window is None and image.voi_lut is None:
        window = image.window
    if window is not None:
        return _window(image.pixels, window, invert)
    if image.voi_lut is not None:
        shown = apply_voi_lut(image.pixels, image.voi_lut)
        return np.subtract(np.float32(1.0), shown, out=shown) if invert else shown
    return _full_range(image.pixels, invert)


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
