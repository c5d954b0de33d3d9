"""`appliance export STUDY DEST`: the study named by its UID, accession number or id is
written as a File-set into a new folder under DEST (read back with pydicom), audited; a study
that is unknown or ambiguous, and a DEST that is no folder or cannot be written, are refused
with the reason and exit status 2."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from appliance.cli import main
from appliance.config import Settings
from appliance.store import Store, open_store
from appliance.store.audit import recent

from conftest import REPO, make_settings
from test_dicomout_fileset import original_chest, read_fileset
from test_web_sending import Template, make_template, put_file


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return make_template(tmp_path_factory.mktemp("cli-export"))


@pytest.fixture
def config(template: Template, tmp_path: Path) -> Path:
    """A configuration file for a copy of the template's data folder."""
    import shutil

    shutil.copytree(template.root / "data", tmp_path / "data")
    settings = make_settings(tmp_path)
    path = tmp_path / "appliance.yaml"
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return path


@pytest.fixture
def store(config: Path) -> Iterator[Store]:
    opened = open_store(Settings.model_validate(yaml.safe_load(config.read_text())))
    yield opened
    opened.close()


@pytest.fixture
def stick(tmp_path: Path) -> Path:
    folder = tmp_path / "stick"
    folder.mkdir()
    return folder


def study_uid(store: Store) -> str:
    return str(store.conn.execute("SELECT study_uid FROM studies WHERE id = 1").fetchone()[0])


def test_the_command_writes_the_study_as_a_fileset(config: Path, stick: Path, store: Store) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "--config",
            str(config),
            "export",
            "ACC-42",
            str(stick),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    folder = stick / "ACC_42"
    assert re.search(rf"wrote 1 file\(s\), \d+ KiB, to {re.escape(str(folder))}\n", done.stdout)
    assert f"DICOMDIR: {folder / 'DICOMDIR'}" in done.stdout
    with read_fileset(folder / "DICOMDIR") as fileset:
        [instance] = fileset
        assert instance.load().PatientID == "EXP-001"
    [entry] = recent(store.conn, "export")
    assert (entry["actor"], entry["subject"]) == ("cli", "study:1")
    assert entry["detail"]["folder"] == str(folder)


def test_a_study_is_named_by_uid_accession_or_id(
    config: Path, stick: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in (study_uid(store), "ACC-42", "1"):
        assert main(["--config", str(config), "export", key, str(stick)]) == 0
    assert sorted(p.name for p in stick.iterdir()) == ["ACC_42", "ACC_42_2", "ACC_42_3"]
    assert capsys.readouterr().out.count("wrote 1 file(s)") == 3


def test_unknown_and_ambiguous_studies_are_refused(
    config: Path, stick: Path, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(config), "export", "NOPE-1", str(stick)]) == 2
    assert "no study has the UID, accession number or id 'NOPE-1'" in capsys.readouterr().err
    source = tmp_path / "other.dcm"
    original_chest(seed=9, accession="1").save_as(source, enforce_file_format=True)
    put_file(store, source)  # its accession number is study 1's id
    assert main(["--config", str(config), "export", "1", str(stick)]) == 2
    assert "'1' names 2 studies (ids 1, 2): give the Study Instance UID" in capsys.readouterr().err
    assert list(stick.iterdir()) == []


def test_a_destination_that_cannot_take_it_is_refused(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for dest, reason in (
        (tmp_path / "missing", "is not a folder"),
        (a_file, "is not a folder"),
        (Path("/proc"), "cannot write to /proc"),
    ):
        assert main(["--config", str(config), "export", "ACC-42", str(dest)]) == 2
        assert reason in capsys.readouterr().err
    assert not (tmp_path / "missing").exists() and not Path("/proc/ACC_42").exists()
