"""The admin area on a real store: who may use it, users, model packages as the worker reports
them, system health from the roles' own rows, and the audit log with its CSV export."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from appliance.domain import Origin, Source
from appliance.imaging.header import read_header
from appliance.runtime import precision as precision_module
from appliance.runtime.precision import choose_precision, read_cpu_flags
from appliance.samples import write_sample
from appliance.store import Store, audit, jobs, open_store, status, users
from appliance.worker.models import ModelSet
from appliance.worker.role import record_models

from conftest import add_user, csrf_of, make_settings, sign_in, wait_for
from worker_fixtures import DEMO_MODELS

GET_ROUTES = [
    "/admin/",
    "/admin/users",
    "/admin/models",
    "/admin/health",
    "/admin/audit",
    "/admin/audit.csv",
]
POST_ROUTES = ["/admin/users", "/admin/users/1/active", "/admin/users/1/pin"]


def store_of(app: Flask) -> Store:
    store: Store = app.extensions["appliance.store"]
    return store


@pytest.fixture
def admin(app: Flask, client: FlaskClient) -> FlaskClient:
    """The client signed in as the admin 'root' (user id 1)."""
    add_user(app, "root", "admin")
    sign_in(client, "root")
    return client


def audit_of(app: Flask, action: str) -> list[dict[str, Any]]:
    """Audit rows of `action` made through the UI (not by the tests' own set-up)."""
    return [row for row in audit.recent(store_of(app).conn, action) if row["actor"] != "test"]


def post(client: FlaskClient, path: str, **data: str) -> Any:
    return client.post(path, data={"csrf_token": csrf_of(client, "/admin/users"), **data})


# --- who may use it --------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["technologist", "clinician"])
def test_every_admin_route_refuses_other_roles(app: Flask, client: FlaskClient, role: str) -> None:
    add_user(app, "root", "admin")
    add_user(app, "someone", role)
    sign_in(client, "someone")
    token = csrf_of(client, "/")
    for path in GET_ROUTES:
        assert client.get(path).status_code == 403, path
    for path in POST_ROUTES:
        response = client.post(path, data={"csrf_token": token, "active": "0", "pin": "1111"})
        assert response.status_code == 403, path
    assert users.get_user(store_of(app).conn, 1) == users.User(1, "root", "Root", "admin", True)
    assert "/admin/" not in client.get("/").get_data(as_text=True)  # no link for them


def test_signed_out_users_are_sent_to_sign_in(app: Flask, client: FlaskClient) -> None:
    add_user(app, "root", "admin")
    for path in GET_ROUTES:
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/signin?next=/admin/"), path
    for path in POST_ROUTES:
        assert client.post(path, data={"active": "0"}).status_code == 302, path


def test_an_admin_reaches_every_page(admin: FlaskClient) -> None:
    for path in GET_ROUTES:
        response = admin.get(path, follow_redirects=True)
        assert response.status_code == 200, path
    assert 'href="/admin/"' in admin.get("/").get_data(as_text=True)


def test_a_change_without_the_csrf_token_is_refused(app: Flask, admin: FlaskClient) -> None:
    response = admin.post(
        "/admin/users",
        data={"username": "nurse", "role": "technologist", "pin": "1357", "pin_again": "1357"},
    )
    assert response.status_code == 400
    assert [u.username for u in users.list_users(store_of(app).conn)] == ["root"]


# --- users -------------------------------------------------------------------------------------


def test_creating_a_user_is_audited_and_listed(app: Flask, admin: FlaskClient) -> None:
    response = post(
        admin,
        "/admin/users",
        username="nurse",
        display_name="Nurse Joy",
        role="technologist",
        pin="1357",
        pin_again="1357",
    )
    assert response.status_code == 302
    page = admin.get("/admin/users").get_data(as_text=True)
    assert 'data-username="nurse"' in page and "Nurse Joy" in page
    for element in ("new-username", "new-display-name", "new-role", "new-pin", "new-pin-again"):
        assert f'id="{element}"' in page
    assert 'id="create-user"' in page
    [row] = audit_of(app, "user.created")
    assert (row["actor"], row["subject"], row["detail"]) == (
        "ui:root",
        "user:nurse",
        {"role": "technologist"},
    )
    admin.post("/signout", data={"csrf_token": csrf_of(admin, "/admin/users")})
    sign_in(admin, "nurse", "1357")  # the new user can sign in with the PIN given


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pin_again": "9999"}, "The two PINs are not the same."),
        ({"username": "root"}, "The user name root is taken."),
        ({"username": "x"}, "A user name has 2 to 32 letters"),
        ({"pin": "12", "pin_again": "12"}, "A PIN has 4 to 8 digits."),
        ({"role": "superuser"}, "Choose a role."),
    ],
)
def test_a_user_that_cannot_be_created_is_explained(
    app: Flask, admin: FlaskClient, fields: dict[str, str], message: str
) -> None:
    form = {"username": "nurse", "role": "technologist", "pin": "1357", "pin_again": "1357"}
    response = post(admin, "/admin/users", **{**form, **fields})
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    assert [u.username for u in users.list_users(store_of(app).conn)] == ["root"]
    assert audit_of(app, "user.created") == []


