"""The study page on the touch panels (Debian's Chromium through Playwright, 800x480 and
1024x600): the image, the AI overlay toggle, window/level, the frame controls and a clip's
play/pause all inside the window without scrolling the page; the findings panel scrolls on its
own beside the image; playing advances frames and pausing stops them; a refused impression
says why beside the field, in view. The UI serves the store test_web_worklist seeds (a chest
X-ray with findings, a 4-frame ultrasound clip at 25 frames per second) from a thread."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from browser_fixtures import SIZES, Guarded, Screenshots, needs_chromium, playwright_api
from test_web_worklist import USERS, Seeded, Template, make_template, open_seeded

expect = playwright_api().expect  # skips this module where Playwright is missing
pytestmark = [pytest.mark.slow, pytest.mark.browser, needs_chromium]

WINDOW_TOOLS = ("#window-drag", "#level-down", "#level-up", "#width-down", "#width-up")
CHEST_CONTROLS = ("#image", "#zoom-fit", "#toggle-heatmap", "#heatmap-opacity", *WINDOW_TOOLS)
CLIP_CONTROLS = ("#image", "#toggle-heatmap", "#prev-frame", "#play-pause", "#next-frame")
FORBIDDEN = ("correlation", "photometric", "threshold", "UID", "pixels", "SOP", "JSON")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return make_template(tmp_path_factory.mktemp("seeded-screen"))


@pytest.fixture
def served(template: Template, tmp_path: Path) -> Iterator[tuple[Seeded, str]]:
    """The seeded UI over HTTP on a loopback port, and its address."""
    seeded = open_seeded(template, tmp_path)
    server = make_server("127.0.0.1", 0, seeded.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield seeded, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        seeded.store.close()


def signed_in_page(guarded: Guarded, base: str) -> Any:
    page = guarded.new_page()
    page.goto(base + "/signin")
    page.fill("#username", USERS["clinician"])
    page.fill("#pin", "2468")
    page.click("form.signin button[type=submit]")
    expect(page).to_have_url(base + "/")
    return page


def open_study(page: Any, base: str, study_id: int, size: str) -> None:
    width, height = SIZES[size]
    page.set_viewport_size({"width": width, "height": height})
    page.goto(f"{base}/study/{study_id}")
    page.wait_for_function(
        "() => { const i = document.querySelector('#image');"
        " return i && i.complete && i.naturalWidth > 0; }"
    )
    settled(page)


def settled(page: Any) -> None:
    """Wait until the page shown has run its scripts. The browser lays out (and may paint) a page
    as soon as it is parsed, but viewer.js sizes the study to the window and brings a form's note
    into view only at DOMContentLoaded, which waits for every deferred script of the page
    (app.js, time.js, keypad.js, viewer.js); the browser's own jump to the #fragment comes at
    load. A locator that is already visible says nothing about that: measure after load."""
    page.wait_for_load_state("load")


def outside_the_window(page: Any, selectors: tuple[str, ...]) -> list[str]:
    """Each selector whose box is not wholly inside the window (or that is missing or hidden),
    with the page scrolled to its top; and whether the page itself scrolls."""
    return list(
        page.evaluate(
            """(selectors) => {
              window.scrollTo(0, 0);
              const out = [];
              for (const s of selectors) {
                const el = document.querySelector(s);
                if (!el || el.closest('[hidden]')) { out.push(s + ' missing'); continue; }
                const b = el.getBoundingClientRect();
                if (b.width < 1 || b.height < 1 || b.left < 0 || b.top < 0
                    || b.right > innerWidth + 0.5 || b.bottom > innerHeight + 0.5) {
                  out.push(s + ' at ' + [b.left, b.top, b.right, b.bottom].map(Math.round));
                }
              }
              const root = document.scrollingElement;
              const tall = root.scrollHeight;
              if (tall > innerHeight + 1) out.push('page scrolls ' + tall);
              return out;
            }""",
            list(selectors),
        )
    )


def visible_words(page: Any) -> str:
    """What the panel shows in words (closed <details> hold the technical side)."""
    return str(page.evaluate("() => document.querySelector('main').innerText"))


def shown_frame(page: Any) -> int:
    src = str(page.get_attribute("#image", "src"))
    return int(src.split("frame=")[1].split("&")[0])


@pytest.mark.parametrize("size", list(SIZES))
def test_the_chest_viewer_and_its_tools_fit_without_scrolling(
    served: tuple[Seeded, str], guarded: Guarded, screenshots: Screenshots, size: str
) -> None:
    seeded, base = served
    page = signed_in_page(guarded, base)
    open_study(page, base, seeded.studies["effusion"], size)
    assert outside_the_window(page, CHEST_CONTROLS) == []
    panel = page.locator("#findings-panel")
    box = panel.bounding_box()
    image = page.locator("#viewport").bounding_box()
    assert box is not None and image is not None
    assert box["x"] >= image["x"] + image["width"]  # beside the image, not under it
    assert panel.evaluate("(el) => el.scrollHeight > el.clientHeight")  # it scrolls on its own
    words = visible_words(page)
    for term in FORBIDDEN:
        assert term not in words, term
    assert "Pleural effusion: flagged urgent" in words
    page.locator(".finding-details summary").first.click()  # one tap shows the measures
    assert "threshold" in visible_words(page)
    page.click("#level-up")  # the window tools work where they are
    expect(page.locator("#image")).to_have_attribute("src", re.compile(r"[?&]wc="))
    screenshots.at_each_size(page, f"study-chest-{size}")


@pytest.mark.parametrize("size", list(SIZES))
def test_a_clip_plays_and_pauses_within_reach(
    served: tuple[Seeded, str], guarded: Guarded, screenshots: Screenshots, size: str
) -> None:
    seeded, base = served
    page = signed_in_page(guarded, base)
    open_study(page, base, seeded.studies["ultrasound"], size)
    assert outside_the_window(page, CLIP_CONTROLS) == []
    play = page.locator("#play-pause")
    assert play.get_attribute("aria-pressed") == "false"
    play.click()
    expect(play).to_have_attribute("aria-pressed", "true")
    # Every frame shown while it plays is noted, until three different ones (it moves on, and
    # with four frames it loops); however slowly the frames come on a busy machine.
    page.evaluate(
        """() => { window.framesSeen = new Set();
          new MutationObserver(() => window.framesSeen.add(
            document.querySelector('#image').src.split('frame=')[1]))
          .observe(document.querySelector('#image'), {attributes: true}); }"""
    )
    page.wait_for_function("() => window.framesSeen.size >= 3")
    play.click()
    expect(play).to_have_attribute("aria-pressed", "false")
    stopped = shown_frame(page)
    page.wait_for_timeout(400)  # ten frame times: a playing clip would have moved
    assert shown_frame(page) == stopped
    assert f"frame={stopped}" in page.url  # a reload shows the same frame
    page.locator("#viewport").click()  # the keyboard: space plays, an arrow steps and stops
    page.keyboard.press(" ")
    expect(play).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("ArrowRight")
    expect(play).to_have_attribute("aria-pressed", "false")
    words = visible_words(page)
    for term in FORBIDDEN:
        assert term not in words, term
    screenshots.at_each_size(page, f"study-clip-{size}")


@pytest.mark.parametrize("size", list(SIZES))
def test_an_empty_impression_says_why_beside_the_field_in_view(
    served: tuple[Seeded, str], guarded: Guarded, size: str
) -> None:
    seeded, base = served
    page = signed_in_page(guarded, base)
    open_study(page, base, seeded.studies["effusion"], size)
    page.fill("#impression-text", "   ")  # passes the browser's own check, not the box's
    page.click("#impression button[type=submit]")
    error = page.locator("#impression-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("Write your impression")
    settled(page)
    assert outside_the_window(page, ("#impression-error", "#impression-text")) == []
    expect(page.locator("#impression-text")).to_be_focused()
    assert page.locator("p.message", has_text="Write your impression").count() == 0
    page.fill("#impression-text", "Right effusion.")
    page.click("#impression button[type=submit]")
    saved = page.locator("#impression-saved")
    expect(saved).to_be_visible()
    settled(page)
    assert outside_the_window(page, ("#impression-saved",)) == []
