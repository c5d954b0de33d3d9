"""`appliance run`: every role as its own child process on one machine.

Separate processes keep the same isolation as the systemd units: a crashed role is restarted
with back-off and the crash is logged, and it never takes the receiver down with it.

`appliance run` is a service manager too, as systemd is for the units: each role gets its own
NOTIFY_SOCKET and WATCHDOG_USEC (the same figures as the units' `WatchdogSec=`), says READY=1
when it serves, and from then on must ping WATCHDOG=1 in time. A role that stops pinging is
stuck (a hung inference, a lane that never returns): it gets SIGABRT, SIGKILL a few seconds
later if it is still there, and is restarted like a crashed one. Once every role is ready the
supervisor says READY=1 to its own manager, so `appliance run` can itself be a `Type=notify`
unit; it pings its own watchdog when asked to.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from appliance import notify
from appliance.supervisor_notify import Message, NotifySocket

log = logging.getLogger(__name__)

ROLES = ["receiver", "worker", "sender", "ui"]
# Seconds within which a ready role must ping WATCHDOG=1: the units' WatchdogSec= (systemd/).
# The worker's pings stop on their own when an inference outlives its package's time limit,
# so its figure only has to cover the pinging thread's own delays.
WATCHDOG_S: dict[str, float] = {"receiver": 30.0, "worker": 30.0, "sender": 60.0, "ui": 30.0}
ABORT_WAIT_S = 5.0  # after SIGABRT, a role still there gets SIGKILL (systemd: TimeoutAbortSec)
MAX_BACKOFF_S = 30.0
TICK_S = 0.2  # the longest the supervisor waits for a message before tending its children
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class Child:
    """One role's process and what the supervisor knows of it."""

    role: str
    command: list[str]
    watchdog_s: float | None = None  # None: the role is not asked to ping
    process: subprocess.Popen[bytes] | None = None
    backoff_s: float = 1.0
    restart_at: float = 0.0
    started_at: float = 0.0
    notify_socket: NotifySocket | None = None
    ready: bool = False
    status: str = ""
    pings: int = 0
    deadline: float | None = None  # the next WATCHDOG=1 is due by then (monotonic)
    aborted_at: float | None = None  # when it got SIGABRT for a missed watchdog
    killed: bool = False

    def start(self) -> None:
        self.ready, self.status, self.pings = False, "", 0
        self.deadline = self.aborted_at = None
        self.killed = False
        self.process = subprocess.Popen(
            self.command, preexec_fn=_die_with_parent, env=self.environment()
        )
        self.started_at = time.monotonic()

    def environment(self) -> dict[str, str]:
        """The supervisor's environment with this role's own notify socket and watchdog."""
        env = dict(os.environ)
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(name, None)  # the supervisor's own, from its manager: never the role's
        if self.notify_socket is not None:
            env["NOTIFY_SOCKET"] = str(self.notify_socket.path)
            if self.watchdog_s is not None:
                env["WATCHDOG_USEC"] = str(round(self.watchdog_s * 1_000_000))
        return env

    def heard(self, message: Message, now: float) -> None:
        """Take in one notification; a process other than the role's own is not listened to."""
        if self.process is None or message.pid != self.process.pid:
            log.debug("role %s: ignored a notification from pid %s", self.role, message.pid)
            return
        fields = message.fields
        if "STATUS" in fields:
            self.status = fields["STATUS"]
            log.debug("role %s: %s", self.role, self.status)
        if fields.get("READY") == "1" and not self.ready:
            self.ready = True
            log.info("role %s is ready%s", self.role, f": {self.status}" if self.status else "")
        if self.ready and self.watchdog_s is not None:
            if fields.get("WATCHDOG") == "1" or fields.get("READY") == "1":
                self.pings += 1
                self.deadline = now + self.watchdog_s
            elif fields.get("WATCHDOG") == "trigger":
                log.error("role %s asked for its watchdog to fire", self.role)
                self.deadline = now


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the supervisor dies, even by SIGKILL, so no
    role is left running (and holding the DICOM port) without its supervisor."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def role_command(role: str, config: Path | None) -> list[str]:
    command = [sys.executable, "-m", "appliance"]
    if config is not None:
        command += ["--config", str(config)]
    return [*command, role]


