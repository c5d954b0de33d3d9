"""`appliance update` on a real installed box: two bundles built by deploy/bundle.sh, the first
installed into a throwaway root by install.sh, a receiver of that release running with images in
its store. A good update switches `current`, keeps the data and brings the receiver back (the
seconds it did not answer C-ECHO are measured); an update whose self-test fails is rolled back
(old release current, database as backed up); a tampered, unsigned, foreign or repeated bundle is
refused and changes nothing."""

from __future__ import annotations

import contextlib
import gc
import io
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from appliance.bench.harness.processes import free_ports
from appliance.dicomout import scu
from appliance.phantoms import chest_dataset, make_chest

from conftest import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1200),
    # pynetdicom leaves the socket of an association that failed (the receiver restarting)
    # to the garbage collector, which then warns; the probe collects it at once.
    pytest.mark.filterwarnings("ignore:unclosed <socket:ResourceWarning"),
]

REPO = Path(__file__).resolve().parent.parent
TARGET = f"{platform.machine()}-py{sys.version_info.major}.{sys.version_info.minor}"
RESTARTER = Path(__file__).with_name("update_restarter.py")


@dataclass(frozen=True)
class Bundles:
    old: Path  # 0.1.0
    new: Path  # 0.1.1
    broken: Path  # 0.1.2: a model package's golden outputs changed and resealed
    key: Path  # the private key that signed them
    folder: Path


def _build(key: Path, version: str, out: Path, models: list[Path] | None = None) -> Path:
    command = ["bash", str(REPO / "deploy" / "bundle.sh"), "--target", TARGET, "--key", str(key)]
    command += ["--version", version, "--out", str(out)]
    for folder in models or []:
        command += ["--models", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return out / f"appliance-{version}-{TARGET}.bundle"


def _break_golden(package: Path) -> None:
    """Change the expected outputs of a package's golden inputs and reseal its checksums: a
    package that is intact but no longer gives what it promises."""
    golden = package / "golden.npz"
    with np.load(golden) as data:
        arrays = {name: data[name] for name in data.files}
    for name in arrays:
        if name.startswith("output."):
            arrays[name] = (1.0 - arrays[name].astype(np.float32)).astype(arrays[name].dtype)
    with golden.open("wb") as handle:
        np.savez(handle, **arrays)
    sums = package / "SHA256SUMS"
    names = [line.split(maxsplit=1)[1].strip() for line in sums.read_text().splitlines()]
    result = subprocess.run(
        ["sha256sum", *names], cwd=package, capture_output=True, text=True, check=True
    )
    sums.write_text(result.stdout)


def _genkey(path: Path) -> None:
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(path)], check=True)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    if not (REPO / "deploy" / "locks" / f"{TARGET}.txt").is_file():
        pytest.skip(f"no lock file for this machine's target {TARGET}")
    folder = tmp_path_factory.mktemp("bundles")
    key = folder / "release-key.pem"
    _genkey(key)
    models = folder / "models"
    for package in sorted((REPO / "models").glob("demo-*")):
        shutil.copytree(package, models / package.name)
    _break_golden(models / "demo-chest-xray")
    return Bundles(
        old=_build(key, "0.1.0", folder),
        new=_build(key, "0.1.1", folder),  # the wheels come from the cache the first filled
        broken=_build(key, "0.1.2", folder, sorted(models.iterdir())),
        key=key,
        folder=folder,
    )


