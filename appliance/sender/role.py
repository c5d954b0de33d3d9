"""Run the sender role: deliver the outbox to every configured destination; until SIGTERM.

Store and forward: the outbox in SQLite is the only source of truth, so a sender killed at any
point loses nothing. At start, deliveries a killed sender left `sending` wait again and are
sent again with the same SOP Instance UID (the PACS sees a duplicate, never a new object).

Each destination has its own thread (a lane) and its own back-off, so a PACS that is down or
slow never holds up another destination. A lane sleeps until the doorbell rings (deliveries
were queued), its next delivery or back-off falls due, or `sender.poll_s` passes: never a busy
loop. A destination that is no longer configured keeps its deliveries waiting, and its status
says so.

The role says READY=1 to its service manager once its lanes run, and pings the watchdog only
while every lane's thread is alive and none is stuck: a lane goes round its loop within the
poll interval, and a batch ends within the association's timeouts (connect and negotiate,
then one DIMSE timeout per object and one for the release). A lane past that is hung in a way
no timeout catches; the manager restarts the role and the batch is sent again.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sqlite3
import threading
import time
from types import FrameType

from appliance import notify
from appliance.config import Destination, SenderSettings, Settings
from appliance.paths import Paths
from appliance.sender import backoff
from appliance.sender.deliver import ACTOR, Courier
from appliance.sender.reasons import NOT_CONFIGURED
from appliance.store import Store, open_store, outbox, status
from appliance.store.db import transaction
from appliance.store.doorbell import Doorbell, Listener

log = logging.getLogger(__name__)
MIN_WAIT_S = 0.05  # the shortest sleep of a lane with nothing due right now
STORE_WAIT_S = 5.0  # between tries while the store cannot be written
# Added to every deadline of the watchdog: a query may wait out a busy store (its busy
# timeout is 30 s) a few times before it fails, and that is not a hang.
STORE_SLACK_S = 120.0


def serve(settings: Settings, paths: Paths, stop: threading.Event | None = None) -> int:
    """Take back interrupted deliveries, then deliver until asked to stop.

    Without `stop`, SIGTERM and SIGINT stop it (the process's role); a caller that runs it in
    a thread passes its own event and rings `paths.sender_bell` after setting it."""
    store = open_store(settings, paths)
    with transaction(store.conn):
        interrupted = outbox.reset_interrupted(store.conn, ACTOR)
    _mark_unconfigured(store.conn, settings)
    listener = Listener(paths.sender_bell)
    bell = Doorbell(paths.sender_bell)
    if stop is None:
        stop = threading.Event()
        _on_signals(stop, bell)
    lanes = [Lane(store, settings, destination, stop) for destination in settings.destinations]
    names = [d.name for d in settings.destinations]
    beat = status.RoleBeat(store, "sender", destinations=names)
    print(f"sender: ready; {describe(settings)}{_taken_back(interrupted)}", flush=True)
    for lane in lanes:
        lane.start()
    liveness = Liveness(lanes, settings.sender)
    watchdog = notify.Watchdog(liveness.working).start()
    notify.ready(describe(settings))
    try:
        _listen(store, settings, listener, liveness, stop)
        log.info("sender stopping: objects in flight finish, the others wait")
    finally:
        notify.stopping()
        watchdog.stop()
        stop.set()
        for lane in lanes:
            lane.wake()
        for lane in lanes:
            lane.join()
        beat.stop()
        listener.close()
        bell.close()
        store.close()
    return 1 if any(lane.crashed for lane in lanes) else 0


def describe(settings: Settings) -> str:
    """The destinations as the ready line lists them."""
    if not settings.destinations:
        return "no destinations configured (deliveries wait)"
    return "destinations: " + ", ".join(
        f"{d.name} ({d.called_ae_title}@{d.host}:{d.port}, calling AE"
        f" {settings.calling_ae_title(d)!r})"
        for d in settings.destinations
    )


def _taken_back(count: int) -> str:
    return f"; {count} interrupted deliveries wait again" if count else ""


def _listen(
    store: Store,
    settings: Settings,
    listener: Listener,
    liveness: Liveness,
    stop: threading.Event,
) -> None:
    """Pass rings of the doorbell on to every lane; keep the status of destinations that
    are no longer configured true."""
    lanes = liveness.lanes
    while not stop.is_set():
        liveness.round()
        if listener.wait(settings.sender.poll_s):
            for lane in lanes:
                lane.wake()
        if any(lane.crashed for lane in lanes):
            return
        try:
            _mark_unconfigured(store.conn, settings)
        except sqlite3.OperationalError as exc:
            log.error("the store cannot be written (%s)", exc)


def _mark_unconfigured(conn: sqlite3.Connection, settings: Settings) -> None:
    """Say so of each destination the outbox names that is not configured; forget having
    said it of one that is configured again (not tried yet, rather than "not configured")."""
    configured = {d.name for d in settings.destinations}
    for name in sorted(outbox.known_destinations(conn) | configured):
        known = outbox.destination_status(conn, name)
        said = known is not None and known["detail"] == NOT_CONFIGURED
        if name not in configured and not said:
            outbox.record_destination(conn, name, None, NOT_CONFIGURED)
            log.warning("%s: deliveries wait for a destination that is %s", name, NOT_CONFIGURED)
        elif name in configured and said:
            outbox.record_destination(conn, name, None, "")


class Lane(threading.Thread):
    """One destination's loop: claim a due batch, deliver it, sleep until the next is due."""

    def __init__(
        self, store: Store, settings: Settings, destination: Destination, stop: threading.Event
    ) -> None:
        super().__init__(name=f"sender-{destination.name}", daemon=True)
        self.store = store
        self.destination_name = destination.name
        self.settings = settings.sender
        self.stop = stop
        calling = settings.calling_ae_title(destination)
        self.courier = Courier(store, destination, calling, settings.sender, stop)
        self.crashed = False
        self._wake = threading.Event()
        self.due_by = time.monotonic() + self.round_s()  # the watchdog's deadline for this lane

    def wake(self) -> None:
        self._wake.set()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self._expect(self.round_s())
                self._wake.clear()  # a ring from now on cuts the next sleep short
                if not self._run_once_tolerant():
                    self._wake.wait(self.idle_wait())
        except Exception:  # a bug: end the role so that it is restarted, nothing is lost
            log.exception("%s: the sender's loop failed", self.destination_name)
            self.crashed = True
            self.stop.set()
        finally:
            self.store.close_thread_connection()

    def _run_once_tolerant(self) -> bool:
        """`run_once`; a store that cannot be written (a full disk) is waited out, and this
        destination's claimed deliveries wait again."""
        try:
            return self.run_once()
        except sqlite3.OperationalError as exc:
            log.error("%s: the store cannot be written (%s)", self.destination_name, exc)
            if not self.stop.wait(STORE_WAIT_S):
                with contextlib.suppress(sqlite3.OperationalError), transaction(self.store.conn):
                    outbox.reset_interrupted(self.store.conn, ACTOR, self.destination_name)
            return True

    def run_once(self) -> bool:
        """Deliver one batch if one is due and the destination is not backing off; False when
        there was nothing to do."""
        conn = self.store.conn
        if backoff.waiting_until(conn, self.destination_name) > time.time():
            return False
        batch = outbox.claim(conn, self.destination_name, self.settings.batch)
        if not batch:
            return False
        self._expect(batch_limit_s(self.settings, len(batch)))
        self.courier.deliver(batch)
        return True

    def round_s(self) -> float:
        """The longest one round of the loop takes with nothing to send: a sleep of at most
        the poll interval, or a wait for a store that cannot be written."""
        return max(self.settings.poll_s, STORE_WAIT_S)

    def _expect(self, seconds: float) -> None:
        self.due_by = time.monotonic() + seconds + STORE_SLACK_S

    def answering(self) -> bool:
        """The lane's thread runs and is not past its deadline."""
        return self.is_alive() and time.monotonic() <= self.due_by

    def idle_wait(self) -> float:
        """Seconds to sleep: the poll interval, or less when a delivery or the end of the
        back-off falls due sooner."""
        conn = self.store.conn
        due = outbox.next_due(conn, self.destination_name)
        if due is None:
            return self.settings.poll_s
        at = max(due, backoff.waiting_until(conn, self.destination_name))
        return max(MIN_WAIT_S, min(self.settings.poll_s, at - time.time()))


def batch_limit_s(settings: SenderSettings, count: int) -> float:
    """Seconds a batch of `count` objects may take at most: the connection and the
    association's negotiation (a connect timeout each), then a DIMSE timeout per object and
    one for the release."""
    return 2 * settings.connect_timeout_s + (count + 1) * settings.dimse_timeout_s


class Liveness:
    """The sender's answer to its watchdog: the listening loop goes round and every lane
    answers."""

    def __init__(self, lanes: list[Lane], settings: SenderSettings) -> None:
        self.lanes = lanes
        self.limit_s = settings.poll_s + STORE_SLACK_S
        self.round_at = time.monotonic()

    def round(self) -> None:
        """The listening loop went round once more."""
        self.round_at = time.monotonic()

    def working(self) -> bool:
        stuck = [lane.destination_name for lane in self.lanes if not lane.answering()]
        if stuck:
            log.error("lanes not answering: %s", ", ".join(stuck))
        late = time.monotonic() - self.round_at > self.limit_s
        if late:
            log.error("the sender's listening loop has not gone round for too long")
        return not stuck and not late


def _on_signals(stop: threading.Event, bell: Doorbell) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()
        bell.ring()  # wake the listening loop now rather than at the next poll

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
