"""`appliance bench ui`: the worklist's speed on a big store, and how soon new findings show.

Two stores are built in a temporary folder: an empty one, and one with --studies studies (a
year of a small clinic: patients, studies, series, a few images each, their jobs, analyses,
findings, pictures, reports and feedback, with a mix of states and triage priorities) written
straight into the store's schema in one transaction. `appliance ui` serves each in turn, in its
own process as on a device; --clients threads here sign in with real sessions (cookie and
CSRF token) and request the worklist page, and its JSON (/api/worklist) when the UI has one,
over keep-alive connections for --seconds each. The report puts the full store beside the
empty one.

Freshness: while the UI serves a store, the bench ingests a small image and commits its
analysis as the worker does (Store.complete), --images times, with one signed-in client polling
the worklist the way the worklist page's script does, at its interval; each figure runs from
the commit to the first response that shows the new finding.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from appliance.bench.harness.command import Bench, progress
from appliance.bench.harness.http import PIN, Session, add_users
from appliance.bench.harness.options import OptionRow
from appliance.bench.harness.roles import running_ui, write_config
from appliance.bench.ui.freshness import freshness, poll_interval
from appliance.bench.ui.load import load
from appliance.bench.ui.report import format_report
from appliance.bench.ui.results import (
    API,
    EMPTY,
    PAGE,
    UNCHANGED,
    Freshness,
    Load,
    SeedCounts,
    UIOptions,
    UIReport,
    full_name,
)
from appliance.bench.ui.seed import count_store, seed_store
from appliance.store import Store, open_store, users

NAME = "ui"

# flag, UIOptions field, type, metavar, help
_OPTIONS: tuple[OptionRow, ...] = (
    ("--studies", "studies", int, "N", "studies in the full store"),
    ("--seconds", "seconds", float, "S", "seconds of load per endpoint and store"),
    ("--clients", "clients", int, "N", "concurrent signed-in clients"),
    ("--images", "images", int, "N", "new images per store for the freshness figure"),
)


def _measure(options: UIOptions, workdir: Path) -> UIReport:
    interval, source = poll_interval()
    stores: dict[str, SeedCounts] = {}
    loads: list[Load] = []
    fresh: list[Freshness] = []
    threads = 0
    for name, studies in ((EMPTY, 0), (full_name(options.studies), options.studies)):
        folder = workdir / ("empty" if studies == 0 else "full")
        storage = {"data_dir": str(folder / "data"), "free_space_floor_mb": 1}
        config, settings = write_config(folder, storage)
        threads = settings.ui.threads
        store = open_store(settings)
        try:
            stores[name] = _prepare(store, studies)
            with running_ui(config) as port:
                loads += _load_store(port, name, studies, options)
                fresh.append(freshness(store, port, name, studies, options, interval))
        finally:
            store.close()
    cores = os.cpu_count() or 1
    return UIReport(options, cores, threads, interval, source, stores, tuple(loads), tuple(fresh))


def _prepare(store: Store, studies: int) -> SeedCounts:
    """The users every store needs (an admin, or the UI only offers its set-up), the studies."""
    add_users(store.conn)
    author = users.create_user(
        store.conn, "bench-clinician", "Bench Clinician", "clinician", PIN, "bench"
    )
    if studies:
        started = time.monotonic()
        seed_store(store, studies, author.id)
        progress(NAME, f"seeded {studies:,} studies in {time.monotonic() - started:.1f} s")
    return count_store(store)


def _load_store(port: int, name: str, studies: int, options: UIOptions) -> list[Load]:
    """The page; the JSON in full (what a change costs); the JSON asked with the current
    version, as an open worklist asks while nothing changes (304)."""
    sessions = [Session.signed_in(port) for _ in range(options.clients)]
    try:
        paths = {PAGE: PAGE}
        status, body = sessions[0].get(API)
        if status == 200:
            paths[API] = API
            paths[UNCHANGED] = f"{API}?v={json.loads(body)['version']}"
        results = []
        for label, path in paths.items():
            message = f"{name}: {options.clients} clients on {label} for {options.seconds:g} s"
            progress(NAME, message)
            results.append(load(sessions, path, options.seconds, name, studies, label))
        return results
    finally:
        for session in sessions:
            session.close()


UI = Bench(
    NAME,
    "worklist latency on an empty and a full store, and how soon new findings show",
    __doc__,
    UIOptions,
    _OPTIONS,
    _measure,
    format_report,
    workdir_help="keep the stores and the UI's logs in a new folder under DIR",
    to_json=UIReport.to_json,
)
add_parser = UI.add_parser
run_ui_bench = UI.run
