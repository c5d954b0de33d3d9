"""Checking a bundle before an update (appliance.release.bundle) on small bundles made here with
openssl, the switch of `current`, the database's restore, and the incoming folder. The whole
update on real bundles is tests/test_update.py."""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from appliance.config import Settings
from appliance.release.bundle import BundleRefused, private_copy, verify
from appliance.release.incoming import take_incoming
from appliance.release.journal import Journal, back_up, give_owner_of, restore, schema_version
from appliance.release.layout import Layout
from appliance.release.rollback import RollbackRefused, roll_back
from appliance.release.update import Options

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def _key(folder: Path, name: str = "key") -> tuple[Path, Path]:
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(private)], check=True
    )
    subprocess.run(
        ["openssl", "pkey", "-in", str(private), "-pubout", "-out", str(public)], check=True
    )
    return private, public


def _sign(private: Path, content: bytes, folder: Path) -> bytes:
    data, sig = folder / "sums", folder / "sums.sig"
    data.write_bytes(content)
    command = ["openssl", "pkeyutl", "-sign", "-inkey", str(private), "-rawin"]
    subprocess.run([*command, "-in", str(data), "-out", str(sig)], check=True)
    return sig.read_bytes()


def _bundle(
    folder: Path,
    private: Path,
    *,
    machine: str = "",
    python: str = PYTHON,
    extra: dict[str, bytes] | None = None,
    change: dict[str, bytes] | None = None,
    signed: bool = True,
    name: str = "b.bundle",
) -> Path:
    """A bundle like bundle.sh's: members, their SHA256SUMS and its signature; `extra` members
    are added after the list was made, `change` replaces members after it was signed."""
    manifest = {"version": "9.9.9", "target": "t", "python": python}
    manifest["machine"] = machine or platform.machine()
    members = {
        "install.sh": b"#!/bin/bash\nexit 0\n",
        "bundle.json": json.dumps(manifest).encode(),
        "wheels/a.whl": b"wheel",
    }
    sums = "".join(f"{hashlib.sha256(c).hexdigest()}  {n}\n" for n, c in members.items()).encode()
    members["SHA256SUMS"] = sums
    if signed:
        members["SHA256SUMS.sig"] = _sign(private, sums, folder)
    members.update(extra or {})
    members.update(change or {})
    path = folder / name
    with tarfile.open(path, "w") as tar:
        for member, content in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return _key(tmp_path)


