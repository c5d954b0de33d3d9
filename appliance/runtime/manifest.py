"""manifest.yaml, format 1 (see models/README.md): what a model is and how to feed and read it.

Validated in two passes. Pydantic checks each field's type and range; then the rules that tie
fields together (a CAM output names a scores output, mean/std have one value per channel, label
names are unique...) are checked on the validated model. Both report `file:line: dotted.key:
message` through the configuration's YAML-line helpers, so an admin can fix a package by hand.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from appliance.config import describe_errors, line_of, parse_yaml, read_text
from appliance.domain import is_valid_uid
from appliance.runtime.errors import ManifestError

MANIFEST_NAME = "manifest.yaml"
FORMAT = 1

Task = Literal["classification", "segmentation", "detection"]
Priority = Literal["urgent", "review", "routine"]
Activation = Literal["none", "sigmoid", "softmax"]
ColourRule = Literal["grey", "colour", "either"]
OutputKind = Literal["scores", "mask", "cam"]
Problem = tuple[tuple[str | int, ...], str]

_MODEL_NAME = re.compile(r"^[a-z0-9-]{2,64}\Z")
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?\Z"
)
_LABEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,122}\.onnx\Z")
_GOLDEN_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,122}\.npz\Z")
_FRAMES = re.compile(r"^(first|all|every:[1-9][0-9]{0,5})\Z")
_CODE_STRING = re.compile(r"^[A-Z0-9 _]{1,16}\Z")  # DICOM CS: Modality, Body Part, View


def _text(value: str) -> str:
    stripped = value.strip()
    if not stripped:
        raise ValueError("must not be empty")
    return stripped


def _matching(pattern: re.Pattern[str], expected: str) -> Callable[[str], str]:
    """A field check: the value unchanged when it matches `pattern`, else an error quoting it
    and saying what was `expected`."""

    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"{value!r} is not {expected}")
        return value

    return check


_model_name = _matching(_MODEL_NAME, "2-64 lowercase letters, digits or '-'")
_version = _matching(_SEMVER, "a semantic version such as 0.1.0")
_label_name = _matching(_LABEL_NAME, "1-64 lowercase letters, digits, '_' or '-'")
_file_name = _matching(_FILE_NAME, "a plain file name ending in .onnx (no folders, no leading dot)")
_golden_file = _matching(_GOLDEN_FILE, "a plain file name ending in .npz (no folders)")
_frames = _matching(_FRAMES, "'first', 'all' or 'every:N' with N >= 1")


def _code_string(value: str) -> str:
    upper = value.strip().upper()
    if not _CODE_STRING.match(upper):
        raise ValueError(f"{value!r} is not a DICOM code string (1-16 of A-Z, 0-9, space, _)")
    return upper


def _uid(value: str) -> str:
    if not is_valid_uid(value.strip()):
        raise ValueError(f"{value!r} is not a valid UID")
    return value.strip()


Text = Annotated[str, AfterValidator(_text)]
ModelName = Annotated[str, AfterValidator(_model_name)]
Version = Annotated[str, AfterValidator(_version)]
LabelName = Annotated[str, AfterValidator(_label_name)]
FileName = Annotated[str, AfterValidator(_file_name)]
GoldenFile = Annotated[str, AfterValidator(_golden_file)]
FrameRule = Annotated[str, AfterValidator(_frames)]
CodeString = Annotated[str, AfterValidator(_code_string)]
Uid = Annotated[str, AfterValidator(_uid)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    # No NaN or infinity anywhere: `mean: [.nan]` would hold back every image as "uniform".
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Code(_Strict):
    """A coded concept for a label (e.g. SNOMED CT), carried into findings and DICOM SR."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, coerce_numbers_to_str=True, allow_inf_nan=False
    )

    scheme: Text
    value: Text
    meaning: Text


class Label(_Strict):
    """One class of a scores output, or one channel of a mask output."""

    name: LabelName
    display: Text
    code: Code | None = None
    threshold: Fraction | None = None
    priority: Priority | None = None  # required, except on a negative label
    # The class that means "nothing found" (e.g. `normal` of a two-logit softmax): never a
    # finding, so it takes no threshold and no priority (see models/README.md).
    negative: bool = False


