"""`appliance run`: roles as child processes, restarted when they crash, stopped on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from appliance.dicomout.scu import Peer, echo
from appliance.errors import ApplianceError

from conftest import REPO, make_settings, wait_for


def answers(peer: Peer) -> bool:
    try:
        return echo(peer, timeout_s=2) == 0
    except ApplianceError:
        return False


def role_pids(parent: int) -> dict[str, int]:
    """The supervisor's children by role (the last word of their command line)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    roles = {}
    for pid in children:
        try:
            words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue  # exited meanwhile
        if len(words) >= 2:  # a zombie has no command line; a fresh fork has its parent's
            roles[words[-2].decode()] = int(pid)  # cmdline ends with a NUL
    return roles


def start_run(tmp_path: Path) -> tuple[subprocess.Popen[str], Peer]:
    """`appliance run` on loopback, with its output kept; returns once every role is up."""
    settings = make_settings(tmp_path)
    config = tmp_path / "appliance.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    peer = Peer("127.0.0.1", settings.receiver.port)
    run = subprocess.Popen(
        [sys.executable, "-m", "appliance", "--config", str(config), "run"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_for(
            lambda: (
                answers(peer) and set(role_pids(run.pid)) == {"receiver", "worker", "sender", "ui"}
            )
        )
    except BaseException:
        run.kill()
        raise
    return run, peer


@pytest.mark.slow
def test_roles_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    run, peer = start_run(tmp_path)
    try:
        roles = role_pids(run.pid)
    finally:
        run.kill()
        run.communicate()
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in roles.values()))
    assert not answers(peer)


@pytest.mark.slow
def test_run_restarts_a_crashed_role_and_stops_cleanly(tmp_path: Path) -> None:
    run, peer = start_run(tmp_path)
    try:
        first = role_pids(run.pid)
        os.kill(first["receiver"], signal.SIGKILL)  # a crash of the role, not of the supervisor
        wait_for(
            lambda: (
                role_pids(run.pid).get("receiver") not in (None, first["receiver"])
                and answers(peer)
            )
        )
        assert role_pids(run.pid)["worker"] == first["worker"]  # the others keep running
        run.send_signal(signal.SIGINT)
        output, _ = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0
    assert "Traceback" not in output, output  # every role stopped cleanly
    assert "DICOM port" in output
    assert "role receiver exited with status -9; restarting" in output
    assert not answers(peer)
