"""The UI's write pages in process, on SQLite and PostgreSQL: pool-scoped grants and revokes, quotas, VM pools
(create, take, the refusals), templates, storage pools and volumes, events filtered and paged, and the graphs'
data with the TSDB down. Each action answers as the API's would (same domain function, same permission
check) and a refusal changes nothing. The browser flows with a real rack are in test_webui_pages_lab.py.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select

from appliance.api import create_app
from appliance.db import migrate
from appliance.db.base import utcnow
from appliance.db.engine import make_engine, session_scope
from appliance.db.models import (
    Event,
    HardwarePool,
    Host,
    Permission,
    Quota,
    Severity,
    StoragePool,
    StorageState,
    StorageType,
    StorageVolume,
    Task,
    TaskState,
    TaskType,
    Template,
    User,
    Vm,
    VmPool,
    VmState,
)
from appliance.db.models.users import Role
from appliance.hosts import default_pool
from appliance.serving import Group, bind, listener
from appliance.web import stream
from appliance.web.session import COOKIE, Sessions
from tests.lab.kdc import LabKdc
from tests.lab.net import free_port
from tests.test_enrolment import lab_config

REALM = "LAB.EXAMPLE.TEST"
BOSS, POOL_ADMIN, USER, OTHER = (f"{n}@{REALM}" for n in ("p-boss", "p-admin", "p-user", "p-other"))


@dataclass
class Rig:
    http: httpx.Client
    db: Engine
    signer: Sessions
    pools: dict[str, int]  # hardware pool name -> id
    template_id: int
    storage_pool_id: int

    def as_(self, principal: str) -> dict[str, str]:
        session, cookie = self.signer.issue(principal)
        return {"Cookie": f"{COOKIE}={cookie}", "X-CSRF-Token": session.csrf, "HX-Request": "true"}

    def get(self, who: str, path: str, /, **params: str) -> httpx.Response:
        return self.http.get(path, params=params, headers=self.as_(who))

    def post(self, who: str, path: str, /, **form: str) -> httpx.Response:
        return self.http.post(path, data=form, headers=self.as_(who))

    def count(self, model: type[object], *where: object) -> int:
        with session_scope(self.db) as s:
            return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)  # type: ignore[arg-type]


def _people_and_things(db: Engine) -> tuple[dict[str, int], int, int]:
    """Pools pa and pb; a super admin, an admin of pa, a user of pa, a user of pb; a template in pa's storage."""
    with session_scope(db) as s:
        root = default_pool(s)
        pa, pb = HardwarePool(name="pa", parent=root), HardwarePool(name="pb", parent=root)
        s.add_all([pa, pb])
        s.flush()
        for principal, role, pool in ((BOSS, Role.SUPER_ADMIN, None), (POOL_ADMIN, Role.ADMIN, pa.id),
                                      (USER, Role.USER, pa.id), (OTHER, Role.USER, pb.id)):  # fmt: skip
            user = User(principal=principal)
            s.add(user)
            s.flush()
            s.add(Permission(user=user, role=role, hardware_pool_id=pool))
        store = StoragePool(name="pa-images", type=StorageType.DIR, path="/srv/pa", hardware_pool_id=pa.id,
                            state=StorageState.AVAILABLE)  # fmt: skip
        s.add(store)
        s.flush()
        volume = StorageVolume(storage_pool_id=store.id, name="base.qcow2", capacity_bytes=1 << 20,
                               state=StorageState.AVAILABLE)  # fmt: skip
        s.add(volume)
        s.flush()
        template = Template(uuid=str(uuid.uuid4()), name="tiny", vcpus=1, memory_mib=64, storage_volume_id=volume.id)
        s.add(template)
        s.flush()
        return {"pa": pa.id, "pb": pb.id, "default": root.id}, template.id, store.id


