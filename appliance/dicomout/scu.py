"""A small Storage and Verification SCU: `appliance send` and `appliance echo`, and the pieces
the sender role builds its deliveries from.

Those pieces keep what a caller must act on apart from the words: an association that could
not be made raises `AssociationError` saying whether the peer was unreachable, rejected it
(with the reason it gave) or refused every presentation context; a C-STORE gives its status
and the peer's comment, or says why it was not sent. A file is read only when it is sent, so a
long batch never holds more than one object in memory.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from appliance.errors import ApplianceError

MAX_CONTEXTS = 128  # the most an association may propose (PS3.8 9.3.2.2)
# Uncompressed little endian: pynetdicom converts between these two as it sends, so a file in
# either goes on a context that accepted the other.
LITTLE_ENDIAN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
REFUSED_CONTEXT = {
    1: "refused by the peer",
    2: "refused without a reason",
    3: "SOP class not supported",
    4: "transfer syntax not supported",
}


@dataclass(frozen=True)
class Peer:
    host: str
    port: int
    called_aet: str = "APPLIANCE"
    calling_aet: str = "APPLIANCE-SCU"

    @property
    def where(self) -> str:
        return f"{self.called_aet}@{self.host}:{self.port}"


@dataclass(frozen=True)
class Timeouts:
    """How long to wait for the connection and association, and for each answer."""

    connect_s: float = 10.0
    dimse_s: float = 60.0


@dataclass(frozen=True)
class SendResult:
    path: Path
    status: int | None  # None: no response (association lost) or not sent
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 0


@dataclass(frozen=True)
class Rejection:
    """The peer's A-ASSOCIATE-RJ: result 1 permanent, 2 transient; source and diagnostic as
    PS3.8 9.3.4 numbers them."""

    result: int
    source: int
    diagnostic: int

    @property
    def permanent(self) -> bool:
        return self.result == 1


@dataclass(frozen=True)
class RefusedContext:
    """A presentation context the peer did not accept, and its result (REFUSED_CONTEXT)."""

    sop_class: str
    syntaxes: tuple[str, ...]
    result: int


class AssociationError(ApplianceError):
    """No association. `unreachable` names why no DICOM conversation took place (empty when
    the peer answered); `rejection` is the peer's refusal; `refused` lists the contexts when
    the peer refused every one of them."""

    def __init__(
        self,
        message: str,
        *,
        unreachable: str = "",
        rejection: Rejection | None = None,
        refused: Sequence[RefusedContext] = (),
    ) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.rejection = rejection
        self.refused = tuple(refused)


@dataclass(frozen=True)
class StoreReply:
    """What became of one C-STORE: the peer's status and comment, or (status None) why there
    was no answer or nothing was sent (`problem`)."""

    status: int | None
    comment: str = ""
    problem: str = ""
    lost: bool = False  # the association went away: nothing more can be sent


def parse_peer(text: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port), with an error that quotes the bad value."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ApplianceError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def echo(peer: Peer, timeout_s: float = 10.0) -> int:
    """C-ECHO the peer; return the status (0 is success)."""
    ae = _ae(peer, Timeouts(timeout_s, timeout_s))
    ae.add_requested_context(Verification)
    assoc = _associate(ae, peer, timeout_s)
    try:
        status = assoc.send_c_echo()
        return _status_of(status)
    finally:
        assoc.release()


def send(paths: Iterable[Path], peer: Peer, timeout_s: float = 60.0) -> Iterator[SendResult]:
    """C-STORE each file to the peer on one association; yield a result per file."""
    files = list(paths)
    contexts = [c for c in (_context_of(p) for p in files) if c is not None]
    if not contexts:  # nothing to propose: no association at all
        yield from (SendResult(p, None, "not a readable DICOM file") for p in files)
        return
    assoc = open_association(peer, propose(sorted(contexts)), Timeouts(timeout_s, timeout_s))
    try:
        for path in files:
            yield _send_one(assoc, path)
    finally:
        release(assoc)


def _send_one(assoc: Association, path: Path) -> SendResult:
    context = _context_of(path)
    if context is None:
        return SendResult(path, None, "not a readable DICOM file")
    sop_class, syntax = context
    if sop_class not in accepted_classes(assoc):
        return SendResult(path, None, not_accepted(sop_class))
    reply = store_file(assoc, path, sop_class, syntax)
    if reply.status is None:
        return SendResult(path, None, reply.problem)
    code = reply.status
    return SendResult(path, code, "" if code == 0 else _failure_text(code, reply.comment))


# ---- the pieces of a delivery ---------------------------------------------------------------


def file_context(path: Path) -> tuple[str, str] | None:
    """A Part 10 file's (SOP class, transfer syntax) from its file meta only, or None when it
    is not readable DICOM: the rest of the file stays on disk until it is sent."""
    try:
        meta = read_file_meta_info(path)
    except (InvalidDicomError, OSError, EOFError, ValueError):
        return None
    sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
    syntax = str(meta.get("TransferSyntaxUID", "") or "")
    return (sop_class, syntax) if sop_class and syntax else None


def context_key(sop_class: str, syntax: str) -> tuple[str, tuple[str, ...]]:
    """The presentation context a file goes on: its SOP class with its own transfer syntax,
    and for uncompressed little endian both explicit and implicit VR (the peer picks)."""
    if syntax in LITTLE_ENDIAN:
        return sop_class, tuple(LITTLE_ENDIAN)
    return sop_class, (syntax,)


def propose(contexts: Iterable[tuple[str, str]]) -> list[tuple[str, tuple[str, ...]]]:
    """The distinct presentation contexts for these (SOP class, transfer syntax) pairs, in the
    order first needed. An association carries at most MAX_CONTEXTS of them: the caller keeps
    the files of the others for the next one."""
    return list(dict.fromkeys(context_key(c, s) for c, s in contexts))


def open_association(
    peer: Peer, contexts: Sequence[tuple[str, Sequence[str]]], timeouts: Timeouts
) -> Association:
    """An association with `peer` proposing `contexts` (SOP class, transfer syntaxes), at most
    MAX_CONTEXTS of them; AssociationError says why there is none."""
    ae = _ae(peer, timeouts)
    for sop_class, syntaxes in list(contexts)[:MAX_CONTEXTS]:
        ae.add_requested_context(sop_class, list(syntaxes))
    return _associate(ae, peer, timeouts.connect_s)


def accepted_classes(assoc: Association) -> set[str]:
    return {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}


def can_send(assoc: Association, sop_class: str, syntax: str) -> bool:
    """Whether an accepted context carries this SOP class in this transfer syntax (directly,
    or by pynetdicom's conversion between explicit and implicit VR little endian)."""
    for cx in assoc.accepted_contexts:
        agreed = str(cx.transfer_syntax[0])
        if str(cx.abstract_syntax) == sop_class and (
            agreed == syntax or (agreed in LITTLE_ENDIAN and syntax in LITTLE_ENDIAN)
        ):
            return True
    return False


def refused_contexts(assoc: Association) -> list[RefusedContext]:
    """The proposed contexts the peer did not accept, with its result for each."""
    return [
        RefusedContext(
            str(cx.abstract_syntax),
            tuple(str(s) for s in cx.transfer_syntax),
            int(cx.result or 0),
        )
        for cx in assoc.rejected_contexts
    ]


def store_file(assoc: Association, path: Path, sop_class: str, syntax: str) -> StoreReply:
    """Read one file and C-STORE it; the reply says what the peer answered. Call `can_send`
    first: a file without an accepted context is refused here without being read."""
    if not assoc.is_established:
        return StoreReply(None, problem="association lost before sending", lost=True)
    if not can_send(assoc, sop_class, syntax):
        return StoreReply(None, problem=not_accepted(sop_class))
    ds = _read(path)
    if ds is None:
        return StoreReply(None, problem="not a readable DICOM file")
    try:
        status = assoc.send_c_store(ds)
    except (ValueError, AttributeError) as exc:  # cannot be encoded, or not a complete object
        return StoreReply(None, problem=str(exc))
    except RuntimeError as exc:  # the peer aborted between the check above and the send
        return StoreReply(None, problem=f"association lost while sending ({exc})", lost=True)
    if "Status" not in status:  # no valid response: the peer aborted, or timed out
        return StoreReply(None, problem="no answer from the peer", lost=True)
    return StoreReply(int(status.Status), str(status.get("ErrorComment", "") or "").strip())


def release(assoc: Association) -> None:
    """Release an association that is still up (one the peer aborted needs nothing)."""
    if assoc.is_established:
        assoc.release()


# ---- inside ---------------------------------------------------------------------------------


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


def _ae(peer: Peer, timeouts: Timeouts) -> AE:
    _check_ae_title("calling", peer.calling_aet)
    _check_ae_title("called", peer.called_aet)
    ae = AE(ae_title=peer.calling_aet)
    ae.connection_timeout = ae.acse_timeout = timeouts.connect_s
    ae.dimse_timeout = ae.network_timeout = timeouts.dimse_s
    return ae


def _check_ae_title(which: str, title: str) -> None:
    """An AE title is 1-16 characters of printable ASCII, not only spaces, no backslash."""
    if not 0 < len(title) <= 16 or not title.strip() or not title.isascii() or "\\" in title:
        raise ApplianceError(
            f"{which} AE title {title!r}: it must be 1 to 16 characters of plain ASCII"
        )


def _associate(ae: AE, peer: Peer, connect_s: float) -> Association:
    try:
        socket.getaddrinfo(peer.host, peer.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        cause = f"cannot find host {peer.host!r}"
        raise AssociationError(f"{peer.where}: {cause}", unreachable=cause) from exc
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.called_aet)
    if not assoc.is_established:
        raise _no_association(assoc, peer, connect_s)
    return assoc


def not_accepted(sop_class: str) -> str:
    """The reason a file is not sent: the peer refused the presentation context of its class."""
    return f"the peer does not accept {UID(sop_class).name} ({sop_class})"


def _no_association(assoc: Association, peer: Peer, connect_s: float) -> AssociationError:
    """Rejected by the peer, every context refused, or why there was no DICOM conversation."""
    where = f"association with {peer.where}"
    answer = assoc.acceptor.primitive
    if assoc.is_rejected and answer is not None:
        rejection = Rejection(
            int(answer.result or 0), int(answer.result_source or 0), int(answer.diagnostic or 0)
        )
        return AssociationError(
            f"{where} rejected (is the called AE title right, and is this machine allowed?)",
            rejection=rejection,
        )
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        # The peer answered but refused every context we proposed: pynetdicom then aborts.
        refused = refused_contexts(assoc)
        text = "; ".join(not_accepted(uid) for uid in sorted({r.sop_class for r in refused}))
        return AssociationError(f"{where} failed: {text}", refused=refused)
    if answer is not None:
        return AssociationError(f"{where} aborted by the peer")
    cause = _unreachable(peer, connect_s)
    if not cause:
        return AssociationError(f"{where} aborted by the peer")
    return AssociationError(f"{where} failed: {cause}", unreachable=cause)


def _unreachable(peer: Peer, connect_s: float) -> str:
    """Why a TCP connection to the peer fails, in words; empty when it succeeds (the peer
    listens, but closed the connection or never answered the association request)."""
    try:
        with socket.create_connection((peer.host, peer.port), timeout=connect_s):
            return ""
    except ConnectionRefusedError:
        return "connection refused (nothing listens on that port)"
    except TimeoutError:
        return f"no answer within {connect_s:g} s"
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()


def _failure_text(code: int, comment: str) -> str:
    """The status and, where the peer gave one, its Error Comment (why it refused)."""
    return f"status 0x{code:04X}" + (f": {comment}" if comment else "")


def _status_of(status: pydicom.Dataset) -> int:
    if "Status" not in status:
        return -1  # no valid response: timeout or abort
    return int(status.Status)
