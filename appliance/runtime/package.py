"""A model package on disk: manifest.yaml, its ONNX files and SHA256SUMS, verified as a whole.

A package is refused, never half-loaded: SHA256SUMS must list manifest.yaml and every file the
manifest names, each listed file must exist and match, and the manifest must be valid. The
sha256 of the ONNX file actually run is the model hash every finding records.

An INT8 file (or the golden inputs, `golden.file`) is added to an existing package by writing
it into the folder, naming it in the manifest and calling `seal_package`, which rewrites
SHA256SUMS.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from appliance.paths import write_atomically
from appliance.runtime.errors import PackageError
from appliance.runtime.manifest import MANIFEST_NAME, Manifest, load_manifest

SUMS_NAME = "SHA256SUMS"


def _bundled_models() -> Path:
    """The demo packages shipped with the software, used when no models folder is configured:
    beside the source in a checkout, beside the environment in an installed release
    (/opt/appliance/releases/VERSION/models next to .../venv)."""
    checkout = Path(__file__).resolve().parents[2] / "models"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix).resolve().parent / "models"


DEFAULT_MODELS_DIR = _bundled_models()
FilePrecision = Literal["fp32", "int8"]

_SUM_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)\Z")
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelPackage:
    """A verified package: its folder, manifest and the sha256 of every listed file."""

    folder: Path
    manifest: Manifest
    checksums: Mapping[str, str]

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def precisions(self) -> tuple[FilePrecision, ...]:
        """The precisions this package has a file for: fp32 always, int8 when quantized."""
        return ("fp32",) if self.manifest.files.int8 is None else ("fp32", "int8")

    def file_name(self, precision: FilePrecision = "fp32") -> str:
        name = self.manifest.files.fp32 if precision == "fp32" else self.manifest.files.int8
        if name is None:
            raise PackageError(
                f"{self.folder}: {self.manifest.identity} has no {precision} file "
                f"(files.{precision} is not set; it has {', '.join(self.precisions)})"
            )
        return name

    def model_file(self, precision: FilePrecision = "fp32") -> Path:
        return self.folder / self.file_name(precision)

    def model_hash(self, precision: FilePrecision = "fp32") -> str:
        """sha256 (hex) of the ONNX file for `precision`, as verified when the package loaded."""
        return self.checksums[self.file_name(precision)]


@dataclass(frozen=True)
class FoundPackage:
    """One folder seen by `find_packages`: the package, or why it was refused."""

    folder: Path
    package: ModelPackage | None = None
    error: str | None = None


def load_package(folder: Path) -> ModelPackage:
    """Verify and load the package in `folder`; PackageError names the file or field at fault."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PackageError(f"{folder}: not a folder")
    sums = read_sums(folder / SUMS_NAME)
    if MANIFEST_NAME not in sums:
        raise PackageError(f"{folder / SUMS_NAME}: does not list {MANIFEST_NAME}")
    for name, expected in sums.items():
        _verify_file(folder, name, expected)
    manifest = load_manifest(folder / MANIFEST_NAME)
    for key, name in _named_files(manifest).items():
        if name not in sums:
            raise PackageError(
                f"{folder / MANIFEST_NAME}: {key}: {name!r} is not listed in {SUMS_NAME}"
            )
    return ModelPackage(folder=folder, manifest=manifest, checksums=MappingProxyType(dict(sums)))


def read_sums(path: Path) -> dict[str, str]:
    """SHA256SUMS in `sha256sum` format: file name -> lowercase hex digest."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise PackageError(f"{path}: missing (every package needs its checksums)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise PackageError(f"{path}: cannot read: {exc}") from exc
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _SUM_LINE.match(line)
        if match is None:
            raise PackageError(f"{path}:{number}: not '<sha256>  <file name>': {line[:80]!r}")
        digest, name = match.group(1).lower(), match.group(2)
        if not _PLAIN_NAME.match(name):
            raise PackageError(f"{path}:{number}: {name!r} is not a plain file name")
        if name in sums:
            raise PackageError(f"{path}:{number}: {name!r} is listed twice")
        sums[name] = digest
    return sums


def _verify_file(folder: Path, name: str, expected: str) -> None:
    path = folder / name
    if not path.is_file():
        raise PackageError(f"{path}: listed in {SUMS_NAME} but missing")
    actual = sha256_of(path)
    if actual != expected:
        raise PackageError(
            f"{path}: checksum mismatch (SHA256SUMS says {expected[:16]}..., "
            f"the file is {actual[:16]}...): the file is corrupt or was changed"
        )


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so a large model does not sit in memory twice."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise PackageError(f"{path}: cannot read: {exc.strerror}") from exc
    return digest.hexdigest()


def _named_files(manifest: Manifest) -> dict[str, str]:
    """The manifest's field (dotted) -> the package file it names."""
    named = {"files.fp32": manifest.files.fp32}
    if manifest.files.int8 is not None:
        named["files.int8"] = manifest.files.int8
    if manifest.golden is not None:
        named["golden.file"] = manifest.golden.file
    return named


def write_sums(folder: Path, names: Iterable[str]) -> Path:
    """Write SHA256SUMS for `names` in `folder` (atomically: a reader never sees half a file)."""
    lines = [f"{sha256_of(folder / name)}  {name}\n" for name in sorted(set(names))]
    target = folder / SUMS_NAME
    write_atomically(target, "".join(lines).encode("utf-8"), durable=True)
    return target


def seal_package(folder: Path) -> ModelPackage:
    """(Re)write SHA256SUMS for the manifest and every file it names, then load the package.

    For tools that change a package on purpose, such as adding an INT8 file: the manifest is
    validated and every named file must exist before anything is written.
    """
    folder = Path(folder)
    manifest = load_manifest(folder / MANIFEST_NAME)
    for key, name in _named_files(manifest).items():
        if not (folder / name).is_file():
            raise PackageError(f"{folder / MANIFEST_NAME}: {key}: {name!r} does not exist")
    write_sums(folder, [MANIFEST_NAME, *_named_files(manifest).values()])
    return load_package(folder)


def find_packages(dirs: Iterable[Path]) -> list[FoundPackage]:
    """Every package in `dirs` (a package folder itself, or a folder of package folders).

    Refused packages and missing folders are reported in the list, not raised, so one bad
    package does not hide the others. A second package with the same name and version is
    refused: findings must say unambiguously which model made them.
    """
    found: list[FoundPackage] = []
    seen: dict[str, Path] = {}
    for folder in _candidates(dirs, found):
        try:
            package = load_package(folder)
        except PackageError as exc:
            found.append(FoundPackage(folder, error=str(exc)))
            continue
        identity = package.manifest.identity
        if identity in seen:
            found.append(FoundPackage(folder, error=f"{identity} is already in {seen[identity]}"))
            continue
        seen[identity] = folder
        found.append(FoundPackage(folder, package=package))
    return found


def _candidates(dirs: Iterable[Path], found: list[FoundPackage]) -> list[Path]:
    folders: list[Path] = []
    for folder in (Path(d) for d in dirs):
        if not folder.is_dir():
            what = "a file, not a folder" if folder.exists() else "no such folder"
            found.append(FoundPackage(folder, error=f"{folder}: {what}"))
        elif (folder / MANIFEST_NAME).exists():
            folders.append(folder)
        else:
            folders += sorted(
                p
                for p in folder.iterdir()
                if not p.name.startswith(".") and (p / MANIFEST_NAME).exists()
            )  # hidden: an import in progress
    return folders
