"""A model ready to run: a verified package plus a loaded backend.

`Model.infer(images)` preprocesses every image, runs all their frames through the backend as
one batch (in pieces of the backend's largest batch), and turns each frame's outputs into a
`ModelResult` with findings, provenance and timing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt

from appliance.runtime.backends import Backend, BackendOptions, ModelIO, Outputs, open_backend
from appliance.runtime.errors import InferenceError
from appliance.runtime.findings import (
    LabelFinding,
    MaskFinding,
    ModelResult,
    Provenance,
    Timing,
    activate,
    mask_findings,
    out_of_range,
    score_findings,
)
from appliance.runtime.manifest import Manifest, OutputSpec
from appliance.runtime.package import FilePrecision, ModelPackage, load_package
from appliance.runtime.preprocess import (
    ImageInput,
    Prepared,
    graph_sample_shape,
    prepare,
    to_layout,
)


class Model:
    """A package and its backend, loaded once and reused for every image."""

    def __init__(self, package: ModelPackage, backend: Backend, options: BackendOptions):
        file_precision: FilePrecision = "int8" if options.precision == "int8" else "fp32"
        self.package = package
        self.backend = backend
        self.options = options  # to open another copy of this model the same way
        self.provenance = Provenance(
            model=package.name,
            version=package.version,
            title=package.manifest.title,
            model_hash=package.model_hash(file_precision),
            backend=backend.name,
            precision=backend.precision,
            providers=backend.providers,
            not_for_clinical_use=package.manifest.not_for_clinical_use,
            caution=package.manifest.caution,
        )

    @classmethod
    def open(cls, package: ModelPackage | Path, options: BackendOptions | None = None) -> Model:
        """Verify the package (when given a folder) and load it on the configured backend."""
        options = options or BackendOptions()
        loaded = package if isinstance(package, ModelPackage) else load_package(package)
        file_precision: FilePrecision = "int8" if options.precision == "int8" else "fp32"
        path = loaded.model_file(file_precision)
        backend = open_backend(path, model_io(loaded, file_precision), options)
        return cls(loaded, backend, options)

    @property
    def manifest(self) -> Manifest:
        return self.package.manifest

    def prepare(self, image: ImageInput) -> Prepared:
        return prepare(image, self.manifest.input)

    def run(self, batch: npt.NDArray[np.float32]) -> Outputs:
        """Raw outputs for a batch of prepared tensors (N x C x H x W), fed to the graph in
        its own layout (an NHWC graph gets N x H x W x C)."""
        return self.backend.run(to_layout(batch, self.manifest.input.layout))

    def infer(self, images: Sequence[ImageInput]) -> list[ModelResult]:
        """One result per selected frame of each image, in order."""
        if not images:
            return []
        prepared, prepare_ms = [], []
        for image in images:
            started = time.perf_counter()
            prepared.append(self.prepare(image))
            prepare_ms.append(_ms_since(started))
        batch = np.concatenate([p.tensor for p in prepared])
        started = time.perf_counter()
        outputs = self.run(batch)
        model_ms = _ms_since(started) / batch.shape[0]
        results, offset = [], 0
        for item, item_ms in zip(prepared, prepare_ms, strict=True):
            for position in range(len(item.frames)):
                sample = {name: value[offset] for name, value in outputs.items()}
                shares = (item_ms / len(item.frames), model_ms)
                results.append(self._result(sample, item, position, shares))
                offset += 1
        return results

    def _result(
        self,
        sample: dict[str, npt.NDArray[np.float32]],
        prepared: Prepared,
        position: int,
        shares: tuple[float, float],
    ) -> ModelResult:
        started = time.perf_counter()
        labels: list[LabelFinding] = []
        masks: list[MaskFinding] = []
        for index, output in enumerate(self.manifest.outputs):
            value = self._checked(output, sample[output.name])
            if output.kind == "cam":
                continue
            probabilities = activate(value[None], output.activation)[0]
            problem = out_of_range(index, output, probabilities)
            if problem is not None:  # never compared with a threshold
                raise InferenceError(f"{self.manifest.identity}: {problem}")
            if output.kind == "scores":
                labels += score_findings(output, probabilities)
            else:
                masks += mask_findings(output, probabilities, prepared)
        return ModelResult(
            provenance=self.provenance,
            frame=prepared.frames[position],
            labels=tuple(labels),
            masks=tuple(masks),
            timing=Timing(shares[0], shares[1], _ms_since(started)),
            prepared=prepared,
            position=position,
            outputs=sample,
            notes=prepared.notes,
        )

    def _checked(
        self, output: OutputSpec, value: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        labels = len(output.labels if output.kind != "cam" else self._explained(output).labels)
        rank = 1 if output.kind == "scores" else 3
        if value.ndim != rank or value.shape[0] != labels:
            raise InferenceError(
                f"{self.manifest.identity}: output {output.name!r} has shape {value.shape} per "
                f"sample; a {output.kind} output of {labels} label(s) needs rank {rank} "
                f"starting with {labels}"
            )
        return value

    def _explained(self, cam: OutputSpec) -> OutputSpec:
        return self.manifest.output(cam.for_ or "")

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def model_io(package: ModelPackage, precision: FilePrecision) -> ModelIO:
    """What the backend needs from the manifest."""
    spec = package.manifest.input
    # The backend feeds and checks (N, *sample_shape) with sample_shape = (channels, height,
    # width); for an NHWC graph these three carry the graph's own order (height, width,
    # channels), since the tensor reaches the backend already transposed (`Model.run`).
    first, second, third = graph_sample_shape(spec)
    return ModelIO(
        input_name=spec.name,
        channels=first,
        height=second,
        width=third,
        dynamic_batch=spec.batch == "dynamic",
        output_names=tuple(o.name for o in package.manifest.outputs),
        model_hash=package.model_hash(precision),
        label=package.manifest.identity,
    )


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
