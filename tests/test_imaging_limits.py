"""Bounded decoding: a declared image past `receiver.max_image_megapixels`, and compressed pixel
data whose codestream declares more than its header (JPEG 2000 SIZ, JPEG SOF, JPEG-LS SOF55),
are refused before any decoder runs: by `decode`, by the receiver over DICOM (storescu) and by
the import page."""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless
from test_receiver_faults import (
    assert_refusal_left_no_trace,
    assert_rejected_audited,
    assert_still_serving,
    encode_body,
    file_meta,
    store_file,
    write_raw,
)
from test_web_import import store_of, upload
from test_web_import import tech as tech  # the signed-in technologist fixture

from appliance.domain import StoreStatus
from appliance.errors import RejectedInput
from appliance.imaging import DecodeError, decode
from appliance.imaging.codestream import FrameSize, frame_size
from appliance.imaging.limits import DEFAULT_LIMITS, Limits, check_dataset
from appliance.receiver import Receiver
from appliance.samples import make_dataset
from appliance.store import Store

from conftest import needs_dcmtk, storescu

StartReceiver = Callable[..., tuple[Receiver, Store]]
HUGE = 60000


def saved(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def jpeg2000_image(seed: int = 41) -> Dataset:
    """A real 64 x 64 grey image, JPEG 2000 lossless, as pydicom's encoder writes it."""
    ds = make_dataset("cr", seed=seed, rows=64, columns=64)
    ds.compress(JPEG2000Lossless)
    return ds


def jpegls_image(seed: int = 42) -> Dataset:
    ds = make_dataset("cr", seed=seed, rows=64, columns=64)
    ds.compress(JPEGLSLossless)
    return ds


def jpeg_image(seed: int = 43) -> Dataset:
    """An 8-bit grey image in JPEG baseline, encoded with OpenCV."""
    ds = make_dataset("cr", seed=seed, rows=64, columns=64)
    pixels = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) % 251).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([encoded.tobytes()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return ds


def patched_siz(codestream: bytes, height: int, width: int) -> bytes:
    """A JPEG 2000 codestream whose SIZ says Ysiz = height and Xsiz = width (offsets 0)."""
    at = codestream.index(b"\xff\x4f\xff\x51")
    siz = struct.pack(">II", width, height)
    return codestream[: at + 8] + siz + codestream[at + 16 :]


def patched_sof(codestream: bytes, marker: bytes, height: int, width: int) -> bytes:
    """A JPEG (SOF0, FF C0) or JPEG-LS (SOF55, FF F7) stream with the frame header's height
    and width replaced."""
    at = codestream.index(marker)
    return codestream[: at + 5] + struct.pack(">HH", height, width) + codestream[at + 9 :]


def with_frame(ds: Dataset, frame: bytes) -> Dataset:
    ds.PixelData = encapsulate([frame])
    return ds


def fragments(*values: bytes) -> bytes:
    """Encapsulated Pixel Data items, written out: one item per value (even lengths)."""
    return b"".join(b"\xfe\xff\x00\xe0" + struct.pack("<I", len(v)) + v for v in values)


def first_frame(ds: Dataset) -> bytes:
    return get_frame(ds.PixelData, 0, number_of_frames=1)


def jpeg2000_bomb(seed: int = 44) -> Dataset:
    ds = jpeg2000_image(seed)
    return with_frame(ds, patched_siz(first_frame(ds), HUGE, HUGE))


# -- what codestreams declare --------------------------------------------------------------


def test_the_frame_header_of_each_codestream_kind_is_read() -> None:
    assert frame_size(JPEG2000Lossless, first_frame(jpeg2000_image())) == FrameSize(64, 64, 1)
    assert frame_size(JPEGLSLossless, first_frame(jpegls_image())) == FrameSize(64, 64, 1)
    assert frame_size(JPEGBaseline8Bit, first_frame(jpeg_image())) == FrameSize(64, 64, 1)
    assert frame_size(JPEG2000Lossless, b"\xff\x4f\xff\x51\x00") is None  # cut short


@pytest.mark.parametrize("kind", ["jpeg2000", "jpegls", "jpeg"])
def test_real_compressed_images_pass_the_checks_and_decode(kind: str, inputs: Path) -> None:
    ds = {"jpeg2000": jpeg2000_image, "jpegls": jpegls_image, "jpeg": jpeg_image}[kind]()
    path = saved(ds, inputs / f"{kind}.dcm")
    assert check_dataset(path, DEFAULT_LIMITS).sop_instance_uid == str(ds.SOPInstanceUID)
    assert decode(path).pixels.shape == (1, 64, 64)


def bombs() -> dict[str, Dataset]:
    """Each kind of codestream declaring 60000 x 60000 inside a 64 x 64 header."""
    jls, jpg = jpegls_image(45), jpeg_image(46)
    return {
        "jpeg2000": jpeg2000_bomb(),
        "jpegls": with_frame(jls, patched_sof(first_frame(jls), b"\xff\xf7", HUGE, HUGE)),
        "jpeg": with_frame(jpg, patched_sof(first_frame(jpg), b"\xff\xc0", HUGE, HUGE)),
    }


@pytest.mark.parametrize("kind", ["jpeg2000", "jpegls", "jpeg"])
def test_a_codestream_larger_than_its_header_is_refused_before_decoding(
    kind: str, inputs: Path
) -> None:
    ds = bombs()[kind]
    assert (ds.Rows, ds.Columns) == (64, 64)
    path = saved(ds, inputs / f"{kind}-bomb.dcm")
    declared = re.escape(
        f"declares {HUGE} x {HUGE} pixels with 1 component(s), but the header says 64 x 64"
    )

    with pytest.raises(RejectedInput, match=declared):
        check_dataset(path, DEFAULT_LIMITS)
    # The decoders never see it: the refusal is ours, worded from the frame header.
    with pytest.raises(DecodeError, match=f"frame 0 is not decoded: the compressed .*{declared}"):
        decode(path)


def test_a_codestream_with_more_components_than_samples_is_refused(inputs: Path) -> None:
    ds = jpeg2000_image(47)
    frame = bytearray(first_frame(ds))
    csiz_at = frame.index(b"\xff\x4f\xff\x51") + 4 + 36
    frame[csiz_at : csiz_at + 2] = struct.pack(">H", 3)
    path = saved(with_frame(ds, bytes(frame)), inputs / "components.dcm")
    with pytest.raises(RejectedInput, match="with 3 component"):
        check_dataset(path, DEFAULT_LIMITS)


# -- declared size at decode ---------------------------------------------------------------


def test_decode_refuses_an_image_declaring_more_than_the_limit(inputs: Path) -> None:
    """A file that reached the spool without the receiver's checks (reconcile, older versions):
    2000 x 2000 x 200 frames declared over 16 x 16 pixels of data."""
    ds = make_dataset("ct", seed=48, rows=16, columns=16)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 2000, 2000, 200
    path = write_raw(
        inputs / "huge.dcm", file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID)), encode_body(ds)
    )
    with pytest.raises(DecodeError, match=r"800 million pixels.*receiver\.max_image_megapixels"):
        decode(path)


