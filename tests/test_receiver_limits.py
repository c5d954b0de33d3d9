"""The receiver's reach and bounds: every storage class in (retired and site-private ones too),
refused contexts audited, unusable pixel data refused, and hostile sizes bounded (deflate bombs,
huge declared images, over-long PDUs), over loopback with real peers."""

from __future__ import annotations

import socket
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    MPEG4HP41,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
)
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from test_receiver_faults import (
    assert_refusal_left_no_trace,
    assert_rejected_audited,
    assert_still_serving,
    audit_rows,
    encode_body,
    file_meta,
    indexed_uids,
    store_file,
    write_raw,
)

from appliance.cli import main
from appliance.dicomout.scu import Peer, echo, send
from appliance.domain import StoreStatus
from appliance.receiver import Receiver
from appliance.receiver.scp import storage_sop_classes
from appliance.samples import make_dataset
from appliance.store import Store

from conftest import RoleProcess, needs_dcmtk, storescu, wait_for

StartReceiver = Callable[..., tuple[Receiver, Store]]
US_RETIRED = "1.2.840.10008.5.1.4.1.1.6"
US_MULTIFRAME_RETIRED = "1.2.840.10008.5.1.4.1.1.3"
PRIVATE_CLASS = "1.2.826.0.1.3680043.9.7433.1.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def dataset_as(sop_class: str, seed: int, frames: int = 1) -> Dataset:
    kind = "us-multiframe" if frames > 1 else "us"
    ds = make_dataset(kind, seed=seed, rows=16, columns=16, frames=frames)
    ds.SOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    return ds


