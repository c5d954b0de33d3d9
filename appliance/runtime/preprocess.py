"""Image -> model input tensor as the manifest says, and the geometry to map results back.

Order of work, as `appliance.phantoms.preprocess` (the demo models' training reference) and
chosen for speed on large radiographs: frame, optional ultrasound crop, VOI window (via
`imaging.to_display`, or the stored values scaled by bit depth for `window: raw`) at full
resolution in float32, then one resize to model size (`input.interpolation`; `area` by default,
as the demo models were trained), and only then channel conversion, padding and mean/std on the
small image. Nothing is done in float64.

`Prepared.tensor` is always frames x C x H x W, whatever the graph's layout: the quality check,
occlusion and calibration read it that way, and `to_layout` gives an NHWC graph its own order
at the last moment.

Coordinates: continuous pixel coordinates in which pixel i covers [i, i+1). A point at image
pixel centre (x, y) lands at model pixel centre `Geometry.to_model(x, y)`; heatmaps and masks
come back with `Geometry.map_to_image`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from appliance.imaging import (
    DecodedImage,
    Region,
    SpacingSource,
    crop_to_region,
    full_range,
    to_display,
)
from appliance.runtime.errors import InputError
from appliance.runtime.manifest import InputSpec

FloatArray = npt.NDArray[np.float32]
ImageInput = DecodedImage | npt.NDArray[Any]
Box = tuple[int, int, int, int]  # x0, y0, width, height


@dataclass(frozen=True)
class Geometry:
    """Where the model's input came from in the image.

    `crop` is the part of the image fed to the model (x0, y0, width, height; the whole image
    unless cropped to the ultrasound region). `content` is where that part landed in the model
    input after resizing (left, top, width, height); the rest of the model input is padding.
    """

    image_shape: tuple[int, int]
    crop: Box
    content: Box
    model_shape: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) model pixels per image pixel."""
        return self.content[2] / self.crop[2], self.content[3] / self.crop[3]

    def to_model(self, x: float, y: float) -> tuple[float, float]:
        """Image pixel coordinates -> model input pixel coordinates."""
        sx, sy = self.scale
        return (
            (x + 0.5 - self.crop[0]) * sx + self.content[0] - 0.5,
            (y + 0.5 - self.crop[1]) * sy + self.content[1] - 0.5,
        )

    def to_image(self, x: float, y: float) -> tuple[float, float]:
        """Model input pixel coordinates -> image pixel coordinates."""
        sx, sy = self.scale
        return (
            (x + 0.5 - self.content[0]) / sx + self.crop[0] - 0.5,
            (y + 0.5 - self.content[1]) / sy + self.crop[1] - 0.5,
        )

    def scaled(self, factor: float) -> Geometry:
        """The same mapping onto a copy of the image resized by `factor` (e.g. a preview)."""
        if factor == 1.0:
            return self
        rows, columns = self.image_shape
        x0, y0, width, height = self.crop
        return Geometry(
            image_shape=(max(1, round(rows * factor)), max(1, round(columns * factor))),
            crop=(
                round(x0 * factor),
                round(y0 * factor),
                max(1, round(width * factor)),
                max(1, round(height * factor)),
            ),
            content=self.content,
            model_shape=self.model_shape,
        )

    def map_to_image(self, maps: FloatArray) -> FloatArray:
        """(K, h, w) maps over the model input (any resolution) -> (K, rows, columns) maps over
        the image: bilinear, letterbox padding dropped, zero outside the crop."""
        count, height, width = maps.shape
        matrix = self._inverse_matrix(height, width)
        x0, y0, crop_w, crop_h = self.crop
        out = np.zeros((count, *self.image_shape), dtype=np.float32)
        for index in range(count):
            out[index, y0 : y0 + crop_h, x0 : x0 + crop_w] = cv2.warpAffine(
                np.ascontiguousarray(maps[index], dtype=np.float32),
                matrix,
                (crop_w, crop_h),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REPLICATE,
            )
        return out

    def _inverse_matrix(self, height: int, width: int) -> npt.NDArray[np.float64]:
        """Affine map from a crop pixel (u, v) to the pixel of a (height, width) model map."""
        fx, fy = width / self.model_shape[1], height / self.model_shape[0]
        sx, sy = self.scale
        left, top = self.content[0], self.content[1]
        return np.array(
            [
                [fx * sx, 0.0, fx * (0.5 * sx + left) - 0.5],
                [0.0, fy * sy, fy * (0.5 * sy + top) - 0.5],
            ]
        )


