"""`appliance model ...`: list, verify, import, quantize, validate, profile model packages and
make their golden inputs.

Registering imports nothing heavy: every `appliance` command builds the whole parser, so ONNX
and OpenCV are imported only by the command that runs. The runtime does the work and returns
results; this module parses the arguments and prints them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.cli.common import Subcommands, add_models_dir, models_dirs
from appliance.runtime.errors import PackageError
from appliance.runtime.package import ModelPackage, find_packages, load_package

if TYPE_CHECKING:
    from appliance.runtime.golden import GoldenCheck


def register(sub: Subcommands) -> None:
    """Add the `model` command group to the CLI's sub-commands."""
    parser = sub.add_parser(
        "model", help="list, verify, import, quantize, validate and profile model packages"
    )
    commands = parser.add_subparsers(dest="model_command", metavar="COMMAND", required=True)
    listing = commands.add_parser("list", help="packages in the models folders, and faults")
    add_models_dir(listing)
    listing.set_defaults(func=cmd_model_list)
    verify = commands.add_parser(
        "verify",
        help="check checksums, manifest and ONNX graphs of packages, and that their scores "
        "are probabilities on synthetic pictures",
    )
    verify.add_argument("packages", nargs="+", type=Path, metavar="PKG")
    verify.set_defaults(func=cmd_model_verify)
    importing = commands.add_parser(
        "import", help="check an ONNX file against a manifest and make a package of them"
    )
    importing.add_argument("onnx", type=Path, metavar="MODEL.onnx")
    importing.add_argument("--manifest", type=Path, required=True, metavar="M.yaml")
    importing.add_argument("--out", type=Path, required=True, metavar="DIR")
    importing.add_argument("--int8", type=Path, metavar="MODEL.int8.onnx", help="INT8 graph")
    importing.set_defaults(func=cmd_model_import)
    init = commands.add_parser(
        "init",
        help="write a commented manifest skeleton for an ONNX file (input, outputs, layout)",
        description="Inspect MODEL.onnx and write DIR/manifest.yaml: the input's name, shape, "
        "likely layout (NCHW or NHWC, from where the 1- or 3-channel axis is) and batch, the "
        "outputs with their shapes (scores or mask guessed from the rank), and TODO wherever "
        "the graph cannot tell (labels, thresholds, windowing, normalisation). Fill in every "
        "TODO, then run `appliance model import`.",
    )
    init.add_argument("onnx", type=Path, metavar="MODEL.onnx")
    init.add_argument("--out", type=Path, default=Path("."), metavar="DIR", help="default: .")
    init.set_defaults(func=cmd_model_init)
    golden = commands.add_parser(
        "golden",
        help="(re)make the package's golden inputs and outputs from its FP32 graph, re-seal",
        description="Make golden.npz: three model-ready inputs (from the package's typical "
        "image when it has a quality profile, else seeded patterns) and what the FP32 graph "
        "gives for them on ONNX Runtime's CPU provider; write the manifest's golden section "
        "(tolerances already written are kept; the INT8 one is raised where the package's "
        "own INT8 file needs it) and re-seal the package.",
    )
    golden.add_argument("package", type=Path, metavar="PKG")
    golden.set_defaults(func=cmd_model_golden)
    _add_quantize_command(commands)
    _add_validate_command(commands)
    _add_profile_command(commands)


def _add_quantize_command(commands: Subcommands) -> None:
    quantize = commands.add_parser(
        "quantize",
        help="make the package's INT8 graph, calibrated on this site's images",
        description="Static INT8 QDQ quantization (per-channel QInt8 weights, MinMax ranges) of "
        "the package's FP32 graph, calibrated on the DICOM, PNG and JPEG files in --calibration "
        "as the runtime prepares them. Each variant tried is compared with FP32 on those images "
        "(decision agreement at the manifest thresholds, mask pixel agreement, largest score "
        "difference); the best is written as model.int8.onnx, named as files.int8 in the "
        "manifest and the package is re-sealed. Ties go to reduce_range=yes (safe on AVX2 CPUs "
        "without VNNI).",
    )
    _add_package_and_images(quantize, "--calibration")
    quantize.add_argument("--max-images", type=int, metavar="N", help="use at most N images")
    quantize.add_argument("--variant", choices=("auto", "quint8", "qint8"), default="auto")
    quantize.add_argument("--reduce-range", choices=("auto", "yes", "no"), default="auto")
    _add_threads(quantize)
    quantize.set_defaults(func=cmd_model_quantize)


