"""Run the UI role: the Flask app behind waitress, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import signal
from types import FrameType

from waitress.server import create_server

from appliance.config import Settings
from appliance.paths import Paths
from appliance.store import status, users
from appliance.web import create_app
from appliance.web.db import store_of

log = logging.getLogger(__name__)


def serve(settings: Settings, paths: Paths) -> int:
    """Serve the UI; on a store without an admin, print a one-time set-up code first."""
    app = create_app(settings, paths)
    cfg = settings.ui
    server = create_server(app, host=cfg.bind_address, port=cfg.port, threads=cfg.threads)
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
    _on_signals()
    try:
        server.run()  # returns once a signal's SystemExit reached it
    finally:
        server.close()
        beat.stop()
        store_of(app).close()
    return 0


def _on_signals() -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        # Raised in the main thread, inside waitress' loop: run() catches SystemExit, stops
        # its request threads and returns. Closing the sockets from another thread instead
        # raced the loop's select() (EBADF, exit 1).
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
