"""The control thread: the UI's requests (freeze, resume, save frame, save clip) taken from the
store in order, the device's calibration refreshed, and status.json kept fresh when no frames
come. Each request's result, or why it failed, is recorded in its row for the UI."""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from typing import Any

from appliance.capture.sources import CaptureError
from appliance.store import Store
from appliance.store import capture as capture_store
from appliance.worker.capture.area import AreaResolver, shot_of
from appliance.worker.capture.failures import ErrorLog, reason
from appliance.worker.capture.publish import Publisher
from appliance.worker.capture.save import Saver

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often the control thread looks for requests
CALIBRATION_EVERY_S = 1.0  # how soon an admin's new calibration applies


class Control:
    """The UI's requests (in order), calibration refreshes and status.json keep-alive."""

    def __init__(
        self,
        store: Store,
        publisher: Publisher,
        area: AreaResolver,
        saver: Saver,
        stopping: threading.Event,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.live = publisher.live
        self.area = area
        self.saver = saver
        self.stopping = stopping
        self._calibrated_at = -math.inf
        self.errors = ErrorLog("capture control")

    def run(self) -> None:
        try:
            while not self.stopping.wait(POLL_S):
                try:
                    self._refresh_calibration()
                    self.publisher.status()
                    self._take_requests()
                except Exception:  # e.g. the database is locked for long: try again next time
                    self.errors.log()
        finally:
            self.store.close_thread_connection()

    def _refresh_calibration(self) -> None:
        now = time.monotonic()
        if now - self._calibrated_at >= CALIBRATION_EVERY_S:
            calibration = capture_store.calibration(self.store.conn, self.publisher.device)
            self.area.set_calibration(calibration)
            self._calibrated_at = now

    def _take_requests(self) -> None:
        conn = self.store.conn
        while not self.stopping.is_set():
            row = capture_store.next_request(conn)
            if row is None:
                return
            self.handle(row)

    def handle(self, row: sqlite3.Row) -> None:
        """Carry out one request and record its result (or why it failed) in its row."""
        conn = self.store.conn
        try:
            result = self._carry_out(row)
        except Exception as exc:  # recorded in the request row for the user, and logged
            log.warning("capture: %s request %d failed: %s", row["kind"], row["id"], exc)
            capture_store.finish_request(conn, row["id"], None, error=reason(exc))
            return
        capture_store.finish_request(conn, row["id"], result)

    def _carry_out(self, row: sqlite3.Row) -> dict[str, Any]:
        kind = row["kind"]
        live = self.live
        if kind == "freeze":
            frame = self.publisher.freeze()
            if frame is None:
                raise CaptureError(f"nothing to freeze: {live.not_live(time.monotonic())}")
            return {"frozen": True, "frame_index": frame.index}
        if kind == "resume":
            self.publisher.resume()
            return {"frozen": False}
        problem = live.not_live(time.monotonic())
        if problem:
            raise CaptureError(f"not saved: {problem}")
        if kind == "save_frame":
            frame = live.frame_to_save()
            if frame is None:
                raise CaptureError("there is no frame to save: the capture device sent none")
            return self.saver.save(row, [shot_of(frame, self.area.current())])
        if kind != "save_clip":
            raise CaptureError(f"unknown capture request {kind!r}")
        shots = live.clip()
        if not shots:
            raise CaptureError("there is no clip to save: the capture device sent no frames")
        return self.saver.save(row, shots)
