"""The TCP side of the receiver: the accepting server and the per-connection socket.

Three things pynetdicom's stock server lacks here:
- a source-IP allow-list, checked before any DICOM byte is read;
- a bound on PDU lengths: pynetdicom reads a whole PDU into memory, whatever its header claims
  (up to 4 GiB), even past the maximum we advertise. The socket follows the PDU framing and
  aborts the association at a header longer than the limit, before its bytes are read;
- prompt ACKs. DCMTK's storescu writes each C-STORE in more than one segment; with Linux's
  delayed ACK the second segment waits ~40 ms for our ACK of the first, which capped a plain
  pynetdicom SCP at ~20 small images per second. TCP_QUICKACK before every read removes it.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only
_FULL_CHUNK = 4096
_PDU_HEADER = 6  # type, reserved, 4-byte big-endian length (PS3.8 9.3)
_P_DATA_TF = 0x04
OTHER_PDU_MAX = 1 << 20  # association, release and abort PDUs are small; 1 MiB is plenty
# A-ABORT from the service provider, reason 6: invalid PDU parameter value (PS3.8 9.3.8)
_A_ABORT = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6])


class PduTooLongError(ConnectionAbortedError):
    """A PDU header claims more bytes than the receiver accepts."""


class PduLimits:
    """Follows the PDU framing of the bytes read and refuses a PDU longer than allowed."""

    def __init__(self, max_p_data: int) -> None:
        self.max_p_data = max_p_data
        self._header = bytearray()
        self._remaining = 0

    def feed(self, data: bytes) -> None:
        """Account for `data`, just read; raise PduTooLongError at a header over the limit."""
        view = memoryview(data)
        while view:
            if self._remaining:
                taken = min(self._remaining, len(view))
                self._remaining -= taken
                view = view[taken:]
                continue
            needed = _PDU_HEADER - len(self._header)
            self._header += view[:needed]
            view = view[needed:]
            if len(self._header) == _PDU_HEADER:
                self._remaining = self._check(bytes(self._header))
                self._header.clear()

    def _check(self, header: bytes) -> int:
        pdu_type, _, length = struct.unpack(">BBL", header)
        limit = self.max_p_data if pdu_type == _P_DATA_TF else OTHER_PDU_MAX
        if length > limit:
            kind = "P-DATA-TF PDU" if pdu_type == _P_DATA_TF else f"PDU of type 0x{pdu_type:02X}"
            raise PduTooLongError(
                f"a {kind} of {length} bytes is longer than the {limit} this receiver accepts"
                + (" (receiver.max_pdu_bytes)" if pdu_type == _P_DATA_TF else "")
            )
        return int(length)


class QuickAckSocket(socket.socket):
    """A socket that asks the kernel to ACK at once after every read, and aborts the
    association at a PDU longer than its limits allow."""

    pdu_limits: PduLimits | None = None
    on_pdu_refused: Callable[[str, str], None] | None = None

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        # pynetdicom reads PDU bodies in 4 KiB chunks; a shorter read is a PDU header or the
        # end of a PDU, where the peer may be waiting for our ACK. Skipping the call on the
        # full chunks saves a system call per 4 KiB of large images.
        if bufsize < _FULL_CHUNK and _QUICKACK is not None:
            self.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        data = super().recv(bufsize, flags)
        if self.pdu_limits is not None:
            try:
                self.pdu_limits.feed(data)
            except PduTooLongError as exc:
                self._abort(exc)
                raise
        return data

    def _abort(self, exc: PduTooLongError) -> None:
        """Tell the peer (A-ABORT) and record why; pynetdicom then closes the connection."""
        host = str(self.getpeername()[0])
        log.warning("aborted an association from %s: %s", host, exc)
        try:
            self.sendall(_A_ABORT)
        except OSError as send_error:  # the peer may be gone already: it is aborted either way
            log.info("could not send the A-ABORT to %s: %s", host, send_error)
        if self.on_pdu_refused is not None:
            self.on_pdu_refused(host, str(exc))


def adopt(
    sock: socket.socket,
    pdu_limits: PduLimits | None = None,
    on_pdu_refused: Callable[[str, str], None] | None = None,
) -> QuickAckSocket:
    """Rewrap an accepted socket as a QuickAckSocket, keeping its timeout."""
    timeout = sock.gettimeout()
    wrapped = QuickAckSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    wrapped.settimeout(timeout)
    wrapped.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    wrapped.pdu_limits = pdu_limits
    wrapped.on_pdu_refused = on_pdu_refused
    return wrapped


class ApplianceServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with a source-IP allow-list and QuickAckSocket."""

    def __init__(
        self,
        *args: Any,
        allowed_networks: list[Network] | None = None,
        on_refused: Callable[[str], None] | None = None,
        max_p_data: int | None = None,
        on_pdu_refused: Callable[[str, str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        self.allowed_networks = allowed_networks or []
        self.on_refused = on_refused
        self.max_p_data = max_p_data
        self.on_pdu_refused = on_pdu_refused
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = super().get_request()
        if self.ssl_context:
            return sock, address
        limits = None if self.max_p_data is None else PduLimits(self.max_p_data)
        return adopt(sock, limits, self.on_pdu_refused), address

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
