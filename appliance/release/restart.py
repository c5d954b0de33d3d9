"""Restarting the roles after `current` moved: through systemd on a box, or through a command
given by whoever runs the roles otherwise (`appliance run`, the tests), or not at all.

With systemd the receiver is restarted first and on its own: it starts in a second or two when
it does not share the processor with the worker loading its models, and modalities are turned
away only for that long. The other roles follow together. Only units that were running are
restarted (a role the site does not use stays stopped).
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)
RECEIVER_UNIT = "appliance-receiver.service"
OTHER_UNITS = ("appliance-worker.service", "appliance-sender.service", "appliance-ui.service")
_TIMEOUT_S = 180.0  # a unit's stop waits for a C-STORE in progress (TimeoutStopSec=30)


class RestartFailed(Exception):
    """The roles could not be restarted; the message says which and why."""


class Restarter(Protocol):
    """How the roles are restarted on this box."""

    restarts: bool  # False: nothing is restarted, so no role can be expected back

    def restart(self, version: str) -> None:
        """Restart the roles so that they run the release `current` now points at."""

    def stop(self) -> None:
        """Stop the roles before the database is restored (where that is possible)."""


@dataclass
class NoRestart:
    """`--no-restart`: the caller restarts the roles when it suits it."""

    restarts: bool = False

    def restart(self, version: str) -> None:
        log.info(
            "update: roles not restarted (--no-restart); they run %s when next started", version
        )

    def stop(self) -> None:
        return None


@dataclass
class CommandRestart:
    """`--restart-command CMD`: a shell command, with APPLIANCE_RELEASE set to the version."""

    command: str
    timeout_s: float = _TIMEOUT_S
    restarts: bool = True

    def restart(self, version: str) -> None:
        env = {**os.environ, "APPLIANCE_RELEASE": version}
        try:
            result = subprocess.run(
                ["/bin/sh", "-c", self.command],
                env=env,
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RestartFailed(
                f"the restart command did not finish within {self.timeout_s:.0f} s"
            ) from None
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()[-1000:]
            raise RestartFailed(
                f"the restart command failed (exit status {result.returncode}): {output}"
            )

    def stop(self) -> None:
        return None  # the command restarts; the restore runs under roles that are restarted after


@dataclass
class SystemdRestart:
    """The units of the box, through systemctl; only those running when the update began."""

    systemctl: str = "systemctl"
    active: list[str] = field(default_factory=list)
    restarts: bool = True

    def __post_init__(self) -> None:
        if not self.active:
            self.active = [u for u in (RECEIVER_UNIT, *OTHER_UNITS) if self._is_active(u)]

    def _is_active(self, unit: str) -> bool:
        result = subprocess.run(
            [self.systemctl, "is-active", "--quiet", unit], capture_output=True, check=False
        )
        return result.returncode == 0

    def restart(self, version: str) -> None:
        if RECEIVER_UNIT in self.active:
            self._run("restart", [RECEIVER_UNIT])
        others = [u for u in self.active if u != RECEIVER_UNIT]
        if others:
            self._run("restart", others)

    def stop(self) -> None:
        if self.active:
            self._run("stop", list(self.active))

    def _run(self, verb: str, units: list[str]) -> None:
        try:
            result = subprocess.run(
                [self.systemctl, verb, *units],
                capture_output=True,
                text=True,
                timeout=_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RestartFailed(f"systemctl {verb} {' '.join(units)}: {exc}") from None
        if result.returncode != 0:
            raise RestartFailed(
                f"systemctl {verb} {' '.join(units)} failed: {result.stderr.strip()[-500:]}"
            )
