// drover's graphs: fetch a page's chart data (/ui/graphs/...) and draw it with the vendored uPlot.
// Redrawn every 15 s while the tab is visible and whenever the time range changes.
(function () {
  "use strict";
  const box = document.getElementById("graphs");
  if (!box || typeof uPlot === "undefined") return;
  const charts = box.querySelector(".charts");
  const status = box.querySelector(".graph-status");
  const colors = ["#1f6feb", "#1a7f37", "#b35900", "#8250df", "#c62828", "#0a7f8c"];
  const REFRESH_MS = 15000;
  let span = "1h";
  let plots = [];
  let busy = false;

  function human(unit, v) {
    if (v === null || v === undefined) return "–";
    if (unit === "bytes" || unit === "B/s") {
      const units = ["B", "KiB", "MiB", "GiB", "TiB"];
      let i = 0;
      while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
      return v.toFixed(v < 10 && i > 0 ? 1 : 0) + " " + units[i] + (unit === "B/s" ? "/s" : "");
    }
    if (unit === "%") return v.toFixed(1) + " %";
    if (unit === "count") return String(Math.round(v));
    return v.toFixed(2);
  }

  function empty(fig, text) {
    fig.classList.add("empty");
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = text;
    fig.appendChild(p);
  }

  function draw(body) {
    plots.forEach(function (p) { p.destroy(); });
    plots = [];
    charts.textContent = "";
    body.charts.forEach(function (c) {
      const fig = document.createElement("figure");
      fig.className = "chart";
      fig.dataset.chart = c.key;
      const cap = document.createElement("figcaption");
      cap.textContent = c.title;
      fig.appendChild(cap);
      charts.appendChild(fig);
      let points = 0;
      c.series.forEach(function (s) { s.values.forEach(function (v) { if (v !== null) points++; }); });
      fig.dataset.points = String(points);
      if (c.error) { empty(fig, "No data: " + c.error); return; }
      if (!points) { empty(fig, "No data in the last " + span.replace("h", " h").replace("d", " d") + " — the monitor has stored nothing for this yet."); return; }
      // As wide as its grid cell (the grid decides how many charts share a row).
      const width = Math.max(240, fig.clientWidth - 4);
      const sparse = points < 120 * c.series.length;  // a few minutes of data in a wide range: show the points
      const opts = {
        width: width, height: 170,
        series: [{}].concat(c.series.map(function (s, i) {
          return { label: s.label, stroke: colors[i % colors.length], width: 1.5, spanGaps: false,
                   points: { show: sparse, size: 4 },
                   value: function (u, v) { return human(c.unit, v); } };
        })),
        axes: [{}, { size: 70, values: function (u, vals) { return vals.map(function (v) { return human(c.unit, v); }); } }],
        scales: c.unit === "%" ? { y: { range: [0, 100] } } : {},
        legend: { live: true },
      };
      plots.push(new uPlot(opts, [body.x].concat(c.series.map(function (s) { return s.values; })), fig));
    });
  }

  async function load() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const r = await fetch(box.dataset.src + "?span=" + encodeURIComponent(span), { credentials: "same-origin", headers: { Accept: "application/json" } });
      let body = null;
      try { body = await r.json(); } catch (e) { body = null; }
      if (!r.ok || !body || !body.charts) {
        charts.textContent = "";
        const fig = document.createElement("figure");
        fig.className = "chart";
        charts.appendChild(fig);
        empty(fig, "Graphs unavailable: " + ((body && body.error) || "HTTP " + r.status));
        return;
      }
      draw(body);
      box.dataset.shown = body.span;  // which range is drawn (a test, or a script, can wait for it)
      status.textContent = "updated " + new Date().toLocaleTimeString();
    } catch (e) {
      status.textContent = "could not reach the appliance (" + e + ")";
    } finally {
      busy = false;
    }
  }

  box.querySelectorAll("button[data-span]").forEach(function (b) {
    b.addEventListener("click", function () {
      span = b.dataset.span;
      box.querySelectorAll("button[data-span]").forEach(function (o) { o.classList.toggle("on", o === b); });
      load();
    });
  });
  setInterval(load, REFRESH_MS);
  document.addEventListener("visibilitychange", function () { if (!document.hidden) load(); });
  load();
})();
