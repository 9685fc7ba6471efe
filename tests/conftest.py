"""Shared pytest set-up: the real-service lab fixtures live in tests/lab/ and are loaded as plugins."""

pytest_plugins: list[str] = [
    "tests.lab.kdc",
    "tests.lab.appliance",
    "tests.lab.libvirtd",
    "tests.lab.postgres",
    "tests.lab.qemu",
    "tests.lab.image",
    "tests.lab.nodeagent_peer",
    "tests.lab.agent_node",
    "tests.lab.taskrack",
    "tests.lab.fencerack",
    "tests.lab.nfs",
    "tests.lab.iscsi",
    "tests.lab.taskworker",
    "tests.lab.tsdb",
]
