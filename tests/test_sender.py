"""The sender role as a real process, delivering the outbox to real peers over loopback: DCMTK's
storescp, Orthanc, and pynetdicom SCPs that reject us, refuse a kind of object, fail one object
or answer slowly. Every test asserts what arrived (by SOP Instance UID) and what the outbox
says, in the words a clinician reads; none asserts a timing."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, EncapsulatedPDFStorage
from pynetdicom import AllStoragePresentationContexts

from appliance.bench.harness.dicom import AE_TITLE as STORESCP_AE
from appliance.bench.harness.orthanc import Orthanc
from appliance.bench.harness.processes import free_port
from appliance.bench.peers import run_storescp
from appliance.cli import main
from appliance.config import Settings
from appliance.sender import backoff, reasons
from appliance.sender.reasons import Action
from appliance.sender.role import serve
from appliance.store import audit, outbox, status
from appliance.store.db import transaction

from conftest import needs_dcmtk, wait_for
from sender_fixtures import (
    PACS_AE,
    Box,
    Scp,
    destination,
    document,
    epoch,
    held_at,
    images,
    new_box,
    pdf_report,
    received_by_storescp,
    sent_audits,
    structured_report,
)

# ---- the box and the peers, closed or stopped at the test's end ---------------------------------


@pytest.fixture
def make_box(tmp_path: Path) -> Iterator[Callable[..., Box]]:
    boxes: list[Box] = []

    def make(destinations: list[dict[str, Any]], **sender: Any) -> Box:
        box = new_box(tmp_path, destinations, **sender)
        boxes.append(box)
        return box

    yield make
    for box in boxes:
        for proc in box.procs:
            proc.stop()
        box.store.close()


@pytest.fixture
def scp() -> Iterator[Callable[..., Scp]]:
    started: list[Scp] = []

    def start(**options: Any) -> Scp:
        server = Scp(**options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# ---- delivered ------------------------------------------------------------------------------


@needs_dcmtk
def test_every_object_reaches_storescp_on_one_association(
    make_box: Callable[..., Box], tmp_path: Path
) -> None:
    with run_storescp(tmp_path / "storescp") as peer:
        box = make_box([destination("pacs", peer.port, STORESCP_AE)])
        uids = box.add([*images(4), structured_report(), pdf_report()], ["pacs"])
        original = box.add_original("pacs")
        proc = box.sender()
        assert f"pacs ({STORESCP_AE}@127.0.0.1:{peer.port}" in "".join(proc.output)
        wait_for(lambda: box.all_sent("pacs", 7), what="all sent", state=lambda: box.rows("pacs"))
        assert sorted(received_by_storescp(peer.accepted)) == sorted([*uids, original])
    assert sorted(sent_audits(box)) == sorted([*uids, original])
    assert {row["last_reason"] for row in box.rows("pacs")} == {""}
    status = outbox.destination_status(box.store.conn, "pacs")
    assert status is not None and (status["reachable"], status["failures"]) == (1, 0)


def test_orthanc_holds_each_object_once(make_box: Callable[..., Box], orthanc: Orthanc) -> None:
    box = make_box([destination("orthanc", orthanc.dicom_port, orthanc.ae_title)])
    uids = [*box.add([*images(3), pdf_report()], ["orthanc"]), box.add_original("orthanc")]
    box.sender()
    wait_for(lambda: box.all_sent("orthanc", 5), what="all sent", state=lambda: box.rows("orthanc"))
    assert sorted(orthanc.instance_uids()) == sorted(uids)
    assert orthanc.count_instances() == 5
    stored = pydicom.dcmread(BytesIO(orthanc.instance_file(uids[-1])))
    assert stored.SOPInstanceUID == box.original_uid


def test_serve_in_a_thread_delivers_and_stops_on_its_event(
    make_box: Callable[..., Box], scp: Callable[..., Scp]
) -> None:
    peer = scp()
    box = make_box([destination("pacs", peer.port)])
    uids = box.add(images(2), ["pacs"])
    stop, code = threading.Event(), []
    paths = box.store.paths
    thread = threading.Thread(target=lambda: code.append(serve(box.settings, paths, stop)))
    thread.start()
    wait_for(lambda: box.all_sent("pacs", 2), what="all sent", state=lambda: box.rows("pacs"))
    stop.set()
    box.ring()
    thread.join(timeout=60)
    assert code == [0]
    assert sorted(peer.received) == sorted(uids)
    [state] = [s for s in status.role_states(box.store.conn) if s.role == "sender"]
    assert not state.running and state.detail["destinations"] == ["pacs"]


# ---- the destination in trouble ----------------------------------------------------------------


def test_an_unreachable_destination_waits_without_a_busy_loop_then_drains(
    make_box: Callable[..., Box], scp: Callable[..., Scp]
) -> None:
    port = free_port()  # nothing listens there yet
    box = make_box([destination("pacs", port)])
    uids = box.add(images(3), ["pacs"])
    box.sender()
    wanted = f"cannot reach 127.0.0.1:{port}: connection refused"

    def waiting_with_reason() -> bool:
        rows = box.rows("pacs")
        return all(r["state"] == "waiting" and r["last_reason"].startswith(wanted) for r in rows)

    wait_for(waiting_with_reason, what="the reason", state=lambda: box.rows("pacs"))
    for row in box.rows("pacs"):
        assert row["attempts"] >= 1
        assert row["next_try"] > epoch(row["updated_at"])  # backing off, not due at once
    status = outbox.destination_status(box.store.conn, "pacs")
    assert status is not None and status["reachable"] == 0 and status["detail"].startswith(wanted)
    assert status["next_try"] > epoch(status["checked_at"])
    time.sleep(3)  # a busy loop would try hundreds of times meanwhile
    attempts = max(row["attempts"] for row in box.rows("pacs"))
    assert attempts <= 12, attempts
    peer = scp(port=port)
    wait_for(lambda: box.all_sent("pacs", 3), what="drained", state=lambda: box.rows("pacs"))
    assert sorted(peer.received) == sorted(uids)
    status = outbox.destination_status(box.store.conn, "pacs")
    assert status is not None and (status["reachable"], status["failures"]) == (1, 0)


def test_a_rejected_calling_ae_title_waits_with_that_reason(
    make_box: Callable[..., Box], scp: Callable[..., Scp]
) -> None:
    peer = scp(calling_aets=["FRIEND"])
    box = make_box([destination("pacs", peer.port, calling_ae_title="STRANGER")])
    box.add(images(2), ["pacs"])
    box.sender()
    wanted = (
        "the PACS rejected the association permanently: calling AE title not recognised"
        " (the box calls itself 'STRANGER'"
    )

    def rejected() -> bool:
        rows = box.rows("pacs")
        return all(r["state"] == "waiting" and r["last_reason"].startswith(wanted) for r in rows)

    wait_for(rejected, what="the rejection", state=lambda: box.rows("pacs"))
    assert "[A-ASSOCIATE-RJ result 1, source 1, reason 3]" in box.rows("pacs")[0]["last_reason"]
    assert peer.received == []
    retries = audit.recent(box.store.conn, "send.retry")
    assert retries and retries[0]["detail"]["reason"].startswith(wanted)


def test_a_failure_status_fails_that_object_only_and_a_warning_is_noted(
    make_box: Callable[..., Box], scp: Callable[..., Scp]
) -> None:
    made = images(5)
    bad, warned, full = (str(ds.SOPInstanceUID) for ds in made[1:4])
    told_full: list[str] = []

    def answer(uid: str) -> int | Dataset:
        if uid == bad:
            status = Dataset()
            status.Status, status.ErrorComment = 0xC000, "cannot parse"
            return status
        if uid == warned:
            return 0xB000
        if uid == full and not told_full:  # out of resources once, then it has room
            told_full.append(uid)
            return 0xA700
        return 0x0000

    peer = scp(answer=answer)
    box = make_box([destination("pacs", peer.port)])
    uids = box.add(made, ["pacs"])
    box.sender()

    def settled() -> bool:
        return box.states("pacs") == {"sent": 4, "failed": 1}

    wait_for(settled, what="all settled", state=lambda: box.rows("pacs"))
    rows = box.by_uid("pacs")
    assert rows[bad]["last_reason"] == (
        'the PACS refused the object: it cannot understand it (the PACS said: "cannot parse")'
        " [status 0xC000]"
    )
    assert rows[warned]["state"] == "sent"
    assert rows[warned]["last_reason"].startswith("sent with a warning: the PACS changed some")
    assert rows[full]["attempts"] == 2  # put back once, then sent
    reasons_given = [r["detail"]["reason"] for r in audit.recent(box.store.conn, "send.retry")]
    assert any(r.startswith("the PACS is out of resources") for r in reasons_given)
    assert sorted(set(peer.received)) == sorted(uids)
    assert sorted(sent_audits(box)) == sorted(u for u in uids if u != bad)


def test_a_kind_of_object_the_pacs_does_not_take_fails_with_a_plain_reason(
    make_box: Callable[..., Box], scp: Callable[..., Scp]
) -> None:
    peer = scp(classes=["1.2.840.10008.5.1.4.1.1.7"])  # Secondary Capture only
    box = make_box([destination("pacs", peer.port), destination("reports", peer.port)])
    sr = structured_report()
    uids = box.add([*images(2), sr], ["pacs"])
    box.add([pdf_report()], ["reports"])  # nothing on that association is accepted
    box.sender()
    wait_for(
        lambda: (
            box.states("pacs") == {"sent": 2, "failed": 1}
            and box.states("reports") == {"failed": 1}
        ),
        what="settled",
        state=lambda: (box.rows("pacs"), box.rows("reports")),
    )
    reason = box.by_uid("pacs")[str(sr.SOPInstanceUID)]["last_reason"]
    assert reason.startswith("the PACS does not accept Comprehensive 3D SR objects [SOP class")
    [report] = box.rows("reports")
    assert report["last_reason"].startswith("the PACS does not accept Encapsulated PDF objects")
    assert sorted(peer.received) == sorted(uids[:2])
    status = outbox.destination_status(box.store.conn, "reports")
    assert status is not None and status["reachable"] == 1  # it answered: nothing to back off


def test_one_destination_down_does_not_hold_up_the_other(
    make_box: Callable[..., Box], scp: Callable[..., Scp]
) -> None:
    peer = scp()
    down = free_port()
    box = make_box([destination("up", peer.port), destination("down", down)])
    uids = box.add(images(4), ["down", "up"])
    with transaction(box.store.conn):  # queued before a destination was removed from the config
        outbox.queue_deliveries(
            box.store.conn, "gone", box.study_id, [(None, box.instance_id, "1.2.3")]
        )
    box.sender()
    wait_for(lambda: box.all_sent("up", 4), what="all sent to up", state=lambda: box.rows("up"))
    wait_for(
        lambda: all(r["last_reason"].startswith("cannot reach") for r in box.rows("down")),
        what="down waiting",
        state=lambda: box.rows("down"),
    )
    assert sorted(peer.received) == sorted(uids)
    assert box.states("down") == {"waiting": 4}
    gone = wait_for(lambda: outbox.destination_status(box.store.conn, "gone"), what="gone status")
    assert gone["detail"] == reasons.NOT_CONFIGURED
    assert box.states("gone") == {"waiting": 1}


def test_a_destination_configured_again_is_no_longer_called_not_configured(
    make_box: Callable[..., Box], scp: Callable[..., Scp]
) -> None:
    peer = scp()
    box = make_box([destination("pacs", peer.port)])
    with transaction(box.store.conn):  # what a sender said while `pacs` was out of the config
        outbox.record_destination(box.store.conn, "pacs", None, reasons.NOT_CONFIGURED)
    box.sender()  # ready once it has looked at the destinations; nothing is queued
    status = outbox.destination_status(box.store.conn, "pacs")
    assert status is not None and (status["reachable"], status["detail"]) == (None, "")


def test_more_kinds_than_one_association_carries_go_on_the_next(
    make_box: Callable[..., Box], scp: Callable[..., Scp]
) -> None:
    classes = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts][:130]
    made = [document(sop_class, "OT") for sop_class in classes]
    peer = scp()
    box = make_box([destination("pacs", peer.port)], batch=200)
    uids = box.add(made, ["pacs"])
    box.sender()
    wait_for(lambda: box.all_sent("pacs", 130), what="all sent", state=lambda: box.states("pacs"))
    assert sorted(peer.received) == sorted(uids)
    [later] = audit.recent(box.store.conn, "send.retry")
    assert (later["detail"]["objects"], later["detail"]["reason"]) == (2, reasons.NEXT_ASSOCIATION)
    assert {row["attempts"] for row in box.rows("pacs")} == {1}


def test_an_object_the_pacs_always_drops_does_not_hold_up_the_others(
    make_box: Callable[..., Box], scp: Callable[..., Scp]
) -> None:
    made = images(4)
    dropped = str(made[0].SOPInstanceUID)  # the oldest: first in every batch
    peer = scp(drop=lambda uid: uid == dropped)
    box = make_box([destination("pacs", peer.port)])
    uids = box.add(made, ["pacs"])
    box.sender()
    wait_for(
        lambda: box.states("pacs") == {"sent": 3, "waiting": 1},
        what="the others sent",
        state=lambda: box.states("pacs"),
    )
    assert sorted(set(peer.received)) == sorted(uids)
    row = box.by_uid("pacs")[dropped]
    assert row["last_reason"].startswith("the connection to the PACS was lost while sending")
    assert row["attempts"] >= 1


def test_a_pacs_that_takes_associations_but_drops_every_object_backs_off_further(
    make_box: Callable[..., Box], scp: Callable[..., Scp]
) -> None:
    peer = scp(drop=lambda uid: True)
    box = make_box([destination("pacs", peer.port)])
    box.add(images(2), ["pacs"])
    box.sender()

    def failures() -> int:
        status = outbox.destination_status(box.store.conn, "pacs")
        return 0 if status is None else int(status["failures"])

    # An association alone is not a delivery: the failures in a row keep counting.
    wait_for(lambda: failures() >= 3, what="three failures in a row", state=failures)
    assert box.states("pacs") == {"waiting": 2}


# ---- crash and outage ------------------------------------------------------------------------


def test_a_sender_killed_mid_association_delivers_everything_after_restart(
    make_box: Callable[..., Box], scp: Callable[..., Scp]
) -> None:
    gate = threading.Event()
    peer = scp(answer=held_at(4, gate))
    box = make_box([destination("pacs", peer.port)], batch=50)
    uids = box.add(images(8), ["pacs"])
    proc = box.sender()
    wait_for(lambda: len(peer.received) >= 4, what="the fourth object in flight")
    proc.kill()
    gate.set()
    assert box.states("pacs") == {"sent": 3, "sending": 5}  # in flight, and those after it
    box.sender()
    wait_for(lambda: box.all_sent("pacs", 8), what="all sent", state=lambda: box.rows("pacs"))
    # Every object arrived; the one in flight at the kill came twice, with the same UID.
    assert sorted(peer.received) == sorted([*uids, uids[3]])
    interrupted = audit.recent(box.store.conn, "send.interrupted")
    assert [row["detail"]["objects"] for row in interrupted] == [5]


def test_sigterm_lets_the_object_in_flight_finish_and_the_rest_wait_untried(
    make_box: Callable[..., Box], scp: Callable[..., Scp]
) -> None:
    gate = threading.Event()
    peer = scp(answer=held_at(4, gate))
    box = make_box([destination("pacs", peer.port)], batch=50)
    box.add(images(8), ["pacs"])
    proc = box.sender()
    wait_for(lambda: len(peer.received) >= 4, what="the fourth object in flight")
    assert proc.process is not None
    proc.process.send_signal(signal.SIGTERM)
    wait_for(lambda: any("sender stopping" in line for line in proc.output), what="stopping")
    gate.set()
    assert proc.stop() == 0
    assert box.states("pacs") == {"sent": 4, "waiting": 4}
    waiting = [r for r in box.rows("pacs") if r["state"] == "waiting"]
    assert {(r["attempts"], r["last_reason"]) for r in waiting} == {(0, reasons.STOPPED)}


def test_orthanc_down_then_back_gets_everything_exactly_once(
    make_box: Callable[..., Box], orthanc: Orthanc
) -> None:
    box = make_box([destination("orthanc", orthanc.dicom_port, orthanc.ae_title)])
    first = box.add(images(2), ["orthanc"])
    box.sender()
    wait_for(
        lambda: box.all_sent("orthanc", 2), what="first sent", state=lambda: box.rows("orthanc")
    )
    orthanc.stop()
    later = box.add([*images(3, "cr"), structured_report()], ["orthanc"])
    wait_for(
        lambda: sum(r["last_reason"].startswith("cannot reach") for r in box.rows("orthanc")) == 4,
        what="waiting for Orthanc",
        state=lambda: box.rows("orthanc"),
    )
    orthanc.start()  # the same ports and storage
    wait_for(lambda: box.all_sent("orthanc", 6), what="drained", state=lambda: box.rows("orthanc"))
    held = orthanc.instance_uids()
    assert sorted(held) == sorted([*first, *later])
    assert len(held) == len(set(held)) == orthanc.count_instances() == 6
    assert sorted(sent_audits(box)) == sorted([*first, *later])  # one success each


# ---- missing files, `appliance echo NAME`, the words and the back-off ----------------------------


def test_a_file_missing_from_the_box_fails_with_that_reason(
    make_box: Callable[..., Box], scp: Callable[..., Scp]
) -> None:
    peer = scp()
    box = make_box([destination("pacs", peer.port)])
    uids = box.add(images(2), ["pacs"])
    name = box.store.conn.execute(
        "SELECT file_name FROM outputs WHERE sop_instance_uid = ?", (uids[0],)
    ).fetchone()[0]
    box.store.outputs.path_of(name).unlink()
    box.sender()
    wait_for(
        lambda: box.states("pacs") == {"failed": 1, "sent": 1},
        what="settled",
        state=lambda: box.rows("pacs"),
    )
    assert box.by_uid("pacs")[uids[0]]["last_reason"] == "the file is missing from the box"
    assert peer.received == [uids[1]]


def test_echo_by_destination_name_says_whether_it_answers(
    make_box: Callable[..., Box], scp: Callable[..., Scp], capsys: pytest.CaptureFixture[str]
) -> None:
    peer = scp()
    down = free_port()
    box = make_box([destination("pacs", peer.port), destination("down", down)])
    assert main(["--config", str(box.config), "echo", "pacs"]) == 0
    assert "pacs: reachable: it answered the echo [status 0x0000]" in capsys.readouterr().out
    assert main(["--config", str(box.config), "echo", "down"]) == 1
    out = capsys.readouterr().out
    assert f"down: NOT reachable: cannot reach 127.0.0.1:{down}: connection refused" in out
    assert main(["--config", str(box.config), "echo", "nowhere"]) == 2
    assert "configured: pacs, down" in capsys.readouterr().err
    assert main(["echo", f"127.0.0.1:{peer.port}", "--aec", PACS_AE]) == 0  # HOST:PORT still works


@pytest.mark.parametrize(
    ("status", "action", "start"),
    [
        (0x0000, Action.SENT, ""),
        (0x0001, Action.SENT, "sent with a warning: the PACS sent a warning"),
        (0xB006, Action.SENT, "sent with a warning: the PACS discarded some data elements"),
        (0xB007, Action.SENT, "sent with a warning: the PACS says the object does not fully"),
        (0xA701, Action.RETRY, "the PACS is out of resources"),
        (0xA900, Action.FAILED, "the PACS refused the object: it does not match its kind"),
        (0xC123, Action.FAILED, "the PACS refused the object: it cannot understand it"),
        (0x0122, Action.FAILED, "the PACS does not accept Encapsulated PDF objects"),
        (0x0124, Action.FAILED, "the PACS refused the object: this box is not authorised"),
        (0x0110, Action.FAILED, "the PACS could not process the object"),
    ],
)
def test_statuses_in_plain_words_with_the_code(status: int, action: Action, start: str) -> None:
    verdict = reasons.judge(status, "", EncapsulatedPDFStorage)
    assert verdict.action is action
    assert verdict.words.startswith(start)
    if status:
        assert verdict.words.endswith(f"[status 0x{status:04X}]")
        assert verdict.summary == verdict.words  # no comment: nothing to leave out of the log


def test_kinds_of_object_are_named_as_people_name_them() -> None:
    assert reasons.kind_of(Comprehensive3DSRStorage) == "Comprehensive 3D SR objects"
    assert reasons.kind_of("1.2.840.10008.5.1.4.1.1.7") == "Secondary Capture images"
    assert reasons.kind_of("1.2.3.4") == "objects of class 1.2.3.4"


def test_the_back_off_doubles_up_to_its_cap_with_a_little_jitter() -> None:
    settings = Settings.model_validate({"sender": {"retry_min_s": 2, "retry_max_s": 60}}).sender
    for failures, base in [(1, 2), (2, 4), (3, 8), (5, 32), (6, 60), (500, 60)]:
        delay = backoff.delay_s(failures, settings)
        assert base * (1 - backoff.JITTER) <= delay <= base
