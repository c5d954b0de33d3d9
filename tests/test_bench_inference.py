"""`bench inference` runs end to end at tiny sizes; the reference network is ResNet-50-sized."""

from __future__ import annotations

import io

import pytest

from appliance.bench.inference import (
    InferenceOptions,
    InferenceReport,
    Speed,
    Split,
    beside_reference,
    run_inference,
)


def test_a_small_run_reports_both_demo_models() -> None:
    out = io.StringIO()
    options = InferenceOptions(repeat=2, batches=(1, 2), skip_reference=True, cr_rows=256)
    report = run_inference(options, out)
    text = out.getvalue()
    for name in ("demo-chest-xray", "demo-ultrasound-fluid"):
        rows = [s for s in report.speeds if s.model == name]
        assert {s.precision for s in rows} == {"fp32", "int8"}
        assert all(s.p50_ms > 0 and s.p95_ms > 0 and s.images_per_s > 0 for s in rows)
        assert name in text
    assert {s.model for s in report.splits} == {"demo-chest-xray", "demo-ultrasound-fluid"}
    assert all(s.model_ms > 0 and s.preprocess_ms > 0 for s in report.splits)
    assert "latency x" in text and "of the model's time" in text


def test_the_reference_network_has_resnet50s_parameters() -> None:
    onnx = pytest.importorskip("onnx")
    from appliance.bench.reference_net import build_resnet50, parameter_count

    model = build_resnet50()
    onnx.checker.check_model(model, full_check=True)
    # torchvision's ResNet-50 has 25,557,032 parameters, 53,120 of them batch norm; folded
    # into the convolutions that leaves 25,530,472 (weights plus one bias per channel).
    assert parameter_count(model) == 25_530_472
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    assert len(convs) == 1 + 16 * 3 + 4  # stem, 16 bottlenecks of 3, 4 projections


def test_pre_and_post_are_also_set_against_the_reference_networks_time() -> None:
    split = Split("demo-chest-xray", "CR 2048x1721", 7.0, 5.5, 4.0, 0.5, 280.0)
    speeds = (
        Speed("demo-chest-xray", "fp32", 4.0, 4.2, 8, 250.0),
        Speed("resnet50-ref (224)", "fp32", 80.0, 85.0, 1, 12.0),
        Speed("resnet50-ref (224)", "int8", 24.0, 25.0, 1, 40.0),
    )
    report = InferenceReport(InferenceOptions(), speeds, (split,), "")
    lines = beside_reference(report)
    assert lines[1].strip() == "demo-chest-xray (CR 2048x1721): 8% of its fp32, 25% of its int8"
    assert beside_reference(InferenceReport(InferenceOptions(), speeds[:1], (split,), "")) == []
