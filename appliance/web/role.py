"""Run the UI role: the Flask app behind waitress, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import resource
import signal
import threading
import time
from types import FrameType
from typing import Any

from waitress.server import create_server

from appliance import notify
from appliance.config import Settings
from appliance.paths import Paths
from appliance.store import status, users
from appliance.web import create_app
from appliance.web.db import store_of

log = logging.getLogger(__name__)

# Connections waitress holds at once. Past this it stops accepting, so idle connections must
# not fill it: the default of 100 let 100 idle sockets take the UI down. Each is a descriptor
# (see _descriptors_for).
CONNECTION_LIMIT = 500
# Seconds a connection may sit without a request before waitress closes it, and how often it
# looks (a live stream in progress is never idle: it has a request).
CHANNEL_TIMEOUT_S = 30
CLEANUP_INTERVAL_S = 10
# The loop turns at least once a second (waitress' poll time-out); this long without a turn
# and the watchdog stops pinging.
LOOP_STUCK_S = 30.0
_SPARE_DESCRIPTORS = 64  # the store, the log, the worker threads' files


def serve(settings: Settings, paths: Paths) -> int:
    """Serve the UI; on a store without an admin, print a one-time set-up code first."""
    app = create_app(settings, paths)
    cfg = settings.ui
    limit = _descriptors_for(CONNECTION_LIMIT)
    server = create_server(
        app,
        host=cfg.bind_address,
        port=cfg.port,
        threads=cfg.threads,
        connection_limit=limit,
        channel_timeout=CHANNEL_TIMEOUT_S,
        cleanup_interval=CLEANUP_INTERVAL_S,
        asyncore_use_poll=True,  # select() fails past descriptor 1023
        # Behind the TLS proxy the app reads X-Forwarded-For/-Proto itself, from this machine
        # only (web.FromProxy); without it waitress drops them, as by default.
        clear_untrusted_proxy_headers=not cfg.behind_tls,
        ident="appliance",
    )
    host = "127.0.0.1" if cfg.bind_address in ("0.0.0.0", "::") else cfg.bind_address
    print(f"ui: serving on http://{host}:{server.effective_port}/", flush=True)
    conn = store_of(app).conn
    if not users.has_admin(conn):
        code = users.new_setup_code(conn)
        print(
            f"ui: first start: open http://{host}:{server.effective_port}/setup and enter "
            f"the set-up code {code} to create the administrator",
            flush=True,
        )
    beat = status.RoleBeat(store_of(app), "ui", host=host, port=server.effective_port)
    loop = LoopTurns(server)
    watchdog = notify.Watchdog(loop.turning).start()
    _on_signals()
    notify.ready(f"serving on {host}:{server.effective_port}")
    try:
        server.run()  # returns once a signal's SystemExit reached it
    finally:
        notify.stopping()
        watchdog.stop()
        server.close()
        beat.stop()
        store_of(app).close()
    return 0


class LoopTurns:
    """Whether waitress' loop still turns: it asks the listening socket `readable()` on every
    turn, so that call is counted. A loop stuck anywhere stops the watchdog's pings."""

    def __init__(self, server: Any) -> None:
        self._last = time.monotonic()
        self._lock = threading.Lock()
        readable = server.readable

        def counted() -> bool:
            with self._lock:
                self._last = time.monotonic()
            return bool(readable())

        server.readable = counted

    def turning(self) -> bool:
        with self._lock:
            return time.monotonic() - self._last < LOOP_STUCK_S


def _descriptors_for(connections: int) -> int:
    """Raise this process's open-file limit to fit `connections` (systemd's default soft
    limit is 1024) and return how many connections do fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + _SPARE_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        soft = ceiling
    if soft == resource.RLIM_INFINITY:
        return connections
    fits = max(soft - _SPARE_DESCRIPTORS, 10)
    if fits < connections:
        log.warning("only %d open files allowed: the UI takes at most %d connections", soft, fits)
    return min(connections, fits)


def _on_signals() -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        # Raised in the main thread, inside waitress' loop: run() catches SystemExit, stops
        # its request threads and returns. Closing the sockets from another thread instead
        # raced the loop's select() (EBADF, exit 1).
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
