"""A small Storage and Verification SCU for connectivity checks and tests."""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from appliance.errors import ApplianceError

MAX_CONTEXTS = 128  # the most an association may propose (PS3.8 9.3.2.2)


@dataclass(frozen=True)
class Peer:
    host: str
    port: int
    called_aet: str = "APPLIANCE"
    calling_aet: str = "APPLIANCE-SCU"


@dataclass(frozen=True)
class SendResult:
    path: Path
    status: int | None  # None: no response (association lost) or not sent
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 0


def parse_peer(text: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port), with an error that quotes the bad value."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ApplianceError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def echo(peer: Peer, timeout_s: float = 10.0) -> int:
    """C-ECHO the peer; return the status (0 is success)."""
    ae = _ae(peer, timeout_s)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, peer)
    try:
        status = assoc.send_c_echo()
        return _status_of(status)
    finally:
        assoc.release()


def send(paths: Iterable[Path], peer: Peer, timeout_s: float = 60.0) -> Iterator[SendResult]:
    """C-STORE each file to the peer on one association; yield a result per file."""
    files = list(paths)
    ae = _ae(peer, timeout_s)
    contexts = {c for c in (_context_of(p) for p in files) if c is not None}
    if not contexts:  # nothing to propose: no association at all
        yield from (SendResult(p, None, "not a readable DICOM file") for p in files)
        return
    for sop_class, syntax in sorted(contexts)[:MAX_CONTEXTS]:
        ae.add_requested_context(sop_class, [syntax])
    assoc = _associate(ae, peer)
    try:
        for path in files:
            yield _send_one(assoc, path, _read(path))
    finally:
        if assoc.is_established:
            assoc.release()


def _send_one(assoc: Association, path: Path, ds: pydicom.Dataset | None) -> SendResult:
    if ds is None:
        return SendResult(path, None, "not a readable DICOM file")
    if not assoc.is_established:
        return SendResult(path, None, "association lost before sending")
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}:
        return SendResult(path, None, not_accepted(sop_class))
    try:
        status = assoc.send_c_store(ds)
    except ValueError as exc:  # e.g. no context for this file's transfer syntax
        return SendResult(path, None, str(exc))
    code = _status_of(status)
    return SendResult(path, code, "" if code == 0 else _failure_text(code, status))


def _read(path: Path, header_only: bool = False) -> pydicom.Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except (InvalidDicomError, OSError, EOFError, ValueError):
        return None


def _context_of(path: Path) -> tuple[str, str] | None:
    """The (SOP class, transfer syntax) a file needs, or None if it is not readable DICOM."""
    ds = _read(path, header_only=True)
    if ds is None or "SOPClassUID" not in ds or "TransferSyntaxUID" not in ds.file_meta:
        return None
    return str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)


def _ae(peer: Peer, timeout_s: float) -> AE:
    _check_ae_title("calling", peer.calling_aet)
    _check_ae_title("called", peer.called_aet)
    ae = AE(ae_title=peer.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    return ae


def _check_ae_title(which: str, title: str) -> None:
    """An AE title is 1-16 characters of printable ASCII, not only spaces, no backslash."""
    if not 0 < len(title) <= 16 or not title.strip() or not title.isascii() or "\\" in title:
        raise ApplianceError(
            f"{which} AE title {title!r}: it must be 1 to 16 characters of plain ASCII"
        )


def _associate(ae: AE, peer: Peer) -> Association:
    where = f"{peer.called_aet}@{peer.host}:{peer.port}"
    try:
        socket.getaddrinfo(peer.host, peer.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ApplianceError(f"{where}: cannot find host {peer.host!r}") from exc
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.called_aet)
    if not assoc.is_established:
        raise ApplianceError(f"association with {where} {_why_not(assoc, peer)}")
    return assoc


def not_accepted(sop_class: str) -> str:
    """The reason a file is not sent: the peer refused the presentation context of its class."""
    return f"the peer does not accept {UID(sop_class).name} ({sop_class})"


def _why_not(assoc: Association, peer: Peer) -> str:
    """Rejected by the peer, or why there was no DICOM conversation at all."""
    if assoc.is_rejected:
        return "rejected (is the called AE title right, and is this machine allowed?)"
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        # The peer answered but refused every context we proposed: pynetdicom then aborts.
        refused = sorted({str(cx.abstract_syntax) for cx in assoc.rejected_contexts})
        return "failed: " + "; ".join(not_accepted(uid) for uid in refused)
    try:
        with socket.create_connection((peer.host, peer.port), timeout=5.0):
            pass
    except ConnectionRefusedError:
        return "failed: connection refused (nothing listens on that port)"
    except OSError as exc:
        return f"failed: {exc.strerror or exc}"
    return "aborted by the peer"


def _failure_text(code: int, status: pydicom.Dataset) -> str:
    """The status and, where the peer gave one, its Error Comment (why it refused)."""
    comment = str(status.get("ErrorComment", "") or "").strip()
    return f"status 0x{code:04X}" + (f": {comment}" if comment else "")


def _status_of(status: pydicom.Dataset) -> int:
    if "Status" not in status:
        return -1  # no valid response: timeout or abort
    return int(status.Status)
