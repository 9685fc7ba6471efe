"""One lab "rack": a real `drover serve` on the lab realm, its database, and lab libvirtd nodes that all
listen on one port, each on its own loopback address (as real nodes all listen on 16509).

The appliance is told that port (`[nodes] libvirt_port`); nothing is poked into its database. Node names
resolve through the lab hosts file, for the server as for client subprocesses.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from appliance.db.engine import make_engine
from tests.lab.appliance import LabAppliance, start_appliance
from tests.lab.kdc import LabKdc
from tests.lab.libvirtd import LabHosts, NodeFactory
from tests.lab.net import free_port


@dataclass(frozen=True)
class Lab:
    served: LabAppliance
    db: Engine
    kdc: LabKdc
    hosts: LabHosts
    nodes: NodeFactory
    libvirt_port: int


@contextmanager
def rack(
    kdc: LabKdc,
    hosts: LabHosts,
    nodes: NodeFactory,
    state_dir: Path,
    users: dict[str, str],
    extra_env: dict[str, str] | None = None,
    settings: dict[str, str] | None = None,
) -> Iterator[Lab]:
    """The appliance with `users` ({principal: role}) added, for the duration of the block.

    `settings`: DROVER_* for the server and the CLI (start_appliance), e.g. an external realm's.
    """
    port = free_port()
    served = start_appliance(
        kdc,
        state_dir,
        extra_env={**hosts.env, "DROVER_NODES_LIBVIRT_PORT": str(port), **(extra_env or {})},
        settings=settings,
    )
    engine = make_engine(served.database_url)
    try:
        for principal, role in users.items():
            added = served.drover("user", "add", principal, "--role", role)
            assert added.returncode == 0, added.stdout + added.stderr
        yield Lab(served, engine, kdc, hosts, nodes, port)
    finally:
        engine.dispose()
        served.stop()
