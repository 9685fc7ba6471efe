"""Storage, templates, snapshots and clones as a user drives them: the `drover` CLI with a real ticket, the REST
API of a real `drover serve`, the task engine as `drover taskengine run`, two lab libvirtds (the session's task
rack, tests/lab/taskrack.py). The rack's two nodes share one directory as the stand-in for shared storage.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from appliance.db.engine import session_scope
from appliance.db.models import HardwarePool, StoragePool, Task, Template, VmState
from appliance.runner import run
from tests.lab.appliance import ADMIN
from tests.lab.guest import BOOT_MARKER, TICK, build_iso, wait_for_text
from tests.lab.taskrack import TaskRack

pytestmark = pytest.mark.lab

WATCHER = "watcher"  # monitor role: may look, may not change

# Posts a file's bytes to /api/v1/templates as the CLI's client does, without the CLI's own check first.
RAW_UPLOAD = """
import json, sys
from pathlib import Path
from appliance.cli.api_cmd import client_for
from appliance.config import load
from appliance.errors import DroverError
try:
    with client_for(load()) as api:
        params = {"name": sys.argv[2], "pool": sys.argv[3]}
        print(json.dumps({"ok": api.upload("/api/v1/templates", Path(sys.argv[1]), params)}))
except DroverError as exc:
    print(json.dumps({"error": exc.message, "class": type(exc).__name__}))
"""


# One API call as the lab admin: prints {"ok": answer} or {"error", "class", "status"}.
API_CALL = """
import json, sys
from appliance.cli.api_cmd import client_for
from appliance.config import load
from appliance.errors import DroverError
try:
    with client_for(load()) as api:
        print(json.dumps({"ok": api.request(sys.argv[1], sys.argv[2], body=json.loads(sys.argv[3]))}))
except DroverError as exc:
    print(json.dumps({"error": exc.message, "class": type(exc).__name__}))
