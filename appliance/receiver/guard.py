"""Who holds the receiver's connections, and for how long.

pynetdicom reads each PDU with a blocking read: a peer that sends a 6-byte PDU header and then
nothing holds its association thread, and its place under `receiver.max_associations`, for ever
(its ARTIM timer is not looked at while the read blocks). So every accepted connection is
registered here with its peer's address:
- one not established as an association within `receiver.acse_timeout_s` of its accept, however
  many bytes trickle in, is dropped: its socket is shut down, which ends the blocked read;
- one address holds at most `receiver.max_associations_per_address` connections; one more gets
  an A-ASSOCIATE-RJ (transient, local limit exceeded) and is closed.
Each drop and refusal is audited with the address of the peer it concerns, and nobody else's.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: result 2 (rejected-transient), source 3 (service-provider, presentation
# related), reason 2 (local-limit-exceeded); PS3.8 9.3.4
A_ASSOCIATE_RJ_LOCAL_LIMIT = bytes([0x03, 0, 0, 0, 0, 4, 0, 2, 3, 2])
_REFUSAL_READ_S = 2.0  # how long a refused peer gets to send its A-ASSOCIATE-RQ
_REFUSAL_MAX_BYTES = 1 << 16  # an A-ASSOCIATE-RQ is small; read no more before answering
_MAX_REFUSING = 128  # refusals answered at once; past that a connection is just closed
_REFUSAL_AUDIT_EVERY_S = 60.0  # a flood from one address is audited once a minute

OnPeer = Callable[[str, str], None]  # (peer address, reason)


@dataclass(eq=False)
class Connection:
    """One accepted TCP connection, from accept until its association's thread ends."""

    host: str
    port: int
    accepted_at: float
    sock: socket.socket
    assoc: Any = None  # pynetdicom's Association, once made
    established: bool = False
    dropped: str = ""


class Connections:
    """The open connections of the receiver's servers, and the thread that drops the stalled."""

    def __init__(self, negotiation_s: float, per_address: int, on_dropped: OnPeer) -> None:
        self.negotiation_s = negotiation_s
        self.per_address = per_address
        self.on_dropped = on_dropped
        self.on_refused: OnPeer = lambda host, reason: None
        self._open: list[Connection] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refusing = threading.BoundedSemaphore(_MAX_REFUSING)
        self._refusals: dict[str, tuple[float, int]] = {}  # host: (last audited, since then)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="receiver-guard", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop watching and cut every open connection (so no association thread blocks)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            remaining = list(self._open)
        for conn in remaining:
            cut(conn.sock)

    def admit(self, sock: socket.socket, host: str, port: int) -> Connection | None:
        """Register a connection just accepted; None when its address already holds its share."""
        with self._lock:
            if sum(1 for c in self._open if c.host == host) >= self.per_address:
                return None
            conn = Connection(host, port, time.monotonic(), sock)
            self._open.append(conn)
            return conn

    def count(self, host: str) -> int:
        with self._lock:
            return sum(1 for c in self._open if c.host == host)

    def replace_socket(self, conn: Connection, sock: socket.socket) -> None:
        """The connection now reads through `sock` (its TLS layer)."""
        with self._lock:
            conn.sock = sock
            dropped = bool(conn.dropped)
        if dropped:
            cut(sock)

    def attach(self, conn: Connection, assoc: Any) -> None:
        with self._lock:
            conn.assoc = assoc

    def established(self, assoc: Any) -> None:
        """The association of this connection was accepted: the deadline no longer applies."""
        with self._lock:
            for conn in self._open:
                if conn.assoc is assoc:
                    conn.established = True

    def close(self, conn: Connection) -> None:
        with self._lock:
            if conn in self._open:
                self._open.remove(conn)

    def _watch(self) -> None:
        tick = min(0.5, self.negotiation_s / 4)
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                late = [
                    c
                    for c in self._open
                    if not c.established
                    and not c.dropped
                    and now - c.accepted_at > self.negotiation_s
                ]
                for conn in late:
                    conn.dropped = self._late_reason(conn)
            for conn in late:
                self._drop(conn)

    def _late_reason(self, conn: Connection) -> str:
        received = getattr(conn.sock, "bytes_read", None)
        after = "" if received is None else f" ({received} bytes received)"
        return (
            f"no association within {self.negotiation_s:g} s of connecting{after} "
            "(receiver.acse_timeout_s)"
        )

    def _drop(self, conn: Connection) -> None:
        log.warning("dropped a connection from %s: %s", conn.host, conn.dropped)
        cut(conn.sock)
        try:
            self.on_dropped(conn.host, conn.dropped)
        except Exception:
            log.exception("could not audit a dropped connection")

    def refuse(self, sock: socket.socket, host: str, answer: bool = True) -> None:
        """Answer a connection past the per-address cap with an A-ASSOCIATE-RJ (unless
        `answer` is false: a TLS connection, where the rejection would need a handshake
        first), then close it."""
        reason = (
            f"more than {self.per_address} connections at once from this address "
            "(receiver.max_associations_per_address)"
        )
        if answer and self._refusing.acquire(blocking=False):
            try:
                answer_with_rejection(sock)
            finally:
                self._refusing.release()
        else:
            sock.close()
        log.warning("refused a connection from %s: %s", host, reason)
        self._audit_refusal(host, reason)

    def _audit_refusal(self, host: str, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            last, since = self._refusals.get(host, (-_REFUSAL_AUDIT_EVERY_S, 0))
            if now - last < _REFUSAL_AUDIT_EVERY_S:
                self._refusals[host] = (last, since + 1)
                return
            self._refusals[host] = (now, 0)
        if since:
            reason += f"; {since} more refused since the last such entry"
        try:
            self.on_refused(host, reason)
        except Exception:
            log.exception("could not audit a refused connection")


def answer_with_rejection(sock: socket.socket) -> None:
    """Read the peer's A-ASSOCIATE-RQ (briefly), answer A-ASSOCIATE-RJ and close.

    Reading the request first matters: closing a socket with unread bytes sends a reset,
    which can destroy the rejection before the peer reads it. The whole exchange has
    _REFUSAL_READ_S, however slowly the peer sends."""
    deadline = time.monotonic() + _REFUSAL_READ_S
    try:
        header = _read(sock, 6, deadline)
        if len(header) == 6:
            length = struct.unpack(">L", header[2:])[0]
            _read(sock, min(length, _REFUSAL_MAX_BYTES), deadline)
        sock.settimeout(_REFUSAL_READ_S)
        sock.sendall(A_ASSOCIATE_RJ_LOCAL_LIMIT)
        sock.shutdown(socket.SHUT_WR)
        _read(sock, _REFUSAL_MAX_BYTES, deadline)  # until the peer closes, as PS3.8 has it do
    except OSError as exc:
        log.debug("while refusing a connection: %s", exc)
    finally:
        sock.close()


def _read(sock: socket.socket, size: int, deadline: float) -> bytes:
    """Up to `size` bytes, fewer at the end of the stream; TimeoutError past `deadline`."""
    data = bytearray()
    while len(data) < size:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        piece = sock.recv(min(size - len(data), 4096))
        if not piece:
            break
        data += piece
    return bytes(data)


def cut(sock: socket.socket) -> None:
    """Shut a socket down for both directions: a thread blocked reading it wakes at once.

    The plain socket's method, so that a TLS socket's state is not touched from this thread."""
    with contextlib.suppress(OSError):  # already closed or reset: nothing left to end
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