def saved(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# -- every storage class -------------------------------------------------------------------


def test_the_storage_classes_include_retired_and_site_classes() -> None:
    classes = storage_sop_classes([PRIVATE_CLASS])
    assert {US_RETIRED, US_MULTIFRAME_RETIRED, PRIVATE_CLASS, BASIC_TEXT_SR} <= set(classes)
    assert "1.2.840.10008.1.3.10" not in classes  # DICOMDIR is no network object
    assert PRIVATE_CLASS not in storage_sop_classes()


@needs_dcmtk
def test_retired_ultrasound_classes_pushed_with_storescu_are_stored(
    receiver: tuple[Receiver, Store], inputs: Path
) -> None:
    rx, store = receiver
    files = [
        saved(dataset_as(US_RETIRED, seed=1), inputs / "us.dcm"),
        saved(dataset_as(US_MULTIFRAME_RETIRED, seed=2, frames=3), inputs / "us-mf.dcm"),
    ]
    # -R: propose the contexts the files need (storescu's default list lacks retired classes).
    result = storescu(rx.address, *files, options=["-R", "-aet", "OLDSCANNER"])
    assert result.returncode == 0, result.stdout + result.stderr
    classes = {r[0] for r in store.conn.execute("SELECT sop_class_uid FROM instances")}
    assert classes == {US_RETIRED, US_MULTIFRAME_RETIRED}


def test_retired_classes_with_appliance_send_and_a_site_private_class(
    start_receiver: StartReceiver, inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rx, store = start_receiver(receiver={"extra_sop_classes": [PRIVATE_CLASS]})
    saved(dataset_as(US_RETIRED, seed=3), inputs / "us.dcm")
    saved(dataset_as(PRIVATE_CLASS, seed=4), inputs / "private.dcm")
    host, port = rx.address
    assert main(["send", "--to", f"{host}:{port}", str(inputs)]) == 0
    assert "sent 2 of 2" in capsys.readouterr().out
    classes = {r[0] for r in store.conn.execute("SELECT sop_class_uid FROM instances")}
    assert classes == {US_RETIRED, PRIVATE_CLASS}


def test_a_refused_context_is_audited_and_send_says_why(
    receiver: tuple[Receiver, Store], inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rx, store = receiver
    path = saved(dataset_as(PRIVATE_CLASS, seed=5), inputs / "private.dcm")
    host, port = rx.address

    assert main(["send", "--to", f"{host}:{port}", "--aet", "MODALITY7", str(path)]) == 2

    err = capsys.readouterr().err
    assert f"the peer does not accept {PRIVATE_CLASS} ({PRIVATE_CLASS})" in err
    assert "aborted by the peer" not in err
    wait_for(lambda: audit_rows(store, "association.context_refused"), what="the audit row")
    [row] = audit_rows(store, "association.context_refused")
    assert row["actor"].startswith("ae:MODALITY7@")
    assert row["detail"]["sop_class"] == PRIVATE_CLASS
    assert row["detail"]["reason"] == "the SOP class is not accepted"


def test_a_context_refused_beside_an_accepted_one_of_its_class_is_not_reported(
    receiver: tuple[Receiver, Store],
) -> None:
    # Ultrasound scanners propose a class once per transfer syntax (video, JPEG, uncompressed):
    # the refused video context refuses nothing, as the images arrive over the other one.
    rx, store = receiver
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(US_RETIRED, [MPEG4HP41])
    ae.add_requested_context(US_RETIRED, [ExplicitVRLittleEndian])
    ae.add_requested_context(PRIVATE_CLASS, [ExplicitVRLittleEndian])
    host, port = rx.address
    assoc = ae.associate(host, port, ae_title="APPLIANCE")
    assert assoc.is_established
    status = assoc.send_c_store(dataset_as(US_RETIRED, seed=11))
    assoc.release()
    assert status.Status == 0
    wait_for(lambda: audit_rows(store, "association.context_refused"), what="the audit row")
    refused = [
        row["detail"]["sop_class"] for row in audit_rows(store, "association.context_refused")
    ]
    assert refused == [PRIVATE_CLASS]


def test_send_names_the_refused_class_beside_accepted_ones(
    receiver: tuple[Receiver, Store], inputs: Path
) -> None:
    rx, store = receiver
    good = saved(dataset_as(US_RETIRED, seed=6), inputs / "us.dcm")
    refused = saved(dataset_as(PRIVATE_CLASS, seed=7), inputs / "private.dcm")
    results = {r.path: r for r in send([good, refused], Peer(*rx.address))}
    assert results[good].ok
    assert results[refused].message == f"the peer does not accept {PRIVATE_CLASS} ({PRIVATE_CLASS})"
    assert len(indexed_uids(store)) == 1


# -- images without usable pixel data ------------------------------------------------------


def _no_pixels(ds: Dataset) -> bytes:
    del ds.PixelData
    return encode_body(ds)


def _short_pixels(ds: Dataset) -> bytes:
    ds.PixelData = ds.PixelData[:-64]
    return encode_body(ds)


def _swallowed_pixels(ds: Dataset) -> bytes:
    """An Overlay Data element whose length runs past the end, swallowing the Pixel Data."""
    body = encode_body(ds)
    at = body.index(b"\xe0\x7f\x10\x00")  # the Pixel Data element
    rest = len(body) - at
    overlay = b"\x00\x60\x00\x30OW\x00\x00" + struct.pack("<I", rest + 1000)
    return body[:at] + overlay + body[at:]


@pytest.mark.parametrize(
    "make_body",
    [_no_pixels, _short_pixels, _swallowed_pixels],
    ids=["missing", "short", "swallowed"],
)
def test_an_image_without_usable_pixel_data_is_refused_with_c000(
    start_receiver: StartReceiver,
    inputs: Path,
    tmp_path: Path,
    make_body: Callable[[Dataset], bytes],
) -> None:
    receiver, store = start_receiver()
    ds = make_dataset("ct", seed=11, rows=16, columns=16)
    path = write_raw(
        inputs / "bad.dcm", file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID)), make_body(ds)
    )

    assert store_file(receiver.address, path) == StoreStatus.CANNOT_UNDERSTAND
    assert_rejected_audited(store, StoreStatus.CANNOT_UNDERSTAND, "Pixel Data")
    assert_refusal_left_no_trace(store, tmp_path)
    assert_still_serving(receiver, store, tmp_path, seed=120)


def test_padded_pixel_data_is_stored(receiver: tuple[Receiver, Store], inputs: Path) -> None:
    """Longer than declared (MR_small_padded.dcm among pydicom's files): decoders read the
    declared frames and ignore the rest, as DCMTK's storescp takes it."""
    rx, store = receiver
    ds = make_dataset("ct", seed=17, rows=16, columns=16)
    ds.PixelData = ds.PixelData + bytes(128)
    path = write_raw(
        inputs / "padded.dcm",
        file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID)),
        encode_body(ds),
    )
    assert store_file(rx.address, path) == StoreStatus.SUCCESS
    assert indexed_uids(store) == {str(ds.SOPInstanceUID)}


