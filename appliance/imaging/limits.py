"""Bounds on what an incoming dataset may make us do, checked before any pixel is decoded.

Three kinds of hostile or broken input are refused here, for the receiver and the import page:
- a deflated dataset that inflates past what it declares (a "deflate bomb": 1 MB on the wire,
  1 GiB inflated). It is inflated in chunks into a file beside it, never into memory, and the
  inflation stops at the declared image size plus a margin, or at `receiver.max_dataset_mb`;
- an image declaring more than `receiver.max_image_megapixels` (Rows x Columns x Frames);
- an image without usable Pixel Data: missing (e.g. swallowed by an element whose length runs
  past the end), or, for native (uncompressed) transfer syntaxes, shorter than Rows x Columns x
  Frames x Samples x Bits Allocated / 8 bytes; for encapsulated ones, no fragment at all.
  Longer native Pixel Data is taken: some modalities pad it, and decoders (pydicom, DCMTK) read
  the declared frames and ignore the rest. Its length is bounded by `receiver.max_dataset_mb`;
- a JPEG, JPEG-LS or JPEG 2000 first fragment whose codestream declares more rows, columns or
  components than the header (a decoder allocates what the codestream says; see `codestream`).

Which objects are images: SOP classes named "... Image Storage" in the DICOM dictionary, and
classes the dictionary does not know (private ones) whose dataset has Rows and Columns. Other
storage objects (structured reports, encapsulated PDF, presentation states, waveforms,
segmentations, parametric maps) carry no Pixel Data or other pixel elements, and are taken as
they are.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from appliance.config import ReceiverSettings
from appliance.domain import InstanceHeader
from appliance.errors import RejectedInput
from appliance.imaging.codestream import check_frame_size
from appliance.imaging.header import Inspect, read_header

MIB = 2**20
_CHUNK = 256 * 1024  # bytes read from the deflated stream, and the most inflated per step
_PROBE = 4 * MIB  # inflated bytes kept in memory to read the declared image size from
_MARGIN = MIB  # room after the pixel data (trailing padding, signatures)
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float
_UNDEFINED = 0xFFFFFFFF
# 4:2:2 photometrics store two values a pixel (Y, then Cb or Cr); the second is retired.
_HALF_CHROMA = frozenset({"YBR_FULL_422", "YBR_PARTIAL_422"})
_NATIVE = {
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
}


class TooLarge(RejectedInput):
    """A dataset or image past a configured limit (the message names the setting)."""


@dataclass(frozen=True)
class Limits:
    """The configured bounds (`receiver.max_dataset_mb`, `receiver.max_image_megapixels`)."""

    max_dataset_bytes: int
    max_pixels: int

    @classmethod
    def from_settings(cls, receiver: ReceiverSettings) -> Limits:
        return cls(receiver.max_dataset_mb * MIB, receiver.max_image_megapixels * 1_000_000)


DEFAULT_LIMITS = Limits.from_settings(ReceiverSettings())  # for callers without settings


@dataclass(frozen=True)
class ImageShape:
    """What a dataset declares about its pixels, read before them."""

    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    photometric: str

    @property
    def pixels(self) -> int:
        return self.rows * self.columns * self.frames

    @property
    def native_bytes(self) -> int:
        """The exact length of native Pixel Data (before the pad to an even length)."""
        samples = 2 if self.photometric in _HALF_CHROMA else self.samples  # 4:2:2 halves CbCr
        bits = self.pixels * samples * self.bits_allocated
        return (bits + 7) // 8


def check_dataset(path: Path, limits: Limits) -> InstanceHeader:
    """The header of the Part 10 file at `path` once its sizes are checked, or RejectedInput
    (TooLarge for a configured limit) saying why it is refused."""
    size = path.stat().st_size
    if size > limits.max_dataset_bytes:
        raise TooLarge(over_dataset_limit(limits))
    if _transfer_syntax(path) != DeflatedExplicitVRLittleEndian:
        return read_header(path, inspect=_pixel_checks(path, limits))
    inflated = path.with_name(path.name + ".inflated")
    try:
        inflate_bounded(path, inflated, limits)
        header = read_header(inflated, inspect=_pixel_checks(inflated, limits))
    finally:
        inflated.unlink(missing_ok=True)
    return dataclasses.replace(header, transfer_syntax_uid=DeflatedExplicitVRLittleEndian)


def _pixel_checks(path: Path, limits: Limits) -> Inspect:
    """`check_pixels` on the dataset `read_header` has just parsed from `path` (one parse)."""

    def inspect(ds: Dataset, handle: BinaryIO, transfer_syntax: str) -> None:
        check_pixels(ds, handle, transfer_syntax, limits, path.stat().st_size)

    return inspect


def check_pixels(
    ds: Dataset, handle: BinaryIO, transfer_syntax: str, limits: Limits, size: int
) -> None:
    """Refuse an image whose declared size is past the limit or whose Pixel Data is unusable.

    `ds` is the dataset up to its pixels, read from `handle` (a non-deflated file of `size`
    bytes; a deflated one is checked once inflated), which is positioned on the pixel element.
    """
    if not is_image(ds):
        return
    shape = image_shape(ds)
    check_shape(shape, limits)
    _check_pixel_element(handle, transfer_syntax, shape, size)


def is_image(ds: Dataset) -> bool:
    """An image SOP class (by its dictionary name), or an unknown class with Rows and Columns."""
    sop_class = UID(str(ds.get("SOPClassUID", "")))
    if sop_class.name != sop_class:  # in the dictionary
        return "Image Storage" in sop_class.name
    return "Rows" in ds and "Columns" in ds


def image_shape(ds: Dataset) -> ImageShape:
    """The declared shape, or RejectedInput naming the attribute that is missing or wrong."""
    return ImageShape(
        rows=_positive(ds, "Rows"),
        columns=_positive(ds, "Columns"),
        frames=_positive(ds, "NumberOfFrames", default=1),
        samples=_positive(ds, "SamplesPerPixel", default=1),
        bits_allocated=_positive(ds, "BitsAllocated"),
        photometric=str(ds.get("PhotometricInterpretation", "")).strip().upper(),
    )


def check_shape(shape: ImageShape, limits: Limits) -> None:
    """Refuse an image declaring more pixels than `receiver.max_image_megapixels`."""
    if shape.pixels > limits.max_pixels:
        raise TooLarge(
            f"the image declares {shape.rows} x {shape.columns} pixels x {shape.frames} frames "
            f"({shape.pixels / 1e6:.0f} million pixels), more than receiver.max_image_megapixels "
            f"({limits.max_pixels // 1_000_000}); raise it if such images are expected"
        )


def _positive(ds: Dataset, keyword: str, default: int | None = None) -> int:
    if keyword not in ds or ds[keyword].value in (None, ""):
        if default is not None:
            return default
        raise RejectedInput(f"the image has no {keyword}")
    try:
        value = int(ds[keyword].value)
    except (TypeError, ValueError) as exc:
        raise RejectedInput(f"{keyword} is not a number: {ds[keyword].value!r}") from exc
    if value < 1:
        raise RejectedInput(f"{keyword} must be at least 1, got {value}")
    return value


def _parse(handle: BinaryIO, implicit: bool, little: bool) -> Dataset:
    """The dataset up to its pixels; the handle is left on the pixel element's tag."""
    try:
        return read_dataset(handle, implicit, little, stop_when=_at_pixels)
    except Exception as exc:  # hostile bytes make pydicom raise many kinds of error
        raise RejectedInput(f"cannot parse the dataset: {exc}") from exc