def test_decode_applies_the_limits_it_is_given(inputs: Path) -> None:
    path = saved(make_dataset("ct", seed=49, rows=32, columns=32), inputs / "small.dcm")
    assert decode(path).pixels.shape == (1, 32, 32)
    with pytest.raises(DecodeError, match=r"32 x 32 pixels x 1 frames"):
        decode(path, limits=Limits(max_dataset_bytes=2**20, max_pixels=1000))


# -- at the receiver and the import page ---------------------------------------------------


@needs_dcmtk
def test_the_receiver_refuses_a_jpeg2000_bomb_pushed_with_storescu(
    start_receiver: StartReceiver, inputs: Path, tmp_path: Path
) -> None:
    receiver, store = start_receiver()
    path = saved(jpeg2000_bomb(), inputs / "j2k-bomb.dcm")
    done = storescu(receiver.address, path, options=["-v", "-xv"])
    # DCMTK's name for 0xC000; the audit row below carries the number itself.
    assert "Store Response (Error: CannotUnderstand)" in done.stderr, done.stdout + done.stderr
    assert_rejected_audited(store, StoreStatus.CANNOT_UNDERSTAND, "a decompression bomb")
    assert_refusal_left_no_trace(store, tmp_path)
    assert_still_serving(receiver, store, tmp_path, seed=140)


