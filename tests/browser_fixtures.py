"""A real browser for the UI tests: Debian's Chromium driven by Playwright's Python package.

Chromium is launched by path (`executable_path`): Playwright's own browser downloads are never
used, so the tests need nothing but `apt-get install chromium` (deploy/setup.sh --test).

Every browser context is guarded: a request to any host but 127.0.0.1/localhost is aborted and
recorded, and the tests fail if one was attempted (DESIGN.md: no CDN, fonts or scripts from
outside). Chromium's own resolver also maps every other name to nothing, so even a request the
guard could not see (the browser's background traffic) cannot leave the machine.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

# The binary behind Debian's /usr/bin/chromium launcher script: the launcher adds flags meant
# for a desktop (remote extensions, API keys) and warns on some machines; the tests need none.
_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")
LOCAL_HOSTS = ("127.0.0.1", "localhost")
SIZES = {"800x480": (800, 480), "1024x600": (1024, 600)}  # the touch panels the UI is made for
TOUCH_PX = 48  # the smallest touch target the UI promises (app.css --touch)
_LAUNCH_ARGS = [
    # Any host but the loopback ones resolves to nothing (IP literals too).
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    "--no-first-run",
    "--disable-sync",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
]


def chromium_path() -> str | None:
    """Where Debian's Chromium is: $APPLIANCE_CHROMIUM if set, else the first candidate found."""
    override = os.environ.get("APPLIANCE_CHROMIUM")
    if override:
        return override
    for candidate in _CANDIDATES:
        found = shutil.which(candidate)
        if found is not None:
            return found
    return None


def playwright_api() -> Any:
    """Playwright's sync API, or a skip of the calling test module where it is not installed.

    Under CI (which installs it through deploy/setup.sh --test) a missing Playwright is an
    import error instead, as for needs_chromium.
    """
    if os.environ.get("CI"):
        return importlib.import_module("playwright.sync_api")
    reason = "Playwright is not installed (deploy/setup.sh --test installs it)"
    return pytest.importorskip("playwright.sync_api", reason=reason)


def _can_drive_chromium() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return chromium_path() is not None


# Skipped on a machine without Chromium, like needs_dcmtk; under CI (which installs it through
# deploy/setup.sh --test) a missing browser must fail instead of quietly skipping the UI tests.
needs_chromium = pytest.mark.skipif(
    not _can_drive_chromium() and not os.environ.get("CI"),
    reason="Debian's Chromium or Playwright is not installed (deploy/setup.sh --test does)",
)


@dataclass
class NetworkGuard:
    """Aborts and records every request to a host not in LOCAL_HOSTS."""

    blocked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # CSP violations, uncaught page errors

    def handle(self, route: Any) -> None:
        """The route handler: local requests go on, anything else is aborted and noted."""
        url = route.request.url
        if is_local(url):
            route.continue_()
            return
        self.blocked.append(url)
        route.abort("blockedbyclient")

    def watch(self, page: Any) -> None:
        """Note what the route cannot see: WebSockets out, CSP refusals, uncaught errors."""
        page.on("websocket", self._websocket)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))

    def _websocket(self, socket: Any) -> None:
        if not is_local(socket.url):
            self.blocked.append(socket.url)

    def _console(self, message: Any) -> None:
        # The CSP stops an outside request before the route sees it; Chromium says so here.
        if "Content Security Policy" in message.text:
            self.problems.append(f"CSP: {message.text}")

    def assert_clean(self) -> None:
        assert not self.blocked, f"requests to outside hosts were attempted: {self.blocked}"
        assert not self.problems, "\n".join(self.problems)


def is_local(url: str) -> bool:
    """True for loopback http(s)/ws(s) URLs and for data:/blob:/about: ones (no network)."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return parts.hostname in LOCAL_HOSTS


@contextmanager
def launch_chromium() -> Iterator[Any]:
    """Headless Debian Chromium, by path; fails (rather than downloads) when it is missing."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if path is None:
        pytest.fail("Debian's Chromium is not installed: run deploy/setup.sh --test")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True, args=_LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Guarded:
    """A browser context whose every page is guarded, and the guard to check at the end."""

    context: Any
    guard: NetworkGuard

    def new_page(self) -> Any:
        page = self.context.new_page()
        self.guard.watch(page)
        return page


