"""Shared fixtures: settings on a temporary data folder, a store, a live receiver on loopback."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient

from appliance.bench.harness import BenchError
from appliance.bench.harness.processes import free_ports
from appliance.bench.peers import dcmtk as dcmtk  # re-exported for the DCMTK tests
from appliance.config import Settings
from appliance.domain import Origin, Source
from appliance.imaging.header import read_header
from appliance.paths import Paths, resolve_paths
from appliance.receiver import Receiver
from appliance.samples import write_sample
from appliance.store import Store, open_store, users
from appliance.web import create_app

from browser_fixtures import Guarded, Screenshots, guarded_context, launch_chromium

REPO = Path(__file__).resolve().parent.parent
DICOM_PEER = Origin(Source.DICOM, calling_aet="MODALITY", peer_address="127.0.0.1")
T = TypeVar("T")


class ClosingClient(FlaskClient):
    """Flask's test client, remembering every response so that the test's end closes them: a
    file a view sends stays open until its response is closed, and the suite treats an
    unclosed file as an error."""

    opened: ClassVar[list[Any]] = []

    def open(self, *args: Any, **kwargs: Any) -> Any:
        response = super().open(*args, **kwargs)
        ClosingClient.opened.append(response)
        return response


@pytest.fixture(autouse=True)
def close_test_responses(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(Flask, "test_client_class", ClosingClient)
    yield
    while ClosingClient.opened:
        ClosingClient.opened.pop().close()


CPU_FLAGS = {
    "vnni": frozenset({"sse4_2", "avx2", "avx512_vnni"}),
    "no-vnni": frozenset({"sse4_2", "avx2"}),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cpu",
        choices=("machine", *CPU_FLAGS),
        default="machine",
        help="run as if this processor had (vnni) or lacked (no-vnni) 8-bit dot-product "
        "instructions, which decide `models.precision: auto` (default: this machine's)",
    )


@pytest.fixture(autouse=True, scope="session")
def pretended_cpu(request: pytest.FixtureRequest) -> Iterator[None]:
    """`--cpu=no-vnni` proves the suite holds on an AVX2-only machine, wherever it runs."""
    chosen = request.config.getoption("--cpu")
    if chosen == "machine":
        yield
        return
    from appliance.runtime import precision

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "read_cpu_flags", lambda *_: CPU_FLAGS[chosen])
        yield


# storescu proposes uncompressed transfer syntaxes only unless told which compressed one to offer.
STORESCU_PROPOSES = {
    "1.2.840.10008.1.2.5": "-xr",  # RLE
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "-xx",  # JPEG extended
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "-xu",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.1.99": "-xd",  # deflated
    "1.2.840.10008.1.2.2": "-xb",  # big endian
}


def storescu_proposes(path: Path) -> list[str]:
    """The storescu option that offers `path`'s own transfer syntax (none for the default)."""
    import warnings

    import pydicom

    with warnings.catch_warnings():  # odd files (pydicom's own test set) warn as they are read
        warnings.simplefilter("ignore")
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    syntax = str(meta.TransferSyntaxUID)
    return [STORESCU_PROPOSES[syntax]] if syntax in STORESCU_PROPOSES else []


