"""Orthanc as the clinic's PACS for tests and benchmarks: a child process on its own
configuration, storage folder and free loopback ports, and a few REST questions about what it
received.

Stopping and starting the same `Orthanc` again keeps its ports and its storage, so a test can
take the PACS away in the middle of a delivery and bring it back as it was. The REST client is
urllib only: nothing here needs more than GET and POST on loopback.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from appliance.bench.harness import BenchError
from appliance.bench.harness.processes import (
    START_TIMEOUT_S,
    check_running,
    free_ports,
    stop_process,
    tail,
    wait_until,
)

EXECUTABLE = "/usr/sbin/Orthanc"  # Debian's package
AE_TITLE = "ORTHANC"
REST_TIMEOUT_S = 30.0


def orthanc_executable() -> str:
    """The Orthanc server's path; BenchError naming the package when it is missing."""
    found = EXECUTABLE if Path(EXECUTABLE).is_file() else shutil.which("Orthanc")
    if found is None:
        raise BenchError(f"Orthanc is not installed ({EXECUTABLE}); on Debian: apt install orthanc")
    return found


class Orthanc:
    """One Orthanc server: where it listens, where it keeps its files, and its REST answers."""

    def __init__(self, folder: Path, ae_title: str = AE_TITLE) -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.dicom_port, self.http_port = free_ports(2)
        self.config = folder / "orthanc.json"
        self.log = folder / "orthanc.log"
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps(self._configuration(), indent=2), encoding="utf-8")

    def _configuration(self) -> dict[str, Any]:
        storage = str(self.folder / "storage")
        return {
            "Name": f"test-{self.ae_title}",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "StorageCompression": False,
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "HttpDescribeErrors": True,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": {},
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
        }

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the server and return once its REST answers and its DICOM port listens."""
        if self.running:
            return
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [orthanc_executable(), str(self.config)], stdout=out, stderr=subprocess.STDOUT
            )
        process = self.process

        def ready() -> bool:
            return self._rest_answers() and _listens(self.dicom_port)

        try:
            wait_until(
                ready,
                lambda: check_running(process, "Orthanc", self.log),
                lambda: f"Orthanc did not answer within {timeout_s:.0f} s:\n{tail(self.log)}",
                timeout_s,
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Terminate the server and wait for it; its ports and storage stay for a restart."""
        if self.process is not None:
            stop_process(self.process, "Orthanc")
            self.process = None

    def _rest_answers(self) -> bool:
        try:
            self.get("/system")
        except (urllib.error.URLError, OSError):
            return False
        return True

    # ---- REST ----------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        """GET a REST path; the decoded JSON answer."""
        return json.loads(self._fetch(path))

    def post(self, path: str, body: Any) -> Any:
        """POST JSON to a REST path; the decoded JSON answer."""
        return json.loads(self._fetch(path, json.dumps(body).encode()))

    def _fetch(self, path: str, body: bytes | None = None) -> bytes:
        """GET `path`, or POST `body` to it, on this server's loopback URL only."""
        url = self.url + path  # http://127.0.0.1:<port>/...: no scheme or host from outside
        headers = {"Content-Type": "application/json"} if body is not None else {}
        request = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310
        with urllib.request.urlopen(request, timeout=REST_TIMEOUT_S) as answer:  # noqa: S310
            return bytes(answer.read())

    def instance_uids(self) -> list[str]:
        """The SOP Instance UID of every instance it holds (one entry per stored instance)."""
        found = self.post("/tools/find", {"Level": "Instance", "Query": {}, "Expand": True})
        return [item["MainDicomTags"]["SOPInstanceUID"] for item in found]

    def count_instances(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def instance_file(self, sop_instance_uid: str) -> bytes:
        """The DICOM file Orthanc stored for one SOP Instance UID; KeyError if it has none."""
        found = self.post(
            "/tools/find",
            {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}},
        )
        if not found:
            raise KeyError(f"Orthanc holds no instance {sop_instance_uid}")
        return self._fetch(f"/instances/{found[0]}/file")


def _listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


@contextmanager
def running_orthanc(folder: Path, ae_title: str = AE_TITLE) -> Iterator[Orthanc]:
    """An Orthanc for the block, stopped at its end (also when the block fails)."""
    server = Orthanc(folder, ae_title)
    server.start()
    try:
        yield server
    finally:
        server.stop()
