"""The locked wall view and drafts through a session that ended, in a real browser (Debian's
Chromium through Playwright) at 800 x 480, against the UI served in-process on a store whose
findings the real worker made (the worklist tests' seeded store).

The session time-out is seconds here, through create_app's test-only SESSION_TIMEOUT_S
(ui.session_timeout_min counts whole minutes): the screen locks by itself, a chest with an
effusion stored and analysed meanwhile shows on the wall with the urgent banner, a touch asks
for the PIN and returns to the same page; an impression saved after the session ended leads,
after the PIN, back to the study with the text put back.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from werkzeug.serving import make_server

from appliance.phantoms import chest_dataset, make_chest
from appliance.store import feedback, open_store

from browser_fixtures import (
    SIZES,
    Guarded,
    Screenshots,
    layout_problems,
    needs_chromium,
    playwright_api,
)
from test_web_worklist import EFFUSION, Seeded, Template, make_template, open_seeded
from worker_fixtures import drain, open_worker, put_dataset

if TYPE_CHECKING:
    from playwright.sync_api import Page

expect = playwright_api().expect  # skips this module where Playwright is missing
pytestmark = [pytest.mark.slow, pytest.mark.browser, needs_chromium]

TIMEOUT_S = 4  # the session's time-out in this test (seconds)
REFRESH_S = 2  # ui.wall.refresh_s
PIN = "2468"  # every user of the seeded store


@dataclass
class Served:
    seeded: Seeded
    base_url: str

    def url(self, path: str = "/") -> str:
        return self.base_url + path


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return make_template(tmp_path_factory.mktemp("seeded"))


@pytest.fixture
def served(template: Template, tmp_path: Path) -> Iterator[Served]:
    """The UI of a copy of the seeded store, on a free loopback port, with a short time-out;
    the seeded urgent study is reported, so that nothing urgent waits at first."""
    wall = {
        "refresh_s": REFRESH_S,
        "sound": True,
        "fields": ["priority", "time", "initials", "state"],
    }
    seeded = open_seeded(template, tmp_path, ui={"wall": wall})
    seeded.app.config["SESSION_TIMEOUT_S"] = TIMEOUT_S
    conn = seeded.store.conn
    feedback.add_impression(conn, seeded.studies["effusion"], "Reported.", True, 1, "test")
    server = make_server("127.0.0.1", 0, seeded.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Served(seeded, f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        thread.join(timeout=10)
        seeded.store.close()


def sign_in(page: Page, served: Served, username: str, next_page: str) -> None:
    """Sign in with the on-screen keypad, straight to `next_page`."""
    page.goto(served.url("/signin?next=" + next_page.replace("?", "%3F").replace("=", "%3D")))
    page.fill("#username", username)
    enter_pin(page)
    expect(page).to_have_url(served.url(next_page))


def enter_pin(page: Page) -> None:
    page.fill("#pin", "")
    for digit in PIN:
        page.click(f'.keypad [data-key="{digit}"]')
    page.click("form.signin button[type=submit]")


def store_urgent_chest(served: Served, folder: Path) -> None:
    """A chest X-ray with an effusion, stored and analysed by the real worker (its own store
    connection, as the worker role would)."""
    ds = chest_dataset(
        make_chest(31, rows=256, findings=EFFUSION),
        modality="DX",
        patient_id="NEW-031",
        patient_name="NOVAK^URSULA",
        study_key="wall-new-urgent",
    )
    settings = served.seeded.settings
    store = open_store(settings)
    worker = open_worker(store, settings)
    try:
        put_dataset(store, ds, folder, "urgent.dcm")
        drain(worker)
    finally:
        worker.close()


def test_the_locked_screen_shows_a_new_urgent_study_and_a_touch_returns_to_the_page(
    served: Served, guarded: Guarded, screenshots: Screenshots, tmp_path: Path
) -> None:
    page = guarded.new_page()
    sign_in(page, served, "tech1", "/?state=findings")

    expect(page).to_have_url(re.compile(r"/wall\?back="), timeout=TIMEOUT_S * 1000 * 5)
    rows = page.locator("#wall-rows tr")
    expect(rows.first).to_be_visible()
    expect(page.locator("#wall-urgent")).to_be_hidden()
    expect(page.locator("#wall-rows")).not_to_contain_text("DOE")  # initials only
    assert page.locator("#wall a[href*='/study/']").count() == 0
    assert not layout_problems(page), layout_problems(page)
    before = rows.count()

    store_urgent_chest(served, tmp_path)
    banner = page.locator("#wall-urgent")
    expect(banner).to_be_visible(timeout=REFRESH_S * 1000 * 10)
    expect(banner).to_contain_text("urgent")
    expect(rows).to_have_count(before + 1)
    expect(rows.first).to_contain_text("U.N.")
    expect(rows.first).to_have_class(re.compile("triage-urgent"))
    expect(page.locator("body")).to_have_attribute("data-tone-at", re.compile(r"\d+"))
    screenshots.at_each_size(page, "wall")

    page.locator("#wall-rows").click()  # a touch anywhere on the wall
    expect(page).to_have_url(re.compile(r"/signin\?next="))
    expect(page.locator("#username")).to_have_value("tech1")  # the last user, chosen
    enter_pin(page)
    expect(page).to_have_url(served.url("/?state=findings"))
    guarded.guard.assert_clean()


def test_an_impression_saved_after_the_session_ended_comes_back_after_the_pin(
    served: Served, guarded: Guarded
) -> None:
    study = served.seeded.studies["normal"]
    page = guarded.new_page()
    sign_in(page, served, "doc1", "/")
    # The screen's own clock stands still (no lock, no keeping the session alive), while
    # the box's goes on: the session ends under a person typing, as on a frozen tablet.
    page.clock.install()
    page.clock.pause_at(time.time() + 0.5)  # seconds
    page.goto(served.url(f"/study/{study}"))
    text = "Small left effusion; no pneumothorax."
    page.fill("#impression-text", text)
    time.sleep(TIMEOUT_S + 1)  # the box ends the session (synchronisation, not a timing check)

    page.click("#impression button[type=submit]")
    expect(page).to_have_url(re.compile(rf"/signin\?next=/study/{study}"))
    expect(page.locator(".message-unsaved")).to_contain_text("Nothing was saved yet")
    expect(page.locator("#username")).to_have_value("doc1")
    enter_pin(page)
    expect(page).to_have_url(re.compile(rf"/study/{study}(\?|$)"))
    expect(page.locator(".message-unsaved")).to_contain_text("Not saved yet")
    expect(page.locator("#impression-text")).to_have_value(text)
    conn = served.seeded.store.conn
    assert all(entry.text != text for entry in feedback.impressions_for(conn, study))

    page.click("#impression button[type=submit]")  # now it is saved
    expect(page.locator(".impression-text").first).to_have_text(text)
    guarded.guard.assert_clean()


@pytest.mark.parametrize("size", list(SIZES))
def test_the_header_shows_the_whole_name_within_48_px(
    served: Served, guarded: Guarded, screenshots: Screenshots, size: str
) -> None:
    served.seeded.app.config["SESSION_TIMEOUT_S"] = 600
    page = guarded.new_page()
    width, height = SIZES[size]
    page.set_viewport_size({"width": width, "height": height})
    sign_in(page, served, "admin0", "/")  # the admin has the most buttons in the header
    bar = page.locator("header.bar").bounding_box()
    assert bar is not None and bar["height"] <= 48, bar
    for box in page.locator("header.bar .button").evaluate_all(
        "(els) => els.map((el) => el.getBoundingClientRect().toJSON())"
    ):
        assert box["right"] <= width and box["height"] >= 44, box
    page.click("summary.who")
    name = page.locator(".who-full .who-name")
    expect(name).to_have_text("Admin0")
    box = name.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, box
    page.screenshot(path=str(screenshots.folder / f"header-menu-{size}.png"))
    sideways = [p for p in layout_problems(page) if p.startswith("horizontal")]
    assert not sideways, sideways  # the page's own rows are the worklist tests' business
