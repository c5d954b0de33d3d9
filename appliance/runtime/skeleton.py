"""`appliance model init MODEL.onnx`: a commented manifest skeleton from what the graph says.

A third-party model comes as an ONNX file and a paper or a README; the manifest is what the
admin has to work out. The graph tells some of it for sure (the input's name and shape, the
outputs' names and shapes, whether the batch size is free, whether an output already ends in
Sigmoid or Softmax) and some of it only as a guess (the layout, from which axis holds 1 or 3
channels; scores or mask, from an output's rank). What it cannot tell (labels, thresholds,
normalisation, windowing, what the model is for) is written as `TODO`, which the manifest check
refuses, so a skeleton cannot be imported before the admin has filled it in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from appliance.paths import write_atomically
from appliance.runtime.errors import PackageError
from appliance.runtime.graph import Dims, load_graph, value_dims
from appliance.runtime.manifest import MANIFEST_NAME

TODO = "TODO"
_CHANNELS = (1, 3)
_PROBABILITY_OPS = {"Sigmoid": "sigmoid", "Softmax": "softmax"}


@dataclass(frozen=True)
class OutputGuess:
    name: str
    dims: Dims
    kind: str  # scores | mask | cam | unknown
    ends_in: str | None  # "sigmoid"/"softmax" when the graph already applies it
    for_: str = ""  # a cam output: the scores output it explains


@dataclass(frozen=True)
class GraphGuess:
    """What `model init` read from the graph, and what it guessed."""

    input_name: str
    input_dims: Dims
    layout: str | None  # NCHW | NHWC | None: cannot tell
    dynamic_batch: bool
    outputs: tuple[OutputGuess, ...]

    @property
    def channels(self) -> int | None:
        if self.layout is None:
            return None
        return self.input_dims[1] if self.layout == "NCHW" else self.input_dims[3]

    @property
    def size(self) -> tuple[int | None, int | None]:
        """(height, width) of the input, None where the graph leaves it free."""
        if self.layout == "NHWC":
            return self.input_dims[1], self.input_dims[2]
        return self.input_dims[2], self.input_dims[3]


def guess_layout(dims: Dims) -> str | None:
    """NCHW when axis 1 alone holds 1 or 3, NHWC when axis 3 alone does, else None."""
    if len(dims) != 4:
        return None
    first, last = dims[1] in _CHANNELS, dims[3] in _CHANNELS
    if first and not last:
        return "NCHW"
    if last and not first:
        return "NHWC"
    return None


def inspect_graph(path: Path) -> GraphGuess:
    """Read `path`'s one image input and its outputs; PackageError when it has no single
    rank-4 float input to feed."""
    graph = load_graph(path)
    inputs = value_dims(graph.input, exclude=frozenset(i.name for i in graph.initializer))
    if len(inputs) != 1:
        raise PackageError(
            f"{path}: the graph has {len(inputs)} inputs ({', '.join(inputs) or 'none'}); "
            "the runtime feeds one image tensor"
        )
    name, (_, dims) = next(iter(inputs.items()))
    if len(dims) != 4:
        raise PackageError(
            f"{path}: input {name!r} has rank {len(dims)}; the runtime feeds a rank-4 image "
            "batch (NCHW or NHWC)"
        )
    producers = {out: node.op_type for node in graph.node for out in node.output}
    outputs = _with_cams(
        tuple(
            OutputGuess(
                name=out_name,
                dims=out_dims,
                kind={2: "scores", 4: "mask"}.get(len(out_dims), "unknown"),
                ends_in=_PROBABILITY_OPS.get(producers.get(out_name, "")),
            )
            for out_name, (_, out_dims) in value_dims(graph.output).items()
        )
    )
    return GraphGuess(
        input_name=name,
        input_dims=dims,
        layout=guess_layout(dims),
        dynamic_batch=dims[0] is None,
        outputs=outputs,
    )


def _shape(dims: Dims) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def _or_todo(value: object) -> str:
    return TODO if value is None else str(value)


def skeleton_text(guess: GraphGuess, onnx_name: str) -> str:
    """The manifest skeleton for `guess` as commented YAML."""
    height, width = guess.size
    channels = guess.channels
    layout_note = (
        f"guessed from where the {channels}-channel axis is"
        if guess.layout
        else "TODO: the graph does not tell (no single 1- or 3-channel axis): NCHW or NHWC"
    )
    # Only masks (no scores output): a segmenter, which occlusion has no score to measure on.
    scores = any(output.kind == "scores" for output in guess.outputs)
    masks_only = not scores and any(output.kind == "mask" for output in guess.outputs)
    task = "segmentation  " if masks_only else "classification"
    cams = any(output.kind == "cam" for output in guess.outputs)
    method = "cam      " if cams else "occlusion" if scores else "none     "
    lines = [
        f"# Skeleton written by `appliance model init` from {onnx_name}.",
        "# Replace every TODO, check every guess, then:",
        "#   appliance model import MODEL.onnx --manifest manifest.yaml --out PKG",
        "format: 1",
        "name: TODO                       # [a-z0-9-]{2,64}",
        "version: TODO                    # semantic version, e.g. 1.0.0",
        f"task: {task}             # guessed; classification | segmentation",
        "title: TODO",
        "intended_use: TODO               # what the maker validated it for",
        "not_for_clinical_use: true       # set false only for a model cleared for clinical use",
        "caution: TODO",
        "",
        "applies_to:                      # see models/README.md",
        "  modalities: []                 # TODO, e.g. [CR, DX]",
        "  body_parts: []                 # TODO, e.g. [CHEST]",
        "",
        "input:",
        f"  name: {guess.input_name}       # from the graph, shape {_shape(guess.input_dims)}",
        f"  height: {_or_todo(height)}",
        f"  width: {_or_todo(width)}",
        f"  channels: {_or_todo(channels)}                    # 1 (grey) or 3 (RGB)",
        f"  layout: {_or_todo(guess.layout)}                  # {layout_note}",
        "  resize: TODO                   # stretch | letterbox | crop, as the maker resized",
        "  interpolation: TODO            # nearest | linear | area | cubic, as the maker resized",
        "  window: TODO                   # file | minmax | raw (PNG exports of raw pixels)",
        f"  mean: TODO                     # {max(channels or 1, 1)} value(s), display values 0..1",
        "  std: TODO",
        "  frames: first",
        f"  batch: {'dynamic' if guess.dynamic_batch else 1}"
        "                 # from the graph's first axis",
        "",
        "outputs:",
    ]
    for output in guess.outputs:
        lines += _output_lines(output)
    lines += [
        "",
        "explanation:",
        f"  method: {method}              # cam needs a cam output; none turns heatmaps off",
        "  patch: 32",
        "  stride: 16",
        "",
        "files:",
        "  fp32: model.onnx",
        "",
    ]
    return "\n".join(lines)


def _with_cams(outputs: tuple[OutputGuess, ...]) -> tuple[OutputGuess, ...]:
    """A rank-4 output beside a scores output with as many classes is most likely its class
    activation maps (one map per label), not a segmentation mask."""
    scores = {o.dims[1]: o.name for o in outputs if o.kind == "scores" and o.dims[1] is not None}
    return tuple(
        replace(output, kind="cam", for_=scores[output.dims[1]])
        if output.kind == "mask" and output.dims[1] in scores
        else output
        for output in outputs
    )


def _output_lines(output: OutputGuess) -> list[str]:
    if output.kind == "cam":
        return [
            f"- name: {output.name}       # from the graph, shape {_shape(output.dims)}",
            "  kind: cam                     # guessed: one map per class of the output below",
            f"  for: {output.for_}",
        ]
    activation = (
        f"none                 # the graph already ends in {output.ends_in.capitalize()}"
        if output.ends_in
        else "TODO                 # sigmoid or softmax for logits; none only for probabilities"
    )
    lines = [
        f"- name: {output.name}       # from the graph, shape {_shape(output.dims)}",
        f"  kind: {output.kind if output.kind != 'unknown' else TODO}"
        f"                 # guessed from the rank: scores (N, K) | mask (N, K, H, W)",
        f"  activation: {activation}",
        "  labels:",
    ]
    count = output.dims[1] if len(output.dims) > 1 and output.dims[1] is not None else 1
    if output.kind == "mask":
        lines.insert(3, "  threshold: TODO")
    for number in range(1, count + 1):
        lines += [
            f"  - name: TODO-{number}              # class {number - 1} of the output",
            "    display: TODO",
        ]
        if output.kind == "scores" and count == 2 and number == 1:
            lines.append(
                "    negative: true             # TODO: keep when this is the normal class"
            )
            continue
        if output.kind == "scores":
            lines.append("    threshold: TODO              # the maker's operating point")
        lines.append("    priority: TODO               # urgent | review | routine")
    return lines


def write_skeleton(onnx_file: Path, out: Path) -> tuple[Path, GraphGuess]:
    """Write `out`/manifest.yaml for `onnx_file`, never over an existing manifest; the file
    written and what the graph said (read once)."""
    guess = inspect_graph(onnx_file)
    target = out / MANIFEST_NAME
    if target.exists():
        raise PackageError(f"{target}: already exists; give another --out or remove it first")
    out.mkdir(parents=True, exist_ok=True)
    name = ascii(onnx_file.name)  # only ever text in a comment, one line
    write_atomically(target, skeleton_text(guess, name).encode("utf-8"), durable=True)
    return target, guess
