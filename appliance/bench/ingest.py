"""`appliance bench ingest`: our receiver, DCMTK's storescp and stock pynetdicom, in one run.

The same generated files are pushed with DCMTK's storescu to each receiver in turn (ours,
storescp, pynetdicom, ours...), and the medians are compared. The stock pynetdicom SCP (same
contexts, one plain write per dataset) splits our time into pynetdicom's own cost per message and
our storage's. The same run measures the machine's durable-write limit (the ceiling for a
receiver that answers only once a file is on disk) and each receiver's resident memory while a
big multi-frame object streams in.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from appliance.bench.durable import durable_write_rate
from appliance.bench.files import FileSet, make_large_set, make_memory_object, make_small_set
from appliance.bench.harness import BenchError
from appliance.bench.harness.command import Bench
from appliance.bench.harness.command import progress as progress_line
from appliance.bench.harness.options import OptionRow, check_options, number_list
from appliance.bench.harness.processes import status_mb
from appliance.bench.memory import MemoryResult, RssSampler
from appliance.bench.peers import (
    Receiver,
    check_dcmtk,
    run_ours,
    run_pynetdicom,
    run_storescp,
    send,
)
from appliance.bench.results import (
    OURS,
    RECEIVERS,
    STOCK,
    THEIRS,
    DurableLimit,
    IngestReport,
    Throughput,
    format_report,
)

Launcher = Callable[[Path], AbstractContextManager[Receiver]]
LAUNCHERS: dict[str, Launcher] = {OURS: run_ours, THEIRS: run_storescp, STOCK: run_pynetdicom}


@dataclass(frozen=True)
class IngestOptions:
    small: int = 500
    large: int = 4
    large_frames: int = 48  # 44 MB of ultrasound in the large set
    memory_frames: int = 200  # 184 MB
    repeat: int = 3
    senders: tuple[int, ...] = (1, 2, 4)
    peers: tuple[str, ...] = RECEIVERS
    skip_memory: bool = False
    workdir: Path | None = None  # None: a temporary folder, removed at the end

    def __post_init__(self) -> None:
        unknown = [name for name in self.peers if name not in LAUNCHERS]
        check_options(
            (
                self.small >= max(self.senders, default=1),
                f"--small {self.small} is fewer files than {max(self.senders, default=1)} senders",
            ),
            *(
                (getattr(self, name) >= 1, f"--{name.replace('_', '-')} must be at least 1")
                for name in ("small", "large", "repeat", "memory_frames")
            ),
            (
                self.large_frames >= 0 and min(self.senders, default=1) >= 1,
                "--large-frames must be >= 0 and every sender count >= 1",
            ),
            (
                not unknown and bool(self.peers) and len(set(self.peers)) == len(self.peers),
                f"--peers {','.join(self.peers)!r}: name each of {', '.join(LAUNCHERS)} "
                "at most once, and at least one",
            ),
        )


NAME = "ingest"
_LARGE_FRAMES = "frames of the large set's ultrasound, 0 for none"
_MEMORY_FRAMES = "frames of the memory test's object, 0.92 MB each"
# flag, IngestOptions field, type, metavar, help
_COUNTS: tuple[OptionRow, ...] = (
    ("--small", "small", int, "N", "small images (128x128 16-bit CT) in the small set"),
    ("--large", "large", int, "N", "2048x2048 16-bit CR images in the large set"),
    ("--large-frames", "large_frames", int, "N", _LARGE_FRAMES),
    ("--memory-frames", "memory_frames", int, "N", _MEMORY_FRAMES),
    ("--repeat", "repeat", int, "R", "runs per receiver and set; the median is shown"),
)


def _add_receivers(parser: argparse.ArgumentParser, defaults: IngestOptions) -> None:
    """--senders, --peers and --skip-memory, after the counts."""
    senders = "concurrent storescu processes for the small set (default 1,2,4); 1 always runs"
    parser.add_argument(
        "--senders", type=_senders, default=defaults.senders, metavar="N,N...", help=senders
    )
    peers = f"the receivers to run, in this order (default {','.join(defaults.peers)})"
    parser.add_argument(
        "--peers", type=_peers, default=defaults.peers, metavar="NAME,NAME...", help=peers
    )
    memory = "do not measure memory while receiving a big object"
    parser.add_argument("--skip-memory", action="store_true", help=memory)


def _measure(options: IngestOptions, workdir: Path) -> IngestReport:
    """Each receiver of `options.peers` on the small and large sets, the durable-write limit
    beside them, then memory while a big object streams in."""
    peers = {name: LAUNCHERS[name] for name in options.peers}
    progress("generating the small and large sets")
    small = make_small_set(workdir / "files" / "small", options.small)
    large = make_large_set(workdir / "files" / "large", options.large, options.large_frames)
    runs = workdir / "runs"
    probe = DurableProbe(small, runs / "durable")
    throughput = measure_throughput(large, 1, peers, options.repeat, runs)
    for senders in sorted({1, *options.senders}):
        alongside = probe.measure if senders == 1 else None
        throughput += measure_throughput(small, senders, peers, options.repeat, runs, alongside)
    memory: tuple[MemoryResult, ...] = ()
    sets: tuple[FileSet, ...] = (small, large)
    if not options.skip_memory:
        progress(f"generating the memory test's object ({options.memory_frames} frames)")
        big = make_memory_object(workdir / "files" / "memory", options.memory_frames)
        memory = tuple(
            measure_memory(name, launch, big, runs / f"memory-{name}")
            for name, launch in peers.items()
        )
        sets += (big,)
    durable = probe.result()
    return IngestReport(sets, options.repeat, tuple(peers), tuple(throughput), durable, memory)


def measure_throughput(
    files: FileSet,
    senders: int,
    peers: dict[str, Launcher],
    repeat: int,
    folder: Path,
    alongside: Callable[[], None] | None = None,
) -> list[Throughput]:
    """Each receiver in turn takes `files` from `senders` storescu, `repeat` times.

    `alongside`, if given, runs after the receivers in each repetition.
    """
    seconds: dict[str, list[float]] = {name: [] for name in peers}
    arrived: dict[str, list[int]] = {name: [] for name in peers}
    for run in range(1, repeat + 1):
        for name, launch in peers.items():
            where = folder / f"{files.name}-{senders}-{run}-{name}"
            elapsed, count = _one_run(launch, files, senders, where)
            seconds[name].append(elapsed)
            arrived[name].append(count)
        times = ", ".join(f"{name} {seconds[name][-1]:.2f} s" for name in peers)
        progress(f"{files.name} set, {senders} sender(s), run {run}/{repeat}: {times}")
        if alongside is not None:
            alongside()
    return [
        Throughput(
            files.name,
            senders,
            name,
            files.count,
            min(arrived[name]),
            files.total_bytes,
            tuple(seconds[name]),
        )
        for name in peers
    ]


def _one_run(launch: Launcher, files: FileSet, senders: int, folder: Path) -> tuple[float, int]:
    with launch(folder) as receiver:
        settle()
        elapsed = send(receiver, files.split(senders), folder)
        count = check_arrived(receiver, files.count)
    shutil.rmtree(receiver.accepted)
    return elapsed, count


def check_arrived(receiver: Receiver, expected: int) -> int:
    """The number of files `receiver` accepted; raise unless it is `expected`."""
    count = receiver.count_accepted()
    if count != expected:
        raise BenchError(
            f"{receiver.name} accepted {count} files of {expected} sent "
            f"(storescu reported success); see {receiver.log}"
        )
    return count


class DurableProbe:
    """The durable-write limit for the small files, measured next to the receivers' runs.

    The disk's fsync rate drifts during a run (other writers, the host's cache), so the limit is
    measured once per repetition, right after the receivers took the same files.
    """

    def __init__(self, small: FileSet, folder: Path) -> None:
        self.small = small
        self.folder = folder
        self.rename: list[float] = []
        self.synced: list[float] = []

    def measure(self) -> None:
        settle()
        self.rename.append(durable_write_rate(self.small.paths, self.folder, sync_folder=False))
        settle()
        self.synced.append(durable_write_rate(self.small.paths, self.folder, sync_folder=True))
        progress(f"durable-write limit: {self.rename[-1]:.0f} files/s")

    def result(self) -> DurableLimit:
        return DurableLimit(
            self.small.count, statistics.median(self.rename), statistics.median(self.synced)
        )


def measure_memory(name: str, launch: Launcher, big: FileSet, folder: Path) -> MemoryResult:
    """A receiver's resident memory before, during and after taking the one file of `big`."""
    with launch(folder) as receiver:
        progress(f"memory: sending {big.megabytes:.0f} MB to {name}")
        settle()
        before = status_mb(receiver.pid, "VmRSS")
        sampler = RssSampler(receiver.pid)
        sampler.start()
        try:
            elapsed = send(receiver, [big.paths], folder)
        finally:
            peak = sampler.stop()
        check_arrived(receiver, 1)
        hwm = status_mb(receiver.pid, "VmHWM")
    shutil.rmtree(receiver.accepted)
    return MemoryResult(name, big.megabytes, before, peak, hwm, elapsed)


def settle() -> None:
    """Flush all dirty pages to disk now.

    storescp does not fsync: without this, its unwritten data would be flushed during, and
    billed to, the next timed step (on ext4 an fsync can wait for other files' data too).
    """
    os.sync()


def progress(message: str) -> None:
    progress_line(NAME, message)


def _peers(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(","))
    unknown = [name for name in names if name not in LAUNCHERS]
    if unknown:
        choices = ", ".join(LAUNCHERS)
        raise argparse.ArgumentTypeError(f"unknown receiver(s) {', '.join(unknown)}: {choices}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} names a receiver twice")
    return names


def _senders(text: str) -> tuple[int, ...]:
    return number_list(text, "sender count")


INGEST = Bench(
    NAME,
    "receiver throughput and memory against DCMTK storescp and stock pynetdicom",
    __doc__,
    IngestOptions,
    _COUNTS,
    _measure,
    format_report,
    workdir_help="keep the files and logs in a new folder under DIR",
    more_options=_add_receivers,
    more_fields=("senders", "peers", "skip_memory"),
    check=check_dcmtk,
)
add_parser = INGEST.add_parser
run_ingest = INGEST.run
