"""Run a package on synthetic pictures and refuse outputs that are not probabilities.

A manifest can say `activation: none` for a graph that ends in logits; the graph check cannot
see that (the shapes are right), and at run time a score of 7.05 would be compared with a
threshold of 0.5. `model import` and `model verify` therefore run the graph, through the same
`Model.infer` as the worker, on a few pictures made here (a gradient, a bright blob, seeded
noise) and refuse the package with the engine's reason when an activated score falls outside
[0, 1]. A graph whose logits happen to stay inside [0, 1] on these pictures passes; the worker
and `model validate` still refuse such a result on a real image.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from appliance.runtime.backends import BackendOptions
from appliance.runtime.engine import Model
from appliance.runtime.errors import InferenceError, PackageError
from appliance.runtime.manifest import InputSpec
from appliance.runtime.package import FilePrecision, ModelPackage


def synthetic_pictures(spec: InputSpec) -> list[npt.NDArray[np.uint8]]:
    """Three uint8 pictures of the model's input size (gray, or RGB for 3 channels)."""
    rows, columns = spec.height, spec.width
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    gradient = 255.0 * (x + y) / float(rows + columns - 2)
    blob = 255.0 * np.exp(-(((x - columns / 2) / columns) ** 2 + ((y - rows / 2) / rows) ** 2) * 8)
    noise = np.random.default_rng(12).uniform(0.0, 255.0, size=(rows, columns))
    pictures = [np.round(p).astype(np.uint8) for p in (gradient, blob, noise)]
    if spec.channels == 3:
        return [np.repeat(p[:, :, np.newaxis], 3, axis=2) for p in pictures]
    return pictures


def check_score_ranges(package: ModelPackage, precision: FilePrecision = "fp32") -> None:
    """PackageError naming the output and the value when the package's activated scores or
    mask values leave [0, 1] on the synthetic pictures."""
    options = BackendOptions(backend="cpu", precision=precision, threads=1)
    with Model.open(package, options) as model:
        try:
            model.infer(synthetic_pictures(package.manifest.input))
        except InferenceError as exc:
            raise PackageError(
                f"{package.folder} ({precision}, run on synthetic pictures): {exc}"
            ) from exc