def _at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


def _check_pixel_element(
    handle: BinaryIO, transfer_syntax: str, shape: ImageShape, size: int
) -> None:
    """Check the pixel element at the handle's position against the declared shape."""
    start = handle.tell()
    head = handle.read(12)
    order = ">" if transfer_syntax == "1.2.840.10008.1.2.2" else "<"
    if len(head) < 8:
        raise RejectedInput("the image has no Pixel Data (the dataset ends before it)")
    group, element = struct.unpack(f"{order}HH", head[:4])
    if (group << 16 | element) in (0x7FE00008, 0x7FE00009):
        return  # float pixel data: its presence is all we ask
    if (group, element) != (0x7FE0, 0x0010):
        raise RejectedInput("the image has no Pixel Data")
    if transfer_syntax == "1.2.840.10008.1.2":
        length, value_at = struct.unpack("<I", head[4:8])[0], start + 8
    else:
        length, value_at = struct.unpack(f"{order}I", head[8:12])[0], start + 12
    if transfer_syntax in _NATIVE:
        _check_native_length(length, shape)
    elif length != _UNDEFINED:
        raise RejectedInput("compressed Pixel Data must be encapsulated (undefined length)")
    else:
        _check_first_fragment(
            handle, transfer_syntax, shape, *_first_fragment(handle, value_at, size)
        )


def _check_native_length(length: int, shape: ImageShape) -> None:
    expected = shape.native_bytes
    if length < expected or length == _UNDEFINED:
        raise RejectedInput(
            f"Pixel Data holds {length} bytes but {shape.rows} rows x {shape.columns} columns x "
            f"{shape.frames} frames x {shape.samples} samples x {shape.bits_allocated} bits "
            f"need {expected}"
        )


