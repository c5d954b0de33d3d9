"""The worklist page and its update endpoint, on a real store whose findings the real worker
made with the demo models (and one broken test package, for a failed image).

The store is made once per module and copied for each test, so every test has its own.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from markupsafe import escape
from pydicom.dataset import Dataset

from appliance.config import Settings
from appliance.phantoms import chest_dataset, make_chest, make_ultrasound_clip, ultrasound_dataset
from appliance.store import Store, jobs, open_store, users
from appliance.store.worklist import WorklistQuery, escape_like, search_words, worklist
from appliance.web import create_app
from appliance.web.reasons import describe
from appliance.web.timefmt import when
from appliance.web.worklist import patient_name, start_of_today

from conftest import make_settings, sign_in
from runtime_models import classifier_onnx, write_package
from worker_fixtures import (
    DEMO_MODELS,
    broken_manifest,
    cr_of,
    drain,
    flattened,
    open_worker,
    put_dataset,
)

EFFUSION = {
    "pleural_effusion": True,
    "lung_nodule": False,
    "consolidation": False,
    "pneumothorax": False,
    "cardiomegaly": False,
}
NORMAL = dict.fromkeys(EFFUSION, False)
# name -> (patient ID, patient name); each case is its own study.
PATIENTS = {
    "effusion": ("EFF-001", "DOE^JANE"),
    "failed": ("PELV-004", "SMITH^JOHN"),
    "ultrasound": ("US-006", "NGUYEN^LAN"),
    "blank": ("BLNK-005", "O'BRIEN^MAEVE"),
    "normal": ("NORM-002", "ROE^RICHARD"),
    "hand": ("HAND-003", "MILLER^ANNA"),
}
# Triage order: urgent, then review in arrival order, then routine in arrival order.
EXPECTED_ORDER = ["effusion", "failed", "ultrasound", "blank", "normal", "hand"]
EXPECTED_STATE = {
    "effusion": "findings",
    "failed": "failed",
    "ultrasound": "findings",
    "blank": "held_back",
    "normal": "no_findings",  # analysed: nothing found above the thresholds
    "hand": "no_model",
}
# The State column's words (from the catalogue): one for each state, never the colour alone.
STATE_WORDS = {
    "findings": "Findings",
    "no_findings": "No findings",
    "held_back": "Held back",
    "no_model": "No AI for this image",
    "failed": "Analysis failed",
    "received": "Waiting",
    "analysing": "Analysing",
}
# Words for the record, not for the technologist's screen (the study page has them, under
# "Details").
TECHNICAL = ("correlation", "photometric", "threshold", "UID", "pixels", "SOP", "JSON", "sha256")
HOSTILE = "%' OR 1=1 --"
USERS = {"admin": "admin0", "technologist": "tech1", "clinician": "doc1"}  # PIN 2468


def chest(seed: int, findings: dict[str, bool], name: str, study_key: str = "") -> Dataset:
    patient_id, patient = PATIENTS[name]
    phantom = make_chest(seed, rows=256, findings=findings)
    key = study_key or name
    return chest_dataset(
        phantom, modality="DX", patient_id=patient_id, patient_name=patient, study_key=key
    )


def blank_chest() -> Dataset:
    """A chest whose pixels are almost flat: the plausibility check holds it back."""
    ds = chest(13, EFFUSION, "blank")
    return flattened(ds)


def other_body_part(body_part: str, name: str) -> Dataset:
    ds = cr_of(body_part)
    ds.PatientID, ds.PatientName = PATIENTS[name]
    return ds


def cases() -> dict[str, Dataset]:
    """One study per case, in arrival order (ties in priority keep this order)."""
    clip = make_ultrasound_clip(21, frames=4, fluid=True)
    patient_id, patient = PATIENTS["ultrasound"]
    return {
        "effusion": chest(11, EFFUSION, "effusion"),
        "normal": chest(12, NORMAL, "normal"),
        "hand": other_body_part("HAND", "hand"),
        "failed": other_body_part("PELVIS", "failed"),
        "ultrasound": ultrasound_dataset(clip, patient_id=patient_id, patient_name=patient),
        "blank": blank_chest(),
    }


def seed_settings(root: Path, models: Path, **sections: dict[str, Any]) -> Settings:
    """Pictures at once, one attempt for the broken model; data and cache under `root`."""
    base: dict[str, dict[str, Any]] = {
        "storage": {"cache_dir": str(root / "cache")},
        "jobs": {"pictures_quiet_s": 0, "max_attempts": 1, "retry_delay_s": 0},
        "models": {"dirs": [str(DEMO_MODELS), str(models)], "precision": "fp32"},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return make_settings(root, **base)


@dataclass(frozen=True)
class Template:
    root: Path
    models: Path
    instances: dict[str, int]


@dataclass
class Seeded:
    """A UI on its own copy of the seeded store, and the ids of what is in it."""

    app: Flask
    client: FlaskClient
    settings: Settings
    models: Path
    root: Path
    instances: dict[str, int]
    studies: dict[str, int]

    @property
    def store(self) -> Store:
        store: Store = self.app.extensions["appliance.store"]
        return store

    def sign_in(self, role: str = "clinician") -> str:
        """Sign the client in as the template's user of this role; return the user name."""
        name = USERS[role]
        sign_in(self.client, name)
        return name


