"""The worker's live capture loop in-process on a real store with the demo ultrasound model:
a generated scanner screen and a video file through the whole path (live files, overlay,
freeze, saved frames and clips analysed like pushed images), a source that fails and comes
back, and the worker process stopping on SIGTERM."""

from __future__ import annotations

import functools
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from appliance.capture.signal import SignalState
from appliance.capture.sources import CaptureError, Frame, FrameSource, open_source
from appliance.config import Settings
from appliance.paths import Paths, resolve_paths
from appliance.phantoms import make_ultrasound, ultrasound_dataset
from appliance.phantoms.generated_source import OPENERS, GeneratedSource
from appliance.store import Store, open_store
from appliance.store import capture as capture_store
from appliance.worker.capture.area import AreaResolver, ScanArea, Shot
from appliance.worker.capture.loop import CaptureLoop, ring_frames
from appliance.worker.capture.state import LiveState, Mailbox
from appliance.worker.models import ModelSet
from appliance.worker.role import Worker

from conftest import RoleProcess, make_settings, wait_for
from worker_fixtures import analysis_of, audit_rows, drain, findings_of, put_dataset

pytestmark = pytest.mark.slow

TRUTH = GeneratedSource(1280, 720, 30.0).truth  # the demo source's known areas per frame
MODELS = {"disabled": ["demo-chest-xray"]}  # the live view needs the ultrasound model only


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelSet]:
    """The demo ultrasound model, loaded once for the module (as the worker loads it)."""
    settings = make_settings(tmp_path_factory.mktemp("models"), models=MODELS)
    loaded = ModelSet.load(settings.models, resolve_paths(settings).cache_dir)
    yield loaded
    loaded.close()


