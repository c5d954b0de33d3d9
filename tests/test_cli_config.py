"""The CLI finds the box's configuration without `--config` ($APPLIANCE_CONFIG, else
/etc/appliance/appliance.yaml when it exists) and says which configuration and data folder it
uses; with the box's configuration and no data folder set, the data is the box's
(/var/lib/appliance below the same root), as the units have it, also in a shell.

The box's files live below a throwaway root in tmp_path: nothing here touches the real /etc."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.cli.common import find_config, with_box_folders
from appliance.config import load_settings
from appliance.store import open_store, users

REPO = Path(__file__).resolve().parents[1]
CONFIG = "storage:\n  data_dir: null\n  free_space_floor_mb: 1\nsite_name: Box\n"


def box_config(root: Path, text: str = CONFIG) -> Path:
    path = root / "etc" / "appliance" / "appliance.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


@pytest.fixture
def shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A shell in an unrelated folder, with none of systemd's folders set."""
    for name in ("APPLIANCE_CONFIG", "STATE_DIRECTORY", "CACHE_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def test_the_configuration_is_found_in_order(tmp_path: Path) -> None:
    box = tmp_path / "etc" / "appliance" / "appliance.yaml"
    given = tmp_path / "given.yaml"
    named = {"APPLIANCE_CONFIG": str(tmp_path / "named.yaml")}
    assert find_config(None, {}, box) is None  # no file on this box: built-in defaults
    box.parent.mkdir(parents=True)
    box.write_text(CONFIG)
    assert find_config(None, {}, box) == box
    assert find_config(None, named, box) == tmp_path / "named.yaml"
    assert find_config(given, named, box) == given
    assert find_config(None, {"APPLIANCE_CONFIG": "  "}, box) == box  # blank: not set


def test_status_in_a_shell_reads_the_box_store_and_says_so(
    tmp_path: Path, shell: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    config = box_config(root)
    data = root / "var" / "lib" / "appliance"
    settings = with_box_folders(load_settings(config), config, {})
    store = open_store(settings)  # the box's store, with something in it
    try:
        users.create_user(store.conn, "ada", "Ada", "admin", "2468", "test")
    finally:
        store.close()
    monkeypatch.setenv("APPLIANCE_CONFIG", str(config))
    assert main(["status"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"appliance: configuration {config}, data {data}"]
    assert f"data folder: {data}\n" in out
    assert not (shell / "var").exists()  # no empty store made where the shell stood


def test_systemd_folders_and_the_configuration_own_setting_win(
    tmp_path: Path, shell: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    config = box_config(root)
    monkeypatch.setenv("APPLIANCE_CONFIG", str(config))
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    assert main(["status", "--studies", "0"]) == 0
    assert f"data {tmp_path / 'state'}\n" in capsys.readouterr().err
    monkeypatch.delenv("STATE_DIRECTORY")
    own = tmp_path / "site.yaml"  # a file outside the box's layout: folders as before
    own.write_text(f"storage:\n  data_dir: {tmp_path / 'own'}\n  free_space_floor_mb: 1\n")
    assert main(["--config", str(own), "status", "--studies", "0"]) == 0
    assert capsys.readouterr().err == f"appliance: configuration {own}, data {tmp_path / 'own'}\n"


def test_without_any_configuration_the_defaults_are_named(
    shell: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if Path("/etc/appliance/appliance.yaml").exists():  # a real box: its file is the default
        pytest.fail("this test expects a machine without /etc/appliance/appliance.yaml")
    assert main(["status", "--studies", "0"]) == 0
    err = capsys.readouterr().err
    assert err == f"appliance: configuration built-in defaults, data {shell / 'var' / 'data'}\n"


def test_a_configuration_named_but_missing_is_a_plain_error(tmp_path: Path, shell: Path) -> None:
    env = {**os.environ, "APPLIANCE_CONFIG": str(tmp_path / "nowhere.yaml")}
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "status"],
        capture_output=True,
        text=True,
        env=env,
        cwd=shell,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert str(tmp_path / "nowhere.yaml") in done.stderr and "Traceback" not in done.stderr
    assert not (shell / "var").exists()
