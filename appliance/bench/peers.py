"""The receivers under test (ours, DCMTK's storescp, a stock pynetdicom SCP) and the sender.

DCMTK's storescu sends to every receiver.

Every run gets a fresh receiver process on a fresh folder, so that repeated runs of the same files
are not answered as duplicates and every accepted file can be counted.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

import appliance
from appliance.errors import ApplianceError

AE_TITLE = "APPLIANCE"
CALLING_AE = "BENCH"
PDU_BYTES = 131072  # the largest PDU DCMTK offers; every receiver gets PDUs of this size
# The largest PDU our receiver, and the stock pynetdicom SCP, accept: 0 is no limit (pynetdicom's
# maximum_pdu_size); storescu then sends PDU_BYTES.
OUR_MAX_PDU = 0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
# Debian's DCMTK leaves Nagle's algorithm on, which stalls every small object on a delayed ACK
# (tens of ms; 11 instead of ~1,000 images/s here). DCMTK reads this variable to turn it off, so
# that storescu sends, and storescp receives, at their best.
_DCMTK_ENV = {"TCP_NODELAY": "1"}
# Exit statuses that mean "stopped by our SIGTERM": handled (ours) or killed by it (the others).
_STOPPED = (0, -signal.SIGTERM)


class BenchError(ApplianceError):
    """A benchmark run went wrong (a peer did not start, a file did not arrive...)."""


@dataclass(frozen=True)
class Receiver:
    """A running receiver: where to send and where accepted files end up."""

    name: str
    port: int
    pid: int
    accepted: Path  # folder whose files are the accepted objects
    log: Path
    skip: str | None = None  # a sub-folder of `accepted` holding incoming, not accepted, files

    def count_accepted(self) -> int:
        return sum(
            1
            for path in self.accepted.rglob("*")
            if path.is_file() and self.skip not in path.relative_to(self.accepted).parts
        )


def check_dcmtk() -> None:
    """Raise BenchError unless DCMTK's storescu, storescp and echoscu are on the PATH."""
    for tool in ("storescu", "storescp", "echoscu"):
        dcmtk(tool)


@functools.cache
def dcmtk(tool: str) -> str:
    """The path of DCMTK's `tool`: the first on the PATH that says it is DCMTK's.

    pynetdicom installs apps of the same names (storescu, storescp, echoscu) into a virtual
    environment's bin folder, which comes first on the PATH when it is activated.
    """
    others = []
    for folder in os.get_exec_path():
        path = shutil.which(tool, path=folder)
        if path is None:
            continue
        version = subprocess.run([path, "--version"], capture_output=True, check=False)
        if b"$dcmtk:" in version.stdout:
            return path
        others.append(path)
    also = f" (only {', '.join(others)}, which are not DCMTK's)" if others else ""
    raise BenchError(f"DCMTK's {tool} is not on the PATH{also}; on Debian: apt install dcmtk")


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


@contextmanager
def run_ours(folder: Path) -> Iterator[Receiver]:
    """Our receiver (`python -m appliance receiver`) on its own config and data folder."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = folder / "appliance.yaml"
    config.write_text(_config_yaml(folder / "data", port), encoding="utf-8")
    log = folder / "receiver.log"
    command = [sys.executable, "-m", "appliance", "--config", str(config), "receiver"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_env())
    receiver = Receiver("ours", port, process.pid, folder / "data" / "spool", log, skip="tmp")
    with _stopped_at_exit(process, receiver):
        _wait_for_line(process, receiver, "listening")
        yield receiver


@contextmanager
def run_storescp(folder: Path) -> Iterator[Receiver]:
    """DCMTK's storescp in its default single-process mode, accepting every storage SOP class."""
    received = folder / "received"
    received.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "storescp.log"
    command = [dcmtk("storescp"), "-dhl", "-pm", "+xa", "-aet", AE_TITLE]
    command += ["-pdu", str(PDU_BYTES), "-od", str(received), str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_dcmtk_env())
    receiver = Receiver("storescp", port, process.pid, received, log)
    with _stopped_at_exit(process, receiver):
        _wait_for_echo(process, receiver)
        yield receiver


@contextmanager
def run_pynetdicom(folder: Path) -> Iterator[Receiver]:
    """A stock pynetdicom SCP (plainscp.py): our contexts, one plain write per dataset."""
    received = folder / "received"
    received.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "plainscp.log"
    command = [sys.executable, "-m", "appliance.bench.plainscp", str(port), str(received)]
    command.append(str(OUR_MAX_PDU))
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_env())
    receiver = Receiver("pynetdicom", port, process.pid, received, log)
    with _stopped_at_exit(process, receiver):
        _wait_for_line(process, receiver, "listening")
        yield receiver


