"""The worklist on the clinic's touch panels (800 x 480 and 1024 x 600) in a real browser
(Debian's Chromium through Playwright) against the real UI role, on a store with 51 studies
as a busy week leaves it (the UI benchmark's seeder: every state, every priority).

What must hold at both sizes: at least six rows entirely on screen without scrolling, a short
filter bar (the full filters open on demand), a tap anywhere on a row opens its study (here on
its time, not its name), and a search that finds nothing says so and offers to clear it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from appliance.bench.ui.seed import seed_store
from appliance.store import open_store, users

from browser_fixtures import (
    SIZES,
    Guarded,
    Screenshots,
    layout_problems,
    needs_chromium,
    playwright_api,
    sign_in_page,
    touch_panel,
)
from conftest import UIProcess, make_settings, serve_ui

if TYPE_CHECKING:
    from playwright.sync_api import Page

expect = playwright_api().expect  # skips this module where Playwright is missing
pytestmark = [pytest.mark.slow, pytest.mark.browser, needs_chromium]

STUDIES = 51
MIN_ROWS = 6  # rows wholly inside the viewport at 800 x 480, before any scrolling
TOUCH_MIN_PX = 44  # the least height of anything a finger taps on the worklist
FILTER_BAR_MAX_PX = 64  # one line: the search and the "Filters" toggle
USER, PIN = "tina", "5820"
ADMIN, ADMIN_PIN = "chief", "13572468"


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIProcess]:
    """`appliance ui` on a store seeded with STUDIES studies and one technologist."""
    root = tmp_path_factory.mktemp("worklist-browser")
    settings = make_settings(root)
    store = open_store(settings)
    try:
        users.create_user(store.conn, ADMIN, "Chief Admin", "admin", ADMIN_PIN, "test")
        user = users.create_user(store.conn, USER, "Tina Tech", "technologist", PIN, "test")
        seed_store(store, STUDIES, user.id)
    finally:
        store.close()
    with serve_ui(root, settings) as served:
        yield served


def sign_in(page: Page, ui: UIProcess) -> None:
    sign_in_page(page, ui.base_url, USER, PIN)


def rows_fully_visible(page: Page) -> int:
    """How many study rows have their whole box inside the viewport as the page opens."""
    count: int = page.evaluate(
        """() => [...document.querySelectorAll('#worklist tr.study-row')].filter((row) => {
             const box = row.getBoundingClientRect();
             return box.height > 0 && box.top >= 0 && box.left >= 0
               && box.bottom <= window.innerHeight && box.right <= window.innerWidth;
           }).length"""
    )
    return count


def small_targets(page: Page) -> list[str]:
    """Visible things to tap on the worklist (not the bar above it) lower than TOUCH_MIN_PX:
    a row's link is the whole row, a check box its label."""
    found: list[str] = page.evaluate(
        """(least) => [...document.querySelectorAll(
               '.worklist-panel a[href], .worklist-panel button, .worklist-panel summary,'
               + ' .worklist-panel input:not([type=hidden]), .worklist-panel select')]
             .filter((el) => el.getClientRects().length > 0
               && (el.matches('summary') || !el.closest('details:not([open])')))
             .map((el) => el.closest('tr.study-row, label.toggle') || el)
             .map((el) => [el.outerHTML.slice(0, 60), el.getBoundingClientRect().height])
             .filter(([, h]) => h < least - 0.5)
             .map(([what, h]) => what + " is " + h.toFixed(1) + " px high")""",
        TOUCH_MIN_PX,
    )
    return found


@pytest.mark.parametrize("size", list(SIZES))
def test_six_rows_fit_above_the_fold_under_a_short_filter_bar(
    ui: UIProcess, browser: Any, screenshots: Screenshots, size: str
) -> None:
    with touch_panel(browser, size) as panel:
        page = panel.new_page()
        sign_in(page, ui)
        expect(page.locator("#worklist tr.study-row").first).to_be_visible()

        visible = rows_fully_visible(page)
        assert visible >= MIN_ROWS, f"{visible} rows fully visible at {size}"
        bar = page.locator("#filters").bounding_box()
        assert bar is not None and bar["height"] <= FILTER_BAR_MAX_PX, bar
        expect(page.locator("#filters .filter-more")).to_be_hidden()  # on demand only
        for row in page.locator("#worklist tr.study-row").all()[:MIN_ROWS]:
            box = row.bounding_box()
            assert box is not None and box["height"] >= TOUCH_MIN_PX, box  # easy to hit
        assert small_targets(page) == []
        sideways = [p for p in layout_problems(page) if p.startswith("horizontal")]
        assert sideways == []
        # A short page: the other studies are a tap on "Show more" away.
        page_height = page.evaluate("document.scrollingElement.scrollHeight")
        assert page_height < 4 * SIZES[size][1], page_height
        expect(page.locator("#worklist-more")).to_be_visible()
        if size == "800x480":  # pictures at both sizes, once
            screenshots.at_each_size(page, "worklist")