class Box:
    """A box installed below a throwaway root, with a receiver of its current release run by
    tests/update_restarter.py (which the update's --restart-command runs too)."""

    def __init__(self, root: Path, bundle: Path) -> None:
        self.root = root
        result = subprocess.run(
            [
                "bash",
                str(REPO / "deploy" / "install.sh"),
                str(bundle),
                "--root",
                str(root),
                "--no-systemd",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        self.config = root / "etc" / "appliance" / "appliance.yaml"
        self.port, ui_port = free_ports(2)
        settings = yaml.safe_load(self.config.read_text())
        # The C-ECHO probe opens 20 associations a second from one address: the per-address
        # cap (there against stalled peers) must not be what it measures.
        settings["receiver"].update(
            bind_address="127.0.0.1", port=self.port, max_associations_per_address=64
        )
        settings["receiver"]["max_associations"] = 64
        settings["ui"].update(bind_address="127.0.0.1", port=ui_port)
        settings["storage"]["free_space_floor_mb"] = 1
        self.config.write_text(yaml.safe_dump(settings))
        self.data = Path(settings["storage"]["data_dir"])
        self.database = self.data / "appliance.sqlite3"
        self.pidfile = root / "receiver.pid"

    @property
    def current(self) -> str:
        return os.readlink(self.root / "opt" / "appliance" / "current")

    def program(self) -> Path:
        return self.root / "opt" / "appliance" / "current" / "venv" / "bin" / "appliance"

    def restart_command(self, simulate_migration: bool = False) -> str:
        extra = " --migrate" if simulate_migration else ""
        return (
            f"{sys.executable} {RESTARTER} --root {self.root} --config {self.config}"
            f" --pidfile {self.pidfile}{extra}"
        )

    def start_receiver(self) -> None:
        subprocess.run(self.restart_command(), shell=True, check=True, timeout=60)
        wait_for(self.answers_echo, 60, what="the receiver to answer C-ECHO")

    def stop_receiver(self) -> None:
        if self.pidfile.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(self.pidfile.read_text()), signal.SIGKILL)

    def answers_echo(self) -> bool:
        """C-ECHO answered with success."""
        peer = scu.Peer("127.0.0.1", self.port, called_aet="APPLIANCE", calling_aet="PROBE")
        try:
            return scu.echo(peer, timeout_s=1.0) == 0
        except scu.AssociationError:
            # The failed association's socket is held by a reference cycle until collected;
            # left open it would count against the receiver's per-address cap and make the
            # probe itself the cause of refusals.
            gc.collect()
            return False

    def send_images(self, folder: Path, count: int) -> None:
        folder.mkdir(exist_ok=True)
        files = []
        for seed in range(count):
            ds = chest_dataset(make_chest(700 + seed, rows=256), patient_id=f"UPD{seed}")
            path = folder / f"image{seed}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        peer = scu.Peer("127.0.0.1", self.port, called_aet="APPLIANCE", calling_aet="MODALITY")
        assert all(result.ok for result in scu.send(files, peer, timeout_s=60))

    def update(self, bundle: Path, *options: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.program()), "--config", str(self.config), "update", str(bundle)]
        command += ["--root", str(self.root), "--health-timeout", "120", *options]
        return subprocess.run(command, capture_output=True, text=True, timeout=1500, check=False)

    def update_incoming(self) -> subprocess.CompletedProcess[str]:
        """What appliance-update.service runs when the update page has left a bundle."""
        command = [str(self.program()), "--config", str(self.config), "update", "--incoming"]
        command += ["--root", str(self.root), "--no-restart"]
        return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()


@pytest.fixture
def box(bundles: Bundles, tmp_path: Path) -> Iterator[Box]:
    made = Box(tmp_path / "root", bundles.old)
    yield made
    made.stop_receiver()


class EchoProbe:
    """C-ECHO every 50 ms from a thread; the longest time the receiver did not answer."""

    def __init__(self, box: Box) -> None:
        self.box = box
        self.answers: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> EchoProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.answers.append((time.monotonic(), self.box.answers_echo()))
            self._stop.wait(0.05)

    def longest_outage_s(self) -> float:
        """From the last answer before a run of failures to the first answer after it."""
        longest, last_ok, failing = 0.0, None, False
        for at, ok in self.answers:
            if ok:
                if failing and last_ok is not None:
                    longest = max(longest, at - last_ok)
                last_ok, failing = at, False
            else:
                failing = True
        return longest


def _instances(box: Box) -> int:
    return int(box.query("SELECT COUNT(*) FROM instances")[0][0])


