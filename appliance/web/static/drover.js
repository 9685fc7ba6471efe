// drover's web UI: live updates from /ui/stream and htmx settings. No framework, no build step.
(function () {
  "use strict";
  // Refusals (4xx) carry a flash message for #flash: swap them too instead of dropping them.
  htmx.config.responseHandling = [
    { code: "204", swap: false },
    { code: "[23]..", swap: true },
    { code: "[45]..", swap: true, error: true },
  ];
  const prefix = document.body.dataset.prefix || "/ui";
  // A success message fades after a while; a refusal stays until the next action replaces it.
  document.body.addEventListener("htmx:afterSwap", function (e) {
    if (e.target.id !== "flash") return;
    const shown = e.target.querySelector(".flash.ok");
    if (shown) setTimeout(function () { shown.remove(); }, 6000);
  });
  const dot = document.getElementById("live-dot");
  let source = null;
  let lastId = null;
  let timer = null;

  function changed() {
    // Several events in a burst (a task queued, started, the VM's new state) make one refresh.
    if (timer) return;
    timer = setTimeout(function () {
      timer = null;
      htmx.trigger(document.body, "drover:event");
    }, 250);
  }

  function open() {
    if (source) return;
    const url = prefix + "/stream" + (lastId ? "?after=" + encodeURIComponent(lastId) : "");
    source = new EventSource(url);
    source.addEventListener("open", function () { if (dot) dot.className = "on"; });
    source.addEventListener("error", function () { if (dot) dot.className = "off"; });
    source.addEventListener("message", function (e) { if (e.lastEventId) lastId = e.lastEventId; });
    source.addEventListener("drover", function (e) {
      lastId = e.lastEventId;
      changed();
    });
  }

  function close() {
    if (source) { source.close(); source = null; }
    if (dot) dot.className = "paused";
  }

  // No stream while the tab is hidden; on return, catch up from the last id seen and refresh once.
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { close(); } else { open(); changed(); }
  });
  if (!document.hidden) open();
})();