@pytest.fixture(params=["sqlite", "postgresql"])
def rig(request: pytest.FixtureRequest, kdc: LabKdc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    """The API app (UI included) on a free loopback port in this process; its TSDB URL points at a port
    nothing listens on (the graphs' TSDB-down answer)."""
    path = tmp_path / "drover.db"
    if request.param == "sqlite":
        shutil.copyfile(request.getfixturevalue("sqlite_migrated_file"), path)
        url = f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_url")
        migrate.upgrade(url)
    engine = make_engine(url)
    cfg = lab_config(kdc, path, DROVER_DATABASE_URL=url, DROVER_MONITOR_TSDB_URL=f"http://127.0.0.1:{free_port()}")
    sock = bind("127.0.0.1", 0, "test")
    group = Group([listener("api", create_app(cfg, engine=engine), sock)])
    thread = threading.Thread(target=group.run)
    thread.start()
    deadline = time.monotonic() + 10
    while not group.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.01)
    pools, template_id, store_id = _people_and_things(engine)
    with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", trust_env=False, timeout=30) as http:
        yield Rig(http, engine, Sessions(engine), pools, template_id, store_id)
    stream.STOPPING.set()
    group.stop()
    thread.join(15)
    stream.STOPPING.clear()
    engine.dispose()


def _grants(rig: Rig, principal: str) -> list[tuple[str, int | None]]:
    with session_scope(rig.db) as s:
        rows = s.execute(select(Permission.role, Permission.hardware_pool_id).join(User)
                         .where(User.principal == principal)).all()  # fmt: skip
        return sorted((str(r), p) for r, p in rows)


def test_pool_grants_and_revokes_follow_the_apis_rules(rig: Rig) -> None:
    pa, pb = rig.pools["pa"], rig.pools["pb"]
    newbie = f"p-new@{REALM}"
    ok = rig.post(POOL_ADMIN, "/ui/users", principal=newbie, role="user", pool=str(pa))
    assert ok.status_code == 200 and "now holds user in hardware pool pa" in ok.text
    assert _grants(rig, newbie) == [("user", pa)]
    # An admin of pa is nobody in pb, cannot hand out super_admin, and holds nothing globally.
    for form, why in (({"pool": str(pb)}, "in hardware pool pb"), ({"pool": str(pa), "role": "super_admin"}, "super"),
                      ({"pool": ""}, "globally")):  # fmt: skip
        refused = rig.post(POOL_ADMIN, "/ui/users", **{"principal": newbie, "role": "admin", **form})
        assert refused.status_code == 403 and "may not grant or revoke" in refused.text and why in refused.text
    assert _grants(rig, newbie) == [("user", pa)]
    again = rig.post(POOL_ADMIN, "/ui/users", principal=newbie, role="user", pool=str(pa))
    assert again.status_code == 409 and "already has the role user in hardware pool pa" in again.text
    for form in ({"principal": "no-realm", "role": "user"}, {"principal": newbie, "role": "emperor"}):
        assert rig.post(BOSS, "/ui/users", **form).status_code == 400
    assert rig.post(BOSS, "/ui/users", principal=newbie, role="user", pool="nowhere").status_code == 404

    page = rig.get(BOSS, "/ui/users")
    assert page.status_code == 200 and 'data-grant="user@pa"' in page.text and "/revoke" in page.text
    with session_scope(rig.db) as s:
        grant_id = s.scalars(select(Permission.id).join(User).where(User.principal == newbie)).one()
        boss_grant = s.scalars(select(Permission.id).join(User).where(User.principal == BOSS)).one()
    assert rig.post(USER, f"/ui/users/grants/{grant_id}/revoke").status_code == 403
    assert rig.post(POOL_ADMIN, f"/ui/users/grants/{boss_grant}/revoke").status_code == 403
    assert rig.post(POOL_ADMIN, f"/ui/users/grants/{grant_id}/revoke").status_code == 200
    assert _grants(rig, newbie) == []
    assert rig.post(POOL_ADMIN, f"/ui/users/grants/{grant_id}/revoke").status_code == 404
    last = rig.post(BOSS, f"/ui/users/grants/{boss_grant}/revoke")
    assert last.status_code == 409 and "last super_admin" in last.text
    assert _grants(rig, BOSS) == [("super_admin", None)]
    # The page itself is for those who see everything: a pool admin is refused it by URL too.
    assert rig.get(POOL_ADMIN, "/ui/users").status_code == 403


