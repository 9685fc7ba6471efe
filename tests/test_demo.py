"""`make demo`, run as a user runs it, with its default two nodes: PXE-booted qemu nodes enrol, the admin's
logical networks (three VLANs on an L2 segment the demo builds) are applied by their agents, a storage pool, a
template and three VMs are made through the task engine with the `drover` CLI and boot (their serial consoles
say so), a VM reaches its neighbour on the other node over their network and not the VM on another VLAN, it is
live-migrated to the other node over the migration network and still counts and reaches its neighbour there;
the web UI's screenshots show graphs with data and both consoles reached through the appliance, the printed
commands work, Ctrl-C tears everything down, and a second run brings the same hosts back, reuses the networks,
the pool, the template and the VMs, and migrates again.

The demo runs on free ports (its DROVER_* settings yield to the caller's) and its own loopback
addresses, so a demo someone left running on this machine does not collide with this one.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.image import NodeImage
from tests.lab.net import free_port, free_udp_port

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parent.parent
# Node N's libvirtd on 127.0.0.(FIRST + N - 1): away from `make demo`'s 201.. and, per run, from another
# demo test running at the same time on this machine (a worktree next to this one).
FIRST_ADDRESS = str(random.randrange(100, 250, 2))
READY = "demo: ready."


class DemoRun:
    def __init__(self, demo_dir: Path, nodes: int, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.lab.demo", "--dir", str(demo_dir), "--nodes", str(nodes),
             "--first-address", FIRST_ADDRESS],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.process.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"demo exited ({self.process.returncode}) before {text!r}:\n{self.output[-6000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} from the demo after {timeout:.0f}s:\n{self.output[-6000:]}")
            time.sleep(0.5)

    def interrupt(self, timeout: float = 90) -> int:
        """Ctrl-C, as at the terminal (the demo's children run in sessions of their own)."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def demos() -> Iterator[list[DemoRun]]:
    """The test's demo runs: any still running when the test ends (a failed assertion) gets its Ctrl-C, so
    its nodes, appliance and segment do not outlive the test."""
    runs: list[DemoRun] = []
    yield runs
    for run in runs:
        if run.process.poll() is None:
            try:
                run.interrupt()
            except subprocess.TimeoutExpired:
                run.kill()


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def printed_commands(output: str) -> dict[str, str]:
    """The shell lines the demo told the user to type, by their first word and, for `drover` and `virsh`, the
    words that say what they do (the last of each wins)."""
    commands: dict[str, str] = {}
    for line in output[output.index(READY) :].splitlines():
        command = line.split("#", 1)[0].strip()
        if line.startswith("  ") and command and not command.startswith("API:"):
            words = command.split()
            key = words[0] + (" appliance" if "appliance.keytab" in command else "")
            if words[0] == "drover":
                key = " ".join(words[:3])
            elif words[0] == "virsh":
                key = f"virsh {words[3]}"
            commands[key] = command
    return commands


VM_RUNNING = re.compile(r"^demo: VM demo-vm is running on (node\d\.drover\.test) ", re.M)


def vm_phase(output: str) -> tuple[str, str]:
    """The demo's VM part: the node it runs on, and what it printed from the pool to the running guest."""
    found = VM_RUNNING.search(output)
    assert found is not None, output[-6000:]
    start = output.index("demo: storage pool demo-pool")
    return found.group(1), output[start : found.end()]


def found_end(output: str) -> int:
    found = VM_RUNNING.search(output)
    assert found is not None
    return found.end()


def shell(script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-ec", script], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(ROOT)},
    )  # fmt: skip


@pytest.mark.boot
@pytest.mark.timeout(3600, func_only=True)
def test_demo_enrols_a_node_shows_the_ui_stops_on_ctrl_c_and_runs_again(
    node_image: NodeImage, tmp_path: Path, demos: list[DemoRun]
) -> None:
    # node_image has put the image in the build cache: the demo's own `drover image build` reuses it.
    demo_dir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DROVER_", "KRB5"))}
    ports = {
        "DROVER_API_PORT": free_port(),
        "DROVER_NODES_PORT": free_port(),
        "DROVER_NODES_BOOT_PORT": free_port(),
        "DROVER_KERBEROS_KDC_PORT": free_port(),
        "DROVER_KERBEROS_KADMIN_PORT": free_port(),
        "DROVER_MONITOR_PORT": free_udp_port(),
        "DROVER_MONITOR_TSDB_PORT": free_port(),
    }
    env.update({k: str(v) for k, v in ports.items()})

    first = DemoRun(demo_dir, 2, env)
    demos.append(first)
    try:
        first.wait_for(READY, 2400)
    finally:
        if first.process.poll() is None and READY not in first.output:
            first.interrupt()
    out = first.output
    print(out)
    # Progress, then the host list with both nodes available.
    assert "PXE-booting 2 node(s) in qemu" in out
    for name in ("node1", "node2"):
        assert re.search(rf"\] {name}: (kernel|initrd|systemd)", out), out
        assert re.search(rf"\] {name}: enrolled: host \d+ available", out), out
    table = out[out.index("demo: drover host list") : out.index("demo: $ drover network create")]
    rows = {line.split()[1]: line.split() for line in table.splitlines()[2:] if line.strip()}
    assert set(rows) == {"node1.drover.test", "node2.drover.test"}, table
    # The networks, each a VLAN on the nodes' segment NIC, applied by both agents.
    for typed in ("$ drover network create demo-net --vlan 60 --role vm",
                  "$ drover network create demo-mig --vlan 50 --role migration --subnet 10.50.0.0/24",
                  "$ drover host network node2.drover.test --set demo-mig --nic 52:54:00:5e:02:01 --address "
                  "10.50.0.2/24"):  # fmt: skip
        assert typed in out, out[-6000:]
    for name in ("node1", "node2"):
        assert re.search(rf"^demo: {name}: networks in sync \(\d+s\)", out, re.M), out[-6000:]
    # The VM through the task engine, each step a `drover` command shown as typed; the guest's console speaks.
    vm_host, steps = vm_phase(out)
    assert vm_host == "node1.drover.test", steps
    for typed in ("$ drover storage pool create demo-pool --type nfs", "$ drover template import ",
                  "$ drover vm create demo-vm --template demo-guest --host node1.drover.test --network demo-net "
                  "--wait", "$ drover vm start demo-vm --wait",
                  "$ drover vm create demo-peer --template demo-guest --host node2.drover.test --network demo-net",
                  "$ drover vm create demo-other --template demo-guest --host node2.drover.test --network demo-lab",
                  "$ drover task list", "$ drover vm show demo-vm"):  # fmt: skip
        assert typed in steps, steps
    for name in ("demo-vm", "demo-peer", "demo-other"):
        assert re.search(rf"^demo: {name} console: DROVER-TICK \d+$", steps, re.M), steps
    # Across the nodes on one VLAN: answered; to the other VLAN: not. Then the live migration, and again.
    after = out[found_end(out) :]
    pings = re.findall(r"^demo: demo-vm \(on (\S+)\) pings (demo-\w+) \(on (\S+)\) at fe80::\S+%eth0: (.+)$", after,
                       re.M)  # fmt: skip
    assert pings == [
        ("node1.drover.test", "demo-peer", "node2.drover.test", "answered"),
        ("node1.drover.test", "demo-other", "node2.drover.test", "no answer"),
        ("node2.drover.test", "demo-peer", "node2.drover.test", "answered"),
    ], after
    assert "$ drover vm migrate demo-vm --host node2.drover.test --wait" in after, after
    # Its memory went to node2's address on the migration network, not where libvirt's connection went.
    assert re.search(r'^result: \{"from": "node1\.drover\.test", "to": "node2\.drover\.test", .*"via": '
                     r'"tcp://10\.50\.0\.2"\}$', after, re.M), after  # fmt: skip
    assert re.search(r"^demo: demo-vm console on node2\.drover\.test: DROVER-TICK \d+$", after, re.M), after
    assert "demo: VM demo-vm migrated to node2.drover.test, still counting and on its network" in after, after
    vm_shown = steps[steps.index("$ drover vm show demo-vm") :]
    # Its boot disk is its own copy-on-write overlay over the template's base image, on the NFS pool.
    assert re.search(r"^state: +running$", vm_shown, re.M), vm_shown
    assert re.search(r"^disk: +vda demo-vm-vda\.qcow2 \(virtio\) /\S+/demo-vm-vda\.qcow2$", vm_shown, re.M), vm_shown
    assert all(r[2] == "available" for r in rows.values()), table
    first_ids = {name: r[0] for name, r in rows.items()}
    # Screenshots of the UI for a user without a desktop, each taken once its page showed its data: the host's
    # graphs drew points (the monitor has samples), the serial console shows the guest counting and the
    # graphical console drew the guest's screen (the console proxy reached the VM through the appliance).
    for shot in ("dashboard", "host", "networks", "vm", "console-serial", "console-vnc"):
        png = demo_dir / "screenshots" / f"{shot}.png"
        assert re.search(rf"^demo:   \S*screenshots/{shot}\.png: [^(]+$", out, re.M), out[-3000:]
        head = png.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n", png
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        # A page's size; more bytes than a blank page of that size compresses to (~4 KB; a dark terminal
        # with a few lines is ~13 KB): the readiness each shot waited for is the real check.
        assert width >= 1000 and height >= 600 and png.stat().st_size > 8_000, (png, width, height)

    try:
        # The printed commands, typed into a shell as a user would.
        cmds = printed_commands(out)
        source, admin, appliance, virsh = cmds["."], cmds["kinit"], cmds["kinit appliance"], cmds["virsh list"]
        listed = shell(f"{source}\n{admin}\ndrover host list\n")
        assert listed.returncode == 0 and listed.stdout.count(" available ") == 2, listed.stdout + listed.stderr
        vms = shell(f"{source}\n{admin}\ndrover vm list\n")
        assert re.search(r"demo-vm +running +node2\.drover\.test", vms.stdout), vms.stdout + vms.stderr
        # The printed console's libvirt, with the appliance's ticket: the guest is still counting there.
        console = cmds["virsh console"]
        assert console == "virsh -c qemu+tcp://node2.drover.test/system console demo-vm", console
        assert cmds["drover vm migrate"] == "drover vm migrate demo-vm --host node1.drover.test --wait", cmds
        read = shell(f"{source}\n{appliance}\npython -m tests.lab.vmconsole qemu+tcp://node2.drover.test/system "
                     "demo-vm DROVER-TICK 180\n", timeout=240)  # fmt: skip
        assert read.returncode == 0 and "DROVER-TICK" in read.stdout, read.stdout + read.stderr
        # The nodes' collectd reports through the demo's receiver: the printed `drover host metrics` shows it.
        metrics = cmds["drover host metrics"]
        assert metrics.startswith("drover host metrics node1."), metrics
        deadline = time.monotonic() + 120
        while "collectd_load_load_shortterm" not in (shown := shell(f"{source}\n{admin}\n{metrics}\n")).stdout:
            assert time.monotonic() < deadline, shown.stdout + shown.stderr
            time.sleep(5)
        reached = shell(f"{source}\n{appliance}\n{virsh}\n")
        assert reached.returncode == 0 and "Id" in reached.stdout, reached.stdout + reached.stderr
        refused = shell(f"{source}\n{admin}\n{virsh}\n")  # admin@ is not in the node's SASL allow list
        assert refused.returncode != 0, refused.stdout
    finally:
        code = first.interrupt()
    assert code == 0, first.output[-3000:]
    assert first.lines[-1] == "demo: stopped", first.output[-3000:]
    assert processes_mentioning(str(demo_dir)) == []  # no qemu, no drover serve, no KDC left
    assert shell(f"exec 3<>/dev/tcp/127.0.0.1/{ports['DROVER_API_PORT']}").returncode != 0

    # Again: everything is reused and the nodes are the same hosts.
    second = DemoRun(demo_dir, 2, env)
    demos.append(second)
    try:
        second.wait_for(READY, 1500)
        again = second.output
        assert "realm DROVER.TEST already exists" in again, again
        table = again[again.index("demo: drover host list") : again.index("demo: network demo-net: reusing it")]
        rows = {line.split()[1]: line.split() for line in table.splitlines()[2:] if line.strip()}
        for name in ("node1.drover.test", "node2.drover.test"):
            assert rows[name][0] == first_ids[name] and rows[name][2] == "available", table
        # Networks, pool, template and VMs are the first run's: nothing made again, the VMs started again.
        assert "$ drover network create" not in again and "$ drover host network node1.drover.test --set" not in again
        vm_host, steps = vm_phase(again)
        for reused in ("storage pool demo-pool: reusing it", "template demo-guest: reusing it",
                       "VM demo-vm: reusing it", "VM demo-peer: reusing it", "VM demo-other: reusing it"):  # fmt: skip
            assert f"demo: {reused}" in steps, steps
        for made in ("pool create", "template import", "vm create"):
            assert f"$ drover {made}" not in steps, steps
        assert "$ drover vm start demo-vm --wait" in steps, steps
        assert re.search(r"^demo: demo-vm console: DROVER-TICK \d+$", steps, re.M), steps
        other = "node2.drover.test" if vm_host == "node1.drover.test" else "node1.drover.test"
        assert f"demo: VM demo-vm migrated to {other}, still counting and on its network" in again, again[-4000:]
    finally:
        code = second.interrupt()
    assert code == 0 and second.lines[-1] == "demo: stopped", second.output[-3000:]
    assert processes_mentioning(str(demo_dir)) == []
