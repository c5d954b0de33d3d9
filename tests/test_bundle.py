"""The offline bundle, end to end (long tests: they build real bundles of ~150 MB).

deploy/bundle.sh builds this machine's bundle with a throwaway key (the wheels it fetches are
kept in the wheel cache, so later runs need no network); deploy/install.sh installs it into a
throwaway root with --no-systemd and without any index; the installed `venv/bin/appliance`
roles then take a DICOM push and analyse it with the bundled models. A bundle changed after
signing is refused, and the Jetson (aarch64, Python 3.10) bundle is complete and signed.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.tags import Tag
from packaging.utils import canonicalize_name, parse_wheel_filename

from appliance.bench.harness.processes import free_ports
from appliance.phantoms import chest_dataset, make_chest

from conftest import REPO, needs_dcmtk, storescu, wait_for
from worker_fixtures import findings_of

pytestmark = pytest.mark.slow

HERE = f"{platform.machine()}-py{sys.version_info[0]}.{sys.version_info[1]}"
JETSON = "aarch64-py3.10"
VERSION = "0.1.0"


@dataclass(frozen=True)
class Built:
    bundle: Path
    key: Path  # the private key that signed it
    public: Path
    output: str


@dataclass(frozen=True)
class Installed:
    root: Path
    release: Path
    output: str
    seconds: float
    config: str  # the configuration as the installer wrote it (tests may edit the file later)


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        command, capture_output=True, text=True, timeout=900, check=False, **kwargs
    )


def make_key(folder: Path) -> tuple[Path, Path]:
    key, public = folder / "release.pem", folder / "release.pub"
    assert run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)]).returncode == 0
    assert run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(public)]).returncode == 0
    return key, public


def build(target: str, folder: Path) -> Built:
    key, public = make_key(folder)
    env = {**os.environ, "PYTHON": sys.executable}
    command = ["bash", str(REPO / "deploy/bundle.sh"), "--target", target, "--key", str(key)]
    result = run([*command, "--out", str(folder / "out")], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    bundle = folder / "out" / f"appliance-{VERSION}-{target}.bundle"
    assert bundle.is_file()
    return Built(bundle, key, public, result.stdout)


def install(bundle: Path, root: Path, *options: str) -> subprocess.CompletedProcess[str]:
    command = ["bash", str(REPO / "deploy/install.sh"), str(bundle), "--root", str(root)]
    return run([*command, "--no-systemd", *options])


@pytest.fixture(scope="module")
def here(tmp_path_factory: pytest.TempPathFactory) -> Built:
    if not (REPO / "deploy/locks" / f"{HERE}.txt").is_file():
        pytest.skip(f"no lock file for this machine's target {HERE}")
    return build(HERE, tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def installed(here: Built, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("box")
    started = time.monotonic()
    result = install(here.bundle, root)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"offline install of {here.bundle.name}: {seconds:.1f} s")
    config = (root / "etc/appliance/appliance.yaml").read_text()
    release = root / "opt/appliance/releases" / VERSION
    return Installed(root, release, result.stdout, seconds, config)


def test_the_bundle_holds_its_members_in_order(here: Built) -> None:
    with tarfile.open(here.bundle) as tar:
        names = tar.getnames()
        info = json.load(tar.extractfile("bundle.json"))  # type: ignore[arg-type]
    assert names[0] == "install.sh"
    assert info["version"] == VERSION and info["target"] == HERE
    assert f"wheels/{info['appliance_wheel']}" in names
    assert {"share/appliance.example.yaml", "share/systemd/appliance-worker.service"} <= set(names)
    assert "MiB" in here.output and "fingerprint" in here.output


def test_the_release_is_installed_without_a_network(installed: Installed, here: Built) -> None:
    root, release = installed.root, installed.release
    assert (root / "opt/appliance/current").readlink() == Path(f"releases/{VERSION}")
    leftovers = [p.name for p in release.parent.iterdir() if p.name != VERSION]
    assert leftovers == [], "a .partial or .incoming folder was left behind"
    program = release / "venv/bin/appliance"
    assert program.read_text().startswith(f"#!{release}/venv/bin/python")
    code = "import appliance; print(appliance.__file__)"
    where = run([str(release / "venv/bin/python"), "-c", code], cwd=root)
    assert where.stdout.startswith(str(release / "venv/lib")), "not installed from its wheel"
    assert sorted(p.name for p in (release / "models").iterdir()) == [
        "demo-chest-xray",
        "demo-ultrasound-fluid",
    ]
    assert (root / "etc/appliance/release-key.pub").read_bytes() == here.public.read_bytes()
    assert (root / "etc/systemd/system/appliance-receiver.service").is_file()
    # The example, with only the three folders moved into the root.
    example = (REPO / "deploy/appliance.example.yaml").read_text().splitlines()
    config = installed.config.splitlines()
    changed = [(a, b) for a, b in zip(example, config, strict=True) if a != b]
    assert changed == [
        ("  data_dir: null", f'  data_dir: "{root}/var/lib/appliance"'),
        ("  cache_dir: null", f'  cache_dir: "{root}/var/cache/appliance"'),
        ("  folders: [/media]", f'  folders: ["{root}/media"]'),
    ]


class Role:
    """An installed `venv/bin/appliance ROLE` child process; its output collected by a thread."""

    def __init__(self, program: Path, config: Path, role: str, cwd: Path) -> None:
        self.output: list[str] = []
        self.process = subprocess.Popen(
            [str(program), "--config", str(config), role],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.reader = threading.Thread(target=self._collect, daemon=True)
        self.reader.start()

    def _collect(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def said(self, text: str) -> bool:
        if self.process.poll() is not None and not any(text in line for line in self.output):
            self.reader.join(timeout=10)
            raise AssertionError("the role stopped:\n" + "".join(self.output))
        return any(text in line for line in self.output)

    def stop(self) -> int:
        self.process.terminate()
        code = self.process.wait(timeout=60)
        self.reader.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code


@dataclass
class Box:
    """Receiver, worker and UI of the installed release, on the installed configuration moved
    to free loopback ports."""

    roles: dict[str, Role]
    dicom_port: int
    ui_port: int


@pytest.fixture
def box(installed: Installed, tmp_path: Path) -> Iterator[Box]:
    config = installed.root / "etc/appliance/appliance.yaml"
    dicom, web = free_ports(2)
    text = config.read_text()
    for old, new in (
        ("  bind_address: 0.0.0.0", "  bind_address: 127.0.0.1"),
        ("  port: 11112", f"  port: {dicom}"),
        ("  port: 8080", f"  port: {web}"),
    ):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    mine = tmp_path / "appliance.yaml"
    mine.write_text(text)
    program = installed.release / "venv/bin/appliance"
    roles = {name: Role(program, mine, name, tmp_path) for name in ("receiver", "worker", "ui")}
    try:
        yield Box(roles, dicom, web)
    finally:
        for role in roles.values():
            role.stop()


@needs_dcmtk
def test_the_installed_roles_analyse_a_pushed_image(
    box: Box, installed: Installed, tmp_path: Path
) -> None:
    for role, ready in (
        ("receiver", "listening"),
        ("worker", "worker: ready"),
        ("ui", "set-up code"),
    ):
        wait_for(functools.partial(box.roles[role].said, ready), 120, what=f"the {role} to start")
    effusion = {"pleural_effusion": True, "pneumothorax": False, "lung_nodule": False}
    chest = tmp_path / "chest.dcm"
    chest_dataset(make_chest(31, rows=512, findings=effusion)).save_as(chest)
    sent = storescu(("127.0.0.1", box.dicom_port), chest)
    assert sent.returncode == 0, sent.stdout + sent.stderr

    database = installed.root / "var/lib/appliance/appliance.sqlite3"
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        row = wait_for(
            lambda: conn.execute("SELECT * FROM analyses WHERE state != 'pending'").fetchone(),
            what="the pushed image's analysis",
        )
        assert row["state"] == "findings", dict(row)
        [finding] = findings_of(conn, row["instance_ref"])
        assert finding["model"] == "demo-chest-xray"
    finally:
        conn.close()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{box.ui_port}/setup", timeout=30) as page:
            assert page.status == 200
    except urllib.error.HTTPError as exc:  # a redirect to sign-in still proves it serves
        assert exc.code < 500


def test_installing_the_same_bundle_again_keeps_the_configuration(
    installed: Installed, here: Built
) -> None:
    config = installed.root / "etc/appliance/appliance.yaml"
    edited = config.read_text().replace("site_name: Clinic", "site_name: Hill Clinic")
    config.write_text(edited)
    result = install(here.bundle, installed.root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "installed already from this very bundle" in result.stderr
    assert "appliance.yaml is there already: kept" in result.stderr
    assert config.read_text() == edited


def copy_with(bundle: Path, folder: Path, member: str, change: bytes, at: int = 100) -> Path:
    """A copy of `bundle` with `change` written into `member`'s data at offset `at`."""
    copy = folder / bundle.name
    shutil.copyfile(bundle, copy)
    with tarfile.open(copy) as tar:
        offset = tar.getmember(member).offset_data
    with copy.open("r+b") as f:
        f.seek(offset + at)
        old = f.read(len(change))
        assert old != change
        f.seek(offset + at)
        f.write(change)
    return copy