def test_quotas_are_set_where_the_caller_may_modify(rig: Rig) -> None:
    pa, pb = str(rig.pools["pa"]), str(rig.pools["pb"])
    ok = rig.post(POOL_ADMIN, "/ui/users/quota", principal=USER, pool=pa, max_vms="2", max_vcpus="",
                  max_memory_mib="256")
    assert ok.status_code == 200 and "vms 2, vcpus unlimited, memory_mib 256" in ok.text
    for form, status in (({"pool": pb}, 403), ({"pool": pa, "max_vms": "two"}, 400), ({"pool": "nowhere"}, 404),
                         ({"pool": pa, "principal": f"ghost@{REALM}"}, 404)):  # fmt: skip
        answer = rig.post(POOL_ADMIN, "/ui/users/quota", **{"principal": USER, "max_vms": "9", **form})
        assert answer.status_code == status, (form, answer.text)
    with session_scope(rig.db) as s:
        quotas = s.execute(select(Quota.hardware_pool_id, Quota.max_vms, Quota.max_vcpus, Quota.max_memory_mib)).all()
    assert [tuple(q) for q in quotas] == [(rig.pools["pa"], 2, None, 256)]
    page = rig.get(BOSS, "/ui/users")
    assert 'data-quota="pa"' in page.text and "VMs 0/2" in page.text and "memory 0/256 MiB" in page.text


def _vm_rows(rig: Rig, pool_name: str) -> list[tuple[str, VmState, str | None]]:
    with session_scope(rig.db) as s:
        rows = s.execute(select(Vm.name, Vm.state, User.principal).outerjoin(User, Vm.owner_id == User.id)
                         .join(VmPool, Vm.vm_pool_id == VmPool.id).where(VmPool.name == pool_name)
                         .order_by(Vm.name)).all()  # fmt: skip
        return [(n, st, o) for n, st, o in rows]


def _set_states(rig: Rig, states: dict[str, VmState]) -> None:
    """What the task engine would have written after the create (and start) tasks ran."""
    with session_scope(rig.db) as s:
        for vm in s.scalars(select(Vm).where(Vm.name.in_(list(states)))):
            vm.state = states[vm.name]
        for task in s.scalars(select(Task).where(Task.state == TaskState.QUEUED)):
            task.state, task.finished_at = TaskState.FINISHED, utcnow()


