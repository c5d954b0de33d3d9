"""The golden self-test of one loaded model: its package's golden inputs run on the backend and
precision the worker will use, compared with what the FP32 graph gave where it was made.

A package whose outputs differ by more than its tolerance is not used (the worker refuses it
with the reason, shown on the admin pages); a package without golden inputs loads with a note.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from appliance.runtime.engine import Model
from appliance.runtime.errors import InferenceError, PackageError
from appliance.runtime.golden import NO_GOLDENS, check_goldens

Outcome = Literal["passed", "failed", "untested"]


@dataclass(frozen=True)
class SelfTest:
    """What the self-test of one package found, and how long loading and checking took."""

    name: str
    version: str
    folder: Path
    backend: str
    precision: str
    outcome: Outcome
    seconds: float  # loading the package on its backend plus running its goldens
    largest: float | None = None  # the largest difference from a golden output
    tolerance: float | None = None
    output: str = ""
    reason: str = ""  # why it failed, or the note of an untested package

    @property
    def failed(self) -> bool:
        return self.outcome == "failed"


def self_test(model: Model, started: float) -> SelfTest:
    """Run `model`'s goldens; `started` is when its loading began (time.perf_counter)."""
    package = model.package
    base = SelfTest(
        name=package.name,
        version=package.version,
        folder=package.folder,
        backend=model.backend.name,
        precision=model.backend.precision,
        outcome="untested",
        seconds=0.0,
        reason=NO_GOLDENS,
    )
    try:
        check = check_goldens(model)
    except (PackageError, InferenceError) as exc:
        reason = f"self-test failed: {exc}"
        return replace(base, outcome="failed", seconds=_since(started), reason=reason)
    if check is None:
        return replace(base, seconds=_since(started))
    return replace(
        base,
        outcome="passed" if check.passed else "failed",
        seconds=_since(started),
        largest=check.largest,
        tolerance=check.tolerance,
        output=check.output,
        reason=check.reason,
    )


def _since(started: float) -> float:
    return time.perf_counter() - started
