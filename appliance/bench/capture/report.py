"""The live capture benchmark's printed report."""

from __future__ import annotations

from collections.abc import Sequence

from appliance.bench.capture.results import (
    BROWSER_FPS_TARGET,
    INFERENCE_FPS_TARGET,
    UI_RATIO_TARGET,
    CaptureReport,
)
from appliance.bench.harness.tables import table, verdict


def format_report(report: CaptureReport) -> str:
    parts = [_header(report), _live_lines(report), _ui_table(report)]
    return "\n\n".join(parts) + "\n"


def _header(report: CaptureReport) -> str:
    o = report.options
    source = "generated" if o.file is None else f"file {o.file}"
    return "\n".join(
        [
            f"Live capture benchmark: `appliance run` with capture source {source}, "
            f"{o.width}x{o.height} at {o.fps:g} fps",
            f"  worker models: {report.models}",
            f"  UI: waitress, {report.ui_threads} threads; {report.cores} CPU core(s) shared by "
            "the appliance and this process",
        ]
    )


def _live_lines(report: CaptureReport) -> str:
    live, source = report.live, report.source
    verdict_browser = verdict(report.browser_met)
    verdict_inference = verdict(report.inference_met)
    rows: list[Sequence[str]] = [
        ("figure", "value", "note"),
        ("capture only", f"{source.fps:.1f} fps", f"the source read alone, {source.seconds:.1f} s"),
        ("source (worker)", f"{live.source_fps:.1f} fps", "status.json source_fps, median"),
        ("published", f"{live.published_fps:.1f} fps", f"{live.published} frames (status seq)"),
        ("dropped frames", str(live.dropped), "status.json dropped, over the window"),
        (
            "browser (MJPEG)",
            f"{live.browser_fps:.1f} fps",
            f"target >= {BROWSER_FPS_TARGET:g}: {verdict_browser}; {live.browser_frames} frames, "
            f"{live.browser_bytes / live.seconds / 1e6:.1f} MB/s",
        ),
        (
            "inference",
            f"{live.inference_fps:.1f} fps",
            f"target >= {INFERENCE_FPS_TARGET:g}: {verdict_inference}; {live.overlays} overlays "
            f"(worker says {live.inference_fps_reported:.1f})",
        ),
        ("overlay age p50", f"{live.age(50):.0f} ms", "capture -> overlay.json written"),
        ("overlay age p95", f"{live.age(95):.0f} ms", ""),
    ]
    title = (
        f"Live view over {live.seconds:.1f} s, one browser-like viewer (the MJPEG stream and "
        f"{live.status_polls} status requests):"
    )
    return title + "\n" + table(rows)


def _ui_table(report: CaptureReport) -> str:
    rows: list[Sequence[str]] = [
        (
            "endpoint",
            "n without",
            "n with",
            "p50 without",
            "p50 with",
            "p95 without",
            "p95 with",
            "ratio p50",
            "ratio p95",
            f"target <= {UI_RATIO_TARGET:g}",
        )
    ]
    for x in report.ui:
        met = x.ratio(50) <= UI_RATIO_TARGET and x.ratio(95) <= UI_RATIO_TARGET
        rows.append(
            (
                x.endpoint,
                str(len(x.without_ms)),
                str(len(x.with_ms)),
                f"{x.p('without', 50):.1f}",
                f"{x.p('with', 50):.1f}",
                f"{x.p('without', 95):.1f}",
                f"{x.p('with', 95):.1f}",
                f"{x.ratio(50):.2f}",
                f"{x.ratio(95):.2f}",
                verdict(met),
            )
        )
    o = report.options
    title = (
        f"UI latency (ms) with the live view open vs without: {o.rounds} round(s) of "
        f"{o.round_seconds:g} s each way, alternating; one client per endpoint:"
    )
    errors = sum(x.errors for x in report.ui)
    return title + "\n" + table(rows) + f"\n  failed requests: {errors}"
