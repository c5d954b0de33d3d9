"""A real-format corpus: every storage image among pydicom's bundled test files, pushed with
DCMTK's storescu to DCMTK's storescp (+xa: every transfer syntax) and to our receiver in the
same run. What storescp takes, ours takes too, except images without Pixel Data, which our
receiver refuses by rule (and DCMTK stores)."""

from __future__ import annotations

import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.uid import UID

from appliance.bench.peers import free_port
from appliance.receiver import Receiver
from appliance.store import Store

from conftest import dcmtk, needs_dcmtk, storescu, storescu_proposes, wait_for


def bundled_images() -> list[Path]:
    """pydicom's bundled Part 10 files whose SOP class is an image storage class."""
    found = []
    for name in get_testdata_files():
        path = Path(name)
        if not path.is_file():
            continue
        with path.open("rb") as handle:
            if handle.read(132)[128:] != b"DICM":
                continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # some bundled files are deliberately odd
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # unreadable files are not part of the corpus
                continue
        if "SOPClassUID" in ds and "Image Storage" in UID(str(ds.SOPClassUID)).name:
            found.append(path)
    return sorted(found)


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """DCMTK's storescp accepting every transfer syntax, writing into tmp_path/storescp."""
    out = tmp_path / "storescp"
    out.mkdir()
    port = free_port()
    process = subprocess.Popen(
        [dcmtk("storescp"), "+xa", "-od", str(out), "-aet", "APPLIANCE", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _echo(("127.0.0.1", port)), timeout_s=20, what="storescp to listen")
        yield "127.0.0.1", port
    finally:
        process.terminate()
        process.wait(timeout=10)


def _echo(address: tuple[str, int]) -> bool:
    done = subprocess.run(
        [dcmtk("echoscu"), "-aec", "APPLIANCE", address[0], str(address[1])],
        capture_output=True,
        timeout=10,
        check=False,
    )
    return done.returncode == 0


def push(address: tuple[str, int], path: Path) -> bool:
    """storescu one file, proposing the contexts it needs (-R) in the file's own transfer
    syntax (storescu does not convert); True if it was acknowledged."""
    return storescu(address, path, options=["-R", *storescu_proposes(path)]).returncode == 0


def our_refusals(store: Store) -> dict[str, str]:
    rows = store.conn.execute(
        "SELECT subject, json_extract(detail, '$.reason') FROM audit"
        " WHERE action = 'ingest.rejected'"
    )
    return {str(subject): str(reason) for subject, reason in rows}


@needs_dcmtk
def test_what_storescp_accepts_of_pydicoms_images_we_accept_too(
    receiver: tuple[Receiver, Store], storescp: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    rx, store = receiver
    files = bundled_images()
    theirs = {path for path in files if push(storescp, path)}
    ours = {path for path in files if push(rx.address, path)}
    refusals = our_refusals(store)
    with capsys.disabled():
        print(
            f"\ncorpus: {len(files)} image files; storescp +xa accepted {len(theirs)}, "
            f"our receiver {len(ours)}"
        )
        for path in sorted(theirs - ours):
            print(f"  refused by us only: {path.name}")
        for subject, reason in sorted(refusals.items()):
            print(f"  {subject}: {reason}")
    assert ours <= theirs
    # What storescp takes and we refuse, each by a rule of ours with its reason audited:
    # header-only images (pydicom's DICOMDIR test set, pixels stripped: never acknowledged
    # without Pixel Data), files without a Study Instance UID (nothing to file them under) and
    # a codestream declaring billions of pixels inside a small header (a decompression bomb).
    assert {path for path in theirs if not has_pixel_data(path)} <= theirs - ours
    assert len(refusals) == len(theirs - ours)
    rules = ("has no", "StudyInstanceUID is missing", "a decompression bomb")
    assert all(any(rule in reason for rule in rules) for reason in refusals.values()), refusals


def has_pixel_data(path: Path) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return "PixelData" in pydicom.dcmread(path)
