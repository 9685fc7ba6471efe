// The graphical console: noVNC's RFB client (vendored ES modules) over the appliance's same-origin WebSocket.
// The appliance logs in to the VM's VNC display itself; towards this page it offers no VNC password at all.
import RFB from "./vendor/novnc/core/rfb.js";
import { status, ticket, socketUrl, wire } from "./console-common.js";

const screen = document.getElementById("screen");
const cad = document.getElementById("ctrl-alt-del");
let rfb = null;

async function connect() {
  if (rfb) { rfb.disconnect(); rfb = null; }
  status("connecting");
  let issued;
  try {
    issued = await ticket();
  } catch (err) {
    status("refused", "refused: " + err.message);
    return;
  }
  rfb = new RFB(screen, socketUrl(issued));
  rfb.scaleViewport = true;
  rfb.background = "#111820";
  rfb.addEventListener("connect", function () {
    status("connected");
    cad.disabled = false;
    screen.querySelector("canvas").focus();
  });
  rfb.addEventListener("disconnect", function (e) {
    cad.disabled = true;
    status("closed", e.detail.clean ? "closed" : "connection lost");
  });
  rfb.addEventListener("desktopname", function (e) { document.title = e.detail.name + ": graphical console"; });
}

cad.addEventListener("click", function () { if (rfb) rfb.sendCtrlAltDel(); });
wire(connect, screen);
