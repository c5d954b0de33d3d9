"""Is the live picture worth showing and analysing? The states a grabbed signal can be in.

A grabber goes on delivering frames when the scanner behind it does not: black ones when the
cable is out of the scanner or the scanner sleeps, the same picture over and over when the
scanner (or the grabber's firmware) hangs. Neither should be analysed as a live scan, so the
worker shows the state and holds back the model. No frame at all (unplugged grabber) is the
third case.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from enum import Enum

import cv2
import numpy as np
import numpy.typing as npt

from appliance.capture.sources import Frame

_SAMPLE_WIDTH = 160  # the picture is judged on a small grey copy: cheap at 30 fps, and
# averaging blocks of pixels quiets a grabber's noise for the frozen test


class SignalState(str, Enum):
    LIVE = "live"
    NO_SIGNAL = "no_signal"
    BLACK = "black"
    FROZEN = "frozen"


@dataclass(eq=False)
class SignalMonitor:
    """Turns the stream of frames (None: none came) into a SignalState; one per source.

    NO_SIGNAL: no frame for `no_signal_after_s` (and before the first frame). BLACK: the
    frame's mean and spread are near zero. FROZEN: the picture has not changed for
    `frozen_after_s`: on a small grey copy, no more than `still_share` of the pixels moved by
    more than `still_level` grey levels (a grabber's noise moves many pixels a little; a live
    scan's speckle moves many by a lot).
    """

    no_signal_after_s: float = 1.0
    frozen_after_s: float = 2.0
    _: KW_ONLY
    black_level: float = 10.0
    black_spread: float = 6.0
    still_level: int = 6
    still_share: float = 0.005
    state: SignalState = field(default=SignalState.NO_SIGNAL, init=False)
    _last_frame_at: float | None = field(default=None, init=False, repr=False)
    # the picture when it last changed, and since when it has not
    _reference: npt.NDArray[np.uint8] | None = field(default=None, init=False, repr=False)
    _unchanged_since: float = field(default=0.0, init=False, repr=False)

    def update(self, frame: Frame | None, now: float) -> SignalState:
        """The state after `frame` arrived (or did not) at `now` (time.monotonic())."""
        if frame is None:
            if self._last_frame_at is None or now - self._last_frame_at >= self.no_signal_after_s:
                self.state = SignalState.NO_SIGNAL
                self._reference = None  # a picture after a gap is judged afresh
            return self.state
        self._last_frame_at = now
        small = gray_sample(frame.pixels)
        if float(small.mean()) < self.black_level and float(small.std()) < self.black_spread:
            self.state = SignalState.BLACK
        elif self._still_for(small, now) >= self.frozen_after_s:
            self.state = SignalState.FROZEN
        else:
            self.state = SignalState.LIVE
        return self.state

    def _still_for(self, small: npt.NDArray[np.uint8], now: float) -> float:
        """Seconds the picture has stayed as it was. Compared with the picture when it last
        changed, not the previous frame, so a slow drift still counts as change."""
        reference = self._reference
        if reference is None or reference.shape != small.shape or self._changed(reference, small):
            self._reference, self._unchanged_since = small, now
            return 0.0
        return now - self._unchanged_since

    def _changed(self, reference: npt.NDArray[np.uint8], small: npt.NDArray[np.uint8]) -> bool:
        moved = cv2.absdiff(reference, small) > self.still_level
        return float(np.mean(moved)) > self.still_share


def gray_sample(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """A small grey copy of a BGR frame (about 160 pixels across, block averages)."""
    height, width = pixels.shape[:2]
    factor = max(1, width // _SAMPLE_WIDTH)
    size = (max(1, width // factor), max(1, height // factor))
    small = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA) if factor > 1 else pixels
    gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
    return np.asarray(gray, dtype=np.uint8)
