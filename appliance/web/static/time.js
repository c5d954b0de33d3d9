// Times written by scripts, in the same one format as the server's `when` filter
// (appliance/web/timefmt.py): the box's local time, 24- or 12-hour as the site chose, the day
// only when it is not today. The format, the box's UTC offset and the month names come from
// this script tag's data-when attribute (rendered by base.html from when_settings()).
"use strict";

(function () {
  if (window.appWhen) return; // loaded twice (base.html and a page): once is enough

  const script = document.currentScript;
  let settings = null;
  try {
    settings = JSON.parse((script && script.dataset.when) || "null");
  } catch (error) {
    settings = null;
  }

  function fill(pattern, values) {
    return pattern.replace(/\{(\w+)\}/g, function (all, name) {
      return name in values ? String(values[name]) : all;
    });
  }

  function two(n) {
    return (n < 10 ? "0" : "") + n;
  }

  // The box's wall clock for a moment: shifted by its UTC offset, read with getUTC*.
  function boxClock(moment) {
    return new Date(moment.getTime() + settings.offset_min * 60000);
  }

  function clock(local, seconds) {
    const rest = ":" + two(local.getUTCMinutes()) + (seconds ? ":" + two(local.getUTCSeconds()) : "");
    const hour = local.getUTCHours();
    if (!settings.twelve) return two(hour) + rest;
    const half = hour < 12 ? settings.am : settings.pm;
    return fill(settings.clock_12h, { time: String(hour % 12 || 12) + rest, half: half });
  }

  function dayText(local, today) {
    const values = {
      d: local.getUTCDate(),
      month: settings.months[local.getUTCMonth()],
      year: local.getUTCFullYear(),
    };
    const pattern = local.getUTCFullYear() === today.getUTCFullYear()
      ? settings.day_month : settings.day_month_year;
    return fill(pattern, values);
  }

  function sameDay(a, b) {
    return a.getUTCFullYear() === b.getUTCFullYear() && a.getUTCMonth() === b.getUTCMonth() &&
      a.getUTCDate() === b.getUTCDate();
  }

  // appWhen("2025-03-04T13:05:00+00:00", {seconds: false, day: false}) -> "13:05" today,
  // "4 Mar 13:05" another day; an empty or unreadable time gives the catalogue's dash.
  window.appWhen = function (iso, options) {
    const opts = options || {};
    if (!settings) return iso || "";
    const moment = new Date(iso);
    if (!iso || isNaN(moment.getTime())) return settings.none;
    const local = boxClock(moment);
    const today = boxClock(new Date());
    const time = clock(local, opts.seconds);
    if (sameDay(local, today) && !opts.day) return time;
    return fill(settings.day_time, { day: dayText(local, today), time: time });
  };

  // Every <time datetime="…" data-when> under root, written again (new rows, a new day).
  window.appWhenAll = function (root) {
    (root || document).querySelectorAll("time[datetime][data-when]").forEach(function (el) {
      el.textContent = window.appWhen(el.getAttribute("datetime"),
        { seconds: el.dataset.seconds === "1", day: el.dataset.day === "1" });
    });
  };
})();
