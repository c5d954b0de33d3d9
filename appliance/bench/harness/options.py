"""Command-line options of a benchmark from one table: flag, options field, type, metavar, help;
and the checks of an options dataclass.

Each benchmark keeps its defaults in its options dataclass; the table turns them into argparse
options whose help shows the default, and reads the parsed values back by field name.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from appliance.bench.harness import BenchError

# flag, options field, what turns the text into a value, metavar, help
OptionRow = tuple[str, str, Callable[[str], Any], str, str]


def add_options(parser: argparse.ArgumentParser, rows: Sequence[OptionRow], defaults: Any) -> None:
    """One option per row, defaulting to the same-named field of `defaults`."""
    for flag, name, kind, metavar, text in rows:
        default = getattr(defaults, name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(
            flag, type=kind, default=default, metavar=metavar, help=f"{text} (default {shown})"
        )


def option_values(args: argparse.Namespace, rows: Sequence[OptionRow]) -> dict[str, Any]:
    """The parsed values by options field name."""
    return {name: getattr(args, flag[2:].replace("-", "_")) for flag, name, *_ in rows}


def number_list(text: str, what: str) -> tuple[int, ...]:
    """A comma-separated list of whole numbers, each at least 1 (an option's type)."""
    try:
        numbers = tuple(int(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers") from exc
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every {what} must be at least 1")
    return numbers


def check_options(*rules: tuple[bool, str]) -> None:
    """BenchError with the message of the first rule that does not hold. An options dataclass
    checks itself with this, so that the API refuses what the command line does."""
    for holds, message in rules:
        if not holds:
            raise BenchError(message)
