"""Manifest format 1: the README's example loads; errors name the field, its line and the value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance.runtime import ManifestError, load_manifest, parse_manifest

README = Path(__file__).resolve().parent.parent / "models" / "README.md"


def readme_manifest() -> str:
    """The manifest.yaml example of models/README.md, the format's documentation."""
    match = re.search(
        r"## manifest.yaml \(format 1\)\s+```yaml\n(.*?)```", README.read_text(), re.S
    )
    assert match is not None, "models/README.md lost its manifest example"
    return match.group(1)


MANIFEST = readme_manifest()


def error_of(text: str) -> str:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, "m.yaml")
    return str(info.value)


def line_of(text: str, fragment: str) -> int:
    """1-based line of the first line containing `fragment`."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if fragment in line)


def changed(old: str, new: str) -> str:
    assert old in MANIFEST, old
    return MANIFEST.replace(old, new, 1)


def test_the_readme_example_is_a_valid_manifest(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text(MANIFEST)
    manifest = load_manifest(path)
    assert manifest.identity == "demo-chest-xray 0.1.0"
    assert manifest.applies_to.modalities == ("CR", "DX")
    assert manifest.input.batch == "dynamic"
    assert manifest.outputs[1].for_ == "probabilities"
    assert manifest.cam_for("probabilities") is manifest.outputs[1]
    assert manifest.files.int8 == "model.int8.onnx"
    assert manifest.outputs[0].labels[0].code is not None
    assert manifest.outputs[0].labels[0].code.value == "60046008"


@pytest.mark.parametrize(
    ("old", "new", "key", "words"),
    [
        ("name: demo-chest-xray", "name: Demo_X", "name", "'Demo_X'"),
        ("version: 0.1.0", "version: one", "version", "'one'"),
        ("task: classification", "task: triage", "task", "'triage'"),
        ("height: 256", "height: -3", "input.height", "-3"),
        ("channels: 1", "channels: 2", "input.channels", "(got 2)"),
        ("resize: letterbox", "resize: fit", "input.resize", "'fit'"),
        ("frames: first", "frames: every:0", "input.frames", "'every:0'"),
        ("batch: dynamic", "batch: 4", "input.batch", "(got 4)"),
        ("threshold: 0.5", "threshold: 1.5", "outputs.0.labels.0.threshold", "1.5"),
        ("std: [0.25]", "std: [.inf]", "input.std.0", "finite number"),
        ("mean: [0.5]", "mean: [.nan]", "input.mean.0", "finite number"),
        ("priority: urgent", "priority: high", "outputs.0.labels.0.priority", "'high'"),
        ("kind: cam ", "kind: heatmap ", "outputs.1.kind", "'heatmap'"),
        ("fp32: model.onnx", "fp32: ../model.onnx", "files.fp32", "'../model.onnx'"),
        ("modalities: [CR, DX]", "modalities: [CR, C-R]", "applies_to.modalities.1", "'C-R'"),
        ("sop_classes: []", "sop_classes: [1.02.3]", "applies_to.sop_classes.0", "'1.02.3'"),
    ],
)
def test_a_bad_value_names_the_field_its_line_and_the_value(
    old: str, new: str, key: str, words: str
) -> None:
    text = changed(old, new)
    message = error_of(text)
    assert message.startswith(f"m.yaml:{line_of(text, new)}: {key}: "), message
    assert words in message


def test_an_unknown_key_is_named_where_it_is_written() -> None:
    text = changed("  width: 256\n", "  width: 256\n  order: rgb\n")
    assert f"m.yaml:{line_of(text, 'order')}: input.order: unknown key" in error_of(text)


def test_a_missing_field_is_named() -> None:
    text = changed("not_for_clinical_use: true ", "# removed ")
    assert "not_for_clinical_use: Field required" in error_of(text)


def test_only_format_1_is_read() -> None:
    assert error_of(changed("format: 1", "format: 2")) == (
        "m.yaml:1: format: 2: this runtime reads format 1"
    )


def test_yaml_syntax_errors_give_the_line() -> None:
    message = error_of(changed("  height: 256", "  height: [256"))
    assert message.startswith("m.yaml:") and "not valid YAML" in message


@pytest.mark.parametrize(
    ("old", "new", "key", "words"),
    [
        ("for: probabilities", "for: probs", "outputs.1.for", "'probs' is not a scores output"),
        ("std: [0.25]", "std: [0.25, 0.25]", "input.std", "2 value(s) but input.channels is 1"),
        ("mean: [0.5]", "mean: []", "input.mean", "0 value(s)"),
        ("task: classification", "task: segmentation", "task", "needs an output of kind 'mask'"),
        ("task: classification", "task: detection", "task", "not supported"),
        ("method: cam ", "method: occlusion ", "explanation.patch", None),
        ("activation: none ", "activation: softmax ", "outputs.0.activation", "two or more"),
        ("  - name: cam\n", "  - name: probabilities\n", "outputs.1.name", "already the name"),
        ("int8: model.int8.onnx", "int8: model.onnx", "files.int8", "also files.fp32"),
        ("    pleural_effusion: {auc", "    effusion: {auc", "validation.metrics.effusion", None),
    ],
)
def test_rules_between_fields_name_the_field_and_line(
    old: str, new: str, key: str, words: str | None
) -> None:
    text = changed(old, new)
    if key == "explanation.patch":  # occlusion patch bigger than the input
        text = text.replace("patch: 32", "patch: 300")
    message = error_of(text)
    line = re.match(r"m\.yaml:(\d+): " + re.escape(key) + ": ", message)
    assert line is not None, message
    assert words is None or words in message


def test_a_scores_label_without_threshold_is_refused() -> None:
    text = changed("        threshold: 0.5           # operating point", "        # no threshold")
    message = error_of(text)
    assert "outputs.0.labels.0: label 'pleural_effusion' needs a threshold" in message
    assert message.startswith(f"m.yaml:{line_of(text, '- name: pleural_effusion')}:")


def test_label_names_are_unique_across_outputs() -> None:
    text = changed(
        "  - name: cam\n    kind: cam ",
        "  - name: extra\n    kind: scores\n    labels:\n"
        "      - {name: pleural_effusion, display: X, threshold: 0.5, priority: routine}\n"
        "  - name: cam\n    kind: cam ",
    )
    message = error_of(text)
    assert "outputs.1.labels.0.name: 'pleural_effusion' is already the name of" in message


def test_a_cam_output_cannot_carry_labels_or_an_activation() -> None:
    text = changed("    for: probabilities", "    for: probabilities\n    activation: sigmoid")
    assert "outputs.1.activation: a cam output takes labels from its 'for' output" in (
        error_of(text)
    )


def test_mask_outputs_take_a_shared_threshold() -> None:
    text = changed(
        "  - name: cam\n    kind: cam ",
        "  - name: lungs\n    kind: mask\n    threshold: 0.4\n    labels:\n"
        "      - {name: lung, display: Lung, priority: routine}\n"
        "  - name: cam\n    kind: cam ",
    )
    manifest = parse_manifest(text)
    mask = manifest.output("lungs")
    assert mask.label_threshold(mask.labels[0]) == 0.4


def test_unreadable_manifest_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"manifest.yaml: cannot read the manifest"):
        load_manifest(tmp_path / "manifest.yaml")


def test_validation_keeps_further_figures_as_written() -> None:
    text = MANIFEST + "  int8: {format: QDQ, decision_agreement: 0.99}\n  latency_ms: {fp32: 4.2}\n"
    validation = parse_manifest(text).validation
    assert validation is not None
    assert validation.model_extra == {
        "int8": {"format": "QDQ", "decision_agreement": 0.99},
        "latency_ms": {"fp32": 4.2},
    }
