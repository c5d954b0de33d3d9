"""Logging set-up: plain lines to stdout, which journald captures on a device."""

import logging
import sys


def setup_logging(level: str = "INFO") -> None:
    """Send log records to stdout. No patient identifiers are logged at INFO and above."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs every PDU at INFO; its own warnings are enough for operators.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))