def test_vm_pools_are_made_taken_and_refused_as_the_api_does(rig: Rig) -> None:
    form = {"name": "desk", "template": str(rig.template_id), "pool": str(rig.pools["pa"]), "size": "2",
            "prestarted": "1"}  # fmt: skip
    assert rig.post(USER, "/ui/pools", **form).status_code == 403  # a user takes, an admin makes
    for bad, field in (({"size": "0"}, "size"), ({"size": "lots"}, "size"), ({"prestarted": "3"}, "prestarted"),
                       ({"name": "-x"}, "name")):  # fmt: skip
        answer = rig.post(POOL_ADMIN, "/ui/pools", **{**form, **bad})
        assert answer.status_code == 400 and field in answer.text
    assert rig.count(VmPool) == 0 and rig.count(Vm) == 0
    made = rig.post(POOL_ADMIN, "/ui/pools", **form)
    assert made.status_code == 200 and "2 VMs defined, 3 tasks queued" in made.text, made.text
    assert _vm_rows(rig, "desk") == [("desk-1", VmState.PENDING, None), ("desk-2", VmState.PENDING, None)]
    with session_scope(rig.db) as s:
        queued = sorted(str(t) for t in s.scalars(select(Task.type)))
        pool_id = s.scalars(select(VmPool.id)).one()
    assert queued == sorted([TaskType.VM_CREATE, TaskType.VM_CREATE, TaskType.VM_START])
    assert rig.post(POOL_ADMIN, "/ui/pools", **form).status_code == 409  # the name is taken

    # The user of pa sees the pool with a take button; pb's user sees nothing and is refused by URL.
    assert 'data-vmpool="desk"' in rig.get(USER, "/ui/pools").text
    assert "Take a VM" in rig.get(USER, "/ui/pools").text
    assert 'id="take-from"' in rig.get(USER, "/ui/vms").text  # the portal's VM list offers it too
    assert 'id="take-from"' not in rig.get(OTHER, "/ui/vms").text
    assert 'data-vmpool="desk"' not in rig.get(OTHER, "/ui/pools").text
    refused = rig.post(OTHER, f"/ui/pools/{pool_id}/take")
    assert refused.status_code == 403 and "may not take a VM from pool desk" in refused.text
    assert 'td class="free">0<' in rig.get(USER, "/ui/pools").text  # none made yet: nothing to take
    early = rig.post(USER, f"/ui/pools/{pool_id}/take")
    assert early.status_code == 409 and "no free VM left" in early.text  # still being made

    _set_states(rig, {"desk-1": VmState.STOPPED, "desk-2": VmState.RUNNING})
    taken = rig.post(USER, f"/ui/pools/{pool_id}/take")
    assert taken.status_code == 200 and "desk-2 is yours" in taken.text  # the running one first
    assert _vm_rows(rig, "desk") == [("desk-1", VmState.STOPPED, None), ("desk-2", VmState.RUNNING, USER)]
    with session_scope(rig.db) as s:  # the pool keeps one free VM running: desk-1's start is queued
        starts = s.scalars(select(Task.target_id).where(Task.type == TaskType.VM_START,
                                                        Task.state == TaskState.QUEUED)).all()  # fmt: skip
        desk1 = s.scalars(select(Vm.id).where(Vm.name == "desk-1")).one()
    assert starts == [desk1]
    mine = rig.get(USER, "/ui/vms")
    assert 'data-vm="desk-2"' in mine.text and 'data-vm="desk-1"' in mine.text  # pa's VMs, desk-2 now owned

    # Within quota only: one VM allowed, one held.
    assert rig.post(POOL_ADMIN, "/ui/users/quota", principal=USER, pool=str(rig.pools["pa"]), max_vms="1").is_success
    over = rig.post(USER, f"/ui/pools/{pool_id}/take")
    assert over.status_code == 409 and "over quota" in over.text and "max_vms 1" in over.text
    assert _vm_rows(rig, "desk")[0][2] is None
    held = rig.post(POOL_ADMIN, f"/ui/pools/{pool_id}/delete")
    assert held.status_code == 409 and "has VMs in use: desk-2" in held.text and rig.count(VmPool) == 1
    # The API's list says the same as the page (one domain function).
    assert "free" in rig.get(USER, "/ui/pools").text


def test_templates_page_imports_lists_and_refuses_a_delete_in_use(rig: Rig) -> None:
    page = rig.get(POOL_ADMIN, "/ui/templates")
    assert page.status_code == 200 and 'data-template="tiny"' in page.text and 'id="template-import"' in page.text
    assert 'id="template-import"' not in rig.get(USER, "/ui/templates").text  # a user may not import
    assert 'data-template="tiny"' not in rig.get(OTHER, "/ui/templates").text  # pb's user does not see pa's
    with session_scope(rig.db) as s:
        s.add(Vm(uuid=str(uuid.uuid4()), name="from-tiny", vcpus=1, memory_mib=64, hardware_pool_id=rig.pools["pa"],
                 template_id=rig.template_id))  # fmt: skip
    assert "from-tiny" in rig.get(POOL_ADMIN, "/ui/templates").text
    assert rig.post(USER, f"/ui/templates/{rig.template_id}/delete").status_code == 403
    in_use = rig.post(POOL_ADMIN, f"/ui/templates/{rig.template_id}/delete")
    assert in_use.status_code == 409 and "used by VM from-tiny" in in_use.text and rig.count(Template) == 1
    # An upload the appliance refuses before reading it (no rights), and one that is not an image.
    headers = {**rig.as_(USER), "Content-Type": "application/octet-stream"}
    refused = rig.http.post("/ui/templates/import", params={"name": "x", "pool": "pa-images"}, content=b"\0" * 1024,
                            headers=headers)  # fmt: skip
    assert refused.status_code == 403 and "may not import templates" in refused.text
    headers = {**rig.as_(POOL_ADMIN), "Content-Type": "application/octet-stream"}
    junk = rig.http.post("/ui/templates/import", params={"name": "junk", "pool": "pa-images"}, content=b"hello",
                         headers=headers)  # fmt: skip
    assert junk.status_code == 400 and rig.count(Template) == 1
    # A real (raw) image larger than the API's 1 MiB body limit: streamed to disk like the API's upload.
    big = rig.http.post("/ui/templates/import", params={"name": "big", "pool": "pa-images", "memory_mib": "64"},
                        content=b"\0" * (2 << 20), headers=headers)  # fmt: skip
    assert big.status_code == 200 and "template big (raw) received" in big.text, big.text
    assert rig.count(Template) == 2 and rig.count(Task, Task.type == TaskType.VOLUME_CREATE) == 1
    no_csrf = {k: v for k, v in headers.items() if k != "X-CSRF-Token"}
    assert rig.http.post("/ui/templates/import", params={"name": "y", "pool": "pa-images"}, content=b"x",
                         headers=no_csrf).status_code == 403  # fmt: skip


def test_storage_pools_and_volumes_from_the_page(rig: Rig) -> None:
    pa = str(rig.pools["pa"])
    missing = rig.post(POOL_ADMIN, "/ui/storage/pools", name="s1", type="dir", hardware_pool=pa)
    assert missing.status_code == 400 and "path: a dir pool needs it" in missing.text
    by_user = rig.post(USER, "/ui/storage/pools", name="s1", type="dir", hardware_pool=pa, path="/srv/s1")
    assert by_user.status_code == 403
    assert rig.post(POOL_ADMIN, "/ui/storage/pools", name="s1", type="dir", hardware_pool=str(rig.pools["pb"]),
                    path="/srv/s1").status_code == 403  # fmt: skip
    assert rig.count(StoragePool) == 1
    made = rig.post(POOL_ADMIN, "/ui/storage/pools", name="s1", type="dir", hardware_pool=pa, path="/srv/s1")
    assert made.status_code == 200 and "defines it on the hosts" in made.text
    with session_scope(rig.db) as s:
        s1 = s.scalars(select(StoragePool).where(StoragePool.name == "s1")).one()
        s1_id, s1_state = s1.id, s1.state
    assert s1_state is StorageState.PENDING
    not_yet = rig.post(POOL_ADMIN, f"/ui/storage/pools/{s1_id}/volumes", name="v1", size="16M", format="qcow2")
    assert not_yet.status_code == 409 and "is pending" in not_yet.text
    store = rig.storage_pool_id
    assert rig.post(POOL_ADMIN, f"/ui/storage/pools/{store}/volumes", name="v1", size="lots").status_code == 400
    ok = rig.post(POOL_ADMIN, f"/ui/storage/pools/{store}/volumes", name="v1", size="16M", format="qcow2")
    assert ok.status_code == 200 and rig.count(StorageVolume, StorageVolume.name == "v1") == 1
    page = rig.get(POOL_ADMIN, "/ui/storage")
    assert 'data-storage-pool="pa-images"' in page.text and 'data-volume="v1"' in page.text
    assert 'data-storage-pool="pa-images"' not in rig.get(OTHER, "/ui/storage").text
    with session_scope(rig.db) as s:
        base = s.scalars(select(StorageVolume.id).where(StorageVolume.name == "base.qcow2")).one()
    used = rig.post(POOL_ADMIN, f"/ui/storage/pools/{store}/volumes/{base}/delete")
    assert used.status_code == 409 and "in use by template tiny" in used.text
    in_use = rig.post(POOL_ADMIN, f"/ui/storage/pools/{store}/delete")
    assert in_use.status_code == 409 and "in use by template tiny" in in_use.text
    assert rig.post(POOL_ADMIN, f"/ui/storage/pools/{store}/refresh").status_code == 200
    assert rig.post(USER, f"/ui/storage/pools/{store}/refresh").status_code == 403
    assert rig.post(POOL_ADMIN, "/ui/storage/pools/999999/refresh").status_code == 404


