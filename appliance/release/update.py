"""`appliance update`: check a bundle, install it beside the running release, back up the
database, switch `current`, restart the roles, check the new release, and on any failure put
everything back as it was. Every step is an audit row (actor "update"); the last row of a run
(`update.done`, `update.rolled_back`, `update.refused`, `update.failed`) is its outcome, which
the admin's update page reads from the store.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from appliance.config import Settings
from appliance.paths import resolve_paths
from appliance.release import checks
from appliance.release.bundle import BundleInfo, BundleRefused, private_copy, verify
from appliance.release.install import InstallFailed, install_release
from appliance.release.journal import Journal, back_up, restore
from appliance.release.layout import Layout
from appliance.release.restart import NoRestart, Restarter, RestartFailed

log = logging.getLogger(__name__)
Say = Callable[[str], None]


@dataclass
class Options:
    """How an update (or a rollback) is done on this box."""

    settings: Settings  # the box's (its data folder holds the database)
    config: Path | None  # the file they came from, handed to the new release's self-test
    layout: Layout = field(default_factory=Layout)
    restarter: Restarter = field(default_factory=NoRestart)
    selftest_timeout_s: float = 900.0
    health_timeout_s: float = 180.0
    say: Say = print

    @property
    def database(self) -> Path:
        return resolve_paths(self.settings).database


@dataclass(frozen=True)
class Outcome:
    """How an update ended: `ok` (kept), or refused, failed before the switch, or rolled back."""

    ok: bool
    state: str  # "done", "refused", "failed" or "rolled_back"
    message: str
    from_version: str | None = None
    to_version: str | None = None


class _Failed(Exception):
    """A step failed; `step` names it for the audit row and the message."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(reason)
        self.step = step
        self.reason = reason


def update(bundle: Path, options: Options) -> Outcome:
    """Update the box to `bundle`; the outcome says what happened (never raises for a
    refused or failed update: it is reported and audited). What is checked and installed is
    a private copy (`bundle.private_copy`), removed afterwards."""
    folder = options.layout.opt / ".bundle"
    try:
        try:
            copy = private_copy(bundle, folder)
        except (BundleRefused, OSError) as exc:
            return _update(bundle, options, refused=str(exc))
        return _update(copy, options)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _update(bundle: Path, options: Options, refused: str = "") -> Outcome:
    layout, say = options.layout, options.say
    settings, database = options.settings, options.database
    current = layout.current_version()
    journal = Journal(database, f"{current or 'none'} -> {bundle.name}")
    try:
        if refused:
            raise BundleRefused(refused)
        info = verify(bundle, layout.release_key)
        if current is None:
            raise BundleRefused(
                f"no release is installed in {layout.opt}: install one with its install.sh first"
            )
        if info.version == current:
            raise BundleRefused(f"release {info.version} is already the current one")
    except BundleRefused as exc:
        journal.step("refused", bundle=bundle.name, reason=str(exc))
        say(f"update refused: {exc}")
        return Outcome(False, "refused", str(exc), current)
    journal.subject = f"{current} -> {info.version}"
    journal.step("verified", bundle=bundle.name, target=info.target)
    say(f"bundle {bundle.name} checked: release {info.version} for {info.target}")
    run = _Run(options, settings, database, journal, current, info.version)
    return run.go(info)


