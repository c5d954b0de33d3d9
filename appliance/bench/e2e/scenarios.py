"""Each scenario's figures, from what the store says about the images it pushed."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

from appliance.bench.e2e.results import (
    E2EOptions,
    FileTiming,
    ImageTiming,
    JobCounts,
    JobRow,
    Outcome,
    Pushed,
    Scenario,
)
from appliance.bench.harness.command import progress
from appliance.bench.harness.roles import Appliance
from appliance.runtime.routing import ImageTags
from appliance.store.benchmarks import pushed_images

POLL_S = 0.02  # how often the store is asked whether the worker is done
TAG_COLUMNS = ("modality", "body_part", "view", "sop_class", "photometric")  # as ImageTags


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


def read_outcomes(app: Appliance, uids: Sequence[str]) -> dict[str, Outcome]:
    """The store's view of the images with these SOP Instance UIDs (those it has)."""
    rows = pushed_images(app.conn, uids)
    by_instance: dict[int, list[JobRow]] = {}
    for row in rows.jobs:
        updated = _epoch(row["updated_at"])
        assert updated is not None  # NOT NULL in the schema
        job = JobRow(row["id"], row["kind"], row["state"], _epoch(row["heartbeat_at"]), updated)
        by_instance.setdefault(row["instance_ref"], []).append(job)
    return {
        row["sop_instance_uid"]: Outcome(
            received_at=_epoch(row["received_at"]),
            analysis=row["analysis"] or "",
            analysis_job=row["job_ref"],
            committed_at=_epoch(row["updated_at"]),
            tags=ImageTags(**{name: row[name] for name in TAG_COLUMNS}),
            jobs=tuple(by_instance.get(row["id"], ())),
            in_job_ms=row["in_job_ms"],
        )
        for row in rows.images
    }


def wait_drained(app: Appliance, uids: Sequence[str], timeout_s: float) -> None:
    """Poll the store until every image has a final analysis, or `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = read_outcomes(app, uids)
        if len(found) == len(uids) and all(o.final for o in found.values()):
            return
        if time.monotonic() > deadline:
            progress("e2e", f"gave up waiting after {timeout_s:.0f} s: some jobs are stuck")
            return
        app.check_alive()
        time.sleep(POLL_S)


def _epoch(stored: str | None) -> float | None:
    """Seconds since the epoch from the store's UTC ISO 8601 text."""
    return None if stored is None else datetime.fromisoformat(stored).timestamp()
