"""People who use the UI: a user name, a role and a PIN (stored as a salted scrypt hash).

Repeated wrong PINs lock the account for a while (`ui.lockout_*`); every sign-in, failure and
lock is audited. There are no default accounts: the first admin is created with a one-time
setup code that the UI role prints on its first start (`setup_code`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import itertools
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from enum import Enum

from appliance.config import PinPolicy
from appliance.store import audit
from appliance.store.db import utc_now
from appliance.store.refused import Refused

ROLES = ("technologist", "clinician", "admin")
# Checked with fullmatch: "$" would let a final newline through.
_USERNAME = re.compile(r"[A-Za-z0-9._-]{2,32}")
_PIN = re.compile(r"[0-9]{4,8}")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # ~40 ms per check on a small CPU: slows guessing
_SETUP_KEY = "setup_code"


class UserError(Refused):
    """A user name, PIN or role that cannot be accepted; the message says why. `key` and
    `values` (when set) let the UI say it from its strings catalogue."""


@dataclass(frozen=True)
class User:
    id: int
    username: str
    display_name: str
    role: str
    active: bool


class SignIn(Enum):
    OK = "ok"
    WRONG = "wrong"
    LOCKED = "locked"


@dataclass(frozen=True)
class SignInResult:
    outcome: SignIn
    user: User | None = None
    locked_for_s: float = 0.0


def check_username(username: str) -> str:
    if not _USERNAME.fullmatch(username):
        raise UserError(
            "a user name has 2-32 letters, digits, dots, dashes or underscores", "bad_name"
        )
    return username


def check_pin(pin: str, policy: PinPolicy | None = None) -> str:
    """`pin` when it may be set: 4 to 8 digits and not refused by the policy (`ui.pin_policy`;
    without one, the default policy). Only for PINs being set: sign-in takes any PIN a user
    already has, so a stricter policy never locks anyone out."""
    if not _PIN.fullmatch(pin):
        raise UserError("a PIN has 4 to 8 digits", "bad_pin")
    rules = policy or PinPolicy()
    if len(pin) < rules.min_digits:
        raise UserError(
            f"a PIN has at least {rules.min_digits} digits", "short_pin", n=rules.min_digits
        )
    if weak_pin(pin, rules):
        raise UserError(
            "choose a PIN that is not one digit repeated or a straight run like 1234", "weak_pin"
        )
    return pin


def weak_pin(pin: str, policy: PinPolicy) -> bool:
    """Whether the policy refuses `pin` as too easy to guess: one digit repeated (1111), a
    straight run up or down (1234, 9876, 0123; 9 and 0 do not wrap), or one of its list."""
    if pin in policy.refuse:
        return True
    if policy.refuse_repeated and len(set(pin)) == 1:
        return True
    steps = {int(b) - int(a) for a, b in itertools.pairwise(pin)}
    return policy.refuse_sequences and len(steps) == 1 and steps <= {1, -1}


def hash_pin(pin: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(pin.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


@functools.cache
def _dummy_hash() -> str:
    """A PIN hash to check against when there is no account: made once, so that its cost is
    one check, as for a real account."""
    return hash_pin(secrets.token_hex(8))


def _pin_matches(pin: str, stored: str) -> bool:
    try:
        scheme, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(pin.encode(), salt=bytes.fromhex(salt), **_SCRYPT)
    return hmac.compare_digest(candidate.hex(), digest)


def create_user(
    conn: sqlite3.Connection,
    username: str,
    display_name: str,
    role: str,
    pin: str,
    actor: str,
    policy: PinPolicy | None = None,
) -> User:
    """Add a user (inside the caller's transaction, or on its own); `policy` as check_pin."""
    check_username(username)
    check_pin(pin, policy)
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}", "bad_role")
    name = display_name.strip()[:64] or username
    try:
        cur = conn.execute(
            "INSERT INTO users (username, display_name, role, pin_hash, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (username, name, role, hash_pin(pin), utc_now()),
        )
    except sqlite3.IntegrityError as exc:
        raise UserError(f"the user name {username!r} is taken", "taken", name=username) from exc
    user_id = int(cur.lastrowid or 0)
    audit.append(conn, actor, "user.created", f"user:{username}", role=role)
    return User(user_id, username, name, role, True)


