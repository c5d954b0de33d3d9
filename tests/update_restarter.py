"""The `--restart-command` of tests/test_update.py: stops the receiver named in the pid file and
starts the receiver of the release `current` points at, in a session of its own (it outlives
this script, as a role under systemd outlives `systemctl restart`).

`--migrate` first changes the store as a newer release's migration would (a table of its own
and a higher schema version) when the release being started is not the first one: the old
release then refuses the store until the update restores its backup.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import yaml


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return state in ("Z", "X")  # exited; waits only for its parent to read its status


def _stop(pidfile: Path) -> None:
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while not _gone(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _migrate(config: Path) -> None:
    data = Path(yaml.safe_load(config.read_text())["storage"]["data_dir"])
    conn = sqlite3.connect(data / "appliance.sqlite3", isolation_level=None)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        conn.execute("CREATE TABLE IF NOT EXISTS newer_release (id INTEGER PRIMARY KEY)")
        conn.execute(f"PRAGMA user_version = {version + 1}")
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--pidfile", type=Path, required=True)
    parser.add_argument("--migrate", action="store_true")
    args = parser.parse_args()
    _stop(args.pidfile)
    current = args.root / "opt" / "appliance" / "current"
    # The release being started is a newer one only when it is not the first installed.
    if args.migrate and os.environ.get("APPLIANCE_RELEASE", "0.1.0") != "0.1.0":
        _migrate(args.config)
    program = current / "venv" / "bin" / "appliance"
    log = (args.root / "receiver.log").open("ab")
    process = subprocess.Popen(
        [str(program), "--config", str(args.config), "receiver"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    args.pidfile.write_text(str(process.pid))


if __name__ == "__main__":
    main()
