"""`appliance infer FILE...`: run the applicable models on DICOM, PNG or JPEG files.

Findings go to stdout as one JSON document; overlay PNGs go to `--out`. Each file is routed to
the packages whose `applies_to` rules match it. DICOM files use their own tags; PNG and JPEG
pictures have none, so `--modality`, `--body-part` and `--view` say what they show, and a
picture without them reaches only models whose rules for them are empty. A file that cannot be
read is reported (stderr and JSON) and the others still run; the exit status is then 1.

Overlay files are named by the file's position on the command line, the model and the label,
never by anything read from the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.cli.common import models_dirs, settings_from
from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.explain import explain, mask_overlay_png, overlay_png
from appliance.imaging import DecodedImage, DecodeError, decode
from appliance.paths import resolve_paths
from appliance.runtime.backends import BackendOptions
from appliance.runtime.engine import Model
from appliance.runtime.errors import InputError
from appliance.runtime.findings import ModelResult
from appliance.runtime.package import ModelPackage, find_packages, load_package
from appliance.runtime.precision import choose_precision
from appliance.runtime.preprocess import ImageInput, read_picture
from appliance.runtime.quality import check_quality
from appliance.runtime.routing import ImageTags, Route, dicom_tags, route

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"


@dataclass
class _Models:
    """Packages to route to, each loaded on its backend the first time an image needs it."""

    packages: list[ModelPackage]
    options: BackendOptions
    auto: bool = False  # the precision was chosen by `auto`, not named
    loaded: dict[str, Model] = field(default_factory=dict)

    def get(self, package: ModelPackage) -> Model:
        key = package.manifest.identity
        if key not in self.loaded:
            options = self.options
            if self.auto and options.precision == "int8" and "int8" not in package.precisions:
                # as the worker does; a named int8 makes Model.open refuse the package instead
                print(f"appliance: {key} has no INT8 file: it runs FP32", file=sys.stderr)
                options = dataclasses.replace(options, precision="fp32")
            self.loaded[key] = Model.open(package, options)
        return self.loaded[key]

    def close(self) -> None:
        for model in self.loaded.values():
            model.close()


def run_infer(args: argparse.Namespace) -> int:
    """Run `appliance infer` (arguments: see `cli.infer.register`)."""
    settings = settings_from(args, announce=False)  # the box's config, folders and logging
    wanted = args.precision or settings.models.precision
    models = _Models(_packages(args), _options(args, settings), auto=wanted == "auto")
    if args.out is not None:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # e.g. --out names an existing file
            raise ApplianceError(f"--out {args.out}: cannot use it as a folder: {exc}") from exc
    images, failed = [], 0
    try:
        for number, path in enumerate(args.files, start=1):
            try:
                images.append(_infer_file(number, path, models, args))
            except (DecodeError, InputError) as exc:
                print(f"appliance: {path}: {exc}", file=sys.stderr)
                images.append({"file": str(path), "error": str(exc)})
                failed += 1
    finally:
        models.close()
    json.dump({"images": images}, sys.stdout, indent=2)
    print()
    return 1 if failed else 0


def _packages(args: argparse.Namespace) -> list[ModelPackage]:
    if args.model:
        return [load_package(folder) for folder in args.model]
    packages = []
    for entry in find_packages(models_dirs(args)):
        if entry.package is None:
            print(f"appliance: skipping {entry.folder}: {entry.error}", file=sys.stderr)
        else:
            packages.append(entry.package)
    if not packages:
        folders = ", ".join(str(d) for d in models_dirs(args))
        raise ApplianceError(f"no usable model packages in {folders}; give --model PKG")
    return packages


def _options(args: argparse.Namespace, settings: Settings) -> BackendOptions:
    """The backend and precision the worker would use (the configuration's `models.*`, with
    `auto` resolved for this machine) unless the arguments say otherwise; printed on stderr,
    since scores differ between precisions."""
    backend = args.backend or settings.models.backend
    choice = choose_precision(args.precision or settings.models.precision, backend)
    reason = "set by --precision" if args.precision not in (None, "auto") else choice.reason
    print(f"appliance: {backend} backend, precision {choice.precision} ({reason})", file=sys.stderr)
    cache = args.cache_dir
    if cache is None and backend.startswith("tensorrt"):
        cache = resolve_paths(settings).cache_dir / "engines"
    return BackendOptions(
        backend=backend, precision=choice.precision, threads=args.threads, cache_dir=cache
    )


Routes = list[tuple[ModelPackage, Route]]


def _infer_file(
    number: int, path: Path, models: _Models, args: argparse.Namespace
) -> dict[str, Any]:
    kind = _kind(path)
    image, routes = _load(path, kind, models.packages, args)
    entry: dict[str, Any] = {"file": str(path), "kind": kind, **_describe(image)}
    entry["results"] = []
    entry["not_applied"] = [
        {"model": package.name, "version": package.version, "reasons": matched.reasons}
        for package, matched in routes
        if not matched.applies
    ]
    for package, matched in routes:
        if not matched.applies:
            continue
        model = models.get(package)
        for result in model.infer([image]):
            entry["results"].append(_described(number, model, result, matched.reasons, args))
    return entry


def _described(
    number: int, model: Model, result: ModelResult, reasons: Sequence[str], args: Any
) -> dict[str, Any]:
    """A result as the worker would keep it: a frame that fails the package's plausibility
    check is held back with the reason, never scored."""
    check = check_quality(model.manifest, result.prepared, result.position)
    if not check.passed:
        return {
            **model.provenance.to_dict(),
            "frame": result.frame,
            "held_back": list(check.reasons),
            "quality": check.statistics,
        }
    described = result.to_dict()
    described["notes"] += [*reasons, *check.notes]
    described["quality"] = check.statistics
    described.update(_explain(number, model, result, args))
    return described


def _kind(path: Path) -> str:
    """ "dicom", "png" or "jpeg", from the file's first bytes (never from its name)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}") from exc
    if head.startswith(_PNG):
        return "png"
    return "jpeg" if head.startswith(_JPEG) else "dicom"


