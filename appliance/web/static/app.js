// Shared by every page: the PIN keypad, and the CSRF token on every fetch that changes state.
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

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll(".keypad").forEach(keypad);
  });
})();
