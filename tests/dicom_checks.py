"""Independent checks of the DICOM objects the box writes: dicom3tools' dciodvfy (the IOD's
modules and attributes), pydicom reading back in strict validation mode (every value fits its
VR), and DCMTK's dsrdump (an SR's content tree as another toolkit reads it)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom import config

DCIODVFY = Path("/usr/bin/dciodvfy")
DSRDUMP = "dsrdump"

needs_dciodvfy = pytest.mark.skipif(
    not DCIODVFY.is_file(), reason="dicom3tools' dciodvfy is not installed (.ci/run does)"
)
needs_dsrdump = pytest.mark.skipif(
    shutil.which(DSRDUMP) is None, reason="DCMTK's dsrdump is not installed (.ci/run does)"
)


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) that dciodvfy reports for the file, one line each."""
    done = subprocess.run(
        [str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = (done.stdout + done.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


@contextmanager
def strict_reading() -> Iterator[None]:
    """pydicom raises on any value that breaks its VR while reading; restored after."""
    saved = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        yield
    finally:
        config.settings.reading_validation_mode = saved


def read_strict(path: Path) -> pydicom.Dataset:
    """The file read back with strict validation, every element (sequences included)
    converted from its raw bytes inside the strict block, where the validation happens."""
    with strict_reading():
        ds = pydicom.dcmread(path)
        for _ in ds.iterall():
            pass
    return ds


def dsrdump(path: Path) -> str:
    """DCMTK's rendering of an SR document (values in UTF-8, long values whole, referenced
    UIDs shown); fails the test if dsrdump cannot read it."""
    done = subprocess.run(
        [DSRDUMP, "+U8", "+Pl", "+Pu", str(path)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    output = done.stdout.decode("utf-8")
    assert done.returncode == 0, f"dsrdump failed: {done.stderr.decode('utf-8', 'replace')}"
    return output


def save(ds: pydicom.Dataset, path: Path) -> Path:
    """Write `ds` as a Part 10 file, as the box does."""
    ds.save_as(path, enforce_file_format=True)
    return path
