"""Other screens reach the UI through Debian's nginx as a TLS proxy (deploy/nginx/appliance.conf,
certificate from deploy/tls.sh): a real nginx, run as this user in tmp_path, in front of the UI
role as a real process with `ui.behind_tls`. The screen connects from 127.0.0.2 so that the
address the proxy forwards differs from the proxy's own (127.0.0.1)."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.bench.harness.processes import free_ports
from appliance.store import open_store, users

from conftest import RoleProcess, wait_for

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "deploy" / "nginx" / "appliance.conf"
TLS_SH = REPO / "deploy" / "tls.sh"
SCREEN = "127.0.0.2"  # the other screen's address (all of 127/8 is this machine)
PIN = "2468"


def nginx_binary() -> str:
    """Debian installs nginx in /usr/sbin, outside a normal user's PATH."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    assert found, "nginx is not installed: deploy/setup.sh --test installs it"
    return found


def proxy_config(tls_dir: Path, ui_port: int, http_port: int, https_port: int) -> str:
    """deploy/nginx/appliance.conf with this test's ports and certificate; every substitution
    must hit, so that a changed template cannot leave the test checking something else."""
    text = TEMPLATE.read_text()
    swaps = [
        ("listen 80 default_server;", f"listen 127.0.0.1:{http_port};"),
        ("listen [::]:80 default_server;", ""),
        ("listen 443 ssl http2 default_server;", f"listen 127.0.0.1:{https_port} ssl http2;"),
        ("listen [::]:443 ssl http2 default_server;", ""),
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{ui_port};"),
        ("/etc/appliance/tls/", f"{tls_dir}/"),
        ("https://$host$request_uri", f"https://$host:{https_port}$request_uri"),
    ]
    for old, new in swaps:
        assert old in text, f"{TEMPLATE} no longer says {old!r}"
        text = text.replace(old, new)
    return text


def main_config(work: Path, site: Path) -> str:
    """What Debian's /etc/nginx/nginx.conf provides around a conf.d file, in `work`."""
    temps = "\n".join(
        f"    {kind}_temp_path {work}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root (CI in a container) nginx would run its workers as nobody, who cannot enter
    # tmp_path; as a normal user it keeps the user it has.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}worker_processes 1;\n"
        f"error_log {work}/error.log info;\n"
        f"pid {work}/nginx.pid;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        f"    access_log {work}/access.log;\n{temps}\n"
        f"    include {site};\n"
        "}\n"
    )


@dataclass
class Proxy:
    http_port: int
    https_port: int
    certificate: Path
    work: Path

    def log(self) -> str:
        path = self.work / "error.log"
        return path.read_text() if path.exists() else ""


@dataclass
class Screen:
    """A browser on another machine, as far as cookies and addresses go: one connection per
    request from `source`, cookies kept by name."""

    port: int
    tls: ssl.SSLContext | None
    source: str = SCREEN
    cookies: dict[str, str] = field(default_factory=dict)
    set_cookies: list[str] = field(default_factory=list)

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, str]:
        conn: http.client.HTTPConnection
        if self.tls is not None:
            conn = http.client.HTTPSConnection(
                "127.0.0.1",
                self.port,
                context=self.tls,
                source_address=(self.source, 0),
                timeout=30,
            )
        else:
            conn = http.client.HTTPConnection(
                "127.0.0.1", self.port, source_address=(self.source, 0), timeout=30
            )
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            text = response.read().decode("utf-8", "replace")
        finally:
            conn.close()
        for line in response.headers.get_all("Set-Cookie") or []:
            self.set_cookies.append(line)
            name, _, rest = line.partition("=")
            self.cookies[name.strip()] = rest.split(";", 1)[0]
        return response.status, response.headers, text

    def sign_in(self, username: str) -> str:
        """Sign in through the form, as the touch keypad does; the session cookie's line."""
        status, _, page = self.request("GET", "/signin")
        assert status == 200, page
        match = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
        assert match, page
        self.set_cookies.clear()
        form = {"username": username, "pin": PIN, "csrf_token": match.group(1)}
        status, headers, page = self.request("POST", "/signin", form)
        assert status == 302, page
        assert "/signin" not in headers.get("Location", ""), headers.get("Location")
        session = [line for line in self.set_cookies if line.startswith("appliance_session=")]
        assert session, self.set_cookies
        return session[-1]


