"""What the bench tests share: one tiny run of a benchmark through the real command line, and
the check that the command line refuses impossible options before anything starts."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

import pytest

from appliance.cli import main

# A benchmark's printed report and its JSON report.
Run = tuple[str, dict[str, Any]]


def run_bench(factory: pytest.TempPathFactory, name: str, argv: list[str]) -> Run:
    """`appliance bench NAME ARGV --json ... --workdir ...` in a fresh folder: the printed
    report and the JSON one (a module-scoped fixture shares one run among its tests)."""
    folder = factory.mktemp(name)
    report = folder / "report.json"
    argv = ["bench", name, *argv, "--json", str(report), "--workdir", str(folder)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue(), json.loads(report.read_text(encoding="utf-8"))


def assert_refused(name: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """The command line refuses `argv` with a message that names the option."""
    assert main(["bench", name, *argv]) == 2
    err = capsys.readouterr().err
    assert "appliance: --" in err
    assert argv[0] in err, err
