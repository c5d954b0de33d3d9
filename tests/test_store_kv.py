"""The kv table: a value made once and kept, whoever asks first."""

from __future__ import annotations

from pathlib import Path

from appliance.store import kv
from appliance.store.db import connect, migrate


def test_the_first_value_is_kept_and_later_makers_are_not_asked(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db.sqlite3")
    migrate(conn, tmp_path / "lock")
    asked: list[str] = []

    def make(value: str) -> str:
        asked.append(value)
        return value

    assert kv.get_or_set(conn, "ui_secret", lambda: make("first")) == "first"
    assert kv.get_or_set(conn, "ui_secret", lambda: make("second")) == "first"
    assert kv.get_or_set(conn, "other", lambda: make("third")) == "third"
    assert asked == ["first", "third"]


def test_a_value_survives_a_new_connection(tmp_path: Path) -> None:
    first = connect(tmp_path / "db.sqlite3")
    migrate(first, tmp_path / "lock")
    kv.get_or_set(first, "ui_secret", lambda: "kept")
    first.close()
    again = connect(tmp_path / "db.sqlite3")
    assert kv.get_or_set(again, "ui_secret", lambda: "new") == "kept"
