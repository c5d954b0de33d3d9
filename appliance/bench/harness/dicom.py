"""The DICOM client of the benchmarks that push to `appliance run`: a pynetdicom SCU that gives
every dataset fresh UIDs, so that nothing it sends is answered as a duplicate."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from appliance.bench.harness import BenchError
from appliance.bench.harness.processes import wait_until
from appliance.samples import sample_uid

if TYPE_CHECKING:
    from pynetdicom.association import Association

AE_TITLE = "APPLIANCE"  # the called AE title every receiver under test answers to
SCU_TIMEOUT_S = 60


class NotListening(BenchError):
    """No association: the receiver is not (yet) listening, or refused it."""


class Sender:
    """A pynetdicom SCU for `datasets`' SOP classes and transfer syntaxes."""

    def __init__(self, port: int, datasets: Sequence[Dataset], calling_ae: str) -> None:
        self.port = port
        self.calling_ae = calling_ae
        self.token = uuid.uuid4().hex  # this run's UIDs differ from any earlier run's
        self.count = 0
        self.contexts = sorted(
            {(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}
        )

    @contextmanager
    def association(self) -> Iterator[Association]:
        """An association with the receiver, released at the end; NotListening if refused."""
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = SCU_TIMEOUT_S
        for sop_class, syntax in self.contexts:
            ae.add_requested_context(sop_class, [syntax])
        assoc = ae.associate("127.0.0.1", self.port, ae_title=AE_TITLE)
        if not assoc.is_established:
            raise NotListening(f"no association with 127.0.0.1:{self.port}")
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def store_fresh(self, assoc: Association, ds: Dataset) -> tuple[str, float]:
        """C-STORE `ds` under fresh UIDs: its new SOP Instance UID, and the time.time() taken
        as soon as the success response is in."""
        uid = self._fresh_uids(ds)
        self.store(assoc, ds)
        return uid, time.time()

    def store_when_listening(
        self, ds: Dataset, alive: Callable[[], None], timeout_s: float
    ) -> float:
        """C-STORE `ds`, retried until the receiver listens; the time of the response."""

        def stored() -> float | None:
            if not self.listening():
                return None  # pynetdicom leaks the socket of a refused association
            try:
                with self.association() as assoc:
                    self.store(assoc, ds)
                    return time.time()
            except NotListening:
                return None

        return wait_until(
            stored,
            alive,
            lambda: f"no association with 127.0.0.1:{self.port} within {timeout_s:.0f} s",
            timeout_s,
            interval_s=0.02,
        )

    def listening(self) -> bool:
        """Whether the receiver accepts TCP connections yet."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def _fresh_uids(self, ds: Dataset) -> str:
        self.count += 1
        scope = self.calling_ae.lower()
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(ds, keyword, sample_uid(scope, self.token, self.count, keyword))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        return str(ds.SOPInstanceUID)

    @staticmethod
    def store(assoc: Association, ds: Dataset) -> None:
        """C-STORE `ds` as it is; BenchError unless answered with success."""
        status = assoc.send_c_store(ds)
        code = int(status.Status) if "Status" in status else None
        if code != 0:
            shown = "no response" if code is None else f"status 0x{code:04X}"
            raise BenchError(f"C-STORE of {ds.SOPInstanceUID} answered with {shown}")