@pytest.mark.parametrize("size", list(SIZES))
def test_tapping_a_rows_time_opens_its_study(ui: UIProcess, browser: Any, size: str) -> None:
    with touch_panel(browser, size) as panel:
        page = panel.new_page()
        sign_in(page, ui)
        row = page.locator("#worklist tr.study-row").nth(2)
        study = row.get_attribute("data-study-id")
        # A finger on the received time: not the name, and not a link of its own (the row's
        # one link lies over the whole row, so the tap lands on it).
        box = row.locator("td.time").bounding_box()
        assert box is not None
        page.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        expect(page).to_have_url(ui.url(f"/study/{study}"))


def test_a_row_opens_from_the_keyboard(ui: UIProcess, guarded: Guarded) -> None:
    page = guarded.new_page()
    sign_in(page, ui)
    first = page.locator("#worklist tr.study-row").first
    study = first.get_attribute("data-study-id")
    page.locator("#filters input[name=q]").focus()
    links = 0
    while page.evaluate("document.activeElement.classList.contains('open-study')") is False:
        page.keyboard.press("Tab")  # search, its button, "Filters", then the first row
        links += 1
        assert links < 10, "no row reached by Tab"
    page.keyboard.press("Enter")
    expect(page).to_have_url(ui.url(f"/study/{study}"))


def test_more_rows_are_a_tap_away(ui: UIProcess, browser: Any) -> None:
    with touch_panel(browser, "800x480") as panel:
        page = panel.new_page()
        sign_in(page, ui)
        rows = page.locator("#worklist tr.study-row")
        first_page = rows.count()
        assert first_page < STUDIES
        page.locator("#worklist-more").tap()
        expect(page).to_have_url(re.compile(r"rows=\d+"))
        assert rows.count() > first_page


@pytest.mark.parametrize("size", list(SIZES))
def test_a_search_that_finds_nothing_says_so_and_offers_to_clear_it(
    ui: UIProcess, browser: Any, size: str
) -> None:
    with touch_panel(browser, size) as panel:
        page = panel.new_page()
        sign_in(page, ui)
        page.fill("#filters input[name=q]", "nobody-by-this-name")
        page.press("#filters input[name=q]", "Enter")
        empty = page.locator("#worklist tr.empty")
        expect(empty).to_contain_text("No studies match this search")
        expect(empty).not_to_contain_text("No studies yet")
        clear = empty.locator("a.clear-filters")
        expect(clear).to_be_in_viewport(ratio=1)
        clear.tap()
        expect(page).to_have_url(ui.url("/"))
        expect(page.locator("#worklist tr.study-row").first).to_be_visible()


def test_the_filters_open_on_demand_and_count_what_is_set(
    ui: UIProcess, browser: Any, screenshots: Screenshots
) -> None:
    with touch_panel(browser, "800x480") as panel:
        page = panel.new_page()
        sign_in(page, ui)
        toggle = page.locator("#filters summary.filters-toggle")
        more = page.locator("#filters .filter-more")
        expect(more).to_be_hidden()
        expect(page.locator("#filters .filters-count")).to_have_count(0)
        toggle.tap()
        expect(more).to_be_visible()
        expect(more).to_be_in_viewport(ratio=1)
        page.select_option("#filters select[name=state]", "held_back")
        expect(page).to_have_url(re.compile(r"state=held_back"))
        expect(page.locator("#filters .filters-count")).to_have_text("1")
        expect(more).to_be_hidden()  # closed again on the new page: the rows are in view
        rows = page.locator("#worklist tr.study-row")
        expect(rows.first).to_be_visible()
        assert {row.get_attribute("data-state") for row in rows.all()} == {"held_back"}
        expect(rows.first.locator("td.state")).to_contain_text("Held back")
        screenshots.at_each_size(page, "worklist-held-back")
