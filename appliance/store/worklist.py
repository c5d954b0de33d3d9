"""Studies in triage order, with the state of their images: `appliance status` and the UI.

Order: triage priority (urgent, review, routine, then not yet analysed), then arrival. The
state of a study's images comes from their current analyses and their newest jobs.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StudyRow:
    study_id: int
    study_uid: str
    patient_id: str
    patient_name: str
    modalities: str
    received_at: str
    triage: str
    triage_reason: str
    images: int
    states: dict[str, int] = field(default_factory=dict)


_STUDIES = """
SELECT st.id, st.study_uid, st.first_received_at, st.triage, st.triage_reason,
       p.patient_id, p.patient_name,
       (SELECT GROUP_CONCAT(DISTINCT se.modality) FROM series se WHERE se.study_ref = st.id)
           AS modalities
FROM studies st JOIN patients p ON p.id = st.patient_ref
ORDER BY st.triage_rank, st.first_received_at
LIMIT ?
"""

# The state of each present image: its newest job if that is not finished, else its analysis.
_IMAGE_STATES = """
SELECT CASE
         WHEN j.state = 'queued' THEN 'received'
         WHEN j.state = 'running' THEN 'analysing'
         ELSE COALESCE(a.state, j.state)
       END AS state, COUNT(*) AS n
FROM instances i
JOIN series se ON se.id = i.series_ref
LEFT JOIN analyses a ON a.instance_ref = i.id
LEFT JOIN jobs j ON j.id = (SELECT MAX(id) FROM jobs WHERE instance_ref = i.id)
WHERE se.study_ref = ? AND i.state = 'present'
GROUP BY 1
"""


def studies(conn: sqlite3.Connection, limit: int = 20) -> list[StudyRow]:
    """The first `limit` studies of the worklist."""
    rows = conn.execute(_STUDIES, (limit,)).fetchall()
    return [_study(conn, row) for row in rows]


def _study(conn: sqlite3.Connection, row: sqlite3.Row) -> StudyRow:
    states = {r["state"]: int(r["n"]) for r in conn.execute(_IMAGE_STATES, (row["id"],))}
    return StudyRow(
        study_id=row["id"],
        study_uid=row["study_uid"],
        patient_id=row["patient_id"],
        patient_name=row["patient_name"],
        modalities=row["modalities"] or "",
        received_at=row["first_received_at"],
        triage=row["triage"],
        triage_reason=row["triage_reason"],
        images=sum(states.values()),
        states=states,
    )
