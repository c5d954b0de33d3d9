"""The `appliance` command: parse arguments, load the configuration, start what was asked.

One module per command group; each adds its sub-commands with `register`. Every command
builds the whole parser, so registering imports nothing heavy: a command's libraries are
imported when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from appliance import __version__, bench
from appliance.cli import (
    backup,
    capture,
    config,
    demo,
    dicom,
    infer,
    model,
    roles,
    selftest,
    status,
)
from appliance.cli import export as export_cmd
from appliance.cli import release as release_cmd
from appliance.cli.common import find_config
from appliance.errors import ApplianceError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance", description="Edge inference appliance for clinics (offline)."
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML configuration file (default: $APPLIANCE_CONFIG, else "
        "/etc/appliance/appliance.yaml when it exists, else the built-in defaults)",
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    roles.register(sub)  # run, receiver, worker, ui
    config.register(sub)  # check-config
    dicom.register(sub)  # send, echo
    status.register(sub)
    bench.register(sub)
    model.register(sub)
    infer.register(sub)
    selftest.register(sub)  # selftest
    backup.register(sub)  # backup, restore, retention
    release_cmd.register(sub)  # update, rollback, releases
    capture.register(sub)  # capture probe
    demo.register(sub)  # demo-data
    export_cmd.register(sub)  # export (a study to a USB stick)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.config = find_config(args.config)  # every command sees the file that is used
    try:
        code: int = args.func(args)
    except ApplianceError as exc:
        print(f"appliance: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
