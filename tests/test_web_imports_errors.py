"""A refused picture import opens on what is wrong: the errors listed first on the page (each
linked to its field, the field marked), what was typed kept, and the files named that must be
chosen again (a browser never lets a page refill a file field)."""

from __future__ import annotations

import io
import re
from typing import Any

import cv2
import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from conftest import add_user, csrf_of, sign_in


@pytest.fixture
def tech(app: Flask, client: FlaskClient) -> FlaskClient:
    add_user(app, "root", "admin")
    add_user(app, "tess", "technologist")
    sign_in(client, "tess")
    return client


def png() -> bytes:
    ok, encoded = cv2.imencode(".png", np.tile(np.arange(0, 250, 2, dtype=np.uint8), (40, 1)))
    assert ok
    return encoded.tobytes()


def post(client: FlaskClient, names: list[str], **fields: str) -> Any:
    data: dict[str, Any] = {"csrf_token": csrf_of(client, "/import"), **fields}
    data["files"] = [(io.BytesIO(png()), name) for name in names]
    return client.post("/import", data=data, content_type="multipart/form-data")


def test_a_missing_detail_is_listed_first_and_the_files_named(tech: FlaskClient) -> None:
    typed = {"patient_name": "Doe, Jane", "modality": "US", "study_description": "Abdomen"}
    response = post(tech, ["scan-1.png", "scan-2.png"], **typed)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    main = page[page.index('<section class="panel">') :]
    summary = re.search(
        r'<div class="message import-errors" id="import-errors".*?</div>', main, re.S
    )
    assert summary, "no error list"
    assert main.index('id="import-errors"') < main.index("<h1>")  # first on the page
    text = summary.group(0)
    assert 'href="#import-patient-id"' in text and "Patient ID: Enter this" in text
    assert "Choose the files again (scan-1.png, scan-2.png)" in text
    assert re.search(r'id="import-patient-id"[^>]*aria-invalid="true"', page)
    assert 'value="Doe, Jane"' in page and 'value="Abdomen"' in page
    assert re.search(r'<option value="US" selected>', page)  # the kind of image is kept
    assert page.count('role="alert"') == 1  # one announcement, not one per field


def test_no_file_is_listed_too_without_asking_to_choose_again(tech: FlaskClient) -> None:
    data = {"csrf_token": csrf_of(tech, "/import"), "patient_id": "P1"}
    response = tech.post("/import", data=data, content_type="multipart/form-data")
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert 'href="#import-files"' in page and "Choose at least one file." in page
    assert 'id="import-choose-again"' not in page and 'value="P1"' in page


def test_a_good_form_shows_no_error_list(tech: FlaskClient) -> None:
    page = tech.get("/import").get_data(as_text=True)
    assert 'id="import-errors"' not in page and "aria-invalid" not in page
