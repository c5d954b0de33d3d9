"""What people say about the findings, and their own impression of a study.

Both tables are append-only (triggers refuse updates): a changed mind is a newer row, the
newest one counts, and the history stays for audit. The model's findings rows are never
touched. Each entry is written together with its audit row in one transaction; the audit row
carries the words themselves (the comment, the impression's text), so the trail shows what was
said even to someone who reads only the trail.

A final impression is what the clinic's record waits for: in the same transaction it queues an
outputs job for each analysed image of the study (purpose "final"), so the worker rebuilds the
SR and the PDF report with the impression and queues their deliveries. The caller rings the
worker's doorbell after the commit.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, replace

from appliance.store import audit, outbox
from appliance.store.db import transaction, utc_now
from appliance.store.refused import Refused

VERDICTS = ("agree", "disagree", "unsure")
MAX_COMMENT = 1000
MAX_IMPRESSION = 4000
FINAL_PURPOSE = "final"  # the outputs jobs a final impression queues (see store.jobs)


class FeedbackError(Refused):
    """Feedback or an impression that cannot be accepted; the message says why, `reason` in
    one word for the UI's catalogue ("empty", "too_long", or "invalid")."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message, reason)

    @property
    def reason(self) -> str:
        return self.key


@dataclass(frozen=True)
class Feedback:
    feedback_id: int
    finding_id: int
    label: str
    verdict: str
    comment: str
    user_id: int
    username: str
    display_name: str
    at: str


@dataclass(frozen=True)
class Impression:
    impression_id: int
    study_id: int
    text: str
    final: bool
    user_id: int
    username: str
    display_name: str
    at: str
    outputs_queued: int = 0  # outputs jobs a final impression queued (ring the worker)


def add_feedback(
    conn: sqlite3.Connection,
    finding_id: int,
    label: str,
    verdict: str,
    comment: str,
    user_id: int,
    actor: str,
) -> Feedback:
    """Record a user's verdict on one label of a finding (the caller checks the label)."""
    if verdict not in VERDICTS:
        raise FeedbackError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}", "invalid")
    comment = comment.replace("\r\n", "\n").strip()  # a line break is one character
    if len(comment) > MAX_COMMENT:
        raise FeedbackError(f"a comment has at most {MAX_COMMENT} characters", "too_long")
    at = utc_now()
    with transaction(conn):
        cur = conn.execute(
            "INSERT INTO feedback (finding_ref, label, verdict, comment, user_ref, at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (finding_id, label, verdict, comment, user_id, at),
        )
        subject = f"finding:{finding_id}"
        audit.append(
            conn,
            actor,
            "feedback.recorded",
            subject,
            label=label,
            verdict=verdict,
            comment=comment,
        )
    return _one_feedback(conn, int(cur.lastrowid or 0))


_FEEDBACK = (
    "SELECT fb.id, fb.finding_ref, fb.label, fb.verdict, fb.comment, fb.user_ref, u.username,"
    " u.display_name, fb.at FROM feedback fb JOIN users u ON u.id = fb.user_ref"
)
# Constant text joined to constant text: no value is ever formatted into these queries.
_FEEDBACK_OF_FINDINGS = (
    _FEEDBACK + " WHERE fb.finding_ref IN (SELECT value FROM json_each(?)) ORDER BY fb.id"  # noqa: S608
)
_ONE_FEEDBACK = _FEEDBACK + " WHERE fb.id = ?"


def feedback_for(conn: sqlite3.Connection, finding_ids: Sequence[int]) -> list[Feedback]:
    """Every entry on these findings, oldest first."""
    rows = conn.execute(
        _FEEDBACK_OF_FINDINGS,
        (json.dumps(list(finding_ids)),),
    ).fetchall()
    return [Feedback(*tuple(row)) for row in rows]


def newest_feedback(entries: Sequence[Feedback]) -> dict[tuple[int, str], Feedback]:
    """The entry that counts per (finding, label): the newest one."""
    return {(e.finding_id, e.label): e for e in sorted(entries, key=lambda e: e.feedback_id)}


def _one_feedback(conn: sqlite3.Connection, feedback_id: int) -> Feedback:
    row = conn.execute(_ONE_FEEDBACK, (feedback_id,)).fetchone()
    return Feedback(*tuple(row))


def add_impression(
    conn: sqlite3.Connection,
    study_id: int,
    text: str,
    final: bool,
    user_id: int,
    actor: str,
    max_attempts: int = 3,
) -> Impression:
    """Record a user's impression of a study (the caller checks who may mark it final); a
    final one also queues the study's outputs jobs (`max_attempts` each: jobs.max_attempts).

    Line breaks count as one character: browsers send a textarea's as CR LF, while its
    `maxlength` counts them as one.
    """
    text = text.replace("\r\n", "\n").strip()
    if not text:
        raise FeedbackError("an impression needs some text", "empty")
    if len(text) > MAX_IMPRESSION:
        raise FeedbackError(f"an impression has at most {MAX_IMPRESSION} characters", "too_long")
    with transaction(conn):
        cur = conn.execute(
            "INSERT INTO impressions (study_ref, user_ref, text, final, at) VALUES (?, ?, ?, ?, ?)",
            (study_id, user_id, text, int(final), utc_now()),
        )
        queued = outbox.request_outputs(conn, study_id, FINAL_PURPOSE, max_attempts) if final else 0
        audit.append(
            conn,
            actor,
            "impression.recorded",
            f"study:{study_id}",
            final=final,
            text=text,
            outputs_queued=queued,
        )
    entry = _one_impression(conn, int(cur.lastrowid or 0))
    return replace(entry, outputs_queued=queued)


_IMPRESSIONS = (
    "SELECT im.id, im.study_ref, im.text, im.final, im.user_ref, u.username, u.display_name,"
    " im.at FROM impressions im JOIN users u ON u.id = im.user_ref"
)
_IMPRESSIONS_OF_STUDY = _IMPRESSIONS + " WHERE im.study_ref = ? ORDER BY im.id DESC"
_ONE_IMPRESSION = _IMPRESSIONS + " WHERE im.id = ?"


def impressions_for(conn: sqlite3.Connection, study_id: int) -> list[Impression]:
    """The study's impressions, newest (the one that counts) first."""
    rows = conn.execute(_IMPRESSIONS_OF_STUDY, (study_id,)).fetchall()
    return [_impression(row) for row in rows]


def has_impression(conn: sqlite3.Connection, study_id: int, user_id: int) -> bool:
    """Whether this user has recorded an impression of this study ("read first" mode)."""
    row = conn.execute(
        "SELECT 1 FROM impressions WHERE study_ref = ? AND user_ref = ? LIMIT 1",
        (study_id, user_id),
    ).fetchone()
    return row is not None


def studies_with_impression(
    conn: sqlite3.Connection, user_id: int, study_ids: Sequence[int]
) -> set[int]:
    """Which of these studies the user has recorded an impression of (one query per page)."""
    rows = conn.execute(
        "SELECT DISTINCT study_ref FROM impressions WHERE user_ref = ?"
        " AND study_ref IN (SELECT value FROM json_each(?))",
        (user_id, json.dumps(list(study_ids))),
    ).fetchall()
    return {int(row[0]) for row in rows}


def _one_impression(conn: sqlite3.Connection, impression_id: int) -> Impression:
    return _impression(conn.execute(_ONE_IMPRESSION, (impression_id,)).fetchone())


def _impression(row: sqlite3.Row) -> Impression:
    values = tuple(row)
    return Impression(values[0], values[1], values[2], bool(values[3]), *values[4:])