def get_user(conn: sqlite3.Connection, user_id: int) -> User | None:
    row = conn.execute(
        "SELECT id, username, display_name, role, active FROM users WHERE id = ?", (user_id,)
    ).fetchone()
    return None if row is None else _user(row)


def list_users(conn: sqlite3.Connection) -> list[User]:
    rows = conn.execute(
        "SELECT id, username, display_name, role, active FROM users ORDER BY username"
    ).fetchall()
    return [_user(row) for row in rows]


def has_admin(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM users WHERE role = 'admin' AND active = 1 LIMIT 1")
    return row.fetchone() is not None


def sign_in(
    conn: sqlite3.Connection,
    username: str,
    pin: str,
    attempts: int,
    lock_s: float,
    unknown: UnknownNames,
) -> SignInResult:
    """Check a PIN; count failures and lock the account after `attempts` in a row (names
    without an account in `unknown`, the same way)."""
    row = conn.execute(
        "SELECT id, username, display_name, role, active, pin_hash, failed_attempts,"
        " locked_until FROM users WHERE username = ?",
        (username,),
    ).fetchone()
    now = time.time()
    # Every path checks one PIN (one scrypt), and names without an account lock out like real
    # ones: neither the time nor the answer tells which user names exist.
    if row is None or not row["active"]:
        _pin_matches(pin, _dummy_hash())
        audit.append(conn, f"ui:{username[:32]}", "signin.failed", f"user:{username[:32]}")
        return unknown.failed(username, attempts, lock_s, now)
    if row["locked_until"] > now:
        _pin_matches(pin, _dummy_hash())
        audit.append(conn, f"ui:{row['username']}", "signin.locked", f"user:{row['username']}")
        return SignInResult(SignIn.LOCKED, locked_for_s=row["locked_until"] - now)
    if _pin_matches(pin, row["pin_hash"]):
        conn.execute(
            "UPDATE users SET failed_attempts = 0, locked_until = 0, last_sign_in = ? WHERE id = ?",
            (utc_now(), row["id"]),
        )
        audit.append(conn, f"ui:{row['username']}", "signin", f"user:{row['username']}")
        return SignInResult(SignIn.OK, _user(row))
    return _failed(conn, row, attempts, lock_s, now)


class UnknownNames:
    """Wrong PINs for names without an (active) account, counted in memory (one per UI) as
    the users table counts them for real ones, so that a lock-out cannot tell which names
    exist. Bounded: the oldest names are forgotten first."""

    KEEP = 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: dict[str, tuple[int, float]] = {}  # name -> (failures, locked until)

    def failed(self, name: str, attempts: int, lock_s: float, now: float) -> SignInResult:
        name = name.casefold()  # as the users table matches names (COLLATE NOCASE)
        with self._lock:
            failures, locked_until = self._names.pop(name, (0, 0.0))
            if locked_until > now:
                self._names[name] = (failures, locked_until)
                return SignInResult(SignIn.LOCKED, locked_for_s=locked_until - now)
            failures += 1
            locked = failures >= attempts
            self._names[name] = (0, now + lock_s) if locked else (failures, 0.0)
            while len(self._names) > self.KEEP:
                del self._names[next(iter(self._names))]
        if locked:
            return SignInResult(SignIn.LOCKED, locked_for_s=lock_s)
        return SignInResult(SignIn.WRONG)


def _failed(
    conn: sqlite3.Connection, row: sqlite3.Row, attempts: int, lock_s: float, now: float
) -> SignInResult:
    failures = row["failed_attempts"] + 1
    locked_until = now + lock_s if failures >= attempts else 0.0
    conn.execute(
        "UPDATE users SET failed_attempts = ?, locked_until = ? WHERE id = ?",
        (0 if locked_until else failures, locked_until, row["id"]),
    )
    subject = f"user:{row['username']}"
    audit.append(conn, f"ui:{row['username']}", "signin.failed", subject, failures=failures)
    if locked_until:
        audit.append(conn, "system", "user.locked", subject, minutes=round(lock_s / 60, 1))
        return SignInResult(SignIn.LOCKED, locked_for_s=lock_s)
    return SignInResult(SignIn.WRONG)


SESSION_MAX_S = 7 * 24 * 3600.0  # a sign-in older than this is forgotten, however used


def open_session(conn: sqlite3.Connection, user_id: int) -> str:
    """A new session id for a sign-in; sessions past `SESSION_MAX_S` are swept meanwhile."""
    sid = secrets.token_urlsafe(24)
    now = time.time()
    conn.execute("DELETE FROM ui_sessions WHERE started_at < ?", (now - SESSION_MAX_S,))
    conn.execute(
        "INSERT INTO ui_sessions (sid, user_ref, started_at) VALUES (?, ?, ?)", (sid, user_id, now)
    )
    return sid


def session_open(conn: sqlite3.Connection, sid: object, user_id: int) -> bool:
    """Whether `sid` is an open session of this user (not signed out, not too old)."""
    if not isinstance(sid, str):
        return False
    row = conn.execute(
        "SELECT 1 FROM ui_sessions WHERE sid = ? AND user_ref = ? AND started_at >= ?",
        (sid, user_id, time.time() - SESSION_MAX_S),
    ).fetchone()
    return row is not None


def close_session(conn: sqlite3.Connection, sid: object) -> None:
    if isinstance(sid, str):
        conn.execute("DELETE FROM ui_sessions WHERE sid = ?", (sid,))


def set_active(conn: sqlite3.Connection, user_id: int, active: bool, actor: str) -> None:
    conn.execute("UPDATE users SET active = ? WHERE id = ?", (int(active), user_id))
    action = "user.enabled" if active else "user.disabled"
    audit.append(conn, actor, action, _subject(conn, user_id))


def set_pin(
    conn: sqlite3.Connection, user_id: int, pin: str, actor: str, policy: PinPolicy | None = None
) -> None:
    """A new PIN for a user (`policy` as check_pin); a lock-out ends with it."""
    check_pin(pin, policy)
    conn.execute(
        "UPDATE users SET pin_hash = ?, failed_attempts = 0, locked_until = 0 WHERE id = ?",
        (hash_pin(pin), user_id),
    )
    audit.append(conn, actor, "user.pin_changed", _subject(conn, user_id))


def _subject(conn: sqlite3.Connection, user_id: int) -> str:
    """`user:NAME`, as sign-ins and creation are audited, so one filter finds all of a user."""
    row = conn.execute("SELECT username FROM users WHERE id = ?", (user_id,)).fetchone()
    return f"user:{row[0]}" if row is not None else f"user-id:{user_id}"


def new_setup_code(conn: sqlite3.Connection) -> str:
    """A fresh one-time code for creating the first admin (only its hash is kept)."""
    code = f"{secrets.randbelow(10**8):08d}"
    conn.execute(
        "INSERT INTO kv (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (_SETUP_KEY, hash_pin(code)),
    )
    return code


def use_setup_code(conn: sqlite3.Connection, code: str) -> bool:
    """True (and the code is spent) when `code` is the current setup code."""
    row = conn.execute("SELECT value FROM kv WHERE key = ?", (_SETUP_KEY,)).fetchone()
    if row is None or not _pin_matches(code.strip(), row[0]):
        return False
    conn.execute("DELETE FROM kv WHERE key = ?", (_SETUP_KEY,))
    return True


def _user(row: sqlite3.Row) -> User:
    return User(row["id"], row["username"], row["display_name"], row["role"], bool(row["active"]))
