"""Stored reasons in plain words: every message template the worker, runtime and store write is
produced here by the real code and must map to its catalogue entry; unknown text falls back to a
plain sentence for its state, with the stored text kept for the collapsed "Details"."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flask import Flask, render_template_string

import appliance.phantoms as phantoms
from appliance.capture.signal import SignalState
from appliance.capture.sources import Frame
from appliance.imaging import DecodedImage, decode
from appliance.paths import resolve_paths
from appliance.runtime.engine import Model
from appliance.runtime.preprocess import prepare
from appliance.runtime.quality import QualityCheck, check_quality
from appliance.runtime.routing import ImageTags, dicom_tags, route
from appliance.store import jobs, open_store
from appliance.store.analyses import failure_recorder
from appliance.web import reasons
from appliance.web.i18n import t
from appliance.web.reasons import Reason, describe, shown_state
from appliance.worker.analyse import _held_back, analyse, no_model_reason
from appliance.worker.capture.state import LiveState
from appliance.worker.models import ModelSet
from appliance.worker.role import Worker
from appliance.worker.watch import Activity

from conftest import make_settings
from runtime_models import classifier_onnx, write_package
from worker_fixtures import analysis_of, broken_manifest, cr_of, drain, put_dataset

FORBIDDEN = (
    "correlation",
    "photometric",
    "threshold",
    "uid",
    "pixels",
    "sop",
    "json",
    "sha256",
    "onnx",
)
DX_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelSet]:
    """The bundled demo packages, loaded once as the worker loads them."""
    settings = make_settings(tmp_path_factory.mktemp("models"))
    loaded = ModelSet.load(settings.models, resolve_paths(settings).cache_dir)
    yield loaded
    loaded.close()


@pytest.fixture
def words(app: Flask) -> Iterator[None]:
    with app.test_request_context():
        yield


def described(text: str, state: str) -> Reason:
    reason = describe(text, state)
    assert reason.detail == text.strip()
    for part in (reason.plain, reason.advice):
        assert part and not any(term in part.lower() for term in FORBIDDEN), part
    return reason


def no_model(models: ModelSet, **tags: str) -> str:
    image = ImageTags(**tags)
    return no_model_reason(image, [(m, route(m.manifest.applies_to, image)) for m in models.models])


# --- no model ----------------------------------------------------------------------------------

NO_MODEL = [
    ("no_model_modality", "CT", {"modality": "CT", "body_part": "CHEST", "view": "PA"}),
    (
        "no_model_sop_class",
        "ultrasound",
        {"modality": "US", "sop_class": "1.2.840.10008.5.1.4.1.1.6.2", "photometric": "RGB"},
    ),
    ("no_model_view", "X-ray", {"modality": "DX", "body_part": "CHEST", "view": "LL"}),
    (
        "no_model_colour",
        "X-ray",
        {"modality": "DX", "body_part": "CHEST", "view": "PA", "photometric": "RGB"},
    ),
    ("no_model_body_part", "hand", {"modality": "CR", "body_part": "HAND", "view": "PA"}),
    ("no_model_body_part_unknown", "", {"modality": "DX", "view": "PA"}),
]


@pytest.mark.parametrize(("key", "word", "tags"), NO_MODEL)
def test_no_model_reasons_name_the_kind_of_image(
    words: None, models: ModelSet, key: str, word: str, tags: dict[str, str]
) -> None:
    tags.setdefault("photometric", "MONOCHROME2")
    tags.setdefault("sop_class", DX_CLASS)
    text = no_model(models, **tags)
    reason = described(text, "no_model")
    assert reason.key == key, text
    assert word in reason.plain
    assert "without AI" in reason.advice or "body part" in reason.advice


def test_no_model_installed(words: None) -> None:
    reason = described(no_model_reason(ImageTags(modality="CR"), []), "no_model")
    assert reason.key == "no_model_none_installed"


# --- held back by the plausibility check -------------------------------------------------------


def chest(seed: int = 900_001) -> DecodedImage:
    return decode(phantoms.chest_dataset(phantoms.make_chest(seed, rows=384), modality="CR"))


def held_back_by(model: Model, image: DecodedImage) -> str:
    manifest = model.manifest
    result = check_quality(manifest, prepare(image, manifest.input))
    assert not result.passed
    return "; ".join(result.reasons)


def model_named(models: ModelSet, name: str) -> Model:
    return next(m for m in models.models if m.package.name == name)


def test_held_back_reasons_say_what_to_check(words: None, models: ModelSet) -> None:
    chest_model = model_named(models, "demo-chest-xray")
    image = chest()
    noise = np.random.default_rng(1).normal(0.0, 4.0, image.pixels.shape)
    blank = dataclasses.replace(
        image, pixels=(2000.0 + noise).astype(image.pixels.dtype), window=None, voi_lut=None
    )
    turned = dataclasses.replace(
        image, pixels=np.ascontiguousarray(np.rot90(image.pixels, 1, (1, 2)))
    )
    flipped = dataclasses.replace(image, pixels=np.ascontiguousarray(image.pixels[:, ::-1]))
    us = decode(phantoms.ultrasound_dataset(phantoms.make_ultrasound(900_000)))
    cases = {
        "held_back_blank": blank,
        "held_back_rotated": turned,
        "held_back_upside_down": flipped,
        "held_back_atypical": us,
    }
    for key, picture in cases.items():
        text = held_back_by(chest_model, picture)
        reason = described(text, "held_back")
        assert reason.key == key, text
        assert "ask for the analysis anyway" in reason.advice


def test_a_uniform_image_and_the_checks_fallback(words: None, models: ModelSet) -> None:
    model = model_named(models, "demo-chest-xray")
    assert model.manifest.quality is not None
    quality = model.manifest.quality.model_copy(update={"min_contrast": 0.0})
    manifest = model.manifest.model_copy(update={"quality": quality})
    image = chest()
    flat = dataclasses.replace(image, pixels=np.full_like(image.pixels, 1000))
    result = check_quality(manifest, prepare(flat, manifest.input))
    assert described("; ".join(result.reasons), "held_back").key == "held_back_uniform"
    settings = make_settings(Path("/nonexistent"))
    outcome = _held_back(model, [QualityCheck(False, (), {})], settings, 0.0)
    assert described(outcome.reason, "held_back").key == "held_back_generic"


# --- failures ----------------------------------------------------------------------------------


def test_an_image_that_cannot_be_decoded(words: None, models: ModelSet, tmp_path: Path) -> None:
    ds = phantoms.chest_dataset(phantoms.make_chest(3, rows=256), modality="DX")
    ds.PixelData = ds.PixelData[:100]
    path = tmp_path / "cut.dcm"
    ds.save_as(path, enforce_file_format=True)
    draft = analyse(path, dicom_tags(path), models.models, make_settings(tmp_path))
    assert draft.analysis.state.value == "failed"
    assert described(draft.analysis.reason, "failed").key == "failed_decode"


def test_failures_the_worker_records(words: None, models: ModelSet, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, jobs={"max_attempts": 1, "pictures_quiet_s": 0})
    store = open_store(settings)
    try:
        worker = Worker(store, models, settings)
        stopped = put_dataset(store, cr_of("CHEST", seed=3), tmp_path, "stopped.dcm")
        job = jobs.claim(store.conn, "gone-worker", 60.0)  # a worker that dies with it
        assert job is not None and job.instance_id == stopped
        jobs.reap_stale(store.conn, time.time() + 3600, failure_recorder("routine"))
        headless = cr_of("CHEST")
        for keyword in ("BodyPartExamined", "StudyDescription", "SeriesDescription"):
            if keyword in headless:
                delattr(headless, keyword)  # the worker then reads the file's descriptions
        unreadable = put_dataset(store, headless, tmp_path, "unreadable.dcm")
        row = store.instance_row(unreadable)
        store.spool.path_of(row["file_name"]).write_bytes(b"not a DICOM file at all")
        # no body part indexed: the worker reads the descriptions from the (broken) header
        store.conn.execute(
            "UPDATE series SET body_part = '' WHERE id ="
            " (SELECT series_ref FROM instances WHERE id = ?)",
            (unreadable,),
        )
        missing = put_dataset(store, cr_of("CHEST", seed=2), tmp_path, "missing.dcm")
        store.conn.execute("UPDATE instances SET state = 'missing' WHERE id = ?", (missing,))
        drain(worker)
        expected = {
            stopped: "failed_worker_stopped",
            unreadable: "failed_decode",  # the header is read while decoding
            missing: "failed_missing",
        }
        for instance, key in expected.items():
            analysis = analysis_of(store.conn, instance)
            assert described(analysis["reason"], "failed").key == key, (key, analysis["reason"])
    finally:
        store.close()


def test_a_model_that_raises(words: None, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    write_package(folder / "broken", broken_manifest("PELVIS"), classifier_onnx)
    settings = make_settings(tmp_path, models={"dirs": [str(folder)], "precision": "fp32"})
    loaded = ModelSet.load(settings.models, resolve_paths(settings).cache_dir)
    try:
        path = tmp_path / "pelvis.dcm"
        cr_of("PELVIS").save_as(path, enforce_file_format=True)
        draft = analyse(path, dicom_tags(path), loaded.models, settings)
    finally:
        loaded.close()
    assert draft.analysis.state.value == "failed"
    assert described(draft.analysis.reason, "failed").key == "failed_model_error"


@pytest.mark.parametrize("inference", [True, False])
def test_work_that_hung(words: None, inference: bool) -> None:
    activity = Activity("demo-chest-xray@1.0.0", 30.0, time.monotonic() - 45.0, inference)
    assert described(activity.reason(), "failed").key == "failed_hung"


# --- live capture ------------------------------------------------------------------------------


def test_capture_failures(words: None) -> None:
    live = LiveState(4)
    now = time.monotonic()
    assert described(live.not_live(now), "capture").key == "capture_no_image"
    pixels = np.zeros((48, 64, 3), dtype=np.uint8)
    live.on_frame(Frame(pixels, 0, now, time.time()), SignalState.BLACK, now)
    reason = described(live.not_live(now), "capture")
    assert reason.key == "capture_not_live"


# --- anything else -----------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["held_back", "failed", "no_model", "capture", "findings", ""])
def test_unknown_text_gets_a_plain_sentence_for_its_state(words: None, state: str) -> None:
    text = "RuntimeError: something nobody wrote a sentence for (code 0x5)"
    reason = described(text, state)
    assert reason.key == reasons.GENERIC.get(state, "generic")


def test_a_stored_code_wins_and_empty_text_has_no_details(words: None) -> None:
    assert describe("", "held_back").detail == ""
    assert describe("whatever it said", "failed", code="failed_missing").key == "failed_missing"
    assert describe("whatever", "failed", code="not a code").key == "failed_generic"


def test_every_entry_has_words_and_advice(words: None) -> None:
    for key in {*reasons.KEYS, *reasons.GENERIC.values(), "generic"}:
        for name in (f"reasons.{key}", f"reasons.{key}_advice"):
            text = t(name, kind="X-ray", body_part="hand")  # a missing key raises under test
            assert text and not any(term in text.lower() for term in FORBIDDEN), name
    for state in reasons.OUTCOMES:
        assert t(f"states.{state}") and t(f"states.{state}_hint")


def test_findings_or_none_from_the_real_summary(
    words: None, models: ModelSet, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path)
    summaries = {}
    for name, findings in (("normal", {}), ("effusion", {"pleural_effusion": True})):
        chest_ds = phantoms.chest_dataset(
            phantoms.make_chest(11, rows=1024, findings=_only(findings)), modality="DX"
        )
        path = tmp_path / f"{name}.dcm"
        chest_ds.save_as(path, enforce_file_format=True)
        analysis = analyse(path, dicom_tags(path), models.models, settings).analysis
        summaries[name] = shown_state(analysis.state.value, analysis.summary)
    assert summaries == {"normal": "no_findings", "effusion": "findings"}
    assert shown_state("held_back", "held back: x") == "held_back"


def _only(positive: dict[str, bool]) -> dict[str, bool]:
    labels = ("pleural_effusion", "lung_nodule", "consolidation", "pneumothorax", "cardiomegaly")
    return {label: positive.get(label, False) for label in labels}


def test_the_macro_keeps_the_technical_text_inside_closed_details(app: Flask) -> None:
    text = (
        "the image does not look like a typical input of this model (correlation 0.30 with its "
        "reference image, below 0.605): check that it is the right kind of image"
    )
    source = '{% from "_reason.html" import reason_block %}{{ reason_block(text, state="held_back"'
    with app.test_request_context():
        html = render_template_string(source + ") }}", text=text)
        compact = render_template_string(source + ", compact=true) }}", text=text)
    outside = re.sub(r"<details.*?</details>", "", html, flags=re.S)
    assert "does not look like the images the model was made for" in outside
    assert "ask for the analysis anyway" in outside
    assert not any(term in outside.lower() for term in FORBIDDEN)
    assert re.search(
        r"<details class=\"reason-details\"><summary>Details</summary><p>the image", html
    )
    assert "<details open" not in html
    assert 'data-reason="held_back_atypical"' in html
    assert "reason-advice" not in compact and "reason-details" in compact