def _add_validate_command(commands: Subcommands) -> None:
    validate = commands.add_parser(
        "validate",
        help="measure a package on this site's labelled images (AUC, sensitivity, ...)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_VALIDATE_HELP,
    )
    _add_package_and_images(validate, "--dataset")
    validate.add_argument("--labels", type=Path, metavar="CSV", help="default DIR/labels.csv")
    validate.add_argument("--precision", choices=("fp32", "int8", "both"), default="both")
    validate.add_argument(
        "--sensitivity", type=float, default=0.9, help="target sensitivity (default 0.9)"
    )
    validate.add_argument("--out", type=Path, metavar="DIR", help="report folder")
    validate.add_argument(
        "--write",
        action="store_true",
        help="record the measured figures in the manifest's validation section (comments "
        "kept) and re-seal the package",
    )
    _add_threads(validate)
    validate.set_defaults(func=cmd_model_validate)


def _add_profile_command(commands: Subcommands) -> None:
    profile = commands.add_parser(
        "profile",
        help="measure what this model's typical images look like, for the quality check",
        description="Measure the package's input profile on typical DICOM, PNG and JPEG images "
        "in --dataset, prepared as the runtime prepares them: the mean 16 x 16 thumbnail of "
        "their display values (the reference) and each image's correlation with it. "
        "min_correlation is the --percentile of those correlations minus 0.1; images that "
        "match the reference better when turned or flipped are held back as rotated or upside "
        "down. Written as the manifest's quality section; the package is re-sealed. Blank and "
        "unreadable files are skipped with a warning.",
    )
    _add_package_and_images(profile, "--dataset")
    profile.add_argument(
        "--percentile",
        type=float,
        default=1.0,
        metavar="P",
        help="percentile of the typical images' figures the thresholds start from (default 1)",
    )
    profile.set_defaults(func=cmd_model_profile)


def _add_package_and_images(parser: argparse.ArgumentParser, images_option: str) -> None:
    """The package a command changes or measures, and the folder of this site's images."""
    parser.add_argument("package", type=Path, metavar="PKG")
    parser.add_argument(images_option, type=Path, required=True, metavar="DIR")


def _add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (0: all)")


_VALIDATE_HELP = """\
Measure a package on labelled images from this site.

DIR holds DICOM, PNG or JPEG files and labels.csv (or --labels):

  file,pleural_effusion,pneumothorax
  img001.dcm,1,0
  img002.png,0,0

`file` names a file in DIR; every other column is a label name of the manifest's scores
outputs, holding 0 or 1 (not every label needs a column). For a segmentation package the
CSV instead has `file` and `area_mm2` (the true area of the mask label, 0 when absent).

Classification: per label n, positives, AUC with a 95% DeLong interval, sensitivity and
specificity at the manifest threshold (Wilson 95% intervals), the threshold reaching
--sensitivity and the specificity there, and with --precision both the FP32/INT8 decision
agreement and AUC difference. Segmentation: area error and presence decisions
(area > 0). Writes report.json and roc-LABEL.png per label to --out
(default ./validation-NAME-VERSION)."""


def cmd_model_list(args: argparse.Namespace) -> int:
    found = find_packages(models_dirs(args))
    for entry in found:
        if entry.package is not None:
            print(_describe(entry.package))
        else:
            print(f"REFUSED {entry.folder}: {entry.error}")
    if not found:
        print(f"no packages in {', '.join(str(d) for d in models_dirs(args))}")
    return 1 if any(entry.error for entry in found) else 0


def _describe(package: ModelPackage) -> str:
    m = package.manifest
    banner = "  NOT FOR CLINICAL USE" if m.not_for_clinical_use else ""
    return (
        f"{m.name} {m.version}  {m.task}  [{', '.join(package.precisions)}]  "
        f"{package.folder}{banner}"
    )


