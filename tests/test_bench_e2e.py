"""`appliance bench e2e` at tiny sizes: a real `appliance run`, real pushes, the store polled."""

from __future__ import annotations

import statistics

import pytest
from bench_fixtures import Run, run_bench

from appliance.bench.e2e.results import (
    E2EOptions,
    FileTiming,
    JobCounts,
    JobRow,
    Outcome,
    Pushed,
)
from appliance.bench.e2e.scenarios import scenario_of
from appliance.bench.harness import BenchError
from appliance.runtime.routing import ImageTags

pytestmark = pytest.mark.slow

TINY = ["--studies", "3", "--interval", "0.2", "--burst", "10", "--chest-rows", "512"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One tiny run shared by this module's tests: the printed report and the JSON one."""
    return run_bench(tmp_path_factory, "e2e", [*TINY, "--repeat", "2"])


def test_every_pushed_image_is_analysed_and_no_job_is_left(run: Run) -> None:
    scenarios = {s["name"]: s for s in run[1]["scenarios"]}

    assert [scenarios[name]["pushed"] for name in ("steady", "burst")] == [3, 10]
    for scenario in scenarios.values():
        pushed = scenario["pushed"]
        assert scenario["analyses"] | {"p50_ms": None} == {
            "done": pushed,
            "failed": 0,
            "stuck": 0,
            "p50_ms": None,
        }
        assert len(scenario["images"]) == pushed
        assert sum(scenario["states"].values()) == pushed
        for counts in scenario["followups"].values():
            assert counts["stuck"] == 0 and counts["failed"] == 0
        assert scenario["drain_s"] is not None and scenario["drain_s"] >= 0


def test_latencies_are_ordered_and_add_up(run: Run) -> None:
    for scenario in run[1]["scenarios"]:
        assert scenario["e2e_p50_ms"] <= scenario["e2e_p95_ms"]
        assert scenario["model_p50_ms"] > 0 and scenario["analyse_p50_ms"] > 0
        assert scenario["worker_p50_ms"] > 0 and scenario["response_lag_p50_ms"] > 0
        assert scenario["median_image_ratio"] == pytest.approx(
            statistics.median(i["e2e_ms"] / i["model_ms"] for i in scenario["images"])
        )
        for image in scenario["images"]:
            assert image["model_ms"] > 0 and image["worker_ms"] > 0 and image["response_lag_ms"] > 0
            # From the SCU's response, e2e can be below 0 (small images); from the row, never.
            assert image["e2e_ms"] + image["response_lag_ms"] > 0
            assert image["queue_ms"] + image["worker_ms"] == pytest.approx(image["e2e_ms"])
            assert 0 <= image["behind_followups_ms"] <= max(0.0, image["queue_ms"]) + 1e-6
            # The worker's own decode + models fit inside its claim -> commit.
            assert 0 < image["in_job_ms"] < image["worker_ms"]


def test_model_only_covers_every_pushed_file_but_the_one_no_model_applies_to(run: Run) -> None:
    files = {f["kind"]: f for f in run[1]["files"]}

    assert "cr-hand-no-model" not in files
    assert {m for f in files.values() for m in f["models"]} == {
        "demo-chest-xray",
        "demo-ultrasound-fluid",
    }
    assert all(len(f["models"]) == 1 and f["model_ms"] > 0 for f in files.values())


def test_memory_and_cold_start_are_measured(run: Run) -> None:
    report = run[1]
    roles = {m["role"]: m for m in report["memory"]}

    assert set(roles) == {"receiver", "worker", "sender", "ui"}
    for memory in roles.values():
        assert 0 < memory["rss_mb"] <= memory["hwm_mb"]
    measured = [roles["receiver"]["hwm_mb"], roles["worker"]["hwm_mb"]]
    assert report["memory_sum"]["hwm_mb"] == pytest.approx(sum(measured))
    cold = report["cold_start"]
    assert cold["first_store_s"] > 0 and cold["worker_ready_s"] > 0
    assert cold["seconds"] == max(cold["first_store_s"], cold["worker_ready_s"])


def test_the_printed_report_has_every_figure_and_verdict(run: Run) -> None:
    text = run[0]

    for needed in (
        "e2e p50 ms  e2e p95 ms  model-only p50 ms  ratio p50s  median image ratio",
        "target <= 1.25",
        "Where the time goes",
        "none lost or stuck",
        "target < 600 MB",
        "target < 10 s",
        "TensorRT engine builds do not apply",
        "left out: cr-hand-no-model",
    ):
        assert needed in text
    latency = [line.split() for line in text.splitlines() if line.endswith("MET")]
    assert [row[:2] for row in latency if row[0] in ("steady", "burst")] == [
        ["steady", "3"],
        ["burst", "10"],
    ]


def test_an_image_not_analysed_in_time_is_stuck_and_not_timed() -> None:
    tags = ImageTags(modality="CR")
    jobs = (JobRow(1, "analyse", "done", 10.2, 10.5), JobRow(3, "pictures", "done", 10.55, 10.65))
    analysed = Outcome(None, "findings", 1, 10.5, tags, jobs)
    waiting = Outcome(None, "", None, None, tags, (JobRow(2, "analyse", "queued", None, 10.1),))
    pushed = [Pushed("chest", "a", 10.0), Pushed("chest", "b", 10.1)]
    files = {"chest": FileTiming("chest", ("demo-chest-xray",), 10.0, 12.0)}

    scenario = scenario_of("burst", pushed, 0.1, {"a": analysed, "b": waiting}, files, E2EOptions())

    assert scenario.analyses == JobCounts(
        done=1, failed=0, stuck=1, p50_ms=scenario.analyses.p50_ms
    )
    assert scenario.analyses.p50_ms == pytest.approx(300)
    pictures = scenario.followups["pictures"]
    assert scenario.followups == {"pictures": JobCounts(1, 0, 0, pictures.p50_ms)}
    assert pictures.p50_ms == pytest.approx(100)
    assert scenario.drain_s is None
    [image] = scenario.images
    assert image.e2e_ms == pytest.approx(500) and image.queue_ms == pytest.approx(200)
    assert image.ratio == pytest.approx(50)


def test_the_wait_behind_follow_up_jobs_is_the_overlap_with_them() -> None:
    tags = ImageTags(modality="CR")
    first = Outcome(
        None,
        "findings",
        1,
        10.1,
        tags,
        (JobRow(1, "analyse", "done", 10.0, 10.1), JobRow(2, "pictures", "done", 10.1, 10.3)),
    )
    second = Outcome(None, "findings", 3, 10.4, tags, (JobRow(3, "analyse", "done", 10.3, 10.4),))
    pushed = [Pushed("chest", "a", 9.99), Pushed("chest", "b", 10.2)]
    files = {"chest": FileTiming("chest", ("demo-chest-xray",), 10.0, 12.0)}

    scenario = scenario_of("burst", pushed, 0.2, {"a": first, "b": second}, files, E2EOptions())

    assert [i.behind_followups_ms for i in scenario.images] == [0, pytest.approx(100)]
    assert scenario.drain_s == pytest.approx(0.2)


def test_options_are_checked_without_the_command_line() -> None:
    with pytest.raises(BenchError, match=r"--chest-rows must be within 256\.\.4096, got 8"):
        E2EOptions(chest_rows=8)
