"""Run the worker role: claim jobs, analyse their images, save what was found; until SIGTERM.

A job is leased and heart-beaten while it runs, and its results are committed together with the
job's end, so a worker killed at any point leaves the job to be taken back (at once by the
restarted worker, see `jobs.reap_dead_owners`) and done exactly once. An analysis that found
something queues a `pictures` job for its heatmaps and overlays: their files are written before
the transaction that records them, so a crash leaves at most unreferenced files.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import FrameType

from appliance.capture.sources import SourceOpener
from appliance.config import Settings
from appliance.domain import Analysis, AnalysisState, ArtifactRecord
from appliance.imaging.limits import Limits
from appliance.paths import Paths
from appliance.runtime.errors import InputError
from appliance.runtime.manifest import manifest_dict
from appliance.runtime.routing import ImageTags, descriptions
from appliance.store import Store, audit, jobs, open_store, status
from appliance.store.db import transaction
from appliance.store.doorbell import Doorbell, Listener
from appliance.worker import outputs
from appliance.worker.analyse import Draft, analyse
from appliance.worker.capture.loop import start_capture
from appliance.worker.models import ModelSet
from appliance.worker.pictures import Pending, Picture, draw

log = logging.getLogger(__name__)
ACTOR = "worker"
STORE_WAIT_S = 5.0  # between tries while the store cannot be written


def serve(
    settings: Settings, paths: Paths, openers: Mapping[str, SourceOpener] | None = None
) -> int:
    """Load the models, take back jobs of a crashed worker, and work until asked to stop.

    `openers` make the capture source kinds the capture room does not make itself (the
    demo's generated screen); the entry layer hands them in."""
    started = time.monotonic()
    store = open_store(settings, paths)
    models = ModelSet.load(settings.models, paths.cache_dir)
    try:
        record_models(store, models)
    except sqlite3.OperationalError as exc:  # a full disk: the admin page waits, jobs do not
        log.error("could not record the loaded models in the store: %s", exc)
    beat = status.RoleBeat(
        store,
        "worker",
        backend=settings.models.backend,
        precision=models.precision,
        precision_reason=models.precision_reason,
    )
    worker = Worker(store, models, settings)
    taken_back = worker.take_back()
    listener = Listener(paths.doorbell)
    stop = threading.Event()
    _on_signals(stop, Doorbell(paths.doorbell))
    print(
        f"worker: ready (models loaded in {time.monotonic() - started:.1f} s): {models.describe()}"
        + f"; precision {models.precision} ({models.precision_reason})"
        + (f"; {taken_back} interrupted job(s) taken back" if taken_back else ""),
        flush=True,
    )
    capture = start_capture(settings, paths, store, models, openers)  # None unless configured
    try:
        _work(worker, listener, stop)
    finally:
        if capture is not None:
            capture.stop()
        beat.stop()
        listener.close()
        worker.close()
    return 0


def _work(worker: Worker, listener: Listener, stop: threading.Event) -> None:
    """Jobs until asked to stop. A store that cannot be written (a full disk) is waited out
    here rather than crash-looping the role: nothing is lost (an interrupted job keeps its
    lease until it runs out, then is taken back and done again)."""
    while not stop.is_set():
        try:
            if not worker.run_once():
                listener.wait(worker.idle_wait())
        except sqlite3.OperationalError as exc:
            log.error("the store cannot be written (%s): trying again in %.0f s", exc, STORE_WAIT_S)
            if stop.wait(STORE_WAIT_S):
                return
            with contextlib.suppress(sqlite3.OperationalError):
                worker.take_back()


def record_models(store: Store, models: ModelSet) -> None:
    """Tell the admin (through the store) which packages run, and which do not and why."""
    rows = [
        status.ModelRow(
            name=m.package.name,
            state="loaded",
            version=m.package.version,
            model_sha256=m.provenance.model_hash,
            backend=m.backend.name,
            precision=m.backend.precision,
            folder=str(m.package.folder),
            manifest=manifest_dict(m.manifest),
        )
        for m in models.models
    ]
    rows += [
        status.ModelRow(r.folder.name, "refused", r.reason, folder=str(r.folder))
        for r in models.refused
    ]
    disabled = "listed in models.disabled"
    rows += [status.ModelRow(name, "disabled", disabled) for name in models.disabled]
    status.record_models(store.conn, rows)


class Worker:
    """The job loop's steps, one job at a time."""

    def __init__(self, store: Store, models: ModelSet, settings: Settings) -> None:
        self.store = store
        self.models = models
        self.settings = settings
        self.owner = jobs.owner_name()
        self.heartbeat = Heartbeat(store, self.owner, settings.jobs.lease_s)

    def take_back(self) -> int:
        """Requeue jobs of dead workers on this machine and of expired leases anywhere, and
        remove the picture files such a worker wrote but never recorded."""
        conn, on_failed = self.store.conn, self.store.record_failure
        taken = jobs.reap_dead_owners(conn, on_failed) + jobs.reap_stale(conn, on_failed=on_failed)
        swept = self.store.sweep_results()
        if swept:
            log.info("removed %d picture file(s) no finding refers to", swept)
        return taken

    def idle_wait(self) -> float:
        """Seconds to wait for a ring: the poll interval, or less when a retry falls due."""
        conn, settings = self.store.conn, self.settings.jobs
        wait = settings.poll_s
        if jobs.pictures_waiting(conn):
            wait = min(wait, max(settings.pictures_quiet_s, 0.05))
        due = jobs.next_due(conn)
        return wait if due is None else max(0.01, min(wait, due - time.time()))

    def run_once(self) -> bool:
        """Claim and finish one job; False when none was due."""
        settings = self.settings.jobs
        job = jobs.claim(self.store.conn, self.owner, settings.lease_s, settings.pictures_quiet_s)
        if job is None:
            return False
        started = time.perf_counter()
        self.heartbeat.watch(job.id)
        try:
            if job.kind == jobs.PICTURES:
                self._draw(job, started)
            elif job.kind == jobs.OUTPUTS:
                self._make_outputs(job, started)
            else:
                self._save(job, self._analyse(job), started)
        finally:
            self.heartbeat.watch(None)
        return True

    def _analyse(self, job: jobs.Job) -> Draft:
        try:
            path, tags = self._input(job.instance_id)
            if path is None:
                return self._failure("the image file is missing from the store", False)
            models, settings = self.models.models, self.settings
            return analyse(path, tags, models, settings, job.skip_plausibility)
        except InputError as exc:  # the stored file's header cannot be read: retrying won't help
            return self._failure(f"the image cannot be read: {exc}", False)
        except Exception as exc:  # unexpected (disk, database): retried like a failing model
            log.exception("job %d failed unexpectedly", job.id)
            return self._failure(f"{type(exc).__name__}: {exc}", True)

    def _input(self, instance_id: int) -> tuple[Path | None, ImageTags]:
        """The image's file (None when it went missing) and its routing tags."""
        row = self.store.instance_row(instance_id)
        tags = ImageTags(
            modality=row["modality"],
            body_part=row["body_part"],
            view=row["view_position"],
            sop_class=row["sop_class_uid"],
            photometric=row["photometric"],
        )
        if row["state"] != "present":
            return None, tags
        path = self.store.spool.path_of(row["file_name"])
        if not tags.body_part:  # found from the descriptions: ProtocolName is not indexed
            tags = replace(tags, **descriptions(path))
        return path, tags

    def _failure(self, reason: str, retryable: bool) -> Draft:
        failed = self.settings.triage.failed
        return Draft(Analysis(AnalysisState.FAILED, reason, failed, reason), retryable=retryable)

    def _save(self, job: jobs.Job, draft: Draft, started: float) -> None:
        analysis = draft.analysis
        if draft.retryable and job.attempts < job.max_attempts:
            self._retry(job, analysis.reason)
            return
        if not self.store.complete(job, self.owner, analysis, ACTOR, draft.wants_pictures):
            log.warning("job %d was taken over by another worker; result dropped", job.id)
            return
        log.info(
            "job %d (instance %d): %s in %.0f ms: %s",
            job.id,
            job.instance_id,
            analysis.state.value,
            (time.perf_counter() - started) * 1000,
            analysis.summary,
        )

    def _retry(self, job: jobs.Job, reason: str) -> None:
        delay = self.settings.jobs.retry_delay_s * job.attempts
        with transaction(self.store.conn):  # the retry and its audit row, or neither
            retried = jobs.retry(self.store.conn, job.id, self.owner, reason, delay)
            if retried:
                self.store.audit(
                    ACTOR, "job.retry", f"job:{job.id}", attempts=job.attempts, reason=reason
                )
        if retried:
            log.warning("job %d attempt %d failed (%s); retrying", job.id, job.attempts, reason)

    def _draw(self, job: jobs.Job, started: float) -> None:
        """A pictures job: draw the heatmaps and overlays of the image's saved findings."""
        try:
            drawn, notes = self._pictures_of(job.instance_id)
            flat = [picture for pictures in drawn.values() for picture in pictures]
            names = iter(self.store.results.write_all([picture.data for picture in flat]))
        except Exception as exc:  # a full disk too: retried like analyses, then given up
            log.exception("pictures job %d failed", job.id)
            self._give_up_or_retry(job, f"{type(exc).__name__}: {exc}")
            return
        records = {
            finding: [_record(picture, next(names)) for picture in pictures]
            for finding, pictures in drawn.items()
        }
        if not self.store.attach_pictures(job, self.owner, records, ACTOR, notes):
            self.store.results.remove_all(r.file_name for rs in records.values() for r in rs)
            log.warning("pictures job %d was taken over by another worker", job.id)
            return
        elapsed = (time.perf_counter() - started) * 1000
        log.info(
            "job %d (instance %d): %d picture(s) in %.0f ms",
            job.id,
            job.instance_id,
            len(flat),
            elapsed,
        )

    def _pictures_of(self, instance_id: int) -> tuple[dict[int, list[Picture]], list[str]]:
        path, _ = self._input(instance_id)
        if path is None:
            return {}, ["the image file is missing from the store"]
        pending = [
            Pending(row["id"], row["model"], row["model_sha256"], row["key_frame"])
            for row in self.store.pending_pictures(instance_id)
        ]
        limits = Limits.from_settings(self.settings.receiver)
        return draw(path, pending, self.models.models, self.settings.models.explain, limits)

    def _give_up_or_retry(self, job: jobs.Job, reason: str) -> None:
        if job.attempts < job.max_attempts:
            self._retry(job, reason)
            return

        def record(conn: sqlite3.Connection) -> None:
            audit.append(conn, ACTOR, f"{job.kind}.failed", f"job:{job.id}", reason=reason)
            if job.kind == jobs.PICTURES:  # the report goes without its pictures
                jobs.enqueue(
                    conn, job.instance_id, job.max_attempts, kind=jobs.OUTPUTS, purpose="findings"
                )

        self.store.finish_job(job, self.owner, reason, record)

    def _make_outputs(self, job: jobs.Job, started: float) -> None:
        """An outputs job: the objects for the clinic's record and their deliveries."""
        try:
            job_plan = outputs.plan(self.store, job.instance_id, job.purpose or "findings")
            if job_plan is None:
                self.store.finish_job(job, self.owner, "", lambda conn: None)
                return
            built = outputs.build(self.store, self.settings, job_plan)
            queued = outputs.commit(self.store, job, self.owner, job_plan, built, ACTOR)
        except Exception as exc:  # a full disk, an unreadable source: retried, then given up
            log.exception("outputs job %d failed", job.id)
            self._give_up_or_retry(job, f"{type(exc).__name__}: {exc}")
            return
        if queued is None:
            log.warning("outputs job %d was taken over by another worker", job.id)
            return
        if queued:  # wake the sender now rather than at its next look at the queue
            bell = Doorbell(self.store.paths.sender_bell)
            bell.ring()
            bell.close()
        log.info(
            "job %d (instance %d): %d object(s), %d delivery(ies) queued in %.0f ms",
            job.id,
            job.instance_id,
            len(built),
            queued,
            (time.perf_counter() - started) * 1000,
        )

    def close(self) -> None:
        self.heartbeat.stop()
        self.models.close()
        self.store.close()


def _record(picture: Picture, name: str) -> ArtifactRecord:
    return ArtifactRecord(
        kind=picture.kind,
        label=picture.label,
        frame=picture.frame,
        file_name=name,
        width=picture.width,
        height=picture.height,
        detail=picture.detail,
    )


class Heartbeat:
    """Extends the lease of the job being worked on, from its own thread and connection."""

    def __init__(self, store: Store, owner: str, lease_s: float) -> None:
        self.store = store
        self.owner = owner
        self.lease_s = lease_s
        self._job: int | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._thread.start()

    def watch(self, job_id: int | None) -> None:
        with self._lock:
            self._job = job_id

    def _loop(self) -> None:
        while not self._stopped.wait(self.lease_s / 3):
            with self._lock:
                job_id = self._job
            if job_id is not None and not jobs.heartbeat(
                self.store.conn, job_id, self.owner, self.lease_s
            ):
                log.warning("lost the lease of job %d", job_id)
        self.store.close_thread_connection()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)


def _on_signals(stop: threading.Event, bell: Doorbell) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()
        bell.ring()  # wake the loop now rather than at the next poll

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
