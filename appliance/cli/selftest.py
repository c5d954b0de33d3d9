"""`appliance selftest`: is this box working? Golden inputs, then one image end to end.

1. Every configured model package is loaded as the worker loads it (same folders, backend
   and precision) and its golden inputs are run (`appliance.worker.selftest`): per package
   pass or fail, the largest difference from the golden outputs against the tolerance, and
   the seconds taken.
2. Loopback (unless `--no-loopback`): in a throwaway data folder a real receiver and worker
   of this installation are started as child processes (loopback address, a free port, the
   box's model settings, no destinations: nothing reaches the clinic's PACS), a phantom chest
   radiograph is sent to the receiver by C-STORE, and the command waits until the worker has
   finished its analysis in that store.

The exit status is 0 when everything passed, 1 otherwise, with the reason in plain words.
`appliance update` runs this after switching releases.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

import appliance
from appliance.cli.common import Subcommands, add_models_dir, settings_from
from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.paths import resolve_paths

if TYPE_CHECKING:
    from appliance.worker.selftest import SelfTest

LOOPBACK_TIMEOUT_S = 300.0  # a first TensorRT start builds its engines: minutes on a Jetson
STOP_TIMEOUT_S = 30.0
RECEIVER_READY = "receiver: listening"
WORKER_READY = "worker: ready"
CALLING_AET = "SELFTEST"
PHANTOM_SEED = 910001
# What a child must not inherit: systemd's notify and watchdog sockets belong to the unit that
# runs this command (the update service), and the configuration is given explicitly.
_NOT_INHERITED = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "APPLIANCE_CONFIG",
)


class SelfTestFailure(ApplianceError):
    """The loopback did not go through; the message says where it stopped."""


def register(sub: Subcommands) -> None:
    """Add `selftest` to the CLI's sub-commands."""
    parser = sub.add_parser(
        "selftest",
        help="run every model package's golden inputs, then one image through receiver, "
        "worker and store",
        description=(__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_models_dir(parser)
    parser.add_argument(
        "--no-loopback", action="store_true", help="only the golden inputs, no loopback image"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=LOOPBACK_TIMEOUT_S,
        metavar="S",
        help=f"seconds to wait for each loopback step (default {LOOPBACK_TIMEOUT_S:.0f})",
    )
    parser.set_defaults(func=cmd_selftest)


def cmd_selftest(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.models_dir:
        models = settings.models.model_copy(update={"dirs": list(args.models_dir)})
        settings = settings.model_copy(update={"models": models})
    problems = check_models(settings)
    if not args.no_loopback:
        try:
            seconds, note = loopback(settings, args.timeout)
            print(f"PASS loopback: analysed in {seconds:.1f} s{note}", flush=True)
        except SelfTestFailure as exc:
            print(f"FAIL loopback: {exc}", flush=True)
            problems.append(f"loopback: {exc}")
    if problems:
        print(f"selftest: FAILED ({len(problems)} problem(s)): " + "; ".join(problems))
        return 1
    print("selftest: passed")
    return 0


# --- the golden inputs -----------------------------------------------------------------------


def check_models(settings: Settings) -> list[str]:
    """Load every configured package as the worker does and print its self-test; the
    problems found, in plain words."""
    from appliance.runtime.errors import BackendError
    from appliance.worker.models import ModelSet

    try:
        models = ModelSet.load(settings.models, resolve_paths(settings).cache_dir)
    except BackendError as exc:
        print(f"FAIL models: the {settings.models.backend} backend cannot start: {exc}")
        return [f"the {settings.models.backend} backend cannot start: {exc}"]
    try:
        print(f"models: precision {models.precision} ({models.precision_reason})", flush=True)
        problems: list[str] = []
        tested = {check.folder for check in models.checks}
        for check in models.checks:
            print(_check_line(check), flush=True)
            if check.failed:
                problems.append(f"{check.name}: {check.reason}")
        for refused in models.refused:
            if refused.folder not in tested:  # refused before it could load
                print(f"FAIL {refused.folder}: {refused.reason}", flush=True)
                problems.append(f"{refused.folder.name}: {refused.reason}")
        for name in models.disabled:
            print(f"SKIP {name}: listed in models.disabled")
        if not models.checks and not models.refused:
            problems.append("no model package found in the configured folders")
            print(f"FAIL models: {problems[-1]}")
        return problems
    finally:
        models.close()


def _check_line(check: SelfTest) -> str:
    what = f"{check.name} {check.version} ({check.backend} {check.precision})"
    took = f"{check.seconds:.2f} s"
    if check.outcome == "untested":
        return f"UNTESTED {what}: {check.reason}; loaded in {took}"
    if check.largest is None:
        return f"FAIL {what}: {check.reason}; {took}"
    word = "PASS" if check.outcome == "passed" else "FAIL"
    return (
        f"{word} {what}: largest difference {check.largest:.2g} in {check.output!r}, "
        f"{check.tolerance:g} allowed; {took}"
    )


# --- the loopback image ----------------------------------------------------------------------


def loopback(settings: Settings, timeout_s: float) -> tuple[float, str]:
    """Send a phantom through a throwaway receiver and worker; the seconds from the C-STORE
    to the finished analysis, and a note (empty, or why no model ran)."""
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="appliance-st-")))
        config, port = write_loopback_config(settings, folder)
        env = _child_env()
        receiver = stack.enter_context(_role(config, "receiver", folder, env))
        worker = stack.enter_context(_role(config, "worker", folder, env))
        _wait_ready(receiver, RECEIVER_READY, "receiver", timeout_s)
        _wait_ready(worker, WORKER_READY, "worker", timeout_s)
        started = time.monotonic()
        _send_phantom(folder, port, settings.receiver.ae_title, timeout_s)
        state, reason = _wait_analysed(folder / "data" / "appliance.sqlite3", worker, timeout_s)
        seconds = time.monotonic() - started
    if state in ("failed", "held_back"):
        raise SelfTestFailure(f"the phantom's analysis ended {state.replace('_', ' ')}: {reason}")
    note = "" if state == "findings" else f" (no findings: {reason or state})"
    return seconds, note


