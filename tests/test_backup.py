"""Backups and restores on real stores: a backup taken while a real receiver process takes
images is consistent (integrity check, counts and files match its manifest) and restores into a
fresh data folder; later backups hard-link what the previous one holds; a damaged backup is
refused, and so is a restore while the roles run."""

from __future__ import annotations

import argparse
import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

from appliance.cli.backup import register
from appliance.config import Settings
from appliance.dicomout.scu import Peer, send
from appliance.domain import Origin, Source, StoreStatus
from appliance.imaging.header import read_header
from appliance.paths import resolve_paths
from appliance.samples import write_sample
from appliance.store import Store, audit, open_store
from appliance.store import backup as backup_module
from appliance.store.backup import (
    DATABASE,
    BackupError,
    backups_in,
    copy_database,
    last_backup,
    make_backup,
    restore_backup,
    verify_backup,
)

from conftest import RoleProcess, make_settings, receive_sample, wait_for

ORIGIN = Origin(Source.DICOM, calling_aet="MODALITY", peer_address="127.0.0.1")


def settings_for(tmp_path: Path, data: str = "data", **sections: Any) -> Settings:
    storage = {"free_space_floor_mb": 1, "data_dir": str(tmp_path / data)}
    return make_settings(tmp_path, storage=storage, **sections)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(settings_for(tmp_path, backup={"keep": 2}))
    (tmp_path / "in").mkdir()
    for seed in range(3):
        receive_sample(opened, tmp_path / "in", seed)
    yield opened
    opened.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_restored(data_dir: Path, manifest: dict[str, Any]) -> None:
    """The restored store passes SQLite's integrity check, and its images, their files and
    their checksums are those the manifest counts."""
    conn = sqlite3.connect(data_dir / DATABASE)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = conn.execute(
            "SELECT file_name, sha256 FROM instances WHERE state = 'present'"
        ).fetchall()
    finally:
        conn.close()
    assert len(rows) == manifest["counts"]["instances"]
    spool_files = list((data_dir / "spool" / "objects").glob("*/*.dcm"))
    assert len(spool_files) == manifest["counts"]["spool_files"] == len(rows)
    for name, digest in rows:
        assert sha256(data_dir / "spool" / "objects" / name) == digest


# --- while images arrive ------------------------------------------------------------------------


class Pusher:
    """A modality sending images to the receiver, a few per association, until stopped."""

    def __init__(self, address: tuple[str, int], folder: Path) -> None:
        self.peer = Peer(*address)
        self.folder = folder
        self.acknowledged: list[str] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.seed = 1000

    def push(self, count: int) -> None:
        files = []
        for _ in range(count):
            self.seed += 1
            path = self.folder / f"pushed-{self.seed}.dcm"
            write_sample(path, "ct", seed=self.seed, rows=64, columns=64)
            files.append(path)
        for result in send(files, self.peer):
            if result.status == StoreStatus.SUCCESS:
                self.acknowledged.append(str(pydicom.dcmread(result.path).SOPInstanceUID))
            else:
                self.failures.append(result.message)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.push(3)

    def __enter__(self) -> Pusher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=120)


def test_a_backup_taken_while_images_arrive_is_consistent_and_restores(
    role_process: Any, tmp_path: Path
) -> None:
    proc: RoleProcess = role_process("receiver", storage={"free_space_floor_mb": 1})
    proc.start()
    inputs = tmp_path / "in"
    inputs.mkdir()
    pusher = Pusher(("127.0.0.1", proc.port), inputs)
    pusher.push(5)
    store = open_store(proc.settings)
    try:
        with pusher:
            before = set(pusher.acknowledged)
            wait_for(lambda: len(pusher.acknowledged) > len(before), what="images arriving")
            first = make_backup(store, tmp_path / "backups")
            second = make_backup(store, tmp_path / "backups")
            arrived = len(pusher.acknowledged)
            wait_for(lambda: len(pusher.acknowledged) > arrived, what="more images arriving")
        assert pusher.failures == []
        with pytest.raises(BackupError, match="receiver is running"):
            restore_backup(second.folder, proc.paths)
    finally:
        store.close()
        proc.stop()

    for made in (first, second):
        manifest = verify_backup(made.folder)
        uids = backed_up_uids(made.folder)
        assert before <= uids <= set(pusher.acknowledged)
        assert manifest["counts"]["instances"] == len(uids) == manifest["counts"]["spool_files"]
    assert second.linked >= first.counts["spool_files"]  # nothing copied twice

    fresh = settings_for(tmp_path, data="restored")
    result = restore_backup(second.folder, resolve_paths(fresh))
    assert result.aside is None and result.copied == len(second.manifest["files"])
    check_restored(tmp_path / "restored", second.manifest)
    restored = open_store(fresh)  # and the roles can use it
    try:
        assert restored.summary().instances == second.counts["instances"]
        assert audit.recent(restored.conn, "backup.restored")
    finally:
        restored.close()


def backed_up_uids(folder: Path) -> set[str]:
    conn = sqlite3.connect(folder / DATABASE)
    try:
        rows = conn.execute("SELECT sop_instance_uid FROM instances WHERE state = 'present'")
        return {row[0] for row in rows}
    finally:
        conn.close()


