"""One time format on every page: the Jinja filter `when` and its twin in static/time.js.

The store keeps UTC (ISO 8601); people read the box's local time, in the format the site
chose (`ui.time_format`: 24h or 12h). Today's times show the time only, other days add the
day (and the year when it is not this one), so a glance tells how recent something is.
Pages that build times in JavaScript get the same text from `appWhen` in static/time.js,
which reads the format, the box's UTC offset and the month names from `when_settings()`.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

from flask import Flask, current_app
from markupsafe import Markup, escape

from appliance.web.db import SETTINGS
from appliance.web.i18n import t

_READY = "appliance.timefmt"  # app.extensions key: registered once


def init_app(app: Flask) -> None:
    """Register the filter and globals; safe to call more than once."""
    if app.extensions.get(_READY):
        return
    app.extensions[_READY] = True
    app.jinja_env.filters["when"] = when
    app.jinja_env.globals["when_tag"] = when_tag
    app.jinja_env.globals["when_settings"] = when_settings
    app.jinja_env.globals["keypad_texts"] = keypad_texts


def when(
    value: str | datetime | float | None,
    seconds: bool = False,
    day: bool = False,
    now: datetime | None = None,
) -> str:
    """A stored time as people read it here: `14:05` today, `3 Dec 14:05` another day,
    `3 Dec 2024 14:05` another year (`2:05 PM` with the 12-hour format). `seconds` adds
    the seconds; `day` shows the day even for today. Nothing stored: a dash."""
    moment = as_utc(value)
    if moment is None:
        return t("time.none")
    local = moment.astimezone()
    today = (now or datetime.now(timezone.utc)).astimezone().date()
    clock = _clock(local, seconds)
    if local.date() == today and not day:
        return clock
    return t("time.day_time", day=_day(local.date(), today), time=clock)


def when_tag(value: str | datetime | float | None, seconds: bool = False) -> Markup:
    """`<time datetime="…" data-when>text</time>`: the text as `when` gives it, the UTC
    time for scripts that format it again (static/time.js, `appWhenAll`)."""
    moment = as_utc(value)
    text = when(value, seconds=seconds)
    if moment is None:
        return Markup("<span>{}</span>").format(text)
    iso = moment.isoformat(timespec="seconds")
    extra = Markup(' data-seconds="1"') if seconds else Markup("")
    return Markup('<time datetime="{}" data-when{}>{}</time>').format(iso, extra, escape(text))


def as_utc(value: str | datetime | float | None) -> datetime | None:
    """A stored time as an aware UTC datetime: ISO text (no zone means UTC, as stored),
    a datetime (naive means UTC) or epoch seconds. Empty or unreadable: None."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(float(value), timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    else:
        try:
            moment = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _twelve_hours() -> bool:
    return bool(current_app.extensions[SETTINGS].ui.time_format == "12h")


def _clock(local: datetime, seconds: bool) -> str:
    pattern = ":%M:%S" if seconds else ":%M"
    if not _twelve_hours():
        return local.strftime("%H" + pattern)
    hour = local.hour % 12 or 12
    half = t("time.am") if local.hour < 12 else t("time.pm")
    return t("time.clock_12h", time=f"{hour}{local.strftime(pattern)}", half=half)


def _day(day: date, today: date) -> str:
    month = t(f"time.month_{day.month}")
    if day.year == today.year:
        return t("time.day_month", d=day.day, month=month)
    return t("time.day_month_year", d=day.day, month=month, year=day.year)


def when_settings() -> dict[str, Any]:
    """What static/time.js needs to write times as `when` does (rendered into base.html)."""
    offset = datetime.now().astimezone().utcoffset()
    return {
        "twelve": _twelve_hours(),
        "offset_min": int(offset.total_seconds() // 60) if offset else 0,
        "months": [t(f"time.month_{n}") for n in range(1, 13)],
        "am": t("time.am"),
        "pm": t("time.pm"),
        "clock_12h": t("time.clock_12h"),
        "day_month": t("time.day_month"),
        "day_month_year": t("time.day_month_year"),
        "day_time": t("time.day_time"),
        "none": t("time.none"),
    }


def keypad_texts() -> dict[str, str]:
    """The on-screen keypad's labels (static/keypad.js), from the catalogue."""
    keys = ("back", "clear", "done", "point", "label")
    return {key: t(f"keypad.{key}") for key in keys}
