"""SIGKILL the receiver while four modalities push to it: nothing acknowledged may be lost.

A C-STORE success is a promise that the image is on disk and indexed. The receiver runs as a
real child process; it is killed once about half the images are acknowledged, restarted on the
same data folder (start-up reconciliation runs), and every acknowledged image must be there
exactly once, readable, with its row. Then the rest are pushed again and all must end up stored
exactly once.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from appliance.dicomout.scu import Peer, echo
from appliance.domain import StoreStatus
from appliance.samples import CT, write_sample
from appliance.store.db import connect

from conftest import RoleProcess

SENDERS = 4
PER_SENDER = 125
TOTAL = SENDERS * PER_SENDER
KILL_AT = TOTAL // 2
SCU_TIMEOUT_S = 10.0
# Short receiver timeouts make the end-of-association sweep of unfinished transfers
# (network + DIMSE timeout) reachable within the test. Not too short: pynetdicom's network
# timeout counts from the last PDU received, so it also runs while the receiver writes and
# fsyncs an image; at 2 s a loaded two-core machine aborted a healthy association.
RECEIVER_TIMEOUTS = {"network_timeout_s": 5.0, "dimse_timeout_s": 5.0, "acse_timeout_s": 10.0}
SWEEP_AGE_S = RECEIVER_TIMEOUTS["network_timeout_s"] + RECEIVER_TIMEOUTS["dimse_timeout_s"]


@dataclass
class Image:
    path: Path
    uid: str


@dataclass
class Tally:
    """What the senders saw, shared between their threads."""

    acknowledged: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    half_acknowledged: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ack(self, uid: str) -> None:
        with self.lock:
            self.acknowledged.add(uid)
            if len(self.acknowledged) >= KILL_AT:
                self.half_acknowledged.set()

    def error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)


def make_images(folder: Path) -> list[Image]:
    folder.mkdir()
    images = []
    for seed in range(TOTAL):
        path = write_sample(folder / f"{seed}.dcm", "ct", seed=seed, rows=64, columns=64)
        images.append(
            Image(path, str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
        )
    return images


def push(port: int, images: list[Image], tally: Tally, calling_aet: str) -> None:
    """C-STORE the images on one association; stop at the first one without success."""
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = SCU_TIMEOUT_S
    ae.add_requested_context(CT, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="APPLIANCE")
    if not assoc.is_established:
        tally.error(f"{calling_aet}: association not established")
        return
    try:
        for image in images:
            response = assoc.send_c_store(pydicom.dcmread(image.path))
            if response.get("Status") != StoreStatus.SUCCESS:
                tally.error(f"{calling_aet}: {image.uid}: status {response.get('Status')}")
                return
            tally.ack(image.uid)
    except (RuntimeError, ValueError, OSError) as exc:  # association gone under us
        tally.error(f"{calling_aet}: {type(exc).__name__}: {exc}")
    finally:
        if assoc.is_established:
            assoc.release()


def start_senders(port: int, batches: list[list[Image]], tally: Tally) -> list[threading.Thread]:
    threads = [
        threading.Thread(target=push, args=(port, batch, tally, f"MODALITY{n}"), daemon=True)
        for n, batch in enumerate(batches)
    ]
    for thread in threads:
        thread.start()
    return threads


def join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(timeout=4 * SCU_TIMEOUT_S)
        assert not thread.is_alive(), f"{thread.name} did not stop"


def instance_rows(db: Path) -> list[sqlite3.Row]:
    conn = connect(db)
    try:
        return conn.execute(
            "SELECT i.id, i.sop_instance_uid, i.file_name, i.state,"
            " (SELECT COUNT(*) FROM jobs j WHERE j.instance_ref = i.id) AS jobs"
            " FROM instances i"
        ).fetchall()
    finally:
        conn.close()


def check_store(proc: RoleProcess, must_hold: set[str]) -> dict[str, sqlite3.Row]:
    """Every row has its readable file, every file its row; `must_hold` are all present."""
    spool = proc.paths.spool
    rows = instance_rows(proc.paths.database)
    by_uid = {row["sop_instance_uid"]: row for row in rows}
    assert len(by_uid) == len(rows), "a SOP Instance UID is indexed twice"
    assert [row["sop_instance_uid"] for row in rows if row["state"] != "present"] == []
    on_disk = {f"{p.parent.name}/{p.name}" for p in (spool / "objects").glob("*/*.dcm")}
    assert on_disk == {row["file_name"] for row in rows}, "file without a row or row without file"
    for row in rows:
        ds = pydicom.dcmread(spool / "objects" / row["file_name"])
        assert ds.SOPInstanceUID == row["sop_instance_uid"]
        assert row["jobs"] == 1, f"{row['sop_instance_uid']} has {row['jobs']} jobs"
    lost = must_hold - set(by_uid)
    assert not lost, f"{len(lost)} acknowledged images lost: {sorted(lost)[:5]}"
    return by_uid


def partial_files(proc: RoleProcess) -> list[Path]:
    return sorted((proc.paths.spool / "tmp").iterdir())


def wait_for_swept_tmp(proc: RoleProcess, timeout_s: float) -> list[Path]:
    """Open and close associations until the receiver's end-of-association sweep has run on
    partials older than its sweep age; return what is left at the deadline."""
    deadline = time.monotonic() + timeout_s
    while (left := partial_files(proc)) and time.monotonic() < deadline:
        assert echo(Peer("127.0.0.1", proc.port)) == StoreStatus.SUCCESS
        time.sleep(0.2)
    return left


def split(images: list[Image], parts: int) -> list[list[Image]]:
    return [images[n::parts] for n in range(parts)]


@pytest.mark.slow
def test_sigkill_under_load_loses_no_acknowledged_image(
    role_process: Callable[..., RoleProcess],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    images = make_images(tmp_path / "in")
    proc = role_process(receiver=RECEIVER_TIMEOUTS)
    proc.start()
    tally = Tally()

    senders = start_senders(proc.port, split(images, SENDERS), tally)
    assert tally.half_acknowledged.wait(timeout=60), f"only {len(tally.acknowledged)} acknowledged"
    proc.kill()
    join_all(senders)
    acknowledged = set(tally.acknowledged)
    left_partial = [p.name for p in partial_files(proc)]

    proc.start()
    by_uid = check_store(proc, must_hold=acknowledged)
    lost = acknowledged - set(by_uid)
    record_property("acknowledged", len(acknowledged))
    record_property("lost", len(lost))
    record_property("stored_but_unacknowledged", len(set(by_uid) - acknowledged))
    record_property("partials_at_kill", len(left_partial))
    assert len(acknowledged) < TOTAL, "the kill came after every image was sent"
    assert tally.errors, "no sender noticed the receiver dying"

    again = Tally()
    rest = [image for image in images if image.uid not in acknowledged]
    join_all(start_senders(proc.port, split(rest, SENDERS), again))
    assert again.errors == []
    assert again.acknowledged == {image.uid for image in rest}
    by_uid = check_store(proc, must_hold={image.uid for image in images})
    assert len(by_uid) == TOTAL

    left = wait_for_swept_tmp(proc, timeout_s=SWEEP_AGE_S + 10)
    record_property("partials_left", len(left))
    assert left == [], f"partial transfers never swept: {[p.name for p in left]}"
