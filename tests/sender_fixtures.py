"""Helpers for the sender's tests: a store with a received image and objects queued for
destinations (`Box`), small objects with UIDs of their own, and a pynetdicom storage SCP on
loopback that can be told how to answer each object, or to drop the association instead.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import yaml
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import Comprehensive3DSRStorage, EncapsulatedPDFStorage, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from appliance.bench.harness.processes import free_port
from appliance.config import Settings
from appliance.dicomout.meta import file_meta_for
from appliance.domain import Origin, Source
from appliance.imaging.header import read_header
from appliance.samples import make_dataset
from appliance.store import Store, audit, open_store, outbox
from appliance.store.db import transaction
from appliance.store.doorbell import Doorbell
from appliance.store.outbox import NewOutput

from conftest import RoleProcess, make_settings

ORIGIN = Origin(Source.DICOM, calling_aet="MODALITY", peer_address="127.0.0.1")
# Short back-off so that tests drain quickly; the timeouts are generous (loopback only).
FAST = {"retry_min_s": 0.2, "retry_max_s": 1.0, "poll_s": 0.5, "connect_timeout_s": 5.0}
PACS_AE = "PACS"


# ---- the box: settings, a received image and the objects made of it ---------------------------


@dataclass
class Box:
    settings: Settings
    config: Path
    store: Store
    instance_id: int
    study_id: int
    original_uid: str
    procs: list[RoleProcess] = field(default_factory=list)
    revision: int = 0

    def sender(self) -> RoleProcess:
        proc = RoleProcess(self.config, self.settings, role="sender", ready="sender: ready")
        self.procs.append(proc)
        proc.start()
        return proc

    def ring(self) -> None:
        bell = Doorbell(self.store.paths.sender_bell)
        bell.ring()
        bell.close()

    def add(self, datasets: Sequence[Dataset], destinations: Sequence[str]) -> list[str]:
        """Write `datasets` to the outputs folder, record them and queue them for each
        destination; their SOP Instance UIDs."""
        data = [to_bytes(ds) for ds in datasets]
        names = self.store.outputs.write_all(data)
        objects = [
            NewOutput(
                "sr" if ds.SOPClassUID == Comprehensive3DSRStorage else "heatmap",
                f"label-{i}",
                str(ds.SOPClassUID),
                str(ds.SOPInstanceUID),
                str(ds.SeriesInstanceUID),
                name,
                len(content),
            )
            for i, (ds, name, content) in enumerate(zip(datasets, names, data, strict=True))
        ]
        conn, self.revision = self.store.conn, self.revision + 1
        with transaction(conn):
            ids = outbox.record_outputs(
                conn, self.instance_id, self.study_id, self.revision, "fp", "findings", objects
            )
            items = [(i, None, o.sop_instance_uid) for i, o in zip(ids, objects, strict=True)]
            for name in destinations:
                outbox.queue_deliveries(conn, name, self.study_id, items)
        self.ring()
        return [o.sop_instance_uid for o in objects]

    def add_original(self, destination: str) -> str:
        with transaction(self.store.conn):
            outbox.queue_deliveries(
                self.store.conn,
                destination,
                self.study_id,
                [(None, self.instance_id, self.original_uid)],
            )
        return self.original_uid

    def rows(self, destination: str) -> list[Any]:
        return self.store.conn.execute(
            "SELECT * FROM deliveries WHERE destination = ? ORDER BY id", (destination,)
        ).fetchall()

    def states(self, destination: str) -> dict[str, int]:
        return dict(Counter(row["state"] for row in self.rows(destination)))

    def by_uid(self, destination: str) -> dict[str, Any]:
        return {row["sop_instance_uid"]: row for row in self.rows(destination)}

    def all_sent(self, destination: str, count: int) -> bool:
        return self.states(destination) == {"sent": count}


def new_box(folder: Path, destinations: list[dict[str, Any]], **sender: Any) -> Box:
    """A store holding one received image, and the settings (written to a config file) of a
    sender with these destinations and quick retries; the caller closes the store."""
    base = make_settings(folder, sender={**FAST, **sender})
    values = {**base.model_dump(mode="json"), "destinations": destinations}
    settings = Settings.model_validate(values)
    config = folder / "appliance.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    store = open_store(settings)
    return Box(settings, config, store, *ingest_one(store, folder, seed=7))


def ingest_one(store: Store, folder: Path, seed: int = 1) -> tuple[int, int, str]:
    """A received image: (instance id, study id, SOP Instance UID)."""
    source = folder / f"received-{seed}.dcm"
    make_dataset("cr", seed=seed, rows=16, columns=16).save_as(source, enforce_file_format=True)
    incoming = store.spool.new_tmp_path()
    incoming.write_bytes(source.read_bytes())
    result = store.ingest(incoming, read_header(incoming), ORIGIN)
    row = store.conn.execute(
        "SELECT s.study_ref, i.sop_instance_uid FROM instances i"
        " JOIN series s ON s.id = i.series_ref WHERE i.id = ?",
        (result.instance_id,),
    ).fetchone()
    return result.instance_id, int(row["study_ref"]), str(row["sop_instance_uid"])


def destination(name: str, port: int, called: str = PACS_AE, **more: Any) -> dict[str, Any]:
    return {"name": name, "host": "127.0.0.1", "port": port, "called_ae_title": called, **more}


# ---- objects -------------------------------------------------------------------------------------


def to_bytes(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def images(count: int, kind: str = "sc-gray") -> list[Dataset]:
    """Small images with UIDs of their own (never a sample's fixed UID)."""
    made = []
    for seed in range(count):
        ds = make_dataset(kind, seed=seed, rows=16, columns=16)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta = file_meta_for(ds)
        made.append(ds)
    return made


def document(sop_class: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID, ds.PatientName = "SYN0001", "SYNTHETIC^PATIENT"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20261101", "093000", "ACC1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 99, 1
    ds.file_meta = file_meta_for(ds)
    return ds


def structured_report() -> Dataset:
    ds = document(Comprehensive3DSRStorage, "SR")
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator = "126000", "DCM"
    title.CodeMeaning = "Imaging Measurement Report"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = DicomSequence([title])
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    return ds


def pdf_report() -> Dataset:
    ds = document(EncapsulatedPDFStorage, "DOC")
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    ds.BurnedInAnnotation, ds.DocumentTitle = "YES", "Report"
    return ds


# ---- peers -------------------------------------------------------------------------------------


class Scp:
    """A pynetdicom storage SCP on loopback that records every SOP Instance UID it is sent and
    answers with `answer(uid)` (success unless told otherwise), or drops the association
    without an answer when `drop(uid)` says so."""

    def __init__(
        self,
        port: int | None = None,
        classes: Sequence[str] | None = None,
        calling_aets: Sequence[str] = (),
        answer: Callable[[str], int | Dataset] | None = None,
        drop: Callable[[str], bool] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.received: list[str] = []
        self.answer = answer
        self.drop = drop
        self.ae = AE(ae_title=PACS_AE)
        if classes is None:
            self.ae.supported_contexts = AllStoragePresentationContexts
        for sop_class in classes or ():
            self.ae.add_supported_context(sop_class)
        self.ae.add_supported_context(Verification)
        self.ae.require_calling_aet = list(calling_aets)
        self.server: Any = None

    def _store(self, event: Any) -> int | Dataset:
        uid = str(event.request.AffectedSOPInstanceUID)
        self.received.append(uid)
        if self.drop is not None and self.drop(uid):
            event.assoc.abort()  # the answer below is never sent
            return 0xC000
        return self.answer(uid) if self.answer else 0x0000

    def start(self) -> Scp:
        handlers: list[Any] = [(evt.EVT_C_STORE, self._store)]
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=handlers
        )
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


def received_by_storescp(folder: Path) -> list[str]:
    return [
        str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        for path in folder.iterdir()
        if path.is_file()
    ]


def held_at(number: int, gate: threading.Event) -> Callable[[str], int]:
    """An answer that holds the `number`th object it is sent until `gate` opens (a PACS that
    is slow to answer), so that a signal sent meanwhile lands in the middle of a batch."""
    seen: list[str] = []

    def answer(uid: str) -> int:
        seen.append(uid)
        if len(seen) == number:
            gate.wait(60)
        return 0x0000

    return answer


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def sent_audits(box: Box) -> list[str]:
    """The SOP Instance UID of every send.sent audit row."""
    rows = audit.recent(box.store.conn, "send.sent", limit=10_000)
    return [row["subject"].removeprefix("object:") for row in rows]