def _check_first_fragment(
    handle: BinaryIO, transfer_syntax: str, shape: ImageShape, start: int, length: int
) -> None:
    """The codestream's declared size against the header's, from the first fragment's first
    bytes. A frame may be split over fragments, so a header not found there is left to
    `decode`, which reads the whole frame."""
    handle.seek(start)
    data = handle.read(min(length, _PROBE))
    rows, columns, samples = shape.rows, shape.columns, shape.samples
    check_frame_size(transfer_syntax, data, rows, columns, samples, whole=False)


def _first_fragment(handle: BinaryIO, position: int, size: int) -> tuple[int, int]:
    """Encapsulated Pixel Data: the offset table item, then at least one non-empty fragment,
    whose (start, length) is returned."""
    items = list(_items(handle, position, size, limit=2))
    if len(items) < 2 or items[1][1] == 0:
        raise RejectedInput("the encapsulated Pixel Data holds no image fragment")
    return items[1]


def _items(handle: BinaryIO, position: int, size: int, limit: int) -> Iterator[tuple[int, int]]:
    """The (value start, length) of the first `limit` items of a fragment sequence."""
    for _ in range(limit):
        handle.seek(position)
        item = handle.read(8)
        if len(item) < 8:
            return
        group, element, length = struct.unpack("<HHI", item)
        if (group, element) != (0xFFFE, 0xE000) or length == _UNDEFINED:
            return
        yield position + 8, length
        position += 8 + length
        if position > size:
            return


# -- deflated datasets ---------------------------------------------------------------------


def inflate_bounded(source: Path, target: Path, limits: Limits) -> None:
    """Write the deflated file `source` to `target` as Explicit VR Little Endian, inflating in
    chunks and stopping with RejectedInput at the declared size plus a margin (or TooLarge
    at `receiver.max_dataset_mb`). Memory use is a few chunks, whatever the file claims."""
    with source.open("rb") as src, target.open("wb") as out:
        read_preamble(src, False)
        meta = _read_file_meta_info(src)
        out.write(_explicit_le_head(meta))
        chunks = _inflated_chunks(src)
        probe = _read_probe(chunks)
        limit = _inflated_limit(probe, limits)
        written = len(probe)
        _check_written(written, limit, limits)
        out.write(probe)
        for chunk in chunks:
            written += len(chunk)
            _check_written(written, limit, limits)
            out.write(chunk)


def _inflated_chunks(src: BinaryIO) -> Iterator[bytes]:
    """The raw-deflate stream of `src` inflated, at most _CHUNK bytes at a time."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        while not inflater.eof:
            data = inflater.unconsumed_tail or src.read(_CHUNK)
            if not data:
                return  # a cut-off stream: the parse of what came says what is missing
            chunk = inflater.decompress(data, _CHUNK)
            if chunk:
                yield chunk
    except zlib.error as exc:
        raise RejectedInput(f"the deflated dataset is corrupt: {exc}") from exc


def _read_probe(chunks: Iterator[bytes]) -> bytes:
    probe = bytearray()
    for chunk in chunks:
        probe += chunk
        if len(probe) >= _PROBE:
            break
    return bytes(probe)


def _inflated_limit(probe: bytes, limits: Limits) -> int:
    """Where inflating must stop: the declared pixels after the header, plus a margin; or the
    configured maximum for objects that declare no image (or a header past the probe)."""
    fp = BytesIO(probe)
    ds = _parse(fp, implicit=False, little=True)
    header_end = fp.tell()
    if header_end >= len(probe) or not is_image(ds):
        return limits.max_dataset_bytes
    shape = image_shape(ds)
    check_shape(shape, limits)
    declared = header_end + 12 + shape.native_bytes + 1 + _MARGIN
    return min(declared, limits.max_dataset_bytes)


def _check_written(written: int, limit: int, limits: Limits) -> None:
    if written <= limit:
        return
    if limit >= limits.max_dataset_bytes:
        raise TooLarge(over_dataset_limit(limits) + " once inflated")
    raise RejectedInput(
        f"the deflated dataset inflates past the {limit} bytes its image declares "
        "(a decompression bomb or a corrupt stream)"
    )


def _explicit_le_head(meta: FileMetaDataset) -> bytes:
    meta = FileMetaDataset(meta)
    meta.TransferSyntaxUID = UID(ExplicitVRLittleEndian)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=False)
    return buffer.getvalue()


def _transfer_syntax(path: Path) -> str:
    with path.open("rb") as handle:
        try:
            read_preamble(handle, False)
            meta = _read_file_meta_info(handle)
        except Exception as exc:
            raise RejectedInput(f"cannot parse the file meta information: {exc}") from exc
    return str(meta.get("TransferSyntaxUID", ""))


def over_dataset_limit(limits: Limits) -> str:
    return (
        f"the dataset is larger than receiver.max_dataset_mb ({limits.max_dataset_bytes // MIB} "
        "MiB); raise it if such objects are expected"
    )