def storescu(
    address: tuple[str, int], *files: Path, options: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """DCMTK's storescu sending `files` to our receiver (called AE APPLIANCE) at `address`."""
    host, port = address
    command = [dcmtk("storescu"), *options, "-aec", "APPLIANCE", host, str(port)]
    return subprocess.run(
        [*command, *(str(f) for f in files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A folder for the files a test makes and sends (beside the data folder)."""
    folder = tmp_path / "in"
    folder.mkdir()
    return folder


def has_dcmtk() -> bool:
    try:
        dcmtk("storescu")
    except BenchError:
        return False
    return True


needs_dcmtk = pytest.mark.skipif(not has_dcmtk(), reason="DCMTK is not installed (.ci/run does)")


def has_cuda() -> bool:
    """Whether onnxruntime here can run on an NVIDIA GPU (imported only when a test asks)."""
    import onnxruntime  # type: ignore[import-untyped]  # ships no type hints

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def has_camera() -> bool:
    return any(Path("/dev").glob("video*"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU and camera tests run where the hardware exists and are skipped, with why, elsewhere."""
    absent = {
        "gpu": (has_cuda, "needs an NVIDIA GPU with onnxruntime's CUDA provider"),
        "camera": (has_camera, "needs a video capture device (/dev/video*)"),
    }
    for marker, (present, reason) in absent.items():
        marked = [item for item in items if item.get_closest_marker(marker)]
        if marked and not present():
            for item in marked:
                item.add_marker(pytest.mark.skip(reason=reason))


def make_settings(tmp_path: Path, **sections: Any) -> Settings:
    """Settings for tests: data under tmp_path, loopback on a free port, no free-space floor.

    A section given as a mapping is merged into these; anything else (a list of destinations,
    the site name) replaces the value."""
    receiver_port, ui_port = free_ports(2)
    data: dict[str, Any] = {
        "storage": {"data_dir": str(tmp_path / "data"), "free_space_floor_mb": 1},
        "receiver": {"bind_address": "127.0.0.1", "port": receiver_port},
        "ui": {"bind_address": "127.0.0.1", "port": ui_port},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(name, {}).update(values)
        else:
            data[name] = values
    return Settings.model_validate(data)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    opened = open_store(settings)
    yield opened
    opened.close()


def receive_sample(store: Store, folder: Path, seed: int) -> int:
    """A small sample CT image into the store as a DICOM peer's would come; its instance id."""
    source = write_sample(folder / f"image-{seed}.dcm", "ct", seed=seed, rows=16, columns=16)
    incoming = store.spool.new_tmp_path()
    incoming.write_bytes(source.read_bytes())
    return store.ingest(incoming, read_header(incoming), DICOM_PEER).instance_id


@contextmanager
def mounted_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (as mount takes it: "8m") at mount_point (needs root: the test is
    skipped without); lazily unmounted afterwards."""
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def start_receiver(tmp_path: Path) -> Iterator[Callable[..., tuple[Receiver, Store]]]:
    """Start an in-process receiver with the given config sections; stopped at teardown."""
    started: list[tuple[Receiver, Store]] = []

    def start(**sections: dict[str, Any]) -> tuple[Receiver, Store]:
        settings = make_settings(tmp_path, **sections)
        store = open_store(settings)
        receiver = Receiver(settings, store)
        try:
            receiver.start()
        except BaseException:
            store.close()
            raise
        started.append((receiver, store))
        return receiver, store

    yield start
    for receiver, store in started:
        receiver.stop()
        store.close()


@pytest.fixture
def receiver(start_receiver: Callable[..., tuple[Receiver, Store]]) -> tuple[Receiver, Store]:
    return start_receiver()


class RoleProcess:
    """`appliance ROLE` (or `run`) as a real child process, for crash and restart tests.

    Its output is collected in `output` by a thread, so the child never blocks on a full pipe.
    """

    def __init__(
        self, config: Path, settings: Settings, role: str = "receiver", ready: str = "listening"
    ) -> None:
        self.config = config
        self.settings = settings
        self.role = role
        self.ready = ready
        self.paths: Paths = resolve_paths(settings)
        self.process: subprocess.Popen[str] | None = None
        self.reader: threading.Thread | None = None
        self.output: list[str] = []

    @property
    def port(self) -> int:
        return self.settings.receiver.port

    def start(self, timeout_s: float = 60.0) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "appliance", "--config", str(self.config), self.role],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=REPO,
        )
        started = len(self.output)
        self.reader = threading.Thread(target=self._collect, args=(self.process,), daemon=True)
        self.reader.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            if any(self.ready in line for line in self.output[started:]):
                return
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"{self.role} did not start:\n" + "".join(self.output))

    def _collect(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.output.append(line)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._release()

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._release()
        return None if self.process is None else self.process.returncode

    def _release(self) -> None:
        """Read the exited child's last output and close its pipe (no leaked file at teardown)."""
        if self.reader is not None:
            self.reader.join(timeout=30)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


def wait_for(
    condition: Callable[[], T | Literal[False] | None],
    timeout_s: float = 120.0,
    *,
    what: str = "the expected state",
    state: Callable[[], object] | None = None,
) -> T:
    """Ask again until `condition` returns something truthy, and return that.

    Synchronisation, not a timing check: the deadline only turns a hang into a failure, so it
    is generous. On time-out the failure names `what` and quotes `state()` when given.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        answer = condition()
        if answer:
            return answer
        if time.monotonic() > deadline:
            now = f" (now: {state()!r})" if state is not None else ""
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{now}")
        time.sleep(0.02)


def read_only(proc: RoleProcess) -> sqlite3.Connection:
    """A read-only connection to a role process's database, as another process would open it."""
    conn = sqlite3.connect(f"file:{proc.paths.database}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


@dataclass(frozen=True)
class UIProcess:
    """`appliance ui` as a child process and where it listens."""

    proc: RoleProcess
    base_url: str

    def url(self, path: str = "/") -> str:
        return self.base_url + path


@contextmanager
def serve_ui(root: Path, settings: Settings) -> Iterator[UIProcess]:
    """`appliance ui` on `settings` (written to root/appliance.yaml), stopped when done."""
    config = root / "appliance.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    proc = RoleProcess(config, settings, role="ui", ready="ui: serving on")
    proc.start()
    try:
        yield UIProcess(proc, f"http://{settings.ui.bind_address}:{settings.ui.port}")
    finally:
        proc.stop()


@pytest.fixture
def role_process(tmp_path: Path) -> Iterator[Callable[..., RoleProcess]]:
    """Factory for a role child process using a YAML file written to tmp_path."""
    made: list[RoleProcess] = []

    def make(
        role: str = "receiver", ready: str = "listening", **sections: dict[str, Any]
    ) -> RoleProcess:
        settings = make_settings(tmp_path, **sections)
        config = tmp_path / "appliance.yaml"
        config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
        proc = RoleProcess(config, settings, role, ready)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.stop()


# --- the web UI (Flask tutorial style: an app on a temporary data folder, and its client) ------


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    """The UI on a fresh store under tmp_path; sections via `app_settings` if a test needs."""
    settings = make_settings(tmp_path)
    application = create_app(settings, TESTING=True)
    yield application
    application.extensions["appliance.store"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def csrf_of(client: FlaskClient, path: str = "/signin") -> str:
    """The CSRF token a page hands out (from its meta tag), as a browser would read it."""
    page = client.get(path, follow_redirects=True).get_data(as_text=True)
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def add_user(app: Flask, username: str, role: str, pin: str = "2468") -> int:
    store = app.extensions["appliance.store"]
    return users.create_user(store.conn, username, username.title(), role, pin, "test").id


def sign_in(client: FlaskClient, username: str, pin: str = "2468") -> None:
    token = csrf_of(client)
    response = client.post("/signin", data={"username": username, "pin": pin, "csrf_token": token})
    assert response.status_code == 302, response.get_data(as_text=True)


# --- a real browser (Debian's Chromium through Playwright; see browser_fixtures.py) ------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module; each test gets its own context."""
    with launch_chromium() as launched:
        yield launched


@pytest.fixture
def guarded(browser: Any) -> Iterator[Guarded]:
    """A fresh guarded context; the test fails if anything in it tried to leave the machine."""
    with guarded_context(browser) as context:
        yield context


@pytest.fixture
def screenshots(tmp_path: Path) -> Iterator[Screenshots]:
    """Where a test's screenshots go; the folder is printed when any were taken."""
    shots = Screenshots(tmp_path / "screenshots")
    yield shots
    if shots.taken:
        print(f"\nscreenshots: {shots.folder}")


# --- Orthanc as the clinic's PACS (Debian's orthanc package; .ci installs it) ------------------


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Any]:
    """A running Orthanc (appliance.bench.harness.orthanc.Orthanc) on free loopback ports with
    its own storage under tmp_path; stopped at teardown, also after a test stopped it. A
    machine without Orthanc skips the test, saying so."""
    from appliance.bench.harness.orthanc import Orthanc, orthanc_executable

    try:
        orthanc_executable()
    except BenchError as exc:
        pytest.skip(str(exc))
    server = Orthanc(tmp_path / "orthanc")
    server.start()
    yield server
    server.stop()