class AppliesTo(_Strict):
    """Every non-empty rule must match the image; an empty rule matches anything."""

    modalities: tuple[CodeString, ...] = ()
    body_parts: tuple[CodeString, ...] = ()
    views: tuple[CodeString, ...] = ()
    sop_classes: tuple[Uid, ...] = ()
    # What the model takes, compared with the decoded image: every photometric but
    # MONOCHROME1/2 (palette, YBR, RGB) is decoded to RGB, so routing never sees header values.
    colour: ColourRule = "either"
    # Format 1 once listed raw Photometric Interpretations here; refused with what to write.
    photometric: None = Field(None, exclude=True, repr=False)

    @field_validator("photometric", mode="before")
    @classmethod
    def _refuse_photometric(cls, value: Any) -> None:
        raise ValueError(
            f"'photometric' ({value!r}) is no longer read: routing compares the decoded image, "
            "so write 'colour: grey' (MONOCHROME1/2), 'colour: colour' (RGB, YBR_*, PALETTE "
            "COLOR, all decoded to RGB) or 'colour: either' in applies_to instead"
        )


class InputSpec(_Strict):
    """How to turn an image into the model's input tensor."""

    name: Text
    height: int = Field(ge=8, le=8192)
    width: int = Field(ge=8, le=8192)
    channels: Literal[1, 3]
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    resize: Literal["letterbox", "stretch", "crop"]
    interpolation: Literal["nearest", "linear", "area", "cubic"] = "area"
    window: Literal["file", "minmax", "raw"]
    mean: tuple[float, ...]
    std: tuple[Annotated[float, Field(gt=0.0)], ...]
    frames: FrameRule = "first"
    crop_to_ultrasound_region: bool = False
    batch: Literal["dynamic", 1] = 1

    def select_frames(self, count: int) -> tuple[int, ...]:
        """Positions (0-based) of the frames to feed, out of `count` decoded frames."""
        if self.frames == "first":
            return (0,)
        step = 1 if self.frames == "all" else int(self.frames.split(":")[1])
        return tuple(range(0, count, step))


class OutputSpec(_Strict):
    """One ONNX output and what its numbers mean."""

    name: Text
    kind: OutputKind
    activation: Activation = "none"
    labels: tuple[Label, ...] = ()
    threshold: Fraction | None = None
    for_: str | None = Field(None, alias="for")

    @property
    def finding_labels(self) -> tuple[tuple[int, Label], ...]:
        """(position, label) of the labels that can be findings: all but a negative one."""
        return tuple((i, label) for i, label in enumerate(self.labels) if not label.negative)

    def label_threshold(self, label: Label) -> float:
        """The label's own threshold, else the output's (mask outputs may share one)."""
        value = label.threshold if label.threshold is not None else self.threshold
        if value is None:  # the manifest's cross-checks make this unreachable
            raise ManifestError(f"label {label.name!r} of output {self.name!r} has no threshold")
        return value


class Explanation(_Strict):
    method: Literal["cam", "occlusion", "none"] = "none"
    patch: int = Field(32, ge=1, le=4096)
    stride: int = Field(16, ge=1, le=4096)


class Files(_Strict):
    """The ONNX files of the package, by precision; INT8 is optional (added by quantization)."""

    fp32: FileName
    int8: FileName | None = None


class Validation(BaseModel):
    """Figures shown to the admin. `dataset` and per-label `metrics` are checked; further keys
    (INT8 agreement, latency, ...) are kept as written, since every model measures other
    things."""

    model_config = ConfigDict(extra="allow", frozen=True)

    dataset: Text
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)


