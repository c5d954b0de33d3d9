"""Model-only and analyse() times per demo file, in this process, beside the appliance."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.bench.e2e.demo import DemoFile, DemoSet
from appliance.bench.e2e.results import FileTiming, Outcome, Pushed
from appliance.bench.harness import BenchError
from appliance.bench.harness.command import progress
from appliance.config import Settings
from appliance.paths import resolve_paths
from appliance.runtime.routing import ImageTags, dicom_tags

if TYPE_CHECKING:
    from appliance.runtime.engine import Model
    from appliance.worker.models import ModelSet


class FileTimer:
    """Model-only and analyse() times per demo file, in this process, with the models loaded
    the way the worker loads them (ModelSet.load, the same settings)."""

    def __init__(self, settings: Settings, demo: DemoSet, models: ModelSet) -> None:
        self.settings = settings
        self.demo = demo
        self.models = models
        self.tags = {file.kind: dicom_tags(file.path) for file in demo.files}
        self.samples: dict[str, tuple[list[float], list[float]]] = {
            file.kind: ([], []) for file in demo.files
        }

    @classmethod
    @contextmanager
    def load(cls, settings: Settings, demo: DemoSet) -> Iterator[FileTimer]:
        from appliance.worker.models import ModelSet

        models = ModelSet.load(settings.models, resolve_paths(settings).cache_dir)
        try:
            yield cls(settings, demo, models)
        finally:
            models.close()

    def applicable(self, tags: ImageTags) -> list[Model]:
        from appliance.runtime.routing import route

        return [m for m in self.models.models if route(m.manifest.applies_to, tags).applies]

    def rounds(self, count: int, warm_up: bool = False) -> None:
        """`count` timed runs of every file (after an untimed one when `warm_up`)."""
        progress("e2e", f"model-only and analyse() in this process, {count} run(s) per file")
        for number in range(count + warm_up):
            for file in self.demo.files:
                model_ms, analyse_ms = self._time(file)
                if number >= warm_up:
                    self.samples[file.kind][0].append(model_ms)
                    self.samples[file.kind][1].append(analyse_ms)

    def _time(self, file: DemoFile) -> tuple[float, float]:
        """Model-only and the whole analyse() of one file, one after the other."""
        from appliance.worker.analyse import analyse

        tags = self.tags[file.kind]
        model_ms = model_only_ms(file.path, self.applicable(tags))
        started = time.perf_counter()
        analyse(file.path, tags, self.models.models, self.settings)
        return model_ms, (time.perf_counter() - started) * 1000

    def check_routes(
        self, pushes: dict[str, tuple[list[Pushed], float]], found: dict[str, dict[str, Outcome]]
    ) -> None:
        """BenchError unless the tags the receiver stored (those the worker routes on) select
        the models this process timed for the same file."""
        for name, (pushed, _) in pushes.items():
            for image in pushed:
                outcome = found[name].get(image.sop_uid)
                if outcome is None:
                    continue  # counted as stuck
                stored = self._names(outcome.tags)
                if stored != self._names(self.tags[image.kind]):
                    raise BenchError(
                        f"{image.kind}: the worker routes it to {stored or 'no model'} by the "
                        f"tags the receiver stored ({outcome.tags}), this process did otherwise"
                    )

    def _names(self, tags: ImageTags) -> list[str]:
        return [model.package.name for model in self.applicable(tags)]

    def results(self) -> tuple[FileTiming, ...]:
        return tuple(
            FileTiming(
                kind,
                tuple(self._names(self.tags[kind])),
                statistics.median(model_ms),
                statistics.median(analyse_ms),
            )
            for kind, (model_ms, analyse_ms) in self.samples.items()
        )

    def describe(self) -> str:
        return self.models.describe()


def model_only_ms(path: Path, models: Sequence[Model]) -> float:
    """Decode as the worker does (the first frame only when that is all the models read), then
    Model.infer of each model: no plausibility check, explanation, pictures, store or queue."""
    from appliance.imaging import decode

    started = time.perf_counter()
    first_only = all(model.manifest.input.frames == "first" for model in models)
    image = decode(path, index=0 if first_only else None)
    for model in models:
        model.infer([image])
    return (time.perf_counter() - started) * 1000