def cmd_model_verify(args: argparse.Namespace) -> int:
    from appliance.runtime.golden import NO_GOLDENS, verify_goldens
    from appliance.runtime.graph import check_graph
    from appliance.runtime.scorecheck import check_score_ranges

    failed = 0
    for folder in args.packages:
        try:
            package = load_package(folder)
            for precision in package.precisions:
                check_graph(package.model_file(precision), package.manifest)
                check_score_ranges(package, precision)
            checks = verify_goldens(package)
        except PackageError as exc:
            print(f"REFUSED {folder}:\n{exc}", file=sys.stderr)
            failed += 1
            continue
        hashes = ", ".join(f"{p} sha256 {package.model_hash(p)[:16]}" for p in package.precisions)
        goldens = "; ".join(_golden_line(c) for c in checks) or NO_GOLDENS
        print(f"OK {folder}: {package.manifest.identity} ({hashes}); goldens: {goldens}")
    return 1 if failed else 0


def _golden_line(check: GoldenCheck) -> str:
    return f"{check.precision} {check.largest:.2g} <= {check.tolerance:g}"


def cmd_model_golden(args: argparse.Namespace) -> int:
    from appliance.runtime.golden import verify_goldens, write_goldens

    package, _ = write_goldens(args.package)
    checks = "; ".join(_golden_line(c) for c in verify_goldens(package))
    print(f"wrote the golden inputs of {package.folder} ({checks}); re-sealed")
    return 0


def cmd_model_quantize(args: argparse.Namespace) -> int:
    from appliance.runtime import quantize
    from appliance.runtime.golden import write_goldens

    result = quantize.quantize_package(
        args.package,
        args.calibration,
        max_images=args.max_images,
        variants=quantize.candidate_variants(args.variant, args.reduce_range),
        threads=args.threads,
    )
    package, _ = write_goldens(result.package.folder)  # tolerances for the new INT8 file
    written = (
        f"{package.model_file('int8')} (sha256 {package.model_hash('int8')[:16]}...) and "
        "the golden inputs"
    )
    _print_resealed(result.warnings, quantize.format_table(result), written, package)
    return 0


def cmd_model_profile(args: argparse.Namespace) -> int:
    from appliance.runtime import quality

    result = quality.profile_package(args.package, args.dataset, percentile=args.percentile)
    package = result.package
    written = f"the quality section of {package.folder / 'manifest.yaml'}"
    _print_resealed(result.warnings, quality.format_report(result), written, package)
    return 0


def _print_resealed(
    warnings: Sequence[str], table: str, written: str, package: ModelPackage
) -> None:
    """What a command that changed a package prints: its warnings, its table, what it wrote."""
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(table)
    print(f"wrote {written}; {package.manifest.identity} re-sealed")


def cmd_model_validate(args: argparse.Namespace) -> int:
    from appliance.runtime.validation import format_report, validate

    out = args.out
    if out is None:
        package = load_package(args.package)
        out = Path(f"validation-{package.name}-{package.version}")
    report = validate(
        args.package,
        args.dataset,
        labels_csv=args.labels,
        precision=args.precision,
        target=args.sensitivity,
        out=out,
        threads=args.threads,
    )
    print(format_report(report))
    print(
        f"wrote {out / 'report.json'}"
        + (f" and {len(report['plots'])} ROC plot(s)" if report["plots"] else "")
    )
    if args.write:
        from appliance.runtime.validation.record import write_figures

        package = write_figures(args.package, report)
        print(
            f"wrote the validation section of {package.folder / 'manifest.yaml'}; "
            f"{package.manifest.identity} re-sealed"
        )
    return 0


def cmd_model_init(args: argparse.Namespace) -> int:
    from appliance.runtime.skeleton import write_skeleton

    target, guess = write_skeleton(args.onnx, args.out)
    layout = guess.layout or "unknown (TODO)"
    print(f"wrote {target}: input {guess.input_name!r}, layout {layout}; fill in every TODO")
    return 0


def cmd_model_import(args: argparse.Namespace) -> int:
    from appliance.runtime.importing import import_model

    package = import_model(args.onnx, args.manifest, args.out, args.int8)
    print(f"imported {package.manifest.identity} into {package.folder}")
    return 0
