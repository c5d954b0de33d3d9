"""The TCP side of the receiver: the accepting server and the per-connection socket.

Three things pynetdicom's stock server lacks here:
- a source-IP allow-list, checked before any DICOM byte is read;
- a bound on PDU lengths: pynetdicom reads a whole PDU into memory, whatever its header claims
  (up to 4 GiB), even past the maximum we advertise. The socket follows the PDU framing and
  aborts the association at a header longer than the limit, before its bytes are read;
- timeouts: an accepted socket gets `receiver.network_timeout_s` (pynetdicom leaves it with
  none, so a stalled read never ends), and every connection is watched by guard.Connections
  (negotiation deadline, per-address cap);
- TLS handshakes in the connection's own thread, under the same deadline (pynetdicom does them
  in the accepting thread, where one silent peer stops every other connection);
- a listen backlog from `receiver.listen_backlog` (socketserver's default is 5);
- prompt ACKs. DCMTK's storescu writes each C-STORE in more than one segment; with Linux's
  delayed ACK the second segment waits ~40 ms for our ACK of the first, which capped a plain
  pynetdicom SCP at ~20 small images per second. TCP_QUICKACK before every read removes it.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from appliance.receiver.guard import Connection, Connections

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
    on_timeout: Callable[[str, str], None] | None = None
    peer_host = ""
    bytes_read = 0
    connection: Connection | None = None

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        return _read(self, super().recv, bufsize, flags)


class QuickAckSSLSocket(ssl.SSLSocket):
    """The TLS counterpart of QuickAckSocket: the same limits on the decrypted PDU stream."""

    pdu_limits: PduLimits | None = None
    on_pdu_refused: Callable[[str, str], None] | None = None
    on_timeout: Callable[[str, str], None] | None = None
    peer_host = ""
    bytes_read = 0
    connection: Connection | None = None

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        return _read(self, super().recv, buflen, flags)


def _read(
    sock: QuickAckSocket | QuickAckSSLSocket,
    recv: Callable[[int, int], bytes],
    size: int,
    flags: int,
) -> bytes:
    """One read of either socket class: quick ACK, time-out audit, PDU limits."""
    # pynetdicom reads PDU bodies in 4 KiB chunks; a shorter read is a PDU header or the
    # end of a PDU, where the peer may be waiting for our ACK. Skipping the call on the
    # full chunks saves a system call per 4 KiB of large images.
    if size < _FULL_CHUNK and _QUICKACK is not None:
        sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
    try:
        data = recv(size, flags)
    except TimeoutError:
        _timed_out(sock)
        raise
    _account(sock, data)
    return data


def _account(sock: QuickAckSocket | QuickAckSSLSocket, data: bytes) -> None:
    sock.bytes_read += len(data)
    if sock.pdu_limits is None:
        return
    try:
        sock.pdu_limits.feed(data)
    except PduTooLongError as exc:
        _abort(sock, exc)
        raise


def _timed_out(sock: QuickAckSocket | QuickAckSSLSocket) -> None:
    """A read waited `receiver.network_timeout_s` for nothing: pynetdicom ends the connection."""
    reason = f"no data for {sock.gettimeout():g} s (receiver.network_timeout_s)"
    log.warning("dropped a connection from %s: %s", sock.peer_host, reason)
    if sock.on_timeout is not None:
        sock.on_timeout(sock.peer_host, reason)


def _abort(sock: QuickAckSocket | QuickAckSSLSocket, exc: PduTooLongError) -> None:
    """Tell the peer (A-ABORT) and record why; pynetdicom then closes the connection."""
    host = sock.peer_host
    log.warning("aborted an association from %s: %s", host, exc)
    try:
        sock.sendall(_A_ABORT)
    except OSError as send_error:  # the peer may be gone already: it is aborted either way
        log.info("could not send the A-ABORT to %s: %s", host, send_error)
    if sock.on_pdu_refused is not None:
        sock.on_pdu_refused(host, str(exc))


def adopt(
    sock: socket.socket,
    pdu_limits: PduLimits | None = None,
    on_pdu_refused: Callable[[str, str], None] | None = None,
    timeout_s: float | None = None,
) -> QuickAckSocket:
    """Rewrap an accepted socket as a QuickAckSocket with a read timeout of `timeout_s`."""
    wrapped = QuickAckSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    wrapped.settimeout(timeout_s)
    wrapped.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    wrapped.pdu_limits = pdu_limits
    wrapped.on_pdu_refused = on_pdu_refused
    return wrapped


class AssociationHandler(RequestHandler):
    """pynetdicom's request handler, staying with its association until it ends, so that the
    connection is counted (and watched) exactly as long as it holds a slot."""

    def handle(self) -> None:
        server = self.server
        assert isinstance(server, ApplianceServer)
        assoc = self._create_association()
        conn = getattr(self.request, "connection", None)
        if conn is not None:
            server.connections.attach(conn, assoc)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        assoc.join()


class ApplianceServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with a source-IP allow-list, QuickAckSocket, read timeouts,
    watched connections and TLS handshakes off the accepting thread."""

    daemon_threads = True  # a connection's thread ends with its association, never joined

    def __init__(
        self,
        *args: Any,
        connections: Connections,
        network_timeout_s: float,
        listen_backlog: int = 128,
        tls_context: ssl.SSLContext | None = None,
        allowed_networks: list[Network] | None = None,
        on_refused: Callable[[str], None] | None = None,
        max_p_data: int | None = None,
        on_pdu_refused: Callable[[str, str], None] | None = None,
        on_tls_failed: Callable[[str, str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        self.connections = connections
        self.network_timeout_s = network_timeout_s
        self.request_queue_size = listen_backlog  # read by listen() in the base constructor
        self.tls_context = tls_context
        self.allowed_networks = allowed_networks or []
        self.on_refused = on_refused
        self.max_p_data = max_p_data
        self.on_pdu_refused = on_pdu_refused
        self.on_tls_failed = on_tls_failed
        self.last_loop = time.monotonic()
        kwargs["request_handler"] = AssociationHandler
        super().__init__(*args, **kwargs)
        self.bind(evt.EVT_ACCEPTED, self._on_accepted)

    def service_actions(self) -> None:
        """Called by serve_forever at least every poll interval: proof the loop turns."""
        self.last_loop = time.monotonic()
        super().service_actions()

    def _on_accepted(self, event: evt.Event) -> None:
        self.connections.established(event.assoc)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept only: no TLS handshake here (see process_request_thread)."""
        assert self.socket is not None
        sock, address = self.socket.accept()
        limits = None if self.max_p_data is None else PduLimits(self.max_p_data)
        wrapped = adopt(sock, limits, self.on_pdu_refused, self.network_timeout_s)
        wrapped.peer_host = str(address[0])
        wrapped.on_timeout = self.connections.on_dropped
        return wrapped, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Refuse connections from outside the allow-list (empty list: allow all); register
        the others (one past its address's cap is answered by process_request_thread)."""
        host = str(client_address[0])
        if not self._allowed(host):
            log.warning("refused a connection from %s: not in receiver.allowed_networks", host)
            if self.on_refused is not None:
                self.on_refused(host)
            return False
        request.connection = self.connections.admit(request, host, int(client_address[1]))
        return True

    def _allowed(self, host: str) -> bool:
        if not self.allowed_networks:
            return True
        address = ipaddress.ip_address(host.split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.allowed_networks)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """One connection, in its own thread: refused past the cap, else (TLS handshake and)
        its association, until it ends."""
        conn: Connection | None = request.connection
        if conn is None:
            request.pdu_limits = None
            answer = self.tls_context is None
            self.connections.refuse(request, str(client_address[0]), answer)
            return
        sock = request
        try:
            if self.tls_context is not None:
                sock = self._handshake(request, conn)
            if sock is not None:
                self.finish_request(sock, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.connections.close(conn)
            self.shutdown_request(sock if sock is not None else request)

    def _handshake(self, raw: QuickAckSocket, conn: Connection) -> QuickAckSSLSocket | None:
        """The server side of the TLS handshake, under the connection's deadline; None when it
        fails (audited with the peer's address and the reason)."""
        assert self.tls_context is not None
        host = raw.peer_host
        try:
            tls = self.tls_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        except OSError as exc:
            log.warning("TLS from %s failed before its handshake: %s", host, exc)
            return None
        assert isinstance(tls, QuickAckSSLSocket)
        tls.peer_host, tls.connection = host, conn
        tls.pdu_limits, tls.on_pdu_refused = raw.pdu_limits, raw.on_pdu_refused
        tls.on_timeout = raw.on_timeout
        self.connections.replace_socket(conn, tls)
        try:
            tls.do_handshake()
        except OSError as exc:  # ssl.SSLError, a timeout, a reset
            if not conn.dropped:
                reason = f"TLS handshake failed: {exc}"
                log.warning("refused a connection from %s: %s", host, reason)
                if self.on_tls_failed is not None:
                    self.on_tls_failed(host, reason)
            socket.socket.close(tls)
            return None
        return tls

    def serving(self, within_s: float) -> bool:
        """Whether the accepting loop turned in the last `within_s` seconds."""
        return time.monotonic() - self.last_loop < within_s


def serve(server: ApplianceServer, name: str) -> threading.Thread:
    """Run `server`'s accepting loop in a thread of its own."""
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    return thread
