"""Measure our code and its reference peer side by side in one run, and print the ratios.

Benchmarks print figures and targets; they fail only when a run itself goes wrong (a peer does
not start, a file does not arrive), never because a figure is below its target.
"""

from __future__ import annotations

import argparse

from appliance.bench import capture, e2e, inference, ingest, outputs, ui


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `bench` command and its benchmarks to the CLI's sub-commands."""
    parser = subparsers.add_parser(
        "bench",
        help="measure speed against a reference peer",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    ingest.add_parser(benchmarks)
    inference.add_parser(benchmarks)
    e2e.add_parser(benchmarks)
    ui.add_parser(benchmarks)
    capture.add_parser(benchmarks)
    outputs.add_parser(benchmarks)
