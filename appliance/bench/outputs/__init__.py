"""`appliance bench outputs`: findings to the PACS, through a PACS outage, on the whole box.

`appliance run` (receiver, worker, sender, UI) starts on a temporary data folder with one
destination, an Orthanc server started here as the clinic's PACS. Three scenarios, in order:
a steady push of one study (one demo image) per interval, timed from the moment the findings
are committed (analyses.updated_at) to the SR made (outputs.made_at) and acknowledged by
Orthanc (deliveries.sent_at, written when its success status arrives; same machine clock);
an outage, Orthanc stopped during the first half of a push (until the worker has queued all of
its objects) and started again for the second, after which every object queued for it must be
in Orthanc exactly once by SOP Instance UID, with the time it took to drain the backlog once
Orthanc was back; and the sender's resident
memory with many objects waiting for an unreachable PACS, beside its memory with an empty queue
right after start. The sender's back-off is the configuration's default.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from appliance.bench.e2e.demo import DemoSet, push
from appliance.bench.harness import BenchError
from appliance.bench.harness.command import Bench, progress, report_json
from appliance.bench.harness.dicom import Sender
from appliance.bench.harness.options import OptionRow
from appliance.bench.harness.orthanc import Orthanc, running_orthanc
from appliance.bench.harness.roles import Appliance, running_appliance, write_config
from appliance.bench.outputs.results import (
    Latency,
    Outage,
    OutputsOptions,
    OutputsReport,
    SenderMemory,
    epoch,
    format_report,
    latency_of,
)
from appliance.config import Settings
from appliance.store import benchmarks, outbox

NAME = "outputs"
CALLING_AE = "BENCH-OUT"
DESTINATION = "pacs"
TOP_UP = 20  # images pushed at a time until enough objects wait
POLL_S = 0.25

_OPTIONS: tuple[OptionRow, ...] = (
    ("--studies", "studies", int, "N", "studies (one image each) in the steady push"),
    ("--interval", "interval_s", float, "S", "seconds between the steady push's studies"),
    ("--outage", "outage", int, "N", "images in the outage push (PACS down for the first half)"),
    ("--waiting", "waiting", int, "N", "objects waiting when the sender's memory is read"),
    ("--chest-rows", "chest_rows", int, "N", "rows of the demo chest radiographs"),
    ("--drain-timeout", "drain_timeout_s", float, "S", "longest wait for the box to finish"),
)


def _measure(options: OutputsOptions, workdir: Path) -> OutputsReport:
    progress(NAME, f"writing the demo set (chest radiographs of {options.chest_rows} rows)")
    demo = DemoSet.write(workdir / "demo", options.chest_rows)
    with running_orthanc(workdir / "orthanc", "PACS") as pacs:
        storage = {"data_dir": str(workdir / "data"), "cache_dir": str(workdir / "cache")}
        destination = {
            "name": DESTINATION,
            "host": "127.0.0.1",
            "port": pacs.dicom_port,
            "called_ae_title": pacs.ae_title,
        }
        config, settings = write_config(workdir, storage, destinations=[destination])
        with running_appliance(config, workdir / "appliance.log") as app:
            app.wait_ready()
            empty = _sender_rss(app)[0]
            sender = Sender(app.port, [file.dataset for file in demo.files], CALLING_AE)
            latency = _steady(app, sender, demo, options)
            outage = _outage(app, pacs, sender, demo, options, settings)
            memory = _memory(app, pacs, sender, demo, options, empty)
            progress(NAME, "stopping the appliance (SIGINT)")
    return OutputsReport(options, latency, outage, memory)


def _steady(app: Appliance, sender: Sender, demo: DemoSet, options: OutputsOptions) -> Latency:
    started = time.monotonic()
    uids = set()
    for number in range(options.studies):
        delay = started + number * options.interval_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the push, not waiting for the appliance
        with sender.association() as assoc:
            uids.add(push(sender, assoc, demo.pick(number)).sop_uid)
    progress(NAME, f"steady: {options.studies} pushed; waiting for every SR to be acknowledged")
    _wait_delivered(app, options.drain_timeout_s)
    rows = [
        (row.committed_at, row.made_at, row.sent_at)
        for row in benchmarks.sr_deliveries(app.conn, DESTINATION)
        if row.source_uid in uids
    ]
    return latency_of(rows)


def _outage(
    app: Appliance,
    pacs: Orthanc,
    sender: Sender,
    demo: DemoSet,
    options: OutputsOptions,
    settings: Settings,
) -> Outage:
    half = options.outage // 2
    progress(NAME, f"outage: Orthanc stopped; pushing {half} images")
    pacs.stop()
    down = time.time()
    _push_burst(sender, demo, half, offset=options.studies)
    _wait_jobs(app, options.drain_timeout_s)  # the first half's objects all wait for Orthanc
    pacs.start()
    back = time.time()
    progress(NAME, f"outage: Orthanc back; pushing {options.outage - half} more")
    _push_burst(sender, demo, options.outage - half, offset=options.studies + half)
    _wait_delivered(app, options.drain_timeout_s)
    rows = benchmarks.delivered(app.conn, DESTINATION)
    queued = {uid for uid, _, _ in rows}
    during = [(sent, epoch(made)) for _, sent, made in rows if sent is not None]
    backlog = [epoch(sent) for sent, made in during if down <= made < back]
    every = [epoch(sent) for sent, made in during if made >= down]
    entries = pacs.instance_uids()
    return Outage(
        images=options.outage,
        objects=len(queued),
        in_pacs=len(set(entries)),
        entries_in_pacs=len(entries),
        missing=len(queued - set(entries)),
        unknown=len(set(entries) - queued),
        backlog=len(backlog),
        pushed_objects=len(every),
        first_s=min(backlog, default=back) - back,
        drain_s=max(backlog, default=back) - back,
        all_sent_s=max(every, default=back) - back,
        retry_min_s=settings.sender.retry_min_s,
        retry_max_s=settings.sender.retry_max_s,
    )


def _memory(
    app: Appliance,
    pacs: Orthanc,
    sender: Sender,
    demo: DemoSet,
    options: OutputsOptions,
    empty_rss_mb: float,
) -> SenderMemory:
    """Orthanc down again; images pushed until enough objects wait; then the sender's memory
    once it has tried the PACS again with that queue."""
    pacs.stop()
    pushed = options.studies + options.outage
    while _waiting(app) < options.waiting:
        _push_burst(sender, demo, TOP_UP, offset=pushed)
        pushed += TOP_UP
        _wait_jobs(app, options.drain_timeout_s)
        progress(NAME, f"memory: {_waiting(app)} objects waiting")
    before = _failures(app)
    _wait_for(app, lambda: _failures(app) >= before + 1, options.drain_timeout_s, "a retry")
    rss, hwm = _sender_rss(app)
    return SenderMemory(_waiting(app), empty_rss_mb, rss, hwm, _failures(app) - before)


# ---- pushing and waiting ----------------------------------------------------------------------


def _push_burst(sender: Sender, demo: DemoSet, count: int, offset: int) -> None:
    with sender.association() as assoc:
        for number in range(count):
            push(sender, assoc, demo.pick(offset + number))


def _waiting(app: Appliance) -> int:
    states = benchmarks.delivery_states(app.conn, DESTINATION)
    return states.get(outbox.WAITING, 0) + states.get(outbox.SENDING, 0)


def _failures(app: Appliance) -> int:
    row = outbox.destination_status(app.conn, DESTINATION)
    return 0 if row is None else int(row["failures"])


def _wait_jobs(app: Appliance, timeout_s: float) -> None:
    _wait_for(app, lambda: benchmarks.unfinished_jobs(app.conn) == 0, timeout_s, "the worker")


def _wait_delivered(app: Appliance, timeout_s: float) -> None:
    def done() -> bool:
        return benchmarks.unfinished_jobs(app.conn) == 0 and _waiting(app) == 0

    _wait_for(app, done, timeout_s, "every object to be acknowledged")


def _wait_for(app: Appliance, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"gave up waiting for {what} after {timeout_s:.0f} s")
        app.check_alive()
        time.sleep(POLL_S)


def _sender_rss(app: Appliance) -> tuple[float, float]:
    """VmRSS and VmHWM of the sender role, in MiB."""
    for role in app.memory():
        if role.role == "sender":
            return role.rss_mb, role.hwm_mb
    raise BenchError("the sender role is not running under `appliance run`")


OUTPUTS = Bench(
    NAME,
    "findings to SR acknowledged by Orthanc; an outage; the sender's memory with a backlog",
    __doc__,
    OutputsOptions,
    _OPTIONS,
    _measure,
    format_report,
    workdir_help="keep the files, the store, Orthanc's storage and the logs in a new folder "
    "under DIR",
    to_json=report_json,
)
add_parser = OUTPUTS.add_parser
