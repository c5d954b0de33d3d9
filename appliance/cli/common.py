"""What several command groups share: the sub-command table's type, loading the settings
named by `--config`, and the `--models-dir` option."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeAlias

from appliance.config import Settings, load_settings
from appliance.logs import setup_logging
from appliance.runtime.package import DEFAULT_MODELS_DIR

# A string: argparse's action class cannot be subscripted at run time before Python 3.12.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings of `--config` (built-in defaults without it), with logging set up."""
    settings = load_settings(args.config)
    setup_logging(settings.logging.level)
    return settings


def add_models_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models-dir",
        type=Path,
        action="append",
        metavar="DIR",
        help=f"folder of packages (repeatable; default {DEFAULT_MODELS_DIR})",
    )


def models_dirs(args: argparse.Namespace) -> list[Path]:
    return list(args.models_dir or [DEFAULT_MODELS_DIR])
