"""Printing the study page gives the report, in a real browser (Debian's Chromium through
Playwright) against the real UI role: Chromium's own print to PDF, read back with pdftotext,
has the site, the patient, the findings in words, the caution, the feedback and the signed
impression, and none of the controls (buttons, forms, links, the bar, the sending panel).

The store is seeded as the worker and the sender would have left it (see test_web_sending).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from appliance.config import Settings
from appliance.store import feedback, open_store, outbox, users
from appliance.store.db import transaction

from browser_fixtures import Guarded, Screenshots, layout_problems, needs_chromium, playwright_api
from conftest import RoleProcess
from test_web_sending import (
    CAUTION,
    DESTINATIONS,
    USERS,
    Template,
    box_settings,
    make_template,
    queue_objects,
    record_objects,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page

expect = playwright_api().expect  # skips this module where Playwright is missing
pytestmark = [pytest.mark.slow, pytest.mark.browser, needs_chromium]

SITE = "Río Clinic Outpatients"
COMMENT = "Blunted left costophrenic angle."
IMPRESSION = "Small left pleural effusion. No pneumothorax."
# What a person could press on the study page; a printed report shows none of it.
CONTROL_WORDS = (
    "Send again",
    "Sign out",
    "Agree",
    "Disagree",
    "Unsure",
    "Save impression",
    "Show on image",
    "Export to USB",
    "Report (PDF)",
    "Worklist",
    "Fit",
    "Reset window",
    "Comment (optional)",
)
_VISIBLE_CONTROLS_JS = """
() => [...document.querySelectorAll(
    'a[href], button, input, select, textarea, summary, [role="button"], [tabindex]')]
  .filter((el) => {
    const box = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    return box.width > 0 && box.height > 0 && style.visibility !== "hidden"
      && style.display !== "none";
  })
  .map((el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
    + " " + (el.innerText || el.value || "").trim().slice(0, 30))
"""


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return make_template(tmp_path_factory.mktemp("print"))


@pytest.fixture
def ui(template: Template, tmp_path: Path) -> Iterator[RoleProcess]:
    """`appliance ui` on a copy of the template, with a reviewed and partly sent study."""
    shutil.copytree(template.root / "data", tmp_path / "data")
    settings = box_settings(tmp_path, destinations=DESTINATIONS, site_name=SITE)
    reviewed(settings, template)
    config = tmp_path / "appliance.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    proc = RoleProcess(config, settings, role="ui", ready="ui: serving on")
    proc.start()
    yield proc
    proc.stop()


def reviewed(settings: Settings, template: Template) -> None:
    """A clinician's feedback and final impression, and the objects sent to the PACS."""
    store = open_store(settings)
    try:
        conn = store.conn
        clinician = next(u for u in users.list_users(conn) if u.username == USERS["clinician"])
        finding = int(conn.execute("SELECT id FROM findings").fetchone()[0])
        feedback.add_feedback(
            conn, finding, "pleural_effusion", "agree", COMMENT, clinician.id, "test"
        )
        feedback.add_impression(conn, template.study_id, IMPRESSION, True, clinician.id, "test")
        made = record_objects(store, template.instance_id, template.study_id)
        for delivery in queue_objects(store, template.study_id, "pacs", made):
            with transaction(conn):
                outbox.mark_sent(conn, delivery, "sender")
    finally:
        store.close()


def sign_in(page: Page, base: str, username: str) -> None:
    page.goto(base + "/signin")
    page.fill("#username", username)
    page.fill("#pin", "2468")
    page.click("form.signin button[type=submit]")
    expect(page).to_have_url(base + "/")


def test_printing_the_study_page_gives_the_report_without_controls(
    ui: RoleProcess,
    template: Template,
    guarded: Guarded,
    screenshots: Screenshots,
    tmp_path: Path,
) -> None:
    base = f"http://127.0.0.1:{ui.settings.ui.port}"
    page = guarded.new_page()
    sign_in(page, base, USERS["clinician"])
    page.goto(f"{base}/study/{template.study_id}")
    for selector in ("img#image", "img.heatmap-layer"):
        page.wait_for_function(
            "(s) => { const i = document.querySelector(s);"
            " return i !== null && i.complete && i.naturalWidth > 0; }",
            arg=selector,
        )
    panel = page.locator('li.destination[data-destination="pacs"]')
    expect(panel).to_contain_text(re.compile(r"3 of 3 sent at \d\d:\d\d"))
    expect(page.locator("button", has_text="Send again").first).to_be_visible()
    problems = [p for p in layout_problems(page) if not p.startswith("horizontal")]
    assert not problems, "the study page at 800x480:\n" + "\n".join(problems)
    screenshots.at_each_size(page, "study-with-sending")

    page.emulate_media(media="print")
    assert page.evaluate(_VISIBLE_CONTROLS_JS) == []
    screenshots.at_each_size(page, "study-print")
    pdf = tmp_path / "screenshots" / "study-print.pdf"
    page.pdf(path=str(pdf), format="A4", print_background=True)
    words = pdf_words(pdf)

    for expected in (
        SITE,
        "PÉREZ, ANA",
        "EXP-001",
        "Accession ACC-42",
        "Chest X-ray findings (demo)",
        "Pleural effusion: flagged urgent",
        "Pleural effusion: score 0.91, above the operating threshold 0.45",
        "Cardiomegaly: score 0.12, below the operating threshold 0.25",
        CAUTION,
        IMPRESSION,
    ):
        assert expected in words, f"{expected!r} is not in the printed page:\n{words}"
    assert re.search(rf"Agreed by Doc1 \d\d:\d\d “{re.escape(COMMENT)}”", words), words
    assert re.search(rf"{re.escape(IMPRESSION)} Final by Doc1 \d\d:\d\d", words), words
    for control in CONTROL_WORDS:
        assert not re.search(rf"(?<!\w){re.escape(control)}(?!\w)", words), (
            f"the control {control!r} is printed:\n{words}"
        )
    assert "sent at" not in words  # the sending panel stays on the screen
    guarded.guard.assert_clean()


def pdf_words(pdf: Path) -> str:
    """The PDF's text, white space folded (pdftotext lays out lines as printed)."""
    assert pdf.read_bytes().startswith(b"%PDF-")
    done = subprocess.run(
        ["pdftotext", "-enc", "UTF-8", str(pdf), "-"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return " ".join(done.stdout.decode("utf-8").split())