class Running:
    """A started capture loop with its store, paths and an in-process worker."""

    def __init__(self, loop: CaptureLoop, store: Store, paths: Paths, worker: Worker) -> None:
        self.loop, self.store, self.paths, self.worker = loop, store, paths, worker

    def status(self) -> dict[str, Any]:
        return read_json(self.paths.live_dir / "status.json")

    def overlay(self) -> dict[str, Any]:
        return read_json(self.paths.live_dir / "overlay.json")

    def ask(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Queue a request as the UI does and wait for the loop to carry it out."""
        request = capture_store.queue_request(self.store.conn, kind, "tech", **fields)
        row = wait_for(lambda: _finished(self.store, request), 30)
        assert row["state"] == "done", row["result"]
        return dict(json.loads(row["result"]))


def _finished(store: Store, request: int) -> Any:
    row = capture_store.request_row(store.conn, request)
    return row if row is not None and row["state"] != "queued" else None


def read_json(path: Path) -> dict[str, Any]:
    """A live file as the UI reads it; {} while it does not exist yet."""
    try:
        return dict(json.loads(path.read_bytes()))
    except FileNotFoundError:
        return {}


@pytest.fixture
def start(tmp_path: Path, models: ModelSet) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def run(
        capture: dict[str, Any],
        factory: Callable[[], FrameSource] | None = None,
        before: Callable[[Store], None] | None = None,
    ) -> Running:
        capture = {"live_dir": str(tmp_path / "live"), "clip_seconds": 1.0, **capture}
        settings = make_settings(
            tmp_path, capture=capture, models=MODELS, jobs={"pictures_quiet_s": 0}
        )
        store, paths = open_store(settings), resolve_paths(settings)
        if before is not None:
            before(store)
        factory = factory or functools.partial(open_source, settings.capture.source, OPENERS)
        loop = CaptureLoop(settings, paths, store, models, source_factory=factory)
        running = Running(loop, store, paths, Worker(store, models, settings))
        started.append(running)
        loop.start()
        return running

    yield run
    for running in started:
        running.loop.stop()
        running.worker.heartbeat.stop()
        running.store.close()


def live_after(running: Running, frames: int = 5) -> dict[str, Any]:
    """status.json once the loop has published a few frames."""
    return dict(wait_for(lambda: _live(running.status(), frames), 30))


def _live(status: dict[str, Any], frames: int) -> dict[str, Any] | None:
    return status if status.get("state") == "live" and status["seq"] >= frames else None


def measured_area(running: Running, instance: int) -> tuple[float, dict[str, Any]]:
    """The fluid area the normal analysis found in a saved capture, and its finding."""
    drain(running.worker)
    conn = running.store.conn
    assert analysis_of(conn, instance)["state"] == "findings"
    [finding] = findings_of(conn, instance)
    [mask] = finding["result"]["masks"]
    return float(mask["area_mm2"]), finding


def test_generated_source_live_files_freeze_and_saves_through_the_store(
    start: Callable[..., Running],
) -> None:
    truth = TRUTH(0)
    device = "ultrasound"  # capture.source.name's default: the calibration is per device

    def calibrate(store: Store) -> None:
        capture_store.set_calibration(
            store.conn, device, *truth.region, truth.mm_per_pixel, "admin"
        )

    counted = CountedSource(GeneratedSource(1280, 720, 30.0, name=device))
    running = start({"source": {"kind": "generated"}}, factory=lambda: counted, before=calibrate)
    status = live_after(running)
    assert status["device"] == device and status["size"] == [1280, 720]
    assert status["source_fps"] == 30.0 and status["read_fps"] > 0
    assert status["region"] == list(truth.region)
    assert status["mm_per_pixel"] == pytest.approx(truth.mm_per_pixel)
    assert running.paths.live_dir.stat().st_mode & 0o777 == 0o700

    overlay = wait_for(lambda: running.overlay().get("area_mm2") and running.overlay(), 30)
    expected = TRUTH(overlay["frame_index"]).fluid_area_mm2
    assert overlay["area_mm2"] == pytest.approx(expected, rel=0.10)
    assert overlay["model"] == "demo-ultrasound-fluid" and overlay["not_for_clinical_use"]
    assert overlay["region"] == list(truth.region) and overlay["held_back"] == ""
    x, y, w, h = truth.region
    points = np.concatenate([np.asarray(outline) for outline in overlay["outlines"]])
    assert points[:, 0].min() >= x and points[:, 0].max() < x + w  # full-frame pixels
    assert points[:, 1].min() >= y and points[:, 1].max() < y + h
    jpeg = cv2.imread(str(running.paths.live_dir / "frame.jpg"))
    assert jpeg is not None and jpeg.shape == (720, 1280, 3)

    frozen = running.ask("freeze")
    held = running.status()
    assert held["frozen"] is True and held["frame_index"] == frozen["frame_index"]
    picture = (running.paths.live_dir / "frame.jpg").read_bytes()
    grabbed = counted.delivered
    wait_for(lambda: counted.delivered >= grabbed + 9, 30, what="frames grabbed while frozen")
    assert running.status()["seq"] == held["seq"]  # none of them was published
    assert (running.paths.live_dir / "frame.jpg").read_bytes() == picture

    saved = running.ask("save_frame", patient_id="LIVE-1", patient_name="DOE^JANE")
    assert saved["frame_index"] == frozen["frame_index"] and saved["frames"] == 1
    area, _ = measured_area(running, saved["instance_id"])
    assert area == pytest.approx(TRUTH(saved["frame_index"]).fluid_area_mm2, rel=0.10)

    running.ask("resume")  # the clip restarts: it never jumps over the pause
    wait_for(lambda: running.status()["seq"] > held["seq"] + 20, 10)
    assert running.status()["frozen"] is False

    clip = running.ask("save_clip", study_id=saved["study_id"])
    assert clip["study_id"] == saved["study_id"] and clip["frames"] >= 15  # ~1 s at 30 fps
    area, _ = measured_area(running, clip["instance_id"])  # the model reads the first frame
    assert area == pytest.approx(TRUTH(clip["frame_index"]).fluid_area_mm2, rel=0.10)
    conn = running.store.conn
    instances = conn.execute(
        "SELECT i.source, i.frames, p.patient_id, p.patient_name FROM instances i"
        " JOIN series s ON s.id = i.series_ref JOIN studies st ON st.id = s.study_ref"
        " JOIN patients p ON p.id = st.patient_ref ORDER BY i.id"
    ).fetchall()
    assert [tuple(row) for row in instances] == [
        ("capture", 1, "LIVE-1", "DOE^JANE"),
        ("capture", clip["frames"], "LIVE-1", "DOE^JANE"),
    ]
    assert [row["actor"] for row in audit_rows(conn, "ingest.stored")] == ["capture:tech"] * 2
    assert {row["action"] for row in audit_rows(conn, "capture.save_clip")} == {"capture.save_clip"}

    running.loop.stop()
    assert running.status()["state"] == "stopped"
    assert not (running.paths.live_dir / "frame.jpg").exists()
    assert not any(t.name.startswith("capture-") for t in threading.enumerate())


def write_video(path: Path, frames: int = 30) -> list[float]:
    """An MJPG .avi of the generated screen at 30 fps; the fluid area of each of its frames."""
    source = GeneratedSource(1280, 720, 30.0)
    source.open()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30.0, (1280, 720))
    areas: list[float] = []
    while len(areas) < frames:
        frame = source.read(1.0)
        assert frame is not None
        writer.write(np.ascontiguousarray(frame.pixels))
        areas.append(TRUTH(frame.index).fluid_area_mm2)
    writer.release()
    source.close()
    return areas


def test_a_video_file_with_a_found_scan_area_gives_the_true_area(
    start: Callable[..., Running], tmp_path: Path
) -> None:
    video = tmp_path / "scan.avi"
    areas = write_video(video)
    source = {"kind": "file", "file": str(video), "name": "file-grabber"}
    # No region anywhere: the loop finds the scan area itself; the scale comes from settings.
    running = start({"source": source, "mm_per_pixel": TRUTH(0).mm_per_pixel})
    status = live_after(running)
    assert status["device"] == "file-grabber"
    overlay = wait_for(lambda: (o := running.overlay()).get("area_mm2") and o, 30)
    found = wait_for(lambda: running.status()["region"], 10)
    x, y, w, h = TRUTH(0).region
    assert abs(found[0] - x) <= 8 and abs(found[1] - y) <= 8
    assert abs(found[2] - w) <= 16 and abs(found[3] - h) <= 16
    in_file = len(areas)
    assert overlay["area_mm2"] == pytest.approx(areas[overlay["frame_index"] % in_file], rel=0.10)

    saved = running.ask("save_frame", patient_name="ROE^RICHARD")
    area, finding = measured_area(running, saved["instance_id"])
    assert area == pytest.approx(areas[saved["frame_index"] % in_file], rel=0.10)
    assert finding["model"] == "demo-ultrasound-fluid"


class CountedSource:
    """A source that counts the frames it has delivered, so a test can wait for some."""

    def __init__(self, inner: GeneratedSource) -> None:
        self.inner = inner
        self.name, self.fps, self.size = inner.name, inner.fps, inner.size
        self.delivered = 0

    def open(self) -> None:
        self.inner.open()

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        frame = self.inner.read(timeout_s)
        self.delivered += frame is not None
        return frame

    def close(self) -> None:
        self.inner.close()


class Switch:
    """Unplugs and replugs the flaky sources made by one factory."""

    def __init__(self) -> None:
        self.broken = threading.Event()
        self.opens = 0


class FlakySource(CountedSource):
    """A generated source that, while `switch.broken`, delivers nothing and cannot be opened."""

    def __init__(self, switch: Switch) -> None:
        super().__init__(GeneratedSource(1280, 720, 30.0, name="flaky"))
        self.switch = switch

    def open(self) -> None:
        self.switch.opens += 1
        if self.switch.broken.is_set():
            raise CaptureError("the grabber is unplugged (test)")
        super().open()

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        if self.switch.broken.is_set():
            time.sleep(timeout_s)  # a grabber that is unplugged blocks for its whole time-out
            return None
        return super().read(timeout_s)


def test_a_source_that_fails_and_comes_back(start: Callable[..., Running], tmp_path: Path) -> None:
    switch = Switch()
    running = start({"source": {"kind": "generated"}}, factory=lambda: FlakySource(switch))
    before = live_after(running)["seq"]
    switch.broken.set()
    wait_for(lambda: running.status()["state"] == SignalState.NO_SIGNAL.value, 30)
    # The job loop goes on meanwhile: a pushed ultrasound image is analysed as usual.
    phantom = make_ultrasound(5, fluid=True)
    instance = put_dataset(running.store, ultrasound_dataset(phantom), tmp_path, "us.dcm")
    assert drain(running.worker) >= 1
    assert analysis_of(running.store.conn, instance)["state"] == "findings"
    wait_for(lambda: switch.opens >= 3, 15)  # reopened, failed, tried again (with back-off)
    assert running.status()["state"] == SignalState.NO_SIGNAL.value

    switch.broken.clear()
    back = dict(wait_for(lambda: _live(running.status(), before + 5), 15))
    assert back["state"] == "live" and back["published_fps"] > 0
    failed = capture_store.queue_request(running.store.conn, "save_frame", "tech", patient_id="P2")
    row = wait_for(lambda: _finished(running.store, failed), 10)
    assert row["state"] == "done"  # the loop works again after the loss
    alive = {t.name for t in threading.enumerate()}
    assert {"capture-grab", "capture-inference", "capture-control"} <= alive


def test_a_save_without_frames_fails_with_the_reason(start: Callable[..., Running]) -> None:
    switch = Switch()
    switch.broken.set()
    running = start({"source": {"kind": "generated"}}, factory=lambda: FlakySource(switch))
    request = capture_store.queue_request(running.store.conn, "save_clip", "tech", patient_id="P3")
    row = wait_for(lambda: _finished(running.store, request), 10)
    assert row["state"] == "failed"
    assert "not saved: no image has come from the capture device yet" in row["result"]
    [failed] = audit_rows(running.store.conn, "capture.save_clip.failed")
    assert failed["actor"] == "capture:tech"
    assert running.status()["state"] == "no_signal"


def test_the_worker_process_stops_the_loop_on_sigterm(
    role_process: Callable[..., RoleProcess], tmp_path: Path
) -> None:
    live = tmp_path / "live"
    capture = {"source": {"kind": "generated"}, "live_dir": str(live)}
    proc = role_process("worker", ready="worker: ready", capture=capture, models=MODELS)
    proc.start(timeout_s=120)
    wait_for(lambda: _live(read_json(live / "status.json"), 5), 60)
    wait_for(lambda: (live / "overlay.json").exists(), 30)
    assert proc.stop(signal.SIGTERM) == 0
    assert read_json(live / "status.json")["state"] == "stopped"
    assert sorted(p.name for p in live.iterdir()) == ["status.json"]


# --- the small parts -------------------------------------------------------------------------


def test_the_scan_area_comes_from_calibration_then_settings_then_detection() -> None:
    settings = Settings.model_validate({"capture": {"mm_per_pixel": 0.2}})
    area = AreaResolver(settings.capture)
    assert area.current() == ScanArea(None, 0.2, "none")
    assert area.needs_detection((640, 480), now=0.0)
    area.set_detected((10, 20, 300, 200), (640, 480), now=0.0)
    assert area.current() == ScanArea((10, 20, 300, 200), 0.2, "detected")
    assert not area.needs_detection((640, 480), now=1.0)
    assert area.needs_detection((1280, 720), now=1.0)  # another frame size: look again
    area.set_calibration(capture_store.Calibration(1, 2, 30, 40, None))
    assert area.current() == ScanArea((1, 2, 30, 40), 0.2, "calibration")  # scale: settings
    area.set_calibration(capture_store.Calibration(1, 2, 30, 40, 0.5))
    assert area.current().mm_per_pixel == 0.5
    assert not area.needs_detection((1280, 720), now=9.0)
    fixed = Settings.model_validate({"capture": {"region": [5, 6, 70, 80]}})
    assert AreaResolver(fixed.capture).current() == ScanArea((5, 6, 70, 80), None, "settings")


def test_a_scan_area_is_clipped_to_the_frame() -> None:
    assert ScanArea((600, 400, 100, 100), None, "calibration").crop_box(640, 480) == (
        600,
        400,
        40,
        80,
    )
    assert ScanArea((700, 0, 10, 10), None, "calibration").crop_box(640, 480) == (0, 0, 640, 480)
    assert ScanArea(None, None, "none").crop_box(640, 480) == (0, 0, 640, 480)


def _frame(index: int) -> Frame:
    return Frame(np.zeros((4, 4, 3), np.uint8), index, captured_at=index / 30, wall=index / 30)


def _shot(index: int, box: tuple[int, int, int, int]) -> Shot:
    return Shot(np.zeros((2, 2, 3), np.uint8), box, index, index / 30, index / 30)


def test_the_clip_is_the_newest_run_cut_with_one_box_and_drops_are_counted() -> None:
    live = LiveState(ring_frames=4)
    for index, box in enumerate([(0, 0, 4, 4)] * 2 + [(1, 1, 2, 2)] * 3):
        live.on_frame(_frame(index), SignalState.LIVE, now=index / 30)
        live.on_published(_frame(index), _shot(index, box))
    assert [shot.index for shot in live.clip()] == [2, 3, 4]  # ring of 4, newest box only
    live.on_frame(_frame(9), SignalState.LIVE, now=1.0)
    assert live.snapshot(1.0)["dropped"] == 4  # frames 5-8 never came
    assert live.freeze(1.0) is not None and live.frame_to_save() is not None
    assert not live.on_frame(_frame(10), SignalState.LIVE, now=1.1)  # frozen: not published
    assert live.frame_to_save().index == 4  # type: ignore[union-attr]  # what the user sees


def test_nothing_is_saved_or_frozen_once_the_signal_is_lost_unless_frozen_before() -> None:
    live = LiveState(ring_frames=4)
    for index in range(3):
        live.on_frame(_frame(index), SignalState.LIVE, now=index / 30)
        live.on_published(_frame(index), _shot(index, (0, 0, 4, 4)))
    assert live.not_live(0.1) == ""
    later = 0.1 + 2.0  # no frame for two seconds: unplugged
    assert live.not_live(later) == "the capture shows no signal, not a live scan"
    assert live.freeze(later) is None  # the last picture is not the scan now
    live.on_frame(_frame(3), SignalState.BLACK, now=later)
    assert "a black image" in live.not_live(later)
    live.on_frame(_frame(4), SignalState.LIVE, now=later + 0.03)
    frozen = live.freeze(later + 0.03)
    assert frozen is not None  # frozen while live: what the user looks at stays saveable
    assert live.not_live(later + 5.0) == "" and live.frame_to_save() is frozen


def test_a_clip_never_spans_a_lost_signal() -> None:
    live = LiveState(ring_frames=10)
    for index in range(4):
        live.on_frame(_frame(index), SignalState.LIVE, now=index / 30)
        live.on_published(_frame(index), _shot(index, (0, 0, 4, 4)))
    back = 60.0  # a minute without frames: unplugged, maybe the next patient meanwhile
    live.on_frame(_frame(100), SignalState.LIVE, now=back)
    live.on_published(_frame(100), _shot(100, (0, 0, 4, 4)))
    assert [shot.index for shot in live.clip()] == [100]


def test_inference_gets_the_newest_frame_only() -> None:
    box = Mailbox()
    for index in range(3):
        box.put(_frame(index), SignalState.LIVE)
    item = box.take(0.01)
    assert item is not None and item[0].index == 2
    assert box.take(0.01) is None


def test_the_clip_ring_keeps_clip_seconds_within_its_memory_budget() -> None:
    assert ring_frames(4.0, GeneratedSource(1280, 720, 30.0)) == 120
    assert ring_frames(60.0, GeneratedSource(1920, 1080, 30.0)) == (1 << 30) // (1920 * 1080 * 3)
