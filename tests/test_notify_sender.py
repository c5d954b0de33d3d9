"""The sender speaks the notify protocol: READY=1 once its lanes run, WATCHDOG=1 while every
lane answers, STOPPING=1 at the end; a lane that is dead or past its deadline stops the pings."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import SenderSettings
from appliance.sender.role import Lane, Liveness, batch_limit_s, serve

from conftest import wait_for
from sender_fixtures import Box, destination, new_box


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    """A store with a received image and one destination where nobody listens."""
    made = new_box(tmp_path, [destination("pacs", 1)])
    yield made
    made.store.close()


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket as the sender's NOTIFY_SOCKET, with a 0.2 s watchdog."""
    with tempfile.TemporaryDirectory(prefix="notify-") as folder:
        address = str(Path(folder) / "manager.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(address)
            sock.settimeout(60)
            monkeypatch.setenv("NOTIFY_SOCKET", address)
            monkeypatch.setenv("WATCHDOG_USEC", "200000")
            monkeypatch.delenv("WATCHDOG_PID", raising=False)
            yield sock


def test_the_sender_says_ready_pings_and_says_stopping(box: Box, manager: socket.socket) -> None:
    stop, code = threading.Event(), []
    thread = threading.Thread(
        target=lambda: code.append(serve(box.settings, box.store.paths, stop))
    )
    thread.start()
    try:
        ready = manager.recv(4096).decode()
        assert ready.startswith("READY=1\nSTATUS=destinations: pacs (")
        assert [manager.recv(4096).decode() for _ in range(3)] == ["WATCHDOG=1"] * 3
    finally:
        stop.set()
        box.ring()
        thread.join(timeout=60)
    assert code == [0]
    rest = []
    manager.setblocking(False)
    with pytest.raises(BlockingIOError):
        while True:
            rest.append(manager.recv(4096).decode())
    assert "STOPPING=1" in rest


def test_a_dead_or_overdue_lane_is_not_working(box: Box) -> None:
    stop = threading.Event()
    lane = Lane(box.store, box.settings, box.settings.destinations[0], stop)
    liveness = Liveness([lane], box.settings.sender)
    assert not liveness.working()  # its thread never started
    lane.start()
    wait_for(lane.is_alive, what="the lane's thread")
    assert liveness.working()
    lane.due_by = time.monotonic() - 1  # past its deadline: hung where no timeout reaches
    assert not liveness.working()
    stop.set()
    lane.wake()
    lane.join(timeout=30)
    assert not lane.answering()


def test_a_batch_may_take_its_timeouts_and_no_more() -> None:
    settings = SenderSettings(connect_timeout_s=10, dimse_timeout_s=60)
    assert batch_limit_s(settings, 1) == 2 * 10 + 2 * 60
    assert batch_limit_s(settings, 50) == 2 * 10 + 51 * 60