def test_disabling_and_enabling_a_user_is_audited(
    app: Flask, admin: FlaskClient, client: FlaskClient
) -> None:
    nurse = add_user(app, "nurse", "technologist")
    assert post(admin, f"/admin/users/{nurse}/active", active="0").status_code == 302
    assert not users.get_user(store_of(app).conn, nurse).active  # type: ignore[union-attr]
    [row] = audit_of(app, "user.disabled")
    assert (row["actor"], row["subject"]) == ("ui:root", "user:nurse")
    other = app.test_client()
    response = other.post(
        "/signin", data={"username": "nurse", "pin": "2468", "csrf_token": csrf_of(other)}
    )
    assert response.status_code == 401  # disabled: cannot sign in
    assert post(admin, f"/admin/users/{nurse}/active", active="1").status_code == 302
    assert users.get_user(store_of(app).conn, nurse).active  # type: ignore[union-attr]
    assert len(audit_of(app, "user.enabled")) == 1
    sign_in(other, "nurse")


def test_an_admin_cannot_disable_their_own_account(app: Flask, admin: FlaskClient) -> None:
    response = post(admin, "/admin/users/1/active", active="0")
    assert response.status_code == 400
    assert "cannot disable your own account" in response.get_data(as_text=True)
    assert users.get_user(store_of(app).conn, 1).active  # type: ignore[union-attr]
    assert audit_of(app, "user.disabled") == []


def test_unknown_users_are_404(admin: FlaskClient) -> None:
    assert post(admin, "/admin/users/99/active", active="0").status_code == 404
    assert post(admin, "/admin/users/99/pin", pin="1111", pin_again="1111").status_code == 404


def test_resetting_a_pin_is_audited_and_takes_effect(app: Flask, admin: FlaskClient) -> None:
    nurse = add_user(app, "nurse", "technologist")
    response = post(admin, f"/admin/users/{nurse}/pin", pin="97531", pin_again="97531")
    assert response.status_code == 302
    [row] = audit_of(app, "user.pin_changed")
    assert (row["actor"], row["subject"]) == ("ui:root", "user:nurse")
    sign_in(app.test_client(), "nurse", "97531")
    mismatch = post(admin, f"/admin/users/{nurse}/pin", pin="1111", pin_again="2222")
    assert mismatch.status_code == 400
    assert len(audit_of(app, "user.pin_changed")) == 1


# --- model packages ----------------------------------------------------------------------------