def refused(result: subprocess.CompletedProcess[str], root: Path) -> str:
    assert result.returncode != 0
    assert not (root / "opt/appliance/current").exists()
    assert not (root / "opt/appliance/releases" / VERSION).exists()
    assert list((root / "opt/appliance/releases").iterdir()) == [], "leftovers"
    return result.stderr


def test_a_changed_wheel_is_refused(here: Built, tmp_path: Path) -> None:
    with tarfile.open(here.bundle) as tar:
        wheel = next(n for n in tar.getnames() if n.startswith("wheels/flask-"))
    tampered = copy_with(here.bundle, tmp_path, wheel, b"\x00")
    message = refused(install(tampered, tmp_path / "root"), tmp_path / "root")
    assert "checksums" in message and "do not match" in message and wheel in message


def test_a_changed_checksum_list_is_refused(here: Built, tmp_path: Path) -> None:
    with tarfile.open(here.bundle) as tar:
        sums = tar.extractfile("SHA256SUMS").read()  # type: ignore[union-attr]
    first = sums[:1]
    tampered = copy_with(here.bundle, tmp_path, "SHA256SUMS", b"0" if first != b"0" else b"1", 0)
    message = refused(install(tampered, tmp_path / "root"), tmp_path / "root")
    assert "signature" in message and "does not match" in message and "refused" in message