def make_template(root: Path) -> Template:
    models = root / "models"
    write_package(models / "broken", broken_manifest("PELVIS"), classifier_onnx)
    settings = seed_settings(root, models)
    store = open_store(settings)
    for role, name in USERS.items():  # made once: each PIN hash takes a while, on purpose
        users.create_user(store.conn, name, name.title(), role, "2468", "test")
    worker = open_worker(store, settings)
    try:
        instances = {
            name: put_dataset(store, ds, root, f"{name}.dcm") for name, ds in cases().items()
        }
        drain(worker)
    finally:
        worker.close()  # closes the store too: the database file is complete on disk
    return Template(root, models, instances)


def open_seeded(template: Template, tmp_path: Path, **sections: dict[str, Any]) -> Seeded:
    shutil.copytree(template.root / "data", tmp_path / "data")
    settings = seed_settings(tmp_path, template.models, **sections)
    app = create_app(settings, TESTING=True)
    conn = app.extensions["appliance.store"].conn
    studies = {
        name: int(
            conn.execute(
                "SELECT se.study_ref FROM instances i JOIN series se ON se.id = i.series_ref"
                " WHERE i.id = ?",
                (instance,),
            ).fetchone()[0]
        )
        for name, instance in template.instances.items()
    }
    return Seeded(
        app, app.test_client(), settings, template.models, tmp_path, template.instances, studies
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return make_template(tmp_path_factory.mktemp("seeded"))


@pytest.fixture
def seeded(template: Template, tmp_path: Path) -> Iterator[Seeded]:
    opened = open_seeded(template, tmp_path)
    yield opened
    opened.store.close()


def rows_of(html: str) -> list[dict[str, str]]:
    """The worklist rows as a browser test sees them: study id, state, link, top finding."""
    found = []
    pattern = (
        r'<tr class="study-row[^"]*" data-study-id="(\d+)"\s+data-state="([a-z_]+)"'
        r'.*?<a class="open-study" href="([^"]+)".*?<td class="top-finding">(.*?)</td>'
    )
    for match in re.finditer(pattern, html, re.S):
        study, state, link, top = match.groups()
        top = re.sub(r"<[^>]+>", "", top).strip()  # the text, as innerText would give it
        found.append({"study": study, "state": state, "link": link, "top": top})
    return found


def names_in_order(seeded: Seeded, html: str) -> list[str]:
    by_id = {str(study): name for name, study in seeded.studies.items()}
    return [by_id[row["study"]] for row in rows_of(html)]


def page(seeded: Seeded, path: str = "/") -> str:
    response = seeded.client.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_data(as_text=True)


# --- access ----------------------------------------------------------------------------------


def test_signed_out_the_worklist_redirects_and_the_api_says_401(seeded: Seeded) -> None:
    response = seeded.client.get("/")
    assert response.status_code == 302 and "/signin" in response.headers["Location"]
    assert seeded.client.get("/api/worklist").status_code == 401
    assert seeded.client.get("/api/worklist", headers={"Accept": "application/json"}).json == {
        "error": 401
    }


# --- the page --------------------------------------------------------------------------------


def test_studies_are_listed_by_triage_then_arrival_with_state_and_top_finding(
    seeded: Seeded,
) -> None:
    seeded.sign_in("technologist")
    html = page(seeded)
    assert '<table id="worklist"' in html
    rows = rows_of(html)
    assert names_in_order(seeded, html) == EXPECTED_ORDER
    for row, name in zip(rows, EXPECTED_ORDER, strict=True):
        assert row["state"] == EXPECTED_STATE[name]
        assert row["link"] == f"/study/{seeded.studies[name]}"
    assert rows[0]["top"] == "Pleural effusion"  # its score and threshold: on the study page
    assert "mm²" in rows[2]["top"]  # the ultrasound's fluid area
    assert rows[4]["top"] == ""  # nothing found: the State column says so


def row_html(seeded: Seeded, html: str, name: str) -> str:
    row = html[html.index(f'data-study-id="{seeded.studies[name]}"') :]
    return row[: row.index("</tr>")]


def test_each_state_has_its_own_plain_words(seeded: Seeded) -> None:
    seeded.sign_in("technologist")
    html = page(seeded)
    for name, state in EXPECTED_STATE.items():
        row = row_html(seeded, html, name)
        label = re.search(r'<span class="state-label state-([a-z_]+)">([^<]+)</span>', row)
        assert label is not None, row
        assert (label.group(1), label.group(2)) == (state, STATE_WORDS[state])
    assert len(set(STATE_WORDS.values())) == len(STATE_WORDS)


def test_held_back_failed_and_no_model_rows_say_why_in_plain_words(seeded: Seeded) -> None:
    seeded.sign_in("technologist")
    html = page(seeded)
    conn = seeded.store.conn
    with seeded.app.test_request_context():
        for name in ("blank", "failed", "hand"):
            stored, state = conn.execute(
                "SELECT reason, state FROM analyses WHERE instance_ref = ?",
                (seeded.instances[name],),
            ).fetchone()
            plain = describe(stored, state).plain
            row = row_html(seeded, html, name)
            assert plain and str(escape(plain)) in row, (name, row)
            assert str(escape(stored)) not in row  # the stored text is for the study page
    assert "test-broken" not in row_html(seeded, html, "failed")  # the model's name


def test_the_technologists_worklist_has_no_technical_words(seeded: Seeded) -> None:
    seeded.sign_in("technologist")
    text = re.sub(r"<[^>]+>", " ", page(seeded).split("<main>", 1)[1])
    found = [word for word in TECHNICAL if re.search(rf"\b{word}\b", text, re.I)]
    assert found == [], text


def test_a_study_waiting_for_analysis_and_one_being_analysed_say_so(seeded: Seeded) -> None:
    seeded.sign_in("technologist")
    worker_store = open_store(seeded.settings)  # as the receiver would, in its own process
    try:
        for number, key in enumerate(("waiting", "analysing")):
            ds = chest(30 + number, EFFUSION, "effusion", study_key=key)
            ds.PatientID, ds.PatientName = f"NEW-{key}", f"NEW^{key.upper()}"
            put_dataset(worker_store, ds, seeded.root, f"{key}.dcm")
        job = jobs.claim(worker_store.conn, "test:1:0", lease_s=600)
        assert job is not None
    finally:
        worker_store.close()
    html = page(seeded)
    states = {row["study"]: row["state"] for row in rows_of(html)}
    assert sorted(states.values()).count("received") == 1
    assert sorted(states.values()).count("analysing") == 1
    for state in ("received", "analysing"):
        [study] = [study for study, shown in states.items() if shown == state]
        row = html[html.index(f'data-study-id="{study}"') :]
        assert f'<span class="state-label state-{state}">{STATE_WORDS[state]}</span>' in row


def test_times_are_in_the_sites_one_format_with_the_utc_time_for_scripts(
    seeded: Seeded,
) -> None:
    seeded.sign_in("technologist")
    html = page(seeded)
    times = re.findall(r'<time datetime="([^"]+)" data-when>([^<]+)</time>', html)
    assert len(times) == len(EXPECTED_ORDER)
    with seeded.app.app_context():
        for iso, text in times:
            assert datetime.fromisoformat(iso).utcoffset() == timedelta(0)
            assert text == when(iso)


def test_the_page_has_no_inline_script_or_style_and_loads_its_own_assets(seeded: Seeded) -> None:
    seeded.sign_in("technologist")
    html = page(seeded)
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert " style=" not in html and "<style" not in html
    for asset in ("worklist.js", "worklist.css"):
        assert f"/static/{asset}" in html
        assert seeded.client.get(f"/static/{asset}").status_code == 200


def test_patient_names_read_as_names() -> None:
    assert patient_name("DOE^JANE") == "DOE, JANE"
    assert patient_name("DOE^JANE^MARIE^^") == "DOE, JANE MARIE"
    assert patient_name("ANONYMOUS") == "ANONYMOUS"
    assert patient_name("") == ""


# --- filters and search ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("priority=urgent", ["effusion"]),
        ("priority=review", ["failed", "ultrasound", "blank"]),
        ("priority=routine", ["normal", "hand"]),
        ("priority=pending", []),
        ("state=held_back", ["blank"]),
        ("state=failed", ["failed"]),
        ("state=no_model", ["hand"]),
        ("state=findings", ["effusion", "ultrasound", "normal"]),
        ("state=findings&priority=review", ["ultrasound"]),
        ("state=bogus&priority=bogus", EXPECTED_ORDER),  # unknown filters are ignored
    ],
)
def test_filters_by_priority_and_state(seeded: Seeded, query: str, expected: list[str]) -> None:
    seeded.sign_in("technologist")
    assert names_in_order(seeded, page(seeded, f"/?{query}")) == expected


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ("doe", ["effusion"]),
        ("Jane Doe", ["effusion"]),  # every word, in any order, case-insensitive
        ("DOE^JANE", ["effusion"]),
        ("DOE, JANE", ["effusion"]),  # as the worklist shows the name
        ("EFF-001", ["effusion"]),
        ("-00", ["effusion", "failed", "ultrasound", "blank", "normal", "hand"]),
        ("o'brien", ["blank"]),
        ("nobody", []),
        (HOSTILE, []),
        ("%", []),  # a literal percent sign, not a wildcard
        ("_", []),
        ("\\", []),
        ('"; DROP TABLE studies; --', []),
    ],
)
def test_search_by_patient_name_or_id(seeded: Seeded, search: str, expected: list[str]) -> None:
    seeded.sign_in("technologist")
    response = seeded.client.get("/", query_string={"q": search})
    assert response.status_code == 200
    assert names_in_order(seeded, response.get_data(as_text=True)) == expected
    count = seeded.store.conn.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
    assert count == len(EXPECTED_ORDER)  # and nothing was harmed


