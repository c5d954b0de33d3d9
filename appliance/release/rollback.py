"""`appliance rollback`: back to the release that was current before the last update, by hand
(an update that fails its checks rolls back by itself, see `update`).

The database goes back too only when the newer release changed its schema (the older code
refuses a newer store): that loses what was recorded since the update, so it is done only when
asked (`restore_backup`), and the refusal says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.release.journal import Journal, restore, schema_version
from appliance.release.update import Options, put_back


class RollbackRefused(ApplianceError):
    """A rollback that cannot or should not be done; the message says why."""


@dataclass(frozen=True)
class RollbackPlan:
    """What a rollback would do: from which release to which, and the backup to restore."""

    current: str
    previous: str
    backup: Path | None  # None: the database stays as it is


def plan(options: Options, restore_backup: bool) -> RollbackPlan:
    layout = options.layout
    current, previous = layout.current_version(), layout.previous_version()
    if current is None or previous is None or previous == current:
        raise RollbackRefused("there is no earlier release to go back to on this box")
    database = options.database
    backup = database.parent / "backups" / f"pre-update-{previous}-{current}.sqlite3"
    if not database.exists():
        return RollbackPlan(current, previous, None)
    if not backup.exists():
        if restore_backup:
            raise RollbackRefused(f"the backup taken before the update ({backup}) is missing")
        return RollbackPlan(current, previous, None)
    if schema_version(database) <= schema_version(backup):
        return RollbackPlan(current, previous, None)  # the older code reads this store as it is
    if not restore_backup:
        raise RollbackRefused(
            f"release {current} changed the database's layout, which {previous} cannot read: "
            f"going back restores the backup taken before the update ({backup}), and what was "
            "recorded since then (images received, findings, reviews) is no longer listed. "
            "Run it again with --restore-backup to do that"
        )
    return RollbackPlan(current, previous, backup)


def roll_back(options: Options, restore_backup: bool = False) -> RollbackPlan:
    """Switch back to the previous release (restoring the backup when it must and may);
    RollbackRefused or ApplianceError say why it was not done or not fully."""
    steps = plan(options, restore_backup)
    database = options.database
    journal = Journal(database, f"{steps.current} -> {steps.previous}")
    journal.step("rollback", by_hand=True, backup=str(steps.backup or ""))
    rows = len(journal.rows)

    def database_back() -> None:
        if steps.backup is not None:
            restore(steps.backup, database)

    problems = put_back(options, steps.previous, database_back)
    if steps.backup is not None:
        journal.write_again(rows - 1)
    options.layout.remember_previous(steps.current)  # a second rollback goes forward again
    if problems:
        journal.step("rollback_failed", problems=problems)
        raise ApplianceError("the rollback is incomplete: " + "; ".join(problems))
    journal.step("rolled_back", release=steps.previous, by_hand=True)
    return steps
