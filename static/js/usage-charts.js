// Draws the usage charts from the JSON block the page renders; the tables beside them hold the same numbers,
// so with JavaScript off (or Chart.js missing) nothing is lost.
(function () {
  "use strict";
  var source = document.getElementById("usage-data");
  if (!source) { return; }
  var data;
  try { data = JSON.parse(source.textContent); } catch (e) { return; }

  // Offer the browser's time zone when the page is still showing another one.
  var select = document.querySelector("[data-current-tz]");
  var hint = document.querySelector(".tz-hint");
  try {
    var browserTz = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (select && hint && browserTz && browserTz !== select.getAttribute("data-current-tz")) {
      var url = new URL(window.location.href);
      url.searchParams.set("tz", browserTz);
      var link = document.createElement("a");
      link.href = url.toString();
      link.textContent = "Show times in " + browserTz;
      hint.textContent = "Your browser is set to another time zone. ";
      hint.appendChild(link);
      hint.hidden = false;
    }
  } catch (e) { /* older browsers: keep the server's choice */ }

  if (typeof window.Chart === "undefined") { return; }
  var total = data.labels.length;
  document.querySelectorAll("figure[data-chart]").forEach(function (figure) {
    var sets = data[figure.getAttribute("data-chart")] || [];
    if (!sets.length) { return; }
    figure.hidden = false;
    new window.Chart(figure.querySelector("canvas"), {
      type: "bar",
      data: {
        labels: data.labels,
        datasets: sets.map(function (s) {
          return { label: s.label, data: s.data, backgroundColor: s.color, borderWidth: 0, barPercentage: 1.0,
                   categoryPercentage: total > 60 ? 1.0 : 0.85 };
        })
      },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        interaction: { mode: "index", intersect: false },
        plugins: { legend: { position: "bottom" } },
        scales: {
          x: { stacked: true, ticks: { maxTicksLimit: 12, maxRotation: 0, autoSkip: true } },
          y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } }
        }
      }
    });
  });
  // The chart is drawn: fold the long table away (it stays one click from the chart).
  document.querySelectorAll("details[data-collapse-with-chart]").forEach(function (d) { d.open = false; });
})();
