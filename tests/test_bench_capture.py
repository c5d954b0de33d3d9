"""`appliance bench capture` at a tiny size: a real `appliance run` with the generated source,
a real signed-in browser-like client on the MJPEG stream; the report has every figure and
its target's verdict. Speed is never asserted (DESIGN.md): only that everything was measured."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_fixtures import Run, run_bench

from appliance.bench.capture.results import CaptureOptions
from appliance.bench.harness import BenchError

pytestmark = pytest.mark.slow

TINY = [
    *("--seconds", "3", "--source-seconds", "1", "--rounds", "1", "--round-seconds", "1"),
    *("--width", "640", "--height", "360", "--fps", "15"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One tiny run shared by this module's tests: the printed report and the JSON one."""
    return run_bench(tmp_path_factory, "capture", TINY)


def test_the_source_was_read_alone_and_the_appliance_published_it(run: Run) -> None:
    report = run[1]
    assert report["source"]["frames"] > 0 and report["source"]["fps"] > 0
    live = report["live"]
    assert live["published"] > 0 and live["published_fps"] > 0
    assert live["dropped"] >= 0
    assert live["source_fps"] > 0


def test_the_browser_like_client_got_frames_and_the_model_drew_overlays(run: Run) -> None:
    live = run[1]["live"]
    assert 0 < live["browser_frames"] <= live["browser_parts"]
    assert live["browser_bytes"] > 0 and live["status_polls"] > 0
    assert live["overlays"] > 0 and len(live["overlay_ages_ms"]) == live["overlays"]
    assert 0 < live["overlay_age_p50_ms"] <= live["overlay_age_p95_ms"]
    # Frames the browser saw were published: never more than the worker wrote (a little
    # slack: the two counts start and stop a few milliseconds apart).
    assert live["browser_frames"] <= live["published"] + 3


def test_the_ui_was_measured_both_ways_without_failures(run: Run) -> None:
    loads = run[1]["ui"]
    assert [load["endpoint"] for load in loads] == ["/health", "/"]
    for load in loads:
        assert load["errors"] == 0
        for which in ("without", "with"):
            assert 0 < load[f"{which}_p50_ms"] <= load[f"{which}_p95_ms"]
        assert load["ratio_p50"] > 0 and load["ratio_p95"] > 0


def test_the_printed_report_has_every_figure_and_verdict(run: Run) -> None:
    text, report = run
    for needed in (
        "capture source generated, 640x360 at 15 fps",
        "capture only",
        "published",
        "dropped frames",
        "browser (MJPEG)",
        "target >= 25:",
        "inference",
        "target >= 10:",
        "overlay age p50",
        "overlay age p95",
        "ratio p50",
        "target <= 1.2",
        "failed requests: 0",
    ):
        assert needed in text, needed
    targets = report["targets"]
    for name in ("browser_met", "inference_met", "ui_p50_met", "ui_p95_met"):
        assert isinstance(targets[name], bool)
    verdicts = text.count(" MET") + text.count("NOT MET")
    assert verdicts >= 4


def test_options_are_checked_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="--rounds"):
        CaptureOptions(rounds=0)
    with pytest.raises(BenchError, match="must be > 0"):
        CaptureOptions(seconds=0)
    with pytest.raises(BenchError, match="no such file"):
        CaptureOptions(file=tmp_path / "missing.avi")
