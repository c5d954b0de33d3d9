"""The receiver against hostile input and a full disk, over loopback with real peers.

Every refusal must leave the store as it was (no row, no object, no partial file in spool/tmp,
nothing written outside the data folder), be audited, and leave the receiver serving.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from appliance.dicomout.scu import Peer, echo, send
from appliance.domain import StoreStatus
from appliance.receiver import Receiver
from appliance.receiver.scp import error_comment
from appliance.samples import CR, CT, make_dataset, sample_uid, write_sample
from appliance.store import Store
from appliance.store.audit import recent

from conftest import mounted_tmpfs, needs_dcmtk, storescu, wait_for

StartReceiver = Callable[..., tuple[Receiver, Store]]
Address = tuple[str, int]

UNKNOWN_SOP_CLASS = "1.2.3.4.5.6.7"
SCU_TIMEOUT_S = 10.0
# Everything the store may create under its data folder: no name comes from the input.
ALLOWED_DATA_ENTRY = re.compile(
    r"^(\.migrate\.lock|appliance\.sqlite3(-wal|-shm|-journal)?"
    r"|spool|spool/tmp|spool/objects|spool/objects/[0-9a-f]{2}"
    r"|spool/objects/(?P<fan>[0-9a-f]{2})/(?P=fan)[0-9a-f]{30}\.dcm)$"
)


# -- building hostile files ----------------------------------------------------------------


def small_ct(seed: int, **options: Any) -> Dataset:
    return make_dataset("ct", seed=seed, rows=16, columns=16, **options)


def encode_body(ds: Dataset) -> bytes:
    """The dataset encoded as Explicit VR Little Endian, without preamble or file meta."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def write_raw(path: Path, meta: FileMetaDataset, body: bytes) -> Path:
    """Write a Part 10 file with exactly this file meta and these dataset bytes.

    pydicom's save_as rewrites the file meta UIDs from the dataset; hostile files need them to
    disagree, so the file is assembled by hand.
    """
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue() + body)
    return path


def file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def nested_sequences(depth: int) -> bytes:
    """Content Sequence items nested `depth` deep, undefined lengths, Explicit VR LE."""
    body = b""
    for _ in range(depth):
        body = (
            b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff"  # (0040,A730) SQ, undefined length
            + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"  # item, undefined length
            + body
            + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"  # item delimiter
            + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # sequence delimiter
        )
    return body


# -- talking to the receiver ---------------------------------------------------------------


@contextmanager
def raw_dataset_sends() -> Iterator[None]:
    """Make pynetdicom send a file's dataset bytes as they are, UIDs taken from its file meta."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


def scu(calling_aet: str = "FAULT-SCU") -> AE:
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = SCU_TIMEOUT_S
    return ae


def store_file(address: Address, path: Path, calling_aet: str = "FAULT-SCU") -> int | None:
    """C-STORE the file's bytes as they are on a new association; None if no status came back."""
    meta = read_file_meta_info(path)
    ae = scu(calling_aet)
    ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    assoc = ae.associate(*address, ae_title="APPLIANCE")
    assert assoc.is_established, f"association for {path.name} not established"
    try:
        with raw_dataset_sends():
            response = assoc.send_c_store(path)
    finally:
        if assoc.is_established:
            assoc.release()
    return int(response.Status) if "Status" in response else None


# -- looking at the store ------------------------------------------------------------------


def audit_rows(store: Store, action: str) -> list[dict[str, Any]]:
    return recent(store.conn, action)


def instance_rows(store: Store) -> list[dict[str, Any]]:
    rows = store.conn.execute(
        "SELECT sop_instance_uid, file_name, state, calling_aet FROM instances"
    )
    return [dict(row) for row in rows]


def indexed_uids(store: Store) -> set[str]:
    return {row["sop_instance_uid"] for row in instance_rows(store)}


def partial_files(store: Store) -> list[str]:
    return sorted(p.name for p in store.spool.tmp.iterdir())


def object_names(store: Store) -> set[str]:
    return store.spool.committed_names()


def unexpected_entries(data_dir: Path) -> list[str]:
    """Entries under the data folder whose names the store would never choose itself."""
    names = (p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*"))
    return sorted(n for n in names if not ALLOWED_DATA_ENTRY.match(n))


@pytest.fixture
def passwd_stat() -> Iterator[None]:
    """Fail if /etc/passwd changed while the test ran (path-like UIDs aim there)."""
    before = os.stat("/etc/passwd")
    yield
    after = os.stat("/etc/passwd")
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)


