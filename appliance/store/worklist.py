"""Studies in triage order, with the state of their images: `appliance status` and the UI.

Order: studies still open first, then those reported (their newest impression is final), each
by triage priority (urgent, review, routine, then not yet analysed), then arrival; so a year of
reported studies never pushes today's work off the page, and nothing disappears. The
state of a study's images comes from their current analyses and their newest analysis jobs
(a pictures job that follows an analysis does not make a finished image look unfinished).

A study shows one state, the one that most needs a person's attention: an image in progress
first (analysing, then received), then failed, held back, findings, no applicable model.
The worklist page asks `version()` every second, so that query reads only aggregates the
indexes answer; rows are listed only when it changes.

The second half reads one study for the viewer: its images, the findings of each image's
current analysis, and their pictures. Every value comes in as an SQL parameter.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.domain import PENDING_RANK, PRIORITY_RANK

STATE_ORDER = ("analysing", "received", "failed", "held_back", "findings", "no_model")
"""A study's states, most in need of attention first; a study shows the first it has."""
TRIAGE_RANKS = {**PRIORITY_RANK, "pending": PENDING_RANK}
MAX_LIMIT = 500
_MAX_TOKENS = 4


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
    reasons: dict[str, str] = field(default_factory=dict)
    reported: bool = False  # its newest impression is final

    @property
    def state(self) -> str:
        """The one state the worklist shows (see STATE_ORDER); 'received' with no images."""
        return next((s for s in STATE_ORDER if self.states.get(s)), "received")

    @property
    def reason(self) -> str:
        """Why the study is in its state, for held back, failed and no applicable model."""
        return self.reasons.get(self.state, "")


@dataclass(frozen=True)
class WorklistQuery:
    """What the worklist page asks for; empty values do not filter.

    `since` is a UTC time in the store's text form (the start of the user's day for the
    "today" filter); `search` matches patient name or ID, word by word.
    """

    since: str | None = None
    priority: str | None = None
    state: str | None = None
    search: str = ""
    limit: int = 100


# The state of each present image: its newest analysis job if that is not finished, else its
# analysis. Shared by the state filter (one study) and the page's state counts (many).
_IMAGE_STATE = """
CASE
  WHEN j.state = 'running' THEN 'analysing'
  WHEN j.state = 'queued' THEN 'received'
  WHEN a.state IS NOT NULL THEN a.state
  WHEN j.state = 'failed' THEN 'failed'
  ELSE 'received'
END
"""
_IMAGE_STATE_RANK = """
CASE
  WHEN j.state = 'running' THEN 0
  WHEN j.state = 'queued' THEN 1
  WHEN a.state = 'failed' OR (a.state IS NULL AND j.state = 'failed') THEN 2
  WHEN a.state = 'held_back' THEN 3
  WHEN a.state = 'findings' THEN 4
  WHEN a.state = 'no_model' THEN 5
  ELSE 1
END
"""
_IMAGES_OF_STUDY = """
FROM instances i
JOIN series se ON se.id = i.series_ref
LEFT JOIN analyses a ON a.instance_ref = i.id
LEFT JOIN jobs j ON j.id =
    (SELECT MAX(id) FROM jobs WHERE instance_ref = i.id AND kind = 'analyse')
WHERE i.state = 'present'
"""

_STUDIES = """
SELECT st.id, st.study_uid, st.first_received_at, st.triage, st.triage_reason,
       p.patient_id, p.patient_name,
       (SELECT GROUP_CONCAT(DISTINCT se.modality) FROM series se WHERE se.study_ref = st.id)
           AS modalities,
       COALESCE((SELECT im.final FROM impressions im WHERE im.study_ref = st.id
                 ORDER BY im.id DESC LIMIT 1), 0) AS reported
FROM studies st JOIN patients p ON p.id = st.patient_ref
"""
_ORDER = " ORDER BY reported, st.triage_rank, st.first_received_at, st.id LIMIT ?"

