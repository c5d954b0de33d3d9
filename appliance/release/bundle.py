"""Checking a release bundle before anything is done with it: the signature of its checksum
list (openssl, ed25519, against the box's key), then every member against that list, then that
it was built for this machine and this Python.

A bundle is an uncompressed tar (deploy/bundle.sh). Nothing is unpacked here: members are read
in place, so a refused bundle leaves no trace on the box.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from appliance.errors import ApplianceError

SUMS = "SHA256SUMS"
SIGNATURE = "SHA256SUMS.sig"
MANIFEST = "bundle.json"
_SMALL_MEMBER = 1 << 20  # the checksum list, its signature and bundle.json are far smaller
_CHUNK = 1 << 20
_MANIFEST_KEYS = ("version", "target", "python", "machine")


class BundleRefused(ApplianceError):
    """The bundle cannot be used on this box; the message says why in plain words."""


@dataclass(frozen=True)
class BundleInfo:
    """A bundle whose signature and checksums were checked (from its bundle.json)."""

    path: Path
    version: str
    target: str
    python: str
    machine: str


def verify(bundle: Path, public_key: Path) -> BundleInfo:
    """Check `bundle` against `public_key` (PEM, ed25519) and this machine; BundleRefused says
    what is wrong. Reads the file twice (signature first, then every checksum)."""
    if not public_key.is_file():
        raise BundleRefused(
            f"there is no release key at {public_key}: updates cannot be checked, so none is taken"
        )
    try:
        with tarfile.open(bundle, mode="r:") as tar:
            members = _members(tar)
            sums = _read_small(tar, members, SUMS, "its checksum list")
            signature = _read_small(tar, members, SIGNATURE, "a signature: it is not signed")
            _check_signature(sums, signature, public_key)
            expected = _parse_sums(sums)
            _check_members(tar, members, expected)
            manifest = _parse_manifest(_read_small(tar, members, MANIFEST, MANIFEST))
    except FileNotFoundError:
        raise BundleRefused(f"{bundle} does not exist") from None
    except (tarfile.TarError, EOFError) as exc:
        raise BundleRefused(
            f"{bundle.name} is not a release bundle (not a tar file: {exc})"
        ) from None
    except OSError as exc:
        raise BundleRefused(f"{bundle} cannot be read: {exc.strerror or exc}") from None
    info = BundleInfo(path=bundle, **manifest)
    check_target(info)
    return info


def check_target(info: BundleInfo) -> None:
    """Refuse a bundle built for another processor or another Python than this one."""
    machine = platform.machine()
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    if info.machine != machine:
        raise BundleRefused(
            f"the bundle is for {info.machine} ({info.target}), this box is {machine}: "
            "use the bundle built for this box"
        )
    if info.python != python:
        raise BundleRefused(
            f"the bundle is for Python {info.python} ({info.target}), this box has "
            f"Python {python}: use the bundle built for this box"
        )


def _members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """Regular files by their clean name; links, devices, absolute names or '..' refuse it."""
    found: dict[str, tarfile.TarInfo] = {}
    for member in tar.getmembers():
        name = _clean_name(member.name)
        if member.isdir() or not name:
            continue
        if not member.isfile():
            raise BundleRefused(f"the bundle holds {member.name!r}, which is not a plain file")
        if name in found:
            raise BundleRefused(f"the bundle holds {name!r} twice")
        found[name] = member
    return found


def _clean_name(raw: str) -> str:
    path = PurePosixPath(raw)
    if path.is_absolute() or ".." in path.parts:
        raise BundleRefused(f"the bundle holds {raw!r}, a name outside its own folder")
    return "/".join(part for part in path.parts if part != ".")


def _read_small(
    tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str, what: str
) -> bytes:
    member = members.get(name)
    if member is None:
        raise BundleRefused(f"the bundle has no {what} ({name})")
    if member.size > _SMALL_MEMBER:
        raise BundleRefused(f"the bundle's {name} is too large to be genuine")
    handle = tar.extractfile(member)
    assert handle is not None  # a regular file (see _members)
    with handle:
        return handle.read()


def _check_signature(sums: bytes, signature: bytes, public_key: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="appliance-verify-") as folder:
        sums_file, sig_file = Path(folder, SUMS), Path(folder, SIGNATURE)
        sums_file.write_bytes(sums)
        sig_file.write_bytes(signature)
        command = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(public_key)]
        command += ["-rawin", "-in", str(sums_file), "-sigfile", str(sig_file)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            raise BundleRefused(
                "openssl is not installed: the signature cannot be checked"
            ) from None
    if result.returncode != 0:
        raise BundleRefused(
            "the bundle's signature does not match the release key of this box: it was changed "
            "after it was signed, or signed with another key"
        )


def _parse_sums(sums: bytes) -> dict[str, str]:
    """name -> sha256 from `sha256sum` output ('HEX  NAME', or 'HEX *NAME' in binary mode)."""
    expected: dict[str, str] = {}
    for number, line in enumerate(sums.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition(" ")
        name = name[1:] if name[:1] in (" ", "*") else name
        if len(digest) != 64 or not name:
            raise BundleRefused(f"the bundle's checksum list is malformed at line {number}")
        expected[_clean_name(name)] = digest.lower()
    return expected


def _check_members(
    tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], expected: dict[str, str]
) -> None:
    listed = set(expected)
    present = set(members) - {SUMS, SIGNATURE}
    if missing := sorted(listed - present):
        raise BundleRefused(f"the bundle lacks {missing[0]}, which its checksum list names")
    if extra := sorted(present - listed):
        raise BundleRefused(f"the bundle holds {extra[0]}, which its checksum list does not name")
    for name in sorted(listed):
        if _sha256(tar, members[name]) != expected[name]:
            raise BundleRefused(f"{name} in the bundle does not match its checksum: it was changed")


def _sha256(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    digest = hashlib.sha256()
    handle = tar.extractfile(member)
    assert handle is not None
    with handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _parse_manifest(raw: bytes) -> dict[str, str]:
    try:
        data = json.loads(raw)
    except ValueError:
        raise BundleRefused(f"the bundle's {MANIFEST} is not valid JSON") from None
    if not isinstance(data, dict):
        raise BundleRefused(f"the bundle's {MANIFEST} is not an object")
    values = {key: data.get(key) for key in _MANIFEST_KEYS}
    for key, value in values.items():
        if not isinstance(value, str) or not value:
            raise BundleRefused(f"the bundle's {MANIFEST} does not say its {key}")
    version = str(values["version"])
    if "/" in version or version.startswith(".") or len(version) > 64:
        raise BundleRefused(f"the bundle's version {version!r} is not a usable folder name")
    return {key: str(value) for key, value in values.items()}


def private_copy(bundle: Path, folder: Path) -> Path:
    """A copy of `bundle` in `folder` (made 0700), which nobody but the updater can change.

    A bundle dropped by the admin page lies in a folder the UI's user owns: that user could
    replace the file between its check and its use, or make it a link. The update checks and
    installs this copy instead. The original is opened without following links and must be a
    plain file."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    try:
        fd = os.open(bundle, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        reason = f"{bundle.name}: cannot open it as a plain file: {exc.strerror}"
        raise BundleRefused(reason) from exc
    with os.fdopen(fd, "rb") as source:
        if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
            raise BundleRefused(f"{bundle.name} is not a plain file")
        copy = folder / bundle.name
        copy.unlink(missing_ok=True)
        with open(copy, "xb") as target:
            shutil.copyfileobj(source, target, _CHUNK)
    return copy