# The image plausibility check (appliance.runtime.quality): the blank-image floor applies to
# every package, the thumbnail size is the default of `appliance model profile`.
QUALITY_METHOD = "thumbnail-correlation"
QUALITY_MIN_CONTRAST = 0.02
QUALITY_SIZE = 16
Finite = Annotated[float, Field(allow_inf_nan=False)]
DisplayValue = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class Quality(_Strict):
    """The input profile of a package: what its typical images look like, reduced to a
    size x size thumbnail of display values (the mean of `images` typical images), and the
    thresholds the plausibility check holds an image back at (see models/README.md)."""

    method: Literal["thumbnail-correlation"]
    size: int = Field(ge=4, le=64)
    images: int = Field(ge=1)
    min_contrast: Annotated[Finite, Field(ge=0.0, le=1.0)] = QUALITY_MIN_CONTRAST
    min_correlation: Annotated[Finite, Field(ge=-1.0, le=1.0)]
    # <= 0: a held-back image must really match the reference better when turned
    min_orientation_gap: Annotated[Finite, Field(ge=-2.0, le=0.0)] = 0.0
    reference: tuple[tuple[DisplayValue, ...], ...]


class GoldenTolerance(_Strict):
    """The largest absolute difference from a golden output allowed per precision run (see
    appliance.runtime.golden for the defaults and why)."""

    fp32: Annotated[float, Field(gt=0.0, le=1.0)] = 0.005
    fp16: Annotated[float, Field(gt=0.0, le=1.0)] = 0.02
    int8: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1


class Golden(_Strict):
    """Golden inputs and the outputs the FP32 graph gives for them, checked at start-up."""

    file: GoldenFile = "golden.npz"
    tolerance: GoldenTolerance = Field(default_factory=lambda: GoldenTolerance())


class Manifest(_Strict):
    """A validated manifest.yaml of format 1."""

    format: Literal[1]
    name: ModelName
    version: Version
    task: Task
    title: Text
    intended_use: Text
    not_for_clinical_use: bool
    caution: str = ""
    applies_to: AppliesTo = Field(default_factory=lambda: AppliesTo())
    input: InputSpec
    outputs: tuple[OutputSpec, ...] = Field(min_length=1)
    explanation: Explanation = Field(default_factory=lambda: Explanation())
    files: Files
    validation: Validation | None = None
    quality: Quality | None = None
    golden: Golden | None = None
    # Seconds one inference of one image may take on this box before the worker is called
    # hung: its watchdog stops, it is restarted and the job retried, then failed.
    time_limit_s: float = Field(60.0, gt=0, le=3600)

    @property
    def identity(self) -> str:
        return f"{self.name} {self.version}"

    def output(self, name: str) -> OutputSpec:
        for output in self.outputs:
            if output.name == name:
                return output
        raise KeyError(name)

    def outputs_of(self, kind: OutputKind) -> tuple[OutputSpec, ...]:
        return tuple(o for o in self.outputs if o.kind == kind)

    def cam_for(self, scores_name: str) -> OutputSpec | None:
        """The CAM output that explains the scores output `scores_name`, if there is one."""
        return next((o for o in self.outputs_of("cam") if o.for_ == scores_name), None)


def load_manifest(path: Path) -> Manifest:
    """Read and validate the manifest at `path`; ManifestError names the field and line."""
    return parse_manifest(read_text(path, "the manifest", ManifestError), str(path))


def parse_manifest(text: str, source: str = MANIFEST_NAME) -> Manifest:
    """Validate manifest `text`; errors start with `source:line: dotted.key:`."""
    root, data = parse_yaml(text, source, ManifestError)
    if not isinstance(data, dict):
        raise ManifestError(f"{source}:1: the manifest must be a mapping of fields")
    if data.get("format") != FORMAT:
        at = line_of(root, ["format"])
        raise ManifestError(
            f"{source}:{at}: format: {data.get('format')!r}: this runtime reads format {FORMAT}"
        )
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(_describe_quoting(exc, root, source)) from exc
    problems = list(cross_check(manifest))
    if problems:
        raise ManifestError("\n".join(_format(p, root, source) for p in problems))
    return manifest


def _describe_quoting(exc: ValidationError, root: yaml.Node | None, source: str) -> str:
    """The configuration's error lines, each followed by the bad value when it is a scalar."""
    lines = describe_errors(exc, root, source).split("\n")
    for index, err in enumerate(exc.errors()):
        value = err.get("input")
        quotable = isinstance(value, (str, int, float, bool)) and repr(value) not in err["msg"]
        if err["type"] != "extra_forbidden" and quotable:
            lines[index] += f" (got {value!r})"
    return "\n".join(lines)