_FILTER_SINCE = "st.first_received_at >= ?"
_FILTER_PRIORITY = "st.triage_rank = ?"
_FILTER_STATE = (
    f"COALESCE((SELECT MIN({_IMAGE_STATE_RANK}) {_IMAGES_OF_STUDY} AND se.study_ref = st.id),"
    " 1) = ?"
)
# casefold() (store.db) because SQLite's LIKE ignores case for ASCII letters only: "müller"
# must find "Müller".
_FILTER_WORD = (
    "(casefold(p.patient_name) LIKE ? ESCAPE '\\' OR casefold(p.patient_id) LIKE ? ESCAPE '\\')"
)

# Built from the constant fragments above; values only ever come in as parameters.
_PAGE_STATES = f"""
SELECT se.study_ref AS study_id, {_IMAGE_STATE} AS state, COUNT(*) AS n,
       MAX(COALESCE(a.reason, '')) AS reason
{_IMAGES_OF_STUDY} AND se.study_ref IN (SELECT value FROM json_each(?))
GROUP BY 1, 2
"""  # noqa: S608


def studies(conn: sqlite3.Connection, limit: int = 20) -> list[StudyRow]:
    """The first `limit` studies of the worklist, unfiltered (`appliance status`)."""
    return worklist(conn, WorklistQuery(limit=limit))


def worklist(conn: sqlite3.Connection, query: WorklistQuery) -> list[StudyRow]:
    """One page of the worklist: the studies `query` selects, most urgent first."""
    where, params = _where(query)
    sql = _STUDIES + (" WHERE " + " AND ".join(where) if where else "") + _ORDER
    limit = max(1, min(query.limit, MAX_LIMIT))
    rows = conn.execute(sql, (*params, limit)).fetchall()
    states = _states_of(conn, [int(row["id"]) for row in rows])
    return [_study(row, states.get(int(row["id"]), {})) for row in rows]


def _where(query: WorklistQuery) -> tuple[list[str], list[Any]]:
    """SQL conditions (constant text) and their parameters for the filters that are set."""
    where: list[str] = []
    params: list[Any] = []
    if query.since:
        where.append(_FILTER_SINCE)
        params.append(query.since)
    if query.priority in TRIAGE_RANKS:
        where.append(_FILTER_PRIORITY)
        params.append(TRIAGE_RANKS[query.priority])
    if query.state in STATE_ORDER:
        where.append(_FILTER_STATE)
        params.append(STATE_ORDER.index(query.state))
    for word in search_words(query.search):
        pattern = "%" + escape_like(word.casefold()) + "%"
        where.append(_FILTER_WORD)
        params += [pattern, pattern]
    return where, params


def search_words(text: str) -> list[str]:
    """The words a search looks for (each must match the name or the ID): at most a few, so
    a pasted paragraph cannot make a slow query. DICOM's '^' name separator and the comma the
    worklist shows for it ("DOE, JANE") count as spaces."""
    return text.replace("^", " ").replace(",", " ").split()[:_MAX_TOKENS]


def escape_like(text: str) -> str:
    """`text` matched literally by LIKE ... ESCAPE '\\': '%' and '_' are not wildcards."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _states_of(conn: sqlite3.Connection, study_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Per study: state -> (count, a reason) for the page's studies, in one query."""
    found: dict[int, dict[str, Any]] = {}
    if not study_ids:
        return found
    for row in conn.execute(_PAGE_STATES, (json.dumps(list(study_ids)),)):
        found.setdefault(int(row["study_id"]), {})[row["state"]] = (int(row["n"]), row["reason"])
    return found


def _study(row: sqlite3.Row, states: dict[str, tuple[int, str]]) -> StudyRow:
    counts = {state: n for state, (n, _) in states.items()}
    return StudyRow(
        study_id=row["id"],
        study_uid=row["study_uid"],
        patient_id=row["patient_id"],
        patient_name=row["patient_name"],
        modalities=row["modalities"] or "",
        received_at=row["first_received_at"],
        triage=row["triage"],
        triage_reason=row["triage_reason"],
        images=sum(counts.values()),
        states=counts,
        reasons={state: reason for state, (_, reason) in states.items() if reason},
        reported=bool(row["reported"]),
    )


