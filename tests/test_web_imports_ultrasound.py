"""A picture imported as ultrasound through the import page is analysed by the ultrasound model,
end to end: the real UI stores it as a Secondary Capture, the real worker with the demo packages
routes it to demo-ultrasound-fluid and records its findings (or none), not "no model"."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
from flask import Flask
from flask.testing import FlaskClient

from appliance.phantoms import make_ultrasound
from appliance.store import open_store
from appliance.web import create_app

from conftest import add_user, csrf_of, make_settings, sign_in
from worker_fixtures import analysis_of, drain, findings_of, open_worker

US_DETAILS = {"patient_name": "Doe, Jane", "patient_id": "PID-0042", "modality": "US"}


@pytest.fixture
def box(tmp_path: Path) -> Iterator[tuple[Flask, FlaskClient, Any]]:
    """The UI and a worker on one store, the worker with the bundled demo packages."""
    settings = make_settings(tmp_path, jobs={"pictures_quiet_s": 0})
    app = create_app(settings, TESTING=True)
    add_user(app, "root", "admin")
    add_user(app, "tess", "technologist")
    client = app.test_client()
    sign_in(client, "tess")
    store = open_store(settings)
    yield app, client, open_worker(store, settings)
    store.close()
    app.extensions["appliance.store"].close()


def ultrasound_png(seed: int, fluid: bool) -> bytes:
    pixels = make_ultrasound(seed, fluid=fluid).pixels  # RGB
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


def test_an_ultrasound_picture_imported_through_the_page_is_analysed(
    box: tuple[Flask, FlaskClient, Any],
) -> None:
    app, client, worker = box
    data: dict[str, Any] = {"csrf_token": csrf_of(client, "/import"), **US_DETAILS}
    data["files"] = [(io.BytesIO(ultrasound_png(31, fluid=True)), "scan.png")]
    response = client.post("/import", data=data, content_type="multipart/form-data")
    assert response.status_code == 200
    assert 'data-outcome="stored"' in response.get_data(as_text=True)
    conn = app.extensions["appliance.store"].conn
    (instance,) = [row["id"] for row in conn.execute("SELECT id FROM instances")]
    drain(worker)
    analysis = analysis_of(worker.store.conn, instance)
    assert analysis["state"] == "findings", analysis["reason"]
    (finding,) = findings_of(worker.store.conn, instance)
    assert finding["model"] == "demo-ultrasound-fluid" and finding["state"] == "findings"
    assert analysis["summary"].startswith("Anechoic fluid"), analysis["summary"]
    assert any("Secondary Capture image declared as US" in n for n in finding["result"]["notes"])
