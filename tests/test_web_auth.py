"""The UI's front door: first-run set-up, PIN sign-in and lockout, sessions, CSRF, headers."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from appliance.store import audit, status, users
from appliance.web import create_app
from appliance.web.security import CSP

from conftest import add_user, csrf_of, make_settings, sign_in


def store_conn(app: Flask) -> sqlite3.Connection:
    conn: sqlite3.Connection = app.extensions["appliance.store"].conn
    return conn


def setup_form(code: str, **changes: str) -> dict[str, str]:
    form = {
        "code": code,
        "username": "admin",
        "display_name": "Ada Admin",
        "pin": "135790",
        "pin_again": "135790",
    }
    form.update(changes)
    return form


def test_a_fresh_appliance_sends_everyone_to_setup_and_has_no_accounts(
    app: Flask, client: FlaskClient
) -> None:
    assert users.list_users(store_conn(app)) == []
    assert client.get("/").headers["Location"].startswith("/signin")
    assert client.get("/signin").headers["Location"] == "/setup"
    assert client.get("/setup").status_code == 200


def test_setup_needs_the_printed_code_and_creates_the_first_admin_once(
    app: Flask, client: FlaskClient
) -> None:
    code = users.new_setup_code(store_conn(app))
    token = csrf_of(client, "/setup")
    wrong = "0" * 8 if code != "0" * 8 else "1" * 8
    refused = client.post("/setup", data={**setup_form(wrong), "csrf_token": token})
    assert refused.status_code == 400 and users.list_users(store_conn(app)) == []
    created = client.post("/setup", data={**setup_form(code), "csrf_token": token})
    assert created.status_code == 302 and created.headers["Location"] == "/"
    [admin] = users.list_users(store_conn(app))
    assert (admin.username, admin.role) == ("admin", "admin")
    assert client.get("/").status_code == 200  # signed in by the set-up
    assert client.get("/setup").status_code == 404  # gone once an admin exists
    token = csrf_of(client, "/")  # a new session and token came with the sign-in
    again = client.post("/setup", data={**setup_form(code, username="eve"), "csrf_token": token})
    assert again.status_code == 404


def test_setup_refuses_a_short_pin_or_two_different_pins(app: Flask, client: FlaskClient) -> None:
    code = users.new_setup_code(store_conn(app))
    token = csrf_of(client, "/setup")
    for changes in ({"pin": "12", "pin_again": "12"}, {"pin_again": "999999"}):
        response = client.post("/setup", data={**setup_form(code, **changes), "csrf_token": token})
        assert response.status_code == 400
    assert users.list_users(store_conn(app)) == []


def admin_and_tech(app: Flask, client: FlaskClient) -> str:
    """An administrator and technologist "tech" (PIN 1234); the sign-in page's CSRF token."""
    add_user(app, "admin", "admin")
    add_user(app, "tech", "technologist", pin="2580")
    return csrf_of(client)


