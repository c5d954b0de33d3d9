"""The outbox on a real store: objects recorded, deliveries queued, claimed, sent, failed, put
back and taken back after a crash, with their audit rows and what people see of the queue."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from appliance.store import Store, audit, outbox
from appliance.store.db import transaction
from appliance.store.outbox import NewOutput

from sender_fixtures import ingest_one


def record(
    store: Store, instance_id: int, study_id: int, count: int, revision: int = 1
) -> list[int]:
    """`count` heatmap objects of a revision, their files written to the outputs folder."""
    names = store.outputs.write_all([b"object %d" % i for i in range(count)])
    objects = [
        NewOutput(
            "heatmap",
            f"label-{i}",
            "1.2.840.10008.5.1.4.1.1.7",
            f"1.2.3.{instance_id}.{revision}.{i}",
            f"1.2.3.{instance_id}.{revision}",
            name,
            8,
        )
        for i, name in enumerate(names)
    ]
    with transaction(store.conn):
        return outbox.record_outputs(
            store.conn, instance_id, study_id, revision, f"fp{revision}", "findings", objects
        )


def queue(store: Store, study_id: int, ids: list[int], destination: str = "pacs") -> int:
    items = [(i, None, outbox.output_by_id(store.conn, i)["sop_instance_uid"]) for i in ids]  # type: ignore[index]
    with transaction(store.conn):
        return outbox.queue_deliveries(store.conn, destination, study_id, items)


def states(store: Store) -> dict[str, int]:
    rows = store.conn.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state")
    return {row[0]: row[1] for row in rows}


@pytest.fixture
def queued(store: Store, tmp_path: Path) -> tuple[int, list[int]]:
    instance_id, study_id, _ = ingest_one(store, tmp_path)
    ids = record(store, instance_id, study_id, 3)
    assert queue(store, study_id, ids) == 3
    return study_id, ids


def test_claim_takes_due_deliveries_oldest_first_and_marks_them_sending(
    store: Store, queued: tuple[int, list[int]]
) -> None:
    first = outbox.claim(store.conn, "pacs", 2)
    assert [d.sop_instance_uid for d in first] == [uid for uid in _uids(store)[:2]]
    assert all(d.source == "output" and d.file_name.endswith(".dcm") for d in first)
    assert states(store) == {"sending": 2, "waiting": 1}
    assert [d.id for d in outbox.claim(store.conn, "pacs", 5)] == [_ids(store)[2]]
    assert outbox.claim(store.conn, "pacs", 5) == []
    assert outbox.claim(store.conn, "elsewhere", 5) == []


def test_sent_failed_and_put_back_each_leave_their_audit_row(
    store: Store, queued: tuple[int, list[int]]
) -> None:
    a, b, c = outbox.claim(store.conn, "pacs", 3)
    later = time.time() + 600
    with transaction(store.conn):
        outbox.mark_sent(store.conn, a, "sender", "sent with a warning: x [status 0xB000]")
        outbox.mark_failed(store.conn, b, "sender", "the PACS does not accept X")
        outbox.put_back(store.conn, [c], "sender", "cannot reach h:1: connection refused", later)
    rows = {r["sop_instance_uid"]: r for r in store.conn.execute("SELECT * FROM deliveries")}
    assert (rows[a.sop_instance_uid]["state"], rows[a.sop_instance_uid]["attempts"]) == ("sent", 1)
    assert rows[a.sop_instance_uid]["sent_at"] is not None
    assert rows[b.sop_instance_uid]["last_reason"] == "the PACS does not accept X"
    assert rows[c.sop_instance_uid]["state"] == "waiting"
    assert rows[c.sop_instance_uid]["next_try"] == pytest.approx(later)
    actions = [row["action"] for row in audit.recent(store.conn)]
    assert sorted(actions[:3]) == ["send.failed", "send.retry", "send.sent"]
    # Not due before its next try: neither claimed nor counted as due.
    assert outbox.claim(store.conn, "pacs", 5) == []
    assert outbox.due_destinations(store.conn) == []
    assert outbox.next_due(store.conn) == pytest.approx(later)
    assert outbox.next_due(store.conn, "pacs") == pytest.approx(later)
    assert outbox.next_due(store.conn, "elsewhere") is None


def test_an_untried_delivery_put_back_keeps_its_attempts(
    store: Store, queued: tuple[int, list[int]]
) -> None:
    claimed = outbox.claim(store.conn, "pacs", 3)
    with transaction(store.conn):
        outbox.put_back(store.conn, claimed, "sender", "stopped", 0.0, tried=False)
    attempts = [r[0] for r in store.conn.execute("SELECT attempts FROM deliveries")]
    assert attempts == [0, 0, 0]
    assert outbox.due_destinations(store.conn) == ["pacs"]


def test_queueing_again_requeues_only_when_asked(
    store: Store, queued: tuple[int, list[int]]
) -> None:
    study_id, ids = queued
    a, b, _ = outbox.claim(store.conn, "pacs", 3)
    with transaction(store.conn):
        outbox.mark_sent(store.conn, a, "sender")
        outbox.mark_failed(store.conn, b, "sender", "refused")
    assert queue(store, study_id, ids) == 0  # already queued: left as they are
    assert states(store) == {"sent": 1, "failed": 1, "sending": 1}
    items = [(i, None, outbox.output_by_id(store.conn, i)["sop_instance_uid"]) for i in ids]  # type: ignore[index]
    with transaction(store.conn):
        again = outbox.queue_deliveries(store.conn, "pacs", study_id, items, again=True)
    assert again == 2  # the sent and the failed one; the one being sent is left alone
    assert states(store) == {"waiting": 2, "sending": 1}
    row = store.conn.execute("SELECT attempts, last_reason FROM deliveries WHERE id = ?", (b.id,))
    assert tuple(row.fetchone()) == (0, "")


def test_a_dead_senders_deliveries_wait_again_with_an_audit_row(
    store: Store, queued: tuple[int, list[int]], tmp_path: Path
) -> None:
    study_id, _ = queued
    outbox.claim(store.conn, "pacs", 3)
    instance_id, _, uid = ingest_one(store, tmp_path, seed=2)
    with transaction(store.conn):
        outbox.queue_deliveries(store.conn, "archive", study_id, [(None, instance_id, uid)])
    [original] = outbox.claim(store.conn, "archive", 5)
    assert original.source == "original"
    assert store.spool.path_of(original.file_name).is_file()
    with transaction(store.conn):
        assert outbox.reset_interrupted(store.conn, "sender", "archive") == 1
        assert outbox.reset_interrupted(store.conn) == 3
        assert outbox.reset_interrupted(store.conn) == 0
    assert states(store) == {"waiting": 4}
    rows = audit.recent(store.conn, "send.interrupted")
    assert [(r["subject"], r["detail"]["objects"]) for r in rows] == [
        ("outbox", 3),
        ("destination:archive", 1),
    ]


def test_the_queue_summary_and_undelivered_files(
    store: Store, queued: tuple[int, list[int]]
) -> None:
    a, b, c = outbox.claim(store.conn, "pacs", 3)
    with transaction(store.conn):
        outbox.mark_sent(store.conn, a, "sender")
        outbox.put_back(store.conn, [b], "sender", "down", time.time() + 60)
        outbox.record_destination(store.conn, "pacs", False, "cannot reach", 2, 123.0)
        outbox.record_destination(store.conn, "old", None, "not configured")
    summary = outbox.queue_summary(store.conn)
    assert set(summary) == {"pacs", "old"}
    pacs = summary["pacs"]
    assert (pacs["waiting"], pacs["sending"], pacs["sent"], pacs["failed"]) == (1, 1, 1, 0)
    assert (pacs["reachable"], pacs["detail"], pacs["next_try"]) == (False, "cannot reach", 123.0)
    assert pacs["oldest_waiting"] is not None
    assert summary["old"]["reachable"] is None
    files = {r[0] for r in store.conn.execute("SELECT file_name FROM outputs")}
    sent_file = outbox.output_by_id(store.conn, _output_of(store, a.id))["file_name"]  # type: ignore[index]
    assert outbox.undelivered_files(store.conn) == files - {sent_file}
    assert outbox.known_destinations(store.conn) == {"pacs", "old"}
    status = outbox.destination_status(store.conn, "pacs")
    assert status is not None and status["failures"] == 2
    assert c.destination == "pacs"


def test_known_destinations_are_found_on_the_index_not_by_reading_every_delivery(
    store: Store, queued: tuple[int, list[int]]
) -> None:
    study_id, ids = queued
    queue(store, study_id, ids, "archive")
    queue(store, study_id, ids[:1], "done")
    [done] = outbox.claim(store.conn, "done", 5)
    with transaction(store.conn):
        outbox.mark_sent(store.conn, done, "sender")
    # Only sent rows: nothing waits there, and it has no status row.
    assert outbox.known_destinations(store.conn) == {"pacs", "archive"}
    outbox.claim(store.conn, "archive", 5)  # being sent still counts
    assert outbox.known_destinations(store.conn) == {"pacs", "archive"}
    plan = store.conn.execute("EXPLAIN QUERY PLAN " + outbox._KNOWN_DESTINATIONS).fetchall()
    steps = [str(row[3]) for row in plan]
    assert not [step for step in steps if step.startswith("SCAN deliveries")], steps


def test_a_later_revision_references_the_one_it_replaces(store: Store, tmp_path: Path) -> None:
    instance_id, study_id, _ = ingest_one(store, tmp_path)
    first = record(store, instance_id, study_id, 2, revision=1)
    second = record(store, instance_id, study_id, 2, revision=2)
    latest = outbox.latest_outputs(store.conn, instance_id)
    assert [r["id"] for r in latest] == second
    assert [r["replaces_ref"] for r in latest] == first
    revision = outbox.latest_revision(store.conn, instance_id)
    assert revision is not None and tuple(revision) == (2, "fp2")


def _uids(store: Store) -> list[str]:
    return [r[0] for r in store.conn.execute("SELECT sop_instance_uid FROM deliveries ORDER BY id")]


def _ids(store: Store) -> list[int]:
    return [r[0] for r in store.conn.execute("SELECT id FROM deliveries ORDER BY id")]


def _output_of(store: Store, delivery_id: int) -> int:
    row = store.conn.execute("SELECT output_ref FROM deliveries WHERE id = ?", (delivery_id,))
    return int(row.fetchone()[0])