def test_search_ignores_case_beyond_ascii(seeded: Seeded) -> None:
    seeded.store.conn.execute(
        "UPDATE patients SET patient_name = 'MÜLLER^JÜRGEN' WHERE id ="
        " (SELECT patient_ref FROM studies WHERE id = ?)",
        (seeded.studies["effusion"],),
    )
    seeded.sign_in("technologist")
    for search in ("müller", "MÜLLER", "jürgen müller", "Müller, Jürgen"):
        response = seeded.client.get("/", query_string={"q": search})
        assert names_in_order(seeded, response.get_data(as_text=True)) == ["effusion"], search


def test_the_search_text_is_shown_back_escaped(seeded: Seeded) -> None:
    seeded.sign_in("technologist")
    html = page(seeded, "/?q=%3Cscript%3Ealert(1)%3C/script%3E")
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_today_is_the_browsers_day(seeded: Seeded) -> None:
    seeded.sign_in("technologist")
    conn = seeded.store.conn
    old = (datetime.now(timezone.utc) - timedelta(days=3)).isoformat(timespec="microseconds")
    conn.execute(
        "UPDATE studies SET first_received_at = ? WHERE id = ?", (old, seeded.studies["normal"])
    )
    today = [name for name in EXPECTED_ORDER if name != "normal"]
    assert names_in_order(seeded, page(seeded, "/?day=today&tzo=0")) == today
    assert names_in_order(seeded, page(seeded, "/?day=today")) == today  # the box's own zone
    assert names_in_order(seeded, page(seeded, "/")) == EXPECTED_ORDER


