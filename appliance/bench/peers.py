"""The receivers under test (ours, DCMTK's storescp, a stock pynetdicom SCP) and the sender.

DCMTK's storescu sends to every receiver.

Every run gets a fresh receiver process on a fresh folder, so that repeated runs of the same files
are not answered as duplicates and every accepted file can be counted.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from appliance.bench.harness import BenchError
from appliance.bench.harness.dicom import AE_TITLE
from appliance.bench.harness.processes import (
    check_running,
    checkout_env,
    stop_process,
    tail,
    wait_until,
)

# free_port is also imported from here by tests/test_receiver_corpus.py.
from appliance.bench.harness.processes import free_port as free_port

CALLING_AE = "BENCH"
PDU_BYTES = 131072  # the largest PDU DCMTK offers; every receiver gets PDUs of this size
# The largest PDU our receiver, and the stock pynetdicom SCP, accept: 0 is no limit (pynetdicom's
# maximum_pdu_size); storescu then sends PDU_BYTES.
OUR_MAX_PDU = 0
# Debian's DCMTK leaves Nagle's algorithm on, which stalls every small object on a delayed ACK
# (tens of ms; 11 instead of ~1,000 images/s here). DCMTK reads this variable to turn it off, so
# that storescu sends, and storescp receives, at their best.
_DCMTK_ENV = {"TCP_NODELAY": "1"}
# Exit statuses that mean "stopped by our SIGTERM": handled (ours) or killed by it (the others).
_STOPPED = (0, -signal.SIGTERM)


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


@contextmanager
def run_ours(folder: Path) -> Iterator[Receiver]:
    """Our receiver (`python -m appliance receiver`) on its own config and data folder."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = folder / "appliance.yaml"
    config.write_text(_config_yaml(folder / "data", port), encoding="utf-8")
    command = [sys.executable, "-m", "appliance", "--config", str(config), "receiver"]
    receiver = Receiver("ours", port, 0, folder / "data" / "spool", folder / "receiver.log", "tmp")
    with _started(receiver, command, checkout_env()) as (process, started):
        _wait_for_line(process, started, "listening")
        yield started


@contextmanager
def run_storescp(folder: Path) -> Iterator[Receiver]:
    """DCMTK's storescp in its default single-process mode, accepting every storage SOP class."""
    receiver = _receiving("storescp", folder)
    command = [dcmtk("storescp"), "-dhl", "-pm", "+xa", "-aet", AE_TITLE]
    command += ["-pdu", str(PDU_BYTES), "-od", str(receiver.accepted), str(receiver.port)]
    with _started(receiver, command, _dcmtk_env()) as (process, started):
        _wait_for_echo(process, started)
        yield started


@contextmanager
def run_pynetdicom(folder: Path) -> Iterator[Receiver]:
    """A stock pynetdicom SCP (plainscp.py): our contexts, one plain write per dataset."""
    receiver = _receiving("pynetdicom", folder, log="plainscp.log")
    command = [sys.executable, "-m", "appliance.bench.plainscp", str(receiver.port)]
    command += [str(receiver.accepted), str(OUR_MAX_PDU)]
    with _started(receiver, command, checkout_env()) as (process, started):
        _wait_for_line(process, started, "listening")
        yield started


def _receiving(name: str, folder: Path, log: str = "") -> Receiver:
    """A peer's receiver (not started yet): a fresh `received` folder and a free port."""
    received = folder / "received"
    received.mkdir(parents=True, exist_ok=True)
    return Receiver(name, free_port(), 0, received, folder / (log or f"{name}.log"))


@contextmanager
def _started(
    receiver: Receiver, command: list[str], env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], Receiver]]:
    """The receiver's process, its output to its log, for the block; stopped with SIGTERM at
    the end (an unclean stop is an error). The receiver is given with the process's pid."""
    with receiver.log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    started = dataclasses.replace(receiver, pid=process.pid)
    try:
        yield process, started
    finally:
        code = stop_process(process, receiver.name)
    if code not in _STOPPED:
        raise BenchError(f"{receiver.name} exited with {code} on SIGTERM:\n{tail(receiver.log)}")


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
                f"storescu to {receiver.name} exited with {code}:\n{tail(output)}"
                f"{receiver.name} log:\n{tail(receiver.log)}"
            )
    return elapsed


def _storescu(port: int, files: Sequence[Path]) -> list[str]:
    options = ["-aet", CALLING_AE, "-aec", AE_TITLE, "--max-send-pdu", str(PDU_BYTES)]
    # Long timeouts: a single-process storescp serves concurrent senders one after another.
    options += ["-ta", "600", "-ts", "600"]
    return [dcmtk("storescu"), *options, "127.0.0.1", str(port), *(str(f) for f in files)]


def _config_yaml(data_dir: Path, port: int) -> str:
    settings = {
        "storage": {"data_dir": str(data_dir), "free_space_floor_mb": 1},
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


def _wait_for_line(process: subprocess.Popen[bytes], receiver: Receiver, marker: str) -> None:
    """Wait until the receiver writes `marker` to its log; raise if it exits or takes too long."""
    wait_until(
        lambda: marker.encode() in receiver.log.read_bytes(),
        lambda: check_running(process, receiver.name, receiver.log),
        lambda: f"{receiver.name} did not say {marker!r} in time:\n{tail(receiver.log)}",
    )


def _wait_for_echo(process: subprocess.Popen[bytes], receiver: Receiver) -> None:
    """Wait until the receiver answers a C-ECHO; raise if it exits or takes too long."""
    address = ["127.0.0.1", str(receiver.port)]
    command = [dcmtk("echoscu"), "-aet", CALLING_AE, "-aec", AE_TITLE, *address]
    wait_until(
        lambda: subprocess.run(command, capture_output=True, check=False).returncode == 0,
        lambda: check_running(process, receiver.name, receiver.log),
        lambda: f"{receiver.name} did not answer C-ECHO in time:\n{tail(receiver.log)}",
    )
