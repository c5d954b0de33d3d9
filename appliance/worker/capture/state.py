"""What the capture loop's threads share: the newest and published frames, the user's freeze,
the clip ring and the counters of status.json (`LiveState`), and the one-slot mailbox that
hands the newest frame to inference (`Mailbox`)."""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import Any

from appliance.capture.signal import SignalState
from appliance.capture.sources import Frame
from appliance.worker.capture.area import Shot

NO_SIGNAL_AFTER_S = 1.0  # no frame for this long: the state is no_signal
_STATE_WORDS = {
    SignalState.LIVE: "a live image",
    SignalState.NO_SIGNAL: "no signal",
    SignalState.BLACK: "a black image",
    SignalState.FROZEN: "a picture that does not change (the scanner's own freeze?)",
}


class Mailbox:
    """One slot holding the newest frame (and its signal state) for inference: a new frame
    replaces an unread one, so inference works on the newest frame and never queues."""

    def __init__(self) -> None:
        self._item: tuple[Frame, SignalState] | None = None
        self._ready = threading.Condition()

    def put(self, frame: Frame, state: SignalState) -> None:
        with self._ready:
            self._item = (frame, state)
            self._ready.notify()

    def take(self, timeout_s: float) -> tuple[Frame, SignalState] | None:
        with self._ready:
            if self._item is None:
                self._ready.wait(timeout_s)
            item, self._item = self._item, None
            return item


class LiveState:
    """What the threads share: the newest and published frames, the user's freeze, the clip
    ring and the counters that go into status.json. Every access holds the lock."""

    def __init__(self, ring_frames: int) -> None:
        self._lock = threading.Lock()
        self.ring: deque[Shot] = deque(maxlen=max(1, ring_frames))
        self.newest: Frame | None = None
        self.published: Frame | None = None
        self.frozen: Frame | None = None
        self.user_frozen = False
        self.seq = 0
        self.dropped = 0
        self.state = SignalState.NO_SIGNAL
        self.last_frame_at = -math.inf

    def on_frame(self, frame: Frame, state: SignalState, now: float) -> bool:
        """Record a new frame; True when it is to be published (not frozen by the user)."""
        with self._lock:
            if self.newest is not None and frame.index > self.newest.index + 1:
                self.dropped += frame.index - self.newest.index - 1
            if now - self.last_frame_at > NO_SIGNAL_AFTER_S and not self.user_frozen:
                self.ring.clear()  # a clip never spans a lost signal (maybe another patient)
            self.newest, self.state, self.last_frame_at = frame, state, now
            return not self.user_frozen

    def on_published(self, frame: Frame, shot: Shot) -> int:
        with self._lock:
            self.published = frame
            self.ring.append(shot)
            self.seq += 1
            return self.seq

    def set_state(self, state: SignalState) -> None:
        with self._lock:
            self.state = state

    def signal_state(self) -> SignalState:
        with self._lock:
            return self.state

    def freeze(self, now: float) -> Frame | None:
        """Hold the published frame (the one the user sees); return it. Nothing is frozen
        (None) while no live image comes: the last picture before a loss is not the scan now."""
        with self._lock:
            if self.user_frozen:
                return self.frozen
            frame = self.published or self.newest
            if frame is None or not self._live(now):
                return None
            self.user_frozen, self.frozen = True, frame
            return frame

    def not_live(self, now: float) -> str:
        """What the capture shows when it is not a live scan ("" when it is, or when the user
        froze a live image). Only then may an image be saved, so that a picture from before a
        lost signal is never filed under the patient chosen since."""
        with self._lock:
            if self.user_frozen or self._live(now):
                return ""
            if self.newest is None:
                return "no image has come from the capture device yet"
            silent = now - self.last_frame_at > NO_SIGNAL_AFTER_S
            state = SignalState.NO_SIGNAL if silent else self.state
        return f"the capture shows {_STATE_WORDS[state]}, not a live scan"

    def _live(self, now: float) -> bool:
        return self.state is SignalState.LIVE and now - self.last_frame_at <= NO_SIGNAL_AFTER_S

    def resume(self) -> None:
        """Back to live; the clip starts afresh, so a saved clip never jumps over the pause."""
        with self._lock:
            self.user_frozen, self.frozen = False, None
            self.ring.clear()

    def is_shown(self, frame: Frame) -> bool:
        """Whether `frame` is (or is about to be) on the screen: while frozen, only the frozen
        frame is, so a frame that raced the freeze gets no overlay."""
        with self._lock:
            return not self.user_frozen or frame is self.frozen

    def frame_to_save(self) -> Frame | None:
        """The frozen frame while frozen (what the user looks at), else the newest one."""
        with self._lock:
            return self.frozen if self.user_frozen else (self.newest or self.published)

    def clip(self) -> list[Shot]:
        """The ring's newest run of shots cut with one box (a new calibration starts a run)."""
        with self._lock:
            shots = list(self.ring)
        if not shots:
            return []
        box, run = shots[-1].box, []
        for shot in reversed(shots):
            if shot.box != box:
                break
            run.append(shot)
        return run[::-1]

    def snapshot(self, now: float) -> dict[str, Any]:
        """status.json's frame fields. Without frames for NO_SIGNAL_AFTER_S the state is
        no_signal whatever the grab thread last saw: a read or open that hangs shows too."""
        with self._lock:
            shown = self.frozen if self.user_frozen else self.published
            silent = now - self.last_frame_at > NO_SIGNAL_AFTER_S
            return {
                "state": SignalState.NO_SIGNAL.value if silent else self.state.value,
                "frozen": self.user_frozen,
                "seq": self.seq,
                "frame_index": -1 if shown is None else shown.index,
                "captured_wall": 0.0 if shown is None else shown.wall,
                "dropped": self.dropped,
                "size": None if shown is None else [shown.pixels.shape[1], shown.pixels.shape[0]],
            }
