"""`appliance run` as a service manager: each child gets its own NOTIFY_SOCKET and
WATCHDOG_USEC; a ready child that stops pinging is aborted and restarted, one that keeps
pinging is left alone, and the supervisor says READY=1 to its own manager once every child
is ready. The children are tiny real Python processes speaking `appliance.notify`."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance import supervisor
from appliance.supervisor import Child

from conftest import wait_for

# Says READY=1 with its WATCHDOG_USEC as status, pings a few times, then hangs.
GOES_QUIET = """
import os, time
from appliance import notify
notify.ready(os.environ["WATCHDOG_USEC"])
for _ in range(3):
    time.sleep(0.1)
    notify.notify("WATCHDOG=1")
time.sleep(600)
"""
# The same, but deaf to SIGABRT: only SIGKILL ends it.
DEAF = "import signal; signal.signal(signal.SIGABRT, signal.SIG_IGN)\n" + GOES_QUIET
# Ready, then pings every 0.1 s for as long as it lives.
KEEPS_PINGING = """
import time
from appliance import notify
notify.ready("pinging")
while True:
    time.sleep(0.1)
    notify.notify("WATCHDOG=1")
"""
# Its own child says READY=1 in its name; it then says only STATUS=done.
PROXY = """
import subprocess, sys
from appliance import notify
subprocess.run([sys.executable, "-c", "from appliance import notify; notify.ready()"], check=True)
notify.status("done")
import time; time.sleep(600)
"""


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


Start = Callable[..., list[Child]]


@pytest.fixture
def start() -> Iterator[Start]:
    """Supervise children in a thread; stopped (and their processes ended) at teardown."""
    runs: list[tuple[threading.Thread, threading.Event]] = []

    def begin(*children: Child) -> list[Child]:
        stop = threading.Event()
        thread = threading.Thread(target=supervisor.supervise, args=(list(children), stop))
        thread.start()
        runs.append((thread, stop))
        wait_for(lambda: all(c.process is not None for c in children), what="started children")
        return list(children)

    yield begin
    for thread, stop in runs:
        stop.set()
        thread.join(timeout=30)


def test_a_child_that_stops_pinging_is_aborted_and_restarted(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.supervisor")
    [child] = start(Child("quiet", python(GOES_QUIET), watchdog_s=1.0))
    wait_for(lambda: child.ready, what="READY=1")
    assert child.status == "1000000"  # its own WATCHDOG_USEC, from the supervisor's figure
    first = child.process
    assert first is not None
    wait_for(
        lambda: child.process not in (None, first) and child.ready,
        what="a second, ready process",
    )
    assert first.returncode == -signal.SIGABRT
    assert child.pings >= 1
    log = caplog.text
    assert "role quiet is ready: 1000000" in log
    assert "role quiet stopped answering its watchdog; restarting" in log
    assert "role quiet exited with status -6; restarting in 1 s" in log


def test_a_child_deaf_to_sigabrt_is_killed(
    start: Start, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "ABORT_WAIT_S", 0.5)
    [child] = start(Child("deaf", python(DEAF), watchdog_s=0.5))
    wait_for(lambda: child.ready, what="READY=1")
    first = child.process
    assert first is not None
    wait_for(lambda: first.poll() is not None, what="the deaf child's end")
    assert first.returncode == -signal.SIGKILL
    assert "role deaf did not end on SIGABRT; killing it" in caplog.text


def test_a_child_that_keeps_pinging_is_left_alone(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    [child] = start(Child("busy", python(KEEPS_PINGING), watchdog_s=1.5))
    wait_for(lambda: child.ready, what="READY=1")
    first = child.process
    # 30 pings at 0.1 s apart span two whole watchdog periods.
    wait_for(lambda: child.pings >= 30, what="30 pings", state=lambda: child.pings)
    assert child.process is first and first is not None and first.poll() is None
    assert "watchdog" not in caplog.text


def test_only_the_childs_own_process_speaks_for_it(start: Start) -> None:
    [child] = start(Child("proxy", python(PROXY), watchdog_s=1.0))
    # Datagrams on one socket arrive in order: once STATUS=done is in, the grandchild's
    # READY=1 was read before it, and ignored.
    wait_for(lambda: child.status == "done", what="STATUS=done", state=lambda: child.status)
    assert not child.ready
    assert child.deadline is None  # not ready: no watchdog yet


def test_the_supervisor_says_ready_once_every_child_is(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    with tempfile.TemporaryDirectory(prefix="notify-") as folder:
        address = str(Path(folder) / "manager.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
            manager.bind(address)
            manager.settimeout(60)
            monkeypatch.setenv("NOTIFY_SOCKET", address)
            monkeypatch.setenv("WATCHDOG_USEC", "999000000")  # the supervisor's own: not passed on
            children = start(
                Child("one", python(KEEPS_PINGING), watchdog_s=10.0),
                Child("two", python(GOES_QUIET), watchdog_s=10.0),
                Child("plain", python(KEEPS_PINGING)),  # asked for no watchdog
            )
            message = manager.recv(4096).decode()
            assert message == "READY=1\nSTATUS=every role is ready"
            assert all(c.ready for c in children)
    by_role = {c.role: c for c in children}
    assert by_role["two"].status == "10000000"
    environment = by_role["plain"].environment()
    assert "WATCHDOG_USEC" not in environment
    assert environment["NOTIFY_SOCKET"] != address
    assert by_role["plain"].deadline is None  # no watchdog asked for: none enforced


def test_stopping_the_supervisor_ends_its_children_and_removes_their_sockets() -> None:
    stop = threading.Event()
    child = Child("busy", python(KEEPS_PINGING), watchdog_s=5.0)
    thread = threading.Thread(target=supervisor.supervise, args=([child], stop))
    thread.start()
    try:
        wait_for(lambda: child.ready, what="READY=1")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert child.process is not None and child.process.returncode == -signal.SIGTERM
    assert child.notify_socket is not None and not child.notify_socket.path.parent.exists()
