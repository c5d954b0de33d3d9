"""The wiring every benchmark command shares: its parser, its work folder, its reports and
its progress lines, so that a bench module holds only what it measures."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO, TypeAlias, TypeVar

from appliance.bench.harness.options import OptionRow, add_options

Report = TypeVar("Report")
# Quoted: argparse's class is generic only to the type checker.
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_command(
    commands: SubParsers,
    name: str,
    summary: str,
    doc: str | None,
    rows: Sequence[OptionRow] = (),
    defaults: Any = None,
) -> argparse.ArgumentParser:
    """The `bench NAME` parser: `summary` in the list of benchmarks, the module docstring `doc`
    (less its first paragraph) as its description, and one option per row of `rows`."""
    parser = commands.add_parser(
        name, help=summary, description=doc.split("\n\n", 1)[1] if doc else None
    )
    add_options(parser, rows, defaults)
    return parser


def add_outputs(parser: argparse.ArgumentParser, workdir_help: str, *, json_report: bool) -> None:
    """--json (when the report has a JSON form) and --workdir, last among the options."""
    if json_report:
        parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report here")
    parser.add_argument("--workdir", type=Path, metavar="DIR", help=workdir_help)


def run_in_folder(
    name: str,
    parent: Path | None,
    measure: Callable[[Path], Report],
    describe: Callable[[Report], str],
    out: TextIO,
) -> Report:
    """Measure in a work folder (see `work_folder`), then print the report to `out`."""
    with work_folder(name, parent) as folder:
        report = measure(folder)
    out.write(describe(report))
    out.flush()
    return report


@contextmanager
def work_folder(name: str, parent: Path | None) -> Iterator[Path]:
    """A new folder under `parent`, kept (and said where); or a temporary one, removed at the
    end. Each run gets a fresh folder, so that runs never answer each other's files."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
        progress(name, f"working in {path} (kept)")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=f"appliance-bench-{name}-") as folder:
        yield Path(folder)


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    """The report as JSON at `path`, when one was asked for."""
    if path is not None:
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def progress(name: str, message: str) -> None:
    """A progress line on stderr, so that stdout holds only the report."""
    print(f"bench {name}: {message}", file=sys.stderr, flush=True)
