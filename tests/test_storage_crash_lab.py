"""A worker SIGKILLed in the middle of a template upload: the next worker takes the task over when the lease
runs out, reconciles it (RERUN: the half-written volume is replaced) and finishes it exactly once; the volume
holds the whole file, once. Real worker processes, lab libvirtds, PostgreSQL.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from appliance import storage
from appliance.db.engine import session_scope
from appliance.db.models import Event, StorageVolume, Task, TaskState, Template, VolumeFormat
from tests.lab.kdc import LabKdc
from tests.lab.libvirtd import LabHosts
from tests.lab.taskworker import finished, start_worker

pytestmark = pytest.mark.lab

ME = "admin@LAB.EXAMPLE.TEST"
SIZE = 384 << 20  # big enough that the stream takes seconds over GSSAPI-wrapped TCP


def test_killed_mid_upload_is_taken_over_and_finished_once(
    task_db: Engine, task_hosts: list[int], kdc: LabKdc, lab_hosts: LabHosts, tmp_path: Path
) -> None:
    url = task_db.url.render_as_string(hide_password=False)
    first = start_worker(kdc, lab_hosts, url, tmp_path / "first.log", lease_seconds=3)
    second = None
    try:
        with session_scope(task_db) as s:
            spec = storage.PoolSpec.from_request({"name": "crash", "type": "dir", "path": str(tmp_path / "pool")})
            task_id = storage.create_pool(s, spec, ME)[1].id
        finished(task_db, task_id, first)

        src = tmp_path / "big.img"
        with src.open("wb") as f:
            for _ in range(SIZE >> 20):
                f.write(os.urandom(1 << 20))
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        with session_scope(task_db) as s:
            task_id = storage.import_template(s, storage.find_pool(s, "crash"), "big", src, VolumeFormat.RAW, ME)[2].id

        # Kill the worker while the stream is on its way (progress between 0 and 1).
        deadline = time.monotonic() + 120
        while True:
            with session_scope(task_db) as s:
                task = s.get_one(Task, task_id)
                progress, state = task.progress, task.state
            if state is TaskState.RUNNING and 0 < progress < 0.9:
                break
            assert state is not TaskState.FINISHED, "the upload ended before it could be interrupted: raise SIZE"
            assert time.monotonic() < deadline, f"no progress: {state} {progress}\n{first.log_text()[-3000:]}"
            time.sleep(0.02)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
        with session_scope(task_db) as s:
            assert s.get_one(Task, task_id).state is TaskState.RUNNING  # held by a dead worker's lease

        second = start_worker(kdc, lab_hosts, url, tmp_path / "second.log", lease_seconds=3)
        done = finished(task_db, task_id, second, timeout=180)
        assert done.attempts == 2
        written = tmp_path / "pool" / "big.img"
        assert hashlib.sha256(written.read_bytes()).hexdigest() == digest
        assert not src.exists()  # the appliance's copy is removed once, after success
        with session_scope(task_db) as s:
            kinds = s.scalars(select(Event.kind).where(Event.task_id == task_id).order_by(Event.id)).all()
            assert kinds.count("task.finished") == 1 and "task.reconciled" in kinds
            assert s.scalar(select(func.count()).select_from(Template).where(Template.name == "big")) == 1
            vols = s.scalars(select(StorageVolume).where(StorageVolume.name == "big.img")).all()
            assert len(vols) == 1 and vols[0].capacity_bytes == SIZE
    finally:
        first.stop()
        if second is not None:
            second.stop()
