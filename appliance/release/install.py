"""Installing a checked bundle beside the running release with the bundle's own installer
(`install.sh BUNDLE --release-only`): how a release is installed is said in one place, the
bundle, and an update does it the same way as a first install."""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
from pathlib import Path

from appliance.release.bundle import BundleInfo
from appliance.release.layout import Layout

INSTALLER = "install.sh"
_TIMEOUT_S = 1800.0  # a slow box makes a virtual environment from ~60 wheels
_OUTPUT_TAIL = 2000


class InstallFailed(Exception):
    """The bundle's installer did not install the release; the message quotes it."""


def install_release(info: BundleInfo, layout: Layout, timeout_s: float = _TIMEOUT_S) -> Path:
    """Install releases/<version> from the (already verified) bundle; its folder."""
    target = layout.release(info.version)
    if target.exists():  # left by an earlier try that failed: never the current one
        layout.remove(info.version)
    with tempfile.TemporaryDirectory(prefix="appliance-install-") as folder:
        script = _unpack_installer(info.path, Path(folder))
        command = ["/bin/bash", str(script), str(info.path.absolute()), "--release-only"]
        if layout.root != Path("/"):
            command += ["--root", str(layout.root)]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            layout.remove(info.version)
            raise InstallFailed(f"the installer did not finish within {timeout_s:.0f} s") from None
    if result.returncode != 0 or not layout.program(info.version).exists():
        layout.remove(info.version)
        output = (result.stdout + result.stderr).strip()[-_OUTPUT_TAIL:]
        raise InstallFailed(f"the installer failed (exit status {result.returncode}): {output}")
    return target


def _unpack_installer(bundle: Path, folder: Path) -> Path:
    with tarfile.open(bundle, mode="r:") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.lstrip("./") == INSTALLER:
                handle = tar.extractfile(member)
                assert handle is not None
                with handle:
                    script = folder / INSTALLER
                    script.write_bytes(handle.read())
                return script
    raise InstallFailed(f"the bundle has no {INSTALLER}")
