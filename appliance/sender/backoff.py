"""How long a destination that is in trouble is left alone: capped exponential back-off.

The count of failures in a row and the time of the next try live in `destination_status`, so
a restarted sender keeps backing off where the last one stopped instead of hammering a PACS
that is down. A little jitter keeps two boxes (or two destinations on one PACS) from retrying
in step. A delivery that got through resets the count; an association alone does not, so a
PACS that takes associations but drops or turns away every object backs off further each time.

The object in flight when the association was lost (or the PACS ran out of room) also waits
its own back-off, growing with its attempts: an object that makes the PACS drop the
association every time must not hold up the objects queued behind it for ever.
"""

from __future__ import annotations

import random
import sqlite3
import time

from appliance.config import SenderSettings
from appliance.sender.reasons import REACHABLE
from appliance.store import outbox
from appliance.store.db import transaction
from appliance.store.outbox import Delivery

JITTER = 0.1  # the delay is shortened by up to this fraction, at random
MAX_DOUBLINGS = 40  # 2**40 times any retry_min_s is far past any retry_max_s


def delay_s(failures: int, settings: SenderSettings, rng: random.Random | None = None) -> float:
    """The wait after `failures` failures in a row (1 or more): retry_min_s doubling up to
    retry_max_s, less up to 10 % at random."""
    doublings = min(max(failures, 1) - 1, MAX_DOUBLINGS)
    base = min(settings.retry_max_s, settings.retry_min_s * 2.0**doublings)
    return base * (1.0 - JITTER * (rng or random).random())


def trouble(
    conn: sqlite3.Connection,
    name: str,
    reason: str,
    settings: SenderSettings,
    put_back: list[tuple[list[Delivery], bool]],
    actor: str,
    in_flight: Delivery | None = None,
) -> float:
    """The destination failed: count it, record why and when to try again, and put back
    each group of deliveries (`tried`: whether the attempt counts for them), in one
    transaction. `in_flight`, the object being sent when it failed, waits at least its own
    back-off too. Returns the time of the next try."""
    with transaction(conn):
        failures = _failures(conn, name) + 1
        next_try = time.time() + delay_s(failures, settings)
        outbox.record_destination(conn, name, False, reason, failures, next_try)
        for deliveries, tried in put_back:
            if deliveries:
                outbox.put_back(conn, deliveries, actor, reason, next_try, tried=tried)
        if in_flight is not None:
            own = time.time() + delay_s(in_flight.attempts + 1, settings)
            outbox.put_back(conn, [in_flight], actor, reason, max(next_try, own))
    return next_try


def reached(conn: sqlite3.Connection, name: str) -> None:
    """The destination took an association: it is reachable. Its failures in a row stand
    until an object gets through (`delivered`)."""
    with transaction(conn):
        outbox.record_destination(conn, name, True, REACHABLE, _failures(conn, name), 0.0)


def delivered(conn: sqlite3.Connection, name: str) -> None:
    """An object got through: the back-off starts over (inside the caller's transaction)."""
    outbox.record_destination(conn, name, True, REACHABLE, 0, 0.0)


def _failures(conn: sqlite3.Connection, name: str) -> int:
    status = outbox.destination_status(conn, name)
    return 0 if status is None else int(status["failures"])


def waiting_until(conn: sqlite3.Connection, name: str) -> float:
    """When the destination's back-off ends (0 when it is not backing off)."""
    status = outbox.destination_status(conn, name)
    return 0.0 if status is None else float(status["next_try"])
