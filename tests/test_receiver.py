"""The receiver against real peers over loopback: DCMTK storescu/echoscu and pynetdicom."""

from __future__ import annotations

import socket
import sqlite3
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE

from appliance.cli import main
from appliance.dicomout.scu import Peer, echo, send
from appliance.errors import ApplianceError
from appliance.receiver import Receiver
from appliance.receiver.scp import TRANSFER_SYNTAXES
from appliance.samples import KINDS, sample_uid, write_sample
from appliance.store import Store

from conftest import RoleProcess, dcmtk, needs_dcmtk

Started = tuple[Receiver, Store]

# pydicom's bundled files (never downloaded) in each compressed transfer syntax we accept.
COMPRESSED_FILES = [
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG Baseline
    "JPGExtended.dcm",  # JPEG Extended
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG Lossless SV1
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS Lossless
    "JPEGLSNearLossless_16.dcm",  # JPEG-LS Near-lossless
    "MR_small_jp2klossless.dcm",  # JPEG 2000 Lossless
    "JPEG2000.dcm",  # JPEG 2000
    "MR_small_RLE.dcm",  # RLE Lossless
    "image_dfl.dcm",  # Deflated Explicit VR Little Endian
    "MR_small_bigendian.dcm",  # Explicit VR Big Endian
]


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the file meta group: what the sender put on the wire."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    group_length = struct.unpack("<I", data[140:144])[0]  # (0002,0000) UL, explicit VR LE
    return data[144 + group_length :]


def stored_files(store: Store) -> dict[str, Path]:
    rows = store.conn.execute("SELECT sop_instance_uid, file_name FROM instances").fetchall()
    return {uid: store.spool.path_of(name) for uid, name in rows}


def peer_of(receiver: Receiver) -> Peer:
    host, port = receiver.address
    return Peer(host, port, "APPLIANCE", "TESTSCU")


def bundled(name: str, tmp_path: Path) -> Path:
    """A pydicom test file with UIDs of its own.

    Several bundled files are one image in different transfer syntaxes with one SOP Instance
    UID (a re-send would replace the other), and some lack the Study/Series UIDs we require.
    """
    found = get_testdata_file(name, download=False)
    assert found is not None, f"{name} is not bundled with this pydicom"
    ds = pydicom.dcmread(found)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, sample_uid(name, keyword))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)  # pixel data stays encoded as it was
    return path


@pytest.fixture
def samples(tmp_path: Path) -> list[Path]:
    """One small file of every kind the receiver must take: CR, DX, US, SC, multi-frame."""
    folder = tmp_path / "samples"
    folder.mkdir()
    return [
        write_sample(folder / f"{kind}.dcm", kind, rows=48, columns=40, frames=3, seed=i)
        for i, kind in enumerate(KINDS)
    ]


