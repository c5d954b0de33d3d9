"""Signal states (no signal, black, frozen, live) on simulated time, and the scan region found
in a scanner screen: the generated one (with JPEG and noise, and fans cut by fluid), never the
menus, text and thumbnails around it, and nothing in a black frame."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from appliance.capture.region import detect_region
from appliance.capture.signal import SignalMonitor, SignalState
from appliance.capture.sources import Frame
from appliance.phantoms.generated_source import GeneratedSource


def frame(pixels: np.ndarray, index: int = 0) -> Frame:
    return Frame(pixels, index, captured_at=0.0, wall=0.0)


def noise(seed: int, low: int = 0, high: int = 256) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(low, high, (120, 160, 3), dtype=np.uint8)


def close_to(found: tuple[int, int, int, int] | None, truth: tuple[int, int, int, int]) -> bool:
    """Every edge within 3 pixels."""
    assert found is not None
    (x, y, w, h), (tx, ty, tw, th) = found, truth
    edges = (x - tx, y - ty, x + w - (tx + tw), y + h - (ty + th))
    return max(abs(e) for e in edges) <= 3


# --- SignalMonitor ----------------------------------------------------------------------------


def test_states_are_the_strings_status_json_carries() -> None:
    assert [s.value for s in SignalState] == ["live", "no_signal", "black", "frozen"]
    assert json.dumps(SignalState.NO_SIGNAL) == '"no_signal"'  # a str: written as it is


def test_no_signal_before_the_first_frame_and_after_a_gap() -> None:
    monitor = SignalMonitor(no_signal_after_s=1.0, frozen_after_s=2.0)
    assert monitor.update(None, 100.0) is SignalState.NO_SIGNAL
    assert monitor.update(frame(noise(1)), 100.1) is SignalState.LIVE
    assert monitor.update(None, 100.6) is SignalState.LIVE  # a late frame is not a lost signal
    assert monitor.update(None, 101.1) is SignalState.NO_SIGNAL
    assert monitor.update(frame(noise(2)), 103.0) is SignalState.LIVE  # back


def test_black_frames_near_zero_in_mean_and_spread() -> None:
    monitor = SignalMonitor()
    assert monitor.update(frame(np.zeros((120, 160, 3), np.uint8)), 0.0) is SignalState.BLACK
    assert monitor.update(frame(noise(3, 0, 4)), 0.1) is SignalState.BLACK  # a grabber's noise
    dark_scan = noise(4, 0, 40)  # dim, but a picture
    assert monitor.update(frame(dark_scan), 0.2) is SignalState.LIVE


def test_a_picture_that_stops_changing_is_frozen_after_the_delay() -> None:
    monitor = SignalMonitor(frozen_after_s=2.0)
    still = noise(5)
    rng = np.random.default_rng(0)
    states = []
    for n in range(80):  # 30 fps for 2.6 s; the grabber adds a level of noise to each copy
        jitter = rng.integers(-1, 2, still.shape)
        copy = np.clip(still.astype(int) + jitter, 0, 255).astype(np.uint8)
        states.append(monitor.update(frame(copy, n), n / 30))
    assert set(states[:59]) == {SignalState.LIVE}
    assert set(states[61:]) == {SignalState.FROZEN}
    assert monitor.update(frame(noise(6)), 80 / 30) is SignalState.LIVE  # moving again


def test_byte_identical_frames_are_frozen_and_black_wins_over_frozen() -> None:
    monitor = SignalMonitor(frozen_after_s=0.5)
    same = noise(7)
    assert [monitor.update(frame(same), t) for t in (0.0, 0.3, 0.6)][-1] is SignalState.FROZEN
    black = np.zeros_like(same)
    assert [monitor.update(frame(black), t) for t in (1.0, 2.0)][-1] is SignalState.BLACK


def test_a_slow_drift_is_not_frozen() -> None:
    """Each frame barely differs from the last, but the picture keeps changing."""
    monitor = SignalMonitor(frozen_after_s=1.0)
    base = noise(8).astype(np.float32)
    for n in range(90):
        pixels = np.clip(base + n * 0.8, 0, 255).astype(np.uint8)
        assert monitor.update(frame(pixels, n), n / 30) is SignalState.LIVE


# --- detect_region ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def screen() -> GeneratedSource:
    return GeneratedSource(1280, 720, loop_frames=4)


def test_finds_the_generated_sector_within_a_few_pixels(screen: GeneratedSource) -> None:
    screen.open()
    for _ in range(4):
        shown = screen.read()
        assert shown is not None
        assert close_to(detect_region(shown.pixels), screen.truth(shown.index).region)


@pytest.mark.parametrize("seed", [3, 5, 8])  # 3 and 5: fluid cuts the fan in two
def test_finds_other_sectors_even_through_jpeg(seed: int) -> None:
    source = GeneratedSource(640, 480, seed=seed, loop_frames=2)
    pixels = source._loop().frames[0]
    assert close_to(detect_region(pixels), source.truth(0).region)
    ok, jpeg = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 75])
    assert ok
    decoded = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    assert decoded is not None
    assert close_to(detect_region(np.asarray(decoded, dtype=np.uint8)), source.truth(0).region)


def test_menus_text_and_thumbnails_alone_are_no_region(screen: GeneratedSource) -> None:
    pixels = screen._loop().frames[0].copy()
    x, y, w, h = screen.truth(0).region
    pixels[y : y + h, x : x + w] = 0  # the scan gone: bars, buttons, text and thumbnails left
    assert detect_region(pixels) is None


def test_a_black_or_flat_frame_has_no_region() -> None:
    assert detect_region(np.zeros((720, 1280, 3), np.uint8)) is None
    assert detect_region(np.full((480, 640, 3), 90, np.uint8)) is None
