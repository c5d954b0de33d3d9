"""The UI in a real browser (Debian's Chromium through Playwright) against real processes.

`appliance run` (or `appliance ui` alone) starts on a temporary data folder and prints its
one-time set-up code; the browser creates the administrator with it, the administrator a
technologist, and the technologist watches a chest X-ray pushed with DCMTK's storescu appear on
the open worklist with its findings, opens it, shows the heatmap and agrees with the finding.
Nothing may reach outside the machine (the guard in browser_fixtures), and the pages must fit
the 800x480 touch panel: no sideways scrolling, touch targets at least 48 px high.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from appliance.phantoms import CHEST_FINDINGS, chest_dataset, make_chest

from browser_fixtures import (
    Guarded,
    Screenshots,
    layout_problems,
    needs_chromium,
    playwright_api,
)
from conftest import RoleProcess, dcmtk, needs_dcmtk, read_only, wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Page

expect = playwright_api().expect  # skips this module where Playwright is missing
pytestmark = [pytest.mark.slow, pytest.mark.browser, needs_chromium]

SETUP_LINE = re.compile(
    r"ui: first start: open (http://[^/\s]+)/setup and enter the set-up code (\d{8})"
)
START_S = 120.0  # `appliance run` loads and warms the models before the worker is ready
ANALYSIS_MS = 120_000  # push -> findings on the open worklist, on a busy 2-core machine


@dataclass(frozen=True)
class Person:
    username: str
    display_name: str
    pin: str


ADMIN = Person("chief", "Chief Admin", "13572468")
TECHNOLOGIST = Person("tina", "Tina Tech", "2468")


@dataclass(frozen=True)
class RunningUI:
    """A started role process, where its UI listens and the set-up code it printed."""

    proc: RoleProcess
    base_url: str
    code: str

    def url(self, path: str = "/") -> str:
        return self.base_url + path


def start_ui(make: Callable[..., RoleProcess], role: str, **config: dict[str, Any]) -> RunningUI:
    """Start `appliance ROLE` (run or ui), with `config` sections over the test defaults, and
    read the set-up code from its first-start line."""
    proc = make(role, ready="ui: first start", **config)
    proc.start(timeout_s=START_S)
    for line in proc.output:
        match = SETUP_LINE.search(line)
        if match:
            return RunningUI(proc, match.group(1), match.group(2))
    raise AssertionError("no set-up code in the output:\n" + "".join(proc.output))


def wait_for_line(proc: RoleProcess, text: str, timeout_s: float = START_S) -> None:
    """Synchronise with a role's output (not a timing check)."""
    deadline = time.monotonic() + timeout_s
    while not any(text in line for line in proc.output):
        assert proc.process is not None and proc.process.poll() is None, "".join(proc.output)
        assert time.monotonic() < deadline, f"no {text!r} in:\n" + "".join(proc.output)
        time.sleep(0.05)


# --- what a person does ---------------------------------------------------------------------


def set_up_admin(page: Page, ui: RunningUI, code: str | None = None) -> None:
    """Fill in the first-start form (with the printed code unless another is given)."""
    page.goto(ui.url("/setup"))
    page.fill("#code", code or ui.code)
    page.fill("#username", ADMIN.username)
    page.fill("#display_name", ADMIN.display_name)
    page.fill("#pin", ADMIN.pin)
    page.fill("#pin_again", ADMIN.pin)
    page.click("main form button[type=submit]")


def sign_in(page: Page, ui: RunningUI, person: Person, keypad: bool = False) -> None:
    """Sign in, typing the PIN or tapping it on the on-screen keypad; lands on the worklist."""
    page.goto(ui.url("/signin"))
    page.fill("#username", person.username)
    if keypad:
        for digit in person.pin:
            page.click(f'.keypad [data-key="{digit}"]')
        expect(page.locator("#pin")).to_have_value(person.pin)
    else:
        page.fill("#pin", person.pin)
    page.click("form.signin button[type=submit]")
    expect(page).to_have_url(ui.url("/"))
    expect(page.locator("form.signout")).to_contain_text(person.display_name)


def sign_out(page: Page, ui: RunningUI) -> None:
    page.click("form.signout button")
    expect(page).to_have_url(re.compile(re.escape(ui.url("/signin"))))
    expect(page.locator("form.signout")).to_have_count(0)