def test_start_of_today_follows_the_browsers_offset() -> None:
    now = datetime(2026, 3, 1, 2, 30, tzinfo=timezone.utc)
    assert start_of_today(0, now) == "2026-03-01T00:00:00.000000+00:00"
    # UTC-5 (getTimezoneOffset 300): it is still 28 February there.
    assert start_of_today(300, now) == "2026-02-28T05:00:00.000000+00:00"
    # UTC+9 (getTimezoneOffset -540): 1 March began at 15:00 UTC the day before.
    assert start_of_today(-540, now) == "2026-02-28T15:00:00.000000+00:00"


def test_search_words_are_few_and_like_patterns_are_literal() -> None:
    assert search_words("DOE^JANE  x y z w") == ["DOE", "JANE", "x", "y"]
    assert escape_like("50%_a\\b") == "50\\%\\_a\\\\b"


def test_the_store_query_pages_and_limits(seeded: Seeded) -> None:
    conn = seeded.store.conn
    assert len(worklist(conn, WorklistQuery(limit=2))) == 2
    assert len(worklist(conn, WorklistQuery(limit=0))) == 1  # at least one row per page
    [row] = worklist(conn, WorklistQuery(search="nguyen"))
    assert (row.state, row.states, row.images) == ("findings", {"findings": 1}, 1)


