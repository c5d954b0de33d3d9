"""`appliance infer FILE...`: the command's arguments.

Registering imports nothing heavy (every `appliance` command builds the whole parser): OpenCV,
ONNX Runtime and the explain room are imported by `cli.inference` when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.cli.common import Subcommands, add_models_dir
from appliance.runtime.backends import BACKENDS, PRECISIONS


def register(sub: Subcommands) -> None:
    """Add `infer` to the CLI's sub-commands."""
    parser = sub.add_parser(
        "infer",
        help="run models on DICOM, PNG or JPEG files; findings as JSON on stdout",
        description="Run the applicable models on DICOM, PNG or JPEG files: findings as JSON "
        "on stdout, overlay PNGs in --out. PNG/JPEG pictures carry no tags: --modality, "
        "--body-part and --view say what they show (DICOM files use their own).",
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument(
        "--model", type=Path, action="append", metavar="PKG", help="package folder (repeatable)"
    )
    add_models_dir(parser)
    parser.add_argument(
        "--backend", choices=BACKENDS, help="default: models.backend of the configuration"
    )
    parser.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        help="default: models.precision of the configuration (auto: as the worker chooses "
        "on this machine); the precision run is printed on stderr",
    )
    parser.add_argument("--threads", type=int, default=0, help="0: one per core")
    parser.add_argument("--cache-dir", type=Path, help="TensorRT engine cache")
    parser.add_argument("--out", type=Path, metavar="DIR", help="write overlay PNGs here")
    parser.add_argument("--explain", choices=("positive", "all", "none"), default="positive")
    parser.add_argument("--modality", default="", help="what a PNG/JPEG shows, e.g. CR")
    parser.add_argument("--body-part", default="", help="e.g. CHEST (PNG/JPEG only)")
    parser.add_argument("--view", default="", help="e.g. PA (PNG/JPEG only)")
    parser.set_defaults(func=cmd_infer)


def cmd_infer(args: argparse.Namespace) -> int:
    from appliance.cli.inference import run_infer

    return run_infer(args)
