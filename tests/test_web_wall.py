"""The locked wall view's data: only the configured fields, only for a screen someone signed
in on (the wall cookie), on a real store whose findings the real worker made (the worklist
tests' seeded store: one urgent chest among six studies)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from itsdangerous import URLSafeTimedSerializer

from appliance.store import feedback, users
from appliance.web.security import WALL_COOKIE, WALL_HOURS
from appliance.web.wall import full_name, initials

from conftest import csrf_of
from test_web_worklist import PATIENTS, Seeded, Template, make_template, open_seeded


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return make_template(tmp_path_factory.mktemp("seeded"))


def seeded_with(template: Template, tmp_path: Path, **wall: Any) -> Seeded:
    return open_seeded(template, tmp_path, ui={"wall": {"refresh_s": 2, **wall}})


@pytest.fixture
def seeded(template: Template, tmp_path: Path) -> Iterator[Seeded]:
    opened = seeded_with(template, tmp_path)
    yield opened
    opened.store.close()


def lock(seeded: Seeded) -> None:
    """Sign in, then let the session time out: the screen keeps its wall cookie."""
    seeded.sign_in("technologist")
    with seeded.client.session_transaction() as session:
        session["seen"] = 0.0


def user_id(seeded: Seeded, username: str) -> int:
    found = [u.id for u in users.list_users(seeded.store.conn) if u.username == username]
    assert found, username
    return found[0]


def wall_data(seeded: Seeded) -> dict[str, Any]:
    response = seeded.client.get("/api/wall")
    assert response.status_code == 200, response.status_code
    data: dict[str, Any] = response.get_json()
    return data


def test_the_default_fields_and_nothing_else(seeded: Seeded) -> None:
    lock(seeded)
    assert seeded.client.get("/").status_code == 302  # the session did time out
    data = wall_data(seeded)

    fields = ["priority", "time", "modality", "initials", "state"]
    assert data["fields"] == fields
    assert {key for row in data["rows"] for key in row} == {*fields, "level"}
    assert data["rows"][0]["level"] == "urgent" and data["rows"][0]["initials"] == "J.D."
    assert data["urgent"] == 1 and data["urgent_mark"]
    assert len(data["rows"]) == len(PATIENTS)
    text = json.dumps(data)
    for patient_id, name in PATIENTS.values():  # no ID, no name, no part of one
        assert patient_id not in text
        assert name.split("^")[0] not in text
    assert "/study/" not in text and "study_id" not in text


def test_configured_fields_only_and_names_only_when_asked(
    template: Template, tmp_path: Path
) -> None:
    seeded = seeded_with(template, tmp_path, fields=["accession", "state"])
    try:
        lock(seeded)
        data = wall_data(seeded)
        assert {key for row in data["rows"] for key in row} == {"accession", "state"}
        assert "urgent" not in {row["state"] for row in data["rows"]}
        assert data["urgent"] == 1  # the banner still shows that one is waiting
    finally:
        seeded.store.close()
    named = seeded_with(template, tmp_path / "named", fields=["priority", "name"])
    try:
        lock(named)
        rows = wall_data(named)["rows"]
        assert rows[0] == {"priority": "Urgent", "name": "DOE, JANE", "level": "urgent"}
    finally:
        named.store.close()


def test_reported_studies_leave_the_wall(seeded: Seeded) -> None:
    lock(seeded)
    before = wall_data(seeded)
    urgent = seeded.studies["effusion"]
    clinician = user_id(seeded, "doc1")
    feedback.add_impression(seeded.store.conn, urgent, "Effusion, reported.", True, clinician, "t")
    after = wall_data(seeded)
    assert len(after["rows"]) == len(before["rows"]) - 1
    assert after["urgent"] == 0 and after["urgent_mark"] == ""
    assert seeded.client.get(f"/api/wall?v={after['version']}").status_code == 304


def test_only_a_screen_someone_signed_in_on_may_read_it(seeded: Seeded) -> None:
    client = seeded.client
    assert client.get("/api/wall").status_code == 401
    page = client.get("/wall?back=/")
    assert page.status_code == 302 and page.headers["Location"].startswith("/signin")

    forged = URLSafeTimedSerializer("not the box's key", salt="appliance.wall")
    tech = user_id(seeded, "tech1")
    client.set_cookie(WALL_COOKIE, forged.dumps({"u": tech}))
    assert client.get("/api/wall").status_code == 401
    client.set_cookie(WALL_COOKIE, "garbage")
    assert client.get("/api/wall").status_code == 401

    lock(seeded)
    cookie = client.get_cookie(WALL_COOKIE)
    assert cookie is not None and cookie.http_only and cookie.same_site == "Strict"
    session_cookie = client.get_cookie("appliance_session")  # timed out, not yet cleared
    assert session_cookie is not None
    assert client.get("/api/wall").status_code == 200
    other = seeded.app.test_client()  # another screen, even with the same session cookie
    other.set_cookie("appliance_session", session_cookie.value)
    assert other.get("/api/wall").status_code == 401
    other.set_cookie(WALL_COOKIE, cookie.value)  # a copied cookie is the screen's own
    assert other.get("/api/wall").status_code == 200

    users.set_active(seeded.store.conn, tech, False, "test")  # a disabled user: no wall
    assert client.get("/api/wall").status_code == 401


def test_the_wall_cookie_lasts_hours_not_forever(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock(seeded)
    cookie = seeded.client.get_cookie(WALL_COOKIE)
    assert cookie is not None
    later = time.time() + WALL_HOURS * 3600 + 60
    monkeypatch.setattr(time, "time", lambda: later)  # what itsdangerous reads the age with
    assert seeded.client.get("/api/wall").status_code == 401


def test_signing_out_on_purpose_ends_the_wall(seeded: Seeded) -> None:
    seeded.sign_in("technologist")
    assert seeded.client.get("/api/wall").status_code == 200
    seeded.client.post("/signout", data={"csrf_token": csrf_of(seeded.client, "/")})
    assert seeded.client.get_cookie(WALL_COOKIE) is None
    assert seeded.client.get("/api/wall").status_code == 401
    assert seeded.client.get("/").headers["Location"].startswith("/signin")


def test_signing_out_after_a_time_out_also_ends_the_wall(seeded: Seeded) -> None:
    lock(seeded)
    token = csrf_of(seeded.client, "/signin")
    response = seeded.client.post("/signout", data={"csrf_token": token})
    assert response.headers["Location"].startswith("/signin")
    assert seeded.client.get_cookie(WALL_COOKIE) is None
    assert seeded.client.get("/api/wall").status_code == 401


def test_a_timed_out_screen_shows_the_wall_and_a_touch_asks_for_the_pin(seeded: Seeded) -> None:
    lock(seeded)
    client = seeded.client
    first = client.get("/?state=findings")
    assert first.headers["Location"] == "/signin?next=/?state%3Dfindings"
    wall = client.get(first.headers["Location"])
    assert wall.headers["Location"] == "/wall?back=/?state%3Dfindings"
    page = client.get(wall.headers["Location"]).get_data(as_text=True)
    assert 'id="wall"' in page and "/study/" not in page
    assert 'href="/signin?next=/?state%3Dfindings"' in page
    form = client.get("/signin?next=/?state%3Dfindings").get_data(as_text=True)
    assert 'name="username" id="username" value="tech1"' in form  # the last user chosen
    response = client.post(
        "/signin?next=/?state%3Dfindings",
        data={"username": "tech1", "pin": "2468", "csrf_token": csrf_of(client)},
    )
    assert response.headers["Location"] == "/?state=findings"


def test_opening_the_wall_locks_a_live_session(seeded: Seeded) -> None:
    seeded.sign_in("technologist")
    assert seeded.client.get("/wall?back=/admin/audit").status_code == 200
    assert seeded.client.get("/").status_code == 302
    assert seeded.client.get("/api/wall").status_code == 200


def test_initials_and_names() -> None:
    assert initials("DOE^JANE") == "J.D."
    assert initials("NGUYEN^LAN^THI^DR") == "L.T.N."
    assert initials("O'BRIEN^MAEVE") == "M.O."
    assert initials("SMITH-JONES^ANNA-MARIA") == "A.M.S.J."
    assert initials("") == ""
    assert full_name("DOE^JANE^ANN") == "DOE, JANE ANN"
    assert full_name("Yamada^Tarou=山田^太郎") == "Yamada, Tarou"