# --- folders, links, keeping --------------------------------------------------------------------


def test_later_backups_link_unchanged_files_and_only_the_newest_are_kept(
    store: Store, tmp_path: Path
) -> None:
    first = make_backup(store)
    assert first.folder.parent == store.paths.data_dir / "backups"
    assert (first.copied, first.linked) == (3, 0)
    receive_sample(store, tmp_path / "in", 10)
    second = make_backup(store)
    assert (second.copied, second.linked) == (1, 3)
    name = next(iter(first.manifest["files"]))
    assert (first.folder / name).stat().st_ino == (second.folder / name).stat().st_ino
    third = make_backup(store)

    assert backups_in(first.folder.parent) == [second.folder, third.folder]  # keep: 2
    assert third.removed == [first.folder]
    assert (second.folder / name).is_file()  # a link removed with the old backup, not the file
    verify_backup(third.folder)


def test_the_outcome_of_each_backup_is_recorded_failed_or_not(store: Store, tmp_path: Path) -> None:
    made = make_backup(store)
    entry = last_backup(store.conn)
    assert entry is not None and entry["ok"] and entry["folder"] == str(made.folder)
    assert audit.recent(store.conn, "backup.made")

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the backups should go")
    with pytest.raises(BackupError, match="not-a-folder"):
        make_backup(store, blocked)

    entry = last_backup(store.conn)
    assert entry is not None and not entry["ok"] and entry["reason"]
    assert audit.recent(store.conn, "backup.failed")[0]["detail"]["folder"] == str(blocked)
    assert backups_in(made.folder.parent) == [made.folder]  # the good one is kept


def test_an_image_replaced_while_files_are_copied_is_left_out_of_a_consistent_backup(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = store.conn.execute("SELECT id, file_name FROM instances ORDER BY id").fetchone()

    def snapshot_then_resend(source: Path, dest: Path) -> None:
        copy_database(source, dest)
        # A corrected copy of the first image arrives just after the snapshot: the file the
        # snapshot names is replaced (and removed) before the backup copies it.
        ds = pydicom.dcmread(store.file_of(first["id"]))
        ds.PatientName = "CORRECTED^NAME"
        corrected = tmp_path / "in" / "corrected.dcm"
        ds.save_as(corrected, enforce_file_format=True)
        incoming = store.spool.new_tmp_path()
        incoming.write_bytes(corrected.read_bytes())
        store.ingest(incoming, read_header(incoming), ORIGIN)

    monkeypatch.setattr(backup_module, "copy_database", snapshot_then_resend)
    made = make_backup(store)

    assert made.manifest["vanished"] == [f"spool/objects/{first['file_name']}"]
    assert made.counts["instances"] == made.counts["spool_files"] == 2
    manifest = verify_backup(made.folder)
    fresh = settings_for(tmp_path, data="restored")
    restore_backup(made.folder, resolve_paths(fresh))
    check_restored(tmp_path / "restored", manifest)


# --- checking and restoring ---------------------------------------------------------------------


def test_a_damaged_or_incomplete_backup_is_refused(store: Store, tmp_path: Path) -> None:
    made = make_backup(store)
    name = next(n for n in made.manifest["files"] if n.startswith("spool/"))
    target = made.folder / name
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.unlink()  # a new file: the data folder's copy is another link of the same one
    target.write_bytes(bytes(data))

    with pytest.raises(BackupError, match="differs from its manifest"):
        verify_backup(made.folder)
    target.unlink()
    with pytest.raises(BackupError, match="lacks"):
        restore_backup(made.folder, resolve_paths(settings_for(tmp_path, data="elsewhere")))
    assert not (tmp_path / "elsewhere" / DATABASE).exists()


def test_a_restore_puts_the_database_it_replaces_aside(store: Store, tmp_path: Path) -> None:
    made = make_backup(store)
    late = receive_sample(store, tmp_path / "in", 20)
    late_file = store.file_of(late)
    store.close()

    result = restore_backup(made.folder, store.paths)

    assert result.aside is not None and (result.aside / DATABASE).is_file()
    assert result.kept == 3 and result.copied == 0  # the files were already in place
    conn = sqlite3.connect(store.paths.data_dir / DATABASE)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        count = conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    finally:
        conn.close()
    assert count == 3
    assert late_file.exists()  # received after the backup: adopted again at the next start
    old = sqlite3.connect(result.aside / DATABASE)
    try:
        assert old.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 4
    finally:
        old.close()


def test_the_commands_back_up_and_restore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(tmp_path)
    config = tmp_path / "appliance.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    store = open_store(settings)
    (tmp_path / "in").mkdir()
    receive_sample(store, tmp_path / "in", 1)
    store.close()

    assert run_cli(config, "backup", str(tmp_path / "nightly")) == 0
    printed = capsys.readouterr().out
    [made] = backups_in(tmp_path / "nightly")
    assert f"backup: {made}" in printed and "images 1," in printed

    assert run_cli(config, "restore", str(made)) == 0
    printed = capsys.readouterr().out
    assert "restored" in printed and "before-restore-" in printed


def run_cli(config: Path, *words: str) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path)
    register(parser.add_subparsers())
    args = parser.parse_args(["--config", str(config), *words])
    code: int = args.func(args)
    return code
