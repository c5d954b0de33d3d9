"""The worklist page without the seeded studies: an empty box, a long worklist a page at a time,
and findings said without their scores (the states and filters are in test_web_worklist)."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

from appliance.bench.ui.seed import seed_store
from appliance.web.worklist import PAGE_ROWS, finding_words

from conftest import add_user, sign_in


def rows_in(client: FlaskClient, path: str) -> int:
    return client.get(path).get_data(as_text=True).count('<tr class="study-row')


def test_an_empty_worklist_says_no_studies_yet(app: Flask, client: FlaskClient) -> None:
    add_user(app, "admin1", "admin")  # the box is set up
    add_user(app, "tech1", "technologist")
    sign_in(client, "tech1")
    html = client.get("/").get_data(as_text=True)
    assert "No studies yet." in html
    assert "No studies match" not in html and "clear-filters" not in html


def test_a_long_worklist_shows_a_page_and_more_on_request(app: Flask, client: FlaskClient) -> None:
    add_user(app, "admin1", "admin")
    author = add_user(app, "tech1", "technologist")
    seed_store(app.extensions["appliance.store"], 30, author)
    sign_in(client, "tech1")
    first = client.get("/").get_data(as_text=True)
    assert first.count('<tr class="study-row') == PAGE_ROWS
    more = re.search(
        r'<a id="worklist-more" class="button more-rows" href="([^"]+)"(\s+hidden)?', first
    )
    assert more is not None and not more.group(2)
    assert more.group(1) == f"/?rows={2 * PAGE_ROWS}"
    assert (client.get("/api/worklist").json or {})["more"] is True
    everything = client.get(more.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert everything.count('<tr class="study-row') == 30
    assert re.search(r'id="worklist-more"[^>]*\shidden', everything)
    assert (client.get("/api/worklist", query_string={"rows": "50"}).json or {})["more"] is False
    # Any other number is a whole number of pages, within the store's cap.
    assert rows_in(client, "/?rows=26") == 30
    assert rows_in(client, "/?rows=-4") == PAGE_ROWS
    assert client.get("/?rows=x").status_code == 200


@pytest.mark.parametrize(
    ("summary", "words"),
    [
        ("Pleural effusion 0.91 (threshold 0.45)", "Pleural effusion"),
        ("Lung nodule or mass 0.70 (threshold 0.50) (+2 more)", "Lung nodule or mass and 2 more"),
        ("Anechoic fluid 1,234 mm²", "Anechoic fluid 1,234 mm²"),
        ("Anechoic fluid 1,696 pixels (no physical pixel size)", "Anechoic fluid"),
        ("no findings above the thresholds", ""),
        ("Something a newer model says", "Something a newer model says"),
    ],
)
def test_findings_are_said_without_scores_or_thresholds(
    app: Flask, summary: str, words: str
) -> None:
    with app.app_context():
        assert finding_words(summary) == words
