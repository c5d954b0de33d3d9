"""What the live capture benchmark measures: its options, the source read alone, the live
window, the UI's latency beside it, and the whole report's figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.bench.harness.command import report_json
from appliance.bench.harness.options import check_options
from appliance.bench.harness.tables import percentile

BROWSER_FPS_TARGET = 25.0
INFERENCE_FPS_TARGET = 10.0
UI_RATIO_TARGET = 1.2
UI_ENDPOINTS = ("/health", "/")


@dataclass(frozen=True)
class CaptureOptions:
    """What to capture and for how long; checked here so that the API refuses what the CLI
    does."""

    seconds: float = 20.0
    source_seconds: float = 5.0
    rounds: int = 3
    round_seconds: float = 5.0
    width: int = 1280
    height: int = 720
    fps: float = 30.0
    file: Path | None = None  # a video file instead of the generated source
    workdir: Path | None = None  # None: a temporary folder, removed at the end

    def __post_init__(self) -> None:
        check_options(
            (
                min(self.seconds, self.source_seconds, self.round_seconds, self.fps) > 0,
                "--seconds, --source-seconds, --round-seconds and --fps must be > 0",
            ),
            (self.rounds >= 1, "--rounds must be at least 1"),
            # The bounds of the capture settings (appliance.config), so that a bad size is
            # refused here, before a work folder is made and the appliance's configuration
            # refuses it.
            (64 <= self.width <= 7680, f"--width must be within 64..7680, got {self.width}"),
            (64 <= self.height <= 4320, f"--height must be within 64..4320, got {self.height}"),
            (self.fps <= 240, f"--fps must be at most 240, got {self.fps:g}"),
            (self.file is None or self.file.is_file(), f"--file {self.file}: no such file"),
        )

    @property
    def kind(self) -> str:
        return "generated" if self.file is None else "file"


@dataclass(frozen=True)
class SourceRun:
    """The source read alone: frames in seconds."""

    frames: int
    seconds: float

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class LiveRun:
    """What the worker published and the browser-like client got over one window."""

    seconds: float
    published: int  # status.json seq increments
    dropped: int  # status.json dropped increments
    source_fps: float  # the worker's own figure (median of the samples)
    published_fps_reported: float
    overlays: int  # distinct overlay.json frame indices
    overlay_ages_ms: tuple[float, ...]
    inference_fps_reported: float
    browser_frames: int  # distinct frames (X-Frame-Seq) the MJPEG client received
    browser_parts: int  # parts received, keep-alive copies included
    browser_bytes: int
    status_polls: int

    @property
    def published_fps(self) -> float:
        return self.published / self.seconds

    @property
    def inference_fps(self) -> float:
        return self.overlays / self.seconds

    @property
    def browser_fps(self) -> float:
        return self.browser_frames / self.seconds

    def age(self, q: float) -> float:
        return percentile(self.overlay_ages_ms, q)


@dataclass(frozen=True)
class UILoad:
    """One endpoint's latencies without and with the live view open."""

    endpoint: str
    without_ms: tuple[float, ...]
    with_ms: tuple[float, ...]
    errors: int

    def p(self, which: str, q: float) -> float:
        values = self.without_ms if which == "without" else self.with_ms
        return percentile(values, q)

    def ratio(self, q: float) -> float:
        return self.p("with", q) / self.p("without", q)


@dataclass(frozen=True)
class CaptureReport:
    options: CaptureOptions
    cores: int
    ui_threads: int
    models: str
    source: SourceRun
    live: LiveRun
    ui: tuple[UILoad, ...]

    @property
    def browser_met(self) -> bool:
        return self.live.browser_fps >= BROWSER_FPS_TARGET

    @property
    def inference_met(self) -> bool:
        return self.live.inference_fps >= INFERENCE_FPS_TARGET

    def ui_met(self, q: float) -> bool:
        return all(load.ratio(q) <= UI_RATIO_TARGET for load in self.ui)

    def to_json(self) -> dict[str, Any]:
        data = report_json(self)
        data["source"]["fps"] = self.source.fps
        data["live"].update(
            published_fps=self.live.published_fps,
            inference_fps=self.live.inference_fps,
            browser_fps=self.live.browser_fps,
            overlay_age_p50_ms=self.live.age(50),
            overlay_age_p95_ms=self.live.age(95),
        )
        for load, out in zip(self.ui, data["ui"], strict=True):
            for which in ("without", "with"):
                out.pop(f"{which}_ms")
                out.update(
                    {f"{which}_p50_ms": load.p(which, 50), f"{which}_p95_ms": load.p(which, 95)}
                )
            out.update(ratio_p50=load.ratio(50), ratio_p95=load.ratio(95))
        data["targets"] = {
            "browser_fps": BROWSER_FPS_TARGET,
            "browser_met": self.browser_met,
            "inference_fps": INFERENCE_FPS_TARGET,
            "inference_met": self.inference_met,
            "ui_ratio": UI_RATIO_TARGET,
            "ui_p50_met": self.ui_met(50),
            "ui_p95_met": self.ui_met(95),
        }
        return data