def _load(
    path: Path, kind: str, packages: list[ModelPackage], args: argparse.Namespace
) -> tuple[ImageInput, Routes]:
    """The pixels and each package's route. A DICOM file is routed on its header first, so
    of a cine loop only the first frame is decoded when that is all the models use."""
    if kind == "dicom":
        routes = _routes(packages, dicom_tags(path))
        needed = [package.manifest.input.frames for package, matched in routes if matched.applies]
        first_only = all(frames == "first" for frames in needed)
        return decode(path, index=0 if first_only else None), routes
    picture = read_picture(path)
    tags = ImageTags(
        modality=args.modality,
        body_part=args.body_part,
        view=args.view,
        photometric="RGB" if picture.ndim == 3 else "MONOCHROME2",
    )
    return picture, _routes(packages, tags)


def _routes(packages: list[ModelPackage], tags: ImageTags) -> Routes:
    return [(package, route(package.manifest.applies_to, tags)) for package in packages]


def _describe(image: ImageInput) -> dict[str, Any]:
    if isinstance(image, DecodedImage):
        return {
            "rows": image.rows,
            "columns": image.columns,
            "frames": image.frame_count,
            "spacing_mm": None if image.spacing_mm is None else list(image.spacing_mm),
            "spacing_source": image.spacing_source.value,
            "notes": list(image.notes),
        }
    return {"rows": image.shape[0], "columns": image.shape[1], "frames": 1, "spacing_mm": None}


def _explain(
    number: int, model: Model, result: ModelResult, args: argparse.Namespace
) -> dict[str, Any]:
    """Heatmaps (and mask overlays) for one result; PNGs written when --out is given."""
    stem = f"{number:03d}-{model.package.name}-f{result.frame}"
    heatmaps = [] if args.explain == "none" else explain(model, result, args.explain)
    overlays = []
    for heatmap in heatmaps:
        if args.out is not None:
            target = args.out / f"{stem}-{heatmap.label}-{heatmap.method}.png"
            target.write_bytes(overlay_png(result.display, heatmap.values))
            overlays.append(str(target))
    masks = [m.mask for m in result.masks if m.positive]
    if masks and args.out is not None:
        target = args.out / f"{stem}-masks.png"
        target.write_bytes(mask_overlay_png(result.display, masks))
        overlays.append(str(target))
    return {"heatmaps": [h.to_dict() for h in heatmaps], "overlays": overlays}
