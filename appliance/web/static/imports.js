// The import page: show the picture details only when a PNG or JPEG is chosen, and say how
// many files are chosen. The server decides by each file's bytes; this is only a convenience.
"use strict";

(function () {
  function isPicture(file) {
    return /^image\/(png|jpeg)$/.test(file.type) || /\.(png|jpe?g)$/i.test(file.name);
  }

  function chosenFiles(inputs) {
    const files = [];
    inputs.forEach(function (input) {
      Array.prototype.push.apply(files, Array.prototype.slice.call(input.files || []));
    });
    return files;
  }

  // After a refusal the page opens on what is wrong: the list at the top in view, and the
  // first field to correct focused (a touch keyboard then opens on it) unless it is a file
  // field, which only a tap may open.
  function showErrors() {
    const summary = document.getElementById("import-errors");
    if (!summary) return;
    summary.scrollIntoView({ block: "start" });
    const first = document.querySelector('[aria-invalid="true"]');
    if (first && first.type !== "file") first.focus({ preventScroll: true });
    else summary.focus({ preventScroll: true });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const form = document.getElementById("import-form");
    const details = document.getElementById("picture-details");
    const chosen = document.getElementById("import-chosen");
    if (!form || !details) return;
    const inputs = Array.prototype.slice.call(form.querySelectorAll('input[type="file"]'));
    const required = ["import-patient-name", "import-patient-id"].map(function (id) {
      return document.getElementById(id);
    });

    function update() {
      const files = chosenFiles(inputs);
      const pictures = files.some(isPicture);
      details.hidden = files.length > 0 && !pictures;
      required.forEach(function (input) {
        if (input) input.required = pictures;
      });
      if (chosen) {
        chosen.textContent = files.length
          ? chosen.dataset.template.replace("{n}", String(files.length))
          : "";
      }
    }

    inputs.forEach(function (input) {
      input.addEventListener("change", update);
    });
    update();
    showErrors();
  });
})();