def test_events_filter_by_object_severity_and_time_and_page(rig: Rig) -> None:
    with session_scope(rig.db) as s:
        host = Host(uuid=str(uuid.uuid4()), hostname="ev-host.example.test", hardware_pool_id=rig.pools["pa"])
        vm = Vm(uuid=str(uuid.uuid4()), name="ev-vm", vcpus=1, memory_mib=64, hardware_pool_id=rig.pools["pa"])
        s.add_all([host, vm])
        s.flush()
        s.add_all([Event(kind="host.state", subject=host.hostname, host_id=host.id, message=f"m{n}")
                   for n in range(130)])
        s.add(Event(kind="vm.state", subject="ev-vm", vm_id=vm.id, severity=Severity.ERROR, message="boom"))
        s.add(Event(kind="vm.state", subject="ev-vm", vm_id=vm.id, message="old", at=utcnow() - timedelta(days=2)))
        host_id = host.id
    by_host = rig.get(BOSS, "/ui/events", host="ev-host.example.test")
    assert "130 events of host ev-host.example.test" in by_host.text and "page 1 of 2" in by_host.text
    assert by_host.text.count("<tr><td class=\"nowrap\">") == 100
    second = rig.get(BOSS, "/ui/events", host=str(host_id), page="2")
    assert second.text.count("<tr><td class=\"nowrap\">") == 30 and "page 2 of 2" in second.text
    assert "2 events of VM ev-vm" in rig.get(BOSS, "/ui/events", vm="ev-vm").text
    assert "1 event of VM ev-vm in the last 1d" in rig.get(BOSS, "/ui/events", vm="ev-vm", since="1d").text
    errors = rig.get(BOSS, "/ui/events", severity="error")
    assert "boom" in errors.text and "m0" not in errors.text
    assert rig.get(BOSS, "/ui/events", host="nowhere").status_code == 404
    assert rig.get(BOSS, "/ui/events", since="1y").status_code == 400
    assert rig.get(USER, "/ui/events").status_code == 403


