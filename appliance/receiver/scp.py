"""The receiver role: a DICOM Storage SCP that answers success only for durably stored images.

pynetdicom streams each incoming dataset to a file in the spool's tmp folder (so a 200 MB
object is never held in memory; see incoming.py); the C-STORE handler then checks it (header,
sizes and pixel data: imaging/limits.py), and `Store.ingest` makes it durable and indexed before
the handler returns the status.

Every storage SOP class is accepted: each class pydicom's UID dictionary names "... Storage",
retired ones included (older ultrasound scanners still send the retired Ultrasound Image
Storage), pynetdicom's storage list, and the private classes in `receiver.extra_sop_classes`.
A presentation context refused at negotiation is audited with the calling AE title.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom._uid_dict import UID_dictionary
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, AllStoragePresentationContexts, evt, register_uid
from pynetdicom import sop_class as known_classes
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from appliance.config import Settings
from appliance.domain import Origin, Source, StoreStatus, is_valid_uid
from appliance.errors import ApplianceError, OutOfSpaceError, RejectedInput
from appliance.imaging.limits import Limits, check_dataset, over_dataset_limit
from appliance.receiver.guard import Connections
from appliance.receiver.incoming import IncomingFiles, TooLargeError
from appliance.receiver.net import ApplianceServer, serve
from appliance.receiver.tls import server_context
from appliance.store import Store

log = logging.getLogger(__name__)

TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
]
_LOOP_STALE_S = 10.0  # an accepting loop turns every 0.5 s; this long without a turn is stuck
_MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: an index on media, never sent to a store
# PS3.8 9.3.3.2 result/reason of a refused presentation context
_CONTEXT_REFUSALS = {
    1: "refused by the receiver",
    2: "no reason given",
    3: "the SOP class is not accepted",
    4: "none of the proposed transfer syntaxes is accepted",
}


def storage_sop_classes(extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Every storage SOP class the receiver accepts, sorted: pydicom's dictionary (retired
    classes too), pynetdicom's storage list, then the site's private `extra` classes."""
    named = {
        uid
        for uid, (name, kind, *_) in UID_dictionary.items()
        if kind == "SOP Class" and name.removesuffix(" (Retired)").endswith("Storage")
    }
    listed = {str(c.abstract_syntax) for c in AllStoragePresentationContexts if c.abstract_syntax}
    return sorted((named | listed | set(extra)) - {_MEDIA_DIRECTORY})


def register_storage_classes(classes: list[str]) -> None:
    """Make pynetdicom serve C-STORE for classes it does not know as storage (retired and
    private ones): without this it answers their C-STORE with no status at all."""
    for uid in classes:
        if known_classes.uid_to_service_class(uid) is not StorageServiceClass:
            register_uid(uid, "Storage_" + uid.replace(".", "_"), StorageServiceClass)


@dataclass(frozen=True)
class Answer:
    """A C-STORE status and, for a refusal, why: sent as the response's Error Comment so that
    the modality's operator (or `appliance send`) reads the reason, not only a number."""

    status: int
    reason: str = ""

    def dataset(self) -> Dataset:
        answer = Dataset()
        answer.Status = int(self.status)
        if self.reason:
            answer.ErrorComment = error_comment(self.reason)
        return answer


def error_comment(reason: str) -> str:
    """An Error Comment is LO in a command set: at most 64 ASCII characters, no backslash or
    control characters."""
    text = reason.encode("ascii", "replace").decode("ascii").replace("\\", "/")
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= 64 else text[:61] + "..."