@pytest.fixture
def tls_dir(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    done = subprocess.run(
        ["bash", str(TLS_SH), "--root", str(root)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return root / "etc" / "appliance" / "tls"


@pytest.fixture
def ui(role_process: Callable[..., RoleProcess]) -> Iterator[RoleProcess]:
    """The UI role behind TLS, with an admin `ada`."""
    proc = role_process(
        "ui",
        ready="ui: serving on",
        ui={"behind_tls": True},
        storage={"free_space_floor_mb": 1},  # a floor of 0 is refused now
    )
    store = open_store(proc.settings)
    try:
        users.create_user(store.conn, "ada", "Ada", "admin", PIN, "test")
    finally:
        store.close()
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def proxy(tmp_path: Path, tls_dir: Path, ui: RoleProcess) -> Iterator[Proxy]:
    work = tmp_path / "nginx"
    work.mkdir()
    http_port, https_port = free_ports(2)
    site = work / "appliance.conf"
    site.write_text(proxy_config(tls_dir, ui.settings.ui.port, http_port, https_port))
    (work / "nginx.conf").write_text(main_config(work, site))
    command = [nginx_binary(), "-p", str(work), "-c", str(work / "nginx.conf")]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen(
        [*command, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    running = Proxy(http_port, https_port, tls_dir / "appliance.crt", work)
    try:
        wait_for(
            lambda: (_accepts(https_port) and _accepts(http_port)) or process.poll() is not None,
            60,
            what="nginx to listen",
        )
        assert process.poll() is None, running.log()
        yield running
    finally:
        process.send_signal(signal.SIGQUIT)  # graceful: finish requests, then exit
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def trusting(certificate: Path) -> ssl.SSLContext:
    """A client that trusts the box's self-signed certificate, as a screen told to does."""
    return ssl.create_default_context(cafile=str(certificate))


def audit_rows(ui: RoleProcess, action: str) -> list[dict[str, object]]:
    conn = sqlite3.connect(f"file:{ui.paths.database}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute("SELECT detail FROM audit WHERE action = ? ORDER BY id", (action,))
        return [json.loads(row[0]) for row in rows]
    finally:
        conn.close()


def test_signing_in_through_the_proxy_gives_a_secure_cookie_and_audits_the_screen(
    proxy: Proxy, ui: RoleProcess
) -> None:
    screen = Screen(proxy.https_port, trusting(proxy.certificate))
    cookie = screen.sign_in("ada")
    flags = [part.strip().lower() for part in cookie.split(";")]
    assert "secure" in flags and "httponly" in flags, cookie
    status, _, page = screen.request("GET", "/")
    assert status == 200 and 'name="csrf-token"' in page  # signed in: the worklist
    forwarded = audit_rows(ui, "signin.address")
    assert forwarded == [{"address": SCREEN, "status": 302, "tls": True}], forwarded


def test_the_touchscreen_on_localhost_signs_in_over_plain_http(
    proxy: Proxy, ui: RoleProcess
) -> None:
    touchscreen = Screen(ui.settings.ui.port, None, source="127.0.0.1")
    cookie = touchscreen.sign_in("ada")
    assert "secure" not in [part.strip().lower() for part in cookie.split(";")], cookie
    status, _, page = touchscreen.request("GET", "/")
    assert status == 200 and 'name="csrf-token"' in page
    assert audit_rows(ui, "signin.address") == [
        {"address": "127.0.0.1", "status": 302, "tls": False}
    ]


def test_plain_http_is_redirected_to_https(proxy: Proxy) -> None:
    screen = Screen(proxy.http_port, None)
    status, headers, _ = screen.request("GET", "/worklist?priority=urgent")
    assert status == 301
    assert headers["Location"] == f"https://127.0.0.1:{proxy.https_port}/worklist?priority=urgent"
    assert not screen.set_cookies


def test_idle_connections_take_neither_the_proxy_nor_the_ui_down(
    proxy: Proxy, ui: RoleProcess
) -> None:
    with ExitStack() as idle:
        for port in (proxy.https_port, ui.settings.ui.port):
            for _ in range(100):  # connected, then silent: no TLS handshake, no request
                idle.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
        screen = Screen(proxy.https_port, trusting(proxy.certificate))
        screen.sign_in("ada")
        assert screen.request("GET", "/")[0] == 200
        touchscreen = Screen(ui.settings.ui.port, None, source="127.0.0.1")
        assert touchscreen.request("GET", "/signin")[0] == 200


def test_the_proxy_refuses_a_client_that_does_not_trust_its_certificate(proxy: Proxy) -> None:
    screen = Screen(proxy.https_port, ssl.create_default_context())  # the system's CAs only
    with pytest.raises(ssl.SSLCertVerificationError):
        screen.request("GET", "/signin")
