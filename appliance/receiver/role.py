"""Run the receiver role in the foreground until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from appliance import notify
from appliance.config import Settings
from appliance.imaging.header import read_header
from appliance.paths import Paths
from appliance.receiver.scp import Receiver
from appliance.store import open_store, status

log = logging.getLogger(__name__)


def serve(settings: Settings, paths: Paths) -> int:
    """Reconcile the store, listen, and block until asked to stop."""
    store = open_store(settings, paths)
    report = store.reconcile(read_header)
    if report.repairs or report.tmp_removed:
        print(
            f"receiver: store reconciled ({report.repairs} repairs, "
            f"{report.tmp_removed} unfinished transfers removed)",
            flush=True,
        )
    receiver = Receiver(settings, store)
    stop = threading.Event()
    _on_signals(stop)
    receiver.start()
    host, port = receiver.address
    ae_title = settings.receiver.ae_title
    beat = status.RoleBeat(store, "receiver", host=host, port=port, ae_title=ae_title)
    tls = receiver.tls_address
    on_tls = "" if tls is None else f" and {tls[0]}:{tls[1]} (TLS)"
    print(
        f"receiver: listening as AE {settings.receiver.ae_title!r} on {host}:{port}{on_tls} "
        f"(data in {paths.data_dir})",
        flush=True,
    )
    notify.ready(f"listening on {host}:{port}{on_tls}")
    watchdog = notify.Watchdog(receiver.serving).start()
    stop.wait()
    log.info("receiver stopping")
    notify.stopping()
    watchdog.stop()
    beat.stop()
    receiver.stop()
    store.close()
    return 0


def _on_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
