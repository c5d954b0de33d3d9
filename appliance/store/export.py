"""What an export of a study holds, for a USB stick when no network reaches the clinic's record.

A study's export is its received originals, exactly as the spool keeps them, and the newest
revision of each object the box made of them (the SR, the heatmap images, the PDF report). Only
present images count: a file the spool lost cannot be copied. The UI and `appliance export`
both ask here, so they export the same files.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from appliance.store import outbox
from appliance.store.refused import Refused
from appliance.store.results import ResultFiles
from appliance.store.spool import Spool


def study_files(
    conn: sqlite3.Connection, spool: Spool, outputs: ResultFiles, study_id: int
) -> list[Path]:
    """The originals' spool paths (in series and instance order), then the newest objects."""
    rows = conn.execute(
        "SELECT i.file_name FROM instances i JOIN series s ON s.id = i.series_ref"
        " WHERE s.study_ref = ? AND i.state = 'present'"
        " ORDER BY s.series_number, s.id, i.instance_number, i.id",
        (study_id,),
    ).fetchall()
    originals = [spool.path_of(row["file_name"]) for row in rows]
    made = [outputs.path_of(row["file_name"]) for row in outbox.study_outputs(conn, study_id)]
    return originals + made


def find_study(conn: sqlite3.Connection, key: str) -> int:
    """The study that `key` names: its Study Instance UID, its accession number or its id.

    Refused (key "no_study" or "ambiguous") when none or several studies answer to it; a
    number that is one study's id and another's accession number is ambiguous too.
    """
    key = key.strip()
    found: list[int] = []
    queries: list[tuple[str, object]] = [
        ("SELECT id FROM studies WHERE study_uid = ?", key),
        ("SELECT id FROM studies WHERE accession_number = ? AND accession_number != ''", key),
    ]
    if key.isascii() and key.isdigit() and len(key) < 19:  # within SQLite's integers
        queries.append(("SELECT id FROM studies WHERE id = ?", int(key)))
    for sql, value in queries:
        found += [int(row[0]) for row in conn.execute(sql, (value,)) if int(row[0]) not in found]
    if not found:
        raise Refused(
            f"no study has the UID, accession number or id {key!r}", "no_study", study=key
        )
    if len(found) > 1:
        raise Refused(
            f"{key!r} names {len(found)} studies (ids {', '.join(map(str, sorted(found)))}): "
            "give the Study Instance UID",
            "ambiguous",
            study=key,
        )
    return found[0]


def study_label(conn: sqlite3.Connection, study_id: int) -> str:
    """What names a study on its export: its accession number, else its id."""
    row = conn.execute("SELECT accession_number FROM studies WHERE id = ?", (study_id,)).fetchone()
    if row is None:
        raise Refused(f"no study {study_id}", "no_study", study=str(study_id))
    return str(row[0]).strip() or f"STUDY{study_id}"