def test_the_models_page_shows_what_the_worker_recorded(app: Flask, admin: FlaskClient) -> None:
    manifest = {
        "title": "Chest <findings>",
        "intended_use": "Shows how the box works",
        "not_for_clinical_use": True,
        "validation": {"dataset": "500 phantoms", "metrics": {"nodule": {"auc": 0.93}}},
    }
    status.record_models(
        store_of(app).conn,
        [
            status.ModelRow(
                "chest",
                "loaded",
                version="1.2.3",
                model_sha256="ab" * 32,
                backend="onnxruntime-cpu",
                precision="int8",
                manifest=manifest,
            ),
            status.ModelRow("broken-pkg", "refused", "manifest.yaml:3: name: bad value"),
            status.ModelRow("spare", "disabled", "listed in models.disabled"),
        ],
    )
    page = admin.get("/admin/models").get_data(as_text=True)
    for text in ("chest", "1.2.3", "ab" * 32, "onnxruntime-cpu (int8)", "Shows how the box works"):
        assert text in page
    assert "Chest &lt;findings&gt;" in page  # manifest text is escaped
    assert "Not for clinical use" in page and "500 phantoms" in page and "0.93" in page
    assert "manifest.yaml:3: name: bad value" in page
    assert re.search(r'data-model="spare"[^>]*>.*?disabled', page, re.S)


def test_recording_replaces_the_previous_list(store: Store) -> None:
    status.record_models(store.conn, [status.ModelRow("old", "loaded")])
    status.record_models(
        store.conn,
        [status.ModelRow("new", "loaded"), status.ModelRow("new", "refused", "twice", folder="b")],
    )
    assert [(m.name, m.state) for m in status.installed_models(store.conn)] == [
        ("new", "loaded"),
        ("new (b)", "refused"),
    ]
    with pytest.raises(ValueError, match="'gone' is not one of"):
        status.ModelRow("x", "gone")


@pytest.mark.parametrize(
    ("cpu_flags", "precision"),
    [({"sse4_2", "avx2", "avx512_vnni"}, "int8"), ({"sse4_2", "avx2"}, "fp32")],
    ids=["vnni", "no-vnni"],
)
def test_a_real_worker_start_records_its_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_flags: set[str], precision: str
) -> None:
    """`precision: auto` picks INT8 only on a CPU with 8-bit dot products: both are simulated."""
    monkeypatch.setattr(precision_module, "read_cpu_flags", lambda: frozenset(cpu_flags))
    bad = tmp_path / "models" / "broken"
    bad.mkdir(parents=True)
    (bad / "manifest.yaml").write_text("format: 1\n")
    dirs = [str(DEMO_MODELS / "demo-chest-xray"), str(DEMO_MODELS / "demo-ultrasound-fluid")]
    settings = make_settings(
        tmp_path, models={"dirs": [*dirs, str(bad.parent)], "disabled": ["demo-ultrasound-fluid"]}
    )
    store = open_store(settings)
    try:
        models = ModelSet.load(settings.models, store.paths.cache_dir)
        record_models(store, models)
        rows = {m.name: m for m in status.installed_models(store.conn)}
    finally:
        models.close()
        store.close()
    chest = rows["demo-chest-xray"]
    assert (chest.state, chest.backend, chest.precision) == ("loaded", "onnxruntime-cpu", precision)
    assert chest.model_sha256 == models.models[0].provenance.model_hash
    assert chest.manifest["not_for_clinical_use"] is True
    assert "auc" in chest.manifest["validation"]["metrics"]["pleural_effusion"]
    assert rows["demo-ultrasound-fluid"].state == "disabled"
    assert rows["broken"].state == "refused" and "sums" in rows["broken"].reason.lower()


def test_the_worker_role_records_models_and_its_heartbeat(
    role_process: Any, tmp_path: Path
) -> None:
    proc = role_process("worker", ready="worker: ready")
    proc.start()
    store = open_store(proc.settings)
    try:
        names = {m.name: m.state for m in status.installed_models(store.conn)}
        [worker] = [r for r in status.role_states(store.conn) if r.role == "worker"]
        # The default, by this machine's processor: the child process reads the real one even
        # under `pytest --cpu=...` (read_cpu_flags here is the unpatched function).
        choice = choose_precision("auto", "cpu", read_cpu_flags())
        assert worker.running and worker.detail == {
            "backend": "cpu",
            "precision": choice.precision,
            "precision_reason": choice.reason,
        }
        proc.stop()
        [worker] = [r for r in status.role_states(store.conn) if r.role == "worker"]
    finally:
        store.close()
    assert names == {"demo-chest-xray": "loaded", "demo-ultrasound-fluid": "loaded"}
    assert not worker.running and "stopped_at" in worker.detail


