"""The worker stays live in the field: it speaks the notify protocol to a real datagram socket,
reaps expired leases while it runs, waits out a full disk without using up attempts, and a
model that hangs gets it restarted until the job fails as "inference hung"."""

from __future__ import annotations

import os
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from onnx import TensorProto, helper

from appliance.store import jobs, open_store
from appliance.store.doorbell import Doorbell, Listener
from appliance.worker import role as worker_role
from appliance.worker.watch import disk_full

from conftest import RoleProcess, make_settings, read_only, wait_for
from runtime_models import _save, classifier_manifest, write_package
from worker_fixtures import analyse_job, analysis_of, audit_rows, cr_of, open_worker, put_dataset

FLOOR = {"free_space_floor_mb": 1}  # config refuses 0


class Manager:
    """The service manager's end of the notify protocol: a real AF_UNIX datagram socket."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def receive(self, timeout_s: float) -> None:
        """Collect what arrives within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            for field in data.decode().split("\n"):
                self.messages.append((time.monotonic(), field))

    def last(self, field: str) -> float | None:
        times = [at for at, text in self.messages if text == field]
        return times[-1] if times else None

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[Manager]:
    """A manager socket with a short path (AF_UNIX paths are limited to 108 bytes), named in
    NOTIFY_SOCKET for the worker processes this test starts."""
    with tempfile.TemporaryDirectory(prefix="nfy") as folder:
        made = Manager(Path(folder))
        monkeypatch.setenv("NOTIFY_SOCKET", str(made.path))
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        yield made
        made.close()


def test_the_worker_says_ready_pings_and_reaps_an_expired_lease_while_running(
    role_process: Callable[..., RoleProcess],
    manager: Manager,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "600000")  # pings every 0.3 s
    empty = tmp_path / "no-models"
    empty.mkdir()
    proc = role_process(
        "worker",
        ready="worker: ready",
        storage=FLOOR,
        models={"dirs": [str(empty)]},
        jobs={"reap_every_s": 1.0, "lease_s": 600},
    )
    store = open_store(proc.settings)
    instance = put_dataset(store, cr_of("CHEST"), tmp_path, "a.dcm")
    elsewhere = "other-box:4242:cafe0000"  # another machine's worker: only its lease counts
    job = jobs.claim(store.conn, elsewhere, lease_s=600)
    assert job is not None
    proc.start(timeout_s=120)
    manager.receive(2.0)
    assert manager.last("READY=1") is not None, manager.messages
    assert [text for _, text in manager.messages].count("WATCHDOG=1") >= 2, manager.messages
    conn = read_only(proc)
    state = conn.execute("SELECT state FROM jobs WHERE id = ?", (job.id,)).fetchone()[0]
    assert state == "running"  # a valid lease of another machine is left alone

    store.conn.execute("UPDATE jobs SET lease_expires = ? WHERE id = ?", (time.time() - 1, job.id))
    wait_for(
        lambda: analysis_of_or_none(conn, instance),
        30,
        what="the running worker to take back the expired job and analyse it",
        state=lambda: proc.output[-3:],
    )
    [reaped] = [r for r in audit_rows(conn, "job.reaped") if r["subject"] == f"job:{job.id}"]
    assert reaped["detail"]["previous_owner"] == elsewhere
    assert "taken back" not in "".join(proc.output)  # not at start: by the running worker
    proc.stop()
    manager.receive(0.5)
    assert manager.last("STOPPING=1") is not None
    conn.close()
    store.close()


def analysis_of_or_none(conn: sqlite3.Connection, instance: int) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM analyses WHERE instance_ref = ?", (instance,)
    ).fetchone()
    return row


# --- a model that hangs ----------------------------------------------------------------------


def hang_onnx(path: Path, size: int = 64, dynamic: bool = True) -> Path:
    """A scores model whose inference of any real image runs for days: a Loop whose trip count
    is max|input| x 1e12. The warm-up's all-zero batch makes 0 trips, so it loads at once."""
    batch: str | int = "N" if dynamic else 1
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 1, size, size])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 1])
    constants = [
        helper.make_tensor("huge", TensorProto.FLOAT, [], [1e12]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
    ]
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["count_in", "one"], ["count_out"]),
        ],
        "spin",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("count_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("count_out", TensorProto.FLOAT, []),
        ],
    )
    nodes = [
        helper.make_node("Abs", ["image"], ["magnitude"]),
        helper.make_node("ReduceMax", ["magnitude"], ["peak"], keepdims=0),
        helper.make_node("Mul", ["peak", "huge"], ["trips_f"]),
        helper.make_node("Cast", ["trips_f"], ["trips"], to=TensorProto.INT64),
        helper.make_node("Loop", ["trips", "", "zero"], ["count"], body=body),
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0),
        helper.make_node("Mul", ["count", "zero"], ["nothing"]),
        helper.make_node("Add", ["mean", "nothing"], ["scores"]),
    ]
    graph = helper.make_graph(nodes, "hang", [image], [scores], constants)
    return _save(graph, path)