def test_sign_in_with_the_right_pin_and_not_with_a_wrong_one(
    app: Flask, client: FlaskClient
) -> None:
    token = admin_and_tech(app, client)
    wrong = client.post("/signin", data={"username": "tech", "pin": "4321", "csrf_token": token})
    assert wrong.status_code == 401 and "not right" in wrong.get_data(as_text=True)
    unknown = client.post(
        "/signin", data={"username": "nobody", "pin": "2580", "csrf_token": token}
    )
    assert unknown.status_code == 401  # the same answer: no probing for user names
    sign_in(client, "tech", "2580")
    page = client.get("/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert '<span class="who-name">Tech</span> <span class="who-role">(technologist)</span>' in html
    actions = [row["action"] for row in audit.recent(store_conn(app))]
    assert actions.count("signin.failed") == 2 and "signin" in actions


def test_repeated_wrong_pins_lock_the_account_even_for_the_right_pin(
    app: Flask, client: FlaskClient
) -> None:
    token = admin_and_tech(app, client)
    attempts = app.extensions["appliance.settings"].ui.lockout_attempts
    for _ in range(attempts - 1):
        assert (
            client.post(
                "/signin", data={"username": "tech", "pin": "0000", "csrf_token": token}
            ).status_code
            == 401
        )
    locked = client.post("/signin", data={"username": "tech", "pin": "0000", "csrf_token": token})
    assert locked.status_code == 429 and "locked" in locked.get_data(as_text=True)
    right = client.post("/signin", data={"username": "tech", "pin": "2580", "csrf_token": token})
    assert right.status_code == 429
    conn = store_conn(app)
    assert [r["action"] for r in audit.recent(conn, "user.locked")] == ["user.locked"]
    conn.execute("UPDATE users SET locked_until = ? WHERE username = 'tech'", (time.time() - 1,))
    sign_in(client, "tech", "2580")  # the lock runs out


def test_state_changes_without_the_csrf_token_are_refused(app: Flask, client: FlaskClient) -> None:
    add_user(app, "admin", "admin")
    add_user(app, "tech", "technologist", pin="2580")
    no_token = client.post("/signin", data={"username": "tech", "pin": "2580"})
    assert no_token.status_code == 400 and "expired" in no_token.get_data(as_text=True)
    forged = client.post(
        "/signin", data={"username": "tech", "pin": "2580", "csrf_token": "forged"}
    )
    assert forged.status_code == 400
    sign_in(client, "tech", "2580")
    assert client.post("/signout").status_code == 400  # signing out needs the token too
    assert client.get("/").status_code == 200


def test_only_sign_in_setup_and_health_are_public(app: Flask, client: FlaskClient) -> None:
    add_user(app, "admin", "admin")
    public = {
        rule.endpoint
        for rule in app.url_map.iter_rules()
        if getattr(app.view_functions[rule.endpoint], "public", False)
    }
    assert public == {"auth.signin", "auth.setup", "health.health"}
    health = client.get("/health")  # public, and truthful: no receiver or worker has run here
    assert health.status_code == 503
    assert health.get_json() == {
        "status": "degraded",
        "problems": ["receiver has not started", "worker has not started"],
    }
    for role in ("receiver", "worker"):
        status.record_start(store_conn(app), role)
    assert (client.get("/health").status_code, client.get("/health").get_json()) == (
        200,
        {"status": "ok"},
    )
    urls = app.url_map.bind("localhost")
    for rule in app.url_map.iter_rules():
        if rule.endpoint in public | {"static"} or "GET" not in (rule.methods or ()):
            continue
        # A real address of the route (1 for every part), so that its own guard answers.
        path = urls.build(rule.endpoint, dict.fromkeys(rule.arguments, 1), method="GET")
        response = client.get(path)
        assert response.status_code in (302, 401), f"{path} ({rule.rule}) answered signed out"
        if response.status_code == 302:
            assert response.headers["Location"].startswith("/signin")


def test_an_idle_session_times_out(app: Flask, client: FlaskClient) -> None:
    add_user(app, "admin", "admin")
    sign_in(client, "admin")
    with client.session_transaction() as session:
        timeout = app.extensions["appliance.settings"].ui.session_timeout_min * 60
        session["seen"] = time.time() - timeout - 1
    response = client.get("/")
    assert response.status_code == 302 and response.headers["Location"].startswith("/signin")


def test_polling_by_itself_does_not_keep_a_session_alive(app: Flask, client: FlaskClient) -> None:
    add_user(app, "admin", "admin")
    sign_in(client, "admin")
    with client.session_transaction() as session:
        session["seen"] = seen = time.time() - 60
    assert client.get("/api/worklist", headers={"X-Poll": "1"}).status_code == 200
    with client.session_transaction() as session:
        assert session["seen"] == seen
    client.get("/")
    with client.session_transaction() as session:
        assert session["seen"] > seen


def test_sign_in_never_redirects_off_site(app: Flask, client: FlaskClient) -> None:
    add_user(app, "admin", "admin")
    token = csrf_of(client)
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        response = client.post(
            f"/signin?next={target}",
            data={"username": "admin", "pin": "2468", "csrf_token": token},
        )
        assert response.headers["Location"] == "/"
        client.post("/signout", data={"csrf_token": csrf_of(client, "/")})
        token = csrf_of(client)


def test_every_answer_carries_the_security_headers_and_a_strict_cookie(
    app: Flask, client: FlaskClient
) -> None:
    add_user(app, "admin", "admin")
    token = csrf_of(client)
    response = client.post(
        "/signin", data={"username": "admin", "pin": "2468", "csrf_token": token}
    )
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    for path in ("/", "/signin", "/health", "/no-such-page"):
        headers = client.get(path).headers
        assert headers["Content-Security-Policy"] == CSP
        assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"


def test_a_failure_shows_no_stack_trace(app: Flask, client: FlaskClient) -> None:
    def broken() -> str:
        raise RuntimeError("secret internals")

    app.add_url_rule("/broken", "broken", broken)
    add_user(app, "admin", "admin")
    sign_in(client, "admin")
    response = client.get("/broken")
    body = response.get_data(as_text=True)
    assert response.status_code == 500
    assert "secret internals" not in body and "Traceback" not in body


@pytest.mark.parametrize("pin", ["123", "123456789", "12a4", ""])
def test_bad_pins_are_refused_when_creating_users(app: Flask, pin: str) -> None:
    with pytest.raises(users.UserError):
        users.create_user(store_conn(app), "someone", "", "technologist", pin, "test")


def test_pins_are_stored_only_as_salted_hashes(app: Flask) -> None:
    add_user(app, "a1", "technologist", pin="2468")
    add_user(app, "a2", "technologist", pin="2468")
    hashes = [row[0] for row in store_conn(app).execute("SELECT pin_hash FROM users")]
    # scrypt$<salt hex>$<digest hex>: nothing but the derived key and its salt (a digit string
    # like the PIN may well occur inside random hex, so its absence proves nothing).
    fields = [h.split("$") for h in hashes]
    assert [f[0] for f in fields] == ["scrypt", "scrypt"] and all(len(f) == 3 for f in fields)
    assert all(len(bytes.fromhex(f[1])) >= 16 and len(bytes.fromhex(f[2])) >= 32 for f in fields)
    assert fields[0][1] != fields[1][1] and hashes[0] != hashes[1]  # each PIN its own salt


def test_health_names_a_stopped_role_and_a_disk_under_its_floor(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, storage={"free_space_floor_mb": 10**9})
    app = create_app(settings, TESTING=True)
    try:
        conn = store_conn(app)
        for role in ("receiver", "worker"):
            status.record_start(conn, role)
        status.record_stop(conn, "worker")
        answer = app.test_client().get("/health")
        assert answer.status_code == 503
        problems = answer.get_json()["problems"]
        assert problems[0] == "worker is not running"
        assert problems[1].startswith("disk free") and "new images are refused" in problems[1]
    finally:
        app.extensions["appliance.store"].close()