def test_the_receiver_answers_c000_to_a_jpeg2000_bomb(
    start_receiver: StartReceiver, inputs: Path
) -> None:
    receiver, store = start_receiver()
    path = saved(jpeg2000_bomb(50), inputs / "j2k-bomb.dcm")
    assert store_file(receiver.address, path) == StoreStatus.CANNOT_UNDERSTAND
    assert store.summary().instances == 0


def test_the_import_page_refuses_a_jpeg2000_bomb(
    app: Flask, tech: FlaskClient, inputs: Path
) -> None:
    path = saved(jpeg2000_bomb(51), inputs / "j2k-bomb.dcm")
    page = upload(tech, [(path.read_bytes(), "j2k-bomb.dcm")]).get_data(as_text=True)
    assert f"declares {HUGE} x {HUGE} pixels" in page
    assert "a decompression bomb" in page
    assert store_of(app).summary().instances == 0


def test_a_bomb_with_its_header_past_the_first_fragment_is_left_to_decode(inputs: Path) -> None:
    """A frame may be split over fragments: only the first is read at the door, and a header
    not found there is checked by `decode`, which joins the frame."""
    ds = jpeg2000_bomb(52)
    frame = first_frame(ds)
    ds.PixelData = fragments(b"", frame[:2], frame[2:])  # an empty offset table, 2 fragments
    path = saved(ds, inputs / "split.dcm")
    check_dataset(path, DEFAULT_LIMITS)
    with pytest.raises(DecodeError, match="a decompression bomb"):
        decode(path)


@pytest.mark.parametrize("photometric", ["YBR_FULL_422", "YBR_PARTIAL_422"])
def test_native_422_pixel_data_is_two_values_a_pixel(photometric: str, inputs: Path) -> None:
    """Older scanners write the retired YBR_PARTIAL_422 as well: both hold Y and one chroma
    value per pixel, so 16 x 16 pixels take 512 bytes, not 768."""
    ds = make_dataset("ct", seed=50, rows=16, columns=16)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, photometric, 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(16 * 16 * 2)
    path = write_raw(
        inputs / "ybr422.dcm",
        file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID)),
        encode_body(ds),
    )
    assert check_dataset(path, DEFAULT_LIMITS).sop_instance_uid == str(ds.SOPInstanceUID)


def test_the_worker_decodes_within_the_sites_limits(inputs: Path) -> None:
    """The worker passes the configured receiver limits, so receiver and worker agree."""
    from appliance.worker.analyse import decode_for

    path = saved(make_dataset("ct", seed=51, rows=32, columns=32), inputs / "small.dcm")
    assert decode_for(path, [], DEFAULT_LIMITS).pixels.shape == (1, 32, 32)
    with pytest.raises(DecodeError, match=r"32 x 32 pixels x 1 frames"):
        decode_for(path, [], Limits(max_dataset_bytes=2**20, max_pixels=1000))


def test_the_checks_at_the_door_parse_the_header_once(
    inputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`check_dataset` reads the header and checks the pixels from one parse of the file (it
    runs in the C-STORE handler, once per image), and the pixel checks still refuse."""
    import pydicom

    from appliance.imaging import limits

    parses: list[object] = []
    real = pydicom.dcmread

    def counted(*args: object, **kwargs: object) -> object:
        parses.append(args[0])
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pydicom, "dcmread", counted)
    monkeypatch.setattr(limits, "read_dataset", None)  # a second parse would fail here
    path = saved(make_dataset("ct", seed=53, rows=32, columns=32), inputs / "once.dcm")
    assert check_dataset(path, DEFAULT_LIMITS).rows == 32
    assert len(parses) == 1
    with pytest.raises(RejectedInput, match=r"32 x 32 pixels x 1 frames"):
        check_dataset(path, Limits(max_dataset_bytes=2**20, max_pixels=1000))
    assert len(parses) == 2
