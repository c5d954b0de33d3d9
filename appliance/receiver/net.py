"""The TCP side of the receiver: the accepting server and the per-connection socket.

Two things pynetdicom's stock server lacks here:
- a source-IP allow-list, checked before any DICOM byte is read;
- prompt ACKs. DCMTK's storescu writes each C-STORE in more than one segment; with Linux's
  delayed ACK the second segment waits ~40 ms for our ACK of the first, which capped a plain
  pynetdicom SCP at ~20 small images per second. TCP_QUICKACK before every read removes it.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only
_FULL_CHUNK = 4096


class QuickAckSocket(socket.socket):
    """A socket that asks the kernel to ACK at once after every read."""

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        # pynetdicom reads PDU bodies in 4 KiB chunks; a shorter read is a PDU header or the
        # end of a PDU, where the peer may be waiting for our ACK. Skipping the call on the
        # full chunks saves a system call per 4 KiB of large images.
        if bufsize < _FULL_CHUNK and _QUICKACK is not None:
            self.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return super().recv(bufsize, flags)


def adopt(sock: socket.socket) -> QuickAckSocket:
    """Rewrap an accepted socket as a QuickAckSocket, keeping its timeout."""
    timeout = sock.gettimeout()
    wrapped = QuickAckSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    wrapped.settimeout(timeout)
    wrapped.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return wrapped


class ApplianceServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with a source-IP allow-list and QuickAckSocket."""

    def __init__(
        self,
        *args: Any,
        allowed_networks: list[Network] | None = None,
        on_refused: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        self.allowed_networks = allowed_networks or []
        self.on_refused = on_refused
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = super().get_request()
        if self.ssl_context:
            return sock, address
        return adopt(sock), address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Refuse connections from addresses outside the allow-list (empty list: allow all)."""
        if not self.allowed_networks:
            return True
        host = str(client_address[0])
        address = ipaddress.ip_address(host.split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.allowed_networks):
            return True
        log.warning("refused a connection from %s: not in receiver.allowed_networks", host)
        if self.on_refused is not None:
            self.on_refused(host)
        return False
