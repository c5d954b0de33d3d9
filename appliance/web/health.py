"""`/health`: public, for a monitor at a clinic or on a van's dashboard. It says whether the box
can do its job, not only whether this page answers: 200 `{"status": "ok"}`, or 503 with the
problems in plain words (a role not running, the disk under its floor, the store unreadable).
Nothing about patients or studies is in it.
"""

from __future__ import annotations

import sqlite3

from flask import Blueprint, jsonify
from werkzeug.wrappers import Response

from appliance.store import Store, status
from appliance.web.db import get_store
from appliance.web.security import public

bp = Blueprint("health", __name__)
NEEDED_ROLES = ("receiver", "worker")  # the UI answering this is the third


@bp.route("/health")
@public
def health() -> tuple[Response, int]:
    store = get_store()
    try:
        problems = find_problems(store)
    except sqlite3.Error as exc:
        return jsonify(status="down", problems=[f"the store cannot be read: {exc}"]), 503
    if problems:
        return jsonify(status="degraded", problems=problems), 503
    return jsonify(status="ok"), 200


def find_problems(store: Store) -> list[str]:
    """What keeps the appliance from taking and analysing images now."""
    states = {state.role: state for state in status.role_states(store.conn)}
    problems = [
        f"{role} is not running" if role in states else f"{role} has not started"
        for role in NEEDED_ROLES
        if role not in states or not states[role].running
    ]
    floor = store.settings.storage.free_space_floor_mb * 2**20
    free = store.spool.free_bytes()
    if free < floor:
        problems.append(
            f"disk free {free // 2**20} MiB is under the floor of {floor // 2**20} MiB: "
            "new images are refused"
        )
    return problems
