"""`appliance bench e2e`: from a C-STORE response to committed findings, on the whole appliance.

`appliance run` (receiver + worker with the default models) starts on a temporary data folder
and takes the demo set, every push with fresh Study, Series and SOP Instance UIDs: first a
steady push of one study (one image) per interval, each on its own association, then a burst
on one association as fast as it goes. An image's end-to-end latency runs from the moment the
SCU here got its success response to the analysis row's updated_at, which the worker writes in
the transaction that commits the findings (same machine clock). Beside it, on the same files,
in this process while the appliance is idle (before, between and after the pushes): the
model-only time (decode + Model.infer of the applicable models, loaded as the worker loads
them) and the worker's analyse() (adding routing, the plausibility check and what else it does
inline). The gap between model-only and end-to-end then splits into pipeline extras, the
worker's storing (claim to commit, less analyse()) and the wait in the queue (response to
claim), and the wait into the time the worker spent on follow-up jobs such as pictures. The
same run reports the cold start of `appliance run` and the resident memory of its receiver and
worker.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import pydicom
import yaml
from pydicom.dataset import Dataset

from appliance.bench.inference import percentile
from appliance.bench.memory import status_mb
from appliance.bench.options import OptionRow, add_options, option_values
from appliance.bench.peers import AE_TITLE, BenchError, _env, free_ports
from appliance.bench.results import _table
from appliance.config import Settings, load_settings
from appliance.paths import resolve_paths
from appliance.runtime.routing import ImageTags, dicom_tags
from appliance.samples import make_dataset, sample_uid

if TYPE_CHECKING:
    from pynetdicom.association import Association

    from appliance.runtime.engine import Model
    from appliance.worker.models import ModelSet

RATIO_TARGET = 1.25  # e2e p50 over model-only p50
MEMORY_TARGET_MB = 600.0  # receiver + worker, resident
COLD_START_TARGET_S = 10.0
READY_MARKER = "worker: ready"
CRASH_MARKER = "exited with status"  # the supervisor's line when a role dies
CALLING_AE = "BENCH-E2E"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.02  # how often the store is asked whether the worker is done
# The worker's heartbeat rewrites jobs.heartbeat_at every lease_s / 3; with the longest lease
# the column keeps the claim time for the whole run, which splits queue wait from work.
LEASE_S = 3600.0
FINAL_JOB_STATES = ("done", "failed")


@dataclass(frozen=True)
class E2EOptions:
    """What to push and how often; checked here so that the API refuses what the CLI does."""

    studies: int = 30
    interval_s: float = 1.0
    burst: int = 100
    chest_rows: int = 2048
    repeat: int = 5
    drain_timeout_s: float = 300.0
    workdir: Path | None = None  # None: a temporary folder, removed at the end

    def __post_init__(self) -> None:
        if self.studies < 1 or self.burst < 1 or self.repeat < 1:
            raise BenchError("--studies, --burst and --repeat must be at least 1")
        if self.interval_s <= 0 or self.drain_timeout_s <= 0:
            raise BenchError("--interval and --drain-timeout must be positive")
        if not 256 <= self.chest_rows <= 4096:
            raise BenchError(f"--chest-rows must be within 256..4096, got {self.chest_rows}")


# --- what is measured -----------------------------------------------------------------------


@dataclass(frozen=True)
class Pushed:
    """One image sent: which demo file, under which fresh SOP Instance UID, answered when."""

    kind: str
    sop_uid: str
    responded_at: float  # time.time() right after the success response


@dataclass(frozen=True)
class JobRow:
    """One job of a pushed image, from the store."""

    id: int
    kind: str  # analyse, or a follow-up such as pictures
    state: str  # queued | running | done | failed
    claimed_at: float | None  # jobs.heartbeat_at: set when the worker leased the job
    updated_at: float  # for a done or failed job: when it ended

    @property
    def final(self) -> bool:
        return self.state in FINAL_JOB_STATES


@dataclass(frozen=True)
class Outcome:
    """What the store says about one pushed image: its analysis and all its jobs."""

    received_at: float | None  # instances.received_at: the receiver's row, before its commit
    analysis: str  # analyses.state, "" before the worker committed one
    analysis_job: int | None  # analyses.job_ref: the job that wrote it
    committed_at: float | None  # analyses.updated_at, written in the commit's transaction
    tags: ImageTags  # what the worker routed on
    jobs: tuple[JobRow, ...]
    in_job_ms: float | None = None  # decode + the models, as the worker timed them in the job

    @property
    def job(self) -> JobRow | None:
        """The job that wrote the analysis."""
        return next((job for job in self.jobs if job.id == self.analysis_job), None)

    @property
    def followups(self) -> tuple[JobRow, ...]:
        """Jobs queued by the analysis (e.g. pictures): all but the one that wrote it."""
        if self.analysis_job is None:
            return ()
        return tuple(job for job in self.jobs if job.id > self.analysis_job)

    @property
    def final(self) -> bool:
        """Analysed, and no job of the image is queued or running any more."""
        return self.committed_at is not None and all(job.final for job in self.jobs)


@dataclass(frozen=True)
class FileTiming:
    """One demo file through the pipeline in this process (medians of `repeat` runs)."""

    kind: str
    models: tuple[str, ...]
    model_ms: float  # decode + Model.infer of the applicable models
    analyse_ms: float  # the worker's analyse(): adds routing, the plausibility check...


@dataclass(frozen=True)
class ImageTiming:
    """One analysed image, in ms: end-to-end and its parts."""

    kind: str
    e2e_ms: float  # response -> analysis committed; below 0 if committed before the response
    response_lag_ms: float  # the receiver's row -> the SCU had the response
    queue_ms: float  # response -> the worker leased its job
    worker_ms: float  # lease -> analysis committed
    model_ms: float  # this file, model-only, in this process
    analyse_ms: float  # this file, analyse(), in this process
    behind_followups_ms: float  # of queue_ms: the worker busy with follow-up jobs (pictures)
    in_job_ms: float  # decode + the models as the worker timed them in this very job

    @property
    def ratio(self) -> float:
        return self.e2e_ms / self.model_ms

    @property
    def in_job_ratio(self) -> float:
        return self.e2e_ms / self.in_job_ms


@dataclass(frozen=True)
class JobCounts:
    """Jobs of one kind over a scenario's images when the wait for them ended."""

    done: int = 0
    failed: int = 0
    stuck: int = 0  # still queued or running (or, for an analysis, not even leased)
    p50_ms: float | None = None  # lease -> end of the done ones


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    pushed: int
    push_s: float  # first push started -> last response
    analyses: JobCounts  # the job that analyses each image
    followups: dict[str, JobCounts]  # jobs the analyses queued (e.g. pictures), by kind
    last_analysis_s: float | None  # last response -> last analysis committed
    drain_s: float | None  # last response -> last job ended; None: stuck at the timeout
    states: dict[str, int]  # analyses.state counts
    images: tuple[ImageTiming, ...]  # those analysed by a done job

    def p(self, name: str, q: float) -> float:
        """A percentile of one ImageTiming field over the scenario's images."""
        values = [getattr(image, name) for image in self.images]
        return percentile(values, q) if values else float("nan")

    @property
    def ratio_of_p50s(self) -> float:
        return self.p("e2e_ms", 50) / self.p("model_ms", 50)

    @property
    def median_image_ratio(self) -> float:
        return statistics.median(image.ratio for image in self.images)

    @property
    def in_job_ratio_of_p50s(self) -> float:
        return self.p("e2e_ms", 50) / self.p("in_job_ms", 50)

    def summary(self) -> dict[str, float]:
        fields = (
            "e2e_ms",
            "model_ms",
            "analyse_ms",
            "worker_ms",
            "queue_ms",
            "behind_followups_ms",
            "response_lag_ms",
        )
        figures = {f"{name[:-3]}_p50_ms": self.p(name, 50) for name in fields}
        return {
            **figures,
            "e2e_p95_ms": self.p("e2e_ms", 95),
            "in_job_p50_ms": self.p("in_job_ms", 50),
            "in_job_ratio_of_p50s": self.in_job_ratio_of_p50s,
            "ratio_of_p50s": self.ratio_of_p50s,
            "median_image_ratio": self.median_image_ratio,
        }