# --- system health -----------------------------------------------------------------------------


def test_the_health_page_shows_disk_queue_roles_and_errors(
    app: Flask, admin: FlaskClient, tmp_path: Path
) -> None:
    store = store_of(app)
    conn = store.conn
    status.record_start(conn, "receiver", host="0.0.0.0", port=11112, ae_title="APPLIANCE")
    status.record_start(conn, "worker", backend="cpu", precision="int8")
    status.record_start(conn, "ui", host="127.0.0.1", port=8080)  # as `appliance ui` does
    old = "2020-01-01T00:00:00.000000+00:00"
    conn.execute("UPDATE role_status SET heartbeat_at = ? WHERE role = 'worker'", (old,))
    instance = _ingest_sample(store, tmp_path, Origin(Source.DICOM, "CT1", "10.0.0.5"))
    job = jobs.claim(conn, "w1", 60.0)
    assert job is not None
    jobs.finish(conn, job.id, "w1", "decoding failed: truncated pixel data")
    store.audit("ae:X@10.0.0.9", "ingest.rejected", "instance:1.2.3", reason="bad dataset")
    status.record_models(conn, [status.ModelRow("wrong", "refused", "checksum mismatch")])
    page = admin.get("/admin/health").get_data(as_text=True)
    assert "free; the receiver refuses images below 1 MiB" in page
    assert "0 image(s) waiting" in page and "1 studies, 1 images stored" in page
    assert "Listening as APPLIANCE on 0.0.0.0, port 11112." in page
    assert re.search(r"Last image from a modality: \d\d:\d\d\.", page)  # today: the time only
    assert "The worker is not running." in page
    assert re.search(r'data-role="receiver" class="running"', page)
    assert re.search(r'data-role="worker" class="not-running"', page)
    assert re.search(r'data-role="ui" class="running"', page)
    assert "decoding failed: truncated pixel data" in page
    assert "checksum mismatch" in page and "ingest.rejected" in page
    assert instance > 0


def test_the_health_page_with_nothing_reported(admin: FlaskClient) -> None:
    page = admin.get("/admin/health").get_data(as_text=True)
    assert "Not running." in page and "The worker is not running." in page
    assert "Last image from a modality: \u2013." in page
    assert re.search(r'data-role="receiver" class="not-running"', page)


def test_a_role_beat_refreshes_and_then_marks_the_stop(store: Store) -> None:
    beat = status.RoleBeat(store, "receiver", every_s=0.05, host="127.0.0.1", port=104)
    [first] = status.role_states(store.conn)
    [later] = wait_for(
        lambda: [r for r in status.role_states(store.conn) if r.heartbeat_at > first.heartbeat_at],
        30,
        what="a later heartbeat",
    )
    assert later.running
    assert later.detail == {"host": "127.0.0.1", "port": 104}
    beat.stop()
    [stopped] = status.role_states(store.conn)
    assert not stopped.running and stopped.uptime_s is None


def test_the_receiver_role_records_where_it_listens(role_process: Any) -> None:
    proc = role_process()
    proc.start()
    store = open_store(proc.settings)
    try:
        [receiver] = [r for r in status.role_states(store.conn) if r.role == "receiver"]
        assert receiver.running
        assert receiver.detail["port"] == proc.port
        proc.stop()
        [receiver] = [r for r in status.role_states(store.conn) if r.role == "receiver"]
        assert not receiver.running
    finally:
        store.close()


def _ingest_sample(store: Store, folder: Path, origin: Origin) -> int:
    path = write_sample(folder / "cr.dcm", "cr", rows=32, columns=32)
    tmp = store.spool.new_tmp_path()
    tmp.write_bytes(path.read_bytes())
    return store.ingest(tmp, read_header(tmp), origin).instance_id


# --- the audit log -----------------------------------------------------------------------------


