"""Retention on a real store: when the disk runs low, the oldest images whose findings are
complete, that every destination acknowledged and that a clinician reviewed go first, each
with its audit row; an image still waited for by a destination, or not reviewed, never goes
unless the settings allow it."""

from __future__ import annotations

import argparse
import functools
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from appliance.cli.backup import register
from appliance.config import Settings
from appliance.domain import Analysis, AnalysisState, ModelOutcome, Origin, Source
from appliance.imaging.header import read_header
from appliance.samples import make_dataset
from appliance.store import Store, audit, feedback, jobs, open_store, outbox, users
from appliance.store.db import transaction
from appliance.store.outbox import NewOutput
from appliance.store.retention import ACTION, Periodic, enforce

from conftest import make_settings


def settings_for(tmp_path: Path, **sections: Any) -> Settings:
    """Test settings with the smallest free-space floor there is."""
    return make_settings(tmp_path, storage={"free_space_floor_mb": 1}, **sections)


MIB = 2**20
ORIGIN = Origin(Source.DICOM, calling_aet="MODALITY", peer_address="127.0.0.1")
OWNER = "retention-test"


@dataclass(frozen=True)
class Image:
    instance_id: int
    study_id: int
    file: Path
    outputs: list[Path]


def outcome() -> ModelOutcome:
    return ModelOutcome(
        model="m",
        version="1",
        model_sha256="0" * 64,
        backend="onnxruntime-cpu",
        precision="fp32",
        state=AnalysisState.FINDINGS,
        reason="",
        priority="routine",
        summary="nothing found",
        key_frame=0,
        duration_ms=1.0,
        result={"labels": []},
    )


def receive(store: Store, folder: Path, seed: int) -> int:
    """An image of a study of its own, through the one way into the store."""
    source = folder / f"image-{seed}.dcm"
    ds = make_dataset("cr", seed=seed, rows=16, columns=16, study_key=f"study-{seed}")
    ds.save_as(source, enforce_file_format=True)
    incoming = store.spool.new_tmp_path()
    incoming.write_bytes(source.read_bytes())
    return store.ingest(incoming, read_header(incoming), ORIGIN).instance_id


def run_jobs(store: Store) -> None:
    """Do every queued job as the worker would: analyses save findings, outputs jobs write
    one object and queue it for the destination."""
    while (job := jobs.claim(store.conn, OWNER, lease_s=60)) is not None:
        if job.kind == jobs.OUTPUTS:
            store.finish_job(job, OWNER, "", functools.partial(make_output, store, job=job))
        else:
            analysis = Analysis(AnalysisState.FINDINGS, "", "routine", "x", (outcome(),))
            assert store.complete(job, OWNER, analysis, "worker")


def make_output(store: Store, conn: sqlite3.Connection, *, job: jobs.Job) -> None:
    instance = store.instance_row(job.instance_id)
    study_id = conn.execute(
        "SELECT s.study_ref FROM instances i JOIN series s ON s.id = i.series_ref WHERE i.id = ?",
        (job.instance_id,),
    ).fetchone()[0]
    revision = conn.execute(
        "SELECT COALESCE(MAX(revision), 0) + 1 FROM outputs WHERE instance_ref = ?",
        (job.instance_id,),
    ).fetchone()[0]
    [name] = store.outputs.write_all([b"an SR of " + instance["file_name"].encode()])
    uid = f"1.2.3.{job.instance_id}.{revision}"
    made = NewOutput("sr", "", "1.2.840.10008.5.1.4.1.1.88.34", uid, uid + ".1", name, 20)
    [output_id] = outbox.record_outputs(
        conn, job.instance_id, study_id, revision, f"fp{revision}", job.purpose, [made]
    )
    outbox.queue_deliveries(conn, "pacs", study_id, [(output_id, None, uid)])