def hang_manifest() -> dict[str, Any]:
    return classifier_manifest(
        64,
        name="test-hang",
        title="A model that never answers (test)",
        applies_to={"modalities": ["CR"], "body_parts": ["PELVIS"], "views": []},
        outputs=[
            {
                "name": "scores",
                "kind": "scores",
                "activation": "sigmoid",
                "labels": [{"name": "x", "display": "X", "threshold": 0.5, "priority": "routine"}],
            }
        ],
        explanation={"method": "none"},
        time_limit_s=1,
    )


def test_a_hung_inference_gets_the_worker_restarted_then_the_job_failed_as_hung(
    role_process: Callable[..., RoleProcess],
    manager: Manager,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    watchdog_s = 1.5
    monkeypatch.setenv("WATCHDOG_USEC", str(int(watchdog_s * 1e6)))
    models = tmp_path / "models"
    write_package(models / "hang", hang_manifest(), hang_onnx)
    proc = role_process(
        "worker",
        ready="worker: ready",
        storage=FLOOR,
        models={"dirs": [str(models)], "precision": "fp32"},
        jobs={"max_attempts": 2, "lease_s": 600},  # only the restart takes the job back
    )
    store = open_store(proc.settings)
    instance = put_dataset(store, cr_of("PELVIS"), tmp_path, "p.dcm")
    store.close()
    conn = read_only(proc)
    job = partial(analyse_job, conn, instance)  # the job as it stands at each call

    restarts = 0
    deadline = time.monotonic() + 90
    while job()["state"] != "failed":
        assert time.monotonic() < deadline, (dict(job()), proc.output[-5:])
        proc.start(timeout_s=60)
        started = time.monotonic()
        while True:  # as systemd does: no ping for WatchdogSec, and the worker is killed
            manager.receive(0.2)
            last = max(manager.last("WATCHDOG=1") or 0.0, started)
            if time.monotonic() - last > watchdog_s or job()["state"] == "failed":
                break
        proc.kill()
        restarts += 1
    row = job()
    assert row["attempts"] == 2 and restarts == 3, (dict(row), restarts)
    assert row["error"].startswith("inference hung: no answer from test-hang 0.1.0 after"), row[
        "error"
    ]
    analysis = analysis_of(conn, instance)
    assert analysis["state"] == "failed" and analysis["reason"] == row["error"]
    log = "".join(proc.output)
    assert "not pinging the watchdog" in log and "inference hung" in log
    conn.close()


# --- a full disk ---------------------------------------------------------------------------


def fill_audit_until_full(conn: sqlite3.Connection) -> None:
    """Cap the database at its present size and fill the last page of the audit table: the
    next audit row (every job's end writes one) no longer fits, and SQLite answers "database
    or disk is full" as on a full disk."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        for _ in range(10_000):
            conn.execute(
                "INSERT INTO audit (at, actor, action, subject, detail) VALUES ('', 't', 'f', '',"
                " '{}')"
            )


def test_a_store_full_mid_job_is_waited_out_without_a_restart_or_a_used_attempt(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    write_package(models / "classifier", classifier_manifest())
    settings = make_settings(
        tmp_path,
        storage=FLOOR,
        models={"dirs": [str(models)], "precision": "fp32"},
        jobs={"retry_delay_s": 0.1, "max_attempts": 1},  # one counted try would fail it
    )
    store = open_store(settings)
    worker = open_worker(store, settings)
    instance = put_dataset(store, cr_of("CHEST"), tmp_path, "c.dcm")
    conn = store.conn  # the worker's connection in this thread
    fill_audit_until_full(conn)

    with pytest.raises(sqlite3.OperationalError) as raised:
        worker.run_once()  # analysed, but the job's end cannot be written, nor its giving back
    assert disk_full(raised.value)
    assert worker.interrupted is not None and worker.interrupted.refund
    conn.execute("PRAGMA max_page_count = 1000000")  # space again

    stop = threading.Event()
    watcher = threading.Thread(target=stop_when_analysed, args=(store, instance, stop))
    watcher.start()
    listener = Listener(store.paths.doorbell)
    worker_role._work(worker, listener, stop)  # as serve() runs it
    listener.close()
    watcher.join()
    row = analyse_job(conn, instance)
    assert (row["state"], row["attempts"]) == ("done", 1)
    assert analysis_of(conn, instance)["state"] == "findings"
    [waiting] = audit_rows(conn, "job.waiting")
    assert waiting["detail"]["reason"].startswith("the disk is full")
    worker.close()


def stop_when_analysed(store: Any, instance: int, stop: threading.Event) -> None:
    """From its own thread and connection: stop the job loop once the image is analysed."""
    deadline = time.monotonic() + 60
    conn = store.conn
    while time.monotonic() < deadline and not analysis_of_or_none(conn, instance):
        time.sleep(0.05)
    stop.set()
    bell = Doorbell(store.paths.doorbell)
    bell.ring()
    bell.close()
    store.close_thread_connection()


def test_a_full_disk_is_told_apart_from_other_failures() -> None:
    assert disk_full(sqlite3.OperationalError("database or disk is full"))
    assert disk_full(OSError(28, os.strerror(28)))
    assert not disk_full(sqlite3.OperationalError("database is locked"))
    assert not disk_full(ValueError("bad"))
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as exc:
            raise RuntimeError("could not write the overlay") from exc
    except RuntimeError as wrapped:
        assert disk_full(wrapped)