@pytest.fixture
def trail(app: Flask) -> Store:
    """A few known rows beside the sign-in rows the tests make."""
    store = store_of(app)
    store.audit("ae:CT1@10.0.0.5", "ingest.stored", "instance:1.2.840.1", size=10)
    store.audit("ae:CT1@10.0.0.5", "ingest.duplicate", "instance:1.2.840.1")
    store.audit("import:alice", "ingest.stored", "instance:1.2.840.2")
    store.audit("worker", "job.retry", "job:7", reason="model failed")
    store.audit("ui:bob", "user.created", "user:100%_real")
    store.audit("ui:bob", "user.created", "user:100xxreal")
    return store


def audit_ids(client: FlaskClient, query: str) -> list[str]:
    response = client.get(f"/admin/audit?{query}")
    assert response.status_code == 200, response.get_data(as_text=True)
    return re.findall(r'data-audit-id="(\d+)"', response.get_data(as_text=True))


def test_audit_filters(admin: FlaskClient, trail: Store) -> None:
    assert len(audit_ids(admin, "action=ingest.stored")) == 2
    assert len(audit_ids(admin, "action=ingest.*")) == 3
    assert len(audit_ids(admin, "actor=ct1")) == 2  # any part, any case
    assert len(audit_ids(admin, "actor=alice&action=ingest.*")) == 1
    assert len(audit_ids(admin, "subject=1.2.840.1")) == 2
    assert len(audit_ids(admin, "subject=100%25_real")) == 1  # % and _ are literal
    assert audit_ids(admin, "subject=%27%20OR%201%3D1%20--") == []  # quotes are data
    today = date.today()
    yesterday = today - timedelta(days=1)
    assert len(audit_ids(admin, f"action=ingest.*&from={today}&to={today}")) == 3
    assert audit_ids(admin, f"action=ingest.*&to={yesterday}") == []
    assert audit_ids(admin, f"action=ingest.*&from={today + timedelta(days=1)}") == []
    bad = admin.get("/admin/audit?from=yesterday")
    assert bad.status_code == 400 and "could not be read" in bad.get_data(as_text=True)


def test_audit_pages(admin: FlaskClient, app: Flask) -> None:
    store = store_of(app)
    for n in range(120):
        store.audit("system", "test.row", f"row:{n}")
    first = audit_ids(admin, "action=test.row")
    third = audit_ids(admin, "action=test.row&page=3")
    assert len(first) == 50 and len(third) == 20
    assert int(first[0]) > int(first[-1]) > int(third[0])  # newest first
    page = admin.get("/admin/audit?action=test.row&page=2").get_data(as_text=True)
    assert "120 entries; page 2 of 3." in page
    assert 'rel="next" href="/admin/audit?page=3&amp;action=test.row' in page


def test_audit_csv_export(admin: FlaskClient, app: Flask, trail: Store) -> None:
    trail.audit("ui:mallory", "note.added", '=HYPERLINK("http://x")', text="+1")
    for start in ("+SUM(A1)", "-2+3", "@cmd", "\tx"):
        trail.audit("ui:mallory", "note.added", start)
    response = admin.get("/admin/audit.csv?actor=mallory")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    disposition = response.headers["Content-Disposition"]
    assert re.fullmatch(r'attachment; filename="audit-\d{8}T\d{6}Z\.csv"', disposition)
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0] == ["id", "at_utc", "actor", "action", "subject", "detail"]
    subjects = [row[4] for row in rows[1:]]
    assert subjects == ["'\tx", "'@cmd", "'-2+3", "'+SUM(A1)", '\'=HYPERLINK("http://x")']
    assert all(row[2] == "ui:mallory" for row in rows[1:])
    assert json.loads(rows[-1][5]) == {"text": "+1"}  # the JSON text starts with '{': kept
    [exported] = audit_of(app, "audit.exported")
    assert exported["actor"] == "ui:root" and exported["detail"] == {
        "filters": {"actor": "mallory"}
    }
    assert admin.get("/admin/audit.csv?to=tomorrow").status_code == 400


def test_audit_csv_streams_every_row(store: Store) -> None:
    for n in range(25):
        store.audit("system", "bulk", f"n:{n}")
    search = status.AuditFilter(action="bulk")
    rows = list(status.audit_rows(lambda: store.conn, search, batch=10))
    assert [row["subject"] for row in rows] == [f"n:{n}" for n in reversed(range(25))]
