"""`appliance bench ui` at tiny sizes: real `appliance ui` processes, real signed-in clients."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_fixtures import Run, run_bench

from appliance.bench.harness import BenchError
from appliance.bench.ui.results import UIOptions
from appliance.bench.ui.seed import count_store, seed_store
from appliance.store import Store, analyses, users
from appliance.store.worklist import studies

pytestmark = pytest.mark.slow

STUDIES = 120
IMAGES = 2
TINY = ["--studies", str(STUDIES), "--seconds", "0.5", "--clients", "2", "--images", str(IMAGES)]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One tiny run shared by this module's tests: the printed report and the JSON one."""
    return run_bench(tmp_path_factory, "ui", TINY)


def test_the_stores_hold_what_was_asked(run: Run) -> None:
    stores = run[1]["stores"]

    assert list(stores) == ["empty", f"{STUDIES} studies"]
    assert stores["empty"]["studies"] == 0 and stores["empty"]["images"] == 0
    full = stores[f"{STUDIES} studies"]
    assert full["studies"] == STUDIES == sum(full["triage"].values())
    assert STUDIES <= full["images"] <= 4 * STUDIES  # one to four images a study
    assert full["images"] == sum(full["states"].values())


def test_every_endpoint_of_both_stores_answered_every_request(run: Run) -> None:
    loads = run[1]["load"]
    endpoints = {load["endpoint"] for load in loads}

    assert "/" in endpoints
    assert {(load["store"], load["endpoint"]) for load in loads} == {
        (store, endpoint) for store in ("empty", f"{STUDIES} studies") for endpoint in endpoints
    }
    for load in loads:
        assert load["clients"] == 2 and load["errors"] == 0
        assert load["requests"] > 0 and load["per_s"] > 0
        assert 0 < load["p50_ms"] <= load["p95_ms"] <= load["p99_ms"]
    full_page = next(x for x in loads if x["endpoint"] == "/" and x["studies"] == STUDIES)
    empty_page = next(x for x in loads if x["endpoint"] == "/" and x["studies"] == 0)
    assert full_page["mean_bytes"] > empty_page["mean_bytes"]  # the rows are on the page


def test_every_new_image_was_seen_after_its_commit(run: Run) -> None:
    for fresh in run[1]["freshness"]:
        assert fresh["images"] == IMAGES == fresh["seen"] == len(fresh["delays_ms"])
        assert fresh["interval_s"] == run[1]["poll_interval_s"] > 0
        assert all(delay > 0 for delay in fresh["delays_ms"])  # never before the commit
        assert fresh["p50_ms"] <= fresh["p95_ms"]


def test_the_printed_report_has_every_figure_and_verdict(run: Run) -> None:
    text, report = run

    for needed in (
        "Worklist under load:",
        "p50 ms  p95 ms  p99 ms",
        f"Target: worklist page p95 < 200 ms with {STUDIES} studies:",
        "Freshness: a new image's findings on an open worklist",
        "target <= 2000 ms",
    ):
        assert needed in text
    assert report["targets"]["page_met"] == (report["targets"]["page_p95_ms"] < 200)
    verdicts = [line.rsplit(None, 1)[-1] for line in text.splitlines() if line.endswith("MET")]
    assert len(verdicts) == 3  # the page target and one freshness row per store


def test_a_seeded_store_is_consistent_with_the_store_s_own_rules(store: Store) -> None:
    author = users.create_user(store.conn, "doc", "Doc", "clinician", "2468", "test")
    seed_store(store, 300, author.id)
    conn = store.conn
    before = conn.execute("SELECT id, triage, triage_rank, triage_reason FROM studies").fetchall()

    conn.execute("BEGIN")
    for row in before:
        analyses.update_triage(conn, row["id"])  # what the worker's commit would have set
    after = conn.execute("SELECT id, triage, triage_rank, triage_reason FROM studies").fetchall()
    conn.execute("ROLLBACK")

    assert [tuple(r) for r in after] == [tuple(r) for r in before]
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    counts = count_store(store)
    assert counts.studies == 300 and set(counts.triage) <= {
        "urgent",
        "review",
        "routine",
        "pending",
    }
    assert {"findings", "no_model", "none"} <= set(counts.states)
    shown = studies(conn, limit=500)
    states = {state for row in shown for state in row.states}
    assert len(shown) == 300
    assert "findings" in states and states & {"received", "analysing"}  # the newest wait


def test_options_are_checked_without_the_command_line(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="--seconds must be positive"):
        UIOptions(seconds=-1, workdir=tmp_path)