@dataclass
class _Run:
    """One update from `old` to `new`, and what it needs to put things back."""

    options: Options
    settings: Settings
    database: Path
    journal: Journal
    old: str
    new: str
    backup: Path | None = None
    rows_before_backup: int = 0
    switched: bool = False

    def go(self, info: BundleInfo) -> Outcome:
        say, layout = self.options.say, self.options.layout
        try:
            say(f"installing release {self.new} beside {self.old} ...")
            install_release(info, layout)
        except InstallFailed as exc:
            self.journal.step("failed", step="install", reason=str(exc))
            say(f"update failed: {exc}")
            return Outcome(False, "failed", str(exc), self.old, self.new)
        self.journal.step("installed", release=str(layout.release(self.new)))
        try:
            self._switch_and_check()
        except _Failed as exc:
            return self._roll_back(exc)
        self.journal.step("done", backup=str(self.backup or ""))
        say(f"updated from {self.old} to {self.new}")
        return Outcome(True, "done", f"updated from {self.old} to {self.new}", self.old, self.new)

    def _switch_and_check(self) -> None:
        say, layout, options = self.options.say, self.options.layout, self.options
        roles = checks.running_roles(self.database) if options.restarter.restarts else []
        health_before = checks.ui_problems(self.settings) if "ui" in roles else None
        self._back_up()
        layout.remember_previous(self.old)
        layout.switch(self.new)
        self.switched = True
        self.journal.step("switched", current=str(layout.release(self.new)))
        say(f"{layout.current} now points at {self.new}")
        restarted_at = datetime.now(timezone.utc)
        try:
            options.restarter.restart(self.new)
        except RestartFailed as exc:
            raise _Failed("restart", str(exc)) from None
        self.journal.step("restarted", roles=roles)
        try:
            say(f"running the self-test of {self.new} ...")
            tail = checks.selftest(
                layout.program(self.new), options.config, options.selftest_timeout_s
            )
            self.journal.step("selftest", passed=True, output=tail[-500:])
            if roles:
                checks.wait_for_roles(self.database, roles, restarted_at, options.health_timeout_s)
                self.journal.step("roles", running=roles)
            if health_before is not None:
                checks.wait_for_health(self.settings, health_before, options.health_timeout_s)
                self.journal.step("health", ok=True)
        except checks.CheckFailed as exc:
            raise _Failed("checks", str(exc)) from None

    def _back_up(self) -> None:
        """Copy the database before the new release can migrate it (its roles start after)."""
        self.rows_before_backup = len(self.journal.rows)
        if not self.database.exists():
            self.journal.step("backed_up", backup="", note="no database yet")
            return
        folder = self.database.parent / "backups"
        self.backup = folder / f"pre-update-{self.old}-{self.new}.sqlite3"
        back_up(self.database, self.backup)
        self.journal.step("backed_up", backup=str(self.backup))
        self.options.say(f"database backed up to {self.backup}")

    def _database_back(self) -> None:
        if self.backup is not None:
            restore(self.backup, self.database)
        else:  # there was none before: the one the new release made goes
            for suffix in ("", "-wal", "-shm"):
                self.database.with_name(self.database.name + suffix).unlink(missing_ok=True)

    def _roll_back(self, failure: _Failed) -> Outcome:
        say, layout = self.options.say, self.options.layout
        self.journal.step("failed", step=failure.step, reason=failure.reason)
        say(f"update to {self.new} failed ({failure.step}): {failure.reason}")
        say(f"switching back to {self.old} ...")
        problems = put_back(self.options, self.old, self._database_back)
        # The restore took the database back to before the backup's row: write the rest again.
        self.journal.write_again(self.rows_before_backup)
        layout.remove(self.new)
        message = f"{failure.step} failed: {failure.reason}"
        if problems:
            self.journal.step("rollback_failed", problems=problems)
            say("ROLLBACK INCOMPLETE: " + "; ".join(problems))
            return Outcome(False, "failed", message + "; rollback: " + "; ".join(problems))
        self.journal.step("rolled_back", release=self.old, reason=message)
        say(f"rolled back: {self.old} is current again, the database is as it was")
        return Outcome(False, "rolled_back", message, self.old, self.new)


def put_back(options: Options, version: str, database_back: Callable[[], None]) -> list[str]:
    """Stop the roles (where that can be done), switch `current` back to `version`, put the
    database back (`database_back`), restart the roles; what could not be done, in words
    (empty: all of it). Each part is tried even when one before it failed."""
    problems: list[str] = []
    try:
        options.restarter.stop()
    except RestartFailed as exc:
        problems.append(f"stopping the roles: {exc}")
    try:
        options.layout.switch(version)
    except OSError as exc:
        problems.append(f"switching back to {version}: {exc}")
    try:
        database_back()
    except Exception as exc:
        problems.append(f"putting the database back: {exc}")
    try:
        options.restarter.restart(version)
    except RestartFailed as exc:
        problems.append(f"restarting the roles: {exc}")
    return problems
