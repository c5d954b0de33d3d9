"""What the ingest benchmark measured, and the table it prints."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.bench.files import FileSet
from appliance.bench.memory import SAMPLE_INTERVAL_S, MemoryResult

OURS = "ours"
THEIRS = "storescp"
SMALL_RATE_TARGET = 0.5  # of the durable-write limit, on one association
PEAK_RSS_TARGET_MB = 150.0


@dataclass(frozen=True)
class Throughput:
    """One receiver taking one file set from `senders` concurrent storescu, over repetitions."""

    set_name: str
    senders: int
    receiver: str
    files: int
    arrived: int  # the fewest files accepted in any repetition (each one is checked)
    total_bytes: int
    seconds: tuple[float, ...]  # one per repetition

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def images_per_s(self) -> float:
        return self.files / self.median_s

    @property
    def mb_per_s(self) -> float:
        return self.total_bytes / 1e6 / self.median_s


@dataclass(frozen=True)
class DurableLimit:
    """Small files per second a plain Python loop writes durably (median of repetitions)."""

    files: int
    rename_per_s: float  # write, fsync, rename
    folder_sync_per_s: float  # the same plus a folder fsync after each rename


@dataclass(frozen=True)
class IngestReport:
    sets: tuple[FileSet, ...]
    repeat: int
    throughput: tuple[Throughput, ...]
    durable: DurableLimit
    memory: tuple[MemoryResult, ...]  # empty when skipped

    def find(self, set_name: str, senders: int, receiver: str) -> Throughput:
        for row in self.throughput:
            if (row.set_name, row.senders, row.receiver) == (set_name, senders, receiver):
                return row
        raise KeyError(f"no {receiver} result for {set_name} with {senders} senders")


def format_report(report: IngestReport) -> str:
    parts = [
        _header(report),
        _throughput_table(report),
        _durable_section(report),
    ]
    if report.memory:
        parts.append(_memory_table(report.memory))
    return "\n\n".join(parts) + "\n"


def _header(report: IngestReport) -> str:
    lines = [
        f"Ingest benchmark: DCMTK storescu -> receiver over loopback; median of {report.repeat} "
        "run(s),",
        "each on a fresh receiver and folder. MB = 10^6 bytes. DCMTK runs with TCP_NODELAY=1.",
        f"  {OURS}: python -m appliance receiver (each file fsync'd, renamed and recorded "
        "before its response)",
        f"  {THEIRS}: DCMTK storescp, single process (one association at a time), no fsync",
    ]
    lines += [f"  {s.name} set: {s.description}, {s.megabytes:.1f} MB" for s in report.sets]
    return "\n".join(lines)


def _throughput_table(report: IngestReport) -> str:
    header = ("set", "senders", "receiver", "arrived", "MB", "median s", "images/s", "MB/s")
    rows = [(*header, f"{OURS}/{THEIRS}")]
    for row in report.throughput:
        ratio = _ratio(report, row) if row.receiver == OURS else ""
        rows.append(
            (
                row.set_name,
                str(row.senders),
                row.receiver,
                f"{row.arrived}/{row.files}",
                f"{row.total_bytes / 1e6:.1f}",
                f"{row.median_s:.3f}",
                f"{row.images_per_s:.1f}",
                f"{row.mb_per_s:.1f}",
                ratio,
            )
        )
    return _table(rows)


def _ratio(report: IngestReport, ours: Throughput) -> str:
    theirs = report.find(ours.set_name, ours.senders, THEIRS)
    return f"{ours.images_per_s / theirs.images_per_s:.2f}"


def _durable_section(report: IngestReport) -> str:
    limit = report.durable
    ours = report.find("small", 1, OURS)
    share = ours.images_per_s / limit.rename_per_s
    verdict = "met" if share >= SMALL_RATE_TARGET else "NOT met"
    return "\n".join(
        [
            f"Durable-write limit: {limit.rename_per_s:.0f} files/s (plain Python: write + fsync "
            f"+ rename of the {limit.files} small files",
            "  on the receivers' filesystem, measured after each one-sender small run)",
            f"  with a folder fsync after each rename as well: {limit.folder_sync_per_s:.0f} "
            "files/s",
            f"  {OURS}, small set on one association: {ours.images_per_s:.0f} images/s = "
            f"{share:.0%} of the limit (target >= {SMALL_RATE_TARGET:.0%}: {verdict})",
        ]
    )


def _memory_table(results: Sequence[MemoryResult]) -> str:
    title = (
        f"Resident memory receiving one {results[0].object_mb:.1f} MB multi-frame object\n"
        f"(VmRSS sampled every {SAMPLE_INTERVAL_S * 1000:.0f} ms while sending; VmHWM, the peak "
        "since start-up, at the end):"
    )
    rows = [("receiver", "before MB", "sampled peak MB", "VmHWM MB", "seconds", "")]
    for result in results:
        rows.append(
            (
                result.receiver,
                f"{result.before_mb:.1f}",
                f"{result.sampled_peak_mb:.1f}",
                f"{result.hwm_mb:.1f}",
                f"{result.seconds:.2f}",
                _memory_verdict(result),
            )
        )
    return title + "\n" + _table(rows)


def _memory_verdict(result: MemoryResult) -> str:
    if result.receiver != OURS:
        return ""
    met = "met" if result.peak_mb < PEAK_RSS_TARGET_MB else "NOT met"
    return f"peak {result.peak_mb:.1f} MB, target < {PEAK_RSS_TARGET_MB:.0f} MB: {met}"


def _table(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; columns of numbers are right-aligned."""
    columns = range(len(rows[0]))
    widths = [max(len(row[i]) for row in rows) for i in columns]
    right = [all(_numeric(row[i]) for row in rows[1:] if row[i]) for i in columns]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if right[i] else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _numeric(cell: str) -> bool:
    return cell.replace(".", "", 1).replace("/", "", 1).isdigit()