def _format(problem: Problem, root: yaml.Node | None, source: str) -> str:
    loc, message = problem
    return f"{source}:{line_of(root, list(loc))}: {'.'.join(str(p) for p in loc)}: {message}"


def cross_check(m: Manifest) -> Iterator[Problem]:
    """Rules between fields that pydantic's per-field checks cannot see."""
    yield from _check_task(m)
    yield from _check_input(m)
    yield from _check_output_names(m)
    for index, output in enumerate(m.outputs):
        yield from _CHECKS[output.kind](m, index, output)
    yield from _check_label_names(m)
    yield from _check_explanation(m)
    yield from _check_files(m)
    yield from _check_validation(m)
    yield from _check_quality(m)


def _check_task(m: Manifest) -> Iterator[Problem]:
    if m.task == "detection":
        yield ("task",), "'detection' is not supported: format 1 has no box output kind yet"
    needed: dict[str, OutputKind] = {"classification": "scores", "segmentation": "mask"}
    kind = needed.get(m.task)
    if kind is not None and not m.outputs_of(kind):
        yield ("task",), f"a {m.task} model needs an output of kind {kind!r}"


def _check_input(m: Manifest) -> Iterator[Problem]:
    for key in ("mean", "std"):
        values = getattr(m.input, key)
        if len(values) != m.input.channels:
            yield (
                ("input", key),
                f"has {len(values)} value(s) but input.channels is {m.input.channels}",
            )


def _check_output_names(m: Manifest) -> Iterator[Problem]:
    seen: dict[str, int] = {}
    for index, output in enumerate(m.outputs):
        if output.name in seen:
            yield (
                ("outputs", index, "name"),
                f"{output.name!r} is already the name of outputs.{seen[output.name]}",
            )
        if output.name == m.input.name:
            yield ("outputs", index, "name"), f"{output.name!r} is the input's name"
        seen.setdefault(output.name, index)


def _check_scores(m: Manifest, index: int, output: OutputSpec) -> Iterator[Problem]:
    yield from _check_labelled(index, output)
    if output.threshold is not None:
        yield (
            ("outputs", index, "threshold"),
            "only mask outputs take an output threshold; give each label its own",
        )
    for number, label in output.finding_labels:
        if label.threshold is None:
            yield (
                ("outputs", index, "labels", number),
                f"label {label.name!r} needs a threshold (its operating point)",
            )
    yield from _check_negative(index, output)


def _check_negative(index: int, output: OutputSpec) -> Iterator[Problem]:
    """A negative label is the "nothing found" class: one per output at most, beside at least
    one label that can be a finding, and with nothing that only a finding uses."""
    negatives = [n for n, label in enumerate(output.labels) if label.negative]
    for number in negatives[1:]:
        yield (
            ("outputs", index, "labels", number, "negative"),
            f"outputs.{index} already has a negative label ({output.labels[negatives[0]].name!r})",
        )
    if negatives and len(negatives) == len(output.labels):
        yield ("outputs", index, "labels"), "every label is negative: nothing could be found"
    for number in negatives:
        label = output.labels[number]
        for key in ("threshold", "priority"):
            if getattr(label, key) is not None:
                yield (
                    ("outputs", index, "labels", number, key),
                    f"label {label.name!r} is negative (never a finding): remove its {key}",
                )


def _check_mask(m: Manifest, index: int, output: OutputSpec) -> Iterator[Problem]:
    yield from _check_labelled(index, output)
    for number, label in enumerate(output.labels):
        if label.negative:
            yield (
                ("outputs", index, "labels", number, "negative"),
                "only labels of scores outputs can be negative",
            )
    if output.threshold is None:
        for number, label in enumerate(output.labels):
            if label.threshold is None:
                yield (
                    ("outputs", index, "labels", number),
                    f"label {label.name!r} needs a threshold, here or as outputs.{index}.threshold",
                )


