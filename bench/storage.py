"""Storage benchmark: a template upload through libvirt's volume stream against a plain file copy.

Measured: taskengine.storage.upload_volume of a 256 MiB file into a dir pool of a lab libvirtd, over qemu+tcp
with SASL GSSAPI (the path `drover template import` takes from the appliance to a node). Baseline: the same
file copied with shutil.copyfile onto the same filesystem, in the same run. Both written to disk and synced.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance.kerberos.realm import APPLIANCE_CLIENT
from tests.lab.kdc import start_kdc
from tests.lab.libvirtd import LabHosts, NodeFactory, client_env, client_python

SIZE_MIB = 256
ROUNDS = 3

UPLOAD = """
import json, os, sys, time
from pathlib import Path
import libvirt
from appliance.db.models import StoragePool, StorageType, StorageVolume
from taskengine import storage
conn = libvirt.open(sys.argv[1])
pool = StoragePool(name="bench", type=StorageType.DIR, path=sys.argv[2])
storage.ensure_pool(conn, pool)
times = []
for n in range(int(sys.argv[4])):
    vol = StorageVolume(name=f"up{n}.img", capacity_bytes=0)
    start = time.perf_counter()
    storage.upload_volume(conn, pool, vol, Path(sys.argv[3]), lambda f, m: None)
    fd = os.open(os.path.join(sys.argv[2], vol.name), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    times.append(time.perf_counter() - start)
    storage.delete_volume(conn, pool, vol.name)
storage.remove_pool(conn, "bench")
print(json.dumps(times))
"""


def _copy(src: Path, dest: Path) -> float:
    start = time.perf_counter()
    shutil.copyfile(src, dest)
    fd = os.open(dest, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    elapsed = time.perf_counter() - start
    dest.unlink()
    return elapsed


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="drover-bench-storage-") as tmp:
        root = Path(tmp)
        kdc = start_kdc(root / "kdc")
        hosts = LabHosts(root / "nss_hosts")
        nodes = NodeFactory(kdc, hosts, root / "nodes")
        try:
            node = nodes.start("bench1.example.test")
            src = root / "image.raw"
            with src.open("wb") as f:
                for _ in range(SIZE_MIB):
                    f.write(os.urandom(1 << 20))
            pool_dir = root / "pool"
            copies = [_copy(src, root / "copy.raw") for _ in range(ROUNDS)]
            env = client_env(kdc, hosts, APPLIANCE_CLIENT)
            out = client_python(env, UPLOAD, node.uri(), str(pool_dir), str(src), str(ROUNDS), timeout=600)
            if out.returncode != 0:
                raise RuntimeError(out.stdout[-2000:])
            uploads: list[float] = json.loads(out.stdout.strip().splitlines()[-1])
        finally:
            nodes.stop_all()
            kdc.process.terminate()
            kdc.process.wait(timeout=10)
    upload_rate = SIZE_MIB / min(uploads)
    copy_rate = SIZE_MIB / min(copies)
    return {
        "size_mib": SIZE_MIB,
        "rounds": ROUNDS,
        "upload_mib_per_s": round(upload_rate, 1),
        "copy_mib_per_s": round(copy_rate, 1),
        "upload_vs_copy_ratio": round(upload_rate / copy_rate, 3),
    }
