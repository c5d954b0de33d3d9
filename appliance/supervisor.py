"""`appliance run`: every role as its own child process on one machine.

Separate processes keep the same isolation as the systemd units: a crashed role is restarted
with back-off and the crash is logged, and it never takes the receiver down with it.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

ROLES = ["receiver", "worker", "sender", "ui"]
MAX_BACKOFF_S = 30.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class Child:
    role: str
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    backoff_s: float = 1.0
    restart_at: float = 0.0
    started_at: float = 0.0

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, preexec_fn=_die_with_parent)
        self.started_at = time.monotonic()


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
    """Start the roles, restart crashed ones, stop them all on SIGTERM or Ctrl-C."""
    children = [Child(role, role_command(role, config)) for role in roles or ROLES]
    stopping = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    for child in children:
        child.start()
    while not stopping:
        for child in children:
            _tend(child)
        time.sleep(0.2)
    _stop_all(children)
    return 0


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
    child.restart_at = now + child.backoff_s
    child.backoff_s = min(child.backoff_s * 2, MAX_BACKOFF_S)


def _stop_all(children: list[Child]) -> None:
    running = [c.process for c in children if c.process is not None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in running:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("role pid %d did not stop in time; killing it", process.pid)
            process.kill()
            process.wait()
