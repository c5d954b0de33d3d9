"""The UI role as a real process: it serves, and SIGTERM or Ctrl-C stop it cleanly (exit 0,
no traceback), as `appliance run` and systemd stop it."""

from __future__ import annotations

import signal
import urllib.request
from collections.abc import Callable

import pytest

from conftest import RoleProcess


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_ui_role_stops_cleanly_on_a_signal(
    role_process: Callable[..., RoleProcess], sig: int
) -> None:
    for _ in range(3):  # the stop used to race waitress' select loop: try it more than once
        proc = role_process("ui", ready="ui: serving on")
        proc.start()
        url = f"http://127.0.0.1:{proc.settings.ui.port}/signin"  # -> /setup: no admin yet
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200
        code = proc.stop(sig)
        output = "".join(proc.output)
        assert code == 0, output
        assert "Traceback" not in output, output
