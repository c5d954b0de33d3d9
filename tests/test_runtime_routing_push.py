"""Colour ultrasound in every photometric and transfer syntax, pushed with DCMTK's storescu to
a real receiver, reaches the ultrasound demo model: routing compares content, not headers."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from appliance.imaging import decode
from appliance.phantoms import make_ultrasound, ultrasound_dataset
from appliance.receiver import Receiver
from appliance.store import Store

from conftest import dcmtk, needs_dcmtk, storescu_proposes
from imaging_fixtures import tinted, write_colour_variants
from worker_fixtures import analysis_of, drain, findings_of, open_worker

Started = Callable[..., tuple[Receiver, Store]]


@needs_dcmtk
def test_every_colour_format_pushed_with_storescu_is_routed_to_the_ultrasound_model(
    start_receiver: Started, tmp_path: Path
) -> None:
    scan = make_ultrasound(5, rows=240, columns=320, color=False, fluid=True)
    folder = tmp_path / "variants"
    folder.mkdir()
    variants = write_colour_variants(folder, ultrasound_dataset(scan), scan.pixels)
    rx, store = start_receiver(jobs={"pictures_quiet_s": 0})
    host, port = rx.address
    storescu = dcmtk("storescu")
    for name, variant in variants.items():  # one association each: its own transfer syntax
        pushed = subprocess.run(
            [
                storescu,
                *storescu_proposes(variant.path),
                "-aec",
                "APPLIANCE",
                host,
                str(port),
                str(variant.path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert pushed.returncode == 0, (name, pushed.stderr)
    drain(open_worker(store, store.settings), limit=200)
    reference = tinted(scan.pixels)
    for name, variant in variants.items():
        instance = _instance_of(store, variant.path)
        analysis = analysis_of(store.conn, instance)
        assert analysis["state"] != "no_model", (name, analysis["reason"])
        models = {row["model"] for row in findings_of(store.conn, instance)}
        assert models == {"demo-ultrasound-fluid"}, (name, analysis["reason"])
        stored = _stored_path(store, instance)
        error = np.abs(decode(stored).pixels[0].astype(int) - reference)
        assert error.max() <= variant.max_error and error.mean() <= variant.mean_error, name


def _instance_of(store: Store, path: Path) -> int:
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    row = store.conn.execute(
        "SELECT id FROM instances WHERE sop_instance_uid = ?", (uid,)
    ).fetchone()
    assert row is not None, f"{path.name} was not stored"
    return int(row["id"])


def _stored_path(store: Store, instance: int) -> Path:
    row = store.instance_row(instance)
    return store.spool.path_of(row["file_name"])


@pytest.mark.parametrize("photometric", ["PALETTE COLOR", "YBR_FULL"])
def test_the_reason_a_grey_only_model_gives_is_in_plain_words(photometric: str) -> None:
    from appliance.runtime.manifest import AppliesTo
    from appliance.runtime.routing import ImageTags, route

    rules = AppliesTo(modalities=("US",), colour="grey")
    result = route(rules, ImageTags(modality="US", photometric=photometric))
    assert result.reasons == (
        f"the image is colour ({photometric}); the model takes grey images only",
    )
