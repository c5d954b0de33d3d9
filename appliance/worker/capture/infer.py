"""The inference thread: the model over the newest frame, written as overlay.json.

It takes the newest published frame only (older ones are dropped, so the overlay never falls
behind), crops the scan area, and runs the model with the area's pixel size, so areas are in
mm² as they will be for a saved image. A black or frozen signal gets no overlay.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from appliance.capture.region import detect_region
from appliance.capture.signal import SignalState
from appliance.capture.sources import Frame
from appliance.config import Settings
from appliance.imaging import DecodedImage, SpacingSource
from appliance.runtime.engine import Model
from appliance.runtime.findings import ModelResult
from appliance.runtime.quality import check_quality
from appliance.store import Store
from appliance.worker.capture.area import AreaResolver, Box, ScanArea, as_box, crop
from appliance.worker.capture.failures import ErrorLog
from appliance.worker.capture.grab import READ_TIMEOUT_S
from appliance.worker.capture.publish import LiveFiles, RateMeter
from appliance.worker.capture.state import LiveState, Mailbox
from appliance.worker.models import ModelSet

log = logging.getLogger(__name__)


class LiveInference:
    """The model over the newest frame: crop the scan area, infer, write overlay.json."""

    def __init__(
        self,
        live: LiveState,
        mailbox: Mailbox,
        area: AreaResolver,
        files: LiveFiles,
        store: Store,
        stopping: threading.Event,
        model: Model | None,
    ) -> None:
        self.live, self.mailbox, self.area, self.files = live, mailbox, area, files
        self.store = store
        self.stopping = stopping
        self.model = model
        self.rate = RateMeter()
        self.errors = ErrorLog("live inference")

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                item = self.mailbox.take(READ_TIMEOUT_S)
                if item is None:
                    continue
                try:
                    self._step(*item)
                except Exception:  # a failing model must not stop the live view
                    self.errors.log()
        finally:
            self.store.close_thread_connection()

    def _step(self, frame: Frame, state: SignalState) -> None:
        """A black or frozen signal is not a live scan: no overlay is drawn on it."""
        if not self.live.is_shown(frame):
            return
        if state is not SignalState.LIVE:
            self.files.remove("overlay.json")
            return
        self._detect(frame)
        if self.model is not None:
            overlay = self.infer(self.model, frame, self.area.current())
            self.files.write_json("overlay.json", overlay)

    def _detect(self, frame: Frame) -> None:
        """Find the scan area when nobody set it (again every DETECT_EVERY_S: depth changes)."""
        height, width = frame.pixels.shape[:2]
        now = time.monotonic()
        if self.area.needs_detection((width, height), now):
            found = detect_region(frame.pixels)
            box = None if found is None else as_box(found)
            self.area.set_detected(box, (width, height), now)

    def infer(self, model: Model, frame: Frame, area: ScanArea) -> dict[str, Any]:
        """overlay.json's content for one frame (outlines in full-frame pixels)."""
        height, width = frame.pixels.shape[:2]
        box = area.crop_box(width, height)
        image = live_image(crop(frame.pixels, box), area.mm_per_pixel)
        [result] = model.infer([image])
        check = check_quality(model.manifest, result.prepared, result.position)
        now = time.monotonic()
        self.rate.tick(now)
        return {
            "frame_index": frame.index,
            "captured_wall": frame.wall,
            "age_ms": round((now - frame.captured_at) * 1000.0, 1),
            "inference_fps": round(self.rate.rate(now), 2),
            "model": model.package.name,
            "version": model.package.version,
            "not_for_clinical_use": model.manifest.not_for_clinical_use,
            **_drawn(result, box, "" if check.passed else "; ".join(check.reasons)),
            "region": list(box),
        }


def live_image(crop_bgr: npt.NDArray[np.uint8], mm_per_pixel: float | None) -> DecodedImage:
    """A scan-area crop as the decoded RGB image a saved capture decodes to, with its pixel
    size (so the model's areas are in mm², as they will be for the saved image)."""
    rgb = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB)
    spacing = None if mm_per_pixel is None else (mm_per_pixel, mm_per_pixel)
    return DecodedImage(
        pixels=rgb[np.newaxis],
        photometric="RGB",
        source_photometric="RGB",
        transfer_syntax="",
        frame_count=1,
        frame_indices=(0,),
        bits_stored=8,
        signed=False,
        spacing_mm=spacing,
        spacing_source=SpacingSource.NONE if spacing is None else SpacingSource.ULTRASOUND_REGION,
    )


def _drawn(result: ModelResult, box: Box, held_back: str) -> dict[str, Any]:
    """Label, area and outlines (moved from crop to full-frame pixels) of the first mask, or
    the most likely label of a scores model. Nothing is drawn on an implausible image."""
    if result.masks:
        mask = result.masks[0]
        shift = np.array(box[:2], dtype=np.int32)
        outlines = [] if held_back else [(o + shift).tolist() for o in mask.outlines]
        area = None if held_back or mask.area_mm2 is None else round(mask.area_mm2, 1)
        label, display = mask.label, mask.display
    else:
        top = max(result.labels, key=lambda f: f.score - f.threshold, default=None)
        label, display = ("", "") if top is None else (top.label, top.display)
        outlines, area = [], None
    return {
        "label": label,
        "display": display,
        "area_mm2": area,
        "outlines": outlines,
        "held_back": held_back,
    }


def live_model(models: ModelSet, settings: Settings) -> tuple[Model | None, bool]:
    """The loaded package drawn over the live image (None, logged, when it is not loaded),
    and whether the loop owns it.

    ONNX Runtime sessions may run from several threads at once, so the job loop's model is
    shared. A native TensorRT engine's execution context may not: the loop then opens its own
    instance of the package (the engine comes from the on-disk cache).
    """
    name = settings.capture.model
    model = next((m for m in models.models if m.package.name == name), None)
    if model is None:
        log.error("capture: model %s is not loaded: the live view has no overlay", name)
        return None, False
    if model.backend.name != "tensorrt":
        return model, False
    return Model.open(model.package, model.options), True
