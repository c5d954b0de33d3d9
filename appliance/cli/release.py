"""`appliance update`, `rollback` and `releases`: the box's releases (appliance.release)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.cli.common import BOX_CONFIG, Subcommands, with_box_folders
from appliance.config import load_settings
from appliance.errors import ApplianceError
from appliance.logs import setup_logging

if TYPE_CHECKING:
    from appliance.release.update import Options


def register(sub: Subcommands) -> None:
    """Add update, rollback and releases to the CLI's sub-commands."""
    update = sub.add_parser(
        "update",
        help="update the box to a signed release bundle, rolling back on any failure",
        description="Check the bundle's signature and checksums, install it beside the running "
        "release, back up the database, switch /opt/appliance/current, restart the roles, run "
        "the new release's self-test and health checks; on any failure switch back and restore "
        "the database. Every step is audited.",
    )
    update.add_argument("bundle", type=Path, nargs="?", help="appliance-VERSION-TARGET.bundle")
    update.add_argument(
        "--incoming",
        action="store_true",
        help="take the bundle uploaded on the admin's update page (DATA/updates/incoming/)",
    )
    update.add_argument(
        "--selftest-timeout", type=float, default=900.0, metavar="S", help="default 900 s"
    )
    update.add_argument(
        "--health-timeout",
        type=float,
        default=180.0,
        metavar="S",
        help="how long the restarted roles have to report running (default 180 s)",
    )
    _common(update)
    update.set_defaults(func=cmd_update)

    rollback = sub.add_parser(
        "rollback", help="go back to the release that was current before the last update"
    )
    rollback.add_argument(
        "--restore-backup",
        action="store_true",
        help="also restore the database backed up before the update, when the newer release "
        "changed its layout (what was recorded since then is no longer listed)",
    )
    _common(rollback)
    rollback.set_defaults(func=cmd_rollback)

    releases = sub.add_parser("releases", help="list the installed releases and the current one")
    releases.add_argument("--root", type=Path, default=Path("/"), help="the box's root folder")
    releases.set_defaults(func=cmd_releases)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="the box's root folder (default /; a throwaway folder for a test install)",
    )
    how = parser.add_mutually_exclusive_group()
    how.add_argument(
        "--no-restart", action="store_true", help="do not restart the roles (start them yourself)"
    )
    how.add_argument(
        "--restart-command",
        metavar="CMD",
        help="restart the roles with this shell command instead of systemctl (boxes run by "
        "`appliance run`, tests); it gets APPLIANCE_RELEASE=VERSION",
    )


def cmd_update(args: argparse.Namespace) -> int:
    from appliance.paths import resolve_paths
    from appliance.release.incoming import take_incoming
    from appliance.release.update import update

    options = _options(args)
    options.selftest_timeout_s = args.selftest_timeout
    options.health_timeout_s = args.health_timeout
    if args.incoming == (args.bundle is not None):
        raise ApplianceError("name a bundle, or --incoming for one uploaded on the update page")
    bundle = args.bundle
    if args.incoming:
        bundle = take_incoming(resolve_paths(options.settings).data_dir)
        if bundle is None:
            print("appliance: no bundle waits in the update folder", file=sys.stderr)
            return 0
    try:
        outcome = update(bundle, options)
    finally:
        if args.incoming:
            bundle.unlink(missing_ok=True)  # the outcome is in the audit trail
    if outcome.ok:
        return 0
    return 2 if outcome.state == "refused" else 1


def cmd_rollback(args: argparse.Namespace) -> int:
    from appliance.release.rollback import roll_back

    options = _options(args)
    done = roll_back(options, restore_backup=args.restore_backup)
    restored = f", database restored from {done.backup}" if done.backup else ""
    print(f"rolled back from {done.current} to {done.previous}{restored}")
    return 0


def cmd_releases(args: argparse.Namespace) -> int:
    from appliance.release.layout import Layout

    layout = Layout(args.root)
    current, previous = layout.current_version(), layout.previous_version()
    installed = layout.installed()
    if not installed:
        print(f"no release is installed in {layout.releases}")
        return 1
    for version in installed:
        mark = " (current)" if version == current else " (previous)" if version == previous else ""
        print(f"{version}{mark}")
    return 0


def _options(args: argparse.Namespace) -> Options:
    """The update's settings: the configuration below --root (a test box) unless --config named
    another, and how the roles are restarted (systemd where it runs the box)."""
    from appliance.release.layout import Layout
    from appliance.release.restart import CommandRestart, NoRestart, Restarter, SystemdRestart
    from appliance.release.update import Options

    layout = Layout(args.root)
    config: Path | None = args.config
    if layout.root != Path("/") and config in (None, BOX_CONFIG) and layout.config.is_file():
        config = layout.config
    settings = with_box_folders(load_settings(config), config)
    setup_logging(settings.logging.level)
    restarter: Restarter
    if args.no_restart:
        restarter = NoRestart()
    elif args.restart_command:
        restarter = CommandRestart(args.restart_command)
    elif layout.root == Path("/") and os.path.isdir("/run/systemd/system"):
        restarter = SystemdRestart()
    else:
        raise ApplianceError(
            "systemd does not run this box: say how the roles restart (--restart-command CMD) "
            "or that they are not to be (--no-restart)"
        )
    return Options(settings=settings, config=config, layout=layout, restarter=restarter)
