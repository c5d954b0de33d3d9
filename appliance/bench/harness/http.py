"""The UI's clients: a signed-in browser-like session over one keep-alive connection, and the
loops that ask an endpoint back to back for a while."""

from __future__ import annotations

import http.client
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import urlencode

from appliance.bench.harness import BenchError
from appliance.bench.harness.processes import wait_until
from appliance.store import users

USER, PIN = "bench", "2468"
ADMIN_USER, ADMIN_PIN = "bench-admin", "13572468"
HTTP_TIMEOUT_S = 60.0
CSRF = re.compile(rb'<meta name="csrf-token" content="([^"]+)"')
_DROPPED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class Session:
    """One signed-in browser, as far as the server can tell: a keep-alive connection, the
    session cookie and the CSRF token."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookie = ""
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT_S)

    @classmethod
    def signed_in(cls, port: int, username: str = USER, pin: str = PIN) -> Session:
        session = cls(port)
        status, page = session.get("/signin")
        token = CSRF.search(page)
        if status != 200 or token is None:
            raise BenchError(f"GET /signin answered {status} without a CSRF token")
        form = {"username": username, "pin": pin, "csrf_token": token.group(1).decode()}
        status, _ = session.request("POST", "/signin", urlencode(form).encode())
        if status != 302:
            raise BenchError(f"signing in as {username!r} answered {status}, not a redirect")
        return session

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path)

    def poll(self, path: str) -> int:
        """GET `path` as a page's own timer does (X-Poll: not someone's use); the status."""
        return self.request("GET", path, headers={"X-Poll": "1"})[0]

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """One request; a connection the server closed is opened again once."""
        sent = dict(headers or {})
        if self.cookie:
            sent["Cookie"] = self.cookie
        if body is not None:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            return self._send(method, path, body, sent)
        except _DROPPED:
            self.conn.close()
            return self._send(method, path, body, sent)

    def _send(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        for header in response.headers.get_all("Set-Cookie") or []:
            cookie: SimpleCookie = SimpleCookie(header)
            self.cookie = "; ".join(f"{k}={m.value}" for k, m in cookie.items())
        return response.status, data

    def close(self) -> None:
        self.conn.close()


@dataclass
class Asked:
    """What one client got asking an endpoint back to back."""

    latencies_ms: list[float] = field(default_factory=list)  # of the accepted answers
    errors: int = 0  # other statuses, and requests that failed
    size: int = 0  # bytes of the accepted answers


def ask_until(
    session: Session, endpoint: str, end_at: float, accepted: tuple[int, ...] = (200,)
) -> Asked:
    """GET `endpoint` back to back until `end_at` (time.monotonic()), timing each answer."""
    asked = Asked()
    while time.monotonic() < end_at:
        started = time.perf_counter()
        try:
            status, body = session.get(endpoint)
        except OSError:
            asked.errors += 1
            continue
        if status not in accepted:
            asked.errors += 1
            continue
        asked.latencies_ms.append((time.perf_counter() - started) * 1000)
        asked.size += len(body)
    return asked


def wait_for_http(port: int, path: str, alive: Callable[[], None], timeout_s: float) -> None:
    """Until GET `path` answers 200 on a fresh connection; `alive` raises if the server died."""

    def answered() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        except OSError:
            return False  # not listening yet
        finally:
            conn.close()

    wait_until(
        answered,
        alive,
        lambda: f"the UI did not answer {path} within {timeout_s:.0f} s",
        timeout_s,
        interval_s=0.1,
    )


def ask_together(
    asks: Sequence[tuple[Session, str]], seconds: float, accepted: tuple[int, ...] = (200,)
) -> list[Asked]:
    """Each session asks its endpoint back to back for `seconds`, all starting together, after
    one untimed request each (the connection open, templates compiled, caches filled)."""
    for session, endpoint in asks:
        session.get(endpoint)
    start = threading.Barrier(len(asks) + 1)
    results = [Asked() for _ in asks]
    end_at = [0.0]

    def client(index: int) -> None:
        start.wait()
        session, endpoint = asks[index]
        results[index] = ask_until(session, endpoint, end_at[0], accepted)

    workers = [
        threading.Thread(target=client, args=(i,), name=f"bench-client-{i}")
        for i in range(len(asks))
    ]
    for worker in workers:
        worker.start()
    end_at[0] = time.monotonic() + seconds
    start.wait()
    for worker in workers:
        worker.join()
    return results


def add_users(conn: sqlite3.Connection) -> None:
    """The accounts the clients sign in with: an admin (without one the UI offers only its
    set-up) and the technologist whose sessions ask."""
    users.create_user(conn, ADMIN_USER, "Bench Admin", "admin", ADMIN_PIN, "bench")
    users.create_user(conn, USER, "Bench Technologist", "technologist", PIN, "bench")
