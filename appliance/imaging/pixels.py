"""DICOM -> pixels: any image the receiver accepts, as modality values or RGB, with its spacing.

Grayscale frames become float32 *modality* values (Rescale Slope/Intercept or the Modality LUT
Sequence applied) and stay that way: VOI windowing and MONOCHROME1 inversion are display
steps (`appliance.imaging.display.to_display`), because models choose their own windowing.
Colour frames become uint8 RGB: YBR_* and PALETTE COLOR are converted here. Compressed pixel
data is decoded by pydicom's pixel decoders (pylibjpeg plugins, pyjpegls); a file that cannot
be decoded raises `DecodeError` saying why.

Nothing is decoded before the sizes are checked, because a file can reach the spool without
the receiver's checks (start-up reconcile indexes files found there; older versions took
anything): the declared image against `receiver.max_image_megapixels` (`limits.check_shape`),
and each compressed frame's own header against Rows, Columns and Samples per Pixel
(`codestream`), since decoders allocate what the codestream declares.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import Decoder, get_decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut
from pydicom.uid import UID, AllTransferSyntaxes

from appliance.errors import RejectedInput
from appliance.imaging._attributes import as_floats, lookup, plain_error, tag_text
from appliance.imaging.codestream import COMPRESSED_SYNTAXES, check_frame_size
from appliance.imaging.display import Voi, voi_from_dataset
from appliance.imaging.geometry import describe_geometry
from appliance.imaging.image import DecodedImage, DecodeError, Photometric
from appliance.imaging.limits import DEFAULT_LIMITS, Limits, check_shape, image_shape

__all__ = ["DecodeError", "decode", "frame_count", "select_frames", "supported_transfer_syntaxes"]

Source = Dataset | str | os.PathLike[str]

_REQUIRED = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
)
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_SAMPLES = {
    "MONOCHROME1": 1,
    "MONOCHROME2": 1,
    "PALETTE COLOR": 1,
    "RGB": 3,
    "YBR_FULL": 3,
    "YBR_FULL_422": 3,
    "YBR_ICT": 3,
    "YBR_RCT": 3,
}
# JPEG, JPEG-LS and JPEG 2000 streams all end with the marker FF D9 (EOI / EOC). Libjpeg
# decodes a truncated stream without complaint, so its absence is checked before decoding.
_END_MARKER = b"\xff\xd9"
_TAIL = 16  # padding after the marker seen in the wild: 0x00 or 0xFF to an even length
# What pydicom and its plugins raise for pixel data they cannot make sense of.
_DECODE_FAILURES = (
    ValueError,
    RuntimeError,
    NotImplementedError,
    AttributeError,
    IndexError,
    struct.error,
)


def supported_transfer_syntaxes() -> frozenset[UID]:
    """Transfer syntaxes whose pixel data can be decoded with the plugins installed now.

    The receiver can compare this with what it accepts, so an accepted image never becomes
    an undecodable job.
    """
    supported = set()
    for uid in AllTransferSyntaxes:
        try:
            if get_decoder(uid).is_available:
                supported.add(UID(uid))
        except NotImplementedError:
            continue
    return frozenset(supported)


def decode(
    source: Source, *, index: int | None = None, every: int = 1, limits: Limits = DEFAULT_LIMITS
) -> DecodedImage:
    """Decode the selected frames of a DICOM image (see `select_frames`): all by default.

    Raises DecodeError naming the cause: the transfer syntax, a missing attribute, a size past
    `limits` (the receiver's defaults unless the caller passes its settings) or a codestream
    larger than its header, or a corrupt/truncated pixel stream. Metadata that only describes
    the image (spacing, region, window) is left out with a note in `notes` when unusable,
    rather than refusing the image.
    """
    try:
        return _decode(source, index, every, limits)
    except (DecodeError, MemoryError, OSError):
        raise  # out of memory or a disk error may pass (retried); a broken file will not
    except Exception as exc:
        # Broken or hostile files make pydicom raise many kinds of error (a wrong value
        # length, an overflowing number, a corrupt deflate stream): the file is at fault, and
        # trying again cannot help.
        raise DecodeError(f"the image cannot be decoded: {plain_error(exc)}") from exc


def _decode(source: Source, index: int | None, every: int, limits: Limits) -> DecodedImage:
    ds = _read(source)
    syntax = _transfer_syntax(ds)
    decoder = _decoder(syntax)
    photometric = _check_image_pixel(ds)
    _check_declared_size(ds, limits)
    indices = select_frames(frame_count(ds), index=index, every=every)
    if syntax in COMPRESSED_SYNTAXES:
        _check_compressed_frames(ds, syntax, indices)
    pixels = _decode_frames(ds, decoder, indices)
    kind: Photometric = "RGB" if pixels.ndim == 4 else "MONOCHROME"
    geometry = describe_geometry(ds, int(ds.Rows), int(ds.Columns), indices[0])
    voi = voi_from_dataset(ds, indices[0]) if kind == "MONOCHROME" else Voi(None, None, ())
    return DecodedImage(
        pixels=pixels,
        photometric=kind,
        source_photometric=photometric,
        transfer_syntax=str(syntax),
        frame_count=frame_count(ds),
        frame_indices=indices,
        bits_stored=int(ds.BitsStored),
        signed=int(ds.PixelRepresentation) == 1,
        spacing_mm=geometry.spacing_mm,
        spacing_source=geometry.spacing_source,
        window=voi.window,
        voi_lut=voi.lut,
        region=geometry.region,
        notes=geometry.notes + voi.notes,
    )


def select_frames(frame_count: int, *, index: int | None = None, every: int = 1) -> tuple[int, ...]:
    """Frame numbers (0-based) to decode: one `index` (negative counts from the end), or
    every `every`-th frame starting with the first (every=1: all frames).

    Cine loops run to hundreds of frames; a model usually needs one or a sample of them.
    """
    if frame_count < 1:
        raise ValueError(f"an image has at least one frame, got frame_count={frame_count}")
    if every < 1:
        raise ValueError(f"every must be 1 or more, got {every}")
    if index is None:
        return tuple(range(0, frame_count, every))
    if every != 1:
        raise ValueError("give either index or every, not both")
    if not -frame_count <= index < frame_count:
        raise ValueError(f"frame {index} is out of range: the image has {frame_count} frame(s)")
    return (index % frame_count,)


def frame_count(ds: Dataset) -> int:
    """Number of Frames (0028,0008), 1 when absent; DecodeError when it is not a positive count."""
    value = ds.get("NumberOfFrames")
    if value is None or value == "":
        return 1
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise DecodeError(f"{tag_text('NumberOfFrames')} value {value!r} is not a positive count")
    return count


def _read(source: Source) -> Dataset:
    if isinstance(source, Dataset):
        return source
    try:
        return dcmread(os.fspath(source))
    except (InvalidDicomError, EOFError, ValueError, struct.error) as exc:
        raise DecodeError(f"not a readable DICOM file: {plain_error(exc)}") from exc


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID") if meta is not None else None
    if not value:
        raise DecodeError(
            f"missing required attribute {tag_text('TransferSyntaxUID')} in the file meta"
        )
    return UID(str(value))


def _syntax_text(syntax: UID) -> str:
    return (
        f"{syntax} (unknown UID)" if syntax.name == str(syntax) else f"'{syntax.name}' ({syntax})"
    )


def _decoder(syntax: UID) -> Decoder:
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise DecodeError(
            f"unsupported transfer syntax {_syntax_text(syntax)}: no pixel decoder exists for it"
        ) from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
        raise DecodeError(
            f"no decoder installed for transfer syntax {_syntax_text(syntax)}: needs {missing}"
        )
    return decoder


def _check_image_pixel(ds: Dataset) -> str:
    """The Image Pixel attributes decoding needs; returns the Photometric Interpretation."""
    if "PixelData" not in ds:
        floats = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        if floats:
            raise DecodeError(f"{tag_text(floats[0])} is not supported, only integer Pixel Data")
        raise DecodeError(f"missing required attribute {tag_text('PixelData')}")
    for keyword in _REQUIRED:
        if ds.get(keyword) is None or ds.get(keyword) == "":
            raise DecodeError(f"missing required attribute {tag_text(keyword)}")
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if photometric not in _SAMPLES:
        raise DecodeError(f"unsupported {tag_text('PhotometricInterpretation')} {photometric!r}")
    if int(ds.SamplesPerPixel) != _SAMPLES[photometric]:
        raise DecodeError(
            f"{tag_text('SamplesPerPixel')} is {ds.SamplesPerPixel}, "
            f"but {photometric} needs {_SAMPLES[photometric]}"
        )
    return photometric


def _check_declared_size(ds: Dataset, limits: Limits) -> None:
    """The receiver's bound on Rows x Columns x Frames, before anything is allocated."""
    try:
        check_shape(image_shape(ds), limits)
    except RejectedInput as exc:
        raise DecodeError(f"the image is not decoded: {exc}") from exc


def _check_compressed_frames(ds: Dataset, syntax: UID, indices: tuple[int, ...]) -> None:
    """Each selected frame ends with its end marker and declares no more than the header."""
    offsets = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    for index in indices:
        try:
            frame = get_frame(
                ds.PixelData, index, extended_offsets=offsets, number_of_frames=frame_count(ds)
            )
        except _DECODE_FAILURES as exc:
            raise DecodeError(
                f"encapsulated pixel data is corrupt at frame {index}: {exc}"
            ) from exc
        if _END_MARKER not in frame[-_TAIL:]:
            raise DecodeError(
                f"pixel data of frame {index} is truncated: the {syntax.name} stream has no "
                "end marker (FF D9)"
            )
        try:
            rows, columns, samples = int(ds.Rows), int(ds.Columns), int(ds.SamplesPerPixel)
            check_frame_size(syntax, frame, rows, columns, samples, whole=True)
        except RejectedInput as exc:
            raise DecodeError(f"frame {index} is not decoded: {exc}") from exc


def _decode_frames(ds: Dataset, decoder: Decoder, indices: tuple[int, ...]) -> npt.NDArray[Any]:
    """Decode and convert frame by frame into one array, so peak memory stays near one copy.

    A single frame is returned as it came out of the conversion, without a copy.
    """
    if len(indices) == 1:
        return _convert(ds, *_decode_one(ds, decoder, indices[0]), indices[0])[np.newaxis]
    out: npt.NDArray[Any] | None = None
    for position, index in enumerate(indices):
        frame = _convert(ds, *_decode_one(ds, decoder, index), index)
        if out is None:
            out = np.empty((len(indices), *frame.shape), dtype=frame.dtype)
        out[position] = frame
    assert out is not None  # select_frames never returns an empty selection
    return out


def _decode_one(ds: Dataset, decoder: Decoder, index: int) -> tuple[npt.NDArray[Any], str]:
    try:
        # pydicom's default as_rgb=True converts YBR_FULL(_422) to RGB; JPEG 2000 decoders
        # undo YBR_ICT/YBR_RCT themselves. The reported photometric says what came out.
        array, properties = decoder.as_array(ds, index=index)
    except _DECODE_FAILURES as exc:
        raise DecodeError(
            f"pixel data of frame {index} is corrupt, truncated or inconsistent "
            f"with its header: {exc}"
        ) from exc
    return array, str(properties.get("photometric_interpretation", ""))


def _convert(
    ds: Dataset, frame: npt.NDArray[Any], photometric: str, index: int
) -> npt.NDArray[Any]:
    if photometric in _MONOCHROME:
        return _modality_values(ds, frame, index)
    if photometric == "PALETTE COLOR":
        return _palette_to_rgb(ds, frame)
    if photometric == "RGB":
        return _rgb8(frame, int(ds.BitsStored))
    raise DecodeError(
        f"cannot convert {tag_text('PhotometricInterpretation')} {photometric} to RGB"
    )


def _modality_values(ds: Dataset, frame: npt.NDArray[Any], index: int) -> npt.NDArray[np.float32]:
    """Stored values -> modality values (PS3.3 C.11.1): Modality LUT, else rescale."""
    if ds.get("ModalityLUTSequence"):
        try:
            return np.asarray(apply_modality_lut(frame, ds), dtype=np.float32)
        except (AttributeError, TypeError, ValueError, IndexError, struct.error) as exc:
            raise DecodeError(f"{tag_text('ModalityLUTSequence')} is unusable: {exc}") from exc
    slope, intercept = _rescale(ds, index)
    if _exact_in_float32(frame, slope, intercept):
        out: npt.NDArray[np.float32] = np.multiply(frame, np.float32(slope), dtype=np.float32)
        out += np.float32(intercept)
        return out
    return np.asarray(frame.astype(np.float64) * slope + intercept, dtype=np.float32)


def _exact_in_float32(frame: npt.NDArray[Any], slope: float, intercept: float) -> bool:
    """Whether `frame * slope + intercept` is exact in float32: integer stored values of at
    most 16 bits, an integer slope and intercept, and every result below 2**24 in magnitude.
    Then float32 arithmetic gives the float64 result bit for bit, without float64 temporaries
    (a 2k x 2k radiograph: 0.6 ms instead of 5 ms)."""
    if frame.dtype.kind not in "ui" or frame.dtype.itemsize > 2:
        return False
    if not (slope.is_integer() and intercept.is_integer()):
        return False
    largest = float(max(abs(int(np.iinfo(frame.dtype).min)), int(np.iinfo(frame.dtype).max)))
    return largest * abs(slope) + abs(intercept) < 2.0**24


def _rescale(ds: Dataset, index: int) -> tuple[float, float]:
    values = []
    for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        raw = lookup(ds, index, "PixelValueTransformationSequence", keyword)
        if raw is None or raw == "":
            values.append(default)
            continue
        numbers = as_floats(raw)
        if numbers is None or (keyword == "RescaleSlope" and numbers[0] == 0):
            raise DecodeError(f"{tag_text(keyword)} value {raw!r} is not usable")
        values.append(numbers[0])
    return values[0], values[1]


def _palette_to_rgb(ds: Dataset, frame: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    bits = _palette_entry_bits(ds)
    try:
        rgb = apply_color_lut(frame, ds)
    except (AttributeError, TypeError, ValueError, IndexError, struct.error) as exc:
        raise DecodeError(f"PALETTE COLOR image without a usable palette: {exc}") from exc
    if bits == 16:  # the high byte is the 8-bit colour (PS3.3 C.7.6.3.1.5)
        return np.asarray(rgb >> 8, dtype=np.uint8)
    # 8-bit entries come packed two to a word or, from many scanners, one to a 16-bit word;
    # pydicom returns the latter as uint16 holding 0..255, which must not be shifted.
    largest = int(rgb.max()) if rgb.size else 0
    if largest > 255:
        raise DecodeError(
            f"{tag_text('RedPaletteColorLookupTableDescriptor')} declares 8-bit palette "
            f"entries, but the palette holds values up to {largest}: the file is inconsistent"
        )
    return np.asarray(rgb, dtype=np.uint8)


def _palette_entry_bits(ds: Dataset) -> int:
    """Bits per palette entry: the third value of the Red LUT descriptor, 8 or 16."""
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
    if descriptor is None:
        raise DecodeError(
            "PALETTE COLOR image without a usable palette: missing required attribute "
            f"{tag_text('RedPaletteColorLookupTableDescriptor')}"
        )
    bits = descriptor[2] if descriptor is not None and len(descriptor) == 3 else None
    if bits not in (8, 16):
        raise DecodeError(
            f"{tag_text('RedPaletteColorLookupTableDescriptor')} value {descriptor!r} is not "
            "usable: its third value (bits per entry) must be 8 or 16"
        )
    return int(bits)


def _rgb8(frame: npt.NDArray[Any], bits_stored: int) -> npt.NDArray[np.uint8]:
    """RGB at any bit depth -> uint8, keeping the top 8 stored bits."""
    if frame.dtype == np.uint8:
        return frame
    shift = max(bits_stored - 8, 0)
    return np.asarray(np.clip(frame.astype(np.int64) >> shift, 0, 255), dtype=np.uint8)
