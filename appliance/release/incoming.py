"""Bundles uploaded on the admin's update page: the UI (which may not write /opt) leaves them in
DATA/updates/incoming/, systemd's appliance-update.path sees the folder change and starts
appliance-update.service, which runs `appliance update --incoming` as root: this module picks
the bundle up.

The UI writes a bundle under another folder and renames it in when it is whole, so a file here
is complete. The one taken is moved out first (the folder is then empty for the next upload,
and a second start of the service finds nothing) and deleted once the update has ended: its
outcome is in the audit trail.
"""

from __future__ import annotations

import re
from pathlib import Path

# The same names as the update page's (web/updates.py; the roles share no code).
INCOMING = Path("updates") / "incoming"
WORKING = Path("updates") / "working"
BUNDLE_NAME = re.compile(r"appliance-[A-Za-z0-9][A-Za-z0-9._+-]{0,80}\.bundle")


def take_incoming(data_dir: Path) -> Path | None:
    """The oldest bundle waiting in DATA/updates/incoming/, moved to DATA/updates/working/;
    None when none waits. Files with other names are left alone."""
    folder = data_dir / INCOMING
    if not folder.is_dir():
        return None
    waiting = [
        p for p in folder.iterdir() if p.is_file() and BUNDLE_NAME.fullmatch(p.name) is not None
    ]
    if not waiting:
        return None
    oldest = min(waiting, key=lambda p: p.stat().st_mtime)
    working = data_dir / WORKING
    working.mkdir(parents=True, exist_ok=True)
    taken = working / oldest.name
    oldest.replace(taken)
    return taken
