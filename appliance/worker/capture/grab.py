"""The grab thread: reads the source and publishes its frames; a lost source is reopened with
back-off. A source that breaks or goes silent is a state shown in status.json, never the end
of the thread."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from appliance.capture.signal import SignalMonitor, SignalState
from appliance.capture.sources import CaptureError, FrameSource
from appliance.worker.capture.failures import ErrorLog, reason
from appliance.worker.capture.publish import Publisher
from appliance.worker.capture.state import NO_SIGNAL_AFTER_S

log = logging.getLogger(__name__)

SourceFactory = Callable[[], FrameSource]

READ_TIMEOUT_S = 0.25  # the grab thread looks at the signal at least this often
REOPEN_AFTER_S = 2.0  # no frame for this long: close the source and open it again
BACKOFF_S = (0.25, 0.5, 1.0, 2.0, 4.0)  # waits between attempts to (re)open a source


class Grabber:
    """Reads the source and publishes its frames; a lost source is reopened with back-off.

    `source` is the first source (made by the loop, not yet open); `factory` makes a fresh
    one after a loss.
    """

    def __init__(
        self,
        publisher: Publisher,
        source: FrameSource,
        factory: SourceFactory,
        stopping: threading.Event,
    ) -> None:
        self.publisher = publisher
        self.live = publisher.live
        self.device = publisher.device
        self.factory = factory
        self.stopping = stopping
        self.source: FrameSource | None = source
        self.opened = False
        self.monitor = SignalMonitor(no_signal_after_s=NO_SIGNAL_AFTER_S)
        self.attempt = 0  # failed opens (or silent reopens) since the last frame
        self.silent_since = time.monotonic()
        self.errors = ErrorLog("grab")

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    if self.opened or self._open():
                        self._step()
                except Exception:  # e.g. the live folder is full: say so, keep grabbing
                    self.errors.log()
                    self._pause()
        finally:
            self._close()

    def _step(self) -> None:
        assert self.source is not None
        try:
            frame = self.source.read(READ_TIMEOUT_S)
        except Exception as exc:  # a source that breaks is a lost signal, not a dead loop
            log.warning("capture: reading %s failed: %s", self.device, reason(exc))
            frame = None
            self._close()
        now = time.monotonic()
        state = self.monitor.update(frame, now)
        if frame is None:
            self._on_silence(now, state)
            return
        self.attempt, self.silent_since = 0, now
        self.publisher.source_rate.tick(now)
        if self.live.on_frame(frame, state, now):
            self.publisher.frame(frame, state)
        else:
            self.publisher.status()

    def _on_silence(self, now: float, state: SignalState) -> None:
        self.live.set_state(state)
        self.publisher.status()
        if not self.opened or now - self.silent_since > REOPEN_AFTER_S:
            if self.opened:
                log.warning("capture: no frame from %s: reopening it", self.device)
            self._close()
            self._pause()

    def _open(self) -> bool:
        """Open the source (a fresh one after a loss); on failure wait, keeping status."""
        try:
            if self.source is None:
                self.source = self.factory()
            self.source.open()
        except (CaptureError, OSError) as exc:
            if self.attempt == 0:
                log.warning("capture: cannot open %s: %s; retrying", self.device, exc)
            self._close()
            self._pause()
            return False
        self.opened, self.silent_since = True, time.monotonic()
        self.publisher.nominal_fps = self.source.fps  # a device or file may give another rate
        if self.attempt:
            log.info("capture: %s opened again after %d attempt(s)", self.device, self.attempt)
        return True

    def _pause(self) -> None:
        """Wait before the next attempt (longer each time), keeping status.json current."""
        wait_s = BACKOFF_S[min(self.attempt, len(BACKOFF_S) - 1)]
        self.attempt += 1
        until = time.monotonic() + wait_s
        while not self.stopping.is_set() and (now := time.monotonic()) < until:
            self.live.set_state(self.monitor.update(None, now))
            self.publisher.status()
            self.stopping.wait(min(READ_TIMEOUT_S, until - now))

    def _close(self) -> None:
        if self.source is not None:
            with contextlib.suppress(Exception):  # closing a broken device may fail as well
                self.source.close()
        self.source, self.opened = None, False