def run(config: Path | None, roles: list[str] | None = None) -> int:
    """Start the roles, restart crashed or stuck ones, stop them all on SIGTERM or Ctrl-C."""
    children = [
        Child(role, role_command(role, config), WATCHDOG_S.get(role)) for role in roles or ROLES
    ]
    return supervise(children)


def supervise(children: list[Child], stop: threading.Event | None = None) -> int:
    """Run `children` until `stop` is set; without `stop`, until SIGTERM or SIGINT (the
    process's own loop). A caller that runs it in a thread passes its own event."""
    if stop is None:
        stop = threading.Event()
        _on_signals(stop)
    folder = Path(tempfile.mkdtemp(prefix="appliance-run-"))  # mode 0700: ours alone
    try:
        for number, child in enumerate(children):
            child.notify_socket = NotifySocket(folder / f"{number}-{child.role}.sock")
            child.start()
        _loop(children, stop)
    finally:
        notify.stopping()
        _stop_all(children)
        for child in children:
            if child.notify_socket is not None:
                child.notify_socket.close()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def _on_signals(stop: threading.Event) -> None:
    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def _loop(children: list[Child], stop: threading.Event) -> None:
    """Listen to the roles, watch their deadlines, restart the ones that ended."""
    announced = False
    own_watchdog_s = notify.watchdog_interval_s()
    pinged_at = time.monotonic()
    while not stop.is_set():
        _listen(children, TICK_S)
        now = time.monotonic()
        for child in children:
            _watch(child, now)
            _tend(child)
        if not announced and all(child.ready for child in children):
            announced = True
            log.info("every role is ready")
            notify.ready("every role is ready")
        if own_watchdog_s is not None and now - pinged_at >= own_watchdog_s / 2:
            notify.notify("WATCHDOG=1")  # the loop goes round: the supervisor is not stuck
            pinged_at = now


def _listen(children: list[Child], timeout_s: float) -> None:
    """Wait up to `timeout_s` for notifications and hand each to its role."""
    by_fd = {c.notify_socket.fileno(): c for c in children if c.notify_socket is not None}
    readable, _, _ = select.select(list(by_fd), [], [], timeout_s)
    now = time.monotonic()
    for fd in readable:
        child = by_fd[fd]
        assert child.notify_socket is not None
        for message in child.notify_socket.receive():
            child.heard(message, now)


def _watch(child: Child, now: float) -> None:
    """Abort a ready role whose watchdog ping is overdue; kill it if SIGABRT is not enough."""
    process = child.process
    if process is None or process.poll() is not None:
        return
    if child.aborted_at is not None:
        if not child.killed and now - child.aborted_at >= ABORT_WAIT_S:
            log.error("role %s did not end on SIGABRT; killing it", child.role)
            process.kill()
            child.killed = True
        return
    if child.deadline is not None and now > child.deadline:
        log.error("role %s stopped answering its watchdog; restarting", child.role)
        process.send_signal(signal.SIGABRT)  # as systemd does: a core dump shows where it hung
        child.aborted_at = now


def _tend(child: Child) -> None:
    """Restart a child that exited, waiting longer after each quick crash."""
    now = time.monotonic()
    if child.process is None:
        if now >= child.restart_at:
            child.start()
        return
    code = child.process.poll()
    if code is None:
        return
    if now - child.started_at > 60:
        child.backoff_s = 1.0  # it ran fine for a while: this is a fresh failure
    log.error(
        "role %s exited with status %s; restarting in %.0f s", child.role, code, child.backoff_s
    )
    child.process = None
    child.ready = False
    child.deadline = None
    child.restart_at = now + child.backoff_s
    child.backoff_s = min(child.backoff_s * 2, MAX_BACKOFF_S)


def _stop_all(children: list[Child]) -> None:
    running = [c.process for c in children if c.process is not None]
    for process in running:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in running:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("role pid %d did not stop in time; killing it", process.pid)
            process.kill()
            process.wait()
