"""The PIN policy (`ui.pin_policy`): trivial PINs are refused wherever a PIN is set (the
first admin's set-up, a new user, an admin's reset) with a plain message; PINs people already
have keep working at sign-in."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from appliance.config import PinPolicy
from appliance.store import Store, users
from appliance.web import create_app

from conftest import add_user, csrf_of, make_settings, sign_in

PLAIN = "Choose a PIN that is not one digit repeated or a straight run like 1234."


@pytest.mark.parametrize("pin", ["1111", "00000000", "1234", "0123", "9876", "3210", "45678"])
def test_the_default_policy_refuses_repeats_and_straight_runs(pin: str) -> None:
    with pytest.raises(users.UserError) as refused:
        users.check_pin(pin)
    assert refused.value.key == "weak_pin"
    assert "one digit repeated or a straight run" in str(refused.value)


@pytest.mark.parametrize("pin", ["2468", "1357", "7890", "1123", "13572468", "9012", "2580"])
def test_pins_that_are_not_trivial_pass(pin: str) -> None:
    assert users.check_pin(pin) == pin
    assert users.check_pin(pin, PinPolicy()) == pin


def test_each_rule_can_be_turned_off_and_a_site_can_refuse_more() -> None:
    lax = PinPolicy(refuse_repeated=False, refuse_sequences=False)
    assert users.check_pin("1111", lax) == "1111" and users.check_pin("1234", lax) == "1234"
    site = PinPolicy(refuse=["1990", "2580"])
    for pin in ("1990", "2580"):
        with pytest.raises(users.UserError, match="straight run"):
            users.check_pin(pin, site)
    longer = PinPolicy(min_digits=6)
    with pytest.raises(users.UserError) as short:
        users.check_pin("2468", longer)
    assert (short.value.key, short.value.values) == ("short_pin", {"n": 6})
    assert users.check_pin("246813", longer) == "246813"


def test_the_format_is_checked_before_the_policy() -> None:
    for pin in ("111", "1111a", "123456789", "1111\n"):
        with pytest.raises(users.UserError) as refused:
            users.check_pin(pin)
        assert refused.value.key == "bad_pin"


def test_the_store_refuses_weak_pins_when_creating_or_changing(store: Store) -> None:
    with pytest.raises(users.UserError):
        users.create_user(store.conn, "tess", "Tess", "technologist", "1111", "test")
    tess = users.create_user(store.conn, "tess", "Tess", "technologist", "2468", "test")
    with pytest.raises(users.UserError):
        users.set_pin(store.conn, tess.id, "4321", "test")
    lax = PinPolicy(refuse_sequences=False)
    users.set_pin(store.conn, tess.id, "4321", "test", lax)  # the site chose to allow runs


# --- in the UI, with the site's policy ----------------------------------------------------------


@pytest.fixture
def strict_app(tmp_path: Path) -> Iterator[Flask]:
    """The UI with a site policy: at least 6 digits, 202020 refused too."""
    policy = {"pin_policy": {"min_digits": 6, "refuse": ["202020"]}}
    application = create_app(make_settings(tmp_path, ui=policy), TESTING=True)
    yield application
    application.extensions["appliance.store"].close()


@pytest.fixture
def admin(strict_app: Flask) -> FlaskClient:
    client = strict_app.test_client()
    add_user(strict_app, "root", "admin", pin="13572468")
    sign_in(client, "root", "13572468")
    return client


def post(client: FlaskClient, path: str, **data: str) -> Any:
    return client.post(path, data={"csrf_token": csrf_of(client, "/admin/users"), **data})


def page_text(response: Any) -> str:
    return re.sub(r"\s+", " ", response.get_data(as_text=True))


@pytest.mark.parametrize("pin", ["111111", "123456", "654321", "202020"])
def test_an_admin_cannot_give_a_new_user_a_trivial_pin(
    strict_app: Flask, admin: FlaskClient, pin: str
) -> None:
    new = {"username": "nurse", "display_name": "Nurse", "role": "technologist"}
    response = post(admin, "/admin/users", pin=pin, pin_again=pin, **new)
    assert response.status_code == 400
    assert PLAIN in page_text(response)
    conn = strict_app.extensions["appliance.store"].conn
    assert [u.username for u in users.list_users(conn)] == ["root"]


def test_the_sites_minimum_length_is_explained(admin: FlaskClient) -> None:
    new = {"username": "nurse", "display_name": "Nurse", "role": "technologist"}
    response = post(admin, "/admin/users", pin="2468", pin_again="2468", **new)
    assert response.status_code == 400
    assert "A PIN has at least 6 digits here." in page_text(response)
    assert post(admin, "/admin/users", pin="246813", pin_again="246813", **new).status_code == 302


def test_an_admin_reset_refuses_a_trivial_pin(strict_app: Flask, admin: FlaskClient) -> None:
    nurse = add_user(strict_app, "nurse", "technologist", pin="246813")
    refused = post(admin, f"/admin/users/{nurse}/pin", pin="999999", pin_again="999999")
    assert refused.status_code == 400
    assert "The PIN of nurse was not changed: " + PLAIN in page_text(refused)
    assert (
        post(admin, f"/admin/users/{nurse}/pin", pin="975312", pin_again="975312").status_code
        == 302
    )
    fresh = strict_app.test_client()
    sign_in(fresh, "nurse", "975312")


def test_the_first_admins_set_up_refuses_a_trivial_pin(app: Flask, client: FlaskClient) -> None:
    store: Store = app.extensions["appliance.store"]
    code = users.new_setup_code(store.conn)
    form = {"code": code, "username": "chief", "display_name": "Chief"}
    token = csrf_of(client, "/setup")
    response = client.post(
        "/setup", data={"csrf_token": token, "pin": "1234", "pin_again": "1234", **form}
    )
    assert response.status_code == 400
    assert PLAIN in page_text(response)
    assert not users.has_admin(store.conn)


def test_a_user_who_already_has_a_weak_pin_still_signs_in(strict_app: Flask) -> None:
    """A stricter policy applies when a PIN is set, never at sign-in: nobody is locked out."""
    conn = strict_app.extensions["appliance.store"].conn
    lax = PinPolicy(refuse_repeated=False)
    users.create_user(conn, "old", "Old Timer", "technologist", "1111", "test", lax)
    client = strict_app.test_client()
    sign_in(client, "old", "1111")
    landed = client.get("/", follow_redirects=True)
    assert landed.status_code == 200 and landed.request.path != "/signin"