def assert_refusal_left_no_trace(store: Store, tmp_path: Path) -> None:
    assert partial_files(store) == []
    assert object_names(store) == set()
    assert instance_rows(store) == []
    assert unexpected_entries(store.paths.data_dir) == []
    # tmp_path holds the data folder and the inputs made by the test, nothing else.
    assert {p.name for p in tmp_path.iterdir()} <= {"data", "in"}


def assert_still_serving(receiver: Receiver, store: Store, tmp_path: Path, seed: int) -> None:
    """C-ECHO answers and a good image is stored, indexed and its file committed."""
    host, port = receiver.address
    assert echo(Peer(host, port)) == StoreStatus.SUCCESS
    good = write_sample(tmp_path / "in" / f"good-{seed}.dcm", "ct", seed=seed, rows=16, columns=16)
    [result] = list(send([good], Peer(host, port)))
    assert result.status == StoreStatus.SUCCESS, result.message
    uid = str(pydicom.dcmread(good).SOPInstanceUID)
    assert uid in indexed_uids(store)
    assert partial_files(store) == []
    assert len(object_names(store)) == len(instance_rows(store))


def assert_rejected_audited(store: Store, status: StoreStatus, reason_part: str = "") -> None:
    rows = audit_rows(store, "ingest.rejected")
    assert rows, "the refusal was not audited"
    detail = rows[0]["detail"]
    assert detail["status"] == f"0x{status:04X}"
    assert reason_part in detail["reason"]


def assert_refused_cleanly(
    receiver: Receiver,
    store: Store,
    tmp_path: Path,
    path: Path,
    expected: StoreStatus,
    reason_part: str = "",
) -> None:
    """Sending `path` gets `expected`, the refusal is audited, leaves nothing behind, and the
    receiver goes on serving."""
    assert store_file(receiver.address, path) == expected
    assert_rejected_audited(store, expected, reason_part)
    assert_refusal_left_no_trace(store, tmp_path)
    assert_still_serving(receiver, store, tmp_path, seed=len(path.name) + 100)


# -- hostile datasets ----------------------------------------------------------------------


@pytest.mark.parametrize("which", ["instance", "class"])
def test_a_request_whose_uids_differ_from_the_dataset_is_refused_with_a900(
    start_receiver: StartReceiver, inputs: Path, tmp_path: Path, which: str
) -> None:
    receiver, store = start_receiver()
    ds = small_ct(seed=1)
    if which == "instance":
        meta = file_meta(CT, str(sample_uid("another instance")))
    else:
        meta = file_meta(CR, str(ds.SOPInstanceUID))
    path = write_raw(inputs / "mismatch.dcm", meta, encode_body(ds))

    assert_refused_cleanly(receiver, store, tmp_path, path, StoreStatus.SOP_MISMATCH)


