"""Every benchmark's command line refuses impossible options, with a message that names the
option, before anything starts (so these run without peers, stores or models)."""

from __future__ import annotations

from typing import Any

import pytest
from bench_fixtures import assert_refused

REFUSED = [
    ("e2e", ["--studies", "0"]),
    ("e2e", ["--interval", "0"]),
    ("e2e", ["--chest-rows", "100"]),
    ("e2e", ["--burst", "0"]),
    ("ui", ["--studies", "0"]),
    ("ui", ["--clients", "0"]),
    ("ui", ["--images", "0"]),
    ("ui", ["--seconds", "0"]),
    ("capture", ["--rounds", "0"]),
    ("capture", ["--fps", "0"]),
    ("capture", ["--fps", "241"]),
    ("capture", ["--width", "0"]),
    ("capture", ["--height", "5000"]),
    ("capture", ["--file", "/no/such/video.mp4"]),
    ("inference", ["--repeat", "1"]),
    ("inference", ["--threads", "-1"]),
    ("inference", ["--cr-rows", "100"]),
    ("ingest", ["--large", "0"]),
    ("ingest", ["--small", "1"]),
]


@pytest.mark.parametrize(("bench", "argv"), REFUSED)
def test_impossible_options_are_refused(
    bench: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert_refused(bench, argv, capsys)


def test_the_capture_size_bounds_are_those_of_the_capture_settings() -> None:
    """The bench refuses a size before anything starts; the appliance's configuration would
    refuse it later. Both draw the line in the same place."""
    from pydantic import ValidationError

    from appliance.bench.capture.results import CaptureOptions
    from appliance.bench.harness import BenchError
    from appliance.config import CaptureSource

    cases = [("width", 64, 7680), ("height", 64, 4320), ("fps", 1, 240)]
    for field, low, high in cases:
        for value in (low, high):
            given: dict[str, Any] = {field: value}
            CaptureOptions(**given)
            CaptureSource(kind="generated", **given)
        for value in (low - 1, high + 1) if field != "fps" else (high + 1,):
            refused: dict[str, Any] = {field: value}
            with pytest.raises(BenchError, match=f"--{field}"):
                CaptureOptions(**refused)
            with pytest.raises(ValidationError):
                CaptureSource(kind="generated", **refused)
