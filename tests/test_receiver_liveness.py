"""The receiver stays available to modalities whatever other peers do: stalled connections are
dropped at the negotiation deadline and audited with their own address, one address holds at
most its share of connections, a burst of connections is answered, and the service manager
hears that the receiver listens and keeps accepting.

Peers are real sockets over loopback; the stalled and bursting ones come from addresses of
their own in 127.0.0.0/8, as separate machines would.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE, build_context
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AddressInformation

from appliance.cli import main
from appliance.domain import StoreStatus
from appliance.receiver import Receiver
from appliance.samples import write_sample
from appliance.store import Store
from appliance.store.audit import recent

from conftest import RoleProcess, needs_dcmtk, storescu, wait_for

StartReceiver = Callable[..., tuple[Receiver, Store]]
FLOOR = {"free_space_floor_mb": 1}
STALLED_HEADER = b"\x01\x00\x00\x00\x01\x00"  # an A-ASSOCIATE-RQ of 256 bytes, never sent
DEADLINE_S = 1.0


def stalled_connection(address: tuple[str, int], source: str) -> socket.socket:
    """A connection from `source` that sends a 6-byte PDU header and then nothing."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.connect(address)
    sock.sendall(STALLED_HEADER)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the receiver has closed this connection (end of stream or a reset)."""
    sock.settimeout(0.05)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def audit_rows(store: Store, action: str) -> list[dict[str, Any]]:
    return recent(store.conn, action, limit=500)


def modality_store(address: tuple[str, int], path: Path) -> int | None:
    """One C-STORE from a pynetdicom SCU; None when the association was not accepted."""
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(pydicom.dcmread(path).SOPClassUID)
    assoc = ae.associate(*address, ae_title="APPLIANCE")
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    return int(status.Status) if "Status" in status else None


def answered(status: int | None) -> list[int] | None:
    """The status as a one-item list (0x0000 is a status too), None while not answered."""
    return None if status is None else [status]


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def test_eleven_stalled_connections_are_dropped_and_a_modality_stores(
    start_receiver: StartReceiver, inputs: Path, sockets: list[socket.socket]
) -> None:
    receiver, store = start_receiver(
        storage=FLOOR, receiver={"acse_timeout_s": DEADLINE_S, "max_associations": 10}
    )
    sources = [f"127.0.0.{n}" for n in range(11, 22)]
    sockets.extend(stalled_connection(receiver.address, source) for source in sources)
    image = write_sample(inputs / "ct.dcm", "ct", seed=1, rows=16, columns=16)

    # While the stalled peers hold every slot the modality is turned away; once they are
    # dropped at the deadline its next try is stored.
    [status] = wait_for(
        lambda: answered(modality_store(receiver.address, image)),
        timeout_s=30,
        what="an accepted association",
    )

    assert status == StoreStatus.SUCCESS
    assert all(wait_for(lambda s=s: closed_by_peer(s), timeout_s=30) for s in sockets)  # type: ignore[misc]
    dropped = wait_for(
        lambda: (
            len(audit_rows(store, "association.dropped")) >= 11
            and audit_rows(store, "association.dropped")
        ),
        timeout_s=30,
        what="11 audited drops",
    )
    assert sorted(row["actor"] for row in dropped) == sorted(f"ip:{s}" for s in sources)
    for row in dropped:
        # The count is what the receiver had read when the deadline struck: the 6 bytes, or
        # none yet on a busy machine; the deadline applies either way.
        reason = row["detail"]["reason"]
        assert re.search(r"no association within 1 s of connecting \([06] bytes received\)", reason)
    # Only the peers that stalled are named: never the modality that was turned away.
    assert "ip:127.0.0.1" not in {row["actor"] for row in audit_rows(store, "association.dropped")}
    assert not audit_rows(store, "association.refused")


def test_a_connection_that_sends_nothing_is_dropped_too(
    start_receiver: StartReceiver, sockets: list[socket.socket]
) -> None:
    receiver, _ = start_receiver(storage=FLOOR, receiver={"acse_timeout_s": DEADLINE_S})
    silent = socket.create_connection(receiver.address)
    sockets.append(silent)

    wait_for(lambda: closed_by_peer(silent), timeout_s=30, what="the silent peer to be closed")
    wait_for(
        lambda: receiver.connections.count("127.0.0.1") == 0,
        timeout_s=30,
        what="the connection to leave the receiver's count",
    )


def verification_ae(calling: str = "MODALITY") -> AE:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    return ae


def test_one_address_past_its_cap_is_rejected_with_local_limit_exceeded(
    start_receiver: StartReceiver, sockets: list[socket.socket]
) -> None:
    receiver, store = start_receiver(
        storage=FLOOR, receiver={"max_associations_per_address": 2, "acse_timeout_s": 30}
    )
    sockets.extend(stalled_connection(receiver.address, "127.0.0.5") for _ in range(2))
    wait_for(lambda: receiver.connections.count("127.0.0.5") == 2, what="two registered peers")

    third = verification_ae().associate(
        *receiver.address, ae_title="APPLIANCE", bind_address=("127.0.0.5", 0)
    )

    assert third.is_rejected
    answer = third.acceptor.primitive
    assert answer is not None
    assert (answer.result, answer.result_source, answer.diagnostic) == (0x02, 0x03, 0x02)
    [row] = wait_for(lambda: audit_rows(store, "association.refused"), what="the audit row")
    assert row["actor"] == "ip:127.0.0.5"
    assert "(receiver.max_associations_per_address)" in row["detail"]["reason"]
    # Another address is not held back by this one's share.
    other = verification_ae().associate(
        *receiver.address, ae_title="APPLIANCE", bind_address=("127.0.0.6", 0)
    )
    assert other.is_established
    assert other.send_c_echo().Status == StoreStatus.SUCCESS
    other.release()


def associate_rq(calling: str, called: str = "APPLIANCE") -> bytes:
    """The bytes of an A-ASSOCIATE-RQ proposing Verification."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    primitive.calling_presentation_address = AddressInformation("127.0.0.1", 104)
    primitive.called_presentation_address = AddressInformation("127.0.0.1", 104)
    context = build_context(Verification)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    length, uid = MaximumLengthNotification(), ImplementationClassUIDNotification()
    length.maximum_length_received = 16384
    uid.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.1"
    primitive.user_information = [length, uid]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


