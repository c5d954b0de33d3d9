"""The notify protocol (sd_notify) as the roles speak it, against a real AF_UNIX datagram
socket bound as the manager's NOTIFY_SOCKET: by path and in the abstract namespace."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import notify

from conftest import wait_for


class Manager:
    """The manager's end: a bound datagram socket and what arrived on it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bound = "\0" + address[1:] if address.startswith("@") else address
        self.sock.bind(bound)
        self.sock.settimeout(10)

    def next(self) -> str:
        return self.sock.recv(4096).decode()

    def waiting(self) -> list[str]:
        """Every datagram that arrived and was not read yet."""
        found = []
        self.sock.setblocking(False)
        try:
            while True:
                found.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return found
        finally:
            self.sock.settimeout(10)


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[Manager]:
    # A short folder of our own: a socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="notify-") as folder:
        made = Manager(str(Path(folder) / "notify.sock"))
        monkeypatch.setenv("NOTIFY_SOCKET", made.address)
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        yield made
        made.sock.close()


def test_ready_status_and_stopping_reach_the_manager(manager: Manager) -> None:
    assert notify.ready("listening on port 11112")
    assert manager.next() == "READY=1\nSTATUS=listening on port 11112"
    assert notify.ready()
    assert manager.next() == "READY=1"
    assert notify.status("3 jobs waiting")
    assert manager.next() == "STATUS=3 jobs waiting"
    assert notify.stopping()
    assert manager.next() == "STOPPING=1"


def test_an_abstract_address_is_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    address = f"@appliance-test-{os.getpid()}-{threading.get_ident()}"
    made = Manager(address)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        assert notify.notify("READY=1", "STATUS=abstract")
        assert made.next() == "READY=1\nSTATUS=abstract"
    finally:
        made.sock.close()


def test_without_a_manager_nothing_is_sent_and_nothing_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not notify.ready("started by hand")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))  # the manager went away
    assert not notify.notify("WATCHDOG=1")
    assert not notify.notify()  # nothing to say: nothing sent


def test_the_watchdog_interval_follows_watchdog_usec_and_pid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert notify.watchdog_interval_s() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval_s() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getppid()))  # meant for the parent: not for us
    assert notify.watchdog_interval_s() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for unset in ("0", "", "soon", "-5"):
        monkeypatch.setenv("WATCHDOG_USEC", unset)
        assert notify.watchdog_interval_s() is None


def test_a_watchdog_for_another_process_never_pings(
    manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getppid()))
    dog = notify.Watchdog().start()
    try:
        assert dog.interval_s is None and dog._thread is None
    finally:
        dog.stop()
    assert manager.waiting() == []


class Judge:
    """A `working()` that answers as told and counts how often it was asked."""

    def __init__(self) -> None:
        self.answer = True
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.answer


def test_the_watchdog_pings_while_working_and_stops_when_stuck(
    manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    judge = Judge()
    dog = notify.Watchdog(judge).start()
    try:
        assert dog.interval_s == 0.2
        assert [manager.next() for _ in range(3)] == ["WATCHDOG=1"] * 3
        judge.answer = False
        asked = judge.asked
        wait_for(lambda: judge.asked >= asked + 2, what="two checks after the role got stuck")
        manager.waiting()  # a ping already on its way when the answer changed
        asked = judge.asked
        wait_for(lambda: judge.asked >= asked + 3, what="three more checks")
        assert manager.waiting() == []  # stuck: no ping at all
        judge.answer = True
        assert manager.next() == "WATCHDOG=1"  # working again: pings again
    finally:
        dog.stop()