class Receiver:
    """One running SCP bound to a store. `start()` returns once it is listening."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings.receiver
        self.store = store
        self.limits = Limits.from_settings(self.settings)
        self.ae = self._make_ae()
        self.incoming = IncomingFiles(
            store.spool.new_tmp_path, self.limits.max_dataset_bytes, store.spool.check_space
        )
        self.connections = Connections(
            self.settings.acse_timeout_s,
            self.settings.max_associations_per_address,
            on_dropped=self._audit_dropped,
        )
        self.connections.on_refused = self._audit_over_cap
        self._server: ApplianceServer | None = None
        self._tls_server: ApplianceServer | None = None
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("the receiver is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def tls_address(self) -> tuple[str, int] | None:
        """Where DICOM over TLS is served; None when receiver.tls.port is 0."""
        if self._tls_server is None:
            return None
        host, port = self._tls_server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Listen on the plain port (and the TLS port when configured); return at once."""
        self.incoming.install()
        cfg = self.settings
        tls_context = server_context(cfg.tls) if cfg.tls.port else None
        self._server = self._listen(cfg.port, "receiver.port")
        if tls_context is not None:
            try:
                self._tls_server = self._listen(cfg.tls.port, "receiver.tls.port", tls_context)
            except BaseException:
                self.ae.shutdown()
                raise
        self.connections.start()
        self._threads = [serve(self._server, "receiver-accept")]
        if self._tls_server is not None:
            self._threads.append(serve(self._tls_server, "receiver-accept-tls"))

    def _listen(
        self, port: int, key: str, tls_context: ssl.SSLContext | None = None
    ) -> ApplianceServer:
        cfg = self.settings
        try:
            server = self.ae.make_server(
                (cfg.bind_address, port),
                evt_handlers=self._handlers(),
                server_class=ApplianceServer,
                connections=self.connections,
                network_timeout_s=cfg.network_timeout_s,
                listen_backlog=cfg.listen_backlog,
                tls_context=tls_context,
                allowed_networks=[
                    ipaddress.ip_network(n, strict=False) for n in cfg.allowed_networks
                ],
                on_refused=self._audit_refused_ip,
                max_p_data=cfg.max_pdu_bytes or self.limits.max_dataset_bytes,
                on_pdu_refused=self._audit_pdu_refused,
                on_tls_failed=self._audit_tls_failed,
            )
        except OSError as exc:
            raise ApplianceError(
                f"cannot listen on {cfg.bind_address}:{port} (receiver.bind_address, "
                f"{key}): {exc.strerror or exc}"
            ) from exc
        assert isinstance(server, ApplianceServer)
        self.ae._servers.append(server)  # as start_server does, so ae.shutdown() stops it
        return server

    def serving(self) -> bool:
        """Whether every accepting loop is alive and turning (the watchdog's question)."""
        servers = [s for s in (self._server, self._tls_server) if s is not None]
        alive = bool(self._threads) and all(t.is_alive() for t in self._threads)
        return alive and all(s.serving(within_s=_LOOP_STALE_S) for s in servers)

    def stop(self) -> None:
        """Stop listening and end the associations in progress."""
        self.connections.stop()  # first: no association thread may stay blocked in a read
        self.ae.shutdown()
        self._server = self._tls_server = None
        self._threads = []

    def _make_ae(self) -> AE:
        cfg = self.settings
        ae = AE(ae_title=cfg.ae_title)
        classes = storage_sop_classes(cfg.extra_sop_classes)
        register_storage_classes(classes)
        for sop_class in classes:
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.maximum_pdu_size = cfg.max_pdu_bytes
        ae.maximum_associations = cfg.max_associations
        ae.acse_timeout = cfg.acse_timeout_s
        ae.dimse_timeout = cfg.dimse_timeout_s
        ae.network_timeout = cfg.network_timeout_s
        ae.require_called_aet = True
        ae.require_calling_aet = list(cfg.allowed_calling_aets)
        return ae

    def _handlers(self) -> list[Any]:
        return [
            (evt.EVT_C_ECHO, _handle_echo),
            (evt.EVT_C_STORE, _handle_store, [self]),
            (evt.EVT_REJECTED, _handle_rejected, [self]),
            (evt.EVT_ACCEPTED, _handle_accepted, [self]),
            (evt.EVT_CONN_CLOSE, _handle_closed, [self]),
        ]

    def accept(self, path: Path, sop_class: str, sop_instance: str, origin: Origin) -> Answer:
        """Check and store one received file; return the C-STORE answer for it."""
        subject = f"instance:{sop_instance}" if is_valid_uid(sop_instance) else "instance:invalid"
        try:
            write_error = self.incoming.take_error(path)
            if isinstance(write_error, OutOfSpaceError):
                raise write_error  # the floor, checked before the image was written
            if isinstance(write_error, TooLargeError):
                raise OutOfSpaceError(over_dataset_limit(self.limits))
            if write_error is not None:
                raise OutOfSpaceError(f"could not write the incoming image: {write_error}")
            self.store.spool.check_space()  # the image itself is already on this disk
            header = check_dataset(path, self.limits)
            if (header.sop_class_uid, header.sop_instance_uid) != (sop_class, sop_instance):
                return self._refuse(
                    path,
                    StoreStatus.SOP_MISMATCH,
                    origin,
                    subject,
                    "the dataset's SOP Class/Instance UID differ from the request",
                )
            self.store.ingest(path, header, origin)
        except OutOfSpaceError as exc:
            return self._refuse(path, StoreStatus.OUT_OF_RESOURCES, origin, subject, str(exc))
        except RejectedInput as exc:
            return self._refuse(path, StoreStatus.CANNOT_UNDERSTAND, origin, subject, str(exc))
        except OSError as exc:
            # ENOSPC, EIO, a vanished folder: not stored, so the modality must keep its copy.
            log.exception("storing a received image failed")
            return self._refuse(
                path,
                StoreStatus.OUT_OF_RESOURCES,
                origin,
                subject,
                f"could not write the image: {exc.strerror or exc}",
            )
        except Exception as exc:
            # A fault of ours, not of the dataset: refused (the modality keeps its copy and
            # may retry), logged with its traceback, audited; the receiver goes on.
            log.exception("storing a received image failed")
            return self._refuse(
                path, StoreStatus.PROCESSING_FAILURE, origin, subject, f"internal error: {exc}"
            )
        return Answer(StoreStatus.SUCCESS)

    def _refuse(
        self, path: Path, status: StoreStatus, origin: Origin, subject: str, reason: str
    ) -> Answer:
        path.unlink(missing_ok=True)
        log.warning("refused a C-STORE from %s: 0x%04X %s", origin.calling_aet, status, reason)
        try:
            self.store.audit(
                origin.actor, "ingest.rejected", subject, status=f"0x{status:04X}", reason=reason
            )
        except Exception:
            log.exception("could not audit a refused C-STORE")
        return Answer(status, reason)

    def _audit_pdu_refused(self, host: str, reason: str) -> None:
        self.store.audit(f"ip:{host}", "association.aborted", "receiver", reason=reason)

    def _audit_dropped(self, host: str, reason: str) -> None:
        self.store.audit(f"ip:{host}", "association.dropped", "receiver", reason=reason)

    def _audit_over_cap(self, host: str, reason: str) -> None:
        self.store.audit(f"ip:{host}", "association.refused", "receiver", reason=reason)

    def _audit_tls_failed(self, host: str, reason: str) -> None:
        self.store.audit(f"ip:{host}", "association.refused", "receiver", reason=reason)

    def _audit_refused_ip(self, host: str) -> None:
        self.store.audit(
            f"ip:{host}",
            "association.refused",
            "receiver",
            reason="source address not in receiver.allowed_networks",
        )


