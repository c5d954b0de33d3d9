"""The model packages the worker runs, loaded once on the configured backend and warmed up,
each checked against its golden inputs (`selftest`) before it is used."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance.config import ModelSettings
from appliance.runtime.backends import BackendOptions
from appliance.runtime.engine import Model
from appliance.runtime.errors import GraphError
from appliance.runtime.package import DEFAULT_MODELS_DIR, ModelPackage, find_packages
from appliance.runtime.precision import choose_precision
from appliance.worker.selftest import SelfTest, self_test

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refused:
    """A package the worker will not run, and why (shown to the admin)."""

    folder: Path
    reason: str


@dataclass
class ModelSet:
    """Loaded models in a stable order (by name), plus the packages refused or disabled."""

    models: list[Model]
    refused: list[Refused] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    precision: str = "fp32"  # models.precision as resolved on this machine ("auto" chooses)
    precision_reason: str = ""
    # The golden self-test of every package that loaded (passed, failed or untested), and the
    # notes of loaded packages (name -> "no golden inputs to check") for the admin page.
    checks: list[SelfTest] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, settings: ModelSettings, cache_dir: Path) -> ModelSet:
        """Verify, load and self-test every package in the configured folders.

        A package that fails verification or its golden self-test is refused (logged, the
        others still run). A backend
        that cannot load raises BackendError: the worker stops rather than silently running on
        something other than what the site configured.
        """
        choice = choose_precision(settings.precision, settings.backend)
        log.debug("models: precision %s (%s)", choice.precision, choice.reason)
        options = BackendOptions(
            backend=settings.backend,
            precision=choice.precision,
            threads=settings.threads,
            cache_dir=cache_dir / "engines",
        )
        loaded = cls(models=[], precision=choice.precision, precision_reason=choice.reason)
        for entry in find_packages(settings.dirs or [DEFAULT_MODELS_DIR]):
            if entry.package is None:
                loaded.refuse(entry.folder, entry.error or "not a valid package")
            elif entry.package.name in settings.disabled:
                loaded.disabled.append(entry.package.name)
            elif problem := _unusable(entry.package, settings):
                loaded.refuse(entry.folder, problem)
            else:
                loaded.open(entry.package, _options(entry.package, options))
        loaded.models.sort(key=lambda m: m.package.name)
        return loaded

    def open(self, package: ModelPackage, options: BackendOptions) -> None:
        """Load one package and run its goldens; a graph the backend cannot load, or outputs
        that differ from the goldens, refuse that package only (a backend that cannot start
        at all raises BackendError and stops the worker)."""
        started = time.perf_counter()
        try:
            model = Model.open(package, options)
        except GraphError as exc:
            self.refuse(package.folder, str(exc))
            return
        check = self_test(model, started)
        self.checks.append(check)
        if check.failed:
            model.close()
            self.refuse(package.folder, check.reason)
            return
        if check.outcome == "untested":
            log.warning("model package %s: %s", package.folder, check.reason)
            self.notes[package.name] = check.reason
        self.models.append(model)

    def refuse(self, folder: Path, reason: str) -> None:
        log.error("model package %s refused: %s", folder, reason)
        self.refused.append(Refused(folder, reason))

    def describe(self) -> str:
        """One line for the log: which models run on what."""
        if not self.models:
            return "no models loaded"
        return ", ".join(
            f"{m.package.name} {m.package.version} ({m.backend.name} {m.backend.precision})"
            for m in self.models
        )

    def close(self) -> None:
        for model in self.models:
            model.close()


def _options(package: ModelPackage, options: BackendOptions) -> BackendOptions:
    """`options`, except that a package without an INT8 file runs FP32 where `auto` chose
    INT8 (an explicit `int8` refuses such a package instead, see `_unusable`)."""
    if options.precision == "int8" and "int8" not in package.precisions:
        log.info("model package %s has no INT8 file: it runs FP32", package.name)
        return dataclasses.replace(options, precision="fp32")
    return options


def _unusable(package: ModelPackage, settings: ModelSettings) -> str:
    if settings.precision == "int8" and "int8" not in package.precisions:
        return (
            "it has no INT8 file and models.precision is int8: quantize it "
            "(appliance model quantize) or set models.precision to fp32"
        )
    return ""