@dataclass(frozen=True)
class RoleMemory:
    role: str
    pid: int
    hwm_mb: float  # VmHWM: the peak since the process started
    rss_mb: float  # VmRSS now


@dataclass(frozen=True)
class ColdStart:
    """Seconds from launching `appliance run`."""

    first_store_s: float  # the first C-STORE answered with success
    worker_ready_s: float  # the worker printed READY_MARKER (models loaded and warmed)
    backend: str

    @property
    def seconds(self) -> float:
        return max(self.first_store_s, self.worker_ready_s)


@dataclass(frozen=True)
class E2EReport:
    options: E2EOptions
    models: str  # the worker's description of what it loaded
    files: tuple[FileTiming, ...]
    scenarios: tuple[Scenario, ...]
    memory: tuple[RoleMemory, ...]
    cold_start: ColdStart
    left_out: tuple[str, ...] = ()  # demo files not pushed, and why

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["options"]["workdir"] = (
            None if self.options.workdir is None else str(self.options.workdir)
        )
        for scenario, out in zip(self.scenarios, data["scenarios"], strict=True):
            out.update(scenario.summary() if scenario.images else {})
        data["memory_sum"] = {"hwm_mb": _sum_hwm(self.memory), "rss_mb": _sum_rss(self.memory)}
        data["cold_start"]["seconds"] = self.cold_start.seconds
        return data


# --- command line ---------------------------------------------------------------------------

