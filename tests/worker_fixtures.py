"""Helpers for worker tests: put files into a real store, run a worker in-process, read back."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from pydicom.dataset import Dataset

from appliance.config import Settings
from appliance.domain import Origin, Source
from appliance.imaging.header import read_header
from appliance.store import Store
from appliance.worker.models import ModelSet
from appliance.worker.role import Worker

from runtime_models import OPSET, classifier_manifest, write_sums

DEMO_MODELS = Path(__file__).resolve().parent.parent / "models"


def put_file(store: Store, path: Path) -> int:
    """Ingest a DICOM file as an import would; return the instance id."""
    tmp = store.spool.new_tmp_path()
    shutil.copyfile(path, tmp)
    result = store.ingest(tmp, read_header(tmp), Origin(Source.IMPORT, user="test"))
    return result.instance_id


def put_dataset(store: Store, ds: Dataset, folder: Path, name: str) -> int:
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return put_file(store, path)


def cr_of(body_part: str, seed: int = 1) -> Dataset:
    """A CR with real structure (a chest phantom's pixels) labelled as another body part."""
    from appliance.phantoms import chest_dataset, make_chest

    ds = chest_dataset(make_chest(seed, rows=256), modality="CR", study_key=f"cr-{body_part}")
    ds.BodyPartExamined = body_part
    return ds


def drain(worker: Worker, limit: int = 50) -> int:
    """Run jobs until none is due; return how many ran."""
    ran = 0
    while ran < limit and worker.run_once():
        ran += 1
    return ran


def open_worker(store: Store, settings: Settings) -> Worker:
    return Worker(store, ModelSet.load(settings.models, store.paths.cache_dir), settings)


def analysis_of(conn: sqlite3.Connection, instance_id: int) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM analyses WHERE instance_ref = ?", (instance_id,)).fetchone()
    assert isinstance(row, sqlite3.Row), f"instance {instance_id} has no analysis"
    return row


def analyse_job(conn: sqlite3.Connection, instance_id: int) -> sqlite3.Row:
    """The instance's analyse job, as it stands now."""
    row = conn.execute(
        "SELECT * FROM jobs WHERE instance_ref = ? AND kind = 'analyse'", (instance_id,)
    ).fetchone()
    assert isinstance(row, sqlite3.Row), f"instance {instance_id} has no analyse job"
    return row


def findings_of(conn: sqlite3.Connection, instance_id: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT * FROM findings WHERE instance_ref = ? ORDER BY id", (instance_id,)
    ).fetchall()
    return [{**dict(row), "result": json.loads(row["result"])} for row in rows]


def artifacts_of(conn: sqlite3.Connection, finding_id: int) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT * FROM artifacts WHERE finding_ref = ? ORDER BY id", (finding_id,)
    ).fetchall()


def positive_labels(finding: dict[str, Any]) -> set[str]:
    return set(finding["result"]["positives"])


# --- test packages -----------------------------------------------------------------------------


def slow_onnx(path: Path, size: int = 256, dynamic: bool = True, steps: int = 800) -> Path:
    """A scores model that takes seconds per image: a chain of (64 x 1024) x (1024 x 1024)
    MatMuls (for a 256 x 256 input).

    The weight is an identity matrix shared by every step, so the file stays small and the
    values stay finite; the runtime still does every multiplication.
    """
    batch: str | int = "N" if dynamic else 1
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 1, size, size])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 1])
    width = 1024
    weight = numpy_helper.from_array(np.eye(width, dtype=np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, width], dtype=np.int64), "rows")
    back = numpy_helper.from_array(np.array([-1, size * size], dtype=np.int64), "per_sample")
    nodes = [helper.make_node("Reshape", ["image", "rows"], ["x0"])]
    for step in range(steps):
        nodes.append(helper.make_node("MatMul", [f"x{step}", "w"], [f"x{step + 1}"]))
    nodes += [
        helper.make_node("Reshape", [f"x{steps}", "per_sample"], ["flat"]),
        helper.make_node("ReduceMean", ["flat"], ["scores"], axes=[1], keepdims=1),
    ]
    graph = helper.make_graph(nodes, "slow", [image], [scores], [weight, shape, back])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.save(model, path)
    return path


def slow_manifest(body_part: str) -> dict[str, Any]:
    """Applies only to CR images of `body_part`, so the demo models never see its images."""
    manifest = classifier_manifest(
        256,
        name="test-slow",
        title="Slow model (test)",
        applies_to={"modalities": ["CR"], "body_parts": [body_part], "views": []},
        outputs=[
            {
                "name": "scores",
                "kind": "scores",
                "activation": "sigmoid",  # the graph's mean can be negative: not a probability
                "labels": [
                    {"name": "slow", "display": "Slow", "threshold": 0.5, "priority": "routine"}
                ],
            }
        ],
        explanation={"method": "none"},
    )
    return manifest


def broken_manifest(body_part: str) -> dict[str, Any]:
    """Declares three labels for a graph that gives two: every inference raises."""
    manifest = classifier_manifest(
        name="test-broken",
        applies_to={"modalities": ["CR"], "body_parts": [body_part], "views": []},
    )
    labels = manifest["outputs"][0]["labels"]
    labels.append({"name": "third", "display": "Third", "threshold": 0.5, "priority": "review"})
    return manifest


def copy_package(source: Path, target: Path, **input_changes: Any) -> Path:
    """A copy of a package with some `input` fields changed, resealed."""
    import yaml

    shutil.copytree(source, target)
    manifest = yaml.safe_load((target / "manifest.yaml").read_text())
    manifest["input"].update(input_changes)
    (target / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    names = ["manifest.yaml", manifest["files"]["fp32"]]
    if manifest["files"].get("int8"):
        names.append(manifest["files"]["int8"])
    if manifest.get("golden"):
        names.append(manifest["golden"]["file"])
    write_sums(target, names)
    return target


def audit_rows(conn: sqlite3.Connection, action: str) -> Iterator[dict[str, Any]]:
    for row in conn.execute("SELECT * FROM audit WHERE action = ? ORDER BY id", (action,)):
        yield {**dict(row), "detail": json.loads(row["detail"])}


def flattened(ds: Dataset) -> Dataset:
    """`ds` with almost flat 16-bit pixels and no window: the plausibility check holds such a
    radiograph back."""
    noise = np.random.default_rng(0).integers(0, 3, size=(ds.Rows, ds.Columns))
    ds.PixelData = (np.full((ds.Rows, ds.Columns), 1800) + noise).astype(np.uint16).tobytes()
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds
