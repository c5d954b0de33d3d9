"""`appliance check-config FILE`: validate a configuration without starting anything."""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.cli.common import Subcommands
from appliance.config import load_settings
from appliance.paths import resolve_paths


def register(sub: Subcommands) -> None:
    """Add `check-config` to the CLI's sub-commands."""
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_check_config)


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.file)
    paths = resolve_paths(settings)
    print(
        f"{args.file}: OK (receiver {settings.receiver.ae_title}@{settings.receiver.port}, "
        f"data in {paths.data_dir})"
    )
    return 0