def version(conn: sqlite3.Connection) -> str:
    """A short marker that changes whenever the worklist may have: an image arrived (a new
    job), a job was started, finished, retried or given up (the queued and running jobs change
    in number, ids or attempts; every analysis is saved with the end of its job), or an
    impression was recorded (it may report a study). Pollers compare it before asking for
    rows.

    Only index lookups: the newest ids, and the queued and running jobs (jobs_by_state), so
    its cost does not grow with the store's history.
    """
    row = conn.execute(_VERSION).fetchone()
    text = "|".join(str(value) for value in tuple(row))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_VERSION = """
SELECT (SELECT MAX(id) FROM jobs), (SELECT MAX(id) FROM instances), (SELECT MAX(id) FROM studies),
       (SELECT MAX(id) FROM impressions),
       (SELECT COUNT(*) || ':' || TOTAL(id) || ':' || TOTAL(attempts) FROM jobs
        WHERE state = 'queued'),
       (SELECT COUNT(*) || ':' || TOTAL(id) || ':' || TOTAL(attempts) FROM jobs
        WHERE state = 'running')
"""


# --- one study, for the viewer ------------------------------------------------------------------


@dataclass(frozen=True)
class StudyHeader:
    study_id: int
    study_uid: str
    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    accession_number: str
    study_date: str
    description: str
    received_at: str
    triage: str
    triage_reason: str


@dataclass(frozen=True)
class ImageRow:
    """A present image of a study with its current analysis (state 'received' or
    'analysing' while its newest analysis job is unfinished)."""

    instance_id: int
    modality: str
    body_part: str
    view_position: str
    series_number: int | None
    instance_number: int | None
    rows: int | None
    columns: int | None
    frames: int
    photometric: str
    sha256: str
    state: str
    reason: str
    priority: str | None
    priority_rank: int
    summary: str


@dataclass(frozen=True)
class FindingRow:
    """What one model found in one image (`result` is the worker's JSON, never changed)."""

    finding_id: int
    instance_id: int
    model: str
    version: str
    state: str
    reason: str
    priority: str
    summary: str
    key_frame: int
    result: dict[str, Any]


@dataclass(frozen=True)
class ArtifactRow:
    artifact_id: int
    finding_id: int
    kind: str
    label: str
    frame: int
    width: int
    height: int
    detail: dict[str, Any]


@dataclass(frozen=True)
class ArtifactFile:
    """Where an artifact's picture is, and which study it belongs to (for access checks)."""

    artifact_id: int
    study_id: int
    file_name: str
    media_type: str


def study_header(conn: sqlite3.Connection, study_id: int) -> StudyHeader | None:
    """The study and its patient, or None for an id that is not a study."""
    row = conn.execute(
        "SELECT st.id, st.study_uid, p.patient_id, p.patient_name, p.birth_date, p.sex,"
        " st.accession_number, st.study_date, st.description, st.first_received_at,"
        " st.triage, st.triage_reason"
        " FROM studies st JOIN patients p ON p.id = st.patient_ref WHERE st.id = ?",
        (study_id,),
    ).fetchone()
    return None if row is None else StudyHeader(*tuple(row))


_IMAGES = f"""
SELECT i.id, se.modality, se.body_part, i.view_position, se.series_number, i.instance_number,
       i.rows, i.columns, i.frames, i.photometric, i.sha256, {_IMAGE_STATE} AS state,
       COALESCE(a.reason, j.error, '') AS reason, a.priority,
       COALESCE(a.priority_rank, {PENDING_RANK}) AS priority_rank, COALESCE(a.summary, '')
{_IMAGES_OF_STUDY} AND se.study_ref = ?
ORDER BY se.series_number IS NULL, se.series_number, se.id,
         i.instance_number IS NULL, i.instance_number, i.id
"""


