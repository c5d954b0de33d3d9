"""What a new release must pass before it is kept: its own `appliance selftest`, every role
that ran before the update running again (a heartbeat from a process started after the
restart), and the UI's /health reporting no problem it did not report before."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from appliance.config import Settings
from appliance.store import status
from appliance.store.db import connect

POLL_S = 0.5
_OUTPUT_TAIL = 2000  # characters of a failed self-test's output kept for the reason


class CheckFailed(Exception):
    """A check the new release did not pass; the message says which and why."""


def selftest(program: Path, config: Path | None, timeout_s: float) -> str:
    """Run `program selftest` (the new release's command); its last lines on success."""
    command = [str(program), *(["--config", str(config)] if config else []), "selftest"]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"the self-test did not finish within {timeout_s:.0f} s") from None
    except OSError as exc:
        raise CheckFailed(f"the self-test could not be started: {exc}") from None
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise CheckFailed(
            f"the self-test failed (exit status {result.returncode}): {output[-_OUTPUT_TAIL:]}"
        )
    return output[-_OUTPUT_TAIL:]


def running_roles(database: Path) -> list[str]:
    """The roles whose heartbeat is fresh now (the ones the update must bring back)."""
    if not database.exists():
        return []
    conn = connect(database)
    try:
        return [state.role for state in status.role_states(conn) if state.running]
    except sqlite3.Error:
        return []  # a store that cannot be read names no role; the self-test still runs
    finally:
        conn.close()


def wait_for_roles(database: Path, roles: list[str], since: datetime, timeout_s: float) -> None:
    """Every role in `roles` running, from a process started after `since` (the restart)."""

    def missing() -> list[str]:
        try:
            conn = connect(database)
        except sqlite3.Error:
            return list(roles)
        try:
            states = {s.role: s for s in status.role_states(conn)}
        except sqlite3.Error:
            return list(roles)
        finally:
            conn.close()
        return [
            role
            for role in roles
            if role not in states
            or not states[role].running
            or datetime.fromisoformat(states[role].started_at) < since
        ]

    left = _until(missing, timeout_s)
    if left:
        raise CheckFailed(
            f"{', '.join(left)} did not start again within {timeout_s:.0f} s after the restart"
        )


def ui_problems(settings: Settings) -> list[str] | None:
    """The problems the UI's /health reports now ([] when it says ok); None when it does not
    answer (not running, or not on this box)."""
    ui = settings.ui
    host = "127.0.0.1" if ui.bind_address in ("0.0.0.0", "::", "") else ui.bind_address
    url = f"http://{host}:{ui.port}/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:  # 503: degraded, with its problems
        body = exc.read()
    except (OSError, ValueError):
        return None
    try:
        problems = json.loads(body).get("problems", [])
    except (ValueError, AttributeError):
        return [f"/health answered something that is not its report: {body[:200]!r}"]
    return [str(p) for p in problems]


def wait_for_health(settings: Settings, before: list[str], timeout_s: float) -> None:
    """/health answers with no problem that it did not already report before the update."""
    last: list[str] | None = None

    def new_problems() -> list[str] | None:
        nonlocal last
        last = ui_problems(settings)
        if last is None:
            return ["the UI does not answer /health"]
        return [p for p in last if p not in before]

    left = _until(new_problems, timeout_s)
    if left:
        raise CheckFailed(f"/health reports: {'; '.join(left)}")


def _until(still_wrong: Callable[[], list[str] | None], timeout_s: float) -> list[str]:
    """Ask `still_wrong` until it says nothing is (an empty list) or time is up; its last say."""
    deadline = time.monotonic() + timeout_s
    while True:
        wrong = still_wrong() or []
        if not wrong or time.monotonic() >= deadline:
            return wrong
        time.sleep(POLL_S)