@dataclass
class Box:
    store: Store
    folder: Path
    clinician: int

    def image(self, seed: int, days_old: float, *, sent: bool = True) -> Image:
        """An analysed image received `days_old` days ago whose object was sent (or waits)."""
        instance_id = receive(self.store, self.folder, seed)
        run_jobs(self.store)
        if sent:
            self.send_all()
        when = datetime.now(timezone.utc) - timedelta(days=days_old)
        self.store.conn.execute(
            "UPDATE instances SET received_at = ? WHERE id = ?",
            (when.isoformat(timespec="microseconds"), instance_id),
        )
        return self.describe(instance_id)

    def describe(self, instance_id: int) -> Image:
        row = self.store.conn.execute(
            "SELECT s.study_ref FROM instances i JOIN series s ON s.id = i.series_ref"
            " WHERE i.id = ?",
            (instance_id,),
        ).fetchone()
        names = self.store.conn.execute(
            "SELECT file_name FROM outputs WHERE instance_ref = ?", (instance_id,)
        ).fetchall()
        return Image(
            instance_id,
            int(row[0]),
            self.store.file_of(instance_id),
            [self.store.outputs.path_of(n[0]) for n in names],
        )

    def send_all(self) -> None:
        for delivery in outbox.claim(self.store.conn, "pacs", 100):
            with transaction(self.store.conn):
                outbox.mark_sent(self.store.conn, delivery, "sender")

    def fail_all(self) -> None:
        for delivery in outbox.claim(self.store.conn, "pacs", 100):
            with transaction(self.store.conn):
                outbox.mark_failed(self.store.conn, delivery, "sender", "refused by the PACS")

    def review(self, image: Image) -> None:
        finding = self.store.conn.execute(
            "SELECT id FROM findings WHERE instance_ref = ?", (image.instance_id,)
        ).fetchone()[0]
        feedback.add_feedback(self.store.conn, finding, "x", "agree", "", self.clinician, "ui:doc")


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    store = open_store(settings_for(tmp_path))
    doctor = users.create_user(store.conn, "doc", "Doctor", "clinician", "2468", "test")
    folder = tmp_path / "in"
    folder.mkdir()
    yield Box(store, folder, doctor.id)
    store.close()


def rules(tmp_path: Path, **retention: Any) -> Settings:
    values = {"free_below_mb": 1, "free_target_mb": 1, "min_age_days": 7, **retention}
    return settings_for(tmp_path, retention=values)


def short_of(box: Box, missing_bytes: int) -> Callable[[], int]:
    """Free space as the data folder's files decide it: `missing_bytes` under the 1 MiB
    watermark now, and more free for every byte removed from the spool and outputs."""
    start = disk_use(box.store)

    def free() -> int:
        return MIB - missing_bytes + (start - disk_use(box.store))

    return free


def disk_use(store: Store) -> int:
    folders = (store.spool.objects, store.outputs.root)
    return sum(p.stat().st_size for f in folders for p in f.rglob("*.dcm"))


def state_of(box: Box, image: Image) -> str:
    row = box.store.conn.execute(
        "SELECT state FROM instances WHERE id = ?", (image.instance_id,)
    ).fetchone()
    return str(row[0])


def test_the_oldest_delivered_and_reviewed_image_goes_first_with_its_audit_row(
    box: Box, tmp_path: Path
) -> None:
    oldest, newer = box.image(1, days_old=30), box.image(2, days_old=20)
    box.review(oldest)
    box.review(newer)

    removed = enforce(box.store, rules(tmp_path), short_of(box, 1))

    assert [r.instance_id for r in removed] == [oldest.instance_id]
    assert not oldest.file.exists() and not any(p.exists() for p in oldest.outputs)
    assert state_of(box, oldest) == "missing"
    assert newer.file.exists() and all(p.exists() for p in newer.outputs)
    assert state_of(box, newer) == "present"
    [row] = audit.recent(box.store.conn, ACTION)
    assert row["subject"] == f"instance:{oldest.instance_id}"
    assert row["detail"]["file"] == removed[0].file_name
    assert row["detail"]["size_bytes"] == removed[0].size_bytes > 0
    assert "retention.free_below_mb" in row["detail"]["reason"]
    assert row["detail"]["reviewed"] is True


def test_an_image_a_destination_still_waits_for_is_never_removed(box: Box, tmp_path: Path) -> None:
    delivered = box.image(2, days_old=20)  # first: sending it sends everything queued
    waiting = box.image(1, days_old=30, sent=False)
    box.review(waiting)
    box.review(delivered)
    before = outbox.undelivered_files(box.store.conn)
    assert before, "the first image's object should be waiting"

    for allow in (False, True):  # not even when undelivered images are allowed
        settings = rules(tmp_path, allow_undelivered=allow, allow_unreviewed=True)
        enforce(box.store, settings, short_of(box, 10 * MIB))

    assert waiting.file.exists() and all(p.exists() for p in waiting.outputs)
    assert state_of(box, waiting) == "present"
    assert outbox.undelivered_files(box.store.conn) == before
    assert state_of(box, delivered) == "missing"
    subjects = [row["subject"] for row in audit.recent(box.store.conn, ACTION)]
    assert subjects == [f"instance:{delivered.instance_id}"]


def test_an_image_a_destination_refused_goes_only_when_undelivered_ones_may(
    box: Box, tmp_path: Path
) -> None:
    refused = box.image(1, days_old=30, sent=False)
    box.fail_all()
    box.review(refused)

    assert enforce(box.store, rules(tmp_path), short_of(box, 10 * MIB)) == []
    assert refused.file.exists()

    removed = enforce(box.store, rules(tmp_path, allow_undelivered=True), short_of(box, 1))
    assert [r.instance_id for r in removed] == [refused.instance_id]
    assert not refused.file.exists()


