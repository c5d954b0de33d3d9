"""`appliance status`: store counts, free disk, the job queue and the worklist."""

from __future__ import annotations

import argparse
from datetime import datetime

from appliance.cli.common import Subcommands, settings_from
from appliance.store import Store, open_store, status
from appliance.store.backup import last_backup
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
    print(f"disk left:   {days_left(store, floor)}")
    print(f"backup:      {backup_line(store)}")
    print(
        f"patients {summary.patients}, studies {summary.studies}, "
        f"instances {summary.instances} (missing {summary.missing_instances})"
    )
    jobs = ", ".join(f"{k} {v}" for k, v in sorted(summary.jobs.items())) or "none"
    print(f"jobs:        {jobs}; queue depth {summary.queue_depth}")
    print(f"last image:  {summary.last_received_at or 'never'}")
    print_worklist(store, limit)


def days_left(store: Store, floor_mb: int) -> str:
    """Days until the floor at the last week's rate, in words."""
    free = store.spool.free_bytes()
    outlook = status.disk_outlook(store.conn, free, floor_mb * 2**20)
    if outlook.bytes_per_day is None:
        return "too little history to tell"
    if outlook.days_left is None:
        return "no images in the last week"
    rate = outlook.bytes_per_day / 2**20
    days = "over a year" if outlook.days_left > 365 else f"about {outlook.days_left:.1f} days"
    return f"{days} at {rate:.1f} MiB a day (last week)"


def backup_line(store: Store) -> str:
    """The last backup's outcome, in words."""
    entry = last_backup(store.conn)
    if entry is None:
        return "never"
    at = datetime.fromisoformat(entry["at"]).astimezone().strftime("%Y-%m-%d %H:%M")
    if entry.get("ok"):
        return f"{at} in {entry['folder']}"
    return f"FAILED {at} into {entry['folder']}: {entry.get('reason', '')}"


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
