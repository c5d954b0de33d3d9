"""The capture loop: wires the grab, inference and control threads together and runs them
beside the worker's job loop (`start_capture` is what the worker role calls)."""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Mapping

from appliance.capture.sources import FrameSource, SourceOpener, lossy_method, open_source
from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.paths import Paths
from appliance.store import Store
from appliance.store import capture as capture_store
from appliance.worker.capture.area import AreaResolver
from appliance.worker.capture.control import Control
from appliance.worker.capture.grab import Grabber, SourceFactory
from appliance.worker.capture.infer import LiveInference, live_model
from appliance.worker.capture.publish import LiveFiles, Publisher
from appliance.worker.capture.save import Saver
from appliance.worker.capture.state import LiveState, Mailbox
from appliance.worker.models import ModelSet

log = logging.getLogger(__name__)

JOIN_S = 5.0
CLIP_BUDGET_BYTES = 1 << 30  # the most memory the clip ring may take


class CaptureLoop:
    """Live capture beside the worker's job loop: `start()` the threads, `stop()` them.

    `source_factory` makes a source (not yet open) for the first time and again after a
    loss; by default `open_source` for `capture.source`.
    """

    def __init__(
        self,
        settings: Settings,
        paths: Paths,
        store: Store,
        models: ModelSet,
        source_factory: SourceFactory | None = None,
    ) -> None:
        capture = settings.capture
        factory = source_factory or functools.partial(open_source, capture.source)
        self.settings = settings
        self.store = store
        files = LiveFiles(paths.live_dir)
        source = factory()  # the first one; the grab thread makes another after a loss
        self.device = source.name
        self.area = AreaResolver(capture)
        self.area.set_calibration(capture_store.calibration(store.conn, self.device))
        self.live = LiveState(ring_frames(capture.clip_seconds, source))
        self.stopping = threading.Event()
        mailbox = Mailbox()
        self.publisher = Publisher(files, self.live, self.area, mailbox, source)
        self.model, self._own_model = live_model(models, settings)
        self.grabber = Grabber(self.publisher, source, factory, self.stopping)
        self.inference = LiveInference(
            self.live, mailbox, self.area, files, store, self.stopping, self.model
        )
        saver = Saver(store, self.area, self.publisher, lossy_method(capture.source))
        self.control = Control(store, self.publisher, self.area, saver, self.stopping)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the grab, inference and control threads (each returns at `stop()`)."""
        self.publisher.clear()  # a picture left by a crashed worker is not live
        expired = capture_store.expire_requests(self.store.conn)
        if expired:
            log.info("capture: %d request(s) from before the restart expired", expired)
        self.publisher.status(force=True)
        for name, target in (
            ("capture-grab", self.grabber.run),
            ("capture-inference", self.inference.run),
            ("capture-control", self.control.run),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("capture: %s started (%s)", self.device, self.settings.capture.source.kind)

    def stop(self) -> None:
        """Stop and join the threads, close the source, and leave status.json "stopped"."""
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=JOIN_S)
            if thread.is_alive():
                log.error("capture: thread %s did not stop within %.0f s", thread.name, JOIN_S)
        self._threads.clear()
        if self._own_model and self.model is not None:
            self.model.close()
        self.publisher.clear()  # no live patient image outlives the loop
        self.publisher.status(force=True, state="stopped")
        log.info("capture: %s stopped", self.device)


def ring_frames(clip_seconds: float, source: FrameSource) -> int:
    """Frames kept for "Save clip": `clip_seconds` of them, within CLIP_BUDGET_BYTES of memory
    (a 60 s clip of 1080p would otherwise take 11 GiB). Crops are counted as whole frames."""
    wanted = math.ceil(clip_seconds * source.fps)
    width, height = source.size
    fit = max(1, CLIP_BUDGET_BYTES // (width * height * 3))
    if fit < wanted:
        log.warning(
            "capture: %.0f s of %dx%d video needs more than %d MiB: clips are cut to %.1f s",
            clip_seconds,
            width,
            height,
            CLIP_BUDGET_BYTES >> 20,
            fit / source.fps,
        )
    return min(wanted, fit)


def start_capture(
    settings: Settings,
    paths: Paths,
    store: Store,
    models: ModelSet,
    openers: Mapping[str, SourceOpener] | None = None,
) -> CaptureLoop | None:
    """The running capture loop when capture is configured, else None.

    `openers` make the source kinds the capture room does not make itself (the demo's
    generated screen), as the entry layer hands them down. A loop that cannot even be set up
    (the live folder cannot be made, a source setting that names nothing) is logged and left
    out: the worker's jobs do not depend on it.
    """
    source = settings.capture.source
    if source.kind == "none":
        return None
    try:
        loop = CaptureLoop(
            settings, paths, store, models, functools.partial(open_source, source, openers)
        )
    except (ApplianceError, OSError) as exc:
        log.error("capture: live capture is off: %s", exc)
        return None
    loop.start()
    return loop
