// The study viewer: zoom and pan by touch (pointer events: drag with one finger, pinch with
// two), window/level for grayscale images (rendered by the server at the window asked for),
// the AI overlay on/off with its opacity, stepping through frames and playing a clip, and
// feedback without a page reload. Every control also works with a mouse and the keyboard
// (space plays and pauses, the arrows step); nothing depends on hover. The page is sized to
// the window so that the image and its tools never need scrolling on a 800 x 480 panel.
"use strict";

(function () {
  const MAX_SCALE = 16;
  const KEEP_VISIBLE_PX = 40; // panning never pushes the image entirely out of view
  const PRELOAD_MAX = 400; // frames fetched ahead when a clip starts playing
  const PAGE_BOTTOM_PX = 8; // main's padding below the study

  // Times the server rendered (when_tag) in the box's one time format; fetched HTML too.
  function localTimes(root) {
    if (window.appWhenAll) window.appWhenAll(root);
  }

  // A save this page refuses (a form-error note, see study_notes.py) keeps the drafts of the
  // forms (app.js reads body[data-drafts] when the document is ready: this runs before).
  if (document.querySelector(".form-error[data-note-place]")) {
    document.body.dataset.drafts = "keep";
  }

  function number(value, fallback) {
    const parsed = parseFloat(value);
    return isFinite(parsed) ? parsed : fallback;
  }

  // --- zoom and pan ---------------------------------------------------------------------------

  function Viewer(root) {
    const data = root.dataset;
    this.root = root;
    this.viewport = root.querySelector("#viewport");
    this.stage = root.querySelector("#stage");
    this.image = root.querySelector("#image");
    this.layer = root.querySelector("img.heatmap-layer");
    this.outline = root.querySelector("svg.outline-layer");
    this.columns = number(data.columns, 0);
    this.rows = number(data.rows, 0);
    this.frames = number(data.frames, 1);
    this.frame = number(data.frame, 0);
    this.src = data.src;
    this.scale = 1;
    this.x = 0;
    this.y = 0;
    this.fitted = { width: 0, height: 0 };
    this.pointers = new Map();
    this.grayscale = data.grayscale === "1";
    this.initialWindow = { centre: number(data.wc, 0), width: Math.max(1, number(data.ww, 1)) };
    this.window = Object.assign({}, this.initialWindow);
    this.windowChanged = false;
    this.windowDrag = false;
    this.loading = false;
    this.wanted = null;
    this.overlayOn = true;
    this.fps = Math.min(Math.max(number(data.fps, 10), 1), 60);
    this.playing = false;
    this.timer = null;
    this.preloaded = [];
  }

  Viewer.prototype.fit = function () {
    if (!this.columns || !this.rows) return;
    const box = this.viewport.getBoundingClientRect();
    const s = Math.min(box.width / this.columns, box.height / this.rows);
    this.fitted = { width: this.columns * s, height: this.rows * s };
    this.stage.style.width = this.fitted.width + "px";
    this.stage.style.height = this.fitted.height + "px";
    this.scale = 1;
    this.x = (box.width - this.fitted.width) / 2;
    this.y = (box.height - this.fitted.height) / 2;
    this.viewport.classList.add("zoomable");
    this.apply();
  };

  Viewer.prototype.apply = function () {
    const box = this.viewport.getBoundingClientRect();
    const w = this.fitted.width * this.scale;
    const h = this.fitted.height * this.scale;
    this.x = Math.min(Math.max(this.x, KEEP_VISIBLE_PX - w), box.width - KEEP_VISIBLE_PX);
    this.y = Math.min(Math.max(this.y, KEEP_VISIBLE_PX - h), box.height - KEEP_VISIBLE_PX);
    this.stage.style.transform =
      "translate(" + this.x + "px, " + this.y + "px) scale(" + this.scale + ")";
  };

  // Zoom by `factor` keeping the point (px, py) of the viewport where it is.
  Viewer.prototype.zoomAt = function (factor, px, py) {
    const scale = Math.min(Math.max(this.scale * factor, 1), MAX_SCALE);
    const k = scale / this.scale;
    this.x = px - (px - this.x) * k;
    this.y = py - (py - this.y) * k;
    this.scale = scale;
    this.apply();
  };

  Viewer.prototype.zoomCentre = function (factor) {
    const box = this.viewport.getBoundingClientRect();
    this.zoomAt(factor, box.width / 2, box.height / 2);
  };

  Viewer.prototype.local = function (event) {
    const box = this.viewport.getBoundingClientRect();
    return { x: event.clientX - box.left, y: event.clientY - box.top };
  };

  Viewer.prototype.pointerDown = function (event) {
    this.viewport.setPointerCapture(event.pointerId);
    this.pointers.set(event.pointerId, this.local(event));
  };

  Viewer.prototype.pointerMove = function (event) {
    const before = this.pointers.get(event.pointerId);
    if (!before) return;
    const now = this.local(event);
    if (this.pointers.size === 1) {
      this.dragBy(now.x - before.x, now.y - before.y);
    } else if (this.pointers.size === 2) {
      this.pinch(event.pointerId, before, now);
    }
    this.pointers.set(event.pointerId, now);
  };

  Viewer.prototype.dragBy = function (dx, dy) {
    if (this.windowDrag && this.grayscale) {
      // Right: a wider window (less contrast); down: a higher level (darker).
      this.window.width = Math.max(1, this.window.width * Math.exp(dx / 300));
      this.window.centre += dy * this.window.width / 300;
      this.windowChanged = true;
      this.requestImage();
      return;
    }
    this.x += dx;
    this.y += dy;
    this.apply();
  };

  Viewer.prototype.pinch = function (movedId, before, now) {
    let other = null;
    this.pointers.forEach(function (point, id) { if (id !== movedId) other = point; });
    if (!other) return;
    const oldDistance = Math.hypot(before.x - other.x, before.y - other.y);
    const newDistance = Math.hypot(now.x - other.x, now.y - other.y);
    if (oldDistance < 1) return;
    const mid = { x: (now.x + other.x) / 2, y: (now.y + other.y) / 2 };
    this.x += (now.x - before.x) / 2;
    this.y += (now.y - before.y) / 2;
    this.zoomAt(newDistance / oldDistance, mid.x, mid.y);
  };

  Viewer.prototype.pointerUp = function (event) {
    this.pointers.delete(event.pointerId);
  };

  Viewer.prototype.wheel = function (event) {
    event.preventDefault();
    const at = this.local(event);
    this.zoomAt(event.deltaY < 0 ? 1.2 : 1 / 1.2, at.x, at.y);
  };

  // --- window/level and frames: the server renders the PNG -------------------------------------

  Viewer.prototype.imageUrl = function () {
    let url = this.src + "?frame=" + this.frame;
    if (this.grayscale && this.windowChanged) {
      url += "&wc=" + this.window.centre.toFixed(1) + "&ww=" + this.window.width.toFixed(1);
    }
    return url;
  };

  // One request at a time: while one loads, only the newest wish is kept for afterwards.
  Viewer.prototype.requestImage = function () {
    this.showWindow();
    const url = this.imageUrl();
    if (this.loading) { this.wanted = url; return; }
    if (this.image.getAttribute("src") === url) return;
    this.loading = true;
    this.image.src = url;
  };

  Viewer.prototype.imageDone = function () {
    this.loading = false;
    const next = this.wanted;
    this.wanted = null;
    if (next && next !== this.image.getAttribute("src")) {
      this.loading = true;
      this.image.src = next;
    }
  };

  Viewer.prototype.showWindow = function () {
    const out = document.getElementById("window-value");
    if (!out || !this.grayscale) return;
    out.textContent = (this.root.dataset.windowText || "")
      .replace("{c}", this.window.centre.toFixed(0)).replace("{w}", this.window.width.toFixed(0));
  };

  Viewer.prototype.nudge = function (centreBy, widthTimes) {
    this.window.centre += centreBy * this.window.width;
    this.window.width = Math.max(1, this.window.width * widthTimes);
    this.windowChanged = true;
    this.requestImage();
  };

  Viewer.prototype.resetWindow = function () {
    this.window = Object.assign({}, this.initialWindow);
    this.windowChanged = false;
    this.requestImage();
  };

  Viewer.prototype.setFrame = function (frame) {
    this.frame = Math.min(Math.max(frame, 0), this.frames - 1);
    this.requestImage();
    const label = document.getElementById("frame-label");
    if (label) {
      label.textContent = (this.root.dataset.frameText || "").replace("{n}", this.frame + 1);
    }
    if (!this.playing) this.rememberFrame(); // not at every frame of a playing clip
    this.showOverlay();
  };

  // The frame goes into the address, so a reload (or the way back) shows the same frame.
  Viewer.prototype.rememberFrame = function () {
    const params = new URLSearchParams(window.location.search);
    params.set("frame", String(this.frame));
    window.history.replaceState(null, "", "?" + params.toString() + window.location.hash);
  };

  // A step by hand stops a playing clip first.
  Viewer.prototype.step = function (by) {
    if (this.playing) this.setPlaying(false);
    this.setFrame(this.frame + by);
  };

  // --- playing a clip: at the file's frame rate, looping; a frame still loading is waited
  // for (the clip slows down rather than skips) ---------------------------------------------

  Viewer.prototype.setPlaying = function (on) {
    if (this.frames < 2) return;
    this.playing = on;
    const button = document.getElementById("play-pause");
    const data = this.root.dataset;
    if (button) {
      button.setAttribute("aria-pressed", on ? "true" : "false");
      button.textContent = on ? data.pauseText : data.playText;
      button.setAttribute("aria-label", on ? data.pauseLabel : data.playLabel);
    }
    window.clearTimeout(this.timer);
    this.timer = null;
    if (on) {
      this.preload();
      this.tick();
    } else {
      this.rememberFrame();
    }
  };

  Viewer.prototype.tick = function () {
    if (!this.playing) return;
    if (!this.loading) this.setFrame((this.frame + 1) % this.frames);
    this.timer = window.setTimeout(this.tick.bind(this), 1000 / this.fps);
  };

  // Every frame asked for once, so that playing shows them from the browser's memory.
  Viewer.prototype.preload = function () {
    if (this.preloaded.length) return;
    const keep = this.frame;
    for (let n = 0; n < Math.min(this.frames, PRELOAD_MAX); n += 1) {
      this.frame = n;
      const picture = new Image();
      picture.src = this.imageUrl();
      this.preloaded.push(picture);
    }
    this.frame = keep;
  };

  // --- the AI overlay -------------------------------------------------------------------------

  // A layer belongs to one frame (the key frame): it shows only there, and only when on.
  Viewer.prototype.showOverlay = function () {
    const frame = String(this.frame);
    [this.layer, this.outline].forEach(function (el) {
      if (el) el.toggleAttribute("hidden", !this.overlayOn || el.dataset.frame !== frame);
    }, this);
  };

  Viewer.prototype.setOverlay = function (on) {
    this.overlayOn = on;
    const button = document.getElementById("toggle-heatmap");
    if (button) button.setAttribute("aria-pressed", on ? "true" : "false");
    this.showOverlay();
  };

  Viewer.prototype.chooseLayer = function (item, button) {
    if (!this.layer || !item.dataset.layer) return;
    this.layer.src = item.dataset.layer;
    this.layer.dataset.frame = item.dataset.layerFrame || "0";
    this.layer.dataset.kind = item.dataset.layerKind || "heatmap";
    this.layer.dataset.label = item.dataset.label;
    document.querySelectorAll("button.show-layer").forEach(function (other) {
      other.setAttribute("aria-pressed", other === button ? "true" : "false");
    });
    if (String(this.frame) !== this.layer.dataset.frame) {
      this.setFrame(parseInt(this.layer.dataset.frame, 10));
    }
    this.setOverlay(true);
  };

  // --- wiring ---------------------------------------------------------------------------------

  function on(id, name, handler) {
    const el = document.getElementById(id);
    if (el) el.addEventListener(name, handler);
    return el;
  }

  function wireGestures(v) {
    const port = v.viewport;
    port.addEventListener("pointerdown", v.pointerDown.bind(v));
    port.addEventListener("pointermove", v.pointerMove.bind(v));
    ["pointerup", "pointercancel", "lostpointercapture"].forEach(function (name) {
      port.addEventListener(name, v.pointerUp.bind(v));
    });
    port.addEventListener("wheel", v.wheel.bind(v), { passive: false });
    port.addEventListener("dblclick", function () { v.fit(); });
    v.image.addEventListener("load", v.imageDone.bind(v));
    v.image.addEventListener("error", v.imageDone.bind(v));
    window.addEventListener("resize", function () { v.fit(); });
  }

  function wireTools(v) {
    on("zoom-in", "click", function () { v.zoomCentre(1.5); });
    on("zoom-out", "click", function () { v.zoomCentre(1 / 1.5); });
    on("zoom-fit", "click", function () { v.fit(); });
    on("toggle-heatmap", "click", function () { v.setOverlay(!v.overlayOn); });
    const opacity = on("heatmap-opacity", "input", function () {
      if (v.layer) v.layer.style.opacity = String(opacity.value / 100);
    });
    if (opacity && v.layer) v.layer.style.opacity = String(opacity.value / 100);
    const drag = on("window-drag", "click", function () {
      v.windowDrag = !v.windowDrag;
      drag.setAttribute("aria-pressed", v.windowDrag ? "true" : "false");
      v.viewport.classList.toggle("window-mode", v.windowDrag);
    });
    on("level-up", "click", function () { v.nudge(-0.1, 1); });
    on("level-down", "click", function () { v.nudge(0.1, 1); });
    on("width-down", "click", function () { v.nudge(0, 1 / 1.25); });
    on("width-up", "click", function () { v.nudge(0, 1.25); });
    on("window-reset", "click", function () { v.resetWindow(); });
    on("prev-frame", "click", function (event) { event.preventDefault(); v.step(-1); });
    on("next-frame", "click", function (event) { event.preventDefault(); v.step(1); });
    const play = on("play-pause", "click", function () { v.setPlaying(!v.playing); });
    if (play) play.hidden = false; // it needs this script: without it there is no button
    document.addEventListener("keydown", function (event) { keyboard(v, event); });
    document.querySelectorAll("li.finding button.show-layer").forEach(function (button) {
      button.addEventListener("click", function () {
        v.chooseLayer(button.closest("li.finding"), button);
      });
    });
  }

  // Space plays and pauses a clip, the arrows step frames; not while typing or on a control
  // that the key already means something to.
  function keyboard(v, event) {
    if (event.altKey || event.ctrlKey || event.metaKey || event.defaultPrevented) return;
    const target = event.target && event.target.closest ? event.target : null;
    if (target && target.closest("input, textarea, select, [contenteditable]")) return;
    const pressable = target && target.closest("button, a, summary"); // space presses these
    if (event.key === " " && v.frames > 1 && !pressable) {
      v.setPlaying(!v.playing);
    } else if (event.key === "ArrowRight" && v.frames > 1) {
      v.step(1);
    } else if (event.key === "ArrowLeft" && v.frames > 1) {
      v.step(-1);
    } else {
      return;
    }
    event.preventDefault();
  }

  // --- the page fits the window -----------------------------------------------------------

  // The study takes the window's height below the head, so the image and its tools need no
  // scrolling and the findings panel scrolls on its own. A narrow window (one column, see
  // study.css) scrolls as a page instead.
  function fitPage() {
    const body = document.getElementById("study-body");
    if (!body) return;
    if (getComputedStyle(body).gridTemplateColumns.split(" ").length < 2) {
      body.style.height = "";
      return;
    }
    const top = body.getBoundingClientRect().top + window.scrollY;
    body.style.height = Math.max(240, window.innerHeight - top - PAGE_BOTTOM_PX) + "px";
  }

  // A message the last form left (study_notes): brought into view; a refused field gets the
  // focus so that the user can type at once.
  function showNote() {
    const note = document.querySelector("[data-note-place]");
    if (note) note.scrollIntoView({ block: "center" });
    const field = document.querySelector("textarea[data-focus-now], input[data-focus-now]");
    if (field) field.focus({ preventScroll: true });
  }

  // --- feedback -------------------------------------------------------------------------------

  function wireFeedback(form) {
    form.addEventListener("submit", function (event) {
      const button = event.submitter;
      if (!button || !button.dataset.verdict || !window.appFetch) return; // plain form post
      event.preventDefault();
      const comment = form.querySelector("textarea.feedback-comment");
      const error = form.querySelector(".feedback-error");
      const body = {
        finding_id: form.elements.namedItem("finding_id").value,
        label: form.elements.namedItem("label").value,
        verdict: button.dataset.verdict,
        comment: comment ? comment.value : "",
      };
      window.appFetch(form.action, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      }).then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      }).then(function (data) {
        const status = form.querySelector(".feedback-status");
        status.innerHTML = data.html; // rendered and escaped by the server's template
        localTimes(status);
        form.querySelectorAll("button.feedback").forEach(function (other) {
          other.setAttribute("aria-pressed", other === button ? "true" : "false");
        });
        if (comment) comment.value = "";
        if (error) error.hidden = true;
        if (window.appDrafts) window.appDrafts.clear(form);
      }).catch(function () {
        if (error) error.hidden = false;
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    document.querySelectorAll("form.feedback-form").forEach(wireFeedback);
    fitPage();
    window.addEventListener("resize", fitPage);
    showNote();
    // The browser's own jump to the address's #fragment comes after: show the note again.
    window.addEventListener("load", function () { window.setTimeout(showNote, 0); });
    const root = document.getElementById("viewer");
    if (!root) return;
    const viewer = new Viewer(root);
    wireGestures(viewer);
    wireTools(viewer);
    viewer.fit();
    viewer.showOverlay();
    viewer.showWindow();
  });
})();
