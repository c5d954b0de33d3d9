"""What `appliance bench outputs` measures, and its printed report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from appliance.bench.harness.options import check_options
from appliance.bench.harness.tables import percentile, table


@dataclass(frozen=True)
class OutputsOptions:
    studies: int = 30
    interval_s: float = 1.0
    outage: int = 200
    waiting: int = 1000
    chest_rows: int = 1024
    drain_timeout_s: float = 900.0
    workdir: Path | None = None

    def __post_init__(self) -> None:
        check_options(
            (min(self.studies, self.outage) >= 2, "--studies and --outage must be at least 2"),
            (self.waiting >= 1, "--waiting must be at least 1"),
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
class Latency:
    """Seconds per image from findings committed: to the SR made, and to the SR acknowledged."""

    images: int
    made_p50_s: float
    made_p95_s: float
    acked_p50_s: float
    acked_p95_s: float
    unsent: int


@dataclass(frozen=True)
class Outage:
    images: int
    objects: int  # distinct objects queued for the PACS in the whole run
    in_pacs: int  # distinct SOP Instance UIDs Orthanc holds
    entries_in_pacs: int  # instances Orthanc lists (a second copy would be a second entry)
    missing: int  # queued, never arrived
    unknown: int  # in Orthanc, never queued (a new UID for an old object would show here)
    backlog: int  # objects queued while Orthanc was down
    pushed_objects: int  # objects made of the outage push's images
    first_s: float  # Orthanc back -> the first of the backlog acknowledged
    drain_s: float  # Orthanc back -> the last object queued before its return acknowledged
    all_sent_s: float  # Orthanc back -> every object of the run acknowledged
    retry_min_s: float
    retry_max_s: float


@dataclass(frozen=True)
class SenderMemory:
    waiting: int
    empty_rss_mb: float  # the sender with an empty queue, right after start
    waiting_rss_mb: float
    waiting_hwm_mb: float
    attempts: int  # associations tried on the unreachable PACS while measured


@dataclass(frozen=True)
class OutputsReport:
    options: OutputsOptions
    latency: Latency
    outage: Outage
    memory: SenderMemory


def epoch(stored: str) -> float:
    return datetime.fromisoformat(stored).timestamp()


def latency_of(rows: Sequence[tuple[str, str, str | None]]) -> Latency:
    """(committed_at, made_at, sent_at) per image -> the percentiles."""
    made = [epoch(m) - epoch(c) for c, m, _ in rows]
    acked = [epoch(s) - epoch(c) for c, _, s in rows if s is not None]
    return Latency(
        images=len(rows),
        made_p50_s=percentile(made, 50) if made else float("nan"),
        made_p95_s=percentile(made, 95) if made else float("nan"),
        acked_p50_s=percentile(acked, 50) if acked else float("nan"),
        acked_p95_s=percentile(acked, 95) if acked else float("nan"),
        unsent=len(rows) - len(acked),
    )


def format_report(report: OutputsReport) -> str:
    o, lat, out, mem = report.options, report.latency, report.outage, report.memory
    lines = [
        "Outputs benchmark: `appliance run` (receiver, worker, sender) -> Orthanc on loopback",
        f"  images: the demo set, chest radiographs of {o.chest_rows} rows, fresh UIDs per push",
        "  committed: analyses.updated_at (the transaction that commits the findings);",
        "  made: outputs.made_at; acknowledged: deliveries.sent_at (Orthanc's success status)",
        "",
        f"Steady push, one study per {o.interval_s:g} s ({lat.images} images):",
        table(
            [
                ("from findings committed", "p50 s", "p95 s"),
                ("to SR made", f"{lat.made_p50_s:.2f}", f"{lat.made_p95_s:.2f}"),
                (
                    "to SR acknowledged by Orthanc",
                    f"{lat.acked_p50_s:.2f}",
                    f"{lat.acked_p95_s:.2f}",
                ),
            ]
        ),
        f"  SRs not acknowledged: {lat.unsent}",
        "",
        f"Outage: Orthanc stopped for the first half of a {out.images}-image push, started "
        "for the second",
        table(
            [
                (
                    "objects queued",
                    "distinct in Orthanc",
                    "entries in Orthanc",
                    "missing",
                    "unknown UIDs",
                ),
                (
                    str(out.objects),
                    str(out.in_pacs),
                    str(out.entries_in_pacs),
                    str(out.missing),
                    str(out.unknown),
                ),
            ]
        ),
        f"  queued while Orthanc was down: {out.backlog} objects; after it came back the first "
        f"was acknowledged in {out.first_s:.1f} s (the back-off's wait), all of them in "
        f"{out.drain_s:.1f} s; the push's {out.pushed_objects} objects in {out.all_sent_s:.1f} s",
        f"  back-off: {out.retry_min_s:g} s doubling to {out.retry_max_s:g} s (sender settings)",
        f"  delivered exactly once: {'yes' if out.missing == 0 and out.unknown == 0 else 'NO'}",
        "",
        f"Sender memory with {mem.waiting} objects waiting for an unreachable PACS "
        f"({mem.attempts} association attempts while measured):",
        table(
            [
                ("queue", "VmRSS MiB", "VmHWM MiB"),
                ("empty (after start)", f"{mem.empty_rss_mb:.1f}", ""),
                (
                    f"{mem.waiting} waiting",
                    f"{mem.waiting_rss_mb:.1f}",
                    f"{mem.waiting_hwm_mb:.1f}",
                ),
            ]
        ),
        f"  ratio waiting / empty: {mem.waiting_rss_mb / mem.empty_rss_mb:.2f}",
    ]
    return "\n".join(lines) + "\n"