@dataclass(frozen=True, eq=False)
class Prepared:
    """One image ready for a model: a tensor per selected frame and what maps results back.

    `display(i)` gives the i-th selected frame of the *whole* image as uint8 display values
    (for overlays), computed on first use: scoring never needs it, pictures do. `frames` are
    the frame numbers the tensors came from.
    """

    tensor: FloatArray
    geometry: Geometry
    frames: tuple[int, ...]
    display_of: Callable[[int], npt.NDArray[np.uint8]] = field(repr=False)
    spacing_mm: tuple[float, float] | None = None
    spacing_source: SpacingSource = SpacingSource.NONE
    notes: tuple[str, ...] = ()
    _displays: dict[int, npt.NDArray[np.uint8]] = field(default_factory=dict, repr=False)

    def display(self, position: int) -> npt.NDArray[np.uint8]:
        """The whole frame at `position` (of `frames`) as uint8 display values, cached."""
        if position not in self._displays:
            self._displays[position] = self.display_of(position)
        return self._displays[position]

    @property
    def displays(self) -> tuple[npt.NDArray[np.uint8], ...]:
        return tuple(self.display(position) for position in range(len(self.frames)))


def prepare(image: ImageInput, spec: InputSpec) -> Prepared:
    """The input tensor (frames x C x H x W, float32) for `image` under `spec`."""
    if isinstance(image, DecodedImage):
        return _prepare_decoded(image, spec)
    display = array_display(np.asarray(image), spec.window)
    whole = (0, 0, display.shape[1], display.shape[0])
    tensor, geometry = to_tensor(display, whole, display.shape[:2], spec)
    return Prepared(
        tensor=tensor[np.newaxis],
        geometry=geometry,
        frames=(0,),
        display_of=lambda position: _to_uint8(display),
    )


def _prepare_decoded(image: DecodedImage, spec: InputSpec) -> Prepared:
    positions = spec.select_frames(image.pixels.shape[0])
    region, notes = _region(image, spec)
    tensors = []
    geometry: Geometry | None = None
    for position in positions:
        frame = single_frame(image, position, spec.window)
        if region is None:
            shown, crop = _display(frame, spec.window), (0, 0, image.columns, image.rows)
        else:  # cropped before windowing: a min-max window then sees the scan area only
            shown = _display(_crop(frame, region), spec.window)
            crop = (region.x0, region.y0, region.columns, region.rows)
        tensor, geometry = to_tensor(shown, crop, (image.rows, image.columns), spec)
        tensors.append(tensor)
    assert geometry is not None  # select_frames always gives at least one frame

    def display_of(index: int) -> npt.NDArray[np.uint8]:
        return whole_display(single_frame(image, positions[index], spec.window))

    return Prepared(
        tensor=np.stack(tensors),
        geometry=geometry,
        frames=tuple(image.frame_indices[p] for p in positions),
        display_of=display_of,
        spacing_mm=image.spacing_mm,
        spacing_source=image.spacing_source,
        notes=notes,
    )


def whole_display(frame: DecodedImage) -> npt.NDArray[np.uint8]:
    """A one-frame image as uint8 display values. 8-bit RGB already is (its display is
    value / 255), so it is returned as it is rather than through float and back."""
    if frame.photometric == "RGB" and frame.pixels.dtype == np.uint8:
        return np.asarray(frame.pixels[0])
    return _to_uint8(_display(frame))


def single_frame(image: DecodedImage, position: int, window: str) -> DecodedImage:
    """One frame of `image`, with the file's VOI dropped when the manifest says `minmax`."""
    frame = dataclasses.replace(
        image,
        pixels=image.pixels[position : position + 1],
        frame_indices=(image.frame_indices[position],),
    )
    if window == "minmax":
        frame = dataclasses.replace(frame, window=None, voi_lut=None)
    return frame


def _display(frame: DecodedImage, window: str = "file") -> FloatArray:
    if window == "raw":
        return raw_display(frame)
    shown: FloatArray = to_display(frame)[0]
    return shown


def raw_display(frame: DecodedImage) -> FloatArray:
    """The frame's values scaled by bit depth: value / (2**BitsStored - 1), signed values
    shifted by 2**(BitsStored - 1) first; 8-bit RGB / 255.

    Many third-party models were trained on PNG exports of the raw pixels, without any VOI
    window. MONOCHROME1 is inverted (1 - value), as every display does, so that dense tissue
    stays bright. The decoder gives modality values; they equal the stored values unless the
    file has a Modality LUT (rescale), and a value outside the bit depth's range is refused.
    """
    pixels = frame.pixels[0]
    if frame.photometric == "RGB":
        rgb: FloatArray = np.multiply(pixels, np.float32(1.0 / 255.0), dtype=np.float32)
        return rgb
    bits = frame.bits_stored
    low = -(2.0 ** (bits - 1)) if frame.signed else 0.0
    top = 2.0**bits - 1.0
    shifted = np.subtract(pixels, np.float32(low), dtype=np.float32)
    least, most = float(np.min(shifted)), float(np.max(shifted))
    if least < 0.0 or most > top:
        value = least + low if least < 0.0 else most + low
        raise InputError(
            f"window raw: value {value:g} is outside the range of {bits}-bit "
            f"{'signed' if frame.signed else 'unsigned'} stored values (the file's Modality "
            "LUT changed them): use window: file or minmax for such images"
        )
    scaled: FloatArray = np.multiply(shifted, np.float32(1.0 / top), dtype=np.float32)
    if frame.source_photometric == "MONOCHROME1":
        scaled = np.subtract(np.float32(1.0), scaled, dtype=np.float32)
    return scaled


