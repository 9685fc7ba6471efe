"""The lab's node image: built once per machine (the build cache keeps it), served over loopback HTTP.

`node_image` builds (or takes from the cache) the debian hypervisor image into a session temp dir;
`debian_guest` the guest profile's VM disk (cloud-init + qemu guest agent) the same way;
`http_server()` serves a directory on 127.0.0.1, which qemu guests reach as 10.0.2.2; `pxe_tftp_dir()`
writes the boot.ipxe a guest chain-loads, pointing at that server, with extra kernel arguments.
"""

from __future__ import annotations

import functools
import http.server
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from image import bootfiles, cache
from image.build import BuildRequest, build
from image.manifest import GUEST_DISK, Manifest, load
from image.profile import Flavor, Profile
from tests.lab.qemu import HOST_FROM_GUEST


@dataclass(frozen=True)
class NodeImage:
    dir: Path
    manifest: Manifest

    def path(self, name: str) -> Path:
        return self.dir / name


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # a squashfs download is not worth a log line per request


@dataclass(frozen=True)
class HttpServer:
    port: int
    requests: list[str]

    def url_for_guest(self) -> str:
        return f"http://{HOST_FROM_GUEST}:{self.port}"


@contextmanager
def http_server(directory: Path) -> Iterator[HttpServer]:
    """Serve `directory` on a free loopback port for the duration of the block."""
    requests: list[str] = []

    class Handler(_QuietHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

    handler = functools.partial(Handler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="lab-http", daemon=True)
    thread.start()
    try:
        yield HttpServer(server.server_address[1], requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def pxe_tftp_dir(target: Path, base_url: str, extra_args: Sequence[str] = ()) -> Path:
    """A TFTP root holding only boot.ipxe: kernel, initrd and squashfs then come over HTTP."""
    target.mkdir(parents=True, exist_ok=True)
    (target / "boot.ipxe").write_text(bootfiles.ipxe_script(base_url, extra_args))
    return target


def build_node_image(out: Path, profile: Profile = Profile.HYPERVISOR) -> NodeImage:
    req = BuildRequest(flavor=Flavor.DEBIAN, profile=profile, out=out, cache_dir=cache.default_dir())
    build(req, stream=sys.stderr)
    return NodeImage(out, load(out))


@pytest.fixture(scope="session")
def node_image(tmp_path_factory: pytest.TempPathFactory) -> NodeImage:
    """The debian hypervisor image; minutes the first time on a machine, seconds from the cache."""
    return build_node_image(tmp_path_factory.mktemp("node-image"))


@pytest.fixture(scope="session")
def debian_guest(tmp_path_factory: pytest.TempPathFactory) -> NodeImage:
    """The guest profile's disk (NodeImage.path(GUEST_DISK)); a few minutes the first time, then cached."""
    out = tmp_path_factory.mktemp("guest-image")
    build(BuildRequest(flavor=Flavor.DEBIAN, profile=Profile.GUEST, out=out, cache_dir=cache.default_dir()),
          stream=sys.stderr)  # fmt: skip
    found = NodeImage(out, load(out))
    assert found.path(GUEST_DISK).is_file()
    return found
