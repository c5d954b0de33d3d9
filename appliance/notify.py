"""The service manager's notify protocol (sd_notify(3)), spoken by every role.

A role says READY=1 once it serves, STATUS=... when something worth a line changes, and
WATCHDOG=1 while it is really working; systemd (`Type=notify`, `WatchdogSec=`) or `appliance
run` restarts a role whose pings stop. Without NOTIFY_SOCKET every call does nothing, so a role
started by hand behaves the same.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send `fields` (KEY=value) to $NOTIFY_SOCKET; False when there is none or it is gone."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or not fields:
        return False
    if address.startswith("@"):  # an abstract socket: a leading NUL byte instead
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except OSError as exc:  # the manager went away: the role keeps working
        log.debug("notify to %s failed: %s", address, exc)
        return False
    return True


def ready(status: str = "") -> bool:
    """The role serves: its start-up is over."""
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def stopping() -> bool:
    return notify("STOPPING=1")


def watchdog_interval_s() -> float | None:
    """Seconds within which the manager wants a WATCHDOG=1, or None when it wants none.

    WATCHDOG_PID, when set, must be this process: a child started by a role must not ping in
    its parent's name."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000


class Watchdog:
    """Pings the manager from its own thread, twice per interval, while `working()` is true.

    `working` is the role's own judgement that it is alive in the sense that matters (the
    worker: idle, or inside an inference younger than its model's time limit). When it turns
    false the pings stop and the manager restarts the role."""

    def __init__(self, working: Callable[[], bool] = lambda: True) -> None:
        self.working = working
        self.interval_s = watchdog_interval_s()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Watchdog:
        if self.interval_s is not None and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        assert self.interval_s is not None
        while not self._stop.wait(self.interval_s / 2):
            if self.working():
                notify("WATCHDOG=1")
            else:
                log.error("not pinging the watchdog: this role is stuck and will be restarted")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