def array_display(array: npt.NDArray[Any], window: str = "file") -> FloatArray:
    """Display values in [0, 1] of a plain HxW (gray) or HxWx3 (RGB) picture.

    uint8 and uint16 are scaled from their full range; floats must already be in [0, 1].
    With `window="minmax"` a gray picture is stretched to its own min..max.
    """
    gray = array.ndim == 2
    if not (gray or (array.ndim == 3 and array.shape[2] == 3)):
        raise InputError(f"a picture must be HxW (gray) or HxWx3 (RGB), got shape {array.shape}")
    if gray and window == "minmax":
        return full_range(array)
    if array.dtype in (np.uint8, np.uint16):
        scale = np.float32(1.0 / np.iinfo(array.dtype).max)
        scaled: FloatArray = np.multiply(array, scale, dtype=np.float32)
        return scaled
    if array.dtype.kind == "f":
        low, high = float(np.min(array)), float(np.max(array))
        if low < 0.0 or high > 1.0:
            raise InputError(f"a float picture must hold values in [0, 1], got {low}..{high}")
        return np.asarray(array, dtype=np.float32)
    raise InputError(f"a picture must be uint8, uint16 or float, got {array.dtype}")


def read_picture(path: Path) -> npt.NDArray[Any]:
    """A PNG or JPEG file as HxW gray or HxWx3 RGB (uint8 or uint16); alpha is dropped."""
    data = np.fromfile(path, dtype=np.uint8)
    picture = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if picture is None:
        raise InputError("not a readable PNG or JPEG image")  # the caller names the file
    if picture.ndim == 3 and picture.shape[2] == 4:
        return cv2.cvtColor(picture, cv2.COLOR_BGRA2RGB)
    if picture.ndim == 3 and picture.shape[2] == 3:
        return cv2.cvtColor(picture, cv2.COLOR_BGR2RGB)
    if picture.ndim == 3 and picture.shape[2] == 1:
        return picture[:, :, 0]
    return picture


def to_tensor(
    part: FloatArray, crop: Box, image_shape: tuple[int, ...], spec: InputSpec
) -> tuple[FloatArray, Geometry]:
    """(C, H, W) float32 input from display values `part`, which came from the `crop` box of an
    image of `image_shape` (rows, columns); and the geometry to map results back."""
    if spec.resize == "crop":
        part, crop = centre_crop(part, crop, spec)
    width, height = crop[2], crop[3]
    content = _fit(width, height, spec)
    left, top, new_w, new_h = content
    resized = resize(part, new_w, new_h, spec.interpolation)
    planes = _channels(resized, spec.channels)
    tensor = np.empty((spec.channels, spec.height, spec.width), dtype=np.float32)
    for channel, plane in enumerate(planes):
        mean, std = np.float32(spec.mean[channel]), np.float32(spec.std[channel])
        tensor[channel] = -mean / std  # letterbox padding: black before normalisation
        tensor[channel, top : top + new_h, left : left + new_w] = (plane - mean) / std
    geometry = Geometry(
        image_shape=(int(image_shape[0]), int(image_shape[1])),
        crop=crop,
        content=content,
        model_shape=(spec.height, spec.width),
    )
    return tensor, geometry


# OpenCV flags of `input.interpolation`; `area` is handled by `resize` (area when shrinking).
_INTERPOLATION = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
}


def resize(part: FloatArray, width: int, height: int, interpolation: str = "area") -> FloatArray:
    """`part` resized to width x height as `input.interpolation` says (see models/README.md).

    `nearest` is OpenCV's INTER_NEAREST: model pixel x takes source pixel
    min(floor(x * scale), source_width - 1) with scale = 1 / (width / source_width) in double
    precision (so where x * source_width / width is a whole number it can take the pixel
    before: 850 -> 150 takes source pixel 50 for x = 9), and the same for rows; `area`
    averages the source pixels each model pixel covers when shrinking both ways (bilinear
    otherwise, as before the choice existed); `linear` and `cubic` are OpenCV's bilinear and
    bicubic with half-pixel centres (cubic may overshoot [0, 1] slightly at sharp edges).
    """
    rows, columns = part.shape[:2]
    if (rows, columns) == (height, width):
        return np.asarray(part, dtype=np.float32)
    if interpolation == "area":
        if width <= columns and height <= rows:
            return shrink_area(part, width, height)
        flag = cv2.INTER_LINEAR
    else:
        flag = _INTERPOLATION[interpolation]
    return np.asarray(cv2.resize(part, (width, height), interpolation=flag), dtype=np.float32)