def _check_labelled(index: int, output: OutputSpec) -> Iterator[Problem]:
    if not output.labels:
        yield ("outputs", index, "labels"), f"a {output.kind} output needs at least one label"
    if output.activation == "softmax" and len(output.labels) < 2:
        yield (
            ("outputs", index, "activation"),
            "'softmax' needs two or more labels; use 'sigmoid' for one",
        )
    if output.for_ is not None:
        yield ("outputs", index, "for"), f"only cam outputs take 'for', not {output.kind}"
    for number, label in output.finding_labels:
        if label.priority is None:
            yield (
                ("outputs", index, "labels", number),
                f"label {label.name!r} needs a priority (urgent, review or routine)",
            )


def _check_cam(m: Manifest, index: int, output: OutputSpec) -> Iterator[Problem]:
    scores = [o.name for o in m.outputs_of("scores")]
    if output.for_ is None:
        yield ("outputs", index), "a cam output needs 'for': the scores output it explains"
    elif output.for_ not in scores:
        yield (
            ("outputs", index, "for"),
            f"{output.for_!r} is not a scores output (scores outputs: {', '.join(scores)})",
        )
    elif m.cam_for(output.for_) is not output:
        yield ("outputs", index, "for"), f"{output.for_!r} already has a cam output"
    for key, bad in (
        ("labels", bool(output.labels)),
        ("activation", output.activation != "none"),
        ("threshold", output.threshold is not None),
    ):
        if bad:
            yield ("outputs", index, key), "a cam output takes labels from its 'for' output"


_CHECKS = {"scores": _check_scores, "mask": _check_mask, "cam": _check_cam}


def _check_label_names(m: Manifest) -> Iterator[Problem]:
    seen: dict[str, str] = {}
    for index, output in enumerate(m.outputs):
        for number, label in enumerate(output.labels):
            where = f"outputs.{index}.labels.{number}"
            if label.name in seen:
                yield (
                    ("outputs", index, "labels", number, "name"),
                    f"{label.name!r} is already the name of {seen[label.name]}",
                )
            seen.setdefault(label.name, where)


def _check_explanation(m: Manifest) -> Iterator[Problem]:
    method, spec = m.explanation.method, m.input
    if method == "cam" and not m.outputs_of("cam"):
        yield ("explanation", "method"), "'cam' needs an output of kind cam"
    if method == "occlusion" and not m.outputs_of("scores"):
        yield ("explanation", "method"), "'occlusion' needs a scores output to measure"
    if method == "occlusion" and m.explanation.patch > min(spec.height, spec.width):
        yield (
            ("explanation", "patch"),
            f"{m.explanation.patch} is larger than the {spec.width}x{spec.height} input",
        )
    if method == "occlusion" and m.explanation.stride > m.explanation.patch:
        yield (
            ("explanation", "stride"),
            f"{m.explanation.stride} is larger than the patch: pixels would never be occluded",
        )


def _check_files(m: Manifest) -> Iterator[Problem]:
    if m.files.int8 is not None and m.files.int8 == m.files.fp32:
        yield ("files", "int8"), f"{m.files.int8!r} is also files.fp32"


def _check_validation(m: Manifest) -> Iterator[Problem]:
    if m.validation is None:
        return
    labels = {label.name for output in m.outputs for label in output.labels}
    for key in m.validation.metrics:
        if key not in labels:
            yield ("validation", "metrics", key), f"{key!r} is not a label of this model"


def _check_quality(m: Manifest) -> Iterator[Problem]:
    """The reference must be a size x size grid with some spread: a correlation with a
    constant picture is undefined."""
    if m.quality is None:
        return
    size, reference = m.quality.size, m.quality.reference
    if len(reference) != size:
        yield ("quality", "reference"), f"has {len(reference)} row(s) but quality.size is {size}"
    for number, row in enumerate(reference):
        if len(row) != size:
            yield (
                ("quality", "reference", number),
                f"has {len(row)} value(s) but quality.size is {size}",
            )
    values = [value for row in reference for value in row]
    if values and max(values) - min(values) < 1e-3:
        yield ("quality", "reference"), "is constant: there is no shape to compare images with"


def manifest_dict(manifest: Manifest) -> dict[str, Any]:
    """The manifest as plain data with YAML's key names (`for`, not `for_`)."""
    return manifest.model_dump(mode="json", by_alias=True, exclude_none=True)
