"""Frame sources: the generated scanner screen (paced, moving, exact truth), a video file
(looped at its own rate, refused by name when missing or unreadable), OpenCV devices (refused
with a hint, None when frames stop, opened again later), and open_source's mapping."""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from appliance.capture import probe
from appliance.capture.signal import SignalMonitor, SignalState
from appliance.capture.sources import (
    CaptureError,
    Frame,
    FrameSource,
    OpenCVSource,
    VideoFileSource,
    lossy_method,
    open_source,
)
from appliance.cli import capture as capture_cli
from appliance.config import CaptureSource
from appliance.phantoms import make_ultrasound_clip
from appliance.phantoms.generated_source import OPENERS, GeneratedSource, _layout

SMALL: dict[str, Any] = {"width": 320, "height": 240, "loop_frames": 6}


def generated_frames(source: FrameSource, count: int) -> list[Frame]:
    frames = []
    for _ in range(count):
        frame = source.read(timeout_s=1.0)
        assert frame is not None
        frames.append(frame)
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """An MJPG .avi, as a grabber's recording would be."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened()
    for pixels in frames:
        writer.write(np.ascontiguousarray(pixels))
    writer.release()
    return path


@pytest.fixture
def video(tmp_path: Path) -> Path:
    source = GeneratedSource(**SMALL)
    source.open()
    frames = [f.pixels for f in generated_frames(source, 8)]
    return write_video(tmp_path / "clip.avi", frames, fps=60.0)


# --- the generated source ---------------------------------------------------------------------


def test_generated_frames_are_bgr_read_only_and_paced_to_real_time() -> None:
    source = GeneratedSource(**SMALL, fps=60.0)
    source.open()
    started = time.monotonic()
    frames = generated_frames(source, 13)
    elapsed = time.monotonic() - started
    assert elapsed >= 12 / 60.0  # never faster than real time (a lower bound, not a speed test)
    assert all(f.pixels.shape == (240, 320, 3) and f.pixels.dtype == np.uint8 for f in frames)
    assert not frames[0].pixels.flags.writeable  # shared by every loop
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices)) and indices[0] == 0
    assert all(b.captured_at > a.captured_at for a, b in itertools.pairwise(frames))
    assert abs(frames[0].wall - time.time()) < 60
    assert source.size == (320, 240) and source.fps == 60.0


def test_generated_scene_moves_so_no_two_consecutive_frames_are_alike() -> None:
    source = GeneratedSource(**SMALL)
    loop = list(source._loop().frames)  # the prepared loop, in play order
    assert len(loop) == 2 * SMALL["loop_frames"] - 2  # forwards, then back without repeats
    for a, b in itertools.pairwise([*loop, loop[0]]):
        assert np.mean(cv2.absdiff(a, b)) > 0.5
    monitor = SignalMonitor(no_signal_after_s=1.0, frozen_after_s=0.5)
    for n in range(3 * len(loop)):  # three loops, at 30 fps of simulated time
        frame = Frame(loop[n % len(loop)], n, captured_at=n / 30, wall=0.0)
        assert monitor.update(frame, n / 30) is SignalState.LIVE


def test_generated_truth_is_the_phantoms_own_per_frame() -> None:
    """The scan inside each frame is the phantom clip's frame, and the truth its fluid mask's
    area: forwards through the clip, then back."""
    width, height, count = SMALL["width"], SMALL["height"], SMALL["loop_frames"]
    source = GeneratedSource(width, height, 30.0, seed=4, loop_frames=count)
    layout = _layout(width, height)
    clip = make_ultrasound_clip(
        4,
        frames=count,
        frame_time_ms=1000 / 30,
        rows=layout.scan_rows,
        columns=layout.scan_columns,
        fluid=True,
    )
    frames = source._loop().frames
    for index, k in enumerate([0, 1, 2, 3, 4, 5, 4, 3, 2, 1, 0, 1]):
        truth = source.truth(index)
        assert truth.fluid_area_mm2 == clip.fluid_areas_mm2[k] > 0
        assert truth.mm_per_pixel == clip.geometry.mm_per_pixel
        scan = frames[index % len(frames)][
            layout.top : layout.top + layout.scan_rows,
            layout.scan_x : layout.scan_x + layout.scan_columns,
        ]
        assert np.array_equal(scan, cv2.cvtColor(clip.frames[k], cv2.COLOR_RGB2BGR))
    x0, y0, x1, y1 = clip.geometry.region
    assert source.truth(0).region == (layout.scan_x + x0, layout.top + y0, x1 - x0 + 1, y1 - y0 + 1)


def test_generated_source_reads_nothing_until_opened_and_after_close() -> None:
    source = GeneratedSource(**SMALL)
    assert source.read(timeout_s=0.01) is None
    source.open()
    assert source.read() is not None
    source.close()
    assert source.read(timeout_s=0.01) is None
    source.open()  # again, as the worker does after a loss
    assert source.read() is not None


def test_generated_source_refuses_a_screen_too_small() -> None:
    with pytest.raises(CaptureError, match="at least 160x120"):
        GeneratedSource(100, 100)


# --- a video file -----------------------------------------------------------------------------


def test_video_file_plays_at_its_own_rate_and_loops(video: Path) -> None:
    source = VideoFileSource(video, name="recording", size=(1280, 720), fps=5.0)
    source.open()
    assert source.size == (320, 240) and source.fps == pytest.approx(60.0)
    started = time.monotonic()
    frames = generated_frames(source, 20)
    assert time.monotonic() - started >= 19 / 60.0
    assert [f.index for f in frames] == list(range(20))  # a reader in time misses none
    assert np.array_equal(frames[0].pixels, frames[8].pixels)  # 8 frames, then again
    assert np.array_equal(frames[3].pixels, frames[19].pixels)
    assert not np.array_equal(frames[0].pixels, frames[1].pixels)
    source.close()
    assert source.read(timeout_s=0.01) is None


def test_a_late_reader_of_a_file_skips_to_the_frame_due_now(video: Path) -> None:
    source = VideoFileSource(video)
    source.open()
    assert source.read() is not None
    time.sleep(0.1)  # six frames' time at 60 fps
    late = source.read()
    assert late is not None and late.index >= 4


def test_a_missing_video_file_is_refused_by_name(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.avi"
    source = open_source(CaptureSource(kind="file", file=missing))
    with pytest.raises(CaptureError, match=f"video file {missing} does not exist"):
        source.open()


def test_an_unreadable_video_file_is_refused_by_name(tmp_path: Path) -> None:
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(CaptureError, match=f"cannot read video file {junk}"):
        VideoFileSource(junk).open()


# --- OpenCV devices ---------------------------------------------------------------------------


def test_a_device_that_cannot_be_opened_names_it_and_the_probe(tmp_path: Path) -> None:
    device = tmp_path / "video7"
    source = open_source(CaptureSource(kind="device", device=str(device), name="room 2"))
    assert source.name == "room 2"
    with pytest.raises(CaptureError) as caught:
        source.open()
    assert str(device) in str(caught.value)
    assert "appliance capture probe" in str(caught.value)
    assert source.read(timeout_s=0.01) is None  # never raises for a missing signal


def test_a_device_index_is_named_as_its_dev_path() -> None:
    source = open_source(CaptureSource(kind="device", device="3", fourcc="MJPG"))
    assert isinstance(source, OpenCVSource)
    assert source.target == 3 and source.label == "/dev/video3" and source.api == cv2.CAP_V4L2


def test_frames_that_stop_read_as_none_and_the_source_opens_again(video: Path) -> None:
    """A file through the same OpenCV path as a grabber: its end is the cable pulled."""
    source = OpenCVSource(str(video), api=cv2.CAP_ANY, label=str(video), name="grabber")
    source.open()
    frames = [source.read() for _ in range(8)]
    assert all(f is not None for f in frames)
    assert [f.index for f in frames if f is not None] == list(range(8))
    started = time.monotonic()
    assert source.read(timeout_s=0.2) is None
    assert time.monotonic() - started >= 0.15  # waits the timeout: no tight loop on a dead device
    source.open()  # plugged in again
    again = source.read()
    assert again is not None and again.index == 0
    source.close()


def test_gstreamer_without_support_in_opencv_says_so() -> None:
    source = open_source(CaptureSource(kind="gstreamer", pipeline="videotestsrc ! appsink"))
    if cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
        pytest.skip("this OpenCV has GStreamer")
    with pytest.raises(CaptureError, match="no GStreamer support"):
        source.open()


# --- open_source ------------------------------------------------------------------------------


def test_open_source_builds_each_kind_unopened(tmp_path: Path) -> None:
    wanted = CaptureSource(kind="generated", width=320, height=240, fps=25)
    generated = open_source(wanted, OPENERS)
    assert isinstance(generated, GeneratedSource)
    assert (generated.size, generated.fps, generated.name) == ((320, 240), 25.0, "ultrasound")
    assert generated.read(timeout_s=0.01) is None  # not opened yet
    file = open_source(CaptureSource(kind="file", file=tmp_path / "a.avi", name="rec"))
    assert isinstance(file, VideoFileSource) and file.name == "rec"


@pytest.mark.parametrize(
    ("source", "method"),
    [
        (CaptureSource(kind="device", device="/dev/video0", fourcc="MJPG"), "ISO_10918_1"),
        (CaptureSource(kind="device", device="/dev/video0", fourcc="YUYV"), None),
        (CaptureSource(kind="device", device="/dev/video0"), ""),  # its default: maybe MJPEG
        (CaptureSource(kind="gstreamer", pipeline="v4l2src ! videoconvert ! appsink"), ""),
        (CaptureSource(kind="file", file=Path("clip.mp4")), ""),
        (CaptureSource(kind="generated"), None),
    ],
)
def test_a_source_says_whether_its_frames_were_lossily_compressed(
    source: CaptureSource, method: str | None
) -> None:
    assert lossy_method(source) == method


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (CaptureSource(kind="none"), "no live capture is configured"),
        (CaptureSource(kind="file"), "capture.source.file is not set"),
        (CaptureSource(kind="gstreamer", pipeline=" "), "capture.source.pipeline is empty"),
        (CaptureSource(kind="generated"), "demo scanner screen"),  # no opener handed in
    ],
)
def test_open_source_refuses_a_configuration_naming_nothing(
    source: CaptureSource, message: str
) -> None:
    with pytest.raises(CaptureError, match=message):
        open_source(source)


# --- appliance capture probe ------------------------------------------------------------------


def test_registering_the_probe_imports_nothing_heavy() -> None:
    code = (
        "import argparse, sys; from appliance.cli import capture as commands; "
        "p = argparse.ArgumentParser(); commands.register(p.add_subparsers()); "
        "a = p.parse_args(['capture', 'probe', '--device', '2', '--seconds', '0.5']); "
        "print(a.func.__name__, a.device, a.seconds, 'cv2' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["cmd_probe", "['2']", "0.5", "False"]


def test_probe_lists_devices_in_number_order_with_their_sysfs_names(tmp_path: Path) -> None:
    dev, sysfs = tmp_path / "dev", tmp_path / "sysfs"
    for name in ("video10", "video2", "video0", "vbi0", "videoX"):
        (dev / name).parent.mkdir(parents=True, exist_ok=True)
        (dev / name).touch()
    (sysfs / "video2").mkdir(parents=True)
    (sysfs / "video2" / "name").write_text("USB3 Video Capture\n")
    devices = probe.video_devices(dev)
    assert [d.name for d in devices] == ["video0", "video2", "video10"]
    assert probe.device_name(dev / "video2", sysfs) == "USB3 Video Capture"
    assert probe.device_name(dev / "video0", sysfs) == "(no name in sysfs)"


def test_probe_reports_a_mode_it_cannot_open(tmp_path: Path) -> None:
    result = probe.probe_mode(tmp_path / "video5", "MJPG", (1280, 720), seconds=0.1)
    assert not result.opened
    assert result.describe() == "  MJPG 1280x720: cannot open"
    good = probe.ModeResult("YUYV", (640, 480), True, "YUYV", (640, 480), 30.0, 29.7)
    assert good.describe() == "  YUYV 640x480: 29.7 fps (device says 30)"
    other = probe.ModeResult("YUYV", (1920, 1080), True, "YUYV", (1280, 720), 10.0, 9.9)
    assert other.describe() == "  YUYV 1920x1080: gave YUYV 1280x720, 9.9 fps (device says 10)"


def test_probe_of_a_device_that_is_gone_says_each_mode_cannot_open(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = argparse.Namespace(device=[str(tmp_path / "video3")], seconds=0.1)
    assert capture_cli.cmd_probe(args) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'video3'}: (no name in sysfs)" in out
    assert out.count("cannot open") == len(probe.FOURCCS) * len(probe.SIZES)
