"""In Debian's Chromium at the panel sizes: the on-screen keypad types into numeric fields
without covering them, and the admin's audit and models pages fit the panel (no sideways
scrolling of the page or inside any box; the audit's details open on a tap)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from appliance.store import open_store, status, users

from browser_fixtures import SIZES, needs_chromium, playwright_api, sign_in_page, touch_panel
from conftest import UIProcess, make_settings, serve_ui

if TYPE_CHECKING:
    from playwright.sync_api import Page

expect = playwright_api().expect  # skips this module where Playwright is missing
pytestmark = [pytest.mark.slow, pytest.mark.browser, needs_chromium]

ADMIN, ADMIN_PIN = "chief", "13572468"
CHEST = Path(__file__).parents[1] / "models" / "demo-chest-xray" / "manifest.yaml"
ENTRIES = 120  # more than two pages of the audit log


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIProcess]:
    """`appliance ui` with an admin, a long audit trail and the demo chest package recorded."""
    root = tmp_path_factory.mktemp("keypad-browser")
    settings = make_settings(root)
    store = open_store(settings)
    try:
        users.create_user(store.conn, ADMIN, "Chief Admin", "admin", ADMIN_PIN, "test")
        long_reason = "photometric interpretation 'PALETTE COLOR' is not one of " + ", ".join(
            f"CHOICE_{n}" for n in range(40)
        )
        for n in range(ENTRIES):
            subject = f"instance:1.2.826.0.1.3680043.8.498.{n:040d}"
            store.audit("ae:MODALITY_WITH_A_LONG_NAME@10.0.0.5", "ingest.rejected", subject,
                        reason=long_reason, sizes=list(range(30)))  # fmt: skip
        manifest = yaml.safe_load(CHEST.read_text(encoding="utf-8"))
        row = status.ModelRow("demo-chest-xray", "loaded", version="0.1.0", backend="cpu",
                              precision="int8", model_sha256="ab" * 32,
                              folder="/var/lib/appliance/models/" + "very-long-folder/" * 8,
                              manifest=manifest)  # fmt: skip
        status.record_models(store.conn, [row])
    finally:
        store.close()
    with serve_ui(root, settings) as served:
        yield served


def sign_in(page: Page, ui: UIProcess) -> None:
    sign_in_page(page, ui.base_url, ADMIN, ADMIN_PIN)


_OVERFLOW_JS = """
(selector) => {
  const root = document.scrollingElement;
  const wide = [...document.querySelectorAll(selector)]
    .filter((el) => el.scrollWidth > el.clientWidth + 1)
    .map((el) => el.tagName + "." + el.className + " " + el.scrollWidth + " > " + el.clientWidth);
  return {page: root.scrollWidth, inner: window.innerWidth, height: root.scrollHeight, wide: wide};
}
"""


def overflow(page: Page, selector: str) -> dict[str, Any]:
    found: dict[str, Any] = page.evaluate(_OVERFLOW_JS, selector)
    return found


@pytest.mark.parametrize("size", list(SIZES))
def test_the_keypad_types_into_a_pin_field_without_covering_it(
    ui: UIProcess, browser: Any, size: str
) -> None:
    with touch_panel(browser, size) as panel:
        page = panel.new_page()
        sign_in(page, ui)
        page.goto(ui.url("/admin/users"))
        field = page.locator("#new-pin")
        field.tap()
        pad = page.locator("#keypad")
        expect(pad).to_be_visible()
        expect(pad.locator(".kp-point")).to_be_hidden()  # whole numbers only
        for digit in "25809":
            pad.locator(f'[data-kp="{digit}"]').tap()
        expect(field).to_have_value("25809")
        pad.locator('[data-kp="back"]').tap()
        expect(field).to_have_value("2580")
        pad_box, field_box = pad.bounding_box(), field.bounding_box()
        assert pad_box is not None and field_box is not None
        apart = (
            pad_box["y"] >= field_box["y"] + field_box["height"]
            or pad_box["y"] + pad_box["height"] <= field_box["y"]
            or pad_box["x"] >= field_box["x"] + field_box["width"]
            or pad_box["x"] + pad_box["width"] <= field_box["x"]
        )
        assert apart, (pad_box, field_box)
        width, height = SIZES[size]
        assert pad_box["y"] >= 0 and pad_box["y"] + pad_box["height"] <= height
        assert pad_box["x"] >= 0 and pad_box["x"] + pad_box["width"] <= width
        keys = pad.locator("button")
        for n in range(keys.count()):
            box = keys.nth(n).bounding_box()
            assert box is None or box["height"] >= 44, box  # a hidden key has no box
        pad.locator('[data-kp="done"]').tap()
        expect(pad).to_be_hidden()
        page.locator("#new-pin-again").tap()  # the next field gets the pad in its turn
        expect(pad).to_be_visible()
        pad.locator('[data-kp="7"]').tap()
        expect(page.locator("#new-pin-again")).to_have_value("7")
        expect(field).to_have_value("2580")
        pad.locator('[data-kp="clear"]').tap()
        expect(page.locator("#new-pin-again")).to_have_value("")


def test_a_decimal_field_gets_a_point_and_the_sign_in_pad_still_works(
    ui: UIProcess, browser: Any
) -> None:
    with touch_panel(browser, "800x480") as panel:
        page = panel.new_page()
        page.goto(ui.url("/signin"))
        page.fill("#username", ADMIN)
        for digit in ADMIN_PIN:  # the sign-in page's own pad, not the pop-up
            page.locator(f'.keypad [data-key="{digit}"]').tap()
        expect(page.locator("#keypad")).to_have_count(0)
        page.click("form.signin button[type=submit]")
        expect(page).to_have_url(ui.url("/"))
        page.goto(ui.url("/admin/users"))
        page.evaluate(
            """() => {
              const input = document.createElement("input");
              input.id = "spacing"; input.setAttribute("inputmode", "decimal");
              document.querySelector("h1").after(input);
            }"""
        )
        page.locator("#spacing").tap()
        pad = page.locator("#keypad")
        for key in ["0", ".", "3", ".", "5"]:  # a second point is refused
            pad.locator(f'[data-kp="{key}"]').tap()
        expect(page.locator("#spacing")).to_have_value("0.35")


@pytest.mark.parametrize("size", list(SIZES))
def test_the_audit_page_fits_the_panel_and_details_open_on_a_tap(
    ui: UIProcess, browser: Any, size: str
) -> None:
    with touch_panel(browser, size, zone="America/New_York") as panel:
        page = panel.new_page()
        sign_in(page, ui)
        page.goto(ui.url("/admin/audit?action=ingest.rejected"))
        entries = page.locator("#audit-entries > li")
        expect(entries).to_have_count(50)
        found = overflow(page, ".entries > li, .entry > summary, .entry dl, .admin")
        assert found["page"] <= found["inner"], found
        assert found["wide"] == [], found["wide"]
        assert found["height"] < 50 * 80 + 800, found  # one line an entry, not 24,678 px
        first = entries.first
        expect(first.locator("dl.detail")).to_be_hidden()
        first.locator("summary").tap()
        expect(first.locator("dl.detail")).to_be_visible()
        expect(first.locator("dl.detail")).to_contain_text("PALETTE COLOR")
        found = overflow(page, ".entries > li, .entry dl, .entry dd")
        assert found["page"] <= found["inner"] and found["wide"] == [], found
        # Times written by time.js match the server's: the box's clock, not the browser's.
        written = page.evaluate(
            """() => [...document.querySelectorAll("time[data-when]")].slice(0, 5)
                 .map((el) => [el.textContent, appWhen(el.getAttribute("datetime"),
                                                       {seconds: true})])"""
        )
        assert written and all(server == script for server, script in written), written


@pytest.mark.parametrize("size", list(SIZES))
def test_the_models_page_fits_the_panel_in_plain_words(
    ui: UIProcess, browser: Any, size: str
) -> None:
    with touch_panel(browser, size) as panel:
        page = panel.new_page()
        sign_in(page, ui)
        page.goto(ui.url("/admin/models"))
        model = page.locator('[data-model="demo-chest-xray"]')
        expect(model).to_contain_text("Area under the ROC curve (INT8)")
        expect(model).to_contain_text("Lung nodule")
        visible = model.evaluate(
            """(el) => { const copy = el.cloneNode(true);
                 copy.querySelectorAll("details").forEach((d) => d.remove());
                 return copy.textContent; }"""
        )
        for raw in ("auc_int8", "cam_peak_in_lesion", "ab" * 32, "{"):
            assert raw not in visible, raw
        found = overflow(page, ".model, .model dl, .figure-box, .figures, .admin")
        assert found["page"] <= found["inner"], found
        assert found["wide"] == [], found["wide"]
        model.locator("details.raw > summary").tap()
        expect(model.locator("details.raw")).to_contain_text("ab" * 32)
        expect(model.locator("details.raw pre")).to_contain_text('"auc_int8"')
        found = overflow(page, ".model, .model dl, details.raw pre, .admin")
        assert found["page"] <= found["inner"] and found["wide"] == [], found
        assert json.loads(model.locator("details.raw pre").text_content() or "{}")["metrics"]
