"""The whole appliance (`appliance run`) with real peers, for the end-to-end tests of results
reaching the clinic's record: a running box, what it queued and what a PACS holds, and readers
of the objects that arrived (the SR's content tree, the PDF's text).

Everything is read back from where a person would find it: the store through a read-only
connection (as another process opens it), Orthanc through its REST API, storescp through the
files it wrote. Nothing here sleeps for a fixed time: `wait_for` polls.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset

from appliance.bench.harness import BenchError
from appliance.bench.harness.http import CSRF, Session
from appliance.bench.harness.orthanc import Orthanc, orthanc_executable
from appliance.config import Settings
from appliance.store import open_store, users

from conftest import RoleProcess, make_settings, read_only, storescu, wait_for

needs_pdftotext = pytest.mark.skipif(
    shutil.which("pdftotext") is None, reason="poppler's pdftotext is not installed (.ci/run does)"
)
PACS = "pacs"
CLINICIAN, CLINICIAN_PIN, CLINICIAN_NAME = "dr-nunez", "24681357", "Dr Ñúñez"
# Quick retries so that a PACS that comes back is tried again soon (no timing is asserted).
SENDER = {"retry_min_s": 0.2, "retry_max_s": 1.0, "poll_s": 0.5, "connect_timeout_s": 5.0}
SETTLE_S = 300.0  # only turns a hang into a failure: the box analyses a dozen images on 2 cores


def destination(name: str, port: int, ae_title: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "host": "127.0.0.1", "port": port, "called_ae_title": ae_title, **more}


def pacs_destination(orthanc: Orthanc) -> dict[str, Any]:
    return destination(PACS, orthanc.dicom_port, orthanc.ae_title)


def new_orthanc(folder: Path) -> Orthanc:
    """An Orthanc (not started) for a module's fixture; the module is skipped, saying why, on
    a machine without one (as conftest's `orthanc` fixture does for a test)."""
    try:
        orthanc_executable()
    except BenchError as exc:
        pytest.skip(str(exc))
    return Orthanc(folder)


@dataclass
class Box:
    """A running `appliance run` and a read-only look into its store."""

    proc: RoleProcess
    conn: sqlite3.Connection

    @property
    def settings(self) -> Settings:
        return self.proc.settings

    def push(self, *files: Path) -> None:
        """storescu to the receiver; every file must be accepted."""
        done = storescu(("127.0.0.1", self.proc.port), *files)
        assert done.returncode == 0, done.stdout + done.stderr

    def settled(self) -> bool:
        """Every received image analysed, every job ended and every analysed image's objects
        made (the outputs of a job come with its end, in one transaction)."""
        instances = self.count("SELECT COUNT(*) FROM instances")
        analysed = self.count("SELECT COUNT(*) FROM analyses")
        made = self.count("SELECT COUNT(DISTINCT instance_ref) FROM outputs")
        busy = self.count("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')")
        return instances > 0 and instances == analysed == made and busy == 0

    def count(self, sql: str) -> int:
        return int(self.conn.execute(sql).fetchone()[0])

    def wait_settled(self) -> None:
        wait_for(
            self.settled,
            SETTLE_S,
            what="every image analysed and its objects made",
            state=self.jobs,
        )

    def jobs(self) -> list[tuple[str, str, str]]:
        rows = self.conn.execute("SELECT kind, state, error FROM jobs ORDER BY id")
        return [(r["kind"], r["state"], r["error"]) for r in rows]

    def deliveries(self, name: str) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT * FROM deliveries WHERE destination = ? ORDER BY id", (name,)
        ).fetchall()

    def states(self, name: str) -> Counter[str]:
        return Counter(row["state"] for row in self.deliveries(name))

    def all_sent(self, name: str) -> bool:
        states = self.states(name)
        return bool(states) and set(states) == {"sent"}

    def wait_sent(self, name: str) -> None:
        wait_for(
            lambda: self.settled() and self.all_sent(name),
            SETTLE_S,
            what=f"every delivery to {name} sent",
            state=lambda: (self.states(name), [dict(r) for r in self.deliveries(name)][-3:]),
        )

    def queued_uids(self, name: str) -> list[str]:
        return [row["sop_instance_uid"] for row in self.deliveries(name)]


def write_config(folder: Path, destinations: list[dict[str, Any]], **sections: Any) -> RoleProcess:
    """`appliance run` on loopback (free ports) with these destinations, not started yet."""
    base = make_settings(folder, jobs={"pictures_quiet_s": 0}, sender=dict(SENDER))
    values = base.model_dump(mode="json")
    values["destinations"] = destinations
    for name, section in sections.items():
        values.setdefault(name, {}).update(section)
    settings = Settings.model_validate(values)
    config = folder / "appliance.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")), encoding="utf-8")
    return RoleProcess(config, settings, role="run", ready="worker: ready")


def start(proc: RoleProcess) -> None:
    """Start `appliance run` and return once the receiver, the worker and the sender are up."""
    before = len(proc.output)
    proc.start(timeout_s=120)
    for line in ("receiver: listening", "sender: ready"):
        wait_for(partial(printed, proc, line, before), 60, what=line)


def printed(proc: RoleProcess, line: str, since: int) -> bool:
    return any(line in out for out in proc.output[since:])


@contextmanager
def running_box(folder: Path, destinations: list[dict[str, Any]], **sections: Any) -> Iterator[Box]:
    """`appliance run` for the block, stopped (SIGTERM to the supervisor) at its end."""
    proc = write_config(folder, destinations, **sections)
    start(proc)
    conn = read_only(proc)
    try:
        yield Box(proc, conn)
    finally:
        conn.close()
        proc.stop()


