"""Enrolment's cost on top of a boot: qemu start -> host `available` vs qemu start -> login prompt.

One node image PXE-boots in qemu from a real `drover serve` (lab KDC, loopback only) and enrols;
both clocks come from the same polling loop of the same boot. A second boot of the same image from
a plain HTTP server, with no appliance to talk to, gives the login prompt without any enrolment
work competing for the guest's one vCPU. The issue's target: available / login <= 1.1.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Host, HostState
from tests.lab.accel import detect
from tests.lab.appliance import start_appliance
from tests.lab.image import build_node_image, http_server, pxe_tftp_dir
from tests.lab.kdc import start_kdc
from tests.lab.libvirtd import LabHosts
from tests.lab.proc import terminate
from tests.lab.pxe import LOGIN_PROMPT, BootClock, PxeNode, boot
from tests.lab.qemu import HOST_FROM_GUEST, start_guest

TIMEOUT = 600.0
TARGET = 1.1


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="drover-bench-pxe-") as tmp:
        work = Path(tmp)
        image = build_node_image(work / "image")
        accel = detect()
        kdc = start_kdc(work / "kdc")
        node = PxeNode.numbered(1, "example.test", "127.0.0.90")
        hosts = LabHosts(work / "nss_hosts")
        hosts.add(node.fqdn, node.address)
        served = start_appliance(
            kdc,
            work / "appliance",
            extra_env={**hosts.env, "DROVER_NODES_EXTRA_NAMES": f"127.0.0.1,{HOST_FROM_GUEST}"},
        )
        db = make_engine(served.database_url)
        try:
            used = served.drover("boot", "use", str(image.dir))
            if used.returncode != 0:
                raise RuntimeError(used.stdout + used.stderr)
            # The admin vouches for this machine: an enrolment window for its MAC.
            for argv in (("user", "add", "bench-boss", "--role", "admin"),
                         ("host", "enrol", "--window", "15m", "--mac", node.mac)):  # fmt: skip
                done = served.drover(*argv, principal="bench-boss" if argv[0] == "host" else None)
                if done.returncode != 0:
                    raise RuntimeError(done.stdout + done.stderr)

            def available() -> bool:
                with session_scope(db) as s:
                    state = s.scalar(select(Host.state).where(Host.uuid == node.uuid))
                return state is HostState.AVAILABLE

            guest = boot(node, work, served.boot_port, accel)
            clock = BootClock(guest, available)
            deadline = time.monotonic() + TIMEOUT
            try:
                while not clock.tick():
                    if time.monotonic() > deadline or guest.proc.poll() is not None:
                        raise RuntimeError(f"no enrolment within {TIMEOUT:.0f}s:\n{guest.serial()[-3000:]}")
                    time.sleep(0.2)
            finally:
                guest.kill()
        finally:
            db.dispose()
            served.stop()
            terminate(kdc.process)

        # The same image, nobody to enrol with: the agent retries in the background, the getty does not wait.
        with http_server(image.dir) as http:
            tftp = pxe_tftp_dir(work / "plain-tftp", http.url_for_guest())
            plain = start_guest("bench-plain", work, accel=accel, tftp_dir=tftp)
            try:
                _found, plain_login = plain.wait_for(LOGIN_PROMPT.pattern, TIMEOUT)
            finally:
                plain.kill()

    assert clock.login is not None and clock.enrolled is not None
    return {
        "baseline": "boot -> login prompt of the same image in this run (same boot; and a boot with no appliance)",
        "accel": str(accel),
        "boot_to_login_seconds": round(clock.login, 1),
        "boot_to_available_seconds": round(clock.enrolled, 1),
        "available_vs_login": round(clock.ratio, 3),
        "plain_boot_to_login_seconds": round(plain_login, 1),
        "available_vs_plain_login": round(clock.enrolled / plain_login, 3),
        "target": TARGET,
        "met": clock.ratio <= TARGET,
    }