def test_a_non_image_object_without_pixel_data_is_stored(
    receiver: tuple[Receiver, Store], inputs: Path
) -> None:
    rx, store = receiver
    ds = make_dataset("ct", seed=12, rows=16, columns=16)
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit"):
        delattr(ds, keyword)
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.Modality = "SR"
    path = write_raw(
        inputs / "sr.dcm", file_meta(BASIC_TEXT_SR, str(ds.SOPInstanceUID)), encode_body(ds)
    )
    assert store_file(rx.address, path) == StoreStatus.SUCCESS
    assert indexed_uids(store) == {str(ds.SOPInstanceUID)}


# -- hostile sizes -------------------------------------------------------------------------


def deflate_bomb(path: Path, inflated_bytes: int, rows: int = 16, columns: int = 16) -> Path:
    """A deflated file whose header declares a small image, followed by `inflated_bytes` of
    zeros as its Pixel Data (compressed a megabyte at a time: ~1 KB per MiB)."""
    ds = make_dataset("ct", seed=13, rows=rows, columns=columns)
    del ds.PixelData
    header = encode_body(ds) + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", inflated_bytes)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(header)]
    zeros = bytes(2**20)
    for _ in range(inflated_bytes // len(zeros)):
        parts.append(compressor.compress(zeros))
    parts.append(compressor.flush())
    meta = file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return write_raw(path, meta, b"".join(parts))


def test_a_deflate_bomb_is_refused_and_the_receiver_keeps_serving(
    start_receiver: StartReceiver, inputs: Path, tmp_path: Path
) -> None:
    receiver, store = start_receiver()
    path = deflate_bomb(inputs / "bomb.dcm", 64 * 2**20)

    assert path.stat().st_size < 2**20
    assert store_file(receiver.address, path) == StoreStatus.CANNOT_UNDERSTAND
    assert_rejected_audited(store, StoreStatus.CANNOT_UNDERSTAND, "inflates past")
    assert_refusal_left_no_trace(store, tmp_path)
    assert_still_serving(receiver, store, tmp_path, seed=121)


def test_a_small_deflated_image_is_still_stored(
    receiver: tuple[Receiver, Store], inputs: Path
) -> None:
    rx, store = receiver
    ds = make_dataset("ct", seed=14, rows=32, columns=32)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = saved(ds, inputs / "deflated.dcm")
    [result] = list(send([path], Peer(*rx.address)))
    assert result.ok, result.message
    [syntax] = store.conn.execute("SELECT transfer_syntax_uid FROM instances").fetchone()
    assert syntax == DeflatedExplicitVRLittleEndian


def test_an_image_declaring_too_many_pixels_is_refused(
    start_receiver: StartReceiver, inputs: Path, tmp_path: Path
) -> None:
    receiver, store = start_receiver(receiver={"max_image_megapixels": 1})
    ds = make_dataset("ct", seed=15, rows=16, columns=16)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 2000, 2000, 1  # pixel data left small
    path = write_raw(
        inputs / "huge.dcm", file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID)), encode_body(ds)
    )
    assert store_file(receiver.address, path) == StoreStatus.CANNOT_UNDERSTAND
    assert_rejected_audited(store, StoreStatus.CANNOT_UNDERSTAND, "receiver.max_image_megapixels")
    assert_refusal_left_no_trace(store, tmp_path)


