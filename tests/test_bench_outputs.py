"""`appliance bench outputs` at tiny sizes: a real `appliance run`, a real Orthanc, an outage."""

from __future__ import annotations

import math

import pytest
from bench_fixtures import Run, assert_refused, run_bench

pytestmark = pytest.mark.slow

TINY = ["--studies", "3", "--interval", "0.3", "--outage", "6", "--waiting", "12"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_bench(tmp_path_factory, "outputs", [*TINY, "--chest-rows", "256"])


def test_every_sr_of_the_steady_push_is_acknowledged_in_order_of_events(run: Run) -> None:
    latency = run[1]["latency"]
    assert latency["images"] == 3 and latency["unsent"] == 0
    assert 0 <= latency["made_p50_s"] <= latency["acked_p50_s"]
    assert latency["acked_p50_s"] <= latency["acked_p95_s"]


def test_the_outage_loses_nothing_and_duplicates_nothing(run: Run) -> None:
    outage = run[1]["outage"]
    assert outage["images"] == 6
    assert outage["missing"] == 0 and outage["unknown"] == 0
    assert outage["objects"] == outage["in_pacs"] == outage["entries_in_pacs"]
    assert outage["backlog"] >= 1 and outage["drain_s"] >= 0
    assert "delivered exactly once: yes" in run[0]


def test_the_sender_memory_is_read_with_the_backlog_waiting(run: Run) -> None:
    memory = run[1]["memory"]
    assert memory["waiting"] >= 12 and memory["attempts"] >= 1
    assert memory["empty_rss_mb"] > 0 and 0 < memory["waiting_rss_mb"] <= memory["waiting_hwm_mb"]
    assert not math.isnan(memory["waiting_rss_mb"])


def test_bad_options_are_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert_refused("outputs", ["--outage", "1"], capsys)
