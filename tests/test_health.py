"""`/health` and the admin's health page on a store that cannot be written (a file system
remounted read-only, a store locked by a stuck writer), the days of disk left at the last
week's rate, and the last backup."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from appliance.config import Settings
from appliance.store import Store, status
from appliance.store.backup import make_backup
from appliance.web import create_app

from conftest import add_user, make_settings, mounted_tmpfs, receive_sample, sign_in

MIB = 2**20


def settings_for(tmp_path: Path, data_dir: Path | None = None) -> Settings:
    data = data_dir or tmp_path / "data"
    return make_settings(tmp_path, storage={"free_space_floor_mb": 1, "data_dir": str(data)})


def open_app(settings: Settings) -> Flask:
    app = create_app(settings, TESTING=True)
    store = store_of(app)
    for role in ("receiver", "worker"):  # as the roles record themselves when they start
        status.record_start(store.conn, role)
    return app


def store_of(app: Flask) -> Store:
    store: Store = app.extensions["appliance.store"]
    return store


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    made = open_app(settings_for(tmp_path))
    yield made
    store_of(made).close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


# --- a store that cannot be written ---------------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs mounted under tmp_path (needs root); lazily unmounted afterwards."""
    with mounted_tmpfs(tmp_path / "tiny", "8m") as mount_point:
        yield mount_point


def remount(mount_point: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount_point)], check=True)


def test_health_is_not_ok_while_the_data_folder_is_read_only(tiny_fs: Path, tmp_path: Path) -> None:
    app = open_app(settings_for(tmp_path, tiny_fs / "data"))
    client = app.test_client()
    try:
        assert client.get("/health").get_json() == {"status": "ok"}
        # As the kernel does after an I/O error (errors=remount-ro); a file open for writing
        # keeps a file system from being remounted, so this thread's connection closes first.
        store_of(app).close_thread_connection()
        remount(tiny_fs, "ro")
        try:
            response = client.get("/health")
            assert response.status_code == 503
            problems = response.get_json()["problems"]
            assert f"the file system of the data folder {tiny_fs / 'data'} is read-only" in problems
        finally:
            remount(tiny_fs, "rw")
        assert client.get("/health").status_code == 200
    finally:
        store_of(app).close()


def test_health_is_not_ok_on_a_full_disk(tiny_fs: Path, tmp_path: Path) -> None:
    app = open_app(settings_for(tmp_path, tiny_fs / "data"))
    client = app.test_client()
    filler = tiny_fs / "filler.bin"
    try:
        assert client.get("/health").status_code == 200
        with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 65536)  # until the disk is full
        response = client.get("/health")
        assert response.status_code == 503
        problems = response.get_json()["problems"]
        assert any(p.startswith("disk free 0 MiB is under the floor") for p in problems)
        filler.unlink()
        assert client.get("/health").status_code == 200
    finally:
        store_of(app).close()


def test_health_is_not_ok_while_the_store_cannot_take_a_write(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status, "PROBE_TIMEOUT_S", 0.2)  # the test need not wait 5 s
    stuck = sqlite3.connect(store_of(app).paths.database, isolation_level=None)
    try:
        assert client.get("/health").status_code == 200
        stuck.execute("BEGIN EXCLUSIVE")  # a writer that never lets go
        response = client.get("/health")
        assert response.status_code == 503
        problems = response.get_json()["problems"]
        assert problems == ["the store cannot be written: database is locked"]
        stuck.execute("ROLLBACK")
        assert client.get("/health").status_code == 200
    finally:
        stuck.close()


# --- days of disk left, and the last backup --------------------------------------------------


def test_days_left_follow_the_last_weeks_rate(store_with_history: Store) -> None:
    store = store_with_history
    sizes = [r[0] for r in store.conn.execute("SELECT size_bytes FROM instances")]
    now = datetime.now(timezone.utc)

    outlook = status.disk_outlook(store.conn, 101 * MIB, MIB, now)

    # The oldest image is 10 days old: the rate is the last 7 days' images over 7 days.
    recent = sum(sizes[1:])
    assert outlook.bytes_per_day == pytest.approx(recent / 7, rel=1e-3)
    assert outlook.days_left == pytest.approx(100 * MIB / (recent / 7), rel=1e-3)


def test_too_little_history_tells_no_rate(store: Store, tmp_path: Path) -> None:
    assert status.disk_outlook(store.conn, 10 * MIB, MIB).bytes_per_day is None  # no images
    (tmp_path / "in").mkdir()
    receive_sample(store, tmp_path / "in", 1)  # just now: less than an hour of history
    assert status.disk_outlook(store.conn, 10 * MIB, MIB).days_left is None


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    from appliance.store import open_store

    opened = open_store(settings_for(tmp_path))
    yield opened
    opened.close()


@pytest.fixture
def store_with_history(store: Store, tmp_path: Path) -> Store:
    """Four images received 10, 6, 3 and 1 days ago."""
    (tmp_path / "in").mkdir(exist_ok=True)
    now = datetime.now(timezone.utc)
    for seed, days in enumerate((10, 6, 3, 1)):
        instance = receive_sample(store, tmp_path / "in", seed)
        when = (now - timedelta(days=days)).isoformat(timespec="microseconds")
        store.conn.execute("UPDATE instances SET received_at = ? WHERE id = ?", (when, instance))
    return store


def test_the_admin_page_shows_days_left_the_last_backup_and_a_write_problem(
    app: Flask, client: FlaskClient, tmp_path: Path
) -> None:
    store = store_of(app)
    (tmp_path / "in").mkdir()
    now = datetime.now(timezone.utc)
    for seed in range(3):
        instance = receive_sample(store, tmp_path / "in", seed)
        when = (now - timedelta(days=2 * seed + 1)).isoformat(timespec="microseconds")
        store.conn.execute("UPDATE instances SET received_at = ? WHERE id = ?", (when, instance))
    add_user(app, "admin", "admin")
    sign_in(client, "admin")

    page = client.get("/admin/health").get_data(as_text=True)
    assert "No backup has been made yet" in page
    assert "until the floor at the current rate" in page
    assert 'id="health-unwritable"' not in page

    made = make_backup(store)
    page = client.get("/admin/health").get_data(as_text=True)
    assert "Last backup" in page and str(made.folder) in page