def create_technologist(page: Page, ui: RunningUI) -> None:
    page.goto(ui.url("/admin/users"))
    page.fill("#new-username", TECHNOLOGIST.username)
    page.fill("#new-display-name", TECHNOLOGIST.display_name)
    page.select_option("#new-role", "technologist")
    page.fill("#new-pin", TECHNOLOGIST.pin)
    page.fill("#new-pin-again", TECHNOLOGIST.pin)
    page.click("#create-user")
    expect(page.locator("main")).to_contain_text(TECHNOLOGIST.username)


def push_chest(proc: RoleProcess, folder: Path) -> str:
    """A chest X-ray with a pleural effusion (only), sent with DCMTK; its Study UID."""
    findings = {name: name == "pleural_effusion" for name in CHEST_FINDINGS}
    ds = chest_dataset(make_chest(41, rows=768, findings=findings), study_key="browser-chest")
    path = folder / "chest.dcm"
    ds.save_as(path)
    command = [dcmtk("storescu"), "-aec", "APPLIANCE", "127.0.0.1", str(proc.port), str(path)]
    subprocess.run(command, check=True, timeout=60, capture_output=True)
    return str(ds.StudyInstanceUID)


def heatmaps_drawn(conn: sqlite3.Connection, study_uid: str) -> bool:
    """The worker drew the study's heatmaps (a follow-up job, moments after the findings)."""
    row = conn.execute(
        "SELECT 1 FROM artifacts a JOIN findings f ON f.id = a.finding_ref"
        " JOIN instances i ON i.id = f.instance_ref JOIN series se ON se.id = i.series_ref"
        " JOIN studies st ON st.id = se.study_ref WHERE st.study_uid = ? AND a.kind = 'heatmap'",
        (study_uid,),
    ).fetchone()
    return row is not None


def image_loaded(page: Page, selector: str) -> None:
    """Wait until the picture is decoded (a broken picture never is)."""
    page.wait_for_function(
        "(s) => { const i = document.querySelector(s);"
        " return i !== null && i.complete && i.naturalWidth > 0; }",
        arg=selector,
    )


def set_range(page: Page, selector: str, value: str) -> None:
    """Move a slider as a finger would end up: value set, input and change events sent."""
    page.eval_on_selector(
        selector,
        "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true}));"
        " el.dispatchEvent(new Event('change', {bubbles: true})); }",
        value,
    )


def check_layout(page: Page, what: str, sideways: bool = True) -> None:
    problems = layout_problems(page)
    if not sideways:
        problems = [p for p in problems if not p.startswith("horizontal")]
    assert not problems, f"{what} at 800x480:\n" + "\n".join(problems)


# --- the tests ------------------------------------------------------------------------------


def test_the_guard_blocks_and_records_a_request_to_an_outside_host(guarded: Guarded) -> None:
    """The guard itself works: a page that asks for an outside font is stopped and noted."""
    page = guarded.new_page()
    outside = "http://fonts.example.invalid/face.woff2"
    with page.expect_event("requestfailed"):
        page.set_content(f'<link rel="preload" as="font" crossorigin href="{outside}">')

    assert guarded.guard.blocked == [outside]
    guarded.guard.blocked.clear()  # seen: the fixture's final check is about the other tests


def test_the_layout_check_finds_small_targets_and_sideways_scrolling(guarded: Guarded) -> None:
    page = guarded.new_page()
    page.set_content(
        '<a href="#top" style="display:inline-block;height:20px">tiny</a>'
        '<button style="height:60px">big enough</button>'
        '<button hidden style="height:10px">hidden</button>'
        '<div style="width:2000px">wide</div>'
    )

    small, sideways = layout_problems(page)
    assert small == 'a "tiny" is 20.0 px high'
    assert sideways.startswith("horizontal scrolling: content 20") and "in a 800 px" in sideways
    assert layout_problems(page, allowed_small=(r'^a "tiny"',)) == [sideways]


def test_first_start_sign_out_and_sign_in_with_the_keypad(
    role_process: Callable[..., RoleProcess], guarded: Guarded, screenshots: Screenshots
) -> None:
    ui = start_ui(role_process, "ui")
    page = guarded.new_page()
    page.goto(ui.url("/"))
    expect(page).to_have_url(ui.url("/setup"))
    check_layout(page, "the set-up page")
    set_up_admin(page, ui, code="00000000" if ui.code != "00000000" else "11111111")
    expect(page.locator("[role=alert]")).to_contain_text("set-up code is not right")

    set_up_admin(page, ui)
    expect(page).to_have_url(ui.url("/"))
    expect(page.locator("form.signout")).to_contain_text(ADMIN.display_name)
    sign_out(page, ui)
    check_layout(page, "the sign-in page")
    screenshots.at_each_size(page, "signin")
    page.fill("#username", ADMIN.username)
    page.fill("#pin", "0000")
    page.click("form.signin button[type=submit]")
    expect(page.locator("[role=alert]")).to_contain_text("not right")
    sign_in(page, ui, ADMIN, keypad=True)

    assert page.goto(ui.url("/setup")).status == 404  # gone once an admin exists
    health = page.goto(ui.url("/health"))  # the UI alone: truthfully not able to take images
    assert health.status == 503
    assert health.json()["problems"] == ["receiver has not started", "worker has not started"]
    guarded.guard.assert_clean()


