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

import time
from pathlib import Path

from appliance.bench.e2e.demo import DemoSet, push_burst, push_steady
from appliance.bench.e2e.report import format_report
from appliance.bench.e2e.results import ColdStart, E2EOptions, E2EReport, Pushed
from appliance.bench.e2e.scenarios import read_outcomes, scenario_of, wait_drained
from appliance.bench.e2e.timer import FileTimer
from appliance.bench.harness.command import Bench, progress
from appliance.bench.harness.dicom import Sender
from appliance.bench.harness.options import OptionRow
from appliance.bench.harness.roles import (
    APPLIANCE_START_TIMEOUT_S,
    Appliance,
    running_appliance,
    write_config,
)
from appliance.config import Settings
from appliance.samples import make_dataset

NAME = "e2e"
CALLING_AE = "BENCH-E2E"
# The worker's heartbeat rewrites jobs.heartbeat_at every lease_s / 3; with the longest lease
# the column keeps the claim time for the whole run, which splits queue wait from work.
LEASE_S = 3600.0
Pushes = dict[str, tuple[list[Pushed], float]]  # scenario -> (its pushes, seconds)

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


def _measure(options: E2EOptions, workdir: Path) -> E2EReport:
    progress(NAME, f"writing the demo set (chest radiographs of {options.chest_rows} rows)")
    demo = DemoSet.write(workdir / "demo", options.chest_rows)
    storage = {"data_dir": str(workdir / "data"), "cache_dir": str(workdir / "cache")}
    config, settings = write_config(workdir, storage, jobs={"lease_s": LEASE_S})
    with running_appliance(config, workdir / "appliance.log") as app:
        cold = _cold_start(app, settings)
        with FileTimer.load(settings, demo) as timer:
            timer.rounds(options.repeat, warm_up=True)
            pushes = _push_scenarios(app, demo, options, timer)
            memory = app.memory()  # before this process's next rounds: only the roles count
            timer.rounds(options.repeat)
            outcomes = {
                name: read_outcomes(app, [p.sop_uid for p in pushed])
                for name, (pushed, _) in pushes.items()
            }
            timer.check_routes(pushes, outcomes)
            files, models = timer.results(), timer.describe()
        progress(NAME, "stopping the appliance (SIGINT)")
    by_kind = {f.kind: f for f in files}
    scenarios = tuple(
        scenario_of(name, pushes[name][0], pushes[name][1], outcomes[name], by_kind, options)
        for name in pushes
    )
    return E2EReport(options, models, files, scenarios, memory, cold, demo.left_out)


def _push_scenarios(app: Appliance, demo: DemoSet, options: E2EOptions, timer: FileTimer) -> Pushes:
    """Steady, then burst, each drained before what follows.

    The timer's rounds between them run on an idle appliance, so that drift in the machine's
    speed (other load, clock) reaches model-only and end-to-end times alike.
    """
    sender = Sender(app.port, [file.dataset for file in demo.files], CALLING_AE)
    runs: Pushes = {}
    for name, push in (("steady", push_steady), ("burst", push_burst)):
        if runs:
            timer.rounds(options.repeat)
        started = time.time()
        pushed = push(sender, demo, options)
        runs[name] = (pushed, pushed[-1].responded_at - started)
        progress(
            NAME, f"{name}: {len(pushed)} pushed in {runs[name][1]:.1f} s; waiting for the worker"
        )
        wait_drained(app, [p.sop_uid for p in pushed], options.drain_timeout_s)
    return runs


def _cold_start(app: Appliance, settings: Settings) -> ColdStart:
    """Launch to the first accepted C-STORE and to the worker's ready line; then let the worker
    finish the probe, so the scenarios start on an empty queue."""
    probe = make_dataset("ct", rows=64, columns=64, study_key="bench-e2e-probe")
    sender = Sender(app.port, [probe], CALLING_AE)
    stored_at = sender.store_when_listening(probe, app.check_alive, APPLIANCE_START_TIMEOUT_S)
    ready_at = app.wait_ready()
    progress(
        NAME,
        f"cold start: C-STORE accepted after {stored_at - app.launched_at:.1f} s, worker "
        f"ready after {ready_at - app.launched_at:.1f} s",
    )
    wait_drained(app, [str(probe.SOPInstanceUID)], APPLIANCE_START_TIMEOUT_S)
    return ColdStart(
        stored_at - app.launched_at, ready_at - app.launched_at, settings.models.backend
    )


E2E = Bench(
    NAME,
    "C-STORE response to committed findings on `appliance run`, vs model-only time",
    __doc__,
    E2EOptions,
    _OPTIONS,
    _measure,
    format_report,
    workdir_help="keep the files, the store and the appliance's log in a new folder under DIR",
    to_json=E2EReport.to_json,
)
add_parser = E2E.add_parser
run_e2e = E2E.run