# flag, E2EOptions field, type, metavar, help
_OPTIONS: tuple[OptionRow, ...] = (
    ("--studies", "studies", int, "N", "studies (one image each) in the steady push"),
    ("--interval", "interval_s", float, "S", "seconds between the steady push's studies"),
    ("--burst", "burst", int, "N", "images in the burst, on one association"),
    ("--chest-rows", "chest_rows", int, "N", "rows of the demo chest radiographs"),
    (
        "--repeat",
        "repeat",
        int,
        "R",
        "runs per file of model-only and analyse(), before, between and after the pushes",
    ),
    ("--drain-timeout", "drain_timeout_s", float, "S", "longest wait for the worker to finish"),
)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `e2e` to the `bench` sub-commands."""
    parser = commands.add_parser(
        "e2e",
        help="C-STORE response to committed findings on `appliance run`, vs model-only time",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    defaults = E2EOptions()
    add_options(parser, _OPTIONS, defaults)
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report here")
    workdir = "keep the files, the store and the appliance's log in a new folder under DIR"
    parser.add_argument("--workdir", type=Path, metavar="DIR", help=workdir)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """The `bench e2e` handler: print the report, write it as JSON if asked, return 0."""
    options = E2EOptions(
        **option_values(args, _OPTIONS),
        workdir=args.workdir,
    )
    report = run_e2e(options, sys.stdout)
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    return 0


def run_e2e(options: E2EOptions, out: TextIO) -> E2EReport:
    """Run the whole benchmark, print its report to `out` and return it."""
    with _workdir(options.workdir) as workdir:
        report = _measure(options, workdir)
    out.write(format_report(report))
    out.flush()
    return report


# --- the run --------------------------------------------------------------------------------


def _measure(options: E2EOptions, workdir: Path) -> E2EReport:
    progress(f"writing the demo set (chest radiographs of {options.chest_rows} rows)")
    demo = DemoSet.write(workdir / "demo", options.chest_rows)
    config, settings = _write_config(workdir)
    with running_appliance(config, workdir / "appliance.log") as app:
        cold = _cold_start(app, settings)
        with FileTimer.load(settings, demo) as timer:
            timer.rounds(options.repeat, warm_up=True)
            pushes = _push_scenarios(app, demo, options, timer)
            memory = app.memory()  # before this process's next rounds: only the roles count
            timer.rounds(options.repeat)
            outcomes = {name: app.outcomes(pushed) for name, (pushed, _) in pushes.items()}
            timer.check_routes(pushes, outcomes)
            files, models = timer.results(), timer.describe()
        progress("stopping the appliance (SIGINT)")
    by_kind = {f.kind: f for f in files}
    scenarios = tuple(
        scenario_of(name, pushes[name][0], pushes[name][1], outcomes[name], by_kind, options)
        for name in pushes
    )
    return E2EReport(options, models, files, scenarios, memory, cold, demo.left_out)


def _push_scenarios(
    app: Appliance, demo: DemoSet, options: E2EOptions, timer: FileTimer
) -> dict[str, tuple[list[Pushed], float]]:
    """Steady, then burst, each drained before what follows. Name -> (pushes, seconds).

    The timer's rounds between them run on an idle appliance, so that drift in the machine's
    speed (other load, clock) reaches model-only and end-to-end times alike.
    """
    sender = Sender(app.port, [file.dataset for file in demo.files])
    runs: dict[str, tuple[list[Pushed], float]] = {}
    for name, push in (("steady", push_steady), ("burst", push_burst)):
        if runs:
            timer.rounds(options.repeat)
        started = time.time()
        pushed = push(sender, demo, options)
        runs[name] = (pushed, pushed[-1].responded_at - started)
        progress(f"{name}: {len(pushed)} pushed in {runs[name][1]:.1f} s; waiting for the worker")
        app.wait_drained([p.sop_uid for p in pushed], options.drain_timeout_s)
    return runs


def _cold_start(app: Appliance, settings: Settings) -> ColdStart:
    """Launch to the first accepted C-STORE and to the worker's ready line; then let the worker
    finish the probe, so the scenarios start on an empty queue."""
    probe = make_dataset("ct", rows=64, columns=64, study_key="bench-e2e-probe")
    sender = Sender(app.port, [probe])
    stored_at = sender.store_when_listening(probe, app)
    ready_at = app.wait_ready()
    progress(
        f"cold start: C-STORE accepted after {stored_at - app.launched_at:.1f} s, worker "
        f"ready after {ready_at - app.launched_at:.1f} s"
    )
    app.wait_drained([str(probe.SOPInstanceUID)], START_TIMEOUT_S)
    return ColdStart(
        stored_at - app.launched_at, ready_at - app.launched_at, settings.models.backend
    )


def push_steady(sender: Sender, demo: DemoSet, options: E2EOptions) -> list[Pushed]:
    """One study per interval, each on its own association, like a modality sending them.

    The pace is kept against a fixed schedule, so a slow push does not shift the later ones.
    """
    started = time.monotonic()
    pushed = []
    for number in range(options.studies):
        delay = started + number * options.interval_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the sender, not waiting for the appliance
        with sender.association() as assoc:
            pushed.append(sender.store(assoc, demo.pick(number)))
        if (number + 1) % 10 == 0:
            progress(f"steady: {number + 1}/{options.studies} pushed")
    return pushed


def push_burst(sender: Sender, demo: DemoSet, options: E2EOptions) -> list[Pushed]:
    """`options.burst` images on one association, each sent as soon as the last is answered."""
    with sender.association() as assoc:
        return [sender.store(assoc, demo.pick(number)) for number in range(options.burst)]


def scenario_of(
    name: str,
    pushed: Sequence[Pushed],
    push_s: float,
    outcomes: dict[str, Outcome],
    files: dict[str, FileTiming],
    options: E2EOptions,
) -> Scenario:
    """One scenario's figures from the store's outcomes and this process's file timings."""
    absent = Outcome(None, "", None, None, ImageTags(), ())  # accepted, yet not in the store
    ends = [outcomes.get(p.sop_uid, absent) for p in pushed]
    analysis_jobs = [o.job for o in ends]
    done = [(p, o) for p, o in zip(pushed, ends, strict=True) if o.job and o.job.state == "done"]
    committed = [o.committed_at for o in ends if o.committed_at is not None]
    ended = [job.updated_at for o in ends for job in o.jobs if job.final]
    last = pushed[-1].responded_at
    drained = all(o.final for o in ends)
    followups = [
        (job.claimed_at, job.updated_at)
        for o in ends
        for job in o.followups
        if job.final and job.claimed_at is not None
    ]
    return Scenario(
        name=name,
        description=_describe(name, options),
        pushed=len(pushed),
        push_s=push_s,
        analyses=_counts(analysis_jobs),
        followups=_followups(ends),
        last_analysis_s=max(committed) - last if committed else None,
        drain_s=max(ended) - last if drained and ended else None,
        states=dict(Counter(o.analysis or "none" for o in ends)),
        images=tuple(_image(p, o, files[p.kind], followups) for p, o in done),
    )


