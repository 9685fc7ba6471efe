// The template import form: the file goes as the request body (not multipart), as the API takes it, with the
// session's CSRF token; the answer is a flash message like every other action's.
(function () {
  "use strict";
  const form = document.getElementById("template-import");
  if (!form) return;
  const csrf = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"];
  form.addEventListener("submit", async function (e) {
    e.preventDefault();
    const file = form.elements.file.files[0];
    if (!file) return;
    const params = new URLSearchParams();
    ["name", "pool", "vcpus", "memory_mib", "description"].forEach(function (k) {
      const v = form.elements[k].value.trim();
      if (v) params.set(k, v);
    });
    const bar = form.querySelector("progress");
    bar.hidden = false;
    try {
      const r = await fetch(form.dataset.action + "?" + params.toString(), {
        method: "POST", credentials: "same-origin", body: file,
        headers: { "Content-Type": "application/octet-stream", "X-CSRF-Token": csrf, "HX-Request": "true" },
      });
      document.getElementById("flash").innerHTML = await r.text();
      if (r.ok) { form.reset(); htmx.trigger(document.body, "drover:event"); }
    } finally {
      bar.hidden = true;
    }
  });
})();
