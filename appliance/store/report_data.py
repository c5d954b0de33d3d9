"""What a report of one analysed image is made of, read in one go: the image's current
analysis and findings, the pictures drawn beside them, what people said of the findings and the
study's newest final impression given since the analysis.

`fingerprint` names exactly these inputs, so the outputs job can tell whether a new revision
is due (new findings, feedback, impression or pictures) or the objects already made still say
everything.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class ReportRows:
    instance_id: int
    study_id: int
    study_uid: str
    source_uid: str
    file_name: str  # in the spool
    present: bool
    is_image: bool  # an RT plan, a report or a waveform has no rows: nothing to report on
    analysis: sqlite3.Row
    findings: list[sqlite3.Row]
    pictures: list[sqlite3.Row]
    feedback: list[sqlite3.Row]
    impression: sqlite3.Row | None

    @property
    def fingerprint(self) -> str:
        parts = [
            f"job:{self.analysis['job_ref']}:{self.analysis['state']}",
            "findings:" + ",".join(str(row["id"]) for row in self.findings),
            "pictures:" + ",".join(str(row["id"]) for row in self.pictures),
            "feedback:" + ",".join(str(row["id"]) for row in self.feedback),
            f"impression:{self.impression['id'] if self.impression is not None else ''}",
        ]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]

    @property
    def finalised(self) -> bool:
        """Whether a clinician gave the final word with these findings in view."""
        return self.impression is not None


def report_rows(conn: sqlite3.Connection, instance_id: int) -> ReportRows | None:
    """The inputs of an image's report, or None when it has no analysis yet."""
    image = conn.execute(
        "SELECT i.id, i.sop_instance_uid, i.file_name, i.state, i.rows, s.study_ref,"
        " st.study_uid"
        " FROM instances i JOIN series s ON s.id = i.series_ref"
        " JOIN studies st ON st.id = s.study_ref WHERE i.id = ?",
        (instance_id,),
    ).fetchone()
    analysis = conn.execute(
        "SELECT job_ref, state, reason, summary, priority, updated_at FROM analyses"
        " WHERE instance_ref = ?",
        (instance_id,),
    ).fetchone()
    if image is None or analysis is None:
        return None
    findings = conn.execute(
        "SELECT id, model, version, model_sha256, backend, precision, state, reason, priority,"
        " summary, key_frame, result FROM findings WHERE instance_ref = ? AND job_ref = ?"
        " ORDER BY id",
        (instance_id, analysis["job_ref"]),
    ).fetchall()
    job_id = analysis["job_ref"]
    return ReportRows(
        instance_id=instance_id,
        study_id=image["study_ref"],
        study_uid=image["study_uid"],
        source_uid=image["sop_instance_uid"],
        file_name=image["file_name"],
        present=image["state"] == "present",
        is_image=image["rows"] is not None,
        analysis=analysis,
        findings=findings,
        pictures=_pictures(conn, instance_id, job_id),
        feedback=_feedback(conn, instance_id, job_id),
        impression=_final_impression(conn, image["study_ref"], analysis["updated_at"]),
    )


def _pictures(conn: sqlite3.Connection, instance_id: int, job_id: int) -> list[sqlite3.Row]:
    """The overlays (heatmap or outline over the image) of the analysis's findings."""
    return conn.execute(
        "SELECT a.id, a.finding_ref, a.kind, a.label, a.frame, a.file_name, a.width, a.height,"
        " a.detail"
        " FROM artifacts a JOIN findings f ON f.id = a.finding_ref"
        " WHERE a.kind = 'overlay' AND f.instance_ref = ? AND f.job_ref = ? ORDER BY a.id",
        (instance_id, job_id),
    ).fetchall()


def _feedback(conn: sqlite3.Connection, instance_id: int, job_id: int) -> list[sqlite3.Row]:
    """What people said of the analysis's findings, oldest first."""
    return conn.execute(
        "SELECT fb.id, fb.finding_ref, fb.label, fb.verdict, fb.comment, fb.at,"
        " u.display_name, u.role FROM feedback fb JOIN users u ON u.id = fb.user_ref"
        " JOIN findings f ON f.id = fb.finding_ref"
        " WHERE f.instance_ref = ? AND f.job_ref = ? ORDER BY fb.id",
        (instance_id, job_id),
    ).fetchall()


def _final_impression(
    conn: sqlite3.Connection, study_id: int, analysed_at: str
) -> sqlite3.Row | None:
    """The study's newest final impression given since the analysis was saved. A signature
    covers the findings the clinician had in view: an image that arrived (or was analysed
    again) after it keeps an unsigned report until the next final impression."""
    row = conn.execute(
        "SELECT im.id, im.text, im.at, im.final, u.display_name, u.role FROM impressions im"
        " JOIN users u ON u.id = im.user_ref WHERE im.study_ref = ? AND im.final = 1"
        " AND im.at >= ? ORDER BY im.id DESC LIMIT 1",
        (study_id, analysed_at),
    ).fetchone()
    return row if isinstance(row, sqlite3.Row) else None
