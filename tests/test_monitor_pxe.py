"""A PXE-booted node of the real image reports its host series and a running VM's series, signed, to `drover serve`.

The image's collectd is configured by its node agent from the identify response (user, secret, the
appliance as the node reached it: 10.0.2.2, which qemu's user network hands to this machine's
loopback); the virt plugin reads the node's own libvirt, each domain under its UUID.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Host, HostState
from appliance.kerberos.realm import APPLIANCE_CLIENT
from tests.lab.accel import detect
from tests.lab.appliance import ADMIN, LabAppliance, admin_appliance
from tests.lab.image import NodeImage
from tests.lab.kdc import LabKdc
from tests.lab.libvirtd import LabHosts, client_env, virsh
from tests.lab.pxe import PxeNode, boot, free_address, vouch_for
from tests.lab.qemu import HOST_FROM_GUEST, Guest

pytestmark = pytest.mark.lab

# A diskless domain started on the node: its BIOS finds nothing to boot and waits, which costs little
# CPU even as TCG inside TCG, and the virt plugin reports it like any running domain.
DOMAIN_UUID = "0b6f7c2d-8e1a-4f3b-9d5c-2a7e6f1b3c4d"
DOMAIN_XML = f"""<domain type='qemu'>
  <name>metrics-probe</name><uuid>{DOMAIN_UUID}</uuid>
  <memory unit='MiB'>32</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices><graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/></devices>
</domain>
"""


def series(served: LabAppliance, selector: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{served.tsdb_port}"
    httpx.get(f"{url}/internal/force_flush", timeout=10)
    r = httpx.get(f"{url}/api/v1/query", params={"query": selector, "nocache": "1"}, timeout=10)
    r.raise_for_status()
    result: list[dict[str, object]] = r.json()["data"]["result"]
    return result


def wait_for(what: str, check: Callable[[], bool], timeout: float, guest: Guest, served: LabAppliance) -> None:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(
                f"{what} not within {timeout:.0f}s\n--- serial:\n{guest.serial()[-4000:]}\n"
                f"--- appliance:\n{served.log_text()[-4000:]}"
            )
        if guest.proc.poll() is not None:
            raise AssertionError(f"qemu exited ({guest.proc.returncode}) waiting for {what}:\n{guest.serial()[-4000:]}")
        time.sleep(1)


@pytest.mark.boot
@pytest.mark.timeout(900, func_only=True)
def test_pxe_booted_node_reports_host_and_vm_series(node_image: NodeImage, kdc: LabKdc, tmp_path: Path) -> None:
    node = PxeNode.numbered(61, "example.test", free_address())
    hosts = LabHosts(tmp_path / "nss_hosts")
    hosts.add(node.fqdn, node.address)
    env = {
        **hosts.env,
        "DROVER_NODES_HEARTBEAT_SECONDS": "2",
        "DROVER_NODES_EXTRA_NAMES": f"127.0.0.1,{HOST_FROM_GUEST}",
        "DROVER_MONITOR_LOAD_SECONDS": "2",
    }
    with admin_appliance(kdc, tmp_path / "appliance", env) as served:
        db = make_engine(served.database_url)
        guest: Guest | None = None
        try:
            used = served.drover("boot", "use", str(node_image.dir))
            assert used.returncode == 0, used.stdout + used.stderr
            vouch_for(served, node)
            guest = boot(node, tmp_path, served.boot_port, detect())
            g = guest

            def host() -> Host | None:
                with session_scope(db) as s:
                    row = s.scalars(select(Host).where(Host.uuid == node.uuid)).one_or_none()
                    if row is not None:
                        s.expunge(row)
                    return row

            wait_for("host available", lambda: (h := host()) is not None and h.state is HostState.AVAILABLE,
                     500, g, served)  # fmt: skip
            selector = f'collectd_load_load_shortterm{{host="{node.fqdn}"}}'
            wait_for("the node's load in the TSDB", lambda: bool(series(served, selector)), 120, g, served)
            loaded = lambda: (h := host()) is not None and h.load_average is not None  # noqa: E731
            wait_for("the node's load in the database", loaded, 30, g, served)
            row = host()
            assert row is not None and row.collectd_user == f"drover-host-{row.id}"
            assert row.memory_used_mib is not None and row.memory_used_mib > 0

            # a running VM on the node: its series arrive under its UUID, and the host counts it
            with_ticket = client_env(kdc, hosts, APPLIANCE_CLIENT)
            xml = tmp_path / "probe.xml"
            xml.write_text(DOMAIN_XML)
            created = virsh(with_ticket, node.uri, "create", str(xml))
            assert created.returncode == 0, created.stdout
            vm_selector = f'{{__name__=~"collectd_virt_.+",host="{node.fqdn}",plugin_instance="{DOMAIN_UUID}"}}'
            wait_for("the VM's series in the TSDB", lambda: bool(series(served, vm_selector)), 180, g, served)
            wait_for("the VM counted on its host", lambda: (h := host()) is not None and h.vm_count == 1, 60, g, served)

            shown = served.drover("host", "metrics", node.fqdn, principal=ADMIN)
            assert shown.returncode == 0, shown.stderr
            print(shown.stdout)
            assert "collectd_load_load_shortterm" in shown.stdout, shown.stdout
            assert DOMAIN_UUID in shown.stdout, shown.stdout
            metrics = httpx.get(f"{served.local_url}/metrics", timeout=10).text
            refused = [line for line in metrics.splitlines() if line.startswith("drover_monitor_failures_total{")]
            assert refused == [], refused  # the real node's packets all verified
        finally:
            if guest is not None:
                guest.kill()
            db.dispose()
