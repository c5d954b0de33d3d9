"""The admin's update page: upload a release bundle from a USB stick, see how the last update
ended.

The UI runs as the `appliance` user and cannot write /opt, so it only leaves the bundle in
DATA/updates/incoming/: systemd's appliance-update.path sees the folder change and starts
appliance-update.service (`appliance update --incoming`, as root), which checks the signature,
installs, switches, restarts the roles (this UI too) and rolls back on any failure. What it
did is in the audit trail (actor "update"), which this page reads: the roles share nothing
but the store, so nothing here imports the updater.

The upload is written to DATA/updates/upload/ in pieces as it arrives, never held in memory,
and renamed into incoming/ only when whole: the updater never sees half a bundle. The name
must be a bundle's (`appliance-VERSION-TARGET.bundle`); it is the only part of the upload
used as a file name, and only after that check.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path
from typing import IO, Any

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for

from appliance.paths import fsync_dir, move_durably
from appliance.store import status
from appliance.web.admin import local_time, size
from appliance.web.db import get_conn, get_store
from appliance.web.i18n import t
from appliance.web.security import ViewResult

bp = Blueprint("updates", __name__, url_prefix="/admin/updates")

MAX_BUNDLE_BYTES = 4 * 2**30  # bundles are ~150 MiB; one with TensorRT engines stays far under
# The same folders and names as the updater's (release/incoming.py; the roles share no code).
INCOMING = Path("updates") / "incoming"
WORKING = Path("updates") / "working"
UPLOAD = Path("updates") / "upload"
BUNDLE_NAME = re.compile(r"appliance-[A-Za-z0-9][A-Za-z0-9._+-]{0,80}\.bundle")
OUTCOMES = ("update.done", "update.rolled_back", "update.refused", "update.failed")
STEPS_SHOWN = 30
_CHUNK = 1 << 20


class UploadRefused(Exception):
    """The upload is not taken; the message is for the admin."""


@bp.before_request
def _admins_only() -> None:
    if g.user is None or g.user.role != "admin":
        abort(403)


@bp.context_processor
def _helpers() -> dict[str, Any]:
    return {"local_time": local_time, "size": size}


@bp.url_value_preprocessor
def _bundle_sized_uploads(endpoint: str | None, values: dict[str, object] | None) -> None:
    """A bundle is larger than the UI's usual upload limit: this page's POST may be as large
    as a bundle. Runs before the CSRF check reads the form, so the limit holds for it too."""
    user = g.get("user")  # loaded already (security.init_app): nobody else may send 4 GiB
    if endpoint == "updates.upload" and user is not None and user.role == "admin":
        request.max_content_length = MAX_BUNDLE_BYTES


@bp.route("/", methods=["GET"])
def index() -> str:
    return _page()


@bp.route("/", methods=["POST"])
def upload() -> ViewResult:
    bundle = request.files.get("bundle")
    if bundle is None or not bundle.filename:
        return _page(t("updates.no_file")), 400
    name = Path(bundle.filename.replace("\\", "/")).name
    try:
        if BUNDLE_NAME.fullmatch(name) is None:
            raise UploadRefused(t("updates.bad_name", name=name[:120]))
        size = _receive(bundle.stream, name)
    except UploadRefused as exc:
        get_store().audit(_actor(), "update.upload_refused", name[:120], reason=str(exc))
        return _page(str(exc)), 400
    get_store().audit(_actor(), "update.uploaded", name, bytes=size)
    flash(t("updates.uploaded", name=name))
    return redirect(url_for("updates.index"))


def _actor() -> str:
    return f"ui:{g.user.username}"


def _data_dir() -> Path:
    return get_store().paths.data_dir


def _receive(stream: IO[bytes], name: str) -> int:
    """Copy the upload to upload/NAME.partial in pieces, then rename it into incoming/."""
    data = _data_dir()
    for folder in (UPLOAD, INCOMING):
        (data / folder).mkdir(parents=True, exist_ok=True)
    if (data / INCOMING / name).exists() or (data / WORKING / name).exists():
        raise UploadRefused(t("updates.already_waiting", name=name))
    partial = data / UPLOAD / f"{name}.partial"
    size = 0
    try:
        with partial.open("wb") as out:
            while chunk := stream.read(_CHUNK):
                size += len(chunk)
                out.write(chunk)
        move_durably(partial, data / INCOMING / name)
    except OSError as exc:
        raise UploadRefused(t("updates.write_failed", reason=exc.strerror or str(exc))) from None
    finally:
        partial.unlink(missing_ok=True)
    fsync_dir(data / INCOMING)
    return size


def _page(error: str = "") -> str:
    conn = get_conn()
    data = _data_dir()
    return render_template(
        "updates.html",
        error=error,
        outcome=last_outcome(conn),
        steps=_recent_steps(conn),
        waiting=_waiting(data),
        free=shutil.disk_usage(data).free if data.exists() else None,
        max_bytes=MAX_BUNDLE_BYTES,
    )


def last_outcome(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """The row that ended the last update (done, rolled back, refused, failed)."""
    rows, _ = status.audit_page(conn, status.AuditFilter(action="update.*", actor="update"), 200, 0)
    return next((_readable(row) for row in rows if row["action"] in OUTCOMES), None)


def _recent_steps(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows, _ = status.audit_page(conn, status.AuditFilter(action="update.*"), STEPS_SHOWN, 0)
    return [_readable(row) for row in rows]


def _readable(row: sqlite3.Row) -> dict[str, Any]:
    """An audit row with its detail read: the reason is what the admin needs."""
    try:
        detail = json.loads(row["detail"] or "{}")
    except ValueError:
        detail = {}
    return {**dict(row), "detail": detail if isinstance(detail, dict) else {}}


def _waiting(data: Path) -> list[str]:
    """Bundles uploaded and not yet finished by the updater."""
    names: list[str] = []
    for folder in (WORKING, INCOMING):
        if (data / folder).is_dir():
            names += sorted(p.name for p in (data / folder).iterdir() if p.is_file())
    return names