def test_an_unreviewed_image_stays_unless_allowed(box: Box, tmp_path: Path) -> None:
    unreviewed = box.image(1, days_old=30)

    assert enforce(box.store, rules(tmp_path), short_of(box, 10 * MIB)) == []
    assert unreviewed.file.exists() and state_of(box, unreviewed) == "present"

    removed = enforce(box.store, rules(tmp_path, allow_unreviewed=True), short_of(box, 1))
    assert [r.instance_id for r in removed] == [unreviewed.instance_id]
    [row] = audit.recent(box.store.conn, ACTION)
    assert row["detail"]["reviewed"] is False
    assert "not reviewed" in row["detail"]["reason"]


def test_a_final_impression_on_the_study_counts_as_reviewed(box: Box, tmp_path: Path) -> None:
    image = box.image(1, days_old=30)
    feedback.add_impression(box.store.conn, image.study_id, "normal", True, box.clinician, "ui")
    # The final word queues the study's objects again: not complete until they are made.
    assert enforce(box.store, rules(tmp_path), short_of(box, 1)) == []
    run_jobs(box.store)
    assert enforce(box.store, rules(tmp_path), short_of(box, 1)) == []  # the new one waits
    box.send_all()

    removed = enforce(box.store, rules(tmp_path), short_of(box, 1))

    assert [r.instance_id for r in removed] == [image.instance_id]
    assert len(removed[0].outputs) == 2  # both revisions' objects
    assert not any(p.exists() for p in box.describe(image.instance_id).outputs)


def test_young_images_and_images_in_progress_stay(box: Box, tmp_path: Path) -> None:
    young = box.image(1, days_old=1)
    box.review(young)
    in_progress = receive(box.store, box.folder, 2)  # its analysis is still queued
    box.store.conn.execute(
        "UPDATE instances SET received_at = '2000-01-01T00:00:00.000000+00:00' WHERE id = ?",
        (in_progress,),
    )

    assert enforce(box.store, rules(tmp_path, allow_unreviewed=True), short_of(box, MIB)) == []
    assert young.file.exists() and box.store.file_of(in_progress).exists()


def test_nothing_goes_while_the_disk_has_room_or_retention_is_off(box: Box, tmp_path: Path) -> None:
    image = box.image(1, days_old=30)
    box.review(image)

    assert enforce(box.store, rules(tmp_path), short_of(box, 0)) == []  # at the watermark
    off = settings_for(tmp_path)  # free_below_mb 0
    assert enforce(box.store, off, short_of(box, 10 * MIB)) == []
    assert image.file.exists()
    assert enforce(box.store, rules(tmp_path), short_of(box, 1), dry_run=True)
    assert image.file.exists() and audit.recent(box.store.conn, ACTION) == []


def test_removal_stops_once_the_target_is_free(box: Box, tmp_path: Path) -> None:
    images = [box.image(seed, days_old=40 - seed) for seed in range(1, 5)]
    for image in images:
        box.review(image)
    one = images[0].file.stat().st_size + sum(p.stat().st_size for p in images[0].outputs)

    removed = enforce(box.store, rules(tmp_path), short_of(box, one + 1))

    assert [r.instance_id for r in removed] == [i.instance_id for i in images[:2]]
    assert all(i.file.exists() for i in images[2:])


def test_the_periodic_runner_looks_at_most_once_per_interval(box: Box, tmp_path: Path) -> None:
    image = box.image(1, days_old=30)
    box.review(image)
    runner = Periodic(every_s=3600)
    assert runner.run(box.store, settings_for(tmp_path)) == []  # retention off: a look
    assert runner.run(box.store, rules(tmp_path, free_below_mb=10**9, free_target_mb=10**9)) == []
    assert image.file.exists()  # the second call came before the interval was over


def test_the_dry_run_command_lists_what_would_go(
    box: Box, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = box.image(1, days_old=30)
    box.review(image)
    free_mb = box.store.spool.free_bytes() // MIB
    config = tmp_path / "retention.yaml"
    settings = rules(tmp_path, free_below_mb=free_mb + 10, free_target_mb=free_mb + 20)
    config.write_text(settings.model_dump_json())  # JSON is YAML

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path)
    register(parser.add_subparsers())
    args = parser.parse_args(["--config", str(config), "retention", "--dry-run"])
    assert args.func(args) == 0

    printed = capsys.readouterr().out
    uid = box.store.conn.execute(
        "SELECT sop_instance_uid FROM instances WHERE id = ?", (image.instance_id,)
    ).fetchone()[0]
    assert "would remove" in printed and uid in printed
    assert image.file.exists() and state_of(box, image) == "present"