# ---- what the store says was made ----------------------------------------------------------


def outputs_of(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every object made, with its image's and study's UIDs."""
    return conn.execute(
        "SELECT o.*, i.sop_instance_uid AS source_uid, st.study_uid FROM outputs o"
        " JOIN instances i ON i.id = o.instance_ref JOIN studies st ON st.id = o.study_ref"
        " ORDER BY o.id"
    ).fetchall()


def output_row(
    conn: sqlite3.Connection, source_uid: str, kind: str, revision: int = 1
) -> sqlite3.Row:
    """The object of one kind (sr, report) made of an image at a revision."""
    row = conn.execute(
        "SELECT o.* FROM outputs o JOIN instances i ON i.id = o.instance_ref"
        " WHERE i.sop_instance_uid = ? AND o.kind = ? AND o.revision = ?",
        (source_uid, kind, revision),
    ).fetchone()
    assert isinstance(row, sqlite3.Row), f"no {kind} revision {revision} of {source_uid}"
    return row


# ---- what the PACS holds -------------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    """One instance in the PACS, as Orthanc indexed it."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str


def holdings(orthanc: Orthanc) -> list[Held]:
    """Every instance Orthanc holds, with its SOP class and study (Orthanc 1.10's REST has no
    requested tags in a find, so each instance is asked)."""
    found = orthanc.post("/tools/find", {"Level": "Instance", "Query": {}, "Expand": True})
    held = []
    for item in found:
        sop_class = orthanc.get(f"/instances/{item['ID']}/metadata?expand")["SopClassUid"]
        study = orthanc.get(f"/instances/{item['ID']}/study")["MainDicomTags"]
        uid = item["MainDicomTags"]["SOPInstanceUID"]
        held.append(Held(uid, sop_class, study["StudyInstanceUID"]))
    return held


def fetch(orthanc: Orthanc, uid: str, folder: Path) -> Path:
    """The file Orthanc stored for `uid`, written to `folder`."""
    path = numbered(folder, ".dcm")
    path.write_bytes(orthanc.instance_file(uid))
    return path


def numbered(folder: Path, suffix: str) -> Path:
    """A new file name in `folder` made by the test, never from a DICOM value."""
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{len(list(folder.iterdir())):04d}{suffix}"


def received_by_storescp(folder: Path) -> dict[str, str]:
    """SOP Instance UID -> SOP Class UID of every file storescp accepted."""
    found = {}
    for path in folder.iterdir():
        if path.is_file():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            found[str(ds.SOPInstanceUID)] = str(ds.SOPClassUID)
    return found


# ---- reading the objects -------------------------------------------------------------------


def content_items(ds: Dataset) -> Iterator[Dataset]:
    """Every content item of an SR document, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def concept(item: Dataset) -> tuple[str, str]:
    """(scheme, value) of a content item's concept name."""
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodingSchemeDesignator), str(code.CodeValue)


def code_of(item: Dataset) -> tuple[str, str]:
    """(scheme, value) of a CODE item's value."""
    code = item.ConceptCodeSequence[0]
    return str(code.CodingSchemeDesignator), str(code.CodeValue)


def children(item: Dataset, scheme_value: tuple[str, str]) -> list[Dataset]:
    """An item's direct children with this concept name."""
    return [c for c in item.get("ContentSequence", []) if concept(c) == scheme_value]


def texts(ds: Dataset) -> list[str]:
    """The values of every TEXT item."""
    return [str(item.TextValue) for item in content_items(ds) if item.ValueType == "TEXT"]


def pdf_text(ds: Dataset, folder: Path) -> str:
    """The text of an Encapsulated PDF's document as poppler's pdftotext reads it."""
    data = bytes(ds.EncapsulatedDocument)
    if "EncapsulatedDocumentLength" in ds:
        data = data[: int(ds.EncapsulatedDocumentLength)]  # the value is padded to even length
    assert data.startswith(b"%PDF-"), data[:16]
    pdf = numbered(folder, ".pdf")
    pdf.write_bytes(data)
    done = subprocess.run(
        ["pdftotext", "-enc", "UTF-8", str(pdf), "-"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return done.stdout.decode("utf-8")


# ---- the UI over HTTP ----------------------------------------------------------------------


def add_clinician(settings: Settings) -> None:
    """An admin (without one the UI offers only its set-up) and the clinician who signs."""
    store = open_store(settings)
    try:
        with store.conn:
            users.create_user(store.conn, "admin", "Admin", "admin", "13572468", "test")
            users.create_user(
                store.conn, CLINICIAN, CLINICIAN_NAME, "clinician", CLINICIAN_PIN, "test"
            )
    finally:
        store.close()


def final_impression(settings: Settings, study_id: int, text: str) -> dict[str, Any]:
    """Sign in to the running UI as the clinician and record a final impression of a study,
    as the study page's form does; the UI's JSON answer."""
    session = Session.signed_in(settings.ui.port, CLINICIAN, CLINICIAN_PIN)
    try:
        status, page = session.get(f"/study/{study_id}")
        token = CSRF.search(page)
        assert status == 200 and token is not None, status
        form = urlencode({"text": text, "final": "1"}).encode()
        status, answer = session.request(
            "POST",
            f"/study/{study_id}/impression",
            form,
            headers={"X-CSRF-Token": token.group(1).decode(), "Accept": "application/json"},
        )
        assert status == 200, answer
        saved: dict[str, Any] = json.loads(answer)["impression"]
        return saved
    finally:
        session.close()