def send(receiver: Receiver, groups: Sequence[Sequence[Path]], logs: Path) -> float:
    """Send each group with its own storescu (one association each), all started together.

    Returns the seconds from the first start to the last exit. Raises BenchError if any sender
    fails, quoting its output.
    """
    logs.mkdir(parents=True, exist_ok=True)
    outputs = [logs / f"storescu-{receiver.name}-{i}.log" for i in range(len(groups))]
    env = _dcmtk_env()
    with ExitStack() as stack:
        handles = [stack.enter_context(path.open("wb")) for path in outputs]
        start = time.perf_counter()
        processes = [
            subprocess.Popen(
                _storescu(receiver.port, group), stdout=h, stderr=subprocess.STDOUT, env=env
            )
            for group, h in zip(groups, handles, strict=True)
        ]
        codes = [p.wait() for p in processes]
        elapsed = time.perf_counter() - start
    for code, output in zip(codes, outputs, strict=True):
        if code != 0:
            raise BenchError(
                f"storescu to {receiver.name} exited with {code}:\n{_tail(output)}"
                f"{receiver.name} log:\n{_tail(receiver.log)}"
            )
    return elapsed


def _storescu(port: int, files: Sequence[Path]) -> list[str]:
    options = ["-aet", CALLING_AE, "-aec", AE_TITLE, "--max-send-pdu", str(PDU_BYTES)]
    # Long timeouts: a single-process storescp serves concurrent senders one after another.
    options += ["-ta", "600", "-ts", "600"]
    return [dcmtk("storescu"), *options, "127.0.0.1", str(port), *(str(f) for f in files)]


def _config_yaml(data_dir: Path, port: int) -> str:
    settings = {
        "storage": {"data_dir": str(data_dir), "free_space_floor_mb": 0},
        "receiver": {
            "ae_title": AE_TITLE,
            "bind_address": "127.0.0.1",
            "port": port,
            "max_pdu_bytes": OUR_MAX_PDU,
        },
    }
    return yaml.safe_dump(settings, sort_keys=False)


def _dcmtk_env() -> dict[str, str]:
    return {**os.environ, **_DCMTK_ENV}


def _env() -> dict[str, str]:
    """Our environment, with this checkout first on the path so the receiver runs this code."""
    root = str(Path(appliance.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _wait_for_line(process: subprocess.Popen[bytes], receiver: Receiver, marker: str) -> None:
    """Wait until the receiver writes `marker` to its log; raise if it exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while marker.encode() not in receiver.log.read_bytes():
        _check_alive(process, receiver.name, receiver.log)
        if time.monotonic() > deadline:
            raise BenchError(
                f"{receiver.name} did not say {marker!r} within {START_TIMEOUT_S:.0f} s:\n"
                f"{_tail(receiver.log)}"
            )
        time.sleep(0.05)


def _wait_for_echo(process: subprocess.Popen[bytes], receiver: Receiver) -> None:
    """Wait until the receiver answers a C-ECHO; raise if it exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT_S
    address = ["127.0.0.1", str(receiver.port)]
    command = [dcmtk("echoscu"), "-aet", CALLING_AE, "-aec", AE_TITLE, *address]
    while subprocess.run(command, capture_output=True, check=False).returncode != 0:
        _check_alive(process, receiver.name, receiver.log)
        if time.monotonic() > deadline:
            raise BenchError(
                f"{receiver.name} did not answer C-ECHO within {START_TIMEOUT_S:.0f} s:\n"
                f"{_tail(receiver.log)}"
            )
        time.sleep(0.05)


def _check_alive(process: subprocess.Popen[bytes], name: str, log: Path) -> None:
    code = process.poll()
    if code is not None:
        raise BenchError(f"{name} exited with {code} while starting:\n{_tail(log)}")


@contextmanager
def _stopped_at_exit(process: subprocess.Popen[bytes], receiver: Receiver) -> Iterator[None]:
    """SIGTERM the receiver when the block ends; an unclean stop is an error."""
    try:
        yield
    finally:
        process.terminate()
        try:
            code = process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            process.kill()
            process.wait()
            raise BenchError(
                f"{receiver.name} did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM"
            ) from exc
    if code not in _STOPPED:
        raise BenchError(f"{receiver.name} exited with {code} on SIGTERM:\n{_tail(receiver.log)}")


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return "".join(f"  | {line}\n" for line in text)
