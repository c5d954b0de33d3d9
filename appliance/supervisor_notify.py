"""The service manager's side of the notify protocol, for `appliance run`.

Each role gets a datagram socket of its own (its NOTIFY_SOCKET), so a message says which role
sent it by the socket it arrives on. The kernel stamps every datagram with the sender's process
id (SO_PASSCRED); only the role's own process counts, as with systemd's `NotifyAccess=main`, so
a process the role starts cannot speak in its name.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
MAX_MESSAGE = 4096  # systemd's own limit on a notify datagram is larger; ours are a few lines


@dataclass(frozen=True)
class Message:
    """One datagram: the sending process (None when the kernel gave none) and its fields."""

    pid: int | None
    fields: dict[str, str]


def parse(data: bytes) -> dict[str, str]:
    """KEY=value lines to a mapping; lines without '=' are dropped, the last value wins."""
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return fields


class NotifySocket:
    """A bound AF_UNIX datagram socket at `path` that a role sends its notifications to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.bind(str(path))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self) -> list[Message]:
        """Every datagram waiting now, oldest first; never blocks."""
        messages: list[Message] = []
        while True:
            try:
                data, ancillary, _flags, _address = self.sock.recvmsg(
                    MAX_MESSAGE, socket.CMSG_SPACE(_UCRED.size)
                )
            except (BlockingIOError, InterruptedError):
                return messages
            messages.append(Message(_sender(ancillary), parse(data)))

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _sender(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, _uid, _gid = _UCRED.unpack(data[: _UCRED.size])
            return int(pid)
    return None
