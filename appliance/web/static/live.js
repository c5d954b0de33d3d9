// The live view: the worker's frames as an MJPEG stream in img#live-image, the AI overlay
// drawn into svg#live-overlay from /api/live/status about 7 times a second, the state in
// plain words, and freeze / live / save image / save clip. Also the calibration page: drag
// a box over the picture. Every control works by touch and by mouse; nothing needs hover.
"use strict";

(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const RETRY_MS = 2000; // after a failed status request
  const STILL_MS = 1000; // a picture a second while there is no stream
  const STREAM_RETRY_MS = 10000; // how soon a screen without a stream asks for one again
  const REQUEST_POLL_MS = 400; // following a save until the worker has done it
  const SAVE_SLOW_MS = 15000;
  const SAVES = { save_frame: true, save_clip: true };

  function withNumber(template, value) {
    return (template || "{n}").replace("{n}", value);
  }

  function finite(value) {
    return typeof value === "number" && isFinite(value);
  }

  function localTime(iso) {
    const when = new Date(iso);
    if (isNaN(when.getTime())) return "";
    return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  // --- the live page ------------------------------------------------------------------------

  // The page's parts, by the property that holds each and its element's id.
  const ELEMENTS = {
    image: "live-image", stage: "live-stage", overlay: "live-overlay", state: "live-state",
    note: "live-stream-note", demo: "live-demo", finding: "live-finding",
    inferenceFps: "inference-fps", overlayAge: "overlay-age", videoFps: "live-video-fps",
    freeze: "freeze", resume: "resume", study: "live-study", newPatient: "live-new-patient",
    patientName: "live-patient-name", patientId: "live-patient-id", saved: "live-saved",
    error: "live-error",
  };

  function Live(root) {
    const data = root.dataset;
    this.root = root;
    Object.keys(ELEMENTS).forEach(function (name) {
      this[name] = document.getElementById(ELEMENTS[name]);
    }, this);
    this.saveButtons = [document.getElementById("save-frame"), document.getElementById("save-clip")];
    this.urls = { status: data.statusUrl, stream: data.streamUrl, frame: data.frameUrl,
      command: data.commandUrl };
    this.viewer = data.viewer;
    this.pollMs = parseInt(data.pollMs || "", 10) || 150;
    this.streamMaxMs = parseInt(data.streamMaxMs || "", 10) || 180000;
    this.idleMs = parseInt(data.idleMs || "0", 10);
    this.size = [parseInt(data.width, 10) || 0, parseInt(data.height, 10) || 0];
    this.lastUse = Date.now();
    this.mode = "off"; // "stream", "stills" or "off"
    this.streams = 0;
    this.timers = {};
    this.offline = false;
    this.paused = false;
    this.held = false;
    this.heldDrawn = false;
    this.last = null; // the newest status answer
  }

  Live.prototype.later = function (name, fn, ms) {
    clearTimeout(this.timers[name]);
    this.timers[name] = setTimeout(fn.bind(this), ms);
  };

  Live.prototype.stopTimers = function () {
    Object.keys(this.timers).forEach(function (name) { clearTimeout(this.timers[name]); }, this);
  };

  // The stream holds one of the server's threads: each page takes at most one (its viewer key
  // makes a reconnect take over its own slot) and renews it before the server ends it.
  Live.prototype.openStream = function () {
    this.mode = "stream";
    this.streams += 1;
    this.image.src = this.urls.stream + "?viewer=" + encodeURIComponent(this.viewer) +
      "&n=" + this.streams;
    this.later("renew", this.openStream, Math.max(5000, this.streamMaxMs - 5000));
  };

  Live.prototype.closeStream = function () {
    this.mode = "off";
    clearTimeout(this.timers.renew);
    clearTimeout(this.timers.still);
    this.image.removeAttribute("src");
  };

  // An <img> cannot tell why its stream failed: the server remembers a viewer it refused
  // (every stream slot taken), and the page asks before it says "other screens" or "lost".
  Live.prototype.imageFailed = function () {
    if (this.mode !== "stream") return; // a still that failed is simply tried again
    const self = this;
    clearTimeout(self.timers.renew);
    self.mode = "stills";
    self.showStill();
    window.appFetch(self.statusUrl(), { cache: "no-store", headers: { "X-Poll": "1" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .catch(function () { return null; })
      .then(function (data) {
        if (self.mode !== "stills") return;
        const refused = !!(data && data.streams && data.streams.refused);
        self.note.textContent = refused ? self.note.dataset.busy : self.note.dataset.lost;
        self.note.dataset.why = refused ? "busy" : "lost";
        self.note.hidden = false;
      });
    self.later("retry", function () {
      if (this.mode === "stills") { this.note.hidden = true; this.openStream(); }
    }, STREAM_RETRY_MS);
  };

  Live.prototype.statusUrl = function () {
    return this.urls.status + "?viewer=" + encodeURIComponent(this.viewer);
  };

  Live.prototype.showStill = function () {
    if (this.mode !== "stills") return;
    this.image.src = this.urls.frame + "?t=" + Date.now();
    this.later("still", this.showStill, STILL_MS);
  };

  // A screen nobody touches times out like the others: status requests say X-Poll (not
  // someone's use), so the session ends on time and app.js shows the locked wall view. The
  // video keeps going until then; past the timeout it stops, should the wall not open.
  Live.prototype.idle = function () {
    return this.idleMs > 0 && Date.now() - this.lastUse > this.idleMs;
  };

  Live.prototype.pause = function () {
    this.paused = true;
    this.stopTimers();
    this.closeStream();
    this.say("paused", false);
  };

  Live.prototype.touched = function () {
    this.lastUse = Date.now();
    if (this.paused) this.start();
  };

  // The stream starts once the page has loaded: an image that never ends would otherwise
  // hold the page's load event (and the browser's "loading" spinner) for ever.
  Live.prototype.start = function () {
    const self = this;
    self.paused = false;
    self.later("poll", self.poll, 0);
    if (document.readyState === "complete") self.openStream();
    else window.addEventListener("load", function () { if (!self.paused) self.openStream(); }, { once: true });
  };

  Live.prototype.poll = function () {
    const self = this;
    if (self.idle()) return self.pause();
    window.appFetch(self.statusUrl(), { cache: "no-store", headers: { "X-Poll": "1" } })
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); return null; }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      }).then(function (data) {
        if (!data) return;
        if (self.offline) { self.offline = false; if (!self.paused) self.openStream(); }
        self.render(data);
        self.later("poll", self.poll, self.pollMs);
      }).catch(function () {
        self.offline = true;
        self.say("offline", false);
        self.later("poll", self.poll, RETRY_MS);
      });
  };

  Live.prototype.say = function (state, held) {
    const key = held && state === "live" ? "held" : state;
    this.state.dataset.state = state;
    this.state.dataset.held = held ? "true" : "false";
    this.state.textContent = this.state.getAttribute("data-text-" + key) || state;
  };

  Live.prototype.render = function (data) {
    const status = data.status || { state: "stopped" };
    this.last = data;
    this.held = status.frozen === true;
    this.say(status.state, this.held);
    const stopped = status.state === "stopped";
    this.freeze.disabled = this.held || stopped;
    this.resume.disabled = !this.held;
    this.saveButtons.forEach(function (button) { button.disabled = stopped; });
    this.resize(status.size);
    this.videoFps.textContent = finite(status.published_fps)
      ? withNumber(this.videoFps.dataset.unit, status.published_fps.toFixed(0)) : "–";
    // While the user holds a frozen picture, the overlay drawn for it stays.
    if (!(this.held && this.heldDrawn)) this.draw(stopped ? null : data.overlay);
    this.heldDrawn = this.held;
  };

  Live.prototype.resize = function (size) {
    if (!Array.isArray(size) || size.length !== 2) return;
    if (size[0] === this.size[0] && size[1] === this.size[1]) return;
    this.size = size;
    this.overlay.setAttribute("viewBox", "0 0 " + size[0] + " " + size[1]);
    this.stage.style.aspectRatio = size[0] + " / " + size[1];
  };

  Live.prototype.draw = function (overlay) {
    const svg = this.overlay;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    this.figures(overlay);
    if (!overlay) { svg.removeAttribute("data-frame"); return; }
    svg.setAttribute("data-frame", String(overlay.frame_index));
    const region = overlay.region;
    if (Array.isArray(region) && region.length === 4) {
      const rect = document.createElementNS(SVG_NS, "rect");
      ["x", "y", "width", "height"].forEach(function (name, i) {
        rect.setAttribute(name, String(region[i]));
      });
      rect.setAttribute("class", "region");
      svg.appendChild(rect);
    }
    (overlay.outlines || []).forEach(function (outline) {
      if (!Array.isArray(outline) || outline.length < 3) return;
      const polygon = document.createElementNS(SVG_NS, "polygon");
      polygon.setAttribute("points", outline.map(function (p) { return p[0] + "," + p[1]; }).join(" "));
      polygon.setAttribute("class", "outline");
      svg.appendChild(polygon);
    });
  };

  Live.prototype.figures = function (overlay) {
    this.demo.hidden = !(overlay && overlay.not_for_clinical_use);
    if (!overlay) {
      [this.finding, this.inferenceFps, this.overlayAge].forEach(function (el) {
        el.textContent = "–";
      });
      return;
    }
    this.inferenceFps.textContent = finite(overlay.inference_fps)
      ? withNumber(this.inferenceFps.dataset.unit, overlay.inference_fps.toFixed(1)) : "–";
    this.overlayAge.textContent = finite(overlay.age_ms)
      ? withNumber(this.overlayAge.dataset.unit, Math.round(overlay.age_ms)) : "–";
    this.finding.textContent = findingText(overlay, this.finding.dataset);
  };

  // What the model sees now, in words: "Anechoic fluid 412 mm²", "none", or why nothing is
  // drawn (the worker holds back an image unlike those the model knows).
  function findingText(overlay, texts) {
    if (overlay.held_back) return withReason(texts.heldBack, overlay.held_back_text || "");
    const name = overlay.display || overlay.label || "";
    const outlined = (overlay.outlines || []).length > 0;
    if (finite(overlay.area_mm2) && overlay.area_mm2 > 0) {
      return name + " " + Math.round(overlay.area_mm2).toLocaleString() + " mm²";
    }
    return outlined ? name : (texts.none || "–");
  }

  // --- commands -------------------------------------------------------------------------------

  Live.prototype.body = function (kind) {
    const body = { kind: kind };
    if (!SAVES[kind]) return body;
    if (this.study.value === "new") {
      body.patient_name = this.patientName.value;
      body.patient_id = this.patientId.value;
    } else {
      body.study_id = this.study.value;
    }
    return body;
  };

  Live.prototype.send = function (kind) {
    const self = this;
    self.showError("");
    if (SAVES[kind]) self.showSaved("saving", self.saved.dataset.saving);
    window.appFetch(self.urls.command, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(self.body(kind)),
    }).then(function (response) {
      if (response.status === 401) { window.location.reload(); return null; }
      return response.json().then(function (data) { return { ok: response.ok, data: data }; });
    }).then(function (answer) {
      if (!answer) return;
      if (!answer.ok) {
        self.showError(answer.data.error || "");
        if (SAVES[kind]) self.saved.hidden = true;
        return;
      }
      if (SAVES[kind]) self.follow(answer.data.status_url, Date.now());
      else self.later("poll", self.poll, 0);
    }).catch(function () {
      self.showError(self.state.getAttribute("data-text-offline"));
      if (SAVES[kind]) self.saved.hidden = true;
    });
  };

  Live.prototype.follow = function (url, started) {
    const self = this;
    window.appFetch(url, { cache: "no-store", headers: { "X-Poll": "1" } }).then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.json();
    }).then(function (request) {
      if (request.state === "done") return self.done(request);
      if (request.state === "failed") {
        return self.showSaved("failed", withReason(self.saved.dataset.failed, request.reason));
      }
      if (Date.now() - started > SAVE_SLOW_MS) self.showSaved("saving", self.saved.dataset.slow);
      setTimeout(function () { self.follow(url, started); }, REQUEST_POLL_MS);
    }).catch(function () {
      setTimeout(function () { self.follow(url, started); }, RETRY_MS);
    });
  };

  function withReason(template, reason) {
    return (template || "{reason}").replace("{reason}", reason || "");
  }

  Live.prototype.done = function (request) {
    // A clip says how long it came out (right after Resume it holds only the frames since).
    const frames = request.result && request.result.frames;
    const clip = request.kind === "save_clip" && frames;
    this.showSaved("done", clip
      ? this.saved.dataset.savedClip.replace("{frames}", String(frames))
      : this.saved.dataset.saved);
    if (!request.study_url) return;
    const link = document.createElement("a");
    link.className = "button";
    link.id = "live-saved-link";
    link.href = request.study_url;
    link.textContent = this.saved.dataset.open;
    this.saved.appendChild(link);
    if (this.study.value === "new") this.keepStudy(request.study_id);
  };

  // The next save for the same new patient joins the study the first one made.
  Live.prototype.keepStudy = function (studyId) {
    if (!studyId) return;
    let option = this.study.querySelector('option[value="' + String(studyId) + '"]');
    if (!option) {
      option = document.createElement("option");
      option.value = String(studyId);
      option.textContent = [this.patientName.value.trim(), this.patientId.value.trim()]
        .filter(Boolean).join(" · ");
      this.study.insertBefore(option, this.study.options[1] || null);
    }
    this.study.value = String(studyId);
    this.choseStudy();
  };

  Live.prototype.showSaved = function (state, text) {
    this.saved.textContent = text || "";
    this.saved.dataset.state = state;
    this.saved.hidden = false;
    inView(this.saved);
  };

  Live.prototype.showError = function (text) {
    this.error.textContent = text || "";
    this.error.hidden = !text;
    if (text) inView(this.error);
  };

  // On a 480-pixel panel the answer to a tap may sit below the fold: bring it into sight, or
  // the tap looks as if nothing happened.
  function inView(element) {
    if (element.scrollIntoView) element.scrollIntoView({ block: "nearest" });
  }

  Live.prototype.choseStudy = function () {
    this.newPatient.hidden = this.study.value !== "new";
  };

  Live.prototype.localTimes = function () {
    Array.prototype.forEach.call(this.study.options, function (option) {
      const at = option.dataset.received ? localTime(option.dataset.received) : "";
      if (at && option.dataset.label) option.textContent = option.dataset.label + " · " + at;
    });
  };

  Live.prototype.bind = function () {
    const self = this;
    [self.freeze, self.resume].concat(self.saveButtons).forEach(function (button) {
      button.addEventListener("click", function () { self.send(button.dataset.kind); });
    });
    self.study.addEventListener("change", function () { self.choseStudy(); });
    self.image.addEventListener("error", function () { self.imageFailed(); });
    ["pointerdown", "keydown"].forEach(function (name) {
      document.addEventListener(name, function () { self.touched(); }, { passive: true });
    });
    document.addEventListener("visibilitychange", function () {
      if (document.hidden) { self.stopTimers(); self.closeStream(); } else if (!self.paused) self.start();
    });
  };

  // --- calibration ----------------------------------------------------------------------------

  function Calibrator(root) {
    this.svg = document.getElementById("calibrate-box");
    this.rect = document.getElementById("calibrate-rect");
    this.width = parseInt(root.dataset.width, 10) || 1;
    this.height = parseInt(root.dataset.height, 10) || 1;
    this.detected = (root.dataset.detected || "").split(",").filter(Boolean).map(Number);
    this.inputs = {};
    ["x", "y", "width", "height"].forEach(function (name) {
      this.inputs[name] = document.getElementById("cal-" + name);
    }, this);
    this.mm = document.getElementById("cal-mm-per-pixel");
    this.depth = document.getElementById("cal-depth-cm");
    this.start = null;
  }

  Calibrator.prototype.point = function (event) {
    const pt = this.svg.createSVGPoint();
    pt.x = event.clientX;
    pt.y = event.clientY;
    const p = pt.matrixTransform(this.svg.getScreenCTM().inverse());
    return [Math.round(Math.min(Math.max(p.x, 0), this.width)),
      Math.round(Math.min(Math.max(p.y, 0), this.height))];
  };

  Calibrator.prototype.set = function (box) {
    ["x", "y", "width", "height"].forEach(function (name, i) {
      this.inputs[name].value = String(box[i]);
    }, this);
    this.drawFromInputs();
    this.fromDepth();
  };

  Calibrator.prototype.drawFromInputs = function () {
    ["x", "y", "width", "height"].forEach(function (name) {
      const value = parseInt(this.inputs[name].value, 10);
      this.rect.setAttribute(name, String(isFinite(value) ? value : 0));
    }, this);
  };

  // A known depth over the box's height gives the scale: mm per pixel = depth x 10 / height.
  Calibrator.prototype.fromDepth = function () {
    const depth = parseFloat((this.depth.value || "").replace(",", "."));
    const height = parseInt(this.inputs.height.value, 10);
    if (depth > 0 && height > 0) this.mm.value = (depth * 10 / height).toFixed(4);
  };

  Calibrator.prototype.bind = function () {
    const self = this;
    self.svg.addEventListener("pointerdown", function (event) {
      self.start = self.point(event);
      self.svg.setPointerCapture(event.pointerId);
      event.preventDefault();
    });
    self.svg.addEventListener("pointermove", function (event) {
      if (!self.start) return;
      const end = self.point(event);
      const x = Math.min(self.start[0], end[0]);
      const y = Math.min(self.start[1], end[1]);
      self.set([x, y, Math.abs(end[0] - self.start[0]), Math.abs(end[1] - self.start[1])]);
    });
    ["pointerup", "pointercancel"].forEach(function (name) {
      self.svg.addEventListener(name, function () { self.start = null; });
    });
    Object.keys(self.inputs).forEach(function (name) {
      self.inputs[name].addEventListener("input", function () {
        self.drawFromInputs();
        self.fromDepth(); // a new height changes the scale a depth gives
      });
    });
    self.depth.addEventListener("input", function () { self.fromDepth(); });
    const detected = document.getElementById("cal-detected");
    if (detected && self.detected.length === 4) {
      detected.addEventListener("click", function () { self.set(self.detected); });
    }
    self.drawFromInputs();
  };

  document.addEventListener("DOMContentLoaded", function () {
    const root = document.getElementById("live");
    if (root) {
      const live = new Live(root);
      live.bind();
      live.localTimes();
      live.choseStudy();
      live.start();
    }
    const calibrate = document.getElementById("calibrate");
    if (calibrate) new Calibrator(calibrate).bind();
  });
})();
