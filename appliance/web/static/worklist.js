// The worklist page: filters that apply at once, and rows that update by themselves.
// Every second it asks /api/worklist with the version it shows; the server answers 304 while
// nothing changed, else the rows rendered by the page's own template. It asks for as long as
// the page is open: polls (X-Poll) are not use, so the session still ends, and app.js then
// shows the locked wall view (window.appFetch answers a 401 itself).
"use strict";

(function () {
  const POLL_MS = 1000; // unless the page says (data-poll-ms, from worklist.POLL_S)
  const RETRY_MS = 5000;

  // Times come written by the server in the site's one format (the `when` filter); time.js,
  // where the page has it, writes them again (a row listed yesterday says its day today).
  function localTimes(root) {
    if (window.appWhenAll) window.appWhenAll(root);
  }

  function setUpFilters(form) {
    const offset = form.elements.namedItem("tzo");
    if (offset) offset.value = String(new Date().getTimezoneOffset());
    // Choices apply at once: no hunting for a button with gloves on.
    form.querySelectorAll("select, input[type=checkbox]").forEach(function (el) {
      el.addEventListener("change", function () { form.requestSubmit(); });
    });
    // The filter panel lies over the rows: a tap outside it, or Escape, closes it.
    const more = form.querySelector("details.filters-more");
    if (!more) return;
    document.addEventListener("pointerdown", function (event) {
      if (more.open && !more.contains(event.target)) more.open = false;
    });
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && more.open) {
        more.open = false;
        more.querySelector("summary").focus();
      }
    });
  }

  function Poller(table) {
    this.table = table;
    this.body = table.tBodies[0];
    this.status = document.getElementById("worklist-status");
    this.note = document.getElementById("worklist-count");
    this.more = document.getElementById("worklist-more");
    this.pollMs = parseInt(table.dataset.pollMs || "", 10) || POLL_MS;
    // "Today" needs the browser's time zone: if the page was made without it, list again.
    const params = new URLSearchParams(window.location.search);
    this.version = params.get("day") && !params.get("tzo") ? "" : table.dataset.version;
    this.timer = null;
  }

  Poller.prototype.url = function () {
    const params = new URLSearchParams(window.location.search);
    params.set("tzo", String(new Date().getTimezoneOffset()));
    params.set("v", this.version);
    return this.table.dataset.api + "?" + params.toString();
  };

  Poller.prototype.say = function (key) {
    if (this.status) this.status.textContent = this.status.dataset[key] || "";
    if (this.status) this.status.dataset.state = key;
  };

  Poller.prototype.schedule = function (ms) {
    clearTimeout(this.timer);
    this.timer = setTimeout(this.poll.bind(this), ms);
  };

  Poller.prototype.poll = function () {
    const self = this;
    if (document.hidden) return self.schedule(self.pollMs);
    window.appFetch(self.url(), { cache: "no-store", headers: { "X-Poll": "1" } }).then(function (response) {
      if (response.status === 304) return null;
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.json();
    }).then(function (data) {
      if (data) self.render(data);
      self.say("live");
      self.schedule(self.pollMs);
    }).catch(function () {
      self.say("offline");
      self.schedule(RETRY_MS);
    });
  };

  Poller.prototype.render = function (data) {
    this.version = data.version;
    this.table.dataset.version = data.version;
    this.body.innerHTML = data.html; // the server's own template, escaped there
    localTimes(this.body);
    if (this.note && data.note) this.note.textContent = data.note;
    if (this.more) this.more.hidden = !data.more;
  };

  document.addEventListener("DOMContentLoaded", function () {
    const form = document.getElementById("filters");
    if (form) setUpFilters(form);
    const table = document.getElementById("worklist");
    if (!table) return;
    localTimes(table);
    const poller = new Poller(table);
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) poller.schedule(0);
    });
    poller.schedule(poller.pollMs);
  });
})();
