"""What the end-to-end benchmark measures: its options, each pushed image's outcome in the
store, the timings they give, and the whole report's figures."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.bench.harness.command import report_json
from appliance.bench.harness.options import check_options
from appliance.bench.harness.roles import RoleMemory
from appliance.bench.harness.tables import percentile
from appliance.runtime.routing import ImageTags

RATIO_TARGET = 1.25  # e2e p50 over model-only p50
MEMORY_TARGET_MB = 600.0  # receiver + worker, resident
COLD_START_TARGET_S = 10.0
FINAL_JOB_STATES = ("done", "failed")
TARGET_ROLES = ("receiver", "worker")  # the memory target's roles; the UI is listed apart


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
        check_options(
            (
                min(self.studies, self.burst, self.repeat) >= 1,
                "--studies, --burst and --repeat must be at least 1",
            ),
            (
                min(self.interval_s, self.drain_timeout_s) > 0,
                "--interval and --drain-timeout must be positive",
            ),
            (
                256 <= self.chest_rows <= 4096,
                f"--chest-rows must be within 256..4096, got {self.chest_rows}",
            ),
        )


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
        data = report_json(self)
        for scenario, out in zip(self.scenarios, data["scenarios"], strict=True):
            out.update(scenario.summary() if scenario.images else {})
        data["memory_sum"] = {"hwm_mb": sum_hwm(self.memory), "rss_mb": sum_rss(self.memory)}
        data["cold_start"]["seconds"] = self.cold_start.seconds
        return data


def sum_hwm(memory: Sequence[RoleMemory]) -> float:
    """The peak resident memory of the target's roles, summed."""
    return sum(m.hwm_mb for m in memory if m.role in TARGET_ROLES)


def sum_rss(memory: Sequence[RoleMemory]) -> float:
    """The resident memory of the target's roles now, summed."""
    return sum(m.rss_mb for m in memory if m.role in TARGET_ROLES)
