"""Reference preprocessing: a DICOM image to the input the demo packages expect.

The runtime owns preprocessing on the box. This is the reference the demo models were trained
with and are checked against, written to the words of their manifests, so the packages can be
validated before (and independently of) the runtime:

- decode with `appliance.imaging.decode` (first frame, or the frame asked for);
- `window: file`: `to_display` (the file's VOI LUT or window, else the full range; MONOCHROME1
  inverted), giving display values in [0, 1] with 1 = white;
- `crop_to_ultrasound_region`: `crop_to_region` before anything else;
- `channels: 1` from RGB: ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B), as OpenCV does;
- `resize: letterbox`: scale to fit keeping the aspect ratio (area averaging when shrinking,
  bilinear when enlarging), centre, pad with display value 0 (black);
- then (x - mean) / std.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from pydicom.dataset import Dataset

from appliance.imaging import DecodedImage, crop_to_region, decode, to_display
from appliance.phantoms._draw import FloatArray

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Letterbox:
    """Where a source image sits inside the model input, to map masks and heatmaps both ways."""

    source_rows: int
    source_columns: int
    rows: int
    columns: int
    top: int
    left: int
    inner_rows: int
    inner_columns: int

    def forward(self, image: FloatArray, pad: float = 0.0) -> FloatArray:
        """A source-sized 2-D array placed into the input frame."""
        shrinking = self.inner_rows < self.source_rows
        method = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        inner = cv2.resize(
            np.asarray(image, dtype=np.float32),
            (self.inner_columns, self.inner_rows),
            interpolation=method,
        )
        out = np.full((self.rows, self.columns), pad, dtype=np.float32)
        out[self.top : self.top + self.inner_rows, self.left : self.left + self.inner_columns] = (
            inner
        )
        return out

    def inverse(self, array: FloatArray) -> FloatArray:
        """An input-frame 2-D array (a mask, an upsampled heatmap) back on the source pixels."""
        inner = array[
            self.top : self.top + self.inner_rows, self.left : self.left + self.inner_columns
        ]
        resized = cv2.resize(
            np.asarray(inner, dtype=np.float32),
            (self.source_columns, self.source_rows),
            interpolation=cv2.INTER_LINEAR,
        )
        return np.asarray(resized, dtype=np.float32)

    @property
    def inner(self) -> tuple[slice, slice]:
        """Row and column slices of the input frame that hold the image (not the padding)."""
        return (
            slice(self.top, self.top + self.inner_rows),
            slice(self.left, self.left + self.inner_columns),
        )


def letterbox_for(source_rows: int, source_columns: int, rows: int, columns: int) -> Letterbox:
    """The letterbox placement of a source_rows x source_columns image in rows x columns."""
    scale = min(rows / source_rows, columns / source_columns)
    inner_rows = min(rows, max(1, round(source_rows * scale)))
    inner_columns = min(columns, max(1, round(source_columns * scale)))
    return Letterbox(
        source_rows=source_rows,
        source_columns=source_columns,
        rows=rows,
        columns=columns,
        top=(rows - inner_rows) // 2,
        left=(columns - inner_columns) // 2,
        inner_rows=inner_rows,
        inner_columns=inner_columns,
    )


def letterbox(image: FloatArray, rows: int, columns: int) -> tuple[FloatArray, Letterbox]:
    """`image` (2-D display values) letterboxed into rows x columns, with its placement."""
    placement = letterbox_for(int(image.shape[0]), int(image.shape[1]), rows, columns)
    return placement.forward(image), placement


def gray_display(image: DecodedImage, frame: int = 0) -> FloatArray:
    """One frame as 2-D display values in [0, 1]: windowed grayscale, or BT.601 luma of RGB."""
    shown = to_display(image)[frame]
    if image.photometric == "RGB":
        shown = shown @ _LUMA
    return np.asarray(shown, dtype=np.float32)


def chest_model_input(
    ds: Dataset, *, size: int = 256, mean: float = 0.5, std: float = 0.25
) -> tuple[FloatArray, Letterbox]:
    """1 x 1 x size x size input for the chest model, and where the image went in it."""
    shown = gray_display(decode(ds, index=0))
    boxed, placement = letterbox(shown, size, size)
    return _normalise(boxed, mean, std), placement


def ultrasound_model_input(
    ds: Dataset, *, frame: int = 0, size: int = 256, mean: float = 0.5, std: float = 0.25
) -> tuple[FloatArray, Letterbox]:
    """1 x 1 x size x size input for the ultrasound model: `frame`, cropped to the scan region.

    The placement maps the output back onto the cropped region's pixels (the region's spacing
    then turns a mask into mm²). Raises ValueError when the image has no ultrasound region.
    """
    cropped = crop_to_region(decode(ds, index=frame))
    boxed, placement = letterbox(gray_display(cropped), size, size)
    return _normalise(boxed, mean, std), placement


def _normalise(boxed: FloatArray, mean: float, std: float) -> FloatArray:
    scaled = (boxed - np.float32(mean)) / np.float32(std)
    return np.asarray(scaled[None, None], dtype=np.float32)
