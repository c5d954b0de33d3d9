"""The UI role as a real process refuses the 1 GiB deflate bomb on the import page in bounded
memory: signed in over HTTP on 127.0.0.1, the file POSTed as a browser would, the role's peak
resident memory (VmHWM) read from /proc."""

from __future__ import annotations

import http.client
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_receiver_limits import deflate_bomb, peak_rss_mb

from appliance.bench.harness.http import CSRF, Session
from appliance.store import open_store, users

from conftest import RoleProcess


def multipart(fields: dict[str, str], name: str, content: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with text fields and one file in `files`."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        "Content-Type: application/dicom\r\n\r\n".encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def test_the_ui_role_refuses_a_1_gib_deflate_bomb_in_bounded_memory(
    role_process: Callable[..., RoleProcess], tmp_path: Path, capsys: pytest.CaptureFixture[Any]
) -> None:
    bomb = deflate_bomb(tmp_path / "bomb" / "bomb.dcm", 2**30)
    proc = role_process("ui", ready="ui: serving on")
    store = open_store(proc.settings)
    try:
        users.create_user(store.conn, "root", "Root", "admin", "13572468", "test")
        users.create_user(store.conn, "tess", "Tess", "technologist", "2468", "test")
    finally:
        store.close()
    proc.start()
    assert proc.process is not None
    session = Session.signed_in(proc.settings.ui.port, "tess", "2468")
    status, page = session.get("/import")
    token = CSRF.search(page)
    assert status == 200 and token is not None
    before = peak_rss_mb(proc.process.pid)

    fields = {"csrf_token": token.group(1).decode()}
    body, content_type = multipart(fields, "bomb.dcm", bomb.read_bytes())
    conn = http.client.HTTPConnection("127.0.0.1", proc.settings.ui.port, timeout=120)
    try:
        headers = {"Content-Type": content_type, "Cookie": session.cookie}
        conn.request("POST", "/import", body=body, headers=headers)
        response = conn.getresponse()
        status, answer = response.status, response.read()
    finally:
        conn.close()
        session.close()
    peak = peak_rss_mb(proc.process.pid)

    assert status == 200
    assert b"inflates past" in answer
    with capsys.disabled():
        print(
            f"\nui peak RSS: {before:.0f} MB before, {peak:.0f} MB after importing a "
            f"{bomb.stat().st_size / 1e6:.1f} MB deflate bomb (1 GiB inflated)"
        )
    assert peak < 300, f"the ui role peaked at {peak:.0f} MB"