def test_a_good_update_switches_keeps_the_data_and_brings_the_receiver_back(
    box: Box, bundles: Bundles, tmp_path: Path
) -> None:
    box.start_receiver()
    box.send_images(tmp_path / "images", 3)
    assert _instances(box) == 3
    with EchoProbe(box) as probe:
        result = box.update(bundles.new, "--restart-command", box.restart_command())
        wait_for(box.answers_echo, 60, what="the receiver after the update")
    assert result.returncode == 0, result.stdout + result.stderr
    assert box.current == "releases/0.1.1"
    assert _instances(box) == 3
    assert (box.data / "backups" / "pre-update-0.1.0-0.1.1.sqlite3").is_file()
    actions = [row[0] for row in box.query("SELECT action FROM audit WHERE actor = 'update'")]
    for step in ("verified", "installed", "backed_up", "switched", "restarted", "selftest"):
        assert f"update.{step}" in actions
    assert actions[-1] == "update.done"
    assert any(ok for _, ok in probe.answers) and not all(ok for _, ok in probe.answers)
    outage = probe.longest_outage_s()
    print(f"\nreceiver did not answer C-ECHO for {outage:.2f} s during the switch")
    listing = subprocess.run(
        [str(box.program()), "releases", "--root", str(box.root)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "0.1.1 (current)" in listing and "0.1.0 (previous)" in listing


def test_an_update_whose_selftest_fails_is_rolled_back(
    box: Box, bundles: Bundles, tmp_path: Path
) -> None:
    box.start_receiver()
    box.send_images(tmp_path / "images", 2)
    before_version = box.query("PRAGMA user_version")[0][0]
    # The restart also migrates the store as a newer release would: the old code refuses it,
    # so only a restored database lets the old receiver start again.
    restart = box.restart_command(simulate_migration=True)
    result = box.update(bundles.broken, "--restart-command", restart)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "self-test failed" in result.stdout
    assert "rolled back" in result.stdout
    assert box.current == "releases/0.1.0"
    assert not (box.root / "opt" / "appliance" / "releases" / "0.1.2").exists()
    backup = box.data / "backups" / "pre-update-0.1.0-0.1.2.sqlite3"
    assert box.query("PRAGMA user_version")[0][0] == before_version
    assert box.query("SELECT name FROM sqlite_master WHERE name = 'newer_release'") == []
    assert _dump_without_audit(box.database) == _dump_without_audit(backup)
    actions = [row[0] for row in box.query("SELECT action FROM audit WHERE actor = 'update'")]
    assert "update.failed" in actions and actions[-1] == "update.rolled_back"
    assert "update.switched" in actions  # written again after the restore
    wait_for(box.answers_echo, 60, what="the old release's receiver on the restored store")
    assert _instances(box) == 2


def _dump_without_audit(database: Path) -> list[str]:
    """The database's content as SQL, without the audit trail (the update adds to it) and the
    roles' heartbeats (the restarted receiver writes its own)."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return [
            line
            for line in conn.iterdump()
            if not line.startswith(('INSERT INTO "audit"', 'INSERT INTO "role_status"'))
        ]
    finally:
        conn.close()


def _rewrite(source: Path, dest: Path, change: dict[str, bytes | None]) -> Path:
    """A copy of a bundle with members replaced (bytes) or left out (None)."""
    with tarfile.open(source) as old, tarfile.open(dest, "w") as new:
        for member in old.getmembers():
            if member.name in change:
                content = change[member.name]
                if content is None:
                    continue
                member.size = len(content)
                new.addfile(member, _bytes_io(content))
            else:
                new.addfile(member, old.extractfile(member) if member.isfile() else None)
    return dest


def _bytes_io(content: bytes) -> io.BytesIO:
    return io.BytesIO(content)


def _sign(key: Path, content: bytes, folder: Path) -> bytes:
    data = folder / "SHA256SUMS"
    data.write_bytes(content)
    sig = folder / "sig"
    command = ["openssl", "pkeyutl", "-sign", "-inkey", str(key), "-rawin"]
    subprocess.run([*command, "-in", str(data), "-out", str(sig)], check=True)
    return sig.read_bytes()


def test_a_tampered_unsigned_foreign_or_current_bundle_is_refused_and_changes_nothing(
    box: Box, bundles: Bundles, tmp_path: Path
) -> None:
    box.start_receiver()
    box.send_images(tmp_path / "images", 1)
    box.stop_receiver()
    with tarfile.open(bundles.new) as tar:
        manifest = tar.extractfile("bundle.json").read()  # type: ignore[union-attr]
        sums = tar.extractfile("SHA256SUMS").read()  # type: ignore[union-attr]
    other_key = tmp_path / "other.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(other_key)], check=True
    )
    cases = {
        "it was changed": _rewrite(
            bundles.new,
            tmp_path / "tampered.bundle",
            {"bundle.json": manifest.replace(b"}", b" }")},
        ),
        "not signed": _rewrite(bundles.new, tmp_path / "unsigned.bundle", {"SHA256SUMS.sig": None}),
        "signed with another key": _rewrite(
            bundles.new,
            tmp_path / "foreign.bundle",
            {"SHA256SUMS.sig": _sign(other_key, sums, tmp_path)},
        ),
        "already the current one": bundles.old,
    }
    audit_before = box.query("SELECT COUNT(*) FROM audit")[0][0]
    data_before = _dump_without_audit(box.database)
    for words, bundle in cases.items():
        result = box.update(bundle, "--no-restart")
        assert result.returncode == 2, (words, result.stdout + result.stderr)
        assert "refused" in result.stdout and words in result.stdout, (words, result.stdout)
        assert box.current == "releases/0.1.0"
        assert sorted(p.name for p in (box.root / "opt" / "appliance" / "releases").iterdir()) == [
            "0.1.0"
        ]
    incoming = box.data / "updates" / "incoming"  # as the update page leaves it
    incoming.mkdir(parents=True)
    shutil.copy(cases["not signed"], incoming / "appliance-0.1.1-x.bundle")
    result = box.update_incoming()
    assert result.returncode == 2 and "not signed" in result.stdout, result.stdout + result.stderr
    assert list(incoming.iterdir()) == [] and list((incoming.parent / "working").iterdir()) == []
    assert _dump_without_audit(box.database) == data_before
    refusals = box.query(
        f"SELECT COUNT(*) FROM audit WHERE action = 'update.refused' AND id > {audit_before}"
    )
    assert refusals[0][0] == len(cases) + 1
    assert not (box.data / "backups").exists()
