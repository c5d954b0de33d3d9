"""Every benchmark's command line refuses impossible options, with a message that names the
option, before anything starts (so these run without peers, stores or models)."""

from __future__ import annotations

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
]


@pytest.mark.parametrize(("bench", "argv"), REFUSED)
def test_impossible_options_are_refused(
    bench: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert_refused(bench, argv, capsys)
