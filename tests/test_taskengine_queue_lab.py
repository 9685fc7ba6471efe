"""The queue behind a failed task: when a VM's task fails, its queued tasks that can no longer run from the
state the VM is really in are canceled with a reason naming the failed task; those that still fit run.
"""

from __future__ import annotations

import pytest

from appliance.db.models import TaskState
from tests.lab.taskrack import TaskRack

pytestmark = pytest.mark.lab


def _ok(rack: TaskRack, *argv: str, timeout: float = 240) -> str:
    proc = rack.drover(*argv, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _queued(out: str) -> int:
    return int(out.split()[1])  # "task N queued ..."


def test_tasks_stranded_by_a_failure_are_canceled_and_the_rest_run(task_rack: TaskRack) -> None:
    rack = task_rack
    name = rack.unique("strand")
    # Defined fine; its start fails (qemu cannot open the kernel), a real libvirt error.
    _ok(rack, "vm", "create", name, "--memory", "64", "--kernel", "/nonexistent/vmlinuz", "--host",
        rack.nodes[0].fqdn, "--wait")  # fmt: skip
    with rack.paused():  # all queued before the start runs (each fits the state its predecessors lead to)
        ids = {verb: _queued(_ok(rack, "vm", verb, name))
               for verb in ("start", "suspend", "resume", "poweroff", "update-state", "delete")}  # fmt: skip
    tasks = {verb: rack.wait_task(task_id) for verb, task_id in ids.items()}
    start = tasks["start"]
    assert start.state is TaskState.FAILED and "libvirt:" in (start.error or ""), start.error
    for verb, needs in (("suspend", "suspend"), ("resume", "resume"), ("poweroff", "poweroff")):
        task = tasks[verb]
        assert task.state is TaskState.CANCELED, (verb, task.state, task.error)
        assert task.error == (f"canceled: task {start.id} (vm_start) failed, so VM {name} is stopped and "
                              f"cannot {needs}"), task.error  # fmt: skip
        assert task.started_at is None  # never ran
    # Still valid from stopped: they ran.
    assert tasks["update-state"].state is TaskState.FINISHED, tasks["update-state"].error
    assert tasks["delete"].state is TaskState.FINISHED, tasks["delete"].error
    assert name not in _ok(rack, "vm", "list")
