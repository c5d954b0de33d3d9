"""The store's side of the worker: retries, taking back jobs of dead workers, saving an analysis
only while holding the lease, triage order, pictures on disk and the wake-up doorbell."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.domain import Analysis, AnalysisState, ModelOutcome
from appliance.store import Store, jobs
from appliance.store.db import transaction
from appliance.store.doorbell import Doorbell, Listener
from appliance.store.worklist import studies

from test_store import put


def outcome(priority: str, summary: str) -> ModelOutcome:
    return ModelOutcome(
        model="m",
        version="1",
        model_sha256="0" * 64,
        backend="onnxruntime-cpu",
        precision="int8",
        state=AnalysisState.FINDINGS,
        reason="",
        priority=priority,
        summary=summary,
        key_frame=0,
        duration_ms=3.0,
        result={"labels": []},
    )


def findings(priority: str, summary: str = "x") -> Analysis:
    return Analysis(AnalysisState.FINDINGS, "", priority, summary, (outcome(priority, summary),))


def test_a_retried_job_waits_for_its_time(store: Store, tmp_path: Path) -> None:
    put(store, tmp_path, "cr", seed=1)
    job = jobs.claim(store.conn, "w", lease_s=30)
    assert job is not None
    assert jobs.retry(store.conn, job.id, "w", "boom", delay_s=3600)
    assert jobs.claim(store.conn, "w", lease_s=30) is None  # not due yet
    assert jobs.next_due(store.conn) == pytest.approx(time.time() + 3600, abs=5)
    assert not jobs.retry(store.conn, job.id, "w", "again", delay_s=0)  # no longer leased


def test_analyses_are_claimed_before_pictures(store: Store, tmp_path: Path) -> None:
    _, first = put(store, tmp_path, "cr", seed=1)
    with store.conn:
        jobs.enqueue(store.conn, first.instance_id, 3, kind=jobs.PICTURES)
    put(store, tmp_path, "cr", seed=2)
    kinds = []
    while (job := jobs.claim(store.conn, "w", lease_s=30)) is not None:
        kinds.append(job.kind)
    assert kinds == ["analyse", "analyse", "pictures"]


def test_pictures_wait_for_a_quiet_moment_or_until_they_are_old(
    store: Store, tmp_path: Path
) -> None:
    _, first = put(store, tmp_path, "cr", seed=1)
    assert jobs.claim(store.conn, "w", lease_s=30, quiet_s=60) is not None  # the analysis
    with store.conn:
        jobs.enqueue(store.conn, first.instance_id, 3, kind=jobs.PICTURES)
    assert jobs.pictures_waiting(store.conn)
    assert jobs.claim(store.conn, "w", lease_s=30, quiet_s=60) is None  # images just arrived
    assert jobs.claim(store.conn, "w", lease_s=30, quiet_s=0) is not None
    with store.conn:
        jobs.enqueue(store.conn, first.instance_id, 3, kind=jobs.PICTURES)
        store.conn.execute(
            "UPDATE jobs SET created_at = '2000-01-01T00:00:00.000000+00:00' WHERE state = 'queued'"
        )
    assert jobs.claim(store.conn, "w", lease_s=30, quiet_s=3600) is not None  # overdue


def test_jobs_of_a_dead_worker_on_this_machine_are_taken_back(store: Store, tmp_path: Path) -> None:
    put(store, tmp_path, "cr", seed=1)
    put(store, tmp_path, "cr", seed=2)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_owner = f"{socket.gethostname()}:{gone.stdout.strip()}:abcd1234"
    alive_owner = f"{socket.gethostname()}:{os.getpid()}:abcd1234"
    assert jobs.claim(store.conn, dead_owner, lease_s=600) is not None
    assert jobs.claim(store.conn, alive_owner, lease_s=600) is not None
    assert jobs.reap_dead_owners(store.conn) == 1
    states = dict(store.conn.execute("SELECT lease_owner IS NULL, state FROM jobs").fetchall())
    assert states == {1: "queued", 0: "running"}


def test_an_exhausted_job_of_a_dead_worker_fails_with_an_analysis(
    store: Store, tmp_path: Path
) -> None:
    put(store, tmp_path, "cr", seed=1)
    store.conn.execute("UPDATE jobs SET max_attempts = 1")
    assert jobs.claim(store.conn, "w", lease_s=0) is not None
    assert jobs.reap_stale(store.conn, now=time.time() + 1, on_failed=store.record_failure) == 1
    row = store.conn.execute("SELECT state, reason FROM analyses").fetchone()
    assert row["state"] == "failed" and "worker stopped" in row["reason"]
    assert store.conn.execute("SELECT triage FROM studies").fetchone()[0] == "review"


def test_an_exhausted_pictures_job_leaves_the_findings_and_triage_alone(
    store: Store, tmp_path: Path
) -> None:
    put(store, tmp_path, "cr", seed=1)
    job = jobs.claim(store.conn, "w", lease_s=600)
    assert job is not None
    assert store.complete(job, "w", findings("urgent", "Pneumothorax 0.99"), "worker", True)
    store.conn.execute("UPDATE jobs SET max_attempts = 1 WHERE kind = 'pictures'")
    assert jobs.claim(store.conn, "w", lease_s=0, quiet_s=0) is not None  # the pictures job
    assert jobs.reap_stale(store.conn, now=time.time() + 1, on_failed=store.record_failure) == 1
    row = store.conn.execute("SELECT state, summary FROM analyses").fetchone()
    assert (row["state"], row["summary"]) == ("findings", "Pneumothorax 0.99")
    assert store.conn.execute("SELECT triage FROM studies").fetchone()[0] == "urgent"
    actions = [r[0] for r in store.conn.execute("SELECT action FROM audit")]
    assert "pictures.failed" in actions
    # The report still goes, without its pictures.
    queued = store.conn.execute("SELECT kind, purpose FROM jobs WHERE state = 'queued'")
    assert [tuple(r) for r in queued] == [("outputs", "findings")]


def test_an_analysis_the_reaper_fails_still_gets_its_report(store: Store, tmp_path: Path) -> None:
    put(store, tmp_path, "cr", seed=1)
    store.conn.execute("UPDATE jobs SET max_attempts = 1")
    assert jobs.claim(store.conn, "w", lease_s=0) is not None
    assert jobs.reap_stale(store.conn, now=time.time() + 1, on_failed=store.record_failure) == 1
    assert store.conn.execute("SELECT state FROM analyses").fetchone()[0] == "failed"
    queued = store.conn.execute("SELECT kind FROM jobs WHERE state = 'queued'").fetchall()
    assert [r[0] for r in queued] == ["outputs"]


def test_a_transaction_the_database_ended_itself_raises_the_first_error(store: Store) -> None:
    with pytest.raises(ValueError, match="the real fault"), transaction(store.conn):
        store.conn.execute("ROLLBACK")  # as SQLite does by itself on a full disk
        raise ValueError("the real fault")


def test_a_result_is_saved_only_by_the_lease_holder(store: Store, tmp_path: Path) -> None:
    put(store, tmp_path, "cr", seed=1)
    job = jobs.claim(store.conn, "slow-worker", lease_s=0)
    assert job is not None
    jobs.reap_stale(store.conn, now=time.time() + 1)
    taken = jobs.claim(store.conn, "other-worker", lease_s=600)
    assert taken is not None and taken.id == job.id
    assert not store.complete(job, "slow-worker", findings("urgent"), "worker")
    assert store.conn.execute("SELECT COUNT(*) FROM findings").fetchone()[0] == 0
    assert store.complete(taken, "other-worker", findings("urgent"), "worker", True)
    assert store.conn.execute("SELECT COUNT(*) FROM findings").fetchone()[0] == 1
    queued = store.conn.execute("SELECT kind FROM jobs WHERE state = 'queued'").fetchall()
    assert [row[0] for row in queued] == ["pictures"]


def test_the_worklist_is_ordered_by_triage_then_arrival(store: Store, tmp_path: Path) -> None:
    for seed, priority in [(1, "routine"), (2, "urgent"), (3, "review"), (4, None)]:
        put(store, tmp_path, "cr", seed=seed, study_key=f"study-{seed}")
        if priority is None:
            continue
        job = jobs.claim(store.conn, "w", lease_s=60)
        assert job is not None
        store.complete(job, "w", findings(priority, f"{priority} finding"), "worker")
    rows = studies(store.conn)
    assert [r.triage for r in rows] == ["urgent", "review", "routine", "pending"]
    assert rows[0].triage_reason == "urgent finding"
    assert rows[0].states == {"findings": 1} and rows[3].states == {"received": 1}


def test_pictures_are_written_durably_and_names_are_checked(store: Store) -> None:
    names = store.results.write_all([b"\x89PNG one", b"\x89PNG two"])
    assert [store.results.path_of(n).read_bytes() for n in names] == [
        b"\x89PNG one",
        b"\x89PNG two",
    ]
    assert list(store.results.tmp.iterdir()) == []
    with pytest.raises(ValueError):
        store.results.path_of("../../etc/passwd")
    assert store.results.sweep_unreferenced({names[0]}, older_than_s=-1) == 1
    assert store.results.path_of(names[0]).exists()
    assert not store.results.path_of(names[1]).exists()


def test_a_full_disk_while_writing_pictures_leaves_none_behind(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 3:  # the second picture's data: the disk is full now
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left"):
        store.results.write_all([b"\x89PNG one", b"\x89PNG two"])
    monkeypatch.undo()
    assert list(store.results.tmp.iterdir()) == []
    written = [p for p in store.results.root.rglob("*.png")]
    assert written == []  # nothing refers to them: they would only keep the disk full


def test_the_doorbell_wakes_a_listener_and_rings_nobody_without_error(tmp_path: Path) -> None:
    bell = Doorbell(tmp_path / "bell")
    bell.ring()  # nobody listening yet: dropped quietly
    listener = Listener(tmp_path / "bell")
    assert not listener.wait(0.01)
    bell.ring()
    bell.ring()
    assert listener.wait(5)
    assert not listener.wait(0.01)  # both rings were consumed by one wake-up
    listener.close()
    bell.close()
    assert not (tmp_path / "bell").exists()
