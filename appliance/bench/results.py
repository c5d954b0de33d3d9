"""What the ingest benchmark measured, and the table it prints."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.bench.files import FileSet
from appliance.bench.harness.tables import table
from appliance.bench.memory import SAMPLE_INTERVAL_S, MemoryResult

OURS = "ours"
THEIRS = "storescp"
STOCK = "pynetdicom"
RECEIVERS = (OURS, THEIRS, STOCK)
# What each receiver is, for the report's header.
DESCRIPTIONS = {
    OURS: "python -m appliance receiver (each file fsync'd, renamed and recorded before its "
    "response)",
    THEIRS: "DCMTK storescp, single process (one association at a time), no fsync",
    STOCK: "stock pynetdicom SCP, same accepted contexts, writes each dataset with one plain "
    "write, no fsync, no index",
}
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
    receivers: tuple[str, ...]  # those measured, in the order they ran
    throughput: tuple[Throughput, ...]
    durable: DurableLimit
    memory: tuple[MemoryResult, ...]  # empty when skipped

    def find(self, set_name: str, senders: int, receiver: str) -> Throughput:
        for row in self.throughput:
            if (row.set_name, row.senders, row.receiver) == (set_name, senders, receiver):
                return row
        raise KeyError(f"no {receiver} result for {set_name} with {senders} senders")

    def has(self, *receivers: str) -> bool:
        return all(name in self.receivers for name in receivers)


def format_report(report: IngestReport) -> str:
    parts = [
        _header(report),
        _throughput_table(report),
    ]
    if report.has(OURS, STOCK):
        parts.append(_split_section(report))
    parts.append(_durable_section(report))
    if report.memory:
        parts.append(_memory_table(report.memory))
    return "\n\n".join(parts) + "\n"


def _header(report: IngestReport) -> str:
    lines = [
        f"Ingest benchmark: DCMTK storescu -> receiver over loopback; median of {report.repeat} "
        "run(s),",
        "each on a fresh receiver and folder. MB = 10^6 bytes. DCMTK runs with TCP_NODELAY=1.",
    ]
    lines += [f"  {name}: {DESCRIPTIONS.get(name, name)}" for name in report.receivers]
    lines += [f"  {s.name} set: {s.description}, {s.megabytes:.1f} MB" for s in report.sets]
    return "\n".join(lines)


def _throughput_table(report: IngestReport) -> str:
    header = ("set", "senders", "receiver", "arrived", "MB", "median s", "images/s", "MB/s")
    others = [name for name in (THEIRS, STOCK) if report.has(OURS, name)]
    rows = [(*header, *(f"{OURS}/{name}" for name in others))]
    for row in report.throughput:
        ratios = [_ratio(report, row, name) if row.receiver == OURS else "" for name in others]
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
                *ratios,
            )
        )
    return table(rows)


def _ratio(report: IngestReport, ours: Throughput, other: str) -> str:
    theirs = report.find(ours.set_name, ours.senders, other)
    return f"{ours.images_per_s / theirs.images_per_s:.2f}"


def _split_section(report: IngestReport) -> str:
    """Our time per image as the stock pynetdicom SCP's plus the rest, which is our own."""
    title = (
        "Where our receiver's time per image goes (median wall time / images): the stock\n"
        "pynetdicom SCP's time, i.e. pynetdicom's own cost per message, plus the rest, i.e. our\n"
        "storage path (streaming to the spool, header check, fsync, rename, SQLite row):"
    )
    rows = [("set", "senders", f"{OURS} ms", f"{STOCK} ms", "share", "rest ms", "share")]
    for ours in report.throughput:
        if ours.receiver != OURS:
            continue
        stock = report.find(ours.set_name, ours.senders, STOCK)
        ours_ms, stock_ms = 1000 / ours.images_per_s, 1000 / stock.images_per_s
        rest_ms = ours_ms - stock_ms
        rows.append(
            (
                ours.set_name,
                str(ours.senders),
                f"{ours_ms:.2f}",
                f"{stock_ms:.2f}",
                f"{stock_ms / ours_ms:.0%}",
                f"{rest_ms:.2f}",
                f"{rest_ms / ours_ms:.0%}",
            )
        )
    return title + "\n" + table(rows)


def _durable_section(report: IngestReport) -> str:
    limit = report.durable
    lines = [
        f"Durable-write limit: {limit.rename_per_s:.0f} files/s (plain Python: write + fsync "
        f"+ rename of the {limit.files} small files",
        "  on the receivers' filesystem, measured after each one-sender small run)",
        f"  with a folder fsync after each rename as well: {limit.folder_sync_per_s:.0f} files/s",
    ]
    if report.has(OURS):
        ours = report.find("small", 1, OURS)
        share = ours.images_per_s / limit.rename_per_s
        verdict = "met" if share >= SMALL_RATE_TARGET else "NOT met"
        lines.append(
            f"  {OURS}, small set on one association: {ours.images_per_s:.0f} images/s = "
            f"{share:.0%} of the limit (target >= {SMALL_RATE_TARGET:.0%}: {verdict})"
        )
    if report.has(STOCK):
        stock = report.find("small", 1, STOCK)
        lines.append(
            f"  stock pynetdicom SCP ceiling on one association: {stock.images_per_s:.0f} "
            f"images/s = {stock.images_per_s / limit.rename_per_s:.0%} of the durable-write limit"
        )
    return "\n".join(lines)


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
    return title + "\n" + table(rows)


def _memory_verdict(result: MemoryResult) -> str:
    if result.receiver != OURS:
        return ""
    met = "met" if result.peak_mb < PEAK_RSS_TARGET_MB else "NOT met"
    return f"peak {result.peak_mb:.1f} MB, target < {PEAK_RSS_TARGET_MB:.0f} MB: {met}"
