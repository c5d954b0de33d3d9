"""One batch of deliveries to one destination on one association.

The files' presentation contexts come from their file meta alone; each file is read in full
only just before its C-STORE, so memory stays at one object however long the queue. Every
delivery of the batch ends the call as sent, failed (refused for good, with the reason) or
waiting again (the destination could not be reached, rejected us, went away or ran out of
room: the destination backs off, see `backoff`; the object in flight then waits a back-off of
its own, so that one the PACS always drops does not hold up the rest). A stop asked for
mid-batch lets the object in flight finish and puts the rest back, untried.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pynetdicom.association import Association

from appliance.config import Destination, SenderSettings
from appliance.dicomout import scu
from appliance.sender import backoff, reasons
from appliance.sender.reasons import Action
from appliance.store import Store, outbox
from appliance.store.db import transaction
from appliance.store.outbox import Delivery

log = logging.getLogger(__name__)
ACTOR = "sender"


@dataclass(frozen=True)
class Item:
    """A claimed delivery with its file and the (SOP class, transfer syntax) it needs."""

    delivery: Delivery
    path: Path
    sop_class: str
    syntax: str

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        return scu.context_key(self.sop_class, self.syntax)


class Courier:
    """Delivers batches to one destination, from the calling thread's store connection."""

    def __init__(
        self,
        store: Store,
        destination: Destination,
        calling_aet: str,
        settings: SenderSettings,
        stop: threading.Event,
    ) -> None:
        self.store = store
        self.destination = destination
        self.settings = settings
        self.stop = stop
        self.peer = scu.Peer(
            destination.host, destination.port, destination.called_ae_title, calling_aet
        )
        self.timeouts = scu.Timeouts(settings.connect_timeout_s, settings.dimse_timeout_s)
        self.tally: Counter[str] = Counter()
        self._got_through = False  # an object of this batch was sent: the back-off is over

    @property
    def conn(self) -> sqlite3.Connection:
        return self.store.conn

    def deliver(self, deliveries: list[Delivery]) -> None:
        """Send one claimed batch; every delivery leaves the `sending` state."""
        self.tally = Counter()
        self._got_through = False
        items = [item for item in (self._prepare(d) for d in deliveries) if item is not None]
        proposed = scu.propose((item.sop_class, item.syntax) for item in items)
        carried = set(proposed[: scu.MAX_CONTEXTS])
        later = _deliveries([item for item in items if item.key not in carried])
        self._put_back(later, reasons.NEXT_ASSOCIATION)
        items = [item for item in items if item.key in carried]
        if items:
            self._send(items, proposed[: scu.MAX_CONTEXTS])
        self._log_tally()

    def _prepare(self, delivery: Delivery) -> Item | None:
        """The delivery's file and context; a missing or unreadable file fails it here."""
        path = self._path_of(delivery)
        if path is None or not path.is_file():
            self._fail(delivery, reasons.FILE_MISSING)
            return None
        context = scu.file_context(path)
        if context is None:
            self._fail(delivery, reasons.FILE_UNREADABLE)
            return None
        return Item(delivery, path, *context)

    def _path_of(self, delivery: Delivery) -> Path | None:
        if not delivery.file_name:
            return None
        files = self.store.outputs if delivery.source == "output" else self.store.spool
        try:
            return files.path_of(delivery.file_name)
        except ValueError:  # not a name the box made: nothing to send
            return None

    def _send(self, items: list[Item], contexts: list[tuple[str, tuple[str, ...]]]) -> None:
        try:
            assoc = scu.open_association(self.peer, contexts, self.timeouts)
        except scu.AssociationError as exc:
            self._no_association(items, exc)
            return
        try:
            backoff.reached(self.conn, self.destination.name)
            self._store_all(assoc, items)
        finally:
            scu.release(assoc)

    def _no_association(self, items: list[Item], exc: scu.AssociationError) -> None:
        if exc.refused:  # the PACS answered, but takes none of these kinds of object
            backoff.reached(self.conn, self.destination.name)
            refused = {r.sop_class: r for r in exc.refused}
            for item in items:
                why = reasons.not_accepted(item.sop_class, refused.get(item.sop_class))
                self._fail(item.delivery, why)
            return
        reason = reasons.association_failed(exc, self.peer)
        self._trouble(reason, tried=[item.delivery for item in items])

    def _store_all(self, assoc: Association, items: list[Item]) -> None:
        refused = {r.sop_class: r for r in scu.refused_contexts(assoc)}
        for index, item in enumerate(items):
            if self.stop.is_set():
                self._put_back(_deliveries(items[index:]), reasons.STOPPED)
                return
            if not scu.can_send(assoc, item.sop_class, item.syntax):
                why = reasons.not_accepted(item.sop_class, refused.get(item.sop_class))
                self._fail(item.delivery, why)
                continue
            reply = scu.store_file(assoc, item.path, item.sop_class, item.syntax)
            if reply.lost:
                rest = _deliveries(items[index + 1 :])
                self._trouble(reasons.lost(reply.problem), [], rest, in_flight=item.delivery)
                return
            if reply.status is None:
                self._fail(item.delivery, self._not_sent(item, reply.problem))
                continue
            verdict = reasons.judge(reply.status, reply.comment, item.sop_class)
            if verdict.action is Action.RETRY:
                rest = _deliveries(items[index + 1 :])
                self._trouble(verdict.words, [], rest, verdict.summary, in_flight=item.delivery)
                return
            self._record(item.delivery, verdict)

    def _not_sent(self, item: Item, problem: str) -> str:
        if not item.path.is_file():  # removed between the batch's start and its turn
            return reasons.FILE_MISSING
        return reasons.could_not_send(problem)

    # ---- the outcomes, each with its audit row ---------------------------------------------

    def _record(self, delivery: Delivery, verdict: reasons.Verdict) -> None:
        if verdict.action is Action.SENT:
            with transaction(self.conn):
                outbox.mark_sent(self.conn, delivery, ACTOR, verdict.words)
                if not self._got_through:
                    backoff.delivered(self.conn, self.destination.name)
            self._got_through = True
            self.tally["sent with a warning" if verdict.words else "sent"] += 1
            if verdict.words:
                log.info("%s: %s", self.destination.name, verdict.summary)
        else:
            self._fail(delivery, verdict.words, verdict.summary)

    def _fail(self, delivery: Delivery, reason: str, summary: str = "") -> None:
        with transaction(self.conn):
            outbox.mark_failed(self.conn, delivery, ACTOR, reason)
        self.tally["failed"] += 1
        log.warning("%s: an object failed: %s", self.destination.name, summary or reason)

    def _put_back(self, deliveries: list[Delivery], reason: str) -> None:
        """Deliveries not tried this time (stop, too many kinds): due again at once."""
        if deliveries:
            with transaction(self.conn):
                outbox.put_back(self.conn, deliveries, ACTOR, reason, 0.0, tried=False)
            self.tally["put back"] += len(deliveries)

    def _trouble(
        self,
        reason: str,
        tried: list[Delivery],
        untried: list[Delivery] | None = None,
        summary: str = "",
        in_flight: Delivery | None = None,
    ) -> None:
        """The destination failed: everything not yet done waits, and it backs off; the
        object `in_flight` at the failure (tried) waits its own back-off as well."""
        groups = [(tried, True), (untried or [], False)]
        next_try = backoff.trouble(
            self.conn, self.destination.name, reason, self.settings, groups, ACTOR, in_flight
        )
        waiting = len(tried) + len(untried or []) + (in_flight is not None)
        self.tally["waiting"] += waiting
        log.warning(
            "%s: %s; %d object(s) wait, next try in %.1f s",
            self.destination.name,
            summary or reason,
            waiting,
            max(0.0, next_try - time.time()),
        )

    def _log_tally(self) -> None:
        if set(self.tally) - {"waiting"}:  # trouble alone was logged as it happened
            counts = ", ".join(f"{n} {what}" for what, n in sorted(self.tally.items()))
            log.info("%s: %s", self.destination.name, counts)


def _deliveries(items: list[Item]) -> list[Delivery]:
    return [item.delivery for item in items]
