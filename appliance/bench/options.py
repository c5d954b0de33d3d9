"""Command-line options of a benchmark from one table: flag, options field, type, metavar, help.

Each benchmark keeps its defaults in its options dataclass; the table turns them into argparse
options whose help shows the default, and reads the parsed values back by field name.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

OptionRow = tuple[str, str, type, str, str]


def add_options(parser: argparse.ArgumentParser, rows: Sequence[OptionRow], defaults: Any) -> None:
    """One option per row, defaulting to the same-named field of `defaults`."""
    for flag, name, kind, metavar, text in rows:
        default = getattr(defaults, name)
        parser.add_argument(
            flag, type=kind, default=default, metavar=metavar, help=f"{text} (default {default})"
        )


def option_values(args: argparse.Namespace, rows: Sequence[OptionRow]) -> dict[str, Any]:
    """The parsed values by options field name."""
    return {name: getattr(args, flag[2:].replace("-", "_")) for flag, name, *_ in rows}
