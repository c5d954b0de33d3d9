"""How long a destination that is in trouble is left alone: capped exponential back-off.

The count of failures in a row and the time of the next try live in `destination_status`, so
a restarted sender keeps backing off where the last one stopped instead of hammering a PACS
that is down. A little jitter keeps two boxes (or two destinations on one PACS) from retrying
in step. A delivery that got through resets the count.
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
) -> float:
    """The destination failed: count it, record why and when to try again, and put back
    each group of deliveries (`tried`: whether the attempt counts for them), in one
    transaction. Returns the time of the next try."""
    with transaction(conn):
        status = outbox.destination_status(conn, name)
        failures = (int(status["failures"]) if status is not None else 0) + 1
        next_try = time.time() + delay_s(failures, settings)
        outbox.record_destination(conn, name, False, reason, failures, next_try)
        for deliveries, tried in put_back:
            if deliveries:
                outbox.put_back(conn, deliveries, actor, reason, next_try, tried=tried)
    return next_try


def reached(conn: sqlite3.Connection, name: str) -> None:
    """The destination took an association: it is reachable and its back-off starts over."""
    with transaction(conn):
        outbox.record_destination(conn, name, True, REACHABLE, 0, 0.0)


def waiting_until(conn: sqlite3.Connection, name: str) -> float:
    """When the destination's back-off ends (0 when it is not backing off)."""
    status = outbox.destination_status(conn, name)
    return 0.0 if status is None else float(status["next_try"])