def test_graph_data_says_the_tsdb_is_down_and_keeps_the_permission_check(rig: Rig) -> None:
    with session_scope(rig.db) as s:
        host = Host(uuid=str(uuid.uuid4()), hostname="g-host.example.test", hardware_pool_id=rig.pools["pa"])
        mine = Vm(uuid=str(uuid.uuid4()), name="g-mine", vcpus=1, memory_mib=64, hardware_pool_id=rig.pools["pa"])
        theirs = Vm(uuid=str(uuid.uuid4()), name="g-theirs", vcpus=1, memory_mib=64, hardware_pool_id=rig.pools["pb"])
        s.add_all([host, mine, theirs])
        s.flush()
        s.add(Task(type=TaskType.VM_START, target_kind=TaskType.VM_START.target_kind, target_id=mine.id,
                   state=TaskState.FINISHED, finished_at=utcnow() - timedelta(minutes=5), args={}))  # fmt: skip
        ids = {"host": host.id, "mine": mine.id, "theirs": theirs.id}
    fleet = rig.get(BOSS, "/ui/graphs/fleet", span="6h")
    assert fleet.status_code == 200, fleet.text
    body = fleet.json()
    assert body["span"] == "6h" and body["end"] - body["start"] == 6 * 3600 and len(body["x"]) == 241
    charts = {c["key"]: c for c in body["charts"]}
    assert set(charts) == {"cpu", "memory", "vms", "tasks"}
    for key in ("cpu", "memory", "vms"):
        assert "not reachable" in charts[key]["error"] and charts[key]["series"] == []
    finished = next(s for s in charts["tasks"]["series"] if s["label"] == "finished")
    assert sum(v or 0 for v in finished["values"]) == 1 and charts["tasks"]["error"] is None
    vm_answer = rig.get(USER, f"/ui/graphs/vms/{ids['mine']}")
    assert vm_answer.status_code == 200 and {c["key"] for c in vm_answer.json()["charts"]} == {"cpu", "memory",
                                                                                              "disk", "network"}
    for path in (f"/ui/graphs/vms/{ids['theirs']}", f"/ui/graphs/hosts/{ids['host']}", "/ui/graphs/fleet"):
        refused = rig.get(USER, path)
        assert refused.status_code == 403 and refused.json()["error"].startswith(USER), path
    assert rig.get(BOSS, "/ui/graphs/fleet", span="2h").status_code == 400
    assert rig.get(BOSS, "/ui/graphs/hosts/999999").status_code == 404
    page = rig.get(BOSS, f"/ui/hosts/{ids['host']}")
    assert f'data-src="/ui/graphs/hosts/{ids["host"]}"' in page.text and "uPlot.iife.min.js" in page.text
    # The VM page draws graphs for whoever may see the VM; a plain user's dashboard has no fleet graphs.
    assert f'data-src="/ui/graphs/vms/{ids["mine"]}"' in rig.get(USER, f"/ui/vms/{ids['mine']}").text
    assert 'id="graphs"' not in rig.get(USER, "/ui/").text and 'id="graphs"' in rig.get(BOSS, "/ui/").text


@pytest.mark.parametrize("bad", ["²", "٣", "9" * 30, "-1", "1e3"])
def test_ui_ids_and_numbers_that_are_not_plain_digits_are_refused_not_500(rig: Rig, bad: str) -> None:
    """Ids in UI paths and whole numbers in UI forms and queries: a 4xx naming nothing found, never a 500."""
    for path in ("/ui/hosts/{}", "/ui/vms/{}", "/ui/graphs/hosts/{}", "/ui/graphs/vms/{}", "/ui/vms/{}/console/vnc"):
        answer = rig.get(BOSS, path.format(bad))
        assert answer.status_code in (400, 404), (path, answer.status_code, answer.text[:200])
    for path in ("/ui/templates/{}/delete", "/ui/pools/{}/take", "/ui/storage/pools/{}/refresh",
                 "/ui/users/grants/{}/revoke", "/ui/tasks/{}/cancel"):  # fmt: skip
        answer = rig.post(BOSS, path.format(bad))
        assert answer.status_code in (400, 404), (path, answer.status_code, answer.text[:200])
    assert rig.get(BOSS, "/ui/vms", page=bad).status_code == 200  # a page out of reach is the first page
    assert rig.post(BOSS, "/ui/vms/bulk", verb="start", vm=bad).status_code == 400
    assert rig.post(BOSS, "/ui/vms", name="n-bad", vcpus=bad, memory_mib="64").status_code == 400
    assert rig.post(BOSS, "/ui/enrolment/windows", minutes=bad, count="1").status_code == 400
    assert rig.post(BOSS, "/ui/users/quota", principal=USER, pool="pa", max_vms=bad).status_code == 400