async def one_request(address: tuple[str, int], source: str, request: bytes) -> int:
    """Connect from `source`, send `request`, return the answering PDU's type (0: none)."""
    reader, writer = await asyncio.open_connection(*address, local_addr=(source, 0))
    try:
        writer.write(request)
        await writer.drain()
        header = await asyncio.wait_for(reader.readexactly(6), timeout=60)
        return header[0]
    except (asyncio.IncompleteReadError, ConnectionError):
        return 0
    finally:
        writer.close()


async def burst(address: tuple[str, int], count: int) -> list[int]:
    sources = [f"127.0.{1 + n // 250}.{1 + n % 250}" for n in range(count)]
    tasks = [one_request(address, s, associate_rq(f"SCU{n}")) for n, s in enumerate(sources)]
    return list(await asyncio.gather(*tasks))


def test_two_hundred_simultaneous_connections_all_get_an_answer(
    start_receiver: StartReceiver,
) -> None:
    receiver, _ = start_receiver(storage=FLOOR)

    answers = asyncio.run(burst(receiver.address, 200))

    accepted, rejected = answers.count(0x02), answers.count(0x03)
    assert accepted + rejected == 200, f"unanswered: {200 - accepted - rejected}"
    assert accepted >= 1
    assert receiver.serving()


def test_the_listen_backlog_comes_from_the_settings(start_receiver: StartReceiver) -> None:
    receiver, _ = start_receiver(storage=FLOOR, receiver={"listen_backlog": 321})
    listed = subprocess.run(
        ["ss", "-ltnH", f"sport = :{receiver.address[1]}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if listed.returncode != 0:
        pytest.skip(f"ss cannot list sockets here: {listed.stderr.strip()}")
    # For a listening socket ss shows the backlog as Send-Q (the kernel caps it at somaxconn).
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert int(listed.stdout.split()[2]) == min(321, somaxconn)


def test_a_free_space_floor_of_zero_is_refused_by_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "site.yaml"
    config.write_text("storage:\n  free_space_floor_mb: 0\n")

    assert main(["check-config", str(config)]) == 2

    error = capsys.readouterr().err
    assert "site.yaml:2: storage.free_space_floor_mb:" in error
    assert "greater than or equal to 1" in error


@needs_dcmtk
def test_storescu_stores_while_stalled_peers_are_dropped(
    start_receiver: StartReceiver, inputs: Path, sockets: list[socket.socket]
) -> None:
    receiver, store = start_receiver(
        storage=FLOOR, receiver={"acse_timeout_s": DEADLINE_S, "max_associations": 4}
    )
    sockets.extend(stalled_connection(receiver.address, f"127.0.0.{n}") for n in range(30, 34))
    image = write_sample(inputs / "ct.dcm", "ct", seed=2, rows=16, columns=16)

    done = wait_for(
        lambda: storescu(receiver.address, image, options=["-aet", "DCMTK"]).returncode == 0,
        timeout_s=30,
        what="storescu to store the image",
    )

    assert done
    uid = str(pydicom.dcmread(image).SOPInstanceUID)
    assert store.conn.execute(
        "SELECT 1 FROM instances WHERE sop_instance_uid = ?", (uid,)
    ).fetchone()


# -- the service manager ---------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    yield sock
    sock.close()


def messages(sock: socket.socket) -> list[str]:
    """Every notify datagram waiting on `sock` now."""
    got = []
    while True:
        try:
            got.append(sock.recv(4096).decode())
        except BlockingIOError:
            return got


def test_the_receiver_says_ready_and_pings_the_watchdog(
    role_process: Callable[..., RoleProcess],
    notify_socket: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.getsockname())
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    proc = role_process("receiver", storage=FLOOR)
    proc.start()

    heard: list[str] = []

    def three_pings() -> bool:
        heard.extend(messages(notify_socket))
        return sum("WATCHDOG=1" in m for m in heard) >= 3

    wait_for(
        three_pings,
        timeout_s=60,
        what="READY and three watchdog pings",
        state=lambda: heard,
    )

    ready = next(m for m in heard if "READY=1" in m)
    assert f"STATUS=listening on 127.0.0.1:{proc.port}" in ready
    assert heard.index(ready) < next(i for i, m in enumerate(heard) if "WATCHDOG=1" in m)
    assert proc.stop() == 0
    assert any("STOPPING=1" in m for m in messages(notify_socket))


def test_serving_turns_false_once_stopped(start_receiver: StartReceiver) -> None:
    receiver, _ = start_receiver(storage=FLOOR)
    assert receiver.serving()
    receiver.stop()
    assert not receiver.serving()