@needs_dcmtk
def test_storescu_push_is_stored_byte_identical(receiver: Started, samples: list[Path]) -> None:
    rx, store = receiver
    host, port = rx.address
    result = subprocess.run(
        [
            dcmtk("storescu"),
            "-aet",
            "MODALITY",
            "-aec",
            "APPLIANCE",
            host,
            str(port),
            *map(str, samples),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    stored = stored_files(store)
    assert len(stored) == len(samples)
    for sample in samples:
        uid = str(pydicom.dcmread(sample, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(stored[uid]) == dataset_bytes(sample), sample.name
    calling = {r[0] for r in store.conn.execute("SELECT calling_aet FROM instances")}
    assert calling == {"MODALITY"}


def test_pynetdicom_push_of_compressed_files(receiver: Started, tmp_path: Path) -> None:
    rx, store = receiver
    files = [bundled(name, tmp_path) for name in COMPRESSED_FILES]
    results = list(send(files, peer_of(rx)))
    assert [r.status for r in results] == [0] * len(files), [r.message for r in results]
    stored = stored_files(store)
    for path in files:
        original = pydicom.dcmread(path, stop_before_pixels=True)
        kept = stored[str(original.SOPInstanceUID)]
        assert dataset_bytes(kept) == dataset_bytes(path), path.name
        kept_syntax = pydicom.dcmread(kept, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert kept_syntax == original.file_meta.TransferSyntaxUID


@pytest.mark.parametrize("syntax", TRANSFER_SYNTAXES)
def test_every_accepted_transfer_syntax_negotiates(receiver: Started, syntax: str) -> None:
    rx, _ = receiver
    ae = AE(ae_title="TESTSCU")
    for sop_class in (KINDS["cr"].sop_class, KINDS["us-multiframe"].sop_class):
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(*rx.address, ae_title="APPLIANCE")
    try:
        assert assoc.is_established
        accepted = {cx.transfer_syntax[0] for cx in assoc.accepted_contexts}
        assert accepted == {syntax}
    finally:
        assoc.release()


def test_second_push_is_a_duplicate_not_a_new_job(receiver: Started, samples: list[Path]) -> None:
    rx, store = receiver
    for _ in range(2):
        assert all(r.ok for r in send(samples[:3], peer_of(rx)))
    assert store.summary().instances == 3
    assert store.summary().jobs == {"queued": 3}
    duplicates = store.conn.execute(
        "SELECT COUNT(*) FROM audit WHERE action = 'ingest.duplicate'"
    ).fetchone()[0]
    assert duplicates == 3


@needs_dcmtk
def test_echoscu_and_our_echo(receiver: Started) -> None:
    rx, _ = receiver
    host, port = rx.address
    result = subprocess.run(
        [dcmtk("echoscu"), "-aec", "APPLIANCE", host, str(port)], capture_output=True, timeout=30
    )
    assert result.returncode == 0
    assert echo(peer_of(rx)) == 0


def test_wrong_called_ae_title_is_rejected(receiver: Started) -> None:
    rx, store = receiver
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(KINDS["cr"].sop_class)
    assoc = ae.associate(*rx.address, ae_title="SOMEONE_ELSE")
    assert assoc.is_rejected
    # pynetdicom sends the rejection before its EVT_REJECTED handlers run: poll for the row.
    deadline = time.monotonic() + 10
    actions: list[str] = []
    while not actions and time.monotonic() < deadline:
        actions = [r[0] for r in store.conn.execute("SELECT action FROM audit")]
        time.sleep(0.02)
    assert actions == ["association.rejected"]
    [detail] = store.conn.execute("SELECT detail FROM audit").fetchone()
    assert "called AE title 'SOMEONE_ELSE' is not this receiver's" in detail


def test_cli_send_echo_and_status(
    receiver: Started, samples: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rx, store = receiver
    host, port = rx.address
    assert main(["send", "--to", f"{host}:{port}", str(samples[0].parent)]) == 0
    assert f"sent {len(samples)} of {len(samples)}" in capsys.readouterr().out
    assert main(["echo", f"{host}:{port}"]) == 0
    assert "status 0x0000" in capsys.readouterr().out
    config = tmp_path / "status.yaml"
    config.write_text(f"storage:\n  data_dir: {store.paths.data_dir}\n  free_space_floor_mb: 1\n")
    assert main(["--config", str(config), "status"]) == 0
    out = capsys.readouterr().out
    assert f"instances {len(samples)}" in out and f"queue depth {len(samples)}" in out


def test_cli_send_reports_a_bad_peer(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["send", "--to", "nowhere", str(tmp_path)]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["echo", "nohost.invalid:104"], "cannot find host 'nohost.invalid'"),
        (["echo", "127.0.0.1:{port}"], "connection refused (nothing listens on that port)"),
        (["echo", "127.0.0.1:{port}", "--aet", "A" * 17], "calling AE title 'AAAAAAAAAAAAAAAAA'"),
        (["echo", "127.0.0.1:{port}", "--aec", ""], "called AE title ''"),
    ],
)
def test_cli_says_in_one_line_why_a_peer_cannot_be_reached(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    port = free_port()  # nothing listens there
    assert main([part.format(port=port) for part in argv]) == 2
    # The last line is ours (pytest's own log capture may add lines before it).
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("appliance: ") and says in last


def test_cli_send_of_no_dicom_file_reports_each_without_an_association(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM")
    assert main(["send", "--to", f"127.0.0.1:{free_port()}", str(text)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_receiver_role_reconciles_at_start(
    role_process: Callable[..., RoleProcess],
) -> None:
    proc = role_process()
    data = proc.paths.data_dir
    proc.start()
    proc.stop()
    # A file committed to the spool whose row never made it (crash between the two).
    orphan = data / "spool" / "objects" / "ab" / ("ab" + "0" * 30 + ".dcm")
    orphan.parent.mkdir(parents=True, exist_ok=True)
    write_sample(orphan, "us", rows=16, columns=16, seed=77)
    proc.start()
    assert any("store reconciled (1 repairs" in line for line in proc.output)
    with sqlite3.connect(data / "appliance.sqlite3") as db:
        assert db.execute("SELECT source FROM instances").fetchall() == [("recovered",)]
        audit = db.execute("SELECT actor, action FROM audit ORDER BY id").fetchall()
        assert audit == [("recovered:system", "ingest.stored"), ("system", "reconcile.indexed")]


def test_a_port_in_use_is_a_clear_error(
    receiver: Started, start_receiver: Callable[..., Started]
) -> None:
    rx, _ = receiver
    with pytest.raises(ApplianceError, match=r"cannot listen on 127\.0\.0\.1:\d+.*receiver\.port"):
        start_receiver(receiver={"port": rx.address[1]})
    assert echo(peer_of(rx)) == 0  # the running receiver is unaffected
