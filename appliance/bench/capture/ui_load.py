"""The UI's latency beside the live view: /health and / back to back, in rounds without and
with a viewer, alternating so that drift in the machine's speed reaches both alike."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from appliance.bench.capture.live import watching
from appliance.bench.capture.results import UI_ENDPOINTS, CaptureOptions, UILoad
from appliance.bench.harness import BenchError
from appliance.bench.harness.command import progress
from appliance.bench.harness.http import Asked, Session, ask_together


def measure_ui(port: int, options: CaptureOptions) -> tuple[UILoad, ...]:
    """/health and / back to back, one client each, in rounds without and with a viewer."""
    from appliance.web.live import POLL_S

    samples: dict[tuple[str, str], list[float]] = {}
    errors = dict.fromkeys(UI_ENDPOINTS, 0)
    for number in range(options.rounds):
        for which in ("without", "with"):
            progress("capture", f"UI round {number + 1}/{options.rounds} {which} the live view")
            with _viewer(port, which == "with", POLL_S):
                for endpoint, asked in _round(port, options.round_seconds).items():
                    samples.setdefault((endpoint, which), []).extend(asked.latencies_ms)
                    errors[endpoint] += asked.errors
    return tuple(
        UILoad(
            endpoint,
            tuple(samples.get((endpoint, "without"), [])),
            tuple(samples.get((endpoint, "with"), [])),
            errors[endpoint],
        )
        for endpoint in UI_ENDPOINTS
    )


@contextmanager
def _viewer(port: int, open_view: bool, poll_s: float) -> Iterator[None]:
    """A browser-like viewer on the live page for the block (or nothing)."""
    if not open_view:
        yield
        return
    with watching(port, poll_s, settle_s=0.5) as client:
        yield
    if not client.frames:
        raise BenchError("the viewer got no frames: none arrived")


def _round(port: int, seconds: float) -> dict[str, Asked]:
    """Every endpoint asked back to back by its own signed-in client, all at once."""
    sessions = [Session.signed_in(port) for _ in UI_ENDPOINTS]
    try:
        results = ask_together(list(zip(sessions, UI_ENDPOINTS, strict=True)), seconds)
    finally:
        for session in sessions:
            session.close()
    return dict(zip(UI_ENDPOINTS, results, strict=True))
