// Progressive enhancement only: every page works without this file.
(function () {
  "use strict";
  var announcer = document.getElementById("announcer");

  function announce(message) {
    if (!announcer) { return; }
    announcer.textContent = "";
    setTimeout(function () { announcer.textContent = message; }, 50); // a change screen readers notice
  }

  function flash(button, label) {
    var original = button.getAttribute("data-label") || button.textContent;
    button.setAttribute("data-label", original);
    button.textContent = label;
    setTimeout(function () { button.textContent = original; }, 2500);
  }

  // Without the Clipboard API (plain-http hosts, old browsers) the text is selected for Ctrl+C instead.
  function selectForCopy(button, source) {
    var selection = window.getSelection();
    var range = document.createRange();
    range.selectNodeContents(source);
    selection.removeAllRanges();
    selection.addRange(range);
    flash(button, "Selected");
    announce("Selected. Press Control+C, or Command+C on a Mac, to copy.");
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) { return; }
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source) { return; }
    if (!navigator.clipboard || !window.isSecureContext) { selectForCopy(button, source); return; }
    navigator.clipboard.writeText(source.textContent.trim()).then(function () {
      flash(button, "Copied");
      announce("Copied to the clipboard.");
    }, function () { selectForCopy(button, source); });
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

  // Escape closes an open menu or organization switcher and gives the focus back to its button.
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") { return; }
    document.querySelectorAll("details[data-closes-on-escape][open]").forEach(function (details) {
      details.open = false;
      if (details.contains(document.activeElement)) { details.querySelector("summary").focus(); }
    });
  });

  // A click elsewhere closes them too, as menus do.
  document.addEventListener("click", function (event) {
    document.querySelectorAll("details[data-closes-on-escape][open]").forEach(function (details) {
      if (!details.contains(event.target)) { details.open = false; }
    });
  });
})();