def centre_crop(part: FloatArray, crop: Box, spec: InputSpec) -> tuple[FloatArray, Box]:
    """The largest centred part of `part` with the model input's aspect, and its box in the
    image: `resize: crop` then stretches it to the model size (the same as resizing the
    shorter side to the model's and cutting the longer one in the middle)."""
    height, width = part.shape[:2]
    scale = max(spec.width / width, spec.height / height)
    keep_w = min(width, max(1, round(spec.width / scale)))
    keep_h = min(height, max(1, round(spec.height / scale)))
    dx, dy = (width - keep_w) // 2, (height - keep_h) // 2
    box = (crop[0] + dx, crop[1] + dy, keep_w, keep_h)
    return part[dy : dy + keep_h, dx : dx + keep_w], box


def to_layout(batch: FloatArray, layout: str) -> FloatArray:
    """A batch of N x C x H x W tensors in the graph's `input.layout` (NHWC: N x H x W x C)."""
    if layout == "NHWC":
        return np.ascontiguousarray(batch.transpose(0, 2, 3, 1))
    return batch


def graph_sample_shape(spec: InputSpec) -> tuple[int, int, int]:
    """One sample's shape as the graph takes it: (C, H, W) for NCHW, (H, W, C) for NHWC."""
    if spec.layout == "NHWC":
        return spec.height, spec.width, spec.channels
    return spec.channels, spec.height, spec.width


def shrink_area(part: FloatArray, width: int, height: int) -> FloatArray:
    """`cv2.resize(part, (width, height), INTER_AREA)` for a shrink, one axis at a time.

    Area averaging is separable, so two 1-D passes give the 2-D result (to float32 rounding,
    ~3e-7). OpenCV's INTER_AREA has a fast path only when both factors are integers; a
    2048 x 1905 radiograph to 256 x 238 (factors 8 and 8.004) takes the slow one, 7 ms. The
    axis with the integer factor goes first (fast path, full image), the other then works on
    an image that is already that many times smaller: 1.7 ms.
    """
    rows, columns = part.shape[:2]
    if (rows, columns) == (height, width):
        return np.asarray(part, dtype=np.float32)
    integer_x_only = columns % width == 0 and rows % height != 0
    first = (width, rows) if integer_x_only else (columns, height)  # integer factor first
    step = cv2.resize(part, first, interpolation=cv2.INTER_AREA)
    if step.shape[:2] != (height, width):
        step = cv2.resize(step, (width, height), interpolation=cv2.INTER_AREA)
    return np.asarray(step, dtype=np.float32)


def _fit(width: int, height: int, spec: InputSpec) -> Box:
    """Where a width x height picture goes in the model input: (left, top, width, height)."""
    if spec.resize in ("stretch", "crop"):  # crop: `centre_crop` already gave the aspect
        return 0, 0, spec.width, spec.height
    scale = min(spec.width / width, spec.height / height)
    new_w = min(spec.width, max(1, round(width * scale)))
    new_h = min(spec.height, max(1, round(height * scale)))
    return (spec.width - new_w) // 2, (spec.height - new_h) // 2, new_w, new_h


def _channels(resized: FloatArray, channels: int) -> list[FloatArray]:
    """Planes for a 1- or 3-channel model from a gray (HxW) or RGB (HxWx3) picture."""
    if resized.ndim == 2:
        return [resized] * channels
    if channels == 1:
        return [np.asarray(cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY), dtype=np.float32)]
    return [resized[:, :, index] for index in range(3)]


def _region(image: DecodedImage, spec: InputSpec) -> tuple[Region | None, tuple[str, ...]]:
    """The ultrasound region to crop to, when the manifest asks for one and the image has it."""
    if not spec.crop_to_ultrasound_region:
        return None, ()
    if image.region is None:
        return None, ("no ultrasound region in the image: the whole frame was used",)
    return image.region, ()


def _crop(frame: DecodedImage, region: Region) -> DecodedImage:
    try:
        return crop_to_region(frame, region)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def _to_uint8(display: FloatArray) -> npt.NDArray[np.uint8]:
    """Display values in [0, 1] -> uint8 0..255, rounded (cv2: one pass, no temporaries)."""
    return np.asarray(cv2.convertScaleAbs(display, alpha=255.0), dtype=np.uint8)
