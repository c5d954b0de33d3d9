// The locked wall view: the waiting studies, asked for every refresh_s without a session;
// an urgent banner, an optional short tone (WebAudio, no file), and a touch anywhere asks
// for the PIN (the sign-in form, then back to the page the user was on).
"use strict";

(function () {
  function Wall(root) {
    this.root = root;
    this.url = root.dataset.url;
    this.refreshMs = Math.max(1000, parseInt(root.dataset.refreshMs || "10000", 10));
    this.sound = root.dataset.sound === "on";
    this.unlock = root.dataset.unlock;
    this.fields = (root.dataset.fields || "").split(" ").filter(Boolean);
    this.texts = JSON.parse(root.dataset.texts || "{}");
    this.version = "";
    this.mark = null; // the urgent studies last seen (null before the first answer)
    this.urgent = 0;
    this.audio = null;
  }

  Wall.prototype.start = function () {
    const self = this;
    document.addEventListener("click", function (event) {
      if (event.target.closest("a")) return; // the sign-in button is a link already
      window.location.assign(self.unlock);
    });
    self.ask();
  };

  Wall.prototype.ask = function () {
    const self = this;
    const url = self.url + "?v=" + encodeURIComponent(self.version);
    fetch(url, { credentials: "same-origin", cache: "no-store",
      headers: { Accept: "application/json", "X-Poll": "1" } })
      .then(function (response) {
        if (response.status === 401) { window.location.assign(self.unlock); return null; }
        if (response.status === 304) return null;
        if (!response.ok) throw new Error(String(response.status));
        return response.json();
      })
      .then(function (data) {
        if (data) self.show(data);
        self.say(self.texts.updated.replace("{time}", self.clock(new Date())), false);
      })
      .catch(function () { self.say(self.texts.offline, true); })
      .then(function () { window.setTimeout(function () { self.ask(); }, self.refreshMs); });
  };

  Wall.prototype.say = function (text, problem) {
    const status = document.getElementById("wall-status");
    status.textContent = text;
    status.classList.toggle("problem", problem);
  };

  Wall.prototype.clock = function (when) {
    if (window.appWhen) return window.appWhen(when.toISOString(), { seconds: true });
    return when.toLocaleTimeString();
  };

  Wall.prototype.cell = function (field, value) {
    const td = document.createElement("td");
    td.className = "wall-" + field;
    if (field === "time") {
      const time = document.createElement("time");
      time.setAttribute("datetime", value);
      time.textContent = window.appWhen ? window.appWhen(value) : new Date(value).toLocaleTimeString();
      td.appendChild(time);
    } else {
      td.textContent = value;
    }
    return td;
  };

  Wall.prototype.show = function (data) {
    const self = this;
    self.version = data.version;
    const body = document.getElementById("wall-rows");
    const rows = data.rows.map(function (row) {
      const tr = document.createElement("tr");
      if (row.level) tr.className = "triage-" + row.level;
      self.fields.forEach(function (field) {
        if (field in row) tr.appendChild(self.cell(field, row[field]));
      });
      return tr;
    });
    body.replaceChildren.apply(body, rows);
    document.getElementById("wall-empty").hidden = rows.length > 0;
    const banner = document.getElementById("wall-urgent");
    banner.hidden = data.urgent === 0;
    banner.textContent = data.urgent === 1 ? self.texts.urgent_one
      : self.texts.urgent_many.replace("{n}", String(data.urgent));
    const another = self.mark !== null && data.urgent_mark && data.urgent_mark !== self.mark &&
      data.urgent >= self.urgent;
    if (another) {
      banner.classList.remove("arrived");
      void banner.offsetWidth; // restart the flash
      banner.classList.add("arrived");
      if (self.sound) self.tone();
    }
    self.mark = data.urgent_mark;
    self.urgent = data.urgent;
  };

  // Two short beeps made by an oscillator: nothing is downloaded. A kiosk browser may need
  // its autoplay policy relaxed (Chromium: --autoplay-policy=no-user-gesture-required).
  Wall.prototype.tone = function () {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return;
    try {
      this.audio = this.audio || new Context();
      const ctx = this.audio;
      if (ctx.state === "suspended") ctx.resume();
      [0, 0.3].forEach(function (start) {
        const osc = ctx.createOscillator();
        const gain = ctx.createGain();
        osc.frequency.value = 880;
        gain.gain.setValueAtTime(0.2, ctx.currentTime + start);
        gain.gain.exponentialRampToValueAtTime(0.001, ctx.currentTime + start + 0.2);
        osc.connect(gain).connect(ctx.destination);
        osc.start(ctx.currentTime + start);
        osc.stop(ctx.currentTime + start + 0.2);
      });
      document.body.dataset.toneAt = String(Date.now()); // for tests and the curious
    } catch (error) {
      // no sound on this screen: the banner still shows
    }
  };

  document.addEventListener("DOMContentLoaded", function () {
    const root = document.getElementById("wall");
    if (root) new Wall(root).start();
  });
})();
