"""The wiring every benchmark command shares: its parser and handler (`Bench`), its work
folder, its reports and its progress lines, so that a bench module holds only what it
measures."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generic, TextIO, TypeAlias, TypeVar

from appliance.bench.harness.options import OptionRow, add_options, option_values

Options = TypeVar("Options")
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


def report_json(report: Any) -> dict[str, Any]:
    """A report dataclass as JSON-ready data, its paths (work folder, input file) as text."""
    return asdict(report, dict_factory=_paths_as_text)


def _paths_as_text(items: list[tuple[str, Any]]) -> dict[str, Any]:
    return {key: str(value) if isinstance(value, Path) else value for key, value in items}


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    """The report as JSON at `path`, when one was asked for."""
    if path is not None:
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def progress(name: str, message: str) -> None:
    """A progress line on stderr, so that stdout holds only the report."""
    print(f"bench {name}: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Bench(Generic[Options, Report]):
    """One `bench NAME` command: its parser, its handler and its run, the same for every
    benchmark. A bench module declares one and keeps only what it measures and how it says it.

    The parser takes the rows' options, then what `more_options` adds (the options that are not a
    row, named again in `more_fields` so the handler reads them back), then --json (when the
    report has a JSON form) and --workdir (when the bench has `workdir_help`).
    """

    name: str
    summary: str
    doc: str | None
    options: Callable[..., Options]
    rows: Sequence[OptionRow]
    measure: Callable[[Options, Path], Report]
    describe: Callable[[Report], str]
    workdir_help: str | None = None
    to_json: Callable[[Report], dict[str, Any]] | None = None
    more_options: Callable[[argparse.ArgumentParser, Options], None] | None = None
    more_fields: tuple[str, ...] = ()
    check: Callable[[], None] | None = None  # what must hold before anything starts

    def add_parser(self, commands: SubParsers) -> None:
        """Add this benchmark to the `bench` sub-commands."""
        defaults = self.options()
        parser = add_command(commands, self.name, self.summary, self.doc, self.rows, defaults)
        if self.more_options is not None:
            self.more_options(parser, defaults)
        if self.workdir_help is not None:
            add_outputs(parser, self.workdir_help, json_report=self.to_json is not None)
        parser.set_defaults(func=self.main)

    def main(self, args: argparse.Namespace) -> int:
        """The handler: print the report, write it as JSON if asked, return 0. A run that goes
        wrong raises BenchError, which the CLI reports like any ApplianceError."""
        report = self.run(self.options_of(args), sys.stdout)
        if self.to_json is not None:
            write_json(args.json, self.to_json(report))
        return 0

    def options_of(self, args: argparse.Namespace) -> Options:
        """The options dataclass from the parsed command line (it checks itself)."""
        names = (*self.more_fields, *(("workdir",) if self.workdir_help is not None else ()))
        given = {name: getattr(args, name) for name in names}
        return self.options(**option_values(args, self.rows), **given)

    def run(self, options: Options, out: TextIO) -> Report:
        """Run the whole benchmark, print its report to `out` and return it. Options without
        a `workdir` field measure in a temporary folder."""
        if self.check is not None:
            self.check()
        workdir: Path | None = getattr(options, "workdir", None)
        return run_in_folder(
            self.name, workdir, lambda folder: self.measure(options, folder), self.describe, out
        )
