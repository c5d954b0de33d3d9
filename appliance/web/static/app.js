// Shared by every page: the PIN keypad, the CSRF token on every fetch that changes state,
// times shown in local time, the lock after a while without use (the wall view), and drafts
// kept through a session that ended.
"use strict";

(function () {
  const token = document.querySelector('meta[name="csrf-token"]');
  const MINUTE = 60000;
  let ended = false;

  function here() {
    return window.location.pathname + window.location.search;
  }

  function signedIn() {
    return Boolean(document.body && document.body.dataset.user);
  }

  // The session is over: a poll means nobody is here (the wall view); anything else was a
  // person's action (the PIN form, then back to this page; the server says whether a save
  // was lost).
  window.appSessionEnded = function (isPoll) {
    if (ended || !signedIn()) return;
    ended = true;
    const data = document.body.dataset;
    if (isPoll) window.location.replace(data.wallUrl + "?back=" + encodeURIComponent(here()));
    else window.location.assign(data.signinUrl + "?next=" + encodeURIComponent(here()));
  };

  window.appLock = function () {
    if (ended || !signedIn()) return;
    ended = true;
    window.location.replace(document.body.dataset.wallUrl + "?back=" + encodeURIComponent(here()));
  };

  // Pages call appFetch(url, options): it adds the CSRF header and asks for JSON. A 401 (the
  // session ended) is handled here, and the promise then never settles.
  window.appFetch = function (url, options) {
    const opts = Object.assign({ credentials: "same-origin" }, options || {});
    opts.headers = Object.assign({ Accept: "application/json" }, opts.headers || {});
    const method = (opts.method || "GET").toUpperCase();
    if (method !== "GET" && method !== "HEAD" && token) {
      opts.headers["X-CSRF-Token"] = token.content;
    }
    const isPoll = opts.headers["X-Poll"] === "1";
    return fetch(url, opts).then(function (response) {
      if (response.status === 401 && signedIn()) {
        window.appSessionEnded(isPoll);
        return new Promise(function () {});
      }
      return response;
    });
  };

  // The lock: after the session's time-out without a touch, key or input the screen shows
  // the wall view. While someone uses the screen the session is kept in step (a request at
  // most every minute), so typing a long text does not end it behind the user's back.
  function watchUse() {
    const data = document.body.dataset;
    const idleMs = parseInt(data.idleMs || "0", 10);
    if (!signedIn() || !(idleMs > 0)) return;
    const aliveEvery = Math.min(MINUTE, idleMs / 3);
    let lastUse = Date.now();
    let lastAlive = lastUse;
    function use() {
      lastUse = Date.now();
      if (lastUse - lastAlive < aliveEvery) return;
      lastAlive = lastUse;
      window.appFetch(data.aliveUrl, { cache: "no-store" }).catch(function () {});
    }
    ["pointerdown", "keydown", "input", "wheel", "touchstart"].forEach(function (name) {
      document.addEventListener(name, use, { capture: true, passive: true });
    });
    function check() {
      if (Date.now() - lastUse >= idleMs) window.appLock();
    }
    window.setInterval(check, Math.max(250, Math.min(1000, idleMs / 4)));
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) check();
    });
    document.querySelectorAll("a[data-lock]").forEach(function (link) {
      link.addEventListener("click", function (event) {
        event.preventDefault();
        window.appLock();
      });
    });
  }

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

  // A form marked data-draft keeps every field a person fills in (per user, page and form),
  // and puts it back when the page is shown again. After the form was sent, the next page
  // forgets it unless that page says the save was refused or never arrived
  // (body[data-drafts=keep]). Saves by fetch call appDrafts.clear(form) when they succeed.
  const SKIPPED = ["password", "hidden", "file", "submit", "button", "reset", "image"];

  function draftFields(form) {
    return Array.from(form.elements).filter(function (el) {
      const name = el.name || el.id;
      if (!name || el.disabled || el.hasAttribute("data-draft-skip")) return false;
      if (el.hasAttribute("data-draft")) return false; // kept on its own (keepDraft)
      if (el.tagName === "TEXTAREA" || el.tagName === "SELECT") return true;
      return el.tagName === "INPUT" && SKIPPED.indexOf(el.type) < 0;
    });
  }

  function formKey(form) {
    const action = form.getAttribute("action") || "";
    const name = form.dataset.draft || form.id || action.split("?")[0] || "form";
    return DRAFT + document.body.dataset.user + ":" + window.location.pathname + ":" + name;
  }

  function fieldKey(el) {
    return (el.name || el.id) + (el.type === "radio" ? "=" + el.value : "");
  }

  function readForm(form) {
    const values = {};
    draftFields(form).forEach(function (el) {
      values[fieldKey(el)] = el.type === "checkbox" || el.type === "radio" ? el.checked : el.value;
    });
    return values;
  }

  function fillForm(form, values) {
    draftFields(form).forEach(function (el) {
      const value = values[fieldKey(el)];
      if (value === undefined) return;
      if (el.type === "checkbox" || el.type === "radio") el.checked = Boolean(value);
      else el.value = value;
    });
  }

  function storeDraft(form, sent) {
    const values = readForm(form);
    const empty = Object.keys(values).every(function (key) {
      return values[key] === "" || values[key] === false;
    });
    try {
      if (empty) window.sessionStorage.removeItem(formKey(form));
      else window.sessionStorage.setItem(formKey(form), JSON.stringify({ values: values, sent: sent }));
    } catch (error) {
      // storage full or disabled: the form itself still works
    }
  }

  function keepForm(form) {
    const key = formKey(form);
    let stored = null;
    try {
      stored = JSON.parse(window.sessionStorage.getItem(key) || "null");
    } catch (error) {
      return; // storage disabled or a mangled entry: nothing to put back
    }
    if (stored && stored.values) {
      if (stored.sent && document.body.dataset.drafts !== "keep") {
        window.sessionStorage.removeItem(key); // sent, and nothing said it failed
      } else {
        fillForm(form, stored.values);
        storeDraft(form, false);
      }
    }
    form.addEventListener("input", function () { storeDraft(form, false); });
    form.addEventListener("change", function () { storeDraft(form, false); });
    form.addEventListener("submit", function () { storeDraft(form, true); });
  }

  window.appDrafts = {
    clear: function (form) {
      try {
        window.sessionStorage.removeItem(formKey(form));
      } catch (error) {
        // storage disabled: nothing kept
      }
    },
  };

  // Where a form was sent from: after a session that ended, signing in returns there.
  function markReturn(form) {
    if ((form.getAttribute("method") || "get").toLowerCase() !== "post") return;
    if (form.querySelector('input[name="return_to"]')) return;
    const field = document.createElement("input");
    field.type = "hidden";
    field.name = "return_to";
    field.value = here();
    form.appendChild(field);
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
    if (signedIn()) document.querySelectorAll("form[data-draft]").forEach(keepForm);
    document.querySelectorAll("form").forEach(markReturn);
    watchUse();
    document.querySelectorAll("form.signout").forEach(function (form) {
      form.addEventListener("submit", forgetDrafts);
    });
  });
})();
