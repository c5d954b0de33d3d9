"""The store on real SQLite files: migrations, ingest, idempotence, jobs, audit, reconciliation."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from appliance.config import Settings
from appliance.domain import IngestOutcome, IngestResult, Origin, Source
from appliance.errors import RejectedInput, StoreError
from appliance.imaging.header import read_header
from appliance.samples import make_dataset, write_sample
from appliance.store import Store, jobs, open_store
from appliance.store.db import MIGRATIONS, connect, migrate
from appliance.store.feedback import FeedbackError
from appliance.store.refused import Refused

ORIGIN = Origin(Source.DICOM, calling_aet="MODALITY", peer_address="127.0.0.1")


def put(
    store: Store, tmp_path: Path, kind: str = "cr", **options: object
) -> tuple[Path, IngestResult]:
    """Write a sample into the spool's tmp folder and ingest it; return the source copy too."""
    source = tmp_path / f"src-{kind}-{options.get('seed', 0)}-{len(list(tmp_path.iterdir()))}.dcm"
    write_sample(source, kind, rows=32, columns=32, **options)
    incoming = store.spool.new_tmp_path()
    incoming.write_bytes(source.read_bytes())
    return source, store.ingest(incoming, read_header(incoming), ORIGIN)


def count(store: Store, sql: str, *params: object) -> int:
    return int(store.conn.execute(sql, params).fetchone()[0])


def test_database_is_wal_with_full_sync(store: Store) -> None:
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.schema_version == len(MIGRATIONS)


def test_migrations_are_applied_once(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db.sqlite3")
    lock = tmp_path / "lock"
    assert migrate(conn, lock) == len(MIGRATIONS)
    assert migrate(conn, lock) == len(MIGRATIONS)  # a second start changes nothing
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"patients", "studies", "series", "instances", "jobs", "audit"} <= tables


