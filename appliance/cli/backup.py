"""`appliance backup [DIR]`, `appliance restore BACKUP` and `appliance retention`.

A backup is a folder `backup-<UTC time>/` under DIR (default `backup.folder`, else `backups/`
in the data folder) with a consistent copy of the database, the files it names and a
manifest (see appliance.store.backup). `restore` checks a backup and puts it in place of the
data folder's database and files, with the roles stopped. `retention --dry-run` lists the
images that retention would remove now to free disk.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.cli.common import Subcommands, settings_from

MIB = 2**20


def register(sub: Subcommands) -> None:
    """Add `backup`, `restore` and `retention` to the CLI's sub-commands."""
    backup = sub.add_parser("backup", help="back the store up (database, images, objects)")
    backup.add_argument(
        "dir", metavar="DIR", type=Path, nargs="?", help="where (default: backup.folder)"
    )
    backup.set_defaults(func=cmd_backup)
    restore = sub.add_parser("restore", help="put a backup in place (roles stopped)")
    restore.add_argument("backup", metavar="BACKUP", type=Path, help="a backup-<time> folder")
    restore.set_defaults(func=cmd_restore)
    retention = sub.add_parser("retention", help="free disk as retention allows, now")
    retention.add_argument(
        "--dry-run", action="store_true", help="list what would be removed; remove nothing"
    )
    retention.set_defaults(func=cmd_retention)


def cmd_backup(args: argparse.Namespace) -> int:
    from appliance.store import open_store
    from appliance.store.backup import make_backup

    store = open_store(settings_from(args))
    try:
        result = make_backup(store, args.dir, actor="cli")
    finally:
        store.close()
    counts = result.counts
    print(f"backup: {result.folder}")
    print(
        f"  images {counts['instances']}, studies {counts['studies']}; files: "
        f"{counts['spool_files']} received, {counts['outputs']} objects, "
        f"{counts['results']} pictures, {counts['bytes'] / MIB:.1f} MiB"
    )
    print(
        f"  copied {result.copied} file(s) ({result.copied_bytes / MIB:.1f} MiB), "
        f"linked {result.linked} from the previous backup"
    )
    for name in result.manifest["vanished"]:
        print(f"  left out (removed while the backup ran): {name}")
    for name in result.manifest["damaged"]:
        print(f"  WARNING: {name} differs from the checksum recorded when it arrived")
    for old in result.removed:
        print(f"  removed older backup {old.name}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from appliance.paths import resolve_paths
    from appliance.store.backup import restore_backup

    paths = resolve_paths(settings_from(args))
    result = restore_backup(args.backup, paths)
    counts = result.manifest["counts"]
    print(f"restored {args.backup} into {paths.data_dir}")
    print(
        f"  {counts['instances']} image(s); {result.copied} file(s) copied, "
        f"{result.kept} already in place"
    )
    if result.aside:
        print(f"  the database it replaced is in {result.aside}")
    print("start the roles again (systemctl start appliance.target, or appliance run)")
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    from appliance.store import open_store
    from appliance.store.retention import enforce

    settings = settings_from(args)
    rules = settings.retention
    store = open_store(settings)
    try:
        free = store.spool.free_bytes()
        print(
            f"disk free {free // MIB} MiB; retention starts under {rules.free_below_mb} MiB "
            f"and stops at {rules.free_target_mb} MiB"
            + (" (retention is off: free_below_mb is 0)" if not rules.free_below_mb else "")
        )
        removed = enforce(store, settings, dry_run=args.dry_run, actor="cli")
    finally:
        store.close()
    verb = "would remove" if args.dry_run else "removed"
    if not removed:
        print(f"nothing {'would be' if args.dry_run else 'was'} removed")
    for r in removed:
        print(
            f"  {verb} {r.received_at[:19]}  {r.sop_instance_uid}  {r.size_bytes / MIB:.1f} MiB"
            f"{'' if r.reviewed else '  (not reviewed)'}"
        )
    if removed:
        total = sum(r.size_bytes for r in removed) / MIB
        print(f"{verb} {len(removed)} image(s), {total:.1f} MiB")
    return 0
