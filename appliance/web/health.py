"""`/health`: public, for a monitor at a clinic or on a van's dashboard. It says whether the box
can do its job, not only whether this page answers: 200 `{"status": "ok"}`, or 503 with the
problems in plain words (a role not running, the disk under its floor, the store unreadable,
or the store not writable: every call commits a tiny transaction, since a full disk or a file
system remounted read-only still lets the store be read).
Nothing about patients or studies is in it.

Where destinations are set up, delivering results to them is part of the box's job, so the
sender role counts too. How each destination fares (reachable, queue, failures) is for the
admin's health page, which this module also feeds (`destination_health`): a PACS that is down
is the clinic's to fix, not a reason for the monitor to call the box broken.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from flask import Blueprint, jsonify
from werkzeug.wrappers import Response

from appliance.config import Settings
from appliance.store import Store, outbox, status
from appliance.web.db import get_store
from appliance.web.security import public

bp = Blueprint("health", __name__)
NEEDED_ROLES = ("receiver", "worker")  # the UI answering this is the third
SENDER = "sender"  # needed as well where destinations are set up


@bp.route("/health")
@public
def health() -> tuple[Response, int]:
    store = get_store()
    try:
        problems = find_problems(store)
    except sqlite3.Error as exc:
        why = status.read_only_problem(store.paths.data_dir)
        problems = [f"the store cannot be read: {exc}", *([why] if why else [])]
        return jsonify(status="down", problems=problems), 503
    if problems:
        return jsonify(status="degraded", problems=problems), 503
    return jsonify(status="ok"), 200


def needed_roles(store: Store) -> tuple[str, ...]:
    """The roles the box needs running with these settings."""
    return (*NEEDED_ROLES, SENDER) if store.settings.destinations else NEEDED_ROLES


def find_problems(store: Store) -> list[str]:
    """What keeps the appliance from taking and analysing images, and from delivering their
    results where destinations are set up, now."""
    states = {state.role: state for state in status.role_states(store.conn)}
    problems = [
        f"{role} is not running" if role in states else f"{role} has not started"
        for role in needed_roles(store)
        if role not in states or not states[role].running
    ]
    floor = store.settings.storage.free_space_floor_mb * 2**20
    free = store.spool.free_bytes()
    if free < floor:
        problems.append(
            f"disk free {free // 2**20} MiB is under the floor of {floor // 2**20} MiB: "
            "new images are refused"
        )
    unwritable = status.write_problem(store.conn, store.paths.data_dir)
    if unwritable:
        problems.append(unwritable)
    return problems


# --- the admin's health page ------------------------------------------------------------------


@dataclass(frozen=True)
class DestinationHealth:
    """What the admin sees of one destination: can the sender reach it, and what waits."""

    name: str
    address: str  # "PACS@10.0.0.5:4242"; empty for a destination no longer configured
    reachable: bool | None  # None: not tried yet
    checked_at: str | None  # UTC ISO time of the sender's last look
    detail: str  # the sender's words on its last look
    queued: int  # waiting and being sent
    failed: int
    sent: int
    oldest_waiting: str | None  # UTC ISO time the oldest waiting delivery was queued
    oldest_age_s: float | None


def destination_health(store: Store, now: datetime | None = None) -> list[DestinationHealth]:
    """Configured destinations first, then any the outbox still names."""
    now = now or datetime.now(timezone.utc)
    summary = outbox.queue_summary(store.conn)
    names = [d.name for d in store.settings.destinations]
    names += sorted(name for name in summary if name not in names)
    return [_destination(store, name, summary.get(name, {}), now) for name in names]


def _destination(
    store: Store, name: str, entry: dict[str, Any], now: datetime
) -> DestinationHealth:
    configured = store.settings.destination(name)
    oldest = entry.get("oldest_waiting")
    return DestinationHealth(
        name=name,
        address=(
            f"{configured.called_ae_title}@{configured.host}:{configured.port}"
            if configured
            else ""
        ),
        reachable=entry.get("reachable"),
        checked_at=entry.get("checked_at"),
        detail=str(entry.get("detail") or ""),
        queued=int(entry.get(outbox.WAITING, 0)) + int(entry.get(outbox.SENDING, 0)),
        failed=int(entry.get(outbox.FAILED, 0)),
        sent=int(entry.get(outbox.SENT, 0)),
        oldest_waiting=str(oldest) if oldest else None,
        oldest_age_s=(now - datetime.fromisoformat(str(oldest))).total_seconds()
        if oldest
        else None,
    )


def with_sender(roles: Sequence[str], settings: Settings) -> list[str]:
    """The health page's roles, with the sender listed (as not started) before it first
    reports, where destinations are set up."""
    listed = list(roles)
    if settings.destinations and SENDER not in listed:
        listed.append(SENDER)
    return listed