"""


def api_call(rack: TaskRack, method: str, path: str, body: object) -> dict[str, Any]:
    out = run([sys.executable, "-c", API_CALL, method, path, json.dumps(body)], env=rack.served.cli_env(ADMIN),
              cwd=Path(__file__).resolve().parent.parent).stdout  # fmt: skip
    answer: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return answer


def ok(rack: TaskRack, *argv: str, principal: str | None = None) -> str:
    done = rack.drover(*argv) if principal is None else rack.drover(*argv, principal=principal)
    assert done.returncode == 0, f"drover {' '.join(argv)}: {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout


def refused(rack: TaskRack, code: int, *argv: str, principal: str | None = None) -> str:
    done = rack.drover(*argv) if principal is None else rack.drover(*argv, principal=principal)
    assert done.returncode == code, f"drover {' '.join(argv)}: {done.returncode}\n{done.stdout}{done.stderr}"
    lines = done.stderr.strip().splitlines()
    assert lines and lines[0].startswith("drover: error: "), done.stderr
    return done.stderr


def js(rack: TaskRack, *argv: str) -> Any:
    return json.loads(ok(rack, *argv, "--json"))


def counts(rack: TaskRack) -> tuple[int, int, int]:
    with session_scope(rack.db) as s:
        return (len(s.scalars(select(Task.id)).all()), len(s.scalars(select(StoragePool.id)).all()),
                len(s.scalars(select(Template.id)).all()))  # fmt: skip


def test_storage_templates_snapshots_clone_through_cli(task_rack: TaskRack, tmp_path: Path) -> None:
    rack = task_rack
    rack.ensure_worker()
    pool = rack.unique("rackpool")
    shared = tmp_path / "shared"
    out = ok(rack, "storage", "pool", "create", pool, "--type", "dir", "--path", str(shared), "--wait")
    assert "finished" in out
    listed = {p["name"]: p for p in js(rack, "storage", "pool", "list")}
    assert listed[pool]["state"] == "available" and listed[pool]["capacity_bytes"] > 0

    # Bad input: one line, an exit code, nothing written.
    before = counts(rack)
    assert "already exists" in refused(rack, 5, "storage", "pool", "create", pool, "--type", "dir", "--path", "/x")
    assert "needs it" in refused(rack, 2, "storage", "pool", "create", "p2", "--type", "nfs", "--server", "h")
    assert "does not exist" in refused(rack, 4, "storage", "volume", "create", "nope", "v", "--size", "1M")
    assert "not understood" in refused(rack, 2, "storage", "volume", "create", pool, "v", "--size", "lots")
    text = tmp_path / "notes.txt"
    text.write_text("not a disk\n")
    assert "not a qcow2, raw or ISO" in refused(rack, 2, "template", "import", str(text), "--pool", pool)
    assert counts(rack) == before

    # The server checks the bytes too (a client that skips the check), and keeps nothing it refused.
    uploads = rack.served.kdc.root / "uploads"  # <state_dir>/uploads; the lab's state dir is the KDC's root
    kept = set(uploads.iterdir()) if uploads.exists() else set()
    env = rack.served.cli_env(ADMIN)
    raw = run([sys.executable, "-c", RAW_UPLOAD, str(text), "sneaky", pool], env=env,
              cwd=Path(__file__).resolve().parent.parent).stdout  # fmt: skip
    answer = json.loads(raw.strip().splitlines()[-1])
    assert answer == {"error": answer["error"], "class": "UsageError"} and "not a qcow2" in answer["error"]
    assert (set(uploads.iterdir()) if uploads.exists() else set()) == kept
    assert counts(rack) == before

    # Malformed requests straight to the API: 400 with the reason, nothing written.
    base = f"/api/v1/storage/pools/{pool}/volumes"
    for body, reason in (
        ({"name": "v", "capacity_bytes": 1 << 20, "colour": "red"}, "colour: unknown field"),
        ({"name": "v", "capacity_bytes": 1 << 20, "format": "vmdk"}, "not raw or qcow2"),
        ({"name": "v", "capacity_bytes": "big"}, "capacity"),
        ({"name": "../etc", "capacity_bytes": 1 << 20}, "not valid"),
    ):
        answer = api_call(rack, "POST", base, body)
        assert answer["class"] == "UsageError" and reason in answer["error"], answer
    answer = api_call(
        rack, "POST", "/api/v1/storage/pools", {"name": "p", "type": "dir", "path": "/p", "hardware_pool": "nope"}
    )
    assert answer["class"] == "NotFound" and "hardware pool nope" in answer["error"], answer
    answer = api_call(rack, "POST", "/api/v1/vms/no-such-vm/snapshots", {"name": "s"})
    assert answer["class"] == "NotFound", answer
    assert counts(rack) == before

    # A volume, a template from a local qcow2.
    ok(rack, "storage", "volume", "create", pool, "disk0.qcow2", "--size", "16M", "--format", "qcow2", "--wait")
    vols = {v["name"]: v for v in js(rack, "storage", "volume", "list", pool)}
    assert vols["disk0.qcow2"]["state"] == "available" and (shared / "disk0.qcow2").is_file()
    image = tmp_path / "base.qcow2"
    run(["qemu-img", "create", "-f", "qcow2", str(image), "24M"])
    tpl = rack.unique("tpl")
    out = ok(rack, "template", "import", str(image), "--pool", pool, "--name", tpl, "--vcpus", "2", "--wait")
    assert "finished" in out and "100%" in out
    assert (shared / f"{tpl}.qcow2").read_bytes() == image.read_bytes()
    shown = {t["name"]: t for t in js(rack, "template", "list")}
    assert shown[tpl]["vcpus"] == 2 and shown[tpl]["volume"]["capacity_bytes"] == 24 << 20
    # The tables people read: the pool with its volumes, the template with its pool.
    text_show = ok(rack, "storage", "pool", "show", pool)
    assert f"volume:           {tpl}.qcow2 qcow2 24.0 MiB available" in text_show and "disk0.qcow2" in text_show
    assert any(line.split()[1] == tpl and pool in line for line in ok(rack, "template", "list").splitlines()[1:])
    assert any(
        line.split()[1] == pool and "available" in line for line in ok(rack, "storage", "pool", "list").splitlines()
    )

    # Permissions: a monitor sees, may not change.
    # The rack is shared by the session: another module may have made this monitor user already.
    rack.drover("user", "add", WATCHER, "--role", "monitor")
    assert "monitor" in ok(rack, "user", "list")
    assert pool in ok(rack, "storage", "pool", "list", principal=WATCHER)
    assert "may not" in refused(rack, 9, "storage", "pool", "delete", pool, principal=WATCHER)
    assert "may not" in refused(rack, 9, "template", "import", str(image), "--pool", pool, principal=WATCHER)

    # In use: the pool cannot go while the template holds its base image.
    assert f"in use by template {tpl}" in refused(rack, 5, "storage", "pool", "delete", pool)

    # A VM on the rack's first node with the qcow2 disk: snapshots, then a clone.
    vm = rack.unique("snapvm")
    disk_id = str(vols["disk0.qcow2"]["id"])
    ok(rack, *rack.guest_args(vm), "--disk", disk_id, "--host", rack.nodes[0].fqdn, "--wait")
    ok(rack, "vm", "snapshot", "create", vm, "s1", "--description", "first", "--wait")
    ok(rack, "vm", "snapshot", "create", vm, "s2", "--wait")
    snaps = js(rack, "vm", "snapshot", "list", vm)
    assert [(x["name"], x["parent"], x["state"]) for x in snaps] == [("s1", None, "ready"), ("s2", "s1", "ready")]
    assert [line.split()[1:4] for line in ok(rack, "vm", "snapshot", "list", vm).splitlines()[1:]] == [
        ["s1", "ready", "-"], ["s2", "ready", "s1"]]  # fmt: skip
    assert "already has a snapshot s1" in refused(rack, 5, "vm", "snapshot", "create", vm, "s1")
    assert "no snapshot" in refused(rack, 4, "vm", "snapshot", "revert", vm, "nope")
    ok(rack, "vm", "snapshot", "revert", vm, "s1", "--wait")
    ok(rack, "vm", "snapshot", "delete", vm, "s1", "--wait")
    snaps = js(rack, "vm", "snapshot", "list", vm)
    assert [(x["name"], x["parent"]) for x in snaps] == [("s2", None)]
    ok(rack, "vm", "snapshot", "delete", vm, "s2", "--wait")

    clone = f"{vm}-c"
    ok(rack, "vm", "clone", vm, clone, "--wait")
    assert rack.vm(clone).state.value == "stopped"
    assert (shared / f"{clone}-vda.qcow2").is_file()
    assert "already exists" in refused(rack, 5, "vm", "clone", vm, clone)

    # Clean up through the CLI too: VMs (their volumes stay), volumes, template, pool.
    for name in (clone, vm):
        ok(rack, "vm", "delete", name, "--wait")
    ok(rack, "storage", "volume", "delete", pool, f"{clone}-vda.qcow2", "--wait")
    ok(rack, "template", "delete", tpl, "--wait")
    assert not (shared / f"{tpl}.qcow2").exists()
    ok(rack, "storage", "pool", "delete", pool, "--wait")
    assert pool not in {p["name"] for p in js(rack, "storage", "pool", "list")}
    assert (shared / "disk0.qcow2").is_file()  # data on the storage outlives the pool's record


def test_snapshot_of_a_running_guest_keeps_its_memory(task_rack: TaskRack, tmp_path: Path) -> None:
    """A TCG guest counting on its serial console: a snapshot while it runs includes its memory, and reverting
    to it puts the guest back to that moment, still running: the counter repeats numbers it had passed."""
    rack = task_rack
    rack.ensure_worker()
    pool = rack.unique("runpool")
    ok(rack, "storage", "pool", "create", pool, "--type", "dir", "--path", str(tmp_path / "p"), "--wait")
    ok(rack, "storage", "volume", "create", pool, "run.qcow2", "--size", "8M", "--format", "qcow2", "--wait")
    disk_id = str({v["name"]: v for v in js(rack, "storage", "volume", "list", pool)}["run.qcow2"]["id"])
    vm = rack.unique("runvm")
    ok(rack, *rack.guest_args(vm), "--disk", disk_id, "--host", rack.nodes[0].fqdn, "--wait")
    ok(rack, "vm", "start", vm, "--wait")
    serial = rack.serial_log(rack.vm(vm).host_id, vm)
    try:
        wait_for_text(serial, BOOT_MARKER, 120)
        wait_for_text(serial, f"{TICK} 3", 60)
        ok(rack, "vm", "snapshot", "create", vm, "live", "--wait")
        snap = js(rack, "vm", "snapshot", "list", vm)[0]
        assert snap["with_memory"] is True and rack.vm(vm).state is VmState.RUNNING
        at = max(ticks(serial.read_text()))
        wait_for_text(serial, f"{TICK} {at + 4}\n", 60)
        ok(rack, "vm", "snapshot", "revert", vm, "live", "--wait")
        assert rack.vm(vm).state is VmState.RUNNING
        # Back in time: a number already printed after the snapshot comes again, with no new boot.
        deadline = time.monotonic() + 60
        while Counter(ticks(serial.read_text()))[at + 2] < 2:
            assert time.monotonic() < deadline, serial.read_text()[-2000:]
            time.sleep(0.2)
        assert serial.read_text().count(BOOT_MARKER) == 1
        ok(rack, "vm", "snapshot", "delete", vm, "live", "--wait")
    finally:
        rack.drover("vm", "poweroff", vm, "--wait")
        rack.drover("vm", "delete", vm, "--wait")
        rack.drover("storage", "volume", "delete", pool, "run.qcow2", "--wait")
        rack.drover("storage", "pool", "delete", pool, "--wait")


def ticks(text: str) -> list[int]:
    return [int(m) for m in re.findall(rf"^{TICK} (\d+)\s*$", text, flags=re.M)] or [0]


def test_storage_rights_are_per_hardware_pool(task_rack: TaskRack, tmp_path: Path) -> None:
    """An admin of one hardware pool manages storage there and nowhere else."""
    rack = task_rack
    rack.ensure_worker()
    lab_pool = rack.unique("lab")
    with session_scope(rack.db) as s:
        s.add(HardwarePool(name=lab_pool))
    scoped = rack.unique("scoped")
    ok(rack, "user", "add", scoped, "--role", "admin", "--pool", lab_pool)
    before = counts(rack)
    name = rack.unique("theirs")
    err = refused(rack, 9, "storage", "pool", "create", name, "--type", "dir", "--path", "/srv/x", principal=scoped)
    assert "hardware pool default" in err
    assert counts(rack) == before
    # In their own hardware pool it is accepted; it has no hosts, so the task fails and says why.
    done = rack.drover("storage", "pool", "create", name, "--type", "dir", "--path", str(tmp_path / "x"),
                       "--hardware-pool", lab_pool, "--wait", principal=scoped)  # fmt: skip
    assert done.returncode != 0 and "no available host" in done.stderr, done.stdout + done.stderr
    assert js(rack, "storage", "pool", "list")  # the lab admin sees everything
    shown = {p["name"]: p["state"] for p in json.loads(ok(rack, "storage", "pool", "list", "--json", principal=scoped))}
    assert shown == {name: "failed"}  # the scoped admin sees only their hardware pool's storage
    ok(rack, "storage", "pool", "delete", name, "--wait", principal=scoped)


def test_a_vm_boots_from_a_template_iso(task_rack: TaskRack, tmp_path: Path) -> None:
    """`drover vm create --template T`: the VM gets its own copy-on-write overlay (qcow2, made through libvirt in
    the template's pool) over the template's base image (the lab guest as a hybrid ISO, imported as a raw
    volume); the guest boots from it through grub to its serial console, its writes never reach the base.
    A template with VMs on it cannot be deleted; deleting the VM deletes its overlay, never the template."""
    rack = task_rack
    rack.ensure_worker()
    pool = rack.unique("isopool")
    where = tmp_path / "p"
    ok(rack, "storage", "pool", "create", pool, "--type", "dir", "--path", str(where), "--wait")
    tpl, vm = rack.unique("guestiso"), rack.unique("isovm")
    ok(rack, "template", "import", str(build_iso(tmp_path / "iso")), "--pool", pool, "--name", tpl,
       "--memory", "112", "--wait")  # fmt: skip
    base = where / f"{tpl}.img"
    base_bytes = base.read_bytes()
    before = counts(rack)
    assert "template nope does not exist" in refused(rack, 4, "vm", "create", vm, "--template", "nope")
    assert "is taken" in api_call(rack, "POST", "/api/v1/vms", {"name": vm, "template": tpl,
                                                               "disks": [{"volume": 1, "target": "vda"}]})["error"]
    assert counts(rack) == before
    ok(rack, "vm", "create", vm, "--template", tpl, "--host", rack.nodes[0].fqdn, "--wait")
    shown = js(rack, "vm", "show", vm)
    assert (shown["template"], shown["memory_mib"], shown["vcpus"]) == (tpl, 112, 1)
    overlay = where / f"{vm}-vda.qcow2"
    assert [(d["target"], d["volume"], d["read_only"], d["path"]) for d in shown["disks"]] == [
        ("vda", f"{vm}-vda.qcow2", False, str(overlay))]  # fmt: skip
    info = json.loads(run(["qemu-img", "info", "--output=json", str(overlay)]).stdout)
    assert (info["format"], info["backing-filename"], info["backing-filename-format"]) == ("qcow2", str(base), "raw")
    vols = {v["name"]: v for v in js(rack, "storage", "volume", "list", pool)}
    assert vols[f"{vm}-vda.qcow2"]["format"] == "qcow2" and vols[f"{vm}-vda.qcow2"]["state"] == "available"
    # A second VM of the same template, its name too long to make a volume name of: its overlay is named by
    # its UUID. The template cannot go while either is on it (409 naming them).
    long_name = rack.unique("x" * 56)
    ok(rack, "vm", "create", long_name, "--template", tpl, "--host", rack.nodes[0].fqdn, "--wait")
    long_vm = js(rack, "vm", "show", long_name)
    assert [d["volume"] for d in long_vm["disks"]] == [f"{long_vm['uuid']}-vda.qcow2"]
    refusal = api_call(rack, "DELETE", f"/api/v1/templates/{tpl}", None)
    assert refusal["class"] == "Conflict" and ", ".join(sorted([vm, long_name])) in refusal["error"], refusal
    ok(rack, "vm", "delete", long_name, "--wait")
    assert not (where / f"{long_vm['uuid']}-vda.qcow2").exists()
    try:
        ok(rack, "vm", "start", vm, "--wait")
        log = wait_for_text(rack.serial_log(rack.vm(vm).host_id, vm), BOOT_MARKER, 180)
        assert "BOOT_IMAGE=/boot/vmlinuz" in log  # grub, from the overlay (reading the base), loaded the kernel
        refusal = api_call(rack, "DELETE", f"/api/v1/templates/{tpl}", None)
        assert refusal["class"] == "Conflict" and f"used by VM {vm}" in refusal["error"], refusal
        assert f"used by VM {vm}" in refused(rack, 5, "template", "delete", tpl)
        assert "in use by overlay" in refused(rack, 5, "storage", "volume", "delete", pool, f"{tpl}.img")
    finally:
        rack.drover("vm", "poweroff", vm, "--wait")
        out = rack.drover("vm", "delete", vm, "--wait")
    assert out.returncode == 0 and f"{vm}-vda.qcow2" in out.stdout, out.stdout + out.stderr
    assert not overlay.exists() and base.read_bytes() == base_bytes  # the overlay went, the base never changed
    assert set(v["name"] for v in js(rack, "storage", "volume", "list", pool)) == {f"{tpl}.img"}
    ok(rack, "template", "delete", tpl, "--wait")
    ok(rack, "storage", "pool", "delete", pool, "--wait")