def test_a_dataset_over_max_dataset_mb_is_refused_with_a700(
    start_receiver: StartReceiver, inputs: Path, tmp_path: Path
) -> None:
    receiver, store = start_receiver(receiver={"max_dataset_mb": 1})
    ds = make_dataset("ct", seed=16, rows=1024, columns=1024)  # 2 MiB of pixels
    path = saved(ds, inputs / "big.dcm")
    [result] = list(send([path], Peer(*receiver.address)))
    assert result.status == StoreStatus.OUT_OF_RESOURCES
    assert_rejected_audited(store, StoreStatus.OUT_OF_RESOURCES, "receiver.max_dataset_mb")
    assert_refusal_left_no_trace(store, tmp_path)


def associated_socket(address: tuple[str, int]) -> socket.socket:
    """A raw TCP connection that has negotiated an association (pynetdicom's own A-ASSOCIATE-RQ
    bytes are not at hand, so a minimal one is written here)."""
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(associate_rq("APPLIANCE", "RAWSCU", Verification))
    head = _recv_exact(sock, 6)
    assert head[0] == 0x02, f"association not accepted: PDU type 0x{head[0]:02X}"
    _recv_exact(sock, struct.unpack(">I", head[2:])[0])
    return sock


def associate_rq(called: str, calling: str, sop_class: str) -> bytes:
    def item(kind: int, body: bytes) -> bytes:
        return bytes([kind, 0]) + struct.pack(">H", len(body)) + body

    context = item(
        0x20,
        bytes([1, 0, 0, 0])
        + item(0x30, sop_class.encode())
        + item(0x40, ExplicitVRLittleEndian.encode()),
    )
    user = item(0x50, item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.3.4"))
    body = (
        struct.pack(">HH", 1, 0)
        + called.ljust(16).encode()
        + calling.ljust(16).encode()
        + bytes(32)
        + item(0x10, b"1.2.840.10008.3.1.1.1")
        + context
        + user
    )
    return bytes([0x01, 0]) + struct.pack(">I", len(body)) + body


def _recv_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_a_p_data_pdu_longer_than_advertised_aborts_before_its_bytes_are_read(
    start_receiver: StartReceiver,
) -> None:
    receiver, store = start_receiver(receiver={"max_pdu_bytes": 16384})
    sock = associated_socket(receiver.address)
    try:
        sock.sendall(bytes([0x04, 0]) + struct.pack(">I", 0xFFFFFFF0) + bytes(4096))
        reply = _recv_exact(sock, 10)
    finally:
        sock.close()
    assert reply[:1] == b"\x07", f"expected an A-ABORT, got {reply!r}"
    wait_for(lambda: audit_rows(store, "association.aborted"), what="the audit row")
    [row] = audit_rows(store, "association.aborted")
    assert "P-DATA-TF PDU of 4294967280 bytes is longer than the 16384" in row["detail"]["reason"]
    assert echo(Peer(*receiver.address)) == StoreStatus.SUCCESS


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc")


def test_the_receiver_role_refuses_a_1_gib_deflate_bomb_in_bounded_memory(
    role_process: Callable[..., RoleProcess], tmp_path: Path, capsys: pytest.CaptureFixture[Any]
) -> None:
    bomb = deflate_bomb(tmp_path / "bomb" / "bomb.dcm", 2**30)
    proc = role_process()
    proc.start()
    assert proc.process is not None
    address = ("127.0.0.1", proc.port)
    before = peak_rss_mb(proc.process.pid)

    assert store_file(address, bomb) == StoreStatus.CANNOT_UNDERSTAND
    peak = peak_rss_mb(proc.process.pid)
    assert echo(Peer(*address)) == StoreStatus.SUCCESS
    with capsys.disabled():
        print(
            f"\nreceiver peak RSS: {before:.0f} MB before, {peak:.0f} MB after a "
            f"{bomb.stat().st_size / 1e6:.1f} MB deflate bomb (1 GiB inflated)"
        )
    assert peak < 300, f"the receiver peaked at {peak:.0f} MB"
