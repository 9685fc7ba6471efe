// What both console pages share: asking for a one-time ticket, the WebSocket URL, the status badge, full screen.
const body = document.body;
export const prefix = body.dataset.prefix || "/ui";
export const vm = body.dataset.vm;
export const kind = body.dataset.kind;

export function status(state, text) {
  body.dataset.state = state;
  document.getElementById("console-status").textContent = text || state;
  document.getElementById("reconnect").hidden = state === "connected" || state === "connecting";
}

// A fresh ticket for every connection: single-use, bound to this user, this VM and this kind of console.
export async function ticket() {
  const answer = await fetch(prefix + "/vms/" + encodeURIComponent(vm) + "/console", {
    method: "POST",
    credentials: "same-origin",
    headers: { "X-CSRF-Token": body.dataset.csrf, "Content-Type": "application/x-www-form-urlencoded" },
    body: "kind=" + encodeURIComponent(kind),
  });
  if (!answer.ok) {
    const why = answer.status === 409 ? "the VM is not running" : answer.status === 403 ? "not allowed" : "HTTP " + answer.status;
    throw new Error(why);
  }
  return answer.json();
}

export function socketUrl(issued) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return scheme + "//" + location.host + issued.websocket + "?ticket=" + encodeURIComponent(issued.ticket);
}

export function wire(connect, target) {
  document.getElementById("reconnect").addEventListener("click", connect);
  document.getElementById("fullscreen").addEventListener("click", function () {
    (target.requestFullscreen ? target.requestFullscreen() : Promise.resolve()).catch(function () {});
  });
  connect();
}