# --- updates without reload ------------------------------------------------------------------


def api(seeded: Seeded, **params: str) -> Any:
    return seeded.client.get("/api/worklist", query_string=params)


def test_the_api_gives_rows_then_304_while_nothing_changes(seeded: Seeded) -> None:
    seeded.sign_in("technologist")
    first = api(seeded)
    assert first.status_code == 200
    data = first.json
    assert data["count"] == len(EXPECTED_ORDER)
    assert [row["id"] for row in data["rows"]] == [seeded.studies[n] for n in EXPECTED_ORDER]
    assert [row["state"] for row in data["rows"]] == [EXPECTED_STATE[n] for n in EXPECTED_ORDER]
    assert rows_of(data["html"]) == rows_of(page(seeded))  # the same template as the page
    unchanged = api(seeded, v=data["version"])
    assert unchanged.status_code == 304 and unchanged.get_data() == b""
    html = page(seeded)
    assert f'data-version="{data["version"]}"' in html
    assert api(seeded, v="stale").status_code == 200


def test_the_api_applies_the_filters(seeded: Seeded) -> None:
    seeded.sign_in("technologist")
    data = api(seeded, state="held_back").json
    assert [row["id"] for row in data["rows"]] == [seeded.studies["blank"]]
    assert api(seeded, q=HOSTILE).json["rows"] == []


def test_the_api_reports_an_arriving_image_and_its_findings(seeded: Seeded) -> None:
    seeded.sign_in("technologist")
    version = api(seeded).json["version"]
    # The receiver and the worker are other processes: here, another store on the same files.
    worker_store = open_store(seeded.settings)
    worker = open_worker(worker_store, seeded.settings)
    try:
        ds = chest(21, EFFUSION, "effusion", study_key="new")
        ds.PatientID, ds.PatientName = "NEW-007", "NEW^PATIENT"
        put_dataset(worker_store, ds, seeded.root, "new.dcm")
        arrived = api(seeded, v=version)
        assert arrived.status_code == 200
        [new] = [row for row in arrived.json["rows"] if row["patient_id"] == "NEW-007"]
        assert (new["state"], new["triage"], new["top_finding"]) == ("received", "pending", "")
        assert api(seeded, v=arrived.json["version"]).status_code == 304
        assert drain(worker) == 3  # its analysis, its pictures, its outputs
    finally:
        worker.close()
    done = api(seeded, v=arrived.json["version"])
    assert done.status_code == 200
    [new] = [row for row in done.json["rows"] if row["patient_id"] == "NEW-007"]
    assert (new["state"], new["triage"]) == ("findings", "urgent")
    assert new["top_finding"].startswith("Pleural effusion")


