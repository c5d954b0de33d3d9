"""`appliance status`: store counts, free disk, the job queue and the worklist."""

from __future__ import annotations

import argparse
from datetime import datetime

from appliance.cli.common import Subcommands, settings_from
from appliance.store import Store, open_store
from appliance.store.worklist import studies


def register(sub: Subcommands) -> None:
    """Add `status` to the CLI's sub-commands."""
    status = sub.add_parser("status", help="store counts, disk, queue and the worklist")
    status.add_argument("--studies", type=int, default=10, help="worklist rows to show")
    status.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    store = open_store(settings)
    try:
        print_status(store, settings.storage.free_space_floor_mb, args.studies)
    finally:
        store.close()
    return 0


def print_status(store: Store, floor: int, limit: int) -> None:
    """Counts, disk and queue, then the worklist."""
    summary = store.summary()
    free = store.spool.free_bytes() // 2**20
    print(f"data folder: {store.paths.data_dir}")
    print(f"disk free:   {free} MiB (floor {floor} MiB){'  BELOW FLOOR' if free < floor else ''}")
    print(
        f"patients {summary.patients}, studies {summary.studies}, "
        f"instances {summary.instances} (missing {summary.missing_instances})"
    )
    jobs = ", ".join(f"{k} {v}" for k, v in sorted(summary.jobs.items())) or "none"
    print(f"jobs:        {jobs}; queue depth {summary.queue_depth}")
    print(f"last image:  {summary.last_received_at or 'never'}")
    print_worklist(store, limit)


def print_worklist(store: Store, limit: int) -> None:
    """The `limit` most urgent studies, in local time."""
    rows = studies(store.conn, limit) if limit > 0 else []
    if rows:
        print(f"worklist (most urgent first, {len(rows)} shown):")
    for row in rows:
        local = datetime.fromisoformat(row.received_at).astimezone().strftime("%Y-%m-%d %H:%M")
        states = ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in row.states.items())
        print(
            f"  {row.triage.upper():8} {local}  {row.modalities:6} {row.patient_id:12} "
            f"{row.triage_reason or '-'}  [{states}]"
        )