def _counts(jobs: Sequence[JobRow | None]) -> JobCounts:
    """None stands for an image whose analysis job is not known yet: stuck."""
    states = Counter(job.state if job else "" for job in jobs)
    spans = [
        (job.updated_at - job.claimed_at) * 1000
        for job in jobs
        if job and job.state == "done" and job.claimed_at is not None
    ]
    return JobCounts(
        done=states["done"],
        failed=states["failed"],
        stuck=len(jobs) - states["done"] - states["failed"],
        p50_ms=statistics.median(spans) if spans else None,
    )


def _followups(ends: Sequence[Outcome]) -> dict[str, JobCounts]:
    by_kind: dict[str, list[JobRow | None]] = {}
    for outcome in ends:
        for job in outcome.followups:
            by_kind.setdefault(job.kind, []).append(job)
    return {kind: _counts(jobs) for kind, jobs in sorted(by_kind.items())}


def _describe(name: str, options: E2EOptions) -> str:
    if name == "steady":
        return f"{options.studies} studies, one every {options.interval_s:g} s"
    return f"{options.burst} images on one association, back to back"


def _image(
    pushed: Pushed, outcome: Outcome, file: FileTiming, followups: Sequence[tuple[float, float]]
) -> ImageTiming:
    """Only for an image whose analysis job is done: it has a lease and a commit time.

    `followups` are the (lease, end) times of the scenario's follow-up jobs: the part of an
    image's wait that the worker spent on them shows what running them first costs.
    """
    assert outcome.job is not None and outcome.committed_at is not None
    committed = outcome.committed_at
    claimed = outcome.job.claimed_at or committed
    return ImageTiming(
        kind=pushed.kind,
        e2e_ms=(committed - pushed.responded_at) * 1000,
        response_lag_ms=(pushed.responded_at - (outcome.received_at or claimed)) * 1000,
        queue_ms=(claimed - pushed.responded_at) * 1000,
        worker_ms=(committed - claimed) * 1000,
        model_ms=file.model_ms,
        analyse_ms=file.analyse_ms,
        behind_followups_ms=_overlap_ms(pushed.responded_at, claimed, followups),
        in_job_ms=outcome.in_job_ms or float("nan"),
    )


def _overlap_ms(start: float, end: float, spans: Sequence[tuple[float, float]]) -> float:
    """Milliseconds of [start, end] covered by the (one at a time, so disjoint) spans."""
    return sum(max(0.0, min(end, b) - max(start, a)) for a, b in spans) * 1000


# --- the demo set and the sender --------------------------------------------------------------


@dataclass(frozen=True)
class DemoFile:
    """One demo file, held in memory so a push costs no disk read in this process."""

    kind: str
    path: Path
    dataset: Dataset  # read once; its UIDs are replaced before every push


@dataclass(frozen=True)
class DemoSet:
    """The files pushed in turn, so every scenario gets the same mix of chest and ultrasound."""

    files: tuple[DemoFile, ...]  # the files pushed, in push order
    left_out: tuple[str, ...]

    @classmethod
    def write(cls, folder: Path, chest_rows: int) -> DemoSet:
        """The demo set, less the image no model applies to: it would time the router only."""
        from appliance.phantoms.demo import NO_MODEL, write_demo_data

        items = write_demo_data(folder, chest_rows=chest_rows)
        files = tuple(
            DemoFile(item.kind, item.path, pydicom.dcmread(item.path))
            for item in items
            if item.expected_model != NO_MODEL
        )
        left = tuple(f"{i.kind}: no model applies" for i in items if i.expected_model == NO_MODEL)
        return cls(files, left)

    def pick(self, number: int) -> DemoFile:
        return self.files[number % len(self.files)]


class NotListening(BenchError):
    """No association: the receiver is not (yet) listening, or refused it."""