def test_a_signed_intact_bundle_for_this_box_is_taken(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    info = verify(_bundle(tmp_path, private), public)
    assert (info.version, info.python, info.machine) == ("9.9.9", PYTHON, platform.machine())


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"change": {"wheels/a.whl": b"other"}}, "does not match its checksum"),
        ({"signed": False}, "not signed"),
        ({"extra": {"wheels/b.whl": b"x"}}, "which its checksum list does not name"),
        ({"machine": "sparc64"}, "is for sparc64"),
        ({"python": "2.7"}, "is for Python 2.7"),
        ({"change": {"SHA256SUMS": b"0" * 64 + b"  wheels/a.whl\n"}}, "does not match the release"),
    ],
)
def test_a_bundle_that_is_not_right_is_refused_with_the_reason(
    tmp_path: Path, keys: tuple[Path, Path], kwargs: dict[str, object], words: str
) -> None:
    private, public = keys
    bundle = _bundle(tmp_path, private, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(BundleRefused, match=words):
        verify(bundle, public)


def test_a_bundle_signed_by_another_key_or_not_a_tar_or_without_a_key_is_refused(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    _, public = keys
    other, _ = _key(tmp_path, "other")
    with pytest.raises(BundleRefused, match="another key"):
        verify(_bundle(tmp_path, other), public)
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(BundleRefused, match="not a release bundle"):
        verify(junk, public)
    with pytest.raises(BundleRefused, match="no release key"):
        verify(_bundle(tmp_path, keys[0]), tmp_path / "missing.pub")


def test_links_and_names_outside_the_bundle_are_refused(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    for name, kind in (("../evil", tarfile.REGTYPE), ("wheels/link", tarfile.SYMTYPE)):
        path = _bundle(tmp_path, private, name=f"{kind!r}.bundle")
        with tarfile.open(path, "a") as tar:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd"
            tar.addfile(info, io.BytesIO(b""))
        with pytest.raises(BundleRefused, match=r"outside its own folder|not a plain file"):
            verify(path, public)


def test_current_is_switched_by_a_rename_and_previous_remembered(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    for version in ("1.0", "1.1"):
        (layout.program(version).parent).mkdir(parents=True)
        layout.program(version).write_text("")
    layout.switch("1.0")
    inode = os.lstat(layout.current).st_ino
    layout.remember_previous("1.0")
    layout.switch("1.1")
    assert os.readlink(layout.current) == "releases/1.1"
    assert os.lstat(layout.current).st_ino != inode  # a new link, renamed over the old one
    assert (layout.current_version(), layout.previous_version()) == ("1.1", "1.0")
    assert [p.name for p in layout.opt.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(FileNotFoundError):
        layout.switch("2.0")
    with pytest.raises(ValueError, match="current"):
        layout.remove("1.1")


def test_a_restore_brings_back_content_and_schema_version_in_the_live_file(
    tmp_path: Path,
) -> None:
    database = tmp_path / "appliance.sqlite3"
    conn = sqlite3.connect(database, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE audit (id INTEGER PRIMARY KEY, at, actor, action, subject, detail)")
    conn.execute("CREATE TABLE images (name TEXT)")
    conn.execute("INSERT INTO images VALUES ('kept')")
    conn.execute("PRAGMA user_version = 3")
    journal = Journal(database, "1 -> 2")
    journal.step("verified")
    back_up(database, tmp_path / "backups" / "pre.sqlite3")
    journal.step("backed_up")
    conn.execute("INSERT INTO images VALUES ('after')")  # a newer release's migration and use
    conn.execute("CREATE TABLE newer (x)")
    conn.execute("PRAGMA user_version = 4")
    inode = database.stat().st_ino
    restore(tmp_path / "backups" / "pre.sqlite3", database)
    journal.write_again(1)
    assert schema_version(database) == 3
    assert conn.execute("SELECT name FROM images").fetchall() == [("kept",)]
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'newer'").fetchall() == []
    actions = [row[0] for row in conn.execute("SELECT action FROM audit ORDER BY id")]
    assert actions == ["update.verified", "update.backed_up"]  # the second written again
    assert database.stat().st_ino == inode
    conn.close()


def test_the_oldest_uploaded_bundle_is_taken_out_of_the_incoming_folder(tmp_path: Path) -> None:
    incoming = tmp_path / "updates" / "incoming"
    assert take_incoming(tmp_path) is None
    incoming.mkdir(parents=True)
    (incoming / "notes.txt").write_text("not a bundle")
    first, second = incoming / "appliance-1.0-x.bundle", incoming / "appliance-1.1-x.bundle"
    first.write_bytes(b"1")
    os.utime(first, (1, 1))
    second.write_bytes(b"2")
    taken = take_incoming(tmp_path)
    assert taken == tmp_path / "updates" / "working" / first.name
    assert taken.read_bytes() == b"1" and not first.exists()
    assert sorted(p.name for p in incoming.iterdir()) == ["appliance-1.1-x.bundle", "notes.txt"]


def test_rollback_by_hand_restores_the_database_only_when_asked_and_needed(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "root")
    for version in ("1.0", "1.1"):
        layout.program(version).parent.mkdir(parents=True)
        layout.program(version).write_text("")
    layout.remember_previous("1.0")
    layout.switch("1.1")
    settings = Settings.model_validate({"storage": {"data_dir": str(tmp_path / "data")}})
    options = Options(settings=settings, config=None, layout=layout, say=lambda _: None)
    database = options.database
    database.parent.mkdir()
    conn = sqlite3.connect(database, isolation_level=None)
    conn.execute("CREATE TABLE audit (id INTEGER PRIMARY KEY, at, actor, action, subject, detail)")
    conn.execute("PRAGMA user_version = 3")
    back_up(database, database.parent / "backups" / "pre-update-1.0-1.1.sqlite3")
    conn.execute("CREATE TABLE newer (x)")
    conn.execute("PRAGMA user_version = 4")  # release 1.1 migrated it
    conn.close()
    with pytest.raises(RollbackRefused, match="--restore-backup"):
        roll_back(options)
    assert layout.current_version() == "1.1"
    done = roll_back(options, restore_backup=True)
    assert (done.current, done.previous) == ("1.1", "1.0")
    assert layout.current_version() == "1.0" and layout.previous_version() == "1.1"
    assert schema_version(database) == 3
    # Going forward again needs no restore: the newer release migrates the store itself.
    assert roll_back(options).backup is None
    assert layout.current_version() == "1.1"


def test_the_update_works_on_a_private_copy_and_never_follows_a_link(tmp_path: Path) -> None:
    """A bundle dropped where the UI's user can write is copied before it is checked, so it
    cannot be swapped between the check and the install; a link is refused outright."""
    dropped = tmp_path / "incoming" / "appliance-1.bundle"
    dropped.parent.mkdir()
    dropped.write_bytes(b"bundle bytes")
    copy = private_copy(dropped, tmp_path / "private")
    assert copy.read_bytes() == b"bundle bytes" and copy.parent == tmp_path / "private"
    assert (copy.parent.stat().st_mode & 0o777) == 0o700
    dropped.write_bytes(b"swapped")  # what happens to the original no longer matters
    assert copy.read_bytes() == b"bundle bytes"
    link = tmp_path / "incoming" / "appliance-2.bundle"
    link.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_bytes(b"x")
    with pytest.raises(BundleRefused, match="cannot open it as a plain file"):
        private_copy(link, tmp_path / "private")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands files to another owner")
def test_side_files_that_are_links_are_never_handed_over(tmp_path: Path) -> None:
    database = tmp_path / "appliance.sqlite3"
    database.write_bytes(b"")
    os.chown(database, 4321, 4321)
    precious = tmp_path / "shadow"
    precious.write_bytes(b"secret")
    (tmp_path / "appliance.sqlite3-journal").symlink_to(precious)
    give_owner_of(database)
    assert precious.stat().st_uid == 0
