"""The live ultrasound view in a real browser (Debian's Chromium through Playwright).

`appliance run` starts with the generated capture source (a scanner's screen with a breathing
B-mode sector) and the demo ultrasound model; the administrator set up with the printed code
opens /live, sees the picture change and the model's outline drawn over it, freezes it, saves
the frozen frame for a new patient, and finds that patient's study on the worklist with the
model's findings. Nothing may reach outside the machine, and the page must fit the 800x480 and
1024x600 touch panels (no sideways scrolling, touch targets at least 48 px high).
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from appliance.phantoms.generated_source import GeneratedSource

from browser_fixtures import (
    SIZES,
    Guarded,
    Screenshots,
    needs_chromium,
    playwright_api,
)
from conftest import RoleProcess, read_only, wait_for
from test_browser import (
    ANALYSIS_MS,
    START_S,
    RunningUI,
    check_layout,
    image_loaded,
    set_up_admin,
    start_ui,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page

expect = playwright_api().expect  # skips this module where Playwright is missing
pytestmark = [pytest.mark.slow, pytest.mark.browser, needs_chromium]

LIVE_MS = int(START_S * 1000)  # start-up to a live picture: the worker loads its models first
SAVE_MS = 60_000  # the save request -> stored (the worker's control thread, then ingest)
PATIENT_NAME, PATIENT_ID = "Live, Test", "LIVE-0001"
SIZE = (1280, 720)  # the generated source's frames
SNAPSHOT_JS = """
() => {
  const img = document.getElementById("live-image");
  const canvas = document.createElement("canvas");
  canvas.width = 160;
  canvas.height = 90;
  canvas.getContext("2d").drawImage(img, 0, 0, 160, 90);
  return canvas.toDataURL("image/png");
}
"""


def start_with_capture(make: Callable[..., RoleProcess]) -> RunningUI:
    """`appliance run` with the generated source; where its UI is and its set-up code."""
    width, height = SIZE
    source = {"kind": "generated", "width": width, "height": height, "fps": 30.0, "name": "gen"}
    return start_ui(make, "run", capture={"source": source})


def snapshot(page: Page) -> str:
    """The picture the image element shows now, small, as a PNG data URL."""
    value: str = page.evaluate(SNAPSHOT_JS)
    return value


def picture_changes(page: Page, wait_s: float = 0.4) -> bool:
    first = snapshot(page)
    time.sleep(wait_s)  # pacing between two looks, not a timing check
    return snapshot(page) != first


def wait_until_live(page: Page) -> None:
    expect(page.locator("#live-state")).to_have_attribute("data-state", "live", timeout=LIVE_MS)
    image_loaded(page, "img#live-image")
    wait_for(lambda: picture_changes(page), timeout_s=30)


def check_overlay(page: Page) -> None:
    """The model's outline over the picture, what it found, how fast and how far behind."""
    expect(page.locator("svg#live-overlay polygon.outline").first).to_be_attached(timeout=LIVE_MS)
    expect(page.locator("#inference-fps")).to_have_text(re.compile(r"^\d+(\.\d)? per second$"))
    expect(page.locator("#overlay-age")).to_have_text(re.compile(r"^\d+ ms$"))
    expect(page.locator("#live-finding")).to_contain_text(re.compile("fluid", re.I))
    expect(page.locator("#live-demo")).to_be_visible()


def calibrate(page: Page, ui: RunningUI, conn: sqlite3.Connection) -> float:
    """Drag a box, then take the area found automatically and the generated source's true
    scale; the store keeps them. The true scale (mm per pixel)."""
    truth = GeneratedSource(*SIZE).truth(0)
    page.click("#live-calibrate")
    expect(page).to_have_url(ui.url("/live/calibrate"))
    image_loaded(page, "img#calibrate-image")
    check_layout(page, "the calibration page")
    box = page.locator("svg#calibrate-box").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 0.2 * box["width"], box["y"] + 0.2 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.6 * box["width"], box["y"] + 0.7 * box["height"], steps=5)
    page.mouse.up()
    width = int(page.input_value("#cal-width"))
    assert abs(width - 0.4 * SIZE[0]) <= 0.02 * SIZE[0]  # image pixels, not screen pixels
    expect(page.locator("#calibrate-rect")).to_have_attribute("width", str(width))
    page.click("#cal-detected")
    region = [int(page.input_value(f"#cal-{name}")) for name in ("x", "y", "width", "height")]
    page.fill("#cal-mm-per-pixel", f"{truth.mm_per_pixel:.6f}")
    page.click("#cal-save")
    expect(page.locator("[role=alert]")).to_contain_text("Calibration saved")
    row = conn.execute("SELECT x, y, width, height, mm_per_pixel FROM capture_calibration")
    saved = row.fetchone()
    assert list(saved)[:4] == region and saved[4] == pytest.approx(truth.mm_per_pixel, 1e-5)
    page.click("text=Back to live")
    return truth.mm_per_pixel


