"""Hostile or odd requests to the UI get a clear 4xx, never a 500, an off-site redirect, a
session that outlives its sign-out, or a way to learn which user names exist."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

from appliance.store import users

from conftest import add_user, csrf_of, sign_in


def post_sign_in(client: FlaskClient, username: str, pin: str, query: str = "") -> int | str:
    response = client.post(
        f"/signin{query}", data={"username": username, "pin": pin, "csrf_token": csrf_of(client)}
    )
    return response.headers.get("Location") or response.status_code


@pytest.mark.parametrize(
    "target",
    ["/%09/evil.example/x", "/%0a/evil.example", "/%0d%0a/x", "/ /evil.example", "/caf%C3%A9"],
)
def test_sign_in_never_redirects_through_control_characters(
    app: Flask, client: FlaskClient, target: str
) -> None:
    add_user(app, "admin", "admin")
    assert post_sign_in(client, "admin", "2468", f"?next={target}") == "/"


def test_sign_in_returns_to_a_page_but_not_to_a_form_address(
    app: Flask, client: FlaskClient
) -> None:
    add_user(app, "admin", "admin")
    assert post_sign_in(client, "admin", "2468", "?next=/admin/audit?page=2") == (
        "/admin/audit?page=2"
    )
    client.post("/signout", data={"csrf_token": csrf_of(client, "/")})
    # An impression posted after a time-out: signing in must not GET a POST-only address.
    assert post_sign_in(client, "admin", "2468", "?next=/study/1/impression") == "/"


@pytest.mark.parametrize("where", ["form", "header"])
def test_a_non_ascii_csrf_token_is_refused_not_a_server_error(
    app: Flask, client: FlaskClient, where: str
) -> None:
    add_user(app, "admin", "admin")
    csrf_of(client)  # the session now has a token
    if where == "form":
        response = client.post("/signin", data={"username": "admin", "csrf_token": "é"})
    else:
        response = client.post("/signin", data={"username": "admin"}, headers={"X-CSRF-Token": "é"})
    assert response.status_code == 400


def test_numbers_past_sqlites_integers_are_404_or_ignored(app: Flask, client: FlaskClient) -> None:
    add_user(app, "admin", "admin")
    sign_in(client, "admin")
    huge = "9" * 25
    token = csrf_of(client, "/")
    assert client.get(f"/study/{huge}").status_code == 404
    assert client.post(f"/admin/users/{huge}/active", data={"csrf_token": token}).status_code == 404
    assert client.get(f"/admin/audit?page={huge}").status_code == 200
    assert client.get("/admin/audit?page=1000000000000000000").status_code == 200
    assert client.get(f"/admin/audit?page={'9' * 5000}").status_code == 200  # int() refuses
    for day in ("to=9999-12-31", "from=0001-01-01"):
        assert client.get(f"/admin/audit?{day}").status_code == 200, day
        assert client.get(f"/admin/audit.csv?{day}").status_code == 200, day


def test_a_signed_out_session_cookie_is_worthless(app: Flask, client: FlaskClient) -> None:
    add_user(app, "admin", "admin")
    add_user(app, "doc", "clinician")
    sign_in(client, "doc")
    cookie = client.get_cookie("appliance_session")
    assert cookie is not None
    assert client.get("/").status_code == 200
    client.post("/signout", data={"csrf_token": csrf_of(client, "/")})
    client.set_cookie("appliance_session", cookie.value)  # replayed, as a thief would
    response = client.get("/")
    assert response.status_code == 302 and response.headers["Location"].startswith("/signin")


def test_a_timed_out_session_says_so_on_the_sign_in_page(app: Flask, client: FlaskClient) -> None:
    add_user(app, "admin", "admin")
    add_user(app, "doc", "clinician")
    sign_in(client, "doc")
    with client.session_transaction() as session:
        session["seen"] = 0.0
    assert client.get("/api/worklist", headers={"X-Poll": "1"}).status_code == 401
    page = client.get("/", follow_redirects=True).get_data(as_text=True)
    assert re.search(r"signed out after .* without use", page), page


def test_unknown_names_lock_out_like_real_ones(app: Flask, client: FlaskClient) -> None:
    add_user(app, "admin", "admin")
    add_user(app, "real", "technologist")
    attempts = app.extensions["appliance.settings"].ui.lockout_attempts
    answers = {  # the last tries in capitals: names match without regard to case
        name: [post_sign_in(client, name, "0000") for _ in range(attempts - 1)]
        + [post_sign_in(client, name.upper(), "0000") for _ in range(2)]
        for name in ("real", "ghost")
    }
    assert answers["real"] == answers["ghost"]
    assert answers["ghost"][-2:] == [429, 429]


@pytest.mark.parametrize(("username", "pin"), [("boss\n", "1234"), ("boss", "1234\n")])
def test_a_final_newline_does_not_pass_for_a_user_name_or_pin(username: str, pin: str) -> None:
    with pytest.raises(users.UserError):
        users.check_username(username)
        users.check_pin(pin)
