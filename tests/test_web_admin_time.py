"""One time format on every page: the `when` filter shows a stored UTC time in the box's own
time zone, in the format the site chose (`ui.time_format`), with the day only when it is not
today."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from flask import Flask, render_template_string

from appliance.web import create_app, timefmt

from conftest import add_user, make_settings, sign_in

# 13:05 UTC on a winter day is 08:05 in New York (UTC-5); a summer day is UTC-4.
NOW = datetime(2025, 1, 15, 18, 0, tzinfo=timezone.utc)


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The box's clock set to New York, as /etc/localtime would (TZ for this process)."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[Callable[[str], Flask]]:
    """A UI with the given `ui.time_format`; its store closed at the end."""
    made: list[Flask] = []

    def make(time_format: str) -> Flask:
        settings = make_settings(tmp_path / time_format, ui={"time_format": time_format})
        made.append(create_app(settings, TESTING=True))
        return made[-1]

    yield make
    for app in made:
        app.extensions["appliance.store"].close()


@pytest.mark.usefixtures("new_york")
@pytest.mark.parametrize(
    ("time_format", "stored", "shown"),
    [
        ("24h", "2025-01-15T13:05:09.123456+00:00", "08:05"),
        ("12h", "2025-01-15T13:05:09.123456+00:00", "8:05 AM"),
        ("12h", "2025-01-15T17:30:00+00:00", "12:30 PM"),
        ("12h", "2025-01-15T05:10:00+00:00", "12:10 AM"),
        ("24h", "2025-01-03T22:40:00+00:00", "3 Jan 17:40"),
        ("12h", "2025-07-03T22:40:00+00:00", "3 Jul 6:40 PM"),  # summer: UTC-4
        ("24h", "2024-12-31T12:00:00+00:00", "31 Dec 2024 07:00"),
    ],
)
def test_times_read_in_the_boxs_zone_and_the_chosen_format(
    ui: Callable[[str], Flask], time_format: str, stored: str, shown: str
) -> None:
    app = ui(time_format)
    with app.app_context():
        assert timefmt.when(stored, now=NOW) == shown


@pytest.mark.usefixtures("new_york")
def test_seconds_the_day_and_what_the_store_may_hold(ui: Callable[[str], Flask]) -> None:
    app = ui("24h")
    with app.app_context():
        assert timefmt.when("2025-01-15T13:05:09+00:00", seconds=True, now=NOW) == "08:05:09"
        assert timefmt.when("2025-01-15T13:05:09+00:00", day=True, now=NOW) == "15 Jan 08:05"
        assert timefmt.when("2025-01-15T13:05:09", now=NOW) == "08:05"  # no zone: UTC, as stored
        assert timefmt.when(datetime(2025, 1, 15, 13, 5), now=NOW) == "08:05"
        assert timefmt.when(NOW.timestamp(), now=NOW) == "13:00"
        for nothing in (None, "", "not a time"):
            assert timefmt.when(nothing) == "\u2013"


@pytest.mark.usefixtures("new_york")
def test_templates_get_the_filter_and_the_tag(ui: Callable[[str], Flask]) -> None:
    app = ui("12h")
    with app.test_request_context():
        text = render_template_string("{{ at | when(day=True) }}", at="2025-01-15T13:05:00Z")
        tag = render_template_string("{{ when_tag(at) }}", at="2025-01-15T13:05:00+00:00")
        settings = timefmt.when_settings()
    assert re.fullmatch(r"15 Jan (\d{4} )?8:05 AM", text)  # the year unless this is 2025
    assert tag.startswith('<time datetime="2025-01-15T13:05:00+00:00" data-when>')
    assert settings["twelve"] is True and settings["months"][0] == "Jan"
    assert settings["offset_min"] in (-300, -240)  # New York, winter or summer


def test_the_audit_page_shows_todays_times_in_the_chosen_format(
    ui: Callable[[str], Flask],
) -> None:
    app = ui("12h")
    add_user(app, "root", "admin")
    client = app.test_client()
    sign_in(client, "root")
    page = client.get("/admin/audit").get_data(as_text=True)
    shown = re.findall(
        r"<time datetime=\"[^\"]+\" data-when data-seconds=\"1\">([^<]+)</time>", page
    )
    assert shown, page
    assert all(re.fullmatch(r"\d{1,2}:\d\d:\d\d [AP]M", text) for text in shown), shown
