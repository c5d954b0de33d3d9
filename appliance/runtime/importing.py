"""`appliance model import`: make a package from an ONNX file and a manifest a site was given.

The graph is checked against the manifest before anything is written, the package is assembled
in a hidden sibling folder, run on synthetic pictures (scores outside [0, 1] are refused: see
`scorecheck`) and renamed into place, so a failed import leaves nothing behind that
`find_packages` could pick up.

Golden inputs: a manifest with a `golden` section brings its file (named by `golden.file`,
beside the manifest), and the package must reproduce it within its tolerances at every
precision it has; a manifest without one gets golden inputs made here from the FP32 graph.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from appliance.runtime.errors import PackageError
from appliance.runtime.golden import verify_goldens, write_goldens
from appliance.runtime.graph import check_graph
from appliance.runtime.manifest import MANIFEST_NAME, Manifest, load_manifest
from appliance.runtime.package import ModelPackage, load_package, write_sums
from appliance.runtime.scorecheck import check_score_ranges


def import_model(
    onnx_file: Path, manifest_file: Path, out: Path, int8_file: Path | None = None
) -> ModelPackage:
    """Check, copy and seal a new package in `out` (which must not exist or be empty)."""
    manifest = load_manifest(manifest_file)
    sources = _sources(manifest, manifest_file, onnx_file, int8_file)
    graphs = list(sources.values())
    if manifest.golden is not None:  # the maker's golden inputs, beside the manifest
        sources[manifest.golden.file] = manifest_file.parent / manifest.golden.file
    for source in sources.values():
        if not source.is_file():
            raise PackageError(f"{source}: no such file" + _golden_hint(manifest, source))
    for source in graphs:
        check_graph(source, manifest)
    _check_target(out)
    stage = out.parent / f".{out.name}.importing-{os.getpid()}"
    _remove(stage)  # left by an import that was killed
    stage.mkdir(parents=True)
    try:
        shutil.copyfile(manifest_file, stage / MANIFEST_NAME)
        for name, source in sources.items():
            shutil.copyfile(source, stage / name)
        write_sums(stage, [MANIFEST_NAME, *sources])
        staged = load_package(stage)
        for precision in staged.precisions:  # logits declared as probabilities are refused
            try:
                check_score_ranges(staged, precision)
            except PackageError as exc:  # named by the admin's manifest, not the hidden stage
                raise PackageError(str(exc).replace(str(stage), str(manifest_file), 1)) from exc
        try:
            _goldens(staged)
        except PackageError as exc:
            raise PackageError(str(exc).replace(str(stage), str(manifest_file.parent))) from exc
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(stage, out)
    finally:
        _remove(stage)
    return load_package(out)


def _goldens(staged: ModelPackage) -> None:
    """The goldens (made here when the manifest brought none) must come out at every
    precision."""
    if staged.manifest.golden is None:
        staged, _ = write_goldens(staged.folder)
    verify_goldens(staged)


def _golden_hint(manifest: Manifest, source: Path) -> str:
    if manifest.golden is None or source.name != manifest.golden.file:
        return ""
    return (
        " (golden.file: the golden inputs must lie beside the manifest; remove the golden "
        "section to have them made from the FP32 graph)"
    )


def _remove(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)


def _sources(
    manifest: Manifest, manifest_file: Path, onnx_file: Path, int8_file: Path | None
) -> dict[str, Path]:
    """File name in the package -> file to copy there; the INT8 file exactly when named."""
    if (manifest.files.int8 is None) != (int8_file is None):
        raise PackageError(
            f"{manifest_file}: files.int8 is {manifest.files.int8!r} but "
            + ("no INT8 file was given" if int8_file is None else f"{int8_file} was given")
        )
    sources = {manifest.files.fp32: onnx_file}
    if manifest.files.int8 is not None and int8_file is not None:
        sources[manifest.files.int8] = int8_file
    return sources


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise PackageError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise PackageError(f"{out}: already exists and is not empty; import into a new folder")