@needs_dcmtk
def test_a_pushed_chest_xray_reaches_the_open_worklist_and_takes_feedback(
    role_process: Callable[..., RoleProcess],
    guarded: Guarded,
    screenshots: Screenshots,
    tmp_path: Path,
) -> None:
    ui = start_ui(role_process, "run")
    page = guarded.new_page()
    set_up_admin(page, ui)
    expect(page).to_have_url(ui.url("/"))
    create_technologist(page, ui)
    sign_out(page, ui)
    sign_in(page, ui, TECHNOLOGIST, keypad=True)

    expect(page.locator("#worklist")).to_be_visible()
    page.evaluate("window.stayedOnThisPage = true")  # a reload would forget it
    wait_for_line(ui.proc, "receiver: listening")
    study_uid = push_chest(ui.proc, tmp_path)
    row = page.locator("#worklist tr.study-row")
    expect(row).to_have_count(1, timeout=ANALYSIS_MS)
    expect(row.locator(".top-finding")).to_contain_text(
        re.compile("effusion", re.I), timeout=ANALYSIS_MS
    )
    assert page.evaluate("window.stayedOnThisPage === true"), "the worklist was reloaded"
    conn = read_only(ui.proc)
    check_row(row, conn, study_uid)
    check_layout(page, "the worklist")
    screenshots.at_each_size(page, "worklist")

    wait_for(lambda: heatmaps_drawn(conn, study_uid))
    row.locator("a.open-study").click()
    image_loaded(page, "img#image")
    show_heatmap(page)
    agree_with_effusion(page, conn)
    check_layout(page, "the study view", sideways=False)
    screenshots.at_each_size(page, "study")
    sign_out(page, ui)
    conn.close()
    guarded.guard.assert_clean()


def check_row(row: Any, conn: sqlite3.Connection, study_uid: str) -> None:
    """The row is the pushed study's, and says what state it is in."""
    study = conn.execute("SELECT id FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
    assert row.get_attribute("data-study-id") == str(study["id"])
    assert row.get_attribute("data-state")


def show_heatmap(page: Page) -> None:
    """The toggle hides and shows the heatmap (whichever way it starts, it ends shown) and says
    so in aria-pressed; the slider changes the heatmap's opacity."""
    toggle = page.locator("button#toggle-heatmap")
    layer = page.locator("img.heatmap-layer").first
    expect(layer).to_be_attached()
    if toggle.get_attribute("aria-pressed") == "true":
        expect(layer).to_be_visible()
        toggle.click()
        expect(toggle).to_have_attribute("aria-pressed", "false")
        expect(layer).to_be_hidden()
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "true")
    expect(layer).to_be_visible()
    image_loaded(page, "img.heatmap-layer")
    before = layer.evaluate("(el) => getComputedStyle(el).opacity")
    slider = page.locator("input#heatmap-opacity")
    low = slider.get_attribute("min") or "0"
    high = slider.get_attribute("max") or "100"
    set_range(page, "input#heatmap-opacity", high if float(before) < 0.99 else low)
    expect(layer).not_to_have_css("opacity", before)


def agree_with_effusion(page: Page, conn: sqlite3.Connection) -> None:
    """Agree with the pleural effusion finding, with a comment; the store keeps both."""
    finding = page.locator('li.finding[data-label="pleural_effusion"]').first
    comment = "Blunted left costophrenic angle."
    finding.locator("textarea.feedback-comment").fill(comment)
    finding.locator('button.feedback[data-verdict="agree"]').click()
    expect(finding.locator(".feedback-recorded")).to_be_visible()
    saved = conn.execute(
        "SELECT f.finding_ref, f.label, f.verdict, f.comment, u.username FROM feedback f"
        " JOIN users u ON u.id = f.user_ref ORDER BY f.id DESC LIMIT 1"
    ).fetchone()
    assert dict(saved) == {
        "finding_ref": int(finding.get_attribute("data-finding-id") or 0),
        "label": "pleural_effusion",
        "verdict": "agree",
        "comment": comment,
        "username": TECHNOLOGIST.username,
    }
