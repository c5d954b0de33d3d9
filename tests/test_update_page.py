"""The admin's update page on a real store: admins only, CSRF, a bundle's name checked, the upload
written whole into DATA/updates/incoming/ for appliance-update.path, a bundle larger than the
UI's usual upload limit taken, and the last update's outcome read from the audit trail."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from appliance.store import Store, audit
from appliance.web import create_app

from conftest import add_user, csrf_of, make_settings, sign_in

PAGE = "/admin/updates/"


@pytest.fixture
def page_app(tmp_path: Path) -> Iterator[Flask]:
    """The UI with the update page (registered here too until create_app does it)."""
    app = create_app(make_settings(tmp_path, storage={"free_space_floor_mb": 1}), TESTING=True)
    yield app
    _store(app).close()


@pytest.fixture
def client(page_app: Flask) -> FlaskClient:
    return page_app.test_client()


def _store(app: Flask) -> Store:
    store: Store = app.extensions["appliance.store"]
    return store


def _incoming(app: Flask) -> Path:
    return _store(app).paths.data_dir / "updates" / "incoming"


@pytest.fixture
def admin(page_app: Flask, client: FlaskClient) -> FlaskClient:
    add_user(page_app, "root", "admin")
    sign_in(client, "root")
    return client


def _upload(client: FlaskClient, name: str, content: bytes, token: str | None = None) -> object:
    data = {"bundle": (io.BytesIO(content), name)}
    if token is None:
        token = csrf_of(client, PAGE)
    return client.post(PAGE, data={**data, "csrf_token": token}, content_type="multipart/form-data")


def test_only_admins_see_the_page(page_app: Flask, client: FlaskClient) -> None:
    add_user(page_app, "root", "admin")
    add_user(page_app, "doc", "clinician")
    sign_in(client, "doc")
    assert client.get(PAGE).status_code == 403
    token = csrf_of(client, "/")
    assert _upload(client, "appliance-0.2.0-x.bundle", b"data", token).status_code == 403  # type: ignore[attr-defined]


def test_an_uploaded_bundle_lands_whole_in_the_incoming_folder(
    page_app: Flask, admin: FlaskClient
) -> None:
    page_app.config["MAX_CONTENT_LENGTH"] = 1024  # the UI's usual limit: a bundle is larger
    content = b"bundle bytes " * 10_000
    response = _upload(admin, "appliance-0.2.0-x86_64-py3.11.bundle", content)
    assert response.status_code == 302  # type: ignore[attr-defined]
    landed = _incoming(page_app) / "appliance-0.2.0-x86_64-py3.11.bundle"
    assert landed.read_bytes() == content
    upload_folder = _store(page_app).paths.data_dir / "updates" / "upload"
    assert list(upload_folder.iterdir()) == []
    rows = audit.recent(_store(page_app).conn, "update.uploaded")
    assert rows[0]["actor"] == "ui:root" and rows[0]["detail"]["bytes"] == len(content)
    page = admin.get(PAGE).get_data(as_text=True)
    assert "appliance-0.2.0-x86_64-py3.11.bundle" in page  # shown as waiting
    again = _upload(admin, "appliance-0.2.0-x86_64-py3.11.bundle", b"x")
    assert again.status_code == 400  # type: ignore[attr-defined]
    assert "already waiting" in again.get_data(as_text=True)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["evil.sh", "../appliance-1.0-x.bundle.sh", "appliance-.bundle"])
def test_a_file_that_is_not_named_as_a_bundle_is_refused(
    page_app: Flask, admin: FlaskClient, name: str
) -> None:
    response = _upload(admin, name, b"data")
    assert response.status_code == 400  # type: ignore[attr-defined]
    assert "is not a release bundle" in response.get_data(as_text=True)  # type: ignore[attr-defined]
    assert not _incoming(page_app).exists() or list(_incoming(page_app).iterdir()) == []


def test_an_upload_without_the_csrf_token_is_refused(page_app: Flask, admin: FlaskClient) -> None:
    response = _upload(admin, "appliance-0.2.0-x.bundle", b"data", token="wrong")
    assert response.status_code == 400  # type: ignore[attr-defined]
    assert not _incoming(page_app).exists()


def test_the_page_shows_how_the_last_update_ended(page_app: Flask, admin: FlaskClient) -> None:
    assert "No update has been run" in admin.get(PAGE).get_data(as_text=True)
    conn = _store(page_app).conn
    audit.append(conn, "update", "update.verified", "0.1.0 -> 0.1.1")
    reason = "checks failed: the self-test failed (exit status 1)"
    audit.append(conn, "update", "update.rolled_back", "0.1.0 -> 0.1.1", reason=reason)
    page = admin.get(PAGE).get_data(as_text=True)
    assert 'data-outcome="update.rolled_back"' in page
    assert "Failed and rolled back" in page and reason in page


def test_only_a_signed_in_admin_may_send_a_body_past_the_ui_upload_limit(
    page_app: Flask, client: FlaskClient
) -> None:
    """Nobody else gets the bundle-sized limit, so an anonymous post cannot make the UI read
    gigabytes before it is turned away."""
    big = b"x" * (page_app.config["MAX_CONTENT_LENGTH"] + 2**20)
    form = {"bundle": (io.BytesIO(big), "appliance-9.bundle")}
    anonymous = client.post(PAGE, data=form, content_type="multipart/form-data")
    assert anonymous.status_code == 413