def study_images(conn: sqlite3.Connection, study_id: int) -> list[ImageRow]:
    """The study's present images in series and instance order."""
    return [ImageRow(*tuple(row)) for row in conn.execute(_IMAGES, (study_id,))]


def current_findings(conn: sqlite3.Connection, instance_ids: Sequence[int]) -> list[FindingRow]:
    """Findings of the images' current analyses (older jobs' findings are kept, not shown)."""
    rows = conn.execute(
        "SELECT f.id, f.instance_ref, f.model, f.version, f.state, f.reason, f.priority,"
        " f.summary, f.key_frame, f.result FROM findings f"
        " JOIN analyses a ON a.instance_ref = f.instance_ref AND a.job_ref = f.job_ref"
        " WHERE f.instance_ref IN (SELECT value FROM json_each(?)) ORDER BY f.id",
        (json.dumps(list(instance_ids)),),
    ).fetchall()
    return [_finding(row) for row in rows]


def artifacts_of(conn: sqlite3.Connection, finding_ids: Sequence[int]) -> list[ArtifactRow]:
    """The pictures the worker drew for these findings (none until its pictures job ran)."""
    rows = conn.execute(
        "SELECT id, finding_ref, kind, label, frame, width, height, detail FROM artifacts"
        " WHERE finding_ref IN (SELECT value FROM json_each(?)) ORDER BY id",
        (json.dumps(list(finding_ids)),),
    ).fetchall()
    return [_artifact(row) for row in rows]


def _finding(row: sqlite3.Row) -> FindingRow:
    return FindingRow(
        finding_id=row["id"],
        instance_id=row["instance_ref"],
        model=row["model"],
        version=row["version"],
        state=row["state"],
        reason=row["reason"],
        priority=row["priority"],
        summary=row["summary"],
        key_frame=row["key_frame"],
        result=json.loads(row["result"]),
    )


def _artifact(row: sqlite3.Row) -> ArtifactRow:
    return ArtifactRow(
        artifact_id=row["id"],
        finding_id=row["finding_ref"],
        kind=row["kind"],
        label=row["label"],
        frame=row["frame"],
        width=row["width"],
        height=row["height"],
        detail=json.loads(row["detail"]),
    )


def artifact_file(conn: sqlite3.Connection, artifact_id: int) -> ArtifactFile | None:
    """A picture's stored name with its study, so the caller can check who may see it."""
    row = conn.execute(
        "SELECT ar.id, se.study_ref, ar.file_name, ar.media_type FROM artifacts ar"
        " JOIN findings f ON f.id = ar.finding_ref JOIN instances i ON i.id = f.instance_ref"
        " JOIN series se ON se.id = i.series_ref WHERE ar.id = ?",
        (artifact_id,),
    ).fetchone()
    return None if row is None else ArtifactFile(*tuple(row))


def finding_in_study(conn: sqlite3.Connection, study_id: int, finding_id: int) -> FindingRow | None:
    """A finding of one of the study's images, or None (also for another study's finding)."""
    row = conn.execute(
        "SELECT f.id, f.instance_ref, f.model, f.version, f.state, f.reason, f.priority,"
        " f.summary, f.key_frame, f.result FROM findings f"
        " JOIN instances i ON i.id = f.instance_ref JOIN series se ON se.id = i.series_ref"
        " WHERE f.id = ? AND se.study_ref = ?",
        (finding_id, study_id),
    ).fetchone()
    return None if row is None else _finding(row)


def accession_numbers(conn: sqlite3.Connection, study_ids: Sequence[int]) -> dict[int, str]:
    """Study id -> its accession number (the locked wall view may show it instead of a name)."""
    if not study_ids:
        return {}
    rows = conn.execute(
        "SELECT id, accession_number FROM studies WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps(list(study_ids)),),
    )
    return {int(row[0]): str(row[1] or "") for row in rows}