def test_a_bundle_signed_by_another_key_is_refused(here: Built, tmp_path: Path) -> None:
    _, other = make_key(tmp_path)
    root = tmp_path / "root"
    message = refused(install(here.bundle, root, "--key", str(other)), root)
    assert "does not match the key" in message
    # A box that already has a release key checks against it, whatever the bundle brings.
    (root / "etc/appliance").mkdir(parents=True)
    shutil.copyfile(other, root / "etc/appliance/release-key.pub")
    message = refused(install(here.bundle, root), root)
    assert "this box's release key" in message


def test_a_package_without_a_wheel_stops_the_build(tmp_path: Path) -> None:
    """A copy of the checkout whose lock pins a package published only as source."""
    fake = tmp_path / "repo"
    (fake / "deploy/locks").mkdir(parents=True)
    for name in ("pyproject.toml", "deploy/bundle.sh", "deploy/install.sh"):
        shutil.copyfile(REPO / name, fake / name)
    (fake / "deploy/locks/x86_64-py3.11.txt").write_text(
        "docopt==0.6.2 \\\n    --hash=sha256:" + "0" * 64 + "\n"
    )
    key, _ = make_key(tmp_path)
    command = ["bash", str(fake / "deploy/bundle.sh"), "--target", "x86_64-py3.11"]
    result = run([*command, "--key", str(key), "--models", str(REPO / "models/demo-chest-xray")])
    assert result.returncode != 0
    assert "no wheel for x86_64-py3.11" in result.stderr and "docopt==0.6.2" in result.stderr


def fits_jetson(tag: Tag) -> bool:
    """Whether a wheel tag runs on a Jetson (aarch64, glibc 2.35) with CPython 3.10."""
    machine = tag.platform == "any" or (
        tag.platform.startswith("manylinux") and tag.platform.endswith("_aarch64")
    )
    if tag.abi == "abi3":
        python = tag.interpreter.startswith("cp3") and int(tag.interpreter[3:]) <= 10
    else:
        python = tag.interpreter in ("cp310", "py3", "py2") and tag.abi in ("cp310", "none")
    return machine and python


@pytest.fixture(scope="module")
def jetson(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build(JETSON, tmp_path_factory.mktemp("jetson"))


def test_the_jetson_bundle_is_complete_and_signed(jetson: Built, tmp_path: Path) -> None:
    with tarfile.open(jetson.bundle) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    x = tmp_path / "x"
    info = json.loads((x / "bundle.json").read_text())
    assert (info["target"], info["machine"], info["python"]) == (JETSON, "aarch64", "3.10")
    pins: dict[str, str] = {}
    for line in (REPO / "deploy/locks" / f"{JETSON}.txt").read_text().splitlines():
        if line[:1].isalnum():
            name, version = line.split()[0].split("==")
            pins[canonicalize_name(name)] = version
    wheels: dict[str, str] = {}
    for path in (x / "wheels").glob("*.whl"):
        name, found, _, tags = parse_wheel_filename(path.name)
        wheels[name] = str(found)
        assert any(fits_jetson(tag) for tag in tags), f"{path.name} does not fit {JETSON}"
    for name, version in pins.items():
        assert wheels.get(name) == version, f"{name}=={version} has no wheel in the bundle"
    assert wheels["appliance"] == VERSION and "pip" in wheels
    assert info["appliance_wheel"] in {p.name for p in (x / "wheels").iterdir()}
    assert (x / "models/demo-chest-xray/manifest.yaml").is_file()
    assert (x / "share/systemd/appliance-worker.service").is_file()
    verify = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(jetson.public), "-rawin"]
    signed = run([*verify, "-in", str(x / "SHA256SUMS"), "-sigfile", str(x / "SHA256SUMS.sig")])
    assert signed.returncode == 0, signed.stdout + signed.stderr
    sums = run(["sha256sum", "--check", "--strict", "--quiet", "SHA256SUMS"], cwd=x)
    assert sums.returncode == 0, sums.stdout + sums.stderr
    # And this machine (not aarch64) refuses to install it, saying why.
    if platform.machine() != "aarch64":
        result = install(jetson.bundle, tmp_path / "root")
        assert "this bundle is for aarch64" in result.stderr
