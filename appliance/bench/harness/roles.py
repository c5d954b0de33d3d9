"""`appliance run` and `appliance ui` started for a benchmark, each on its own configuration
(a fresh data folder, loopback on free ports), watched while they run and stopped cleanly."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from appliance.bench.harness import BenchError
from appliance.bench.harness.processes import (
    checkout_env,
    free_ports,
    status_mb,
    stop_process,
    tail,
    wait_until,
)
from appliance.config import Settings, load_settings
from appliance.paths import resolve_paths
from appliance.store.benchmarks import open_read_only

READY_MARKER = "worker: ready"
CRASH_MARKER = "exited with status"  # the supervisor's line when a role dies
APPLIANCE_START_TIMEOUT_S = 120.0
APPLIANCE_STOP_TIMEOUT_S = 30.0
SERVING = re.compile(r"ui: serving on (http://[^\s/]+)/")


def write_config(folder: Path, storage: dict[str, Any], **sections: Any) -> tuple[Path, Settings]:
    """Default settings but for `storage`, the receiver and the UI on loopback at free ports,
    and `sections`; the file the appliance reads, and the settings this process reads it as."""
    folder.mkdir(parents=True, exist_ok=True)
    receiver_port, ui_port = free_ports(2)
    values = {
        "storage": storage,
        "receiver": {"bind_address": "127.0.0.1", "port": receiver_port},
        "ui": {"bind_address": "127.0.0.1", "port": ui_port},
        **sections,
    }
    config = folder / "appliance.yaml"
    config.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return config, load_settings(config)


def appliance_command(config: Path, role: str) -> list[str]:
    """`python -m appliance --config CONFIG ROLE` with this interpreter."""
    return [sys.executable, "-m", "appliance", "--config", str(config), role]


@contextmanager
def running_appliance(config: Path, log: Path) -> Iterator[Appliance]:
    """`appliance run` for the block: stopped with SIGINT at the end, killed on any error."""
    app = Appliance(config, log)
    try:
        yield app
    except BaseException:
        app.kill()
        raise
    app.stop()


@dataclass(frozen=True)
class RoleMemory:
    role: str
    pid: int
    hwm_mb: float  # VmHWM: the peak since the process started
    rss_mb: float  # VmRSS now


class Appliance:
    """`appliance run` in its own process group, its output copied to `log` and watched."""

    def __init__(self, config: Path, log: Path) -> None:
        settings = load_settings(config)
        self.port = settings.receiver.port
        self.database = resolve_paths(settings).database
        self.log = log
        self.ready_at: float | None = None
        self.crashed = ""
        self._ready = threading.Event()
        self._conn: sqlite3.Connection | None = None
        self.launched_at = time.time()
        self.process = subprocess.Popen(
            appliance_command(config, "run"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=checkout_env(PYTHONUNBUFFERED="1"),
            start_new_session=True,  # its children can be killed with it, and only they
        )
        self._reader = threading.Thread(target=self._read, name="appliance-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        """Copy the output to the log; note the worker's ready line and any role's crash."""
        assert self.process.stdout is not None
        with self.log.open("w", encoding="utf-8") as log:
            for raw in self.process.stdout:
                line = raw.decode("utf-8", errors="replace")
                if READY_MARKER in line and self.ready_at is None:
                    self.ready_at = time.time()
                    self._ready.set()
                if CRASH_MARKER in line and not self.crashed:
                    self.crashed = line.strip()
                log.write(line)
                log.flush()

    def check_alive(self) -> None:
        """BenchError if `appliance run` exited or restarted a crashed role."""
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"appliance run exited with {code}:\n{self.tail()}")
        if self.crashed:
            raise BenchError(f"a role crashed during the run: {self.crashed}\n{self.tail()}")

    def wait_ready(self) -> float:
        """The time the worker said it was ready."""
        wait_until(
            lambda: self._ready.wait(0.05),
            self.check_alive,
            lambda: f"no {READY_MARKER!r} within {APPLIANCE_START_TIMEOUT_S:.0f} s:\n{self.tail()}",
            APPLIANCE_START_TIMEOUT_S,
            interval_s=0.0,
        )
        assert self.ready_at is not None
        return self.ready_at

    def ready_line(self) -> str:
        """What the worker's ready line says it loaded, on which backend."""
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            if READY_MARKER in line:
                return line.split("): ", 1)[-1].strip()
        return "unknown"

    @property
    def conn(self) -> sqlite3.Connection:
        """A read-only connection to the store (the appliance creates it before accepting)."""
        if self._conn is None:
            self._conn = open_read_only(self.database)
        return self._conn

    def memory(self) -> tuple[RoleMemory, ...]:
        """VmHWM and VmRSS of each role process, read from /proc."""
        self.check_alive()
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="ascii").split()
        return tuple(
            RoleMemory(
                _role_of(int(c)), int(c), status_mb(int(c), "VmHWM"), status_mb(int(c), "VmRSS")
            )
            for c in children
        )

    def stop(self) -> None:
        """SIGINT, as Ctrl-C would; BenchError unless it stops cleanly in time."""
        self._close_conn()
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=APPLIANCE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            self.kill()
            raise BenchError(
                f"appliance run did not stop within {APPLIANCE_STOP_TIMEOUT_S:.0f} s of SIGINT"
            ) from exc
        self._reader.join(timeout=5)
        self._close_output()
        if code != 0:
            raise BenchError(f"appliance run exited with {code} on SIGINT:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the process group started for it: the supervisor and its roles."""
        self._close_conn()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._reader.join(timeout=5)
        self._close_output()

    def _close_output(self) -> None:
        """Close this end of the output pipe once the reader has read it to its end."""
        if self.process.stdout is not None and not self._reader.is_alive():
            self.process.stdout.close()

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def tail(self, lines: int = 15) -> str:
        return tail(self.log, lines)


def _role_of(pid: int) -> str:
    """The role a child runs: the last word of its command line (`... appliance worker`)."""
    words = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    return words[-1].decode(errors="replace")


@contextmanager
def running_ui(config: Path) -> Iterator[int]:
    """`appliance ui` on this configuration for the block; its port. Stopped with SIGTERM."""
    log = config.parent / "ui.log"
    with log.open("w", encoding="utf-8") as out:
        process = subprocess.Popen(
            appliance_command(config, "ui"),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=checkout_env(PYTHONUNBUFFERED="1"),
        )
    try:
        yield _wait_serving(process, log)
    finally:
        stop_process(process, "appliance ui")


def _wait_serving(process: subprocess.Popen[bytes], log: Path) -> int:
    def port() -> int | None:
        match = SERVING.search(log.read_text(encoding="utf-8", errors="replace"))
        return int(match.group(1).rsplit(":", 1)[1]) if match else None

    def alive() -> None:
        if process.poll() is not None:
            raise BenchError(f"appliance ui did not start:\n{_log_end(log)}")

    return wait_until(port, alive, lambda: f"appliance ui did not start:\n{_log_end(log)}")


def _log_end(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-2000:]
