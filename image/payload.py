"""What drover itself puts into a node image: files from image/data and the node agent's sources.

Each flavour lays them out with `overlay()`; the cache key hashes `inputs()`, so editing a unit,
the dracut config or the agent rebuilds the image.
"""

from __future__ import annotations

import hashlib
import stat
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import jinja2

import nodeagent

DATA = "image.data"
MARKER_PATH = "usr/lib/drover/boot-marker"
DRACUT_MODULE_DIR = "usr/lib/dracut/modules.d/90drover-live"


def data_dir() -> Traversable:
    return resources.files(DATA)


def data_text(name: str) -> str:
    node = data_dir()
    for part in name.split("/"):
        node = node / part
    return node.read_text()


def render(name: str, **values: str) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return env.from_string(data_text(name)).render(**values)


def agent_root() -> Path:
    """The repo's nodeagent package directory (the code the image runs, not a pip install)."""
    return Path(nodeagent.__file__).resolve().parent


def agent_files() -> list[Path]:
    root = agent_root()
    return sorted(
        p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )


def overlay(agent_dir: str) -> dict[str, tuple[bytes, int]]:
    """Image path -> (content, mode) for every file drover adds; agent_dir is the distro's dist-packages."""
    files: dict[str, tuple[bytes, int]] = {
        "etc/systemd/system/drover-agent.service": (
            render("drover-agent.service.j2", agent_dir="/" + agent_dir).encode(),
            0o644,
        ),
        "etc/systemd/system/drover-boot-marker.service": (render("drover-boot-marker.service.j2").encode(), 0o644),
        MARKER_PATH: (data_text("boot-marker.sh").encode(), 0o755),
        "etc/systemd/network/80-drover-dhcp.network": (render("80-drover-dhcp.network.j2").encode(), 0o644),
        "etc/systemd/journald.conf.d/drover.conf": (data_text("journald.conf").encode(), 0o644),
        "etc/systemd/system/systemd-networkd-wait-online.service.d/drover.conf": (
            data_text("wait-online.conf").encode(),
            0o644,
        ),
    }
    root = agent_root()
    for path in agent_files():
        files[f"{agent_dir}/nodeagent/{path.relative_to(root).as_posix()}"] = (path.read_bytes(), 0o644)
    return files


def dracut_files(drivers: tuple[str, ...]) -> dict[str, tuple[bytes, int]]:
    """The initrd's configuration, in place before the kernel package's postinst runs dracut."""
    drivers_conf = (
        "# Written by drover from image/profile.py INITRD_DRIVERS: the initrd's exclusive module list.\n"
        f'drivers+=" {" ".join(drivers)} "\n'
    )
    return {
        "etc/dracut.conf.d/90-drover.conf": (data_text("dracut.conf").encode(), 0o644),
        "etc/dracut.conf.d/91-drover-drivers.conf": (drivers_conf.encode(), 0o644),
        f"{DRACUT_MODULE_DIR}/module-setup.sh": (data_text("dracut_module/module-setup.sh").encode(), 0o755),
        f"{DRACUT_MODULE_DIR}/live-room.sh": (data_text("dracut_module/live-room.sh").encode(), 0o755),
        f"{DRACUT_MODULE_DIR}/release-media.sh": (data_text("dracut_module/release-media.sh").encode(), 0o755),
    }


def write_tree(base: Path, files: dict[str, tuple[bytes, int]]) -> None:
    for rel, (content, mode) in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(stat.S_IMODE(mode))


def digest_files(h: hashlib._Hash, files: dict[str, tuple[bytes, int]]) -> None:
    for rel in sorted(files):
        content, mode = files[rel]
        h.update(f"{rel}\0{mode:o}\0{len(content)}\0".encode())
        h.update(content)