@contextmanager
def guarded_context(
    browser: Any, size: str = "800x480", *, touch: bool = False, zone: str = "UTC"
) -> Iterator[Guarded]:
    """A fresh context the size of a panel (SIZES) whose requests all pass the guard; checked
    when it closes. `touch` gives it touch input, `zone` its time zone."""
    width, height = SIZES[size]
    context = browser.new_context(
        viewport={"width": width, "height": height},
        has_touch=touch,
        service_workers="block",  # a service worker's fetches would bypass the route
        locale="en-GB",
        timezone_id=zone,
    )
    context.set_default_timeout(30_000)
    guard = NetworkGuard()
    context.route("**/*", guard.handle)
    try:
        yield Guarded(context, guard)
    finally:
        context.close()
    guard.assert_clean()


def touch_panel(browser: Any, size: str, zone: str = "UTC") -> AbstractContextManager[Guarded]:
    """A guarded context the size of a panel, with touch input."""
    return guarded_context(browser, size, touch=True, zone=zone)


def sign_in_page(page: Any, base_url: str, username: str, pin: str) -> None:
    """Sign in through the sign-in form and wait for the worklist."""
    from playwright.sync_api import expect

    page.goto(base_url + "/signin")
    page.fill("#username", username)
    page.fill("#pin", pin)
    page.click("form.signin button[type=submit]")
    expect(page).to_have_url(base_url + "/")


class Screenshots:
    """Pictures of pages at the panel sizes, in one folder under the test's tmp_path."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.taken: list[Path] = []

    def at_each_size(self, page: Any, name: str) -> None:
        """Per panel size, the screen as the panel shows it and the whole page (a full-page
        picture re-lays out at the page's height, so it is not what a person sees); the page
        is left at 800x480."""
        for size, (width, height) in SIZES.items():
            page.set_viewport_size({"width": width, "height": height})
            page.evaluate("window.scrollTo(0, 0)")  # the screen as the page opens
            for suffix, full_page in (("", False), ("-full", True)):
                path = self.folder / f"{name}-{size}{suffix}.png"
                page.screenshot(path=str(path), full_page=full_page)
                self.taken.append(path)
        width, height = SIZES["800x480"]
        page.set_viewport_size({"width": width, "height": height})


# --- layout at a touch panel's size -------------------------------------------------------------

_LAYOUT_JS = """
(touch) => {
  const root = document.scrollingElement || document.documentElement;
  const visible = (el) => {
    const box = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    return box.width > 0 && box.height > 0 && style.visibility !== "hidden"
      && style.display !== "none" && el.closest("[hidden]") === null;
  };
  const name = (el) => {
    const id = el.id ? "#" + el.id : "";
    const cls = el.classList.length ? "." + [...el.classList].join(".") : "";
    const text = (el.innerText || el.value || el.getAttribute("aria-label") || "").trim();
    return el.tagName.toLowerCase() + id + cls + " " + JSON.stringify(text.slice(0, 30));
  };
  const targets = document.querySelectorAll(
    'a[href], button, input[type="submit"], input[type="button"], [role="button"]');
  const small = [...targets].filter(visible)
    .map((el) => [name(el), el.getBoundingClientRect().height])
    .filter(([, h]) => h < touch - 0.5)
    .map(([n, h]) => n + " is " + h.toFixed(1) + " px high");
  return {scrollWidth: root.scrollWidth, innerWidth: window.innerWidth, small: small};
}
"""


def layout_problems(page: Any, allowed_small: tuple[str, ...] = ()) -> list[str]:
    """What breaks a touch layout: a horizontal scrollbar, or a visible button or link lower
    than TOUCH_PX. `allowed_small` are regular expressions of targets excused (say why)."""
    found = page.evaluate(_LAYOUT_JS, TOUCH_PX)
    problems = [
        line for line in found["small"] if not any(re.search(p, line) for p in allowed_small)
    ]
    if found["scrollWidth"] > found["innerWidth"]:
        problems.append(
            f"horizontal scrolling: content {found['scrollWidth']} px wide in a "
            f"{found['innerWidth']} px window"
        )
    return problems
