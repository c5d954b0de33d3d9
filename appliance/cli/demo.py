"""`appliance demo-data DIR`: write synthetic DICOM images to try the appliance with.

The arguments are defined here rather than in `appliance.phantoms`, whose import loads
OpenCV: every command parses these definitions, only demo-data needs the phantoms.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.cli.common import Subcommands


def register(sub: Subcommands) -> None:
    """Add `demo-data` to the CLI's sub-commands."""
    parser = sub.add_parser(
        "demo-data",
        help="write synthetic DICOM images (chest X-ray, ultrasound) to try the appliance",
        description="Write a small set of synthetic DICOM files with known truth into DIR "
        "(created; refused when not empty unless --force), with index.csv and README.txt.",
    )
    parser.add_argument("folder", type=Path, metavar="DIR")
    parser.add_argument(
        "--chest-rows", type=int, default=2048, help="radiograph height (default 2048)"
    )
    parser.add_argument("--seed", type=int, default=1, help="which set to draw (default 1)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty DIR")
    parser.set_defaults(func=cmd_demo_data)


def cmd_demo_data(args: argparse.Namespace) -> int:
    from appliance.phantoms.demo import send_hint, write_demo_data

    items = write_demo_data(
        args.folder, chest_rows=args.chest_rows, seed=args.seed, overwrite=args.force
    )
    for item in items:
        print(f"{item.path}  {item.description}  [{item.truth_text}]")
    print(f"{len(items)} files, index.csv and README.txt in {args.folder}; send them with:")
    print(f"  {send_hint(args.folder)}")
    return 0