def check_area(page: Page) -> None:
    """Calibrated, the model's fluid is measured in mm², near the generated truth."""
    source = GeneratedSource(*SIZE)
    areas = [source.truth(i).fluid_area_mm2 for i in range(2 * source.loop_frames)]
    finding = page.locator("#live-finding")
    expect(finding).to_contain_text("mm²", timeout=LIVE_MS)
    shown = float(re.sub(r"[^0-9.]", "", (finding.text_content() or "").split("fluid")[-1]))
    assert 0.8 * min(areas) <= shown <= 1.2 * max(areas), (shown, min(areas), max(areas))


def check_layouts(page: Page, screenshots: Screenshots) -> None:
    for size, (width, height) in SIZES.items():
        page.set_viewport_size({"width": width, "height": height})
        check_layout(page, f"the live view at {size}")
        for button in ("#freeze", "#resume", "#save-frame", "#save-clip"):
            box = page.locator(button).bounding_box()
            assert box is not None and box["height"] >= 48 and box["width"] >= 48, button
    screenshots.at_each_size(page, "live")


def freeze(page: Page) -> None:
    page.click("#freeze")
    state = page.locator("#live-state")
    expect(state).to_have_attribute("data-held", "true", timeout=SAVE_MS)
    expect(page.locator("#resume")).to_be_enabled()
    expect(page.locator("#freeze")).to_be_disabled()
    # A frame that was on its way may still arrive: wait until the picture holds still, then
    # look once more over a longer interval.
    wait_for(lambda: not picture_changes(page), 30, what="the frozen picture to hold still")
    assert not picture_changes(page, wait_s=1.0), "the picture changed while frozen"


def save_for_new_patient(page: Page) -> str:
    """Save the frozen frame for a new patient; the study page's address."""
    expect(page.locator("#live-study")).to_have_value("new")
    page.fill("#live-patient-name", PATIENT_NAME)
    page.fill("#live-patient-id", PATIENT_ID)
    page.click("#save-frame")
    link = page.locator("#live-saved a#live-saved-link")
    expect(link).to_be_visible(timeout=SAVE_MS)
    href = link.get_attribute("href") or ""
    assert re.fullmatch(r"/study/\d+", href), href
    # The next save for this patient joins the same study.
    expect(page.locator("#live-study")).to_have_value(href.rsplit("/", 1)[1])
    expect(page.locator("#live-new-patient")).to_be_hidden()
    return href


def check_stored(conn: sqlite3.Connection, study_id: int) -> None:
    """One captured US image in the study, with the model's findings, by the right user."""
    row = conn.execute(
        "SELECT i.source, se.modality, p.patient_id, p.patient_name, a.state FROM instances i"
        " JOIN series se ON se.id = i.series_ref JOIN studies st ON st.id = se.study_ref"
        " JOIN patients p ON p.id = st.patient_ref LEFT JOIN analyses a ON a.instance_ref = i.id"
        " WHERE st.id = ?",
        (study_id,),
    ).fetchone()
    assert tuple(row) == ("capture", "US", PATIENT_ID, "Live^Test", "findings")
    trail = [r[0] for r in conn.execute("SELECT action FROM audit WHERE action LIKE 'capture.%'")]
    assert {"capture.requested", "capture.freeze", "capture.save_frame"} <= set(trail)


def test_live_view_freeze_and_save_to_the_worklist(
    role_process: Callable[..., RoleProcess], guarded: Guarded, screenshots: Screenshots
) -> None:
    ui = start_with_capture(role_process)
    page = guarded.new_page()
    set_up_admin(page, ui)
    expect(page).to_have_url(ui.url("/"))
    page.click("nav a[href='/live']")
    expect(page).to_have_url(ui.url("/live"))

    wait_until_live(page)
    check_overlay(page)
    conn = read_only(ui.proc)
    calibrate(page, ui, conn)
    wait_until_live(page)
    check_area(page)
    check_layouts(page, screenshots)
    freeze(page)
    study_url = save_for_new_patient(page)
    page.click("#resume")
    expect(page.locator("#live-state")).to_have_attribute("data-held", "false", timeout=SAVE_MS)
    wait_for(lambda: picture_changes(page), timeout_s=30)

    page.click("#live-saved-link")
    expect(page).to_have_url(ui.url(study_url))
    page.click("nav a[href='/']")
    row = page.locator("#worklist tr.study-row", has_text=PATIENT_ID)
    expect(row).to_have_count(1, timeout=ANALYSIS_MS)
    expect(row.locator(".top-finding")).to_contain_text(
        re.compile("fluid", re.I), timeout=ANALYSIS_MS
    )
    expect(row.locator(".top-finding")).to_contain_text("mm²")
    check_stored(conn, int(study_url.rsplit("/", 1)[1]))
    conn.close()
    guarded.guard.assert_clean()