def test_read_first_hides_the_top_finding_until_the_users_impression(
    template: Template, tmp_path: Path
) -> None:
    seeded = open_seeded(template, tmp_path, ui={"read_first": True})
    try:
        seeded.sign_in("clinician")
        rows = rows_of(page(seeded))
        assert [row["top"] for row in rows if row["top"].startswith("Pleural")] == []
        assert "Pleural effusion" not in api(seeded).get_data(as_text=True)
        study = seeded.studies["effusion"]
        token = csrf_of_page(page(seeded))
        response = seeded.client.post(
            f"/study/{study}/impression",
            data={"text": "Effusion on the right.", "csrf_token": token},
        )
        assert response.status_code == 302
        [first, *_] = rows_of(page(seeded))
        assert first["top"].startswith("Pleural effusion")
    finally:
        seeded.store.close()


def test_a_reported_study_moves_below_the_open_ones_and_back_when_reopened(
    seeded: Seeded,
) -> None:
    seeded.sign_in("clinician")
    html = page(seeded)
    version_found = re.search(r'data-version="([0-9a-f]+)"', html)
    assert version_found is not None, html
    version = version_found.group(1)
    study = seeded.studies["effusion"]
    form = {"text": "Effusion, right.", "final": "1", "csrf_token": csrf_of_page(html)}
    assert seeded.client.post(f"/study/{study}/impression", data=form).status_code == 302
    changed = api(seeded, v=version)
    assert changed.status_code == 200  # an impression is news to an open worklist
    assert [row["id"] for row in changed.json["rows"]][-1] == study
    assert changed.json["rows"][-1]["reported"] is True
    html = page(seeded)
    assert names_in_order(seeded, html) == [*EXPECTED_ORDER[1:], "effusion"]
    assert re.search(rf'<tr class="study-row[^"]* reported" data-study-id="{study}"', html)
    form = {**form, "text": "Reopened: compare with yesterday.", "final": ""}
    assert seeded.client.post(f"/study/{study}/impression", data=form).status_code == 302
    assert names_in_order(seeded, page(seeded)) == EXPECTED_ORDER  # the newest counts


def csrf_of_page(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert match is not None
    return match.group(1)


# --- nothing to show --------------------------------------------------------------


@pytest.mark.parametrize("query", ["q=nobody", "priority=pending", "state=failed&priority=urgent"])
def test_a_search_or_filter_without_match_says_so_and_offers_to_clear_it(
    seeded: Seeded, query: str
) -> None:
    seeded.sign_in("technologist")
    html = page(seeded, f"/?{query}")
    assert rows_of(html) == []
    assert "No studies match this search." in html and "No studies yet." not in html
    assert re.search(r'<a class="button clear-filters" href="/">', html)
    data = api(seeded, **dict(part.split("=") for part in query.split("&"))).json
    assert "No studies match this search." in data["html"]


def test_the_filters_toggle_counts_the_filters_set(seeded: Seeded) -> None:
    seeded.sign_in("technologist")

    def count(query: str) -> str:
        found = re.search(r'<span class="filters-count"[^>]*>(\d+)</span>', page(seeded, query))
        return found.group(1) if found else ""

    assert count("/") == ""
    assert count("/?q=doe") == ""  # the search is in sight: not behind the toggle
    assert count("/?state=failed") == "1"
    assert count("/?state=failed&priority=review&day=today") == "3"