def test_newer_database_is_refused(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db.sqlite3")
    conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    with pytest.raises(StoreError, match="newer than this software"):
        migrate(conn, tmp_path / "lock")


def test_ingest_stores_bytes_indexes_and_queues(store: Store, tmp_path: Path) -> None:
    source, result = put(store, tmp_path, "cr", seed=1)
    assert result.outcome is IngestOutcome.STORED and result.job_id
    assert store.file_of(result.instance_id).read_bytes() == source.read_bytes()
    row = store.conn.execute(
        "SELECT i.*, s.modality, s.body_part, st.accession_number, p.patient_id"
        " FROM instances i JOIN series s ON s.id = i.series_ref"
        " JOIN studies st ON st.id = s.study_ref JOIN patients p ON p.id = st.patient_ref"
    ).fetchone()
    assert (row["modality"], row["body_part"], row["view_position"]) == ("CR", "CHEST", "PA")
    assert (row["patient_id"], row["accession_number"]) == ("SYN0001", "ACC000001")
    assert (row["calling_aet"], row["source"]) == ("MODALITY", "dicom")
    assert row["received_at"].endswith("+00:00")  # UTC
    assert count(store, "SELECT COUNT(*) FROM jobs WHERE state = 'queued'") == 1
    assert list(store.spool.tmp.iterdir()) == []


def test_file_names_never_come_from_dicom_values(store: Store, tmp_path: Path) -> None:
    _, result = put(store, tmp_path, "cr", seed=2, patient_id="../../etc", patient_name="a/b")
    name = store.conn.execute("SELECT file_name FROM instances").fetchone()[0]
    folder, file = name.split("/")
    assert len(folder) == 2 and file.endswith(".dcm") and int(file[:-4], 16) >= 0
    assert store.file_of(result.instance_id).is_relative_to(store.spool.objects)


def test_same_instance_twice_is_idempotent(store: Store, tmp_path: Path) -> None:
    _, first = put(store, tmp_path, "us", seed=3)
    _, second = put(store, tmp_path, "us", seed=3)
    assert second.outcome is IngestOutcome.DUPLICATE
    assert second.instance_id == first.instance_id
    assert count(store, "SELECT COUNT(*) FROM instances") == 1
    assert count(store, "SELECT COUNT(*) FROM jobs") == 1
    assert len(store.spool.committed_names()) == 1
    assert count(store, "SELECT COUNT(*) FROM audit WHERE action = 'ingest.duplicate'") == 1


def test_changed_resend_replaces_and_is_audited(store: Store, tmp_path: Path) -> None:
    _, first = put(store, tmp_path, "cr", seed=4)
    old_file = store.file_of(first.instance_id)
    # Same SOP Instance UID (same seed and study), different pixels: a corrected image.
    _, second = put(store, tmp_path, "cr", seed=4, patient_name="CORRECTED^NAME")
    assert second.outcome is IngestOutcome.REPLACED
    assert count(store, "SELECT COUNT(*) FROM instances") == 1
    assert count(store, "SELECT COUNT(*) FROM jobs") == 2  # analysed again
    assert not old_file.exists()
    assert store.spool.committed_names() == {
        store.conn.execute("SELECT file_name FROM instances").fetchone()[0]
    }
    assert count(store, "SELECT COUNT(*) FROM audit WHERE action = 'ingest.replaced'") == 1
    assert store.conn.execute("SELECT patient_name FROM patients").fetchone()[0] == (
        "CORRECTED^NAME"
    )


def study_patient(store: Store) -> str:
    return str(
        store.conn.execute(
            "SELECT p.patient_id FROM studies st JOIN patients p ON p.id = st.patient_ref"
        ).fetchone()[0]
    )


def test_a_corrected_patient_moves_the_study_and_is_audited(store: Store, tmp_path: Path) -> None:
    put(store, tmp_path, "cr", seed=4, patient_id="WRONG01")
    _, second = put(store, tmp_path, "cr", seed=4, patient_id="RIGHT01")
    assert second.outcome is IngestOutcome.REPLACED
    assert study_patient(store) == "RIGHT01"
    [detail] = store.conn.execute(
        "SELECT detail FROM audit WHERE action = 'study.patient_changed'"
    ).fetchall()
    assert '"before": "WRONG01"' in detail[0] and '"after": "RIGHT01"' in detail[0]


def test_a_resend_fills_in_series_values_but_an_empty_one_erases_nothing(
    store: Store, tmp_path: Path
) -> None:
    put(store, tmp_path, "cr", seed=4, body_part="")
    put(store, tmp_path, "cr", seed=4, body_part="CHEST")  # the worker routes by this row
    put(store, tmp_path, "cr", seed=5, body_part="")  # another image of the series, untagged
    assert store.conn.execute("SELECT body_part FROM series").fetchall()[0][0] == "CHEST"


def test_an_image_moved_to_another_study_leaves_no_empty_study(
    store: Store, tmp_path: Path
) -> None:
    put(store, tmp_path, "cr", seed=4)
    moved = make_dataset("cr", seed=4, rows=32, columns=32, study_key="study-2")
    moved.SOPInstanceUID = make_dataset("cr", seed=4, rows=32, columns=32).SOPInstanceUID
    moved.file_meta.MediaStorageSOPInstanceUID = moved.SOPInstanceUID
    incoming = store.spool.new_tmp_path()
    moved.save_as(incoming, enforce_file_format=True)
    assert store.ingest(incoming, read_header(incoming), ORIGIN).outcome is IngestOutcome.REPLACED
    studies = store.conn.execute("SELECT study_uid FROM studies").fetchall()
    assert [row[0] for row in studies] == [str(moved.StudyInstanceUID)]
    assert count(store, "SELECT COUNT(*) FROM series") == 1
    assert count(store, "SELECT COUNT(*) FROM audit WHERE action = 'study.removed'") == 1


def test_a_corrected_study_uid_moves_the_image_even_in_the_same_series(
    store: Store, tmp_path: Path
) -> None:
    first = make_dataset("cr", seed=4, rows=32, columns=32)
    incoming = store.spool.new_tmp_path()
    first.save_as(incoming, enforce_file_format=True)
    store.ingest(incoming, read_header(incoming), ORIGIN)
    moved = make_dataset("cr", seed=4, rows=32, columns=32, study_key="corrected")
    moved.SOPInstanceUID, moved.SeriesInstanceUID = first.SOPInstanceUID, first.SeriesInstanceUID
    moved.file_meta.MediaStorageSOPInstanceUID = moved.SOPInstanceUID
    incoming = store.spool.new_tmp_path()
    moved.save_as(incoming, enforce_file_format=True)
    assert store.ingest(incoming, read_header(incoming), ORIGIN).outcome is IngestOutcome.REPLACED
    rows = store.conn.execute(
        "SELECT st.study_uid, COUNT(i.id) FROM studies st JOIN series se ON se.study_ref = st.id"
        " JOIN instances i ON i.series_ref = se.id GROUP BY st.id"
    ).fetchall()
    assert [tuple(r) for r in rows] == [(str(moved.StudyInstanceUID), 1)]
    assert count(store, "SELECT COUNT(*) FROM studies") == 1


def test_the_study_an_image_left_gets_its_triage_again(store: Store, tmp_path: Path) -> None:
    put(store, tmp_path, "cr", seed=4)
    put(store, tmp_path, "cr", seed=5)  # stays behind in the first study
    store.conn.execute("UPDATE studies SET triage = 'urgent', triage_rank = 0")  # from seed 4
    moved = make_dataset("cr", seed=4, rows=32, columns=32, study_key="study-2")
    moved.SOPInstanceUID = make_dataset("cr", seed=4, rows=32, columns=32).SOPInstanceUID
    moved.file_meta.MediaStorageSOPInstanceUID = moved.SOPInstanceUID
    incoming = store.spool.new_tmp_path()
    moved.save_as(incoming, enforce_file_format=True)
    store.ingest(incoming, read_header(incoming), ORIGIN)
    left = store.conn.execute(
        "SELECT triage FROM studies WHERE study_uid = ?",
        (str(make_dataset("cr", seed=5, rows=32, columns=32).StudyInstanceUID),),
    ).fetchone()
    assert left[0] == "pending"  # recomputed from what it still holds (nothing analysed yet)


def test_hierarchy_is_shared_across_instances(store: Store, tmp_path: Path) -> None:
    for seed in range(3):
        put(store, tmp_path, "cr", seed=seed)
    put(store, tmp_path, "us", seed=0)
    assert count(store, "SELECT COUNT(*) FROM patients") == 1
    assert count(store, "SELECT COUNT(*) FROM studies") == 1
    assert count(store, "SELECT COUNT(*) FROM series") == 2
    assert count(store, "SELECT COUNT(*) FROM instances") == 4


def test_audit_is_append_only(store: Store, tmp_path: Path) -> None:
    put(store, tmp_path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store.conn.execute("UPDATE audit SET actor = 'someone else'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store.conn.execute("DELETE FROM audit")


def test_job_lease_heartbeat_and_finish(store: Store, tmp_path: Path) -> None:
    put(store, tmp_path)
    job = jobs.claim(store.conn, "worker-a", lease_s=30)
    assert job is not None and job.attempts == 1
    assert jobs.claim(store.conn, "worker-b", lease_s=30) is None  # nothing else queued
    assert jobs.heartbeat(store.conn, job.id, "worker-a", lease_s=30)
    assert not jobs.heartbeat(store.conn, job.id, "worker-b", lease_s=30)
    assert jobs.finish(store.conn, job.id, "worker-a")
    assert store.conn.execute("SELECT state FROM jobs").fetchone()[0] == "done"


def test_stale_lease_is_requeued_then_failed_when_out_of_attempts(
    store: Store, tmp_path: Path
) -> None:
    put(store, tmp_path)
    max_attempts = store.settings.jobs.max_attempts
    for attempt in range(1, max_attempts + 1):
        job = jobs.claim(store.conn, f"worker-{attempt}", lease_s=0.0)
        assert job is not None and job.attempts == attempt
        assert jobs.reap_stale(store.conn, now=1e12) == 1
    state, error = store.conn.execute("SELECT state, error FROM jobs").fetchone()
    assert state == "failed" and "worker stopped" in error
    assert count(store, "SELECT COUNT(*) FROM audit WHERE action = 'job.reaped'") == max_attempts


def test_live_lease_is_not_reaped(store: Store, tmp_path: Path) -> None:
    put(store, tmp_path)
    job = jobs.claim(store.conn, "worker-a", lease_s=600)
    assert job is not None
    assert jobs.reap_stale(store.conn) == 0
    assert store.conn.execute("SELECT state FROM jobs").fetchone()[0] == "running"


def test_reconcile_indexes_a_file_without_a_row(store: Store, tmp_path: Path) -> None:
    source = write_sample(tmp_path / "orphan.dcm", "dx", rows=16, columns=16, seed=9)
    incoming = store.spool.new_tmp_path()
    incoming.write_bytes(source.read_bytes())
    store.spool.commit(incoming)  # the crash came before the row was committed
    report = store.reconcile(read_header)
    assert len(report.indexed) == 1
    assert count(store, "SELECT COUNT(*) FROM instances WHERE source = 'recovered'") == 1
    assert count(store, "SELECT COUNT(*) FROM jobs WHERE state = 'queued'") == 1
    assert count(store, "SELECT COUNT(*) FROM audit WHERE action = 'reconcile.indexed'") == 1
    assert store.reconcile(read_header).repairs == 0  # nothing left to repair


def test_reconcile_marks_a_row_without_a_file(store: Store, tmp_path: Path) -> None:
    _, result = put(store, tmp_path)
    store.file_of(result.instance_id).unlink()
    report = store.reconcile(read_header)
    assert report.missing == [result.instance_id]
    state, error = store.conn.execute("SELECT state, error FROM jobs").fetchone()
    assert state == "failed" and "missing" in error
    assert count(store, "SELECT COUNT(*) FROM audit WHERE action = 'reconcile.missing'") == 1


def test_reconcile_quarantines_an_unreadable_file(store: Store) -> None:
    incoming = store.spool.new_tmp_path()
    incoming.write_bytes(b"not dicom at all")
    name = store.spool.commit(incoming).name
    report = store.reconcile(read_header)
    assert report.quarantined == [name]
    assert (store.spool.root / "quarantine" / name.split("/")[1]).read_bytes() == (
        b"not dicom at all"
    )


def test_reconcile_removes_unfinished_transfers(store: Store) -> None:
    partial = store.spool.new_tmp_path()
    partial.write_bytes(b"\0" * 100)
    os.utime(partial, (0, 0))  # untouched for a long time
    assert store.reconcile(read_header).tmp_removed == 1
    assert not partial.exists()


def test_spool_refuses_names_that_are_not_its_own(store: Store) -> None:
    for bad in ("../x.dcm", "ab/../../x.dcm", "/etc/passwd", "ab/c/d.dcm"):
        with pytest.raises(ValueError):
            store.spool.path_of(bad)


def test_two_stores_on_one_folder_share_state(settings: Settings, tmp_path: Path) -> None:
    first = open_store(settings)
    second = open_store(settings)  # another role opening the same data folder
    try:
        put(first, tmp_path)
        assert second.summary().instances == 1
        assert second.summary().queue_depth == 1
    finally:
        second.close()
        first.close()


def test_an_unusable_data_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data folder should be")
    settings = Settings.model_validate({"storage": {"data_dir": str(blocker / "data")}})
    with pytest.raises(StoreError, match=r"cannot use the data folder .*storage\.data_dir"):
        open_store(settings)


def test_a_truncated_image_is_refused_saying_so_once(tmp_path: Path) -> None:
    source = write_sample(tmp_path / "cut.dcm", "cr", rows=32, columns=32)
    source.write_bytes(source.read_bytes()[:-100])
    with pytest.raises(RejectedInput) as refused:
        read_header(source)
    assert str(refused.value).startswith("pixel data is truncated")  # not wrapped again


def test_a_feedback_refusal_says_invalid_unless_it_names_its_reason() -> None:
    unnamed, named = FeedbackError("no good"), FeedbackError("too long", "too_long")
    assert isinstance(unnamed, Refused)
    assert (unnamed.reason, unnamed.key, str(unnamed)) == ("invalid", "invalid", "no good")
    assert (named.reason, named.key) == ("too_long", "too_long")
