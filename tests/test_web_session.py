"""Where signing in goes back to: only pages of this site; after a save the session ended
before, the form's own page, saying that nothing was saved and keeping the draft."""

from __future__ import annotations

import time

import pytest
from flask import Flask
from flask.testing import FlaskClient

from appliance.store import feedback, users
from appliance.web.security import local_page, safe_next

from conftest import add_user, csrf_of, sign_in


@pytest.mark.parametrize(
    ("target", "goes_to"),
    [
        ("/study/7?image=3", "/study/7?image=3"),
        ("/admin/audit?page=2&q=a", "/admin/audit?page=2&q=a"),
        ("/", "/"),
        ("//evil.example/x", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("/\t/evil.example", "/"),
        ("/ /evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("/study/7/impression", "/"),  # a form's address (POST only)
        ("/api/worklist", "/"),  # data, not a page
        ("/signin?next=/x", "/"),
        ("/wall?back=/", "/"),
        ("/no/such/page", "/"),
        ("", "/"),
    ],
)
def test_next_is_only_ever_a_local_page(app: Flask, target: str, goes_to: str) -> None:
    with app.test_request_context("/"):
        assert safe_next(target) == goes_to
        assert local_page(target) is (goes_to != "/" or target == "/")


def add_users(app: Flask) -> None:
    """An administrator (without one, sign-in leads to set-up) and a clinician."""
    add_user(app, "admin", "admin")
    add_user(app, "doc", "clinician")


def time_out(client: FlaskClient) -> None:
    with client.session_transaction() as session:
        session["seen"] = 0.0


def test_a_save_after_the_session_ended_goes_back_to_the_study(
    app: Flask, client: FlaskClient
) -> None:
    add_users(app)
    sign_in(client, "doc")
    token = csrf_of(client, "/")
    time_out(client)

    response = client.post(
        "/study/7/impression",
        data={
            "text": "Typed for ten minutes.",
            "csrf_token": token,
            "return_to": "/study/7?image=3",
        },
    )
    assert response.headers["Location"] == "/signin?next=/study/7?image%3D3"
    form = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Nothing was saved yet" in form and 'value="doc"' in form  # no wall: someone is here
    signed_in = client.post(
        "/signin?next=/study/7?image%3D3",
        data={"username": "doc", "pin": "2468", "csrf_token": csrf_of(client)},
    )
    assert signed_in.headers["Location"] == "/study/7?image=3"
    worklist = client.get("/").get_data(as_text=True)  # the next page says it (study 7 is 404)
    assert "Not saved yet" in worklist and 'data-drafts="keep"' in worklist
    assert "Not saved yet" not in client.get("/").get_data(as_text=True)  # said once
    conn = app.extensions["appliance.store"].conn
    assert feedback.impressions_for(conn, 7) == []


def test_without_its_page_a_form_goes_back_to_the_page_above_it(
    app: Flask, client: FlaskClient
) -> None:
    add_users(app)
    sign_in(client, "doc")
    token = csrf_of(client, "/")
    for sent in ({}, {"return_to": "//evil.example/"}, {"return_to": "/study/7/impression"}):
        time_out(client)
        response = client.post("/study/7/impression", data={"csrf_token": token, **sent})
        assert response.headers["Location"] == "/signin?next=/study/7", sent
        sign_in(client, "doc")
        token = csrf_of(client, "/")


def test_a_fetch_after_the_session_ended_is_401_and_the_form_says_unsaved(
    app: Flask, client: FlaskClient
) -> None:
    add_users(app)
    sign_in(client, "doc")
    token = csrf_of(client, "/")
    time_out(client)
    response = client.post(
        "/study/7/feedback",
        json={"finding_id": 1, "verdict": "agree"},
        headers={"X-CSRF-Token": token, "Accept": "application/json"},
    )
    assert response.status_code == 401
    assert "Nothing was saved yet" in client.get("/signin?next=/study/7").get_data(as_text=True)


def test_signing_out_after_the_session_ended_is_not_an_unsaved_form(
    app: Flask, client: FlaskClient
) -> None:
    add_users(app)
    sign_in(client, "doc")
    token = csrf_of(client, "/")
    time_out(client)
    response = client.post("/signout", data={"csrf_token": token})
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Nothing was saved yet" not in page


def test_use_of_the_screen_keeps_the_session_and_says_how_long_is_left(
    app: Flask, client: FlaskClient
) -> None:
    add_users(app)
    sign_in(client, "doc")
    with client.session_transaction() as session:
        session["seen"] = seen = time.time() - 60
    left = client.get("/api/session").get_json()["left_s"]
    assert left > app.extensions["appliance.settings"].ui.session_timeout_min * 60 - 5
    with client.session_transaction() as session:
        assert session["seen"] > seen
    time_out(client)
    assert client.get("/api/session").status_code == 401


def test_a_test_may_shorten_the_time_out_without_a_setting(app: Flask, client: FlaskClient) -> None:
    add_users(app)
    app.config["SESSION_TIMEOUT_S"] = 30
    sign_in(client, "doc")
    page = client.get("/").get_data(as_text=True)
    assert 'data-idle-ms="30000"' in page
    with client.session_transaction() as session:
        session["seen"] = time.time() - 31
    assert client.get("/").status_code == 302


def test_the_header_names_the_user_in_full_behind_initials(app: Flask, client: FlaskClient) -> None:
    add_user(app, "admin", "admin")
    store = app.extensions["appliance.store"]
    users.create_user(
        store.conn, "maria", "Maria-Fernanda Rodriguez Alvarez", "clinician", "2580", "t"
    )
    sign_in(client, "maria", "2580")
    page = client.get("/").get_data(as_text=True)
    assert '<summary class="button who"' in page and ">MA</summary>" in page
    assert '<span class="who-name">Maria-Fernanda Rodriguez Alvarez</span>' in page