class Sender:
    """A pynetdicom SCU that gives every dataset fresh UIDs, so nothing is a duplicate."""

    def __init__(self, port: int, datasets: Sequence[Dataset]) -> None:
        self.port = port
        self.token = uuid.uuid4().hex  # this run's UIDs differ from any earlier run's
        self.count = 0
        self.contexts = sorted(
            {(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}
        )

    @contextmanager
    def association(self) -> Iterator[Association]:
        """An association with the appliance, released at the end; BenchError if refused."""
        from pynetdicom import AE

        ae = AE(ae_title=CALLING_AE)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        for sop_class, syntax in self.contexts:
            ae.add_requested_context(sop_class, [syntax])
        assoc = ae.associate("127.0.0.1", self.port, ae_title=AE_TITLE)
        if not assoc.is_established:
            raise NotListening(f"no association with 127.0.0.1:{self.port}")
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def store(self, assoc: Association, file: DemoFile) -> Pushed:
        """C-STORE `file` under fresh UIDs; the time is taken as soon as the response is in."""
        uid = self._fresh_uids(file.dataset)
        self._send(assoc, file.dataset)
        return Pushed(file.kind, uid, time.time())

    def store_when_listening(self, ds: Dataset, app: Appliance) -> float:
        """C-STORE `ds`, retried until the receiver listens; the time of the response."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            app.check_alive()
            try:
                with self.association() as assoc:
                    self._send(assoc, ds)
                    return time.time()
            except NotListening:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def _fresh_uids(self, ds: Dataset) -> str:
        self.count += 1
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(ds, keyword, sample_uid("bench-e2e", self.token, self.count, keyword))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        return str(ds.SOPInstanceUID)

    @staticmethod
    def _send(assoc: Association, ds: Dataset) -> None:
        status = assoc.send_c_store(ds)
        code = int(status.Status) if "Status" in status else None
        if code != 0:
            shown = "no response" if code is None else f"status 0x{code:04X}"
            raise BenchError(f"C-STORE of {ds.SOPInstanceUID} answered with {shown}")


# --- the appliance under test ---------------------------------------------------------------


def _write_config(workdir: Path) -> tuple[Path, Settings]:
    """Default settings but for the data folders, loopback on a free port and the lease."""
    receiver_port, ui_port = free_ports(2)
    values = {
        "storage": {"data_dir": str(workdir / "data"), "cache_dir": str(workdir / "cache")},
        "receiver": {"bind_address": "127.0.0.1", "port": receiver_port},
        "ui": {"bind_address": "127.0.0.1", "port": ui_port},
        "jobs": {"lease_s": LEASE_S},
    }
    config = workdir / "appliance.yaml"
    config.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return config, load_settings(config)


@contextmanager
def running_appliance(config: Path, log: Path) -> Iterator[Appliance]:
    """`appliance run` for the block: stopped with SIGINT at the end, killed on any error."""
    app = Appliance(config, log)
    try:
        yield app
    except BaseException:
        app.kill()
        raise
    app.stop()


class Appliance:
    """`appliance run` in its own process group, its output copied to `log` and watched."""

    def __init__(self, config: Path, log: Path) -> None:
        settings = load_settings(config)
        self.port = settings.receiver.port
        self.database = resolve_paths(settings).database
        self.log = log
        self.ready_at: float | None = None
        self.crashed = ""
        self._ready = threading.Event()
        self._conn: sqlite3.Connection | None = None
        command = [sys.executable, "-m", "appliance", "--config", str(config), "run"]
        self.launched_at = time.time()
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**_env(), "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # its children can be killed with it, and only they
        )
        self._reader = threading.Thread(target=self._read, name="appliance-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        """Copy the output to the log; note the worker's ready line and any role's crash."""
        assert self.process.stdout is not None
        with self.log.open("w", encoding="utf-8") as log:
            for raw in self.process.stdout:
                line = raw.decode("utf-8", errors="replace")
                if READY_MARKER in line and self.ready_at is None:
                    self.ready_at = time.time()
                    self._ready.set()
                if CRASH_MARKER in line and not self.crashed:
                    self.crashed = line.strip()
                log.write(line)
                log.flush()

    def check_alive(self) -> None:
        """BenchError if `appliance run` exited or restarted a crashed role."""
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"appliance run exited with {code}:\n{self.tail()}")
        if self.crashed:
            raise BenchError(f"a role crashed during the run: {self.crashed}\n{self.tail()}")

    def wait_ready(self) -> float:
        """The time the worker said it was ready."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._ready.wait(0.05):
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(
                    f"no {READY_MARKER!r} within {START_TIMEOUT_S:.0f} s:\n{self.tail()}"
                )
        assert self.ready_at is not None
        return self.ready_at

    @property
    def conn(self) -> sqlite3.Connection:
        """A read-only connection to the store (the appliance creates it before accepting)."""
        if self._conn is None:
            uri = f"file:{self.database}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
        return self._conn

    def outcomes(self, pushed: Sequence[Pushed]) -> dict[str, Outcome]:
        return read_outcomes(self.conn, [p.sop_uid for p in pushed])

    def wait_drained(self, uids: Sequence[str], timeout_s: float) -> None:
        """Poll the store until every image has a final analysis, or `timeout_s` passed."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = read_outcomes(self.conn, uids)
            if len(found) == len(uids) and all(o.final for o in found.values()):
                return
            if time.monotonic() > deadline:
                progress(f"gave up waiting after {timeout_s:.0f} s: some jobs are stuck")
                return
            self.check_alive()
            time.sleep(POLL_S)

    def memory(self) -> tuple[RoleMemory, ...]:
        """VmHWM and VmRSS of each role process, read from /proc."""
        self.check_alive()
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="ascii").split()
        return tuple(
            RoleMemory(
                _role_of(int(c)), int(c), status_mb(int(c), "VmHWM"), status_mb(int(c), "VmRSS")
            )
            for c in children
        )

    def stop(self) -> None:
        """SIGINT, as Ctrl-C would; BenchError unless it stops cleanly in time."""
        self._close_conn()
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            self.kill()
            raise BenchError(
                f"appliance run did not stop within {STOP_TIMEOUT_S:.0f} s of SIGINT"
            ) from exc
        self._reader.join(timeout=5)
        if code != 0:
            raise BenchError(f"appliance run exited with {code} on SIGINT:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the process group started for it: the supervisor and its roles."""
        self._close_conn()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def tail(self, lines: int = 15) -> str:
        if not self.log.exists():
            return ""
        text = self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        return "".join(f"  | {line}\n" for line in text)


def _role_of(pid: int) -> str:
    """The role a child runs: the last word of its command line (`... appliance worker`)."""
    words = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    return words[-1].decode(errors="replace")


_IMAGES_SQL = """
SELECT i.id, i.sop_instance_uid, i.received_at, i.sop_class_uid, i.photometric,
       i.view_position, s.modality, s.body_part, a.state AS analysis, a.job_ref, a.updated_at,
       (SELECT MAX(json_extract(f.result, '$.decode_ms'))
               + SUM(json_extract(f.result, '$.timing.preprocess_ms')
                     + json_extract(f.result, '$.timing.model_ms')
                     + json_extract(f.result, '$.timing.postprocess_ms'))
        FROM findings f WHERE f.job_ref = a.job_ref AND f.state = 'findings') AS in_job_ms
FROM instances i
JOIN series s ON s.id = i.series_ref
LEFT JOIN analyses a ON a.instance_ref = i.id
WHERE i.sop_instance_uid IN ({marks})
"""
_JOBS_SQL = """
SELECT id, instance_ref, kind, state, heartbeat_at, updated_at FROM jobs
WHERE instance_ref IN ({marks}) ORDER BY id
"""


def read_outcomes(conn: sqlite3.Connection, uids: Sequence[str]) -> dict[str, Outcome]:
    """The store's view of the images with these SOP Instance UIDs (those it has)."""
    conn.execute("BEGIN")  # one snapshot for both queries
    try:
        images = conn.execute(_IMAGES_SQL.format(marks=_marks(uids)), uids).fetchall()
        ids = [row["id"] for row in images]
        jobs = conn.execute(_JOBS_SQL.format(marks=_marks(ids)), ids).fetchall()
    finally:
        conn.execute("COMMIT")
    by_instance: dict[int, list[JobRow]] = {}
    for row in jobs:
        by_instance.setdefault(row["instance_ref"], []).append(_job_row(row))
    return {
        row["sop_instance_uid"]: Outcome(
            received_at=_epoch(row["received_at"]),
            analysis=row["analysis"] or "",
            analysis_job=row["job_ref"],
            committed_at=_epoch(row["updated_at"]),
            tags=ImageTags(
                modality=row["modality"],
                body_part=row["body_part"],
                view=row["view_position"],
                sop_class=row["sop_class_uid"],
                photometric=row["photometric"],
            ),
            jobs=tuple(by_instance.get(row["id"], ())),
            in_job_ms=row["in_job_ms"],
        )
        for row in images
    }


def _job_row(row: sqlite3.Row) -> JobRow:
    updated = _epoch(row["updated_at"])
    assert updated is not None  # NOT NULL in the schema
    return JobRow(row["id"], row["kind"], row["state"], _epoch(row["heartbeat_at"]), updated)


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


def _epoch(stored: str | None) -> float | None:
    """Seconds since the epoch from the store's UTC ISO 8601 text."""
    return None if stored is None else datetime.fromisoformat(stored).timestamp()


# --- model-only, in this process --------------------------------------------------------------


class FileTimer:
    """Model-only and analyse() times per demo file, in this process, with the models loaded
    the way the worker loads them (ModelSet.load, the same settings)."""

    def __init__(self, settings: Settings, demo: DemoSet, models: ModelSet) -> None:
        self.settings = settings
        self.demo = demo
        self.models = models
        self.tags = {file.kind: dicom_tags(file.path) for file in demo.files}
        self.samples: dict[str, tuple[list[float], list[float]]] = {
            file.kind: ([], []) for file in demo.files
        }

    @classmethod
    @contextmanager
    def load(cls, settings: Settings, demo: DemoSet) -> Iterator[FileTimer]:
        from appliance.worker.models import ModelSet

        models = ModelSet.load(settings.models, resolve_paths(settings).cache_dir)
        try:
            yield cls(settings, demo, models)
        finally:
            models.close()

    def applicable(self, tags: ImageTags) -> list[Model]:
        from appliance.runtime.routing import route

        return [m for m in self.models.models if route(m.manifest.applies_to, tags).applies]

    def rounds(self, count: int, warm_up: bool = False) -> None:
        """`count` timed runs of every file (after an untimed one when `warm_up`)."""
        progress(f"model-only and analyse() in this process, {count} run(s) per file")
        for number in range(count + warm_up):
            for file in self.demo.files:
                model_ms, analyse_ms = self._time(file)
                if number >= warm_up:
                    self.samples[file.kind][0].append(model_ms)
                    self.samples[file.kind][1].append(analyse_ms)

    def _time(self, file: DemoFile) -> tuple[float, float]:
        """Model-only and the whole analyse() of one file, one after the other."""
        from appliance.worker.analyse import analyse

        tags = self.tags[file.kind]
        model_ms = model_only_ms(file.path, self.applicable(tags))
        started = time.perf_counter()
        analyse(file.path, tags, self.models.models, self.settings)
        return model_ms, (time.perf_counter() - started) * 1000

    def check_routes(
        self, pushes: dict[str, tuple[list[Pushed], float]], found: dict[str, dict[str, Outcome]]
    ) -> None:
        """BenchError unless the tags the receiver stored (those the worker routes on) select
        the models this process timed for the same file."""
        for name, (pushed, _) in pushes.items():
            for image in pushed:
                outcome = found[name].get(image.sop_uid)
                if outcome is None:
                    continue  # counted as stuck
                stored = self._names(outcome.tags)
                if stored != self._names(self.tags[image.kind]):
                    raise BenchError(
                        f"{image.kind}: the worker routes it to {stored or 'no model'} by the "
                        f"tags the receiver stored ({outcome.tags}), this process did otherwise"
                    )

    def _names(self, tags: ImageTags) -> list[str]:
        return [model.package.name for model in self.applicable(tags)]

    def results(self) -> tuple[FileTiming, ...]:
        return tuple(
            FileTiming(
                kind,
                tuple(self._names(self.tags[kind])),
                statistics.median(model_ms),
                statistics.median(analyse_ms),
            )
            for kind, (model_ms, analyse_ms) in self.samples.items()
        )

    def describe(self) -> str:
        return self.models.describe()


def model_only_ms(path: Path, models: Sequence[Model]) -> float:
    """Decode as the worker does (the first frame only when that is all the models read), then
    Model.infer of each model: no plausibility check, explanation, pictures, store or queue."""
    from appliance.imaging import decode

    started = time.perf_counter()
    first_only = all(model.manifest.input.frames == "first" for model in models)
    image = decode(path, index=0 if first_only else None)
    for model in models:
        model.infer([image])
    return (time.perf_counter() - started) * 1000


# --- the report -----------------------------------------------------------------------------


def format_report(report: E2EReport) -> str:
    parts = [
        _header(report),
        _latency_table(report.scenarios),
        _split_table(report.scenarios),
        _jobs_lines(report.scenarios, report.options.drain_timeout_s),
        _files_table(report.files),
        _memory_table(report.memory),
        _cold_start_lines(report.cold_start),
    ]
    return "\n\n".join(parts) + "\n"


def _header(report: E2EReport) -> str:
    lines = [
        "End-to-end benchmark: pynetdicom SCU -> `appliance run` (receiver + worker) on loopback",
        f"  worker models: {report.models}",
        "  e2e: the SCU's success response -> analyses.updated_at (written in the transaction",
        "    that commits the findings)",
        "  model-only: decode + Model.infer of the applicable models in this process, same",
        f"    settings; median of 3 x {report.options.repeat} runs per file, on the idle appliance",
        "  analyse(): the worker's analyse() on the same file, the same way (adds routing, the",
        "    plausibility check and what else it does inline)",
        "  claim->commit: the analysis job's lease (jobs.heartbeat_at) to analyses.updated_at",
        f"  images: the demo set, chest radiographs of {report.options.chest_rows} rows, fresh "
        "UIDs for every push",
    ]
    lines += [f"  left out: {text}" for text in report.left_out]
    return "\n".join(lines)


def _latency_table(scenarios: Sequence[Scenario]) -> str:
    header = (
        "scenario",
        "n",
        "e2e p50 ms",
        "e2e p95 ms",
        "model-only p50 ms",
        "ratio p50s",
        "median image ratio",
        "in-job p50 ms",
        "ratio",
        f"target <= {RATIO_TARGET:g}",
    )
    rows: list[Sequence[str]] = [header]
    for s in scenarios:
        if not s.images:
            rows.append((s.name, "0", *("-" * 7), "NOT MET"))
            continue
        rows.append(
            (
                s.name,
                str(len(s.images)),
                f"{s.p('e2e_ms', 50):.1f}",
                f"{s.p('e2e_ms', 95):.1f}",
                f"{s.p('model_ms', 50):.1f}",
                f"{s.ratio_of_p50s:.2f}",
                f"{s.median_image_ratio:.2f}",
                f"{s.p('in_job_ms', 50):.1f}",
                f"{s.in_job_ratio_of_p50s:.2f}",
                _verdict(s.ratio_of_p50s <= RATIO_TARGET)
                + f" / {_verdict(s.in_job_ratio_of_p50s <= RATIO_TARGET)}",
            )
        )
    title = f"Latency ({', '.join(f'{s.name}: {s.description}' for s in scenarios)}):"
    note = (
        "  model-only: this process, warm (repeated runs of each file); in-job: decode + the\n"
        "  models as the worker timed them inside each image's own job (same moment, same\n"
        "  caches), so e2e / in-job is the pipeline's own overhead: queue, check, store."
    )
    return "\n".join([title, _table(rows), note])


def _split_table(scenarios: Sequence[Scenario]) -> str:
    """e2e = model-only + pipeline extras + the worker's storing + the wait in the queue."""
    title = (
        "Where the time goes (ms, medians over the images): e2e = model-only + extras\n"
        "[analyse() - model-only] + storing [claim->commit - analyse(): reading the row, the\n"
        "commit] + queue [response -> claim: the doorbell, earlier jobs]. follow-ups: the part\n"
        "of the queue the worker spent on earlier images' follow-up jobs (pictures). lag: the\n"
        "receiver's row -> the SCU had its response; the worker may start meanwhile, so a\n"
        "queue, or even an e2e, can be negative:"
    )
    header = ("scenario", "e2e", "model-only", "analyse()", "claim->commit", "extras")
    rows: list[Sequence[str]] = [(*header, "storing", "queue", "follow-ups", "lag")]
    for s in scenarios:
        if s.images:
            rows.append((s.name, *(f"{v:.1f}" for v in _split(s))))
    return title + "\n" + _table(rows)


def _split(s: Scenario) -> list[float]:
    def median(values: Iterator[float]) -> float:
        return statistics.median(values)

    images = s.images
    return [
        *(s.p(name, 50) for name in ("e2e_ms", "model_ms", "analyse_ms", "worker_ms")),
        median(i.analyse_ms - i.model_ms for i in images),
        median(i.worker_ms - i.analyse_ms for i in images),
        median(i.queue_ms for i in images),
        median(i.behind_followups_ms for i in images),
        median(i.response_lag_ms for i in images),
    ]


def _jobs_lines(scenarios: Sequence[Scenario], timeout_s: float) -> str:
    """Whether every job ended, and how long after the last push."""
    lines = [
        f"Jobs (the store polled until every job of the pushed images ended, <= {timeout_s:g} s):"
    ]
    for s in scenarios:
        kinds = [("analyses", s.analyses), *((f"{k} jobs", c) for k, c in s.followups.items())]
        counts = "; ".join(_count_text(name, c) for name, c in kinds)
        states = ", ".join(f"{k} {v}" for k, v in sorted(s.states.items()))
        lines.append(
            f"  {s.name}: {s.pushed} pushed in {s.push_s:.1f} s ({s.pushed / s.push_s:.1f}/s); "
            f"{counts}; analyses: {states}"
        )
        lines.append(f"    after the last response: {_drain_text(s)}")
    return "\n".join(lines)


def _count_text(name: str, counts: JobCounts) -> str:
    each = "" if counts.p50_ms is None else f", lease->end p50 {counts.p50_ms:.1f} ms"
    return f"{name} done {counts.done}, failed {counts.failed}, stuck {counts.stuck}{each}"


def _drain_text(s: Scenario) -> str:
    analysed = "none" if s.last_analysis_s is None else f"{s.last_analysis_s:.2f} s"
    if s.drain_s is None:
        return f"last analysis {analysed}; JOBS STUCK at the timeout"
    return f"last analysis {analysed}, last job ended {s.drain_s:.2f} s: none lost or stuck"


def _files_table(files: Sequence[FileTiming]) -> str:
    rows: list[Sequence[str]] = [("file", "models", "model-only ms", "analyse() ms")]
    rows += [
        (f.kind, ",".join(f.models) or "-", f"{f.model_ms:.1f}", f"{f.analyse_ms:.1f}")
        for f in files
    ]
    return "Per demo file, in this process:\n" + _table(rows)


def _memory_table(memory: Sequence[RoleMemory]) -> str:
    rows: list[Sequence[str]] = [("role", "pid", "VmHWM MB (peak)", "VmRSS MB (now)")]
    rows += [(m.role, str(m.pid), f"{m.hwm_mb:.1f}", f"{m.rss_mb:.1f}") for m in memory]
    peak, now = _sum_hwm(memory), _sum_rss(memory)
    rows.append(("receiver + worker", "", f"{peak:.1f}", f"{now:.1f}"))
    return (
        "Resident memory of `appliance run`'s roles after the burst (MB = 10^6 bytes; shared\n"
        "library pages count in each):\n"
        + _table(rows)
        + f"\n  receiver + worker peak {peak:.0f} MB, target < {MEMORY_TARGET_MB:.0f} MB: "
        f"{_verdict(peak < MEMORY_TARGET_MB)}; now {now:.0f} MB: {_verdict(now < MEMORY_TARGET_MB)}"
    )


def _cold_start_lines(cold: ColdStart) -> str:
    if cold.backend.startswith("tensorrt"):
        engines = "TensorRT engines not yet cached are built during this start and counted in it"
    else:
        engines = (
            f"TensorRT engine builds do not apply (backend {cold.backend}: ONNX Runtime "
            "on the CPU); a Jetson's first start also builds its engines"
        )
    return "\n".join(
        [
            "Cold start of `appliance run` (from launch):",
            f"  first C-STORE accepted {cold.first_store_s:.2f} s; worker ready (models loaded and "
            f"warmed) {cold.worker_ready_s:.2f} s",
            f"  cold start (the later) {cold.seconds:.2f} s, target < {COLD_START_TARGET_S:.0f} s: "
            f"{_verdict(cold.seconds < COLD_START_TARGET_S)}",
            f"  {engines}",
        ]
    )


def _verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


_TARGET_ROLES = ("receiver", "worker")  # the memory target's roles; the UI is listed apart


def _sum_hwm(memory: Sequence[RoleMemory]) -> float:
    return sum(m.hwm_mb for m in memory if m.role in _TARGET_ROLES)


def _sum_rss(memory: Sequence[RoleMemory]) -> float:
    return sum(m.rss_mb for m in memory if m.role in _TARGET_ROLES)


@contextmanager
def _workdir(parent: Path | None) -> Iterator[Path]:
    """A new folder under `parent`, kept; or a temporary one, removed at the end."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix="e2e-", dir=parent))
        progress(f"working in {path} (kept)")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="appliance-bench-") as name:
        yield Path(name)


def progress(message: str) -> None:
    print(f"bench e2e: {message}", file=sys.stderr, flush=True)