def _handle_echo(event: evt.Event) -> int:
    return int(StoreStatus.SUCCESS)


def _handle_store(event: evt.Event, receiver: Receiver) -> Dataset:
    request = event.request
    assert isinstance(request, C_STORE)
    requestor = event.assoc.requestor
    origin = Origin(Source.DICOM, calling_aet=requestor.ae_title, peer_address=requestor.address)
    answer = receiver.accept(
        Path(event.dataset_path),
        str(request.AffectedSOPClassUID),
        str(request.AffectedSOPInstanceUID),
        origin,
    )
    return answer.dataset()


def _handle_rejected(event: evt.Event, receiver: Receiver) -> None:
    requestor = event.assoc.requestor
    receiver.store.audit(
        f"ae:{requestor.ae_title}@{requestor.address}",
        "association.rejected",
        "receiver",
        reason=_rejection_reason(event.assoc),
    )


def _handle_accepted(event: evt.Event, receiver: Receiver) -> None:
    """Audit each presentation context refused at negotiation: a modality sending a class we
    refuse would otherwise see only "no acceptable presentation context" on its side."""
    requestor = event.assoc.requestor
    # A modality may propose one class in several contexts, one per transfer syntax: a context
    # refused beside an accepted one of the same class refuses nothing, so it is not reported.
    accepted = {str(context.abstract_syntax) for context in event.assoc.accepted_contexts}
    for context in event.assoc.rejected_contexts:
        sop_class = UID(str(context.abstract_syntax))
        if sop_class in accepted:
            continue
        reason = _CONTEXT_REFUSALS.get(int(context.result or 0), "refused")
        log.warning(
            "refused a presentation context from %s: %s (%s): %s",
            requestor.ae_title,
            sop_class.name,
            sop_class,
            reason,
        )
        receiver.store.audit(
            f"ae:{requestor.ae_title}@{requestor.address}",
            "association.context_refused",
            "receiver",
            sop_class=str(sop_class),
            sop_class_name=sop_class.name,
            transfer_syntaxes=[str(ts) for ts in context.transfer_syntax],
            reason=reason,
        )


def _rejection_reason(assoc: Any) -> str:
    """Why pynetdicom rejected the association, by its own tests in its order (the event does
    not say): the association limit is checked last, so it wins when several apply."""
    ae, limit = assoc.ae, assoc.ae.maximum_associations
    if len([a for a in ae.active_associations if a.is_acceptor]) > limit:
        return f"too many associations at once (receiver.max_associations is {limit})"
    if assoc.requestor.primitive is not None:
        called = str(assoc.requestor.primitive.called_ae_title).strip()
        if called != assoc.acceptor.ae_title.strip():
            return f"called AE title {called!r} is not this receiver's"
    allowed = [title.strip() for title in ae.require_calling_aet]
    if allowed and assoc.requestor.ae_title.strip() not in allowed:
        return f"calling AE title {assoc.requestor.ae_title.strip()!r} is not allowed"
    return "refused by the DICOM association checks"


def _handle_closed(event: evt.Event, receiver: Receiver) -> None:
    # Transfers cut off mid-dataset leave a partial tmp file; remove those nobody is writing.
    cfg = receiver.settings
    receiver.store.spool.sweep_tmp(older_than_s=cfg.network_timeout_s + cfg.dimse_timeout_s)