def _truncated_in_header(ds: Dataset) -> bytes:
    body = encode_body(ds)
    return body[: len(body) // 8]  # cuts into the UIDs, well before the pixel data


def _truncated_in_pixels(ds: Dataset) -> bytes:
    return encode_body(ds)[:-100]  # the Pixel Data element claims 100 bytes more than follow


def _garbage(ds: Dataset) -> bytes:
    return bytes(range(7, 251)) * 8


def _series_number_past_infinity(ds: Dataset) -> bytes:
    ds.SeriesNumber = 7
    body = encode_body(ds)
    element = b"\x20\x00\x11\x00IS\x02\x007 "
    assert element in body
    return body.replace(element, b"\x20\x00\x11\x00IS\x06\x001e4000")  # int(inf) fails


def _unknown_vr(ds: Dataset) -> bytes:
    body = encode_body(ds)
    at = body.index(b"\x10\x00\x20\x00LO")  # Patient ID
    return body[: at + 4] + b"XX" + body[at + 6 :]


@pytest.mark.parametrize(
    "make_body",
    [
        _truncated_in_header,
        _truncated_in_pixels,
        _garbage,
        _series_number_past_infinity,
        _unknown_vr,
    ],
    ids=["truncated-header", "truncated-pixels", "garbage", "infinite-number", "unknown-vr"],
)
def test_a_dataset_that_cannot_be_parsed_is_refused_with_c000(
    start_receiver: StartReceiver,
    inputs: Path,
    tmp_path: Path,
    make_body: Callable[[Dataset], bytes],
) -> None:
    receiver, store = start_receiver()
    ds = small_ct(seed=2)
    meta = file_meta(CT, str(ds.SOPInstanceUID))
    path = write_raw(inputs / "broken.dcm", meta, make_body(ds))

    assert_refused_cleanly(receiver, store, tmp_path, path, StoreStatus.CANNOT_UNDERSTAND)


def test_a_dataset_without_a_study_uid_is_refused_naming_it(
    start_receiver: StartReceiver, inputs: Path, tmp_path: Path
) -> None:
    receiver, store = start_receiver()
    ds = small_ct(seed=3)
    del ds.StudyInstanceUID
    path = write_raw(inputs / "no-study.dcm", ds.file_meta, encode_body(ds))

    assert_refused_cleanly(
        receiver, store, tmp_path, path, StoreStatus.CANNOT_UNDERSTAND, "StudyInstanceUID"
    )


def test_a_refusal_tells_the_sender_why_in_its_error_comment(
    start_receiver: StartReceiver, inputs: Path
) -> None:
    receiver, _ = start_receiver()
    ds = small_ct(seed=5)
    del ds.StudyInstanceUID
    ds.save_as(inputs / "no-study.dcm", enforce_file_format=True)
    [result] = list(send([inputs / "no-study.dcm"], Peer(*receiver.address)))
    assert result.status == StoreStatus.CANNOT_UNDERSTAND
    assert result.message == "status 0xC000: StudyInstanceUID is missing"


def test_an_error_comment_is_short_plain_ascii() -> None:
    comment = error_comment("the file\\name \u00e9t\u00e9\n" + "x" * 80)
    assert len(comment) == 64 and comment.isascii() and "\\" not in comment
    assert comment.startswith("the file/name ?t? ") and comment.endswith("...")


@pytest.mark.usefixtures("passwd_stat")
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize(
    "uid",
    ["../../etc/passwd", "/", "/etc/passwd", "..", "1.2\x00/../../x", "1.2.3/../../../../tmp/x"],
    ids=["dotdot-passwd", "slash", "absolute", "dotdot", "nul", "uid-then-dotdot"],
)
def test_a_path_like_sop_instance_uid_is_refused_and_never_becomes_a_path(
    start_receiver: StartReceiver, inputs: Path, tmp_path: Path, uid: str
) -> None:
    receiver, store = start_receiver()
    ds = small_ct(seed=4)
    ds.SOPInstanceUID = uid
    path = write_raw(inputs / "path-like.dcm", file_meta(CT, uid), encode_body(ds))

    status = store_file(receiver.address, path)

    assert status == StoreStatus.CANNOT_UNDERSTAND
    assert_rejected_audited(store, StoreStatus.CANNOT_UNDERSTAND, "SOPInstanceUID")
    assert audit_rows(store, "ingest.rejected")[0]["subject"] == "instance:invalid"
    assert_refusal_left_no_trace(store, tmp_path)
    assert_still_serving(receiver, store, tmp_path, seed=103)


@pytest.mark.usefixtures("passwd_stat")
@pytest.mark.parametrize("calling_aet", ["../x", "a/b", "..", "/", "../../etc/passwd"])
def test_a_path_like_calling_ae_title_never_becomes_a_path(
    start_receiver: StartReceiver, inputs: Path, tmp_path: Path, calling_aet: str
) -> None:
    receiver, store = start_receiver()
    path = write_sample(inputs / "good.dcm", "ct", seed=5, rows=16, columns=16)
    ae = scu(calling_aet)
    ae.add_requested_context(CT, [ExplicitVRLittleEndian])

    assoc = ae.associate(*receiver.address, ae_title="APPLIANCE")

    if assoc.is_established:
        status = assoc.send_c_store(pydicom.dcmread(path))
        assoc.release()
        assert status.Status == StoreStatus.SUCCESS
        [row] = instance_rows(store)
        assert row["calling_aet"] == calling_aet  # recorded as data, not used as a name
        assert store.spool.path_of(row["file_name"]).is_file()
    else:
        assert assoc.is_rejected
        assert instance_rows(store) == []
    assert partial_files(store) == []
    assert unexpected_entries(store.paths.data_dir) == []
    assert {p.name for p in tmp_path.iterdir()} <= {"data", "in"}
    assert_still_serving(receiver, store, tmp_path, seed=104)


@pytest.mark.parametrize("depth", [250, 5000])
def test_deeply_nested_sequences_get_a_clear_status(
    start_receiver: StartReceiver, inputs: Path, tmp_path: Path, depth: int
) -> None:
    receiver, store = start_receiver()
    ds = small_ct(seed=6)
    del ds.PixelData  # (0040,A730) must come last: tags ascend
    body = encode_body(ds) + nested_sequences(depth)
    path = write_raw(inputs / "nested.dcm", ds.file_meta, body)

    status = store_file(receiver.address, path)

    assert status in (StoreStatus.SUCCESS, StoreStatus.CANNOT_UNDERSTAND)
    if status == StoreStatus.SUCCESS:
        assert indexed_uids(store) == {str(ds.SOPInstanceUID)}
    else:
        assert_rejected_audited(store, StoreStatus.CANNOT_UNDERSTAND)
        assert_refusal_left_no_trace(store, tmp_path)
    assert_still_serving(receiver, store, tmp_path, seed=105)


def _unknown_class_file(folder: Path) -> Path:
    ds = small_ct(seed=7)
    ds.SOPClassUID = UNKNOWN_SOP_CLASS
    return write_raw(
        folder / "unknown-class.dcm",
        file_meta(UNKNOWN_SOP_CLASS, str(ds.SOPInstanceUID)),
        encode_body(ds),
    )


def test_an_unknown_sop_class_gets_no_presentation_context_from_pynetdicom(
    start_receiver: StartReceiver, inputs: Path, tmp_path: Path
) -> None:
    receiver, store = start_receiver()
    path = _unknown_class_file(inputs)
    ae = scu()
    ae.add_requested_context(UNKNOWN_SOP_CLASS, [ExplicitVRLittleEndian])
    ae.add_requested_context(Verification)

    assoc = ae.associate(*receiver.address, ae_title="APPLIANCE")
    assert assoc.is_established
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        rejected = {str(cx.abstract_syntax) for cx in assoc.rejected_contexts}
        with pytest.raises(ValueError, match="No presentation context"):
            assoc.send_c_store(pydicom.dcmread(path))
    finally:
        assoc.release()

    assert UNKNOWN_SOP_CLASS not in accepted
    assert UNKNOWN_SOP_CLASS in rejected
    assert_refusal_left_no_trace(store, tmp_path)
    assert_still_serving(receiver, store, tmp_path, seed=106)


@needs_dcmtk
def test_an_unknown_sop_class_makes_storescu_fail(
    start_receiver: StartReceiver, inputs: Path, tmp_path: Path
) -> None:
    receiver, store = start_receiver()
    path = _unknown_class_file(inputs)

    result = storescu(receiver.address, path, options=["-aet", "DCMTK-SCU"])

    assert result.returncode != 0
    assert "No presentation context" in result.stdout + result.stderr
    assert_refusal_left_no_trace(store, tmp_path)
    assert_still_serving(receiver, store, tmp_path, seed=107)


# -- who may talk to the receiver ----------------------------------------------------------


def test_an_association_past_the_limit_is_rejected_saying_so(
    start_receiver: StartReceiver,
) -> None:
    receiver, store = start_receiver(receiver={"max_associations": 1})
    first = scu("MODALITY1")
    first.add_requested_context(Verification)
    held = first.associate(*receiver.address, ae_title="APPLIANCE")
    assert held.is_established
    try:
        second = scu("MODALITY2")
        second.add_requested_context(Verification)
        assert second.associate(*receiver.address, ae_title="APPLIANCE").is_rejected
        wait_for(lambda: bool(audit_rows(store, "association.rejected")), what="the audit row")
        [row] = audit_rows(store, "association.rejected")
        assert row["detail"]["reason"] == (
            "too many associations at once (receiver.max_associations is 1)"
        )
    finally:
        held.release()


def test_a_calling_ae_title_not_allowed_is_rejected_and_audited(
    start_receiver: StartReceiver, inputs: Path
) -> None:
    receiver, store = start_receiver(receiver={"allowed_calling_aets": ["MODALITY"]})
    path = write_sample(inputs / "good.dcm", "ct", seed=8, rows=16, columns=16)
    intruder = scu("INTRUDER")
    intruder.add_requested_context(Verification)

    assoc = intruder.associate(*receiver.address, ae_title="APPLIANCE")

    assert assoc.is_rejected
    wait_for(
        lambda: bool(audit_rows(store, "association.rejected")), what="the rejection's audit row"
    )
    [row] = audit_rows(store, "association.rejected")
    assert row["actor"].startswith("ae:INTRUDER@")
    assert row["detail"]["reason"] == "calling AE title 'INTRUDER' is not allowed"
    # The allowed title still gets through on the same receiver.
    [result] = list(send([path], Peer(*receiver.address, calling_aet="MODALITY")))
    assert result.status == StoreStatus.SUCCESS
    assert len(instance_rows(store)) == 1


def test_a_source_address_outside_the_allowed_networks_is_refused_and_audited(
    start_receiver: StartReceiver, inputs: Path, tmp_path: Path
) -> None:
    receiver, store = start_receiver(receiver={"allowed_networks": ["10.0.0.0/8"]})
    ae = scu()
    ae.add_requested_context(Verification)

    assoc = ae.associate(*receiver.address, ae_title="APPLIANCE")

    assert not assoc.is_established
    wait_for(lambda: bool(audit_rows(store, "association.refused")), what="the refusal's audit row")
    [row] = audit_rows(store, "association.refused")
    assert row["actor"] == "ip:127.0.0.1"
    assert instance_rows(store) == []
    # Loopback allowed: the same check lets it through.
    allowing, _ = start_receiver(receiver={"allowed_networks": ["10.0.0.0/8", "127.0.0.0/8"]})
    assert echo(Peer(*allowing.address)) == StoreStatus.SUCCESS


# -- disk full -----------------------------------------------------------------------------


def test_free_space_under_the_floor_refuses_with_a700_and_keeps_nothing(
    start_receiver: StartReceiver, inputs: Path, tmp_path: Path
) -> None:
    free_mb = shutil.disk_usage(tmp_path).free // 2**20
    receiver, store = start_receiver(storage={"free_space_floor_mb": free_mb + 1024})
    path = write_sample(inputs / "good.dcm", "ct", seed=9, rows=16, columns=16)

    [result] = list(send([path], Peer(*receiver.address)))

    assert result.status == StoreStatus.OUT_OF_RESOURCES
    assert_rejected_audited(store, StoreStatus.OUT_OF_RESOURCES, "floor")
    assert_refusal_left_no_trace(store, tmp_path)
    assert echo(Peer(*receiver.address)) == StoreStatus.SUCCESS


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs mounted under tmp_path (needs root); lazily unmounted afterwards."""
    with mounted_tmpfs(tmp_path / "tiny", "3m") as mount_point:
        yield mount_point


@pytest.fixture
def tiny_receiver(tiny_fs: Path, start_receiver: StartReceiver) -> tuple[Receiver, Store]:
    """A receiver whose data folder (database and spool) lives on the tiny filesystem."""
    return start_receiver(storage={"data_dir": str(tiny_fs / "data"), "free_space_floor_mb": 1})


def fill(folder: Path, leave_bytes: int) -> Path:
    """A filler file that leaves about `leave_bytes` free on the folder's filesystem."""
    filler = folder / "filler.bin"
    filler.write_bytes(b"\x00" * max(shutil.disk_usage(folder).free - leave_bytes, 0))
    return filler


def large_sample(folder: Path, seed: int) -> Path:
    """A 256x256 16-bit CT sample, about 130 KB."""
    return write_sample(folder / f"large-{seed}.dcm", "ct", seed=seed)


def push_until_refused(
    address: Address, inputs: Path, limit: int = 30
) -> tuple[list[str], Path, int | None]:
    """Push distinct large images on one association until one is not stored.

    Return the acknowledged SOP Instance UIDs, the file that was not stored and its status
    (None: no response, or the association was lost).
    """
    acknowledged: list[str] = []
    ae = scu()
    ae.add_requested_context(CT, [ExplicitVRLittleEndian])
    assoc = ae.associate(*address, ae_title="APPLIANCE")
    assert assoc.is_established
    try:
        for seed in range(1000, 1000 + limit):
            path = large_sample(inputs, seed)
            ds = pydicom.dcmread(path)
            response = assoc.send_c_store(ds)
            status = int(response.Status) if "Status" in response else None
            if status != StoreStatus.SUCCESS:
                return acknowledged, path, status
            acknowledged.append(str(ds.SOPInstanceUID))
    finally:
        if assoc.is_established:
            assoc.release()
    raise AssertionError(f"{limit} images fitted on a 3 MiB filesystem")


def assert_spool_consistent(store: Store) -> None:
    """No partial file, every object indexed and present, every indexed file readable."""
    wait_for(
        lambda: partial_files(store) == [],
        timeout_s=5.0,
        what="spool/tmp to be empty",
        state=lambda: [(p.name, p.stat().st_size) for p in store.spool.tmp.iterdir()],
    )
    rows = instance_rows(store)
    assert object_names(store) == {row["file_name"] for row in rows}
    for row in rows:
        assert row["state"] == "present"
        ds = pydicom.dcmread(store.spool.path_of(row["file_name"]))
        assert ds.SOPInstanceUID == row["sop_instance_uid"]
        assert len(ds.PixelData) == 256 * 256 * 2


def test_a_full_filesystem_refuses_without_a_partial_file_and_recovers(
    tiny_fs: Path, tiny_receiver: tuple[Receiver, Store], inputs: Path
) -> None:
    receiver, store = tiny_receiver
    filler = fill(tiny_fs, leave_bytes=1536 * 1024)

    acknowledged, refused, status = push_until_refused(receiver.address, inputs)

    assert acknowledged, "not even one image fitted: the filler is too large"
    assert status in (StoreStatus.OUT_OF_RESOURCES, None)
    if status == StoreStatus.OUT_OF_RESOURCES:
        assert_rejected_audited(store, StoreStatus.OUT_OF_RESOURCES)
    assert set(acknowledged) <= indexed_uids(store)
    assert_spool_consistent(store)
    assert unexpected_entries(store.paths.data_dir) == []

    filler.unlink()
    [result] = list(send([refused], Peer(*receiver.address)))

    assert result.status == StoreStatus.SUCCESS
    assert str(pydicom.dcmread(refused).SOPInstanceUID) in indexed_uids(store)
    assert_spool_consistent(store)


def test_a_disk_that_fills_during_the_transfer_leaves_no_partial_file(
    tiny_fs: Path, tiny_receiver: tuple[Receiver, Store], inputs: Path
) -> None:
    """Less room than one image when it starts (the floor refuses it before it is written)."""
    receiver, store = tiny_receiver
    path = large_sample(inputs, seed=2000)
    filler = fill(tiny_fs, leave_bytes=path.stat().st_size // 2)

    ae = scu()
    ae.add_requested_context(CT, [ExplicitVRLittleEndian])
    assoc = ae.associate(*receiver.address, ae_title="APPLIANCE")
    assert assoc.is_established
    response = assoc.send_c_store(pydicom.dcmread(path))
    if assoc.is_established:
        assoc.release()

    assert response.get("Status") != StoreStatus.SUCCESS
    assert instance_rows(store) == []
    assert_spool_consistent(store)

    filler.unlink()
    [result] = list(send([path], Peer(*receiver.address)))
    assert result.status == StoreStatus.SUCCESS
    assert_spool_consistent(store)


def test_a_large_image_is_refused_by_its_announced_size_before_the_disk_fills(
    tiny_fs: Path, tiny_receiver: tuple[Receiver, Store], inputs: Path
) -> None:
    """The Pixel Data length announces 2 MiB where less than that is left above the floor: the
    image is refused before its pixels are written, and a small one afterwards is stored."""
    receiver, store = tiny_receiver
    large = write_sample(inputs / "large.dcm", "ct", seed=3000, rows=1024, columns=1024)
    small = write_sample(inputs / "small.dcm", "ct", seed=3001, rows=16, columns=16)
    fill(tiny_fs, leave_bytes=1792 * 1024)
    room = shutil.disk_usage(tiny_fs).free - store.spool.floor
    assert small.stat().st_size < room < large.stat().st_size

    [refused] = list(send([large], Peer(*receiver.address)))

    assert refused.status == StoreStatus.OUT_OF_RESOURCES
    # "incoming": refused on the size announced, not on a write that found the disk full.
    assert_rejected_audited(store, StoreStatus.OUT_OF_RESOURCES, "less 2.0 MiB incoming")
    assert shutil.disk_usage(tiny_fs).free - store.spool.floor >= room - 256 * 1024
    assert_spool_consistent(store)

    [result] = list(send([small], Peer(*receiver.address)))
    assert result.status == StoreStatus.SUCCESS, result.message
    assert str(pydicom.dcmread(small).SOPInstanceUID) in indexed_uids(store)
