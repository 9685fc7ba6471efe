// The serial console: xterm.js (vendored) over the appliance's same-origin WebSocket, raw bytes both ways.
import { Terminal } from "./vendor/xterm/xterm.mjs";
import { status, ticket, socketUrl, wire } from "./console-common.js";

const box = document.getElementById("terminal");
const term = new Terminal({ cursorBlink: true, scrollback: 5000, fontSize: 14 });
const encoder = new TextEncoder();
let socket = null;
term.open(box);

function fit() {
  // No fit addon: the cell size from the rendered rows, and as many rows and columns as the box holds.
  const row = box.querySelector(".xterm-rows > div");
  const height = row ? row.getBoundingClientRect().height : 17;
  const width = term.cols ? box.querySelector(".xterm-screen").getBoundingClientRect().width / term.cols : 8.4;
  const rows = Math.max(5, Math.floor((box.clientHeight - 12) / (height || 17)));
  const cols = Math.max(20, Math.floor((box.clientWidth - 12) / (width || 8.4)));
  if (rows !== term.rows || cols !== term.cols) term.resize(cols, rows);
}
window.addEventListener("resize", fit);
fit();

term.onData(function (data) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data));
});

async function connect() {
  if (socket) { socket.close(); socket = null; }
  status("connecting");
  let issued;
  try {
    issued = await ticket();
  } catch (err) {
    status("refused", "refused: " + err.message);
    return;
  }
  const ws = new WebSocket(socketUrl(issued));
  ws.binaryType = "arraybuffer";
  ws.addEventListener("open", function () { status("connected"); term.focus(); });
  ws.addEventListener("message", function (e) {
    term.write(typeof e.data === "string" ? e.data : new Uint8Array(e.data));
  });
  ws.addEventListener("close", function (e) {
    if (socket === ws) socket = null;
    status("closed", e.reason ? "closed: " + e.reason : "closed");
  });
  socket = ws;
}

wire(connect, box);
