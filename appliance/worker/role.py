"""Run the worker role: claim jobs, analyse their images, save what was found; until SIGTERM.

A job is leased and heart-beaten while it runs, and its results are committed together with the
job's end, so a worker killed at any point leaves the job to be taken back (at once by the
restarted worker, see `jobs.reap_dead_owners`) and done exactly once. An analysis that found
something queues a `pictures` job for its heatmaps and overlays: their files are written before
the transaction that records them, so a crash leaves at most unreferenced files.

Liveness: the running worker reaps expired leases and dead owners every `jobs.reap_every_s`,
and gives back its own job when the store fails under it. A full disk (SQLite's "database or
disk is full", ENOSPC, the spool's floor) is waited out with a growing delay (`disk_wait_s`)
and never uses up the job's attempts. Every inference is timed against its package's
`time_limit_s` (`watch.py`); once one overruns, the worker writes "inference hung: ..." on the
job, stops renewing its lease and stops its watchdog pings, so that the service manager
restarts it; the restarted worker takes the job back (a dead owner) and retries it, and fails
it with that reason once it is out of attempts.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

from appliance import notify
from appliance.capture.sources import SourceOpener
from appliance.config import Settings
from appliance.domain import Analysis, AnalysisState, ArtifactRecord
from appliance.imaging.limits import Limits
from appliance.paths import Paths
from appliance.runtime.errors import InputError
from appliance.runtime.manifest import manifest_dict
from appliance.runtime.routing import ImageTags, descriptions
from appliance.store import Store, audit, jobs, open_store, retention, status
from appliance.store.db import transaction
from appliance.store.doorbell import Doorbell, Listener
from appliance.worker import outputs
from appliance.worker.analyse import Draft, analyse
from appliance.worker.capture.loop import start_capture
from appliance.worker.models import ModelSet
from appliance.worker.pictures import Pending, Picture, draw
from appliance.worker.watch import Activity, Tracker, disk_full, job_limit_s, watch_models

log = logging.getLogger(__name__)
ACTOR = "worker"
STORE_WAIT_S = 5.0  # between tries while the store cannot be written (not for a full disk)
DISK_FULL_FIRST_WAIT_S = 0.5  # the least first wait of a full disk (else jobs.retry_delay_s)
DISK_FULL_MAX_WAIT_S = 60.0  # the wait doubles per full-disk failure in a row, up to this


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
    tracker = Tracker()
    watch_models(models.models, tracker)  # every inference is timed against its time limit
    worker = Worker(store, models, settings, tracker)
    taken_back = 0
    try:
        taken_back = worker.take_back()
    except sqlite3.OperationalError as exc:  # a full disk: taken back once it can be written
        log.error("could not take back interrupted jobs yet: %s", exc)
    listener = Listener(paths.doorbell)
    stop = threading.Event()
    _on_signals(stop, Doorbell(paths.doorbell))
    print(
        f"worker: ready (models loaded in {time.monotonic() - started:.1f} s): {models.describe()}"
        + f"; precision {models.precision} ({models.precision_reason})"
        + (f"; {taken_back} interrupted job(s) taken back" if taken_back else ""),
        flush=True,
    )
    notify.ready(f"models: {models.describe()}")
    watchdog = notify.Watchdog(worker.working).start()  # pings only while not stuck
    capture = start_capture(settings, paths, store, models, openers)  # None unless configured
    try:
        _work(worker, listener, stop)
    finally:
        notify.stopping()
        watchdog.stop()
        if capture is not None:
            capture.stop()
        beat.stop()
        listener.close()
        worker.close()
    return 0


def _work(worker: Worker, listener: Listener, stop: threading.Event) -> None:
    """Jobs until asked to stop. A store that cannot be written (a full disk) is waited out
    here rather than crash-looping the role: nothing is lost (a job the failure interrupted is
    given back as soon as the store can be written, and done again)."""
    while not stop.is_set():
        try:
            worker.give_back_interrupted()
            worker.reap_when_due()
            worker.retention.run(worker.store, worker.settings)  # frees disk before it fills
            if not worker.run_once():
                listener.wait(worker.idle_wait())
        except sqlite3.OperationalError as exc:
            full = disk_full(exc)
            wait = worker.disk_wait_s(failed=True) if full else STORE_WAIT_S
            what = "the disk is full" if full else "the store cannot be written"
            log.error("%s (%s): trying again in %.1f s", what, exc, wait)
            if stop.wait(wait):
                return
            with contextlib.suppress(sqlite3.OperationalError):
                worker.give_back_interrupted()
                worker.take_back()


def record_models(store: Store, models: ModelSet) -> None:
    """Tell the admin (through the store) which packages run, and which do not and why."""
    rows = [
        status.ModelRow(
            name=m.package.name,
            state="loaded",
            reason=models.notes.get(m.package.name, ""),  # e.g. no golden inputs to check
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


@dataclass(frozen=True)
class Interrupted:
    """Our own job that a failure of the store interrupted: to be given back (`give_back`)."""

    job: jobs.Job
    reason: str
    delay_s: float
    refund: bool  # a full disk: the attempt does not count


@dataclass(frozen=True)
class Current:
    """The job being worked on and the thread that works on it."""

    job: jobs.Job
    thread: int


class Worker:
    """The job loop's steps, one job at a time."""

    def __init__(
        self, store: Store, models: ModelSet, settings: Settings, tracker: Tracker | None = None
    ) -> None:
        self.store = store
        self.models = models
        self.settings = settings
        self.owner = jobs.owner_name()
        self.tracker = tracker or Tracker()
        self.current: Current | None = None
        self.interrupted: Interrupted | None = None
        self._full_in_a_row = 0  # full-disk failures since a job last ended normally
        self.retention = retention.Periodic()
        self._next_reap = time.monotonic() + settings.jobs.reap_every_s
        self._hung: Activity | None = None  # the overrun already reported
        self._hung_lock = threading.Lock()
        self.heartbeat = Heartbeat(store, self.owner, settings.jobs.lease_s, self.job_alive)

    def take_back(self) -> int:
        """Requeue jobs of dead workers on this machine and of expired leases anywhere, and
        remove the picture files such a worker wrote but never recorded."""
        taken = self.reap()
        swept = self.store.sweep_results()
        if swept:
            log.info("removed %d picture file(s) no finding refers to", swept)
        return taken

    def reap(self) -> int:
        """Requeue (or fail, when out of attempts) the running jobs of dead worker processes
        on this machine and those whose lease expired, whoever held them (this worker too)."""
        conn, on_failed = self.store.conn, self.store.record_failure
        taken = jobs.reap_dead_owners(conn, on_failed) + jobs.reap_stale(conn, on_failed=on_failed)
        self._next_reap = time.monotonic() + self.settings.jobs.reap_every_s
        return taken

    def reap_when_due(self) -> None:
        """`reap` every `jobs.reap_every_s` while the worker runs, not only at its start."""
        if time.monotonic() >= self._next_reap:
            taken = self.reap()
            if taken:
                log.warning("took back %d job(s) whose worker stopped or lease expired", taken)

    def give_back_interrupted(self) -> None:
        """Requeue our own job that a store failure interrupted (raises while the store still
        cannot be written; called again until it can)."""
        gone = self.interrupted
        if gone is None:
            return
        conn, on_failed = self.store.conn, self.store.record_failure
        job = gone.job
        state = jobs.give_back(
            conn, job.id, self.owner, gone.reason, gone.delay_s, gone.refund, on_failed
        )
        self.interrupted = None
        if state is not None:
            log.warning("job %d given back (%s): %s", job.id, state, gone.reason)

    def disk_wait_s(self, failed: bool = False) -> float:
        """How long a full disk is waited out: from jobs.retry_delay_s (at least
        DISK_FULL_FIRST_WAIT_S), doubled per full-disk failure in a row, at most
        DISK_FULL_MAX_WAIT_S. `failed`: count one more failure first."""
        self._full_in_a_row += int(failed)
        first = max(self.settings.jobs.retry_delay_s, DISK_FULL_FIRST_WAIT_S)
        doublings = min(max(self._full_in_a_row - 1, 0), 16)
        return float(min(first * 2**doublings, DISK_FULL_MAX_WAIT_S))

    def idle_wait(self) -> float:
        """Seconds to wait for a ring: the poll interval, or less when a retry or the next
        reaping falls due."""
        conn, settings = self.store.conn, self.settings.jobs
        wait = min(settings.poll_s, max(self._next_reap - time.monotonic(), 0.01))
        if jobs.pictures_waiting(conn):
            wait = min(wait, max(settings.pictures_quiet_s, 0.05))
        due = jobs.next_due(conn)
        return wait if due is None else max(0.01, min(wait, due - time.time()))

    def run_once(self) -> bool:
        """Claim and finish one job; False when none was due. A store failure under the job
        makes it `interrupted` (given back at once when the store allows, else later)."""
        settings = self.settings.jobs
        job = jobs.claim(self.store.conn, self.owner, settings.lease_s, settings.pictures_quiet_s)
        if job is None:
            return False
        started = time.perf_counter()
        self.current = Current(job, threading.get_ident())
        self.heartbeat.watch(job.id)
        try:
            self._run(job, started)
            self._full_in_a_row = 0
        except Exception as exc:
            if not (disk_full(exc) or isinstance(exc, sqlite3.OperationalError)):
                raise
            self._interrupt(job, exc)
        finally:
            self.heartbeat.watch(None)
            self.current = None
        return True

    def _run(self, job: jobs.Job, started: float) -> None:
        if job.kind == jobs.ANALYSE:  # each inference is measured on its own (watch.py)
            self._save(job, self._analyse(job), started)
            return
        limit = job_limit_s(self.models.models)
        with self.tracker.measure(f"{job.kind} job", limit, inference=False):
            if job.kind == jobs.PICTURES:
                self._draw(job, started)
            else:
                self._make_outputs(job, started)

    def _interrupt(self, job: jobs.Job, exc: Exception) -> None:
        """Give our job back after a failure of the store: a full disk is waited out without
        counting the attempt; any other store failure counts it."""
        error = f"{type(exc).__name__}: {exc}"
        if disk_full(exc):
            wait = self.disk_wait_s(failed=True)
            reason = f"the disk is full ({error}); waiting {wait:.1f} s, this try does not count"
            log.error("job %d: %s", job.id, reason)
            self.interrupted = Interrupted(job, reason, wait, refund=True)
        else:
            reason = f"the store failed: {error}"
            log.error("job %d: %s", job.id, reason)
            delay = self.settings.jobs.retry_delay_s * job.attempts
            self.interrupted = Interrupted(job, reason, delay, refund=False)
        self.give_back_interrupted()

    def working(self) -> bool:
        """Whether the watchdog may ping: idle, or nothing past its time limit. A job whose
        inference overran gets the reason written on it first (once)."""
        stuck = self.tracker.overdue()
        if stuck is None:
            return True
        self._report_hung(stuck)
        return False

    def job_alive(self) -> bool:
        """Whether the job's lease may be renewed: its own thread is not past a time limit."""
        current = self.current
        if current is None:
            return True
        stuck = self.tracker.overdue(current.thread)
        if stuck is None:
            return True
        self._report_hung(stuck)
        return False

    def _report_hung(self, stuck: Activity) -> None:
        """Log the overrun and write its reason on the job it stops (from the watchdog's or
        the heartbeat's thread, with that thread's connection)."""
        with self._hung_lock:
            if self._hung == stuck:
                return
            self._hung = stuck
        current = self.current
        reason = stuck.reason()
        mine = current is not None and self.tracker.overdue(current.thread) == stuck
        log.error("%s%s", reason, f" (job {current.job.id})" if mine and current else "")
        if not mine or current is None:
            return
        try:
            jobs.mark_hung(self.store.conn, current.job.id, self.owner, reason)
        except sqlite3.OperationalError as exc:  # the restarted worker fails it generically
            log.error("could not record on job %d why it stopped: %s", current.job.id, exc)

    def _run_analysis(self, job: jobs.Job) -> Draft:
        path, tags = self._input(job.instance_id)
        if path is None:
            return self._failure("the image file is missing from the store", False)
        models, settings = self.models.models, self.settings
        return analyse(path, tags, models, settings, job.skip_plausibility)

    def _analyse(self, job: jobs.Job) -> Draft:
        try:
            return self._run_analysis(job)
        except InputError as exc:  # the stored file's header cannot be read: retrying won't help
            return self._failure(f"the image cannot be read: {exc}", False)
        except Exception as exc:  # unexpected (disk, database): retried like a failing model
            if disk_full(exc) or isinstance(exc, sqlite3.OperationalError):
                raise  # waited out by run_once, not counted
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
        except Exception as exc:  # retried like analyses, then given up; a full disk waits
            if disk_full(exc) or isinstance(exc, sqlite3.OperationalError):
                raise
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
        except Exception as exc:  # an unreadable source: retried, then given up; a full disk waits
            if disk_full(exc) or isinstance(exc, sqlite3.OperationalError):
                raise
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
    """Extends the lease of the job being worked on, from its own thread and connection,
    while `alive()` says the job is not stuck (a hung inference's lease is left to run out,
    so that another worker may take the job). A store that cannot be written is retried at
    the next beat: the thread never dies of it."""

    def __init__(
        self, store: Store, owner: str, lease_s: float, alive: Callable[[], bool] = lambda: True
    ) -> None:
        self.store = store
        self.owner = owner
        self.lease_s = lease_s
        self.alive = alive
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
            if job_id is not None and self.alive():
                self._beat(job_id)
        self.store.close_thread_connection()

    def _beat(self, job_id: int) -> None:
        try:
            if not jobs.heartbeat(self.store.conn, job_id, self.owner, self.lease_s):
                log.warning("lost the lease of job %d", job_id)
        except sqlite3.OperationalError as exc:
            log.error("could not renew the lease of job %d: %s", job_id, exc)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)


def _on_signals(stop: threading.Event, bell: Doorbell) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()
        bell.ring()  # wake the loop now rather than at the next poll

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
