// Shared by every page: the PIN keypad, the CSRF token on every fetch that changes state, and
// times shown in local time.
"use strict";

(function () {
  const token = document.querySelector('meta[name="csrf-token"]');

  // Pages call appFetch(url, options): it adds the CSRF header and asks for JSON.
  window.appFetch = function (url, options) {
    const opts = Object.assign({ credentials: "same-origin" }, options || {});
    opts.headers = Object.assign({ Accept: "application/json" }, opts.headers || {});
    const method = (opts.method || "GET").toUpperCase();
    if (method !== "GET" && method !== "HEAD" && token) {
      opts.headers["X-CSRF-Token"] = token.content;
    }
    return fetch(url, opts);
  };

  function sameDay(a, b) {
    return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() &&
      a.getDate() === b.getDate();
  }

  // UTC from the server, shown in the browser's local time: today's times as hh:mm, older
  // ones with their day (and year, where a page asks for it). Pages call it on new content.
  window.appLocalTimes = function (root, withYear) {
    const now = new Date();
    const clock = { hour: "2-digit", minute: "2-digit" };
    root.querySelectorAll("time.local-time[datetime]").forEach(function (el) {
      const when = new Date(el.getAttribute("datetime"));
      if (isNaN(when.getTime())) return;
      const time = when.toLocaleTimeString([], clock);
      if (sameDay(when, now)) {
        el.textContent = time;
      } else if (withYear) {
        el.textContent = when.toLocaleString([], Object.assign(
          { day: "numeric", month: "short", year: "numeric" }, clock));
      } else {
        el.textContent = when.toLocaleDateString([], { day: "numeric", month: "short" }) + " " + time;
      }
      el.title = when.toLocaleString();
    });
  };

  function keypad(pad) {
    const target = document.getElementById(pad.dataset.target);
    if (!target) return;
    pad.addEventListener("click", function (event) {
      const key = event.target.closest("[data-key]");
      if (!key) return;
      const value = key.dataset.key;
      if (value === "clear") target.value = "";
      else if (value === "back") target.value = target.value.slice(0, -1);
      else if (target.value.length < 8) target.value += value;
    });
  }

  // A textarea with data-draft keeps what was typed in this tab's sessionStorage until it
  // shows up among the saved texts (elements matching data-saved): a session that timed out,
  // or a refused save, then does not lose a long impression. Signing out forgets drafts.
  const DRAFT = "draft:";

  function plain(text) {
    return text.replace(/\r\n/g, "\n").trim();
  }

  function keepDraft(area) {
    const key = DRAFT + area.dataset.draft;
    let stored = null;
    try {
      stored = window.sessionStorage.getItem(key);
    } catch (error) {
      return; // storage disabled: nothing to keep
    }
    if (stored !== null) {
      const saved = Array.from(document.querySelectorAll(area.dataset.saved || "[data-none]"));
      if (saved.some(function (el) { return plain(el.textContent) === plain(stored); })) {
        window.sessionStorage.removeItem(key);
      } else if (!area.value) {
        area.value = stored;
      }
    }
    area.addEventListener("input", function () {
      if (area.value) window.sessionStorage.setItem(key, area.value);
      else window.sessionStorage.removeItem(key);
    });
  }

  function forgetDrafts() {
    try {
      Object.keys(window.sessionStorage)
        .filter(function (key) { return key.indexOf(DRAFT) === 0; })
        .forEach(function (key) { window.sessionStorage.removeItem(key); });
    } catch (error) {
      // storage disabled: nothing kept
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll(".keypad").forEach(keypad);
    document.querySelectorAll("textarea[data-draft]").forEach(keepDraft);
    document.querySelectorAll("form.signout").forEach(function (form) {
      form.addEventListener("submit", forgetDrafts);
    });
  });
})();
