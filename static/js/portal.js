// Progressive enhancement only: every page works without this file.
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) { return; }
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source || !navigator.clipboard) { return; }
    navigator.clipboard.writeText(source.textContent.trim()).then(function () {
      var label = button.textContent;
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = label; }, 1500);
    });
  });
  // A "select all" box ticks every checkbox of its form named by data-select-all; it stays hidden without script.
  document.querySelectorAll("[data-select-all]").forEach(function (box) {
    var boxes = box.form ? box.form.querySelectorAll('input[type=checkbox][name="' + box.getAttribute("data-select-all") + '"]') : [];
    if (!boxes.length) { return; }
    box.hidden = false;
    box.addEventListener("change", function () {
      boxes.forEach(function (each) { each.checked = box.checked; });
    });
  });
  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) { event.preventDefault(); }
  });
})();
