"""Child processes of a benchmark: the environment that runs this checkout, free loopback ports,
waiting for a condition while the child lives, stopping it, and its memory from /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import appliance
from appliance.bench.harness import BenchError

Found = TypeVar("Found")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


def checkout_env(**extra: str) -> dict[str, str]:
    """Our environment, with this checkout first on the path so the child runs this code."""
    root = str(Path(appliance.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return {**env, **extra}


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    (port,) = free_ports(1)
    return port


def free_ports(count: int) -> list[int]:
    """`count` different TCP ports on loopback that nothing listens on right now (held open
    together while chosen, so two calls cannot hand out the same one)."""
    with contextlib.ExitStack() as stack:
        socks = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def wait_until(
    found: Callable[[], Found | None],
    alive: Callable[[], None],
    failure: Callable[[], str],
    timeout_s: float = START_TIMEOUT_S,
    interval_s: float = 0.05,
) -> Found:
    """What `found` gives once it gives something; `alive` raises if the child died meanwhile,
    and BenchError(`failure()`) ends a wait longer than `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = found()
        if value:
            return value
        alive()
        if time.monotonic() > deadline:
            raise BenchError(failure())
        time.sleep(interval_s)


def check_running(process: subprocess.Popen[bytes], name: str, log: Path) -> None:
    """BenchError, quoting its log, if the child already exited."""
    code = process.poll()
    if code is not None:
        raise BenchError(f"{name} exited with {code} while starting:\n{tail(log)}")


def stop_process(
    process: subprocess.Popen[bytes], name: str, how: signal.Signals = signal.SIGTERM
) -> int:
    """Signal the child and wait for it; BenchError (after SIGKILL) if it takes too long.

    Returns its exit status, for the caller to judge.
    """
    if process.poll() is not None:
        return process.returncode
    process.send_signal(how)
    try:
        return process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        process.kill()
        process.wait()
        raise BenchError(
            f"{name} did not stop within {STOP_TIMEOUT_S:.0f} s of {how.name}"
        ) from exc


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log, indented for an error message."""
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return "".join(f"  | {line}\n" for line in text)


def status_mb(pid: int, field: str) -> float:
    """A memory field of /proc/<pid>/status (VmRSS, VmHWM...) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        name, _, value = line.partition(":")
        if name == field:
            number, unit = value.split()
            if unit != "kB":
                raise ValueError(f"unexpected unit {unit!r} for {field} in /proc/{pid}/status")
            return int(number) * 1024 / 1e6
    raise ValueError(f"no {field} in /proc/{pid}/status")
