"""What each user chose for themselves: for now the language of the UI.

A user without a choice ('' in users.language) sees the screen's language (`ui.language`).
Every change is audited, like the other changes to an account.
"""

from __future__ import annotations

import sqlite3

from appliance.store import audit
from appliance.store.refused import Refused

LANGUAGES = ("en", "fr")  # the catalogues the UI has (appliance/web/strings/<code>)


class PreferenceError(Refused):
    """A choice that cannot be stored; the message says why."""


def get_language(conn: sqlite3.Connection, user_id: int) -> str:
    """The user's language, or '' when they have not chosen one (or there is no such user)."""
    row = conn.execute("SELECT language FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None or row[0] not in LANGUAGES:
        return ""
    return str(row[0])


def set_language(conn: sqlite3.Connection, user_id: int, language: str, actor: str) -> None:
    """Store the user's language ('' = the screen's again) and audit the change."""
    if language and language not in LANGUAGES:
        raise PreferenceError(f"the language must be one of {', '.join(LANGUAGES)}", "bad_language")
    row = conn.execute("SELECT username, language FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None:
        raise PreferenceError(f"there is no user with id {user_id}", "no_user")
    conn.execute("UPDATE users SET language = ? WHERE id = ?", (language, user_id))
    audit.append(
        conn,
        actor,
        "user.language",
        f"user:{row[0]}",
        language=language or "screen",
        before=row[1] or "screen",
    )
