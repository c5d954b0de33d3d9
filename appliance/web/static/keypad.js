// An on-screen keypad for every numeric field: a touchscreen without a keyboard cannot type a
// PIN or a number otherwise. Any <input inputmode="numeric"> (or "decimal", which adds a
// decimal point) opens it when it gets focus; data-keypad="none" keeps a field without it, and
// a field with its own pad on the page (.keypad[data-target=ID], the sign-in page) is left
// alone. The pad sits below the field, else above it, else beside it: never over it. Labels
// come from this script tag's data-keypad-texts (the catalogue, rendered by the page).
"use strict";

(function () {
  if (window.appKeypad) return; // loaded twice (base.html and a page): once is enough

  const script = document.currentScript;
  let texts = {};
  try {
    texts = JSON.parse((script && script.dataset.keypadTexts) || "{}") || {};
  } catch (error) {
    texts = {};
  }
  const GAP = 6; // px between the field and the pad

  let pad = null;
  let field = null;

  function eligible(el) {
    if (!el || el.tagName !== "INPUT" || el.disabled || el.readOnly) return false;
    const mode = (el.getAttribute("inputmode") || "").toLowerCase();
    if (mode !== "numeric" && mode !== "decimal") return false;
    if (el.dataset.keypad === "none") return false;
    return !(el.id && document.querySelector('.keypad[data-target="' + CSS.escape(el.id) + '"]'));
  }

  function allowsPoint(el) {
    return el.getAttribute("inputmode") === "decimal" || el.dataset.keypad === "decimal";
  }

  function key(value, label, name) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "kp-key kp-" + name;
    button.dataset.kp = value;
    button.textContent = label;
    if (texts[name]) button.setAttribute("aria-label", texts[name]);
    return button;
  }

  // Styles set from here (the page's CSP allows no inline <style>): the pad works on any page.
  function dress(el, styles) {
    Object.keys(styles).forEach(function (name) { el.style[name] = styles[name]; });
    return el;
  }

  function build() {
    const el = dress(document.createElement("div"), {
      position: "fixed", zIndex: "1000", display: "none", gridTemplateColumns: "repeat(4, 58px)",
      gridAutoRows: "50px", gap: "6px", padding: "6px", background: "#fff",
      border: "2px solid #0b4f9c", borderRadius: "10px", boxShadow: "0 4px 14px rgba(0,0,0,.35)",
    });
    el.className = "kp-pad";
    el.id = "keypad";
    el.setAttribute("role", "group");
    if (texts.label) el.setAttribute("aria-label", texts.label);
    ["1", "2", "3"].forEach(function (d) { el.appendChild(key(d, d, "digit")); });
    el.appendChild(key("back", "\u232B", "back"));
    ["4", "5", "6"].forEach(function (d) { el.appendChild(key(d, d, "digit")); });
    el.appendChild(key("clear", "C", "clear"));
    ["7", "8", "9"].forEach(function (d) { el.appendChild(key(d, d, "digit")); });
    dress(el.appendChild(key("done", texts.done || "\u2713", "done")), { gridColumn: "4", gridRow: "3 / 5" });
    dress(el.appendChild(key(".", ".", "point")), { gridColumn: "1", gridRow: "4" });
    dress(el.appendChild(key("0", "0", "digit")), { gridColumn: "2", gridRow: "4" });
    el.querySelectorAll("button").forEach(function (button) {
      dress(button, { minWidth: "0", minHeight: "0", width: "100%", height: "100%", padding: "0",
        fontSize: "22px" });
    });
    el.querySelector(".kp-done").classList.add("primary");
    // Keep the focus (and the caret) in the field while keys are pressed.
    el.addEventListener("mousedown", function (event) { event.preventDefault(); });
    el.addEventListener("click", function (event) {
      const button = event.target.closest("[data-kp]");
      if (button && field) press(button.dataset.kp);
    });
    document.body.appendChild(el);
    return el;
  }

  function setValue(value) {
    field.value = value;
    field.dispatchEvent(new Event("input", { bubbles: true }));
  }

  function press(value) {
    const now = field.value;
    const most = field.maxLength > 0 ? field.maxLength : Infinity;
    if (value === "done") {
      field.dispatchEvent(new Event("change", { bubbles: true }));
      close();
    } else if (value === "clear") {
      setValue("");
    } else if (value === "back") {
      setValue(now.slice(0, -1));
    } else if (now.length < most) {
      if (value === "." && (!allowsPoint(field) || now.indexOf(".") >= 0)) return;
      setValue(now + value);
    }
  }

  // Below the field, else above, else beside it; scrolled into view first when the page can.
  function place() {
    const box = field.getBoundingClientRect();
    const width = pad.offsetWidth;
    const height = pad.offsetHeight;
    const viewW = document.documentElement.clientWidth;
    const viewH = window.innerHeight;
    let top;
    let left = Math.min(Math.max(GAP, box.left), Math.max(GAP, viewW - width - GAP));
    if (viewH - box.bottom >= height + GAP * 2) {
      top = box.bottom + GAP;
    } else if (box.top >= height + GAP * 2) {
      top = box.top - height - GAP;
    } else {
      top = Math.min(Math.max(GAP, box.top + box.height / 2 - height / 2), viewH - height - GAP);
      left = viewW - box.right >= width + GAP * 2 ? box.right + GAP : Math.max(GAP, box.left - width - GAP);
    }
    pad.style.top = Math.round(top) + "px";
    pad.style.left = Math.round(left) + "px";
  }

  function open(el) {
    pad = pad || build();
    field = el;
    pad.querySelector(".kp-point").style.display = allowsPoint(el) ? "" : "none";
    pad.style.display = "grid";
    const need = pad.offsetHeight + GAP * 2;
    let box = el.getBoundingClientRect();
    if (box.top < 0 || box.bottom > window.innerHeight) {
      el.scrollIntoView({ block: "nearest" });
      box = el.getBoundingClientRect();
    }
    if (window.innerHeight - box.bottom < need && box.top < need) {
      el.scrollIntoView({ block: "start" }); // room below it, where the page can scroll
    }
    place();
  }

  function close() {
    if (pad) pad.style.display = "none";
    field = null;
  }

  function isOpen() {
    return field !== null;
  }

  window.appKeypad = { open: open, close: close, isOpen: isOpen };

  document.addEventListener("focusin", function (event) {
    if (eligible(event.target)) open(event.target);
    else if (pad && !pad.contains(event.target)) close();
  });
  // A tap on the field after "done" opens the pad again (the focus never left it).
  document.addEventListener("click", function (event) {
    if (!isOpen() && eligible(event.target) && document.activeElement === event.target) {
      open(event.target);
    }
  });
  document.addEventListener("pointerdown", function (event) {
    if (isOpen() && !pad.contains(event.target) && event.target !== field) close();
  });
  window.addEventListener("resize", function () { if (field) place(); });
  document.addEventListener("scroll", function () { if (field) place(); }, true);
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && field) close();
  });
})();
