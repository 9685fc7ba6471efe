"""Read a VM's serial console over its node's libvirt, as `virsh console` does, until a text shows up.

`python -m tests.lab.vmconsole URI VM TEXT TIMEOUT [LINE]` prints each console line that contains "DROVER-" (the
lab guest's own lines, not grub's escape sequences) and exits 0 once one contains TEXT, 1 on timeout. With LINE,
it types that line into the console first (the lab guest answers "ping ADDRESS" with "DROVER-PING ADDRESS
ok|fail"). It runs with whatever ticket and name resolution its environment gives (the demo's `.demo/env`
plus the appliance's ticket: a node's libvirtd lets only drover@REALM in).
virsh console itself needs a terminal; this needs none.
"""

from __future__ import annotations

import sys
import threading
import time

import libvirt


def main(argv: list[str]) -> int:
    uri, vm, text, timeout = argv[0], argv[1], argv[2], float(argv[3])
    typed = argv[4] if len(argv) > 4 else None
    conn = libvirt.open(uri)
    dom = conn.lookupByName(vm)
    stream = conn.newStream(0)
    dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
    chunks: list[bytes] = []

    def read() -> None:
        # Blocking reads in a thread of their own: the main thread keeps the deadline.
        while True:
            data = stream.recv(4096)
            if not isinstance(data, bytes) or not data:
                return
            chunks.append(data)

    if typed is not None:  # before the reader blocks in recv(): the answer waits in the stream until read
        stream.send(typed.encode() + b"\n")
    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    shown = 0
    while time.monotonic() < deadline:
        lines = b"".join(chunks).decode(errors="replace").replace("\r", "").split("\n")[:-1]
        for line in lines[shown:]:
            if "DROVER-" in line:
                print(line.strip(), flush=True)
                if text in line:
                    return 0
        shown = len(lines)
        time.sleep(0.2)
    print(f"no {text!r} on {vm}'s console after {timeout:.0f}s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
