"""Check an ONNX graph against its manifest: names, ranks and the dimensions both state.

Run on import and by `appliance model verify`, not at every load: parsing a large graph twice
(here and in the backend) would double start-up time, and the checksum already proves the file
is the one that was checked.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from appliance.runtime.errors import PackageError
from appliance.runtime.manifest import Manifest, OutputSpec
from appliance.runtime.preprocess import graph_sample_shape

Dims = tuple[int | None, ...]  # None: symbolic or unknown


def check_graph(path: Path, manifest: Manifest) -> None:
    """Raise PackageError naming the file and manifest field when the graph does not fit."""
    graph = load_graph(path)
    inputs = value_dims(graph.input, exclude=frozenset(i.name for i in graph.initializer))
    outputs = value_dims(graph.output)
    problems = _input_problems(inputs, manifest) + _output_problems(outputs, manifest)
    if problems:
        raise PackageError("\n".join(f"{path}: {problem}" for problem in problems))
    _check_runtime_loads(path)


def _check_runtime_loads(path: Path) -> None:
    """A graph the ONNX checker accepts may still be one ONNX Runtime cannot load (an opset it
    does not know, a type no kernel takes): find out at import, not at the worker's start."""
    import onnxruntime  # type: ignore[import-untyped]

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors come back as the exception
    try:
        onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise PackageError(f"{path}: ONNX Runtime cannot load it: {plain_text(exc)}") from exc


def plain_text(exc: Exception) -> str:
    """ONNX Runtime's message without its bracketed status prefix, on one line."""
    text = str(exc).split("] ", 1)[-1] if str(exc).startswith("[") else str(exc)
    return " ".join(text.split())[:400]


def load_graph(path: Path) -> onnx.GraphProto:
    try:
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path), load_external_data=False)
    except onnx.checker.ValidationError as exc:
        raise PackageError(f"{path}: not a valid ONNX model: {exc}") from exc
    except (OSError, ValueError, DecodeError) as exc:
        raise PackageError(f"{path}: cannot be read as an ONNX model: {exc}") from exc
    return model.graph


def value_dims(
    values: Iterable[onnx.ValueInfoProto], exclude: frozenset[str] = frozenset()
) -> dict[str, tuple[int, Dims]]:
    """name -> (element type, dims) of graph inputs or outputs."""
    found: dict[str, tuple[int, Dims]] = {}
    for value in values:
        if value.name in exclude:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
        found[value.name] = (tensor.elem_type, dims)
    return found


def _input_problems(inputs: dict[str, tuple[int, Dims]], m: Manifest) -> list[str]:
    spec = m.input
    if spec.name not in inputs:
        return [f"input.name: {spec.name!r} is not an input of the graph ({_names(inputs)})"]
    problems = [
        f"the graph has an input the manifest does not feed: {other!r}"
        for other in inputs
        if other != spec.name
    ]
    elem_type, dims = inputs[spec.name]
    if elem_type != onnx.TensorProto.FLOAT:
        name = onnx.TensorProto.DataType.Name(elem_type)
        problems.append(f"input.name: {spec.name!r} is {name}, the runtime feeds FLOAT")
    expected: Dims = (None, *graph_sample_shape(spec))
    shape_problems = _dims_problems("input", dims, expected)
    other = "NHWC" if spec.layout == "NCHW" else "NCHW"
    swapped = spec.model_copy(update={"layout": other})
    if shape_problems and not _dims_problems("input", dims, (None, *graph_sample_shape(swapped))):
        shape_problems.append(f"input.layout: {spec.layout!r} but the graph takes {other}")
    problems += shape_problems
    if dims and spec.batch == "dynamic" and dims[0] is not None:
        problems.append(f"input.batch: 'dynamic' but the graph's batch size is fixed at {dims[0]}")
    if dims and spec.batch == 1 and dims[0] not in (None, 1):
        problems.append(f"input.batch: 1 but the graph's batch size is {dims[0]}")
    return problems


def _output_problems(outputs: dict[str, tuple[int, Dims]], m: Manifest) -> list[str]:
    problems: list[str] = []
    for index, output in enumerate(m.outputs):
        if output.name not in outputs:
            problems.append(
                f"outputs.{index}.name: {output.name!r} is not an output of the graph "
                f"({_names(outputs)})"
            )
            continue
        expected = _expected_output(output, m)
        problems += _dims_problems(f"outputs.{index}", outputs[output.name][1], expected)
    return problems


def _expected_output(output: OutputSpec, m: Manifest) -> Dims:
    if output.kind == "scores":
        return (None, len(output.labels))
    if output.kind == "mask":
        return (None, len(output.labels), None, None)
    explained = m.output(output.for_) if output.for_ is not None else output
    return (None, len(explained.labels), None, None)


def _dims_problems(field: str, dims: Dims, expected: Dims) -> list[str]:
    if len(dims) != len(expected):
        return [
            f"{field}: the graph's shape {_shape(dims)} has rank {len(dims)}, expected "
            f"{_shape(expected)}"
        ]
    for actual, wanted in zip(dims, expected, strict=True):
        if wanted is not None and actual is not None and actual != wanted:
            return [f"{field}: the graph's shape {_shape(dims)} does not match {_shape(expected)}"]
    return []


def _shape(dims: Dims) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def _names(values: dict[str, tuple[int, Dims]]) -> str:
    return "it has " + (", ".join(repr(n) for n in values) or "none")