def write_loopback_config(settings: Settings, folder: Path) -> tuple[Path, int]:
    """The box's settings on a throwaway data folder, the receiver alone on loopback at a free
    port, no destinations, no capture; the box's cache (built TensorRT engines) is shared."""
    data = settings.model_dump(mode="json")
    port = _free_port()
    data["storage"].update(
        data_dir=str(folder / "data"),
        cache_dir=str(resolve_paths(settings).cache_dir),
        free_space_floor_mb=1,
    )
    data["receiver"].update(
        bind_address="127.0.0.1",
        port=port,
        allowed_calling_aets=[],
        allowed_networks=[],
        tls={},
    )
    data["destinations"] = []
    data["capture"].update(source={"kind": "none"}, live_dir=str(folder / "live"))
    config = folder / "appliance.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return config, port


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child_env() -> dict[str, str]:
    """Our environment, without systemd's sockets, with this installation first on the path."""
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    root = str(Path(appliance.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextmanager
def _role(
    config: Path, role: str, folder: Path, env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`appliance ROLE` as a child writing to ROLE.log in `folder`; stopped at the end."""
    log = folder / f"{role}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance", "--config", str(config), role],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=folder,
        )
    try:
        yield process, log
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _tail(log: Path, lines: int = 12) -> str:
    text = log.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _wait_ready(
    child: tuple[subprocess.Popen[bytes], Path], marker: str, role: str, timeout_s: float
) -> None:
    process, log = child
    deadline = time.monotonic() + timeout_s
    while marker not in log.read_text(encoding="utf-8", errors="replace"):
        if process.poll() is not None:
            raise SelfTestFailure(
                f"the {role} stopped at start (status {process.returncode}):\n{_tail(log)}"
            )
        if time.monotonic() > deadline:
            raise SelfTestFailure(
                f"the {role} was not ready after {timeout_s:.0f} s:\n{_tail(log)}"
            )
        time.sleep(0.1)


def _send_phantom(folder: Path, port: int, ae_title: str, timeout_s: float) -> None:
    from appliance.dicomout import scu
    from appliance.phantoms import chest_dataset, make_chest

    path = folder / "phantom-chest.dcm"
    ds = chest_dataset(
        make_chest(PHANTOM_SEED, rows=512),
        patient_id="SELFTEST",
        patient_name="SELFTEST^LOOPBACK",
        study_key="appliance-selftest",
    )
    ds.save_as(path, enforce_file_format=True)
    peer = scu.Peer("127.0.0.1", port, called_aet=ae_title, calling_aet=CALLING_AET)
    try:
        results = list(scu.send([path], peer, timeout_s=min(timeout_s, 60.0)))
    except scu.AssociationError as exc:
        raise SelfTestFailure(f"the receiver did not take the phantom: {exc}") from exc
    if not results or not results[0].ok:
        why = results[0].message if results else "nothing was sent"
        raise SelfTestFailure(f"the receiver did not store the phantom: {why}")


def _wait_analysed(
    database: Path, worker: tuple[subprocess.Popen[bytes], Path], timeout_s: float
) -> tuple[str, str]:
    """The phantom's analysis state and reason once the worker has finished it."""
    from appliance.store import db, worklist

    process, log = worker
    deadline = time.monotonic() + timeout_s
    with closing(db.connect(database)) as conn:
        while True:
            studies = worklist.studies(conn)
            images = [i for s in studies for i in worklist.study_images(conn, s.study_id)]
            if images and images[0].state not in ("received", "analysing"):
                return images[0].state, images[0].reason
            if process.poll() is not None:
                raise SelfTestFailure(
                    f"the worker stopped (status {process.returncode}) before analysing the "
                    f"phantom:\n{_tail(log)}"
                )
            if time.monotonic() > deadline:
                state = images[0].state if images else "not in the store"
                raise SelfTestFailure(
                    f"the phantom was not analysed after {timeout_s:.0f} s (it is {state})"
                )
            time.sleep(0.1)
