"""The boot service of a real `drover serve`: per-MAC iPXE scripts, one-time tokens, artifacts, refusals.

The image is a tiny fake one (small real files and a manifest written here); `drover boot use` publishes
it through the real CLI. The token in a script is then presented to the real HTTPS identify endpoint,
pinned to the CA fetched from /boot/ca.pem and checked against drover.ca, as a node does.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select

from appliance.db.engine import make_engine, session_scope
from appliance.db.models import EnrolmentToken, Event, Host
from image.manifest import Artifact, Manifest
from image.profile import Compression, Flavor, Profile
from nodeagent import wire
from tests.lab.appliance import ADMIN, LabAppliance, admin_appliance
from tests.lab.kdc import LabKdc

pytestmark = pytest.mark.lab

MAC = "52:54:00:b0:07:01"
OTHER_MAC = "52:54:00:b0:07:02"
UNLISTED = "52:54:00:b0:07:03"
SCRIPTS_PER_MINUTE = 40


@dataclass
class Served:
    lab: LabAppliance
    link: Path  # [boot] image_dir: the symlink `drover boot use` manages
    image: Path
    boot: httpx.Client
    engine: Engine

    @property
    def env(self) -> dict[str, str]:
        return {"DROVER_BOOT_IMAGE_DIR": str(self.link)}

    def publish(self) -> None:
        done = self.lab.drover("boot", "use", str(self.image), "--verify", env=self.env)
        assert done.returncode == 0, done.stderr
        assert f"serving {self.image}" in done.stdout


def fake_image(directory: Path) -> Path:
    directory.mkdir(parents=True)
    files = {
        "vmlinuz": b"MZ fake kernel " + os.urandom(3000),
        "initrd.img": os.urandom(70_000),  # more than one read chunk of the server
        "rootfs.squashfs": b"hsqs" + os.urandom(5000),
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
    m = Manifest(
        flavor=Flavor.DEBIAN, profile=Profile.HYPERVISOR, compression=Compression.ZSTD,
        kernel_version="6.1.0-fake", kernel_cmdline="", iso_cmdline="", packages={"libvirt-daemon": "9.0"},
        artifacts={name: Artifact.of(directory / name) for name in files},
        cache_key="fake", built_at="2026-01-01T00:00:00Z", build_seconds=1.0,
    )  # fmt: skip
    (directory / "manifest.json").write_text(m.to_json())
    (directory.parent / "secret.txt").write_text("outside the image\n")
    return directory


@pytest.fixture(scope="module")
def served(kdc: LabKdc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("boot")
    link = root / "images" / "current"
    extra = {"DROVER_BOOT_IMAGE_DIR": str(link), "DROVER_BOOT_SCRIPTS_PER_MINUTE": str(SCRIPTS_PER_MINUTE)}
    with admin_appliance(kdc, root / "state", extra) as lab:
        engine = make_engine(lab.database_url)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{lab.boot_port}", trust_env=False, timeout=10) as boot:
                s = Served(lab, link, fake_image(root / "build" / "out"), boot, engine)
                s.publish()
                yield s
        finally:
            engine.dispose()


def enrol(served: Served, *args: str) -> str:
    done = served.lab.drover("host", "enrol", *args, principal=ADMIN)
    assert done.returncode == 0, done.stderr
    return done.stdout


def snapshot(engine: Engine) -> tuple[int, ...]:
    """Rows of tokens, events, hosts."""
    with session_scope(engine) as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) or 0 for m in (EnrolmentToken, Event, Host))


def kernel_args(script: str) -> dict[str, str]:
    line = next(x for x in script.splitlines() if x.startswith("kernel "))
    return dict(word.partition("=")[::2] for word in shlex.split(line)[2:])


def facts(uuid: str, mac: str) -> wire.Facts:
    return wire.Facts(
        uuid=uuid, hostname="boot1", fqdn=f"boot{uuid[:8]}.example.test", arch="x86_64", kernel="6.1.0",
        memory_bytes=1 << 30, cpu=wire.Cpu("QEMU", 2, 2, 1, ("vmx",)),
        nics=(wire.Nic("ens3", mac, 1000, ("10.0.2.15/24",), True),), disks=(), boot_mac=mac, agent_version="0.1.0",
    )  # fmt: skip


def test_script_carries_url_pin_and_a_token_good_once_for_that_mac(served: Served) -> None:
    opened = enrol(served, "--window", "10m", "--count", "2", "--mac", MAC, "--mac", OTHER_MAC)
    assert re.search(r"window \d+ open: 0/2 host\(s\), 52:54:00:b0:07:01, 52:54:00:b0:07:02", opened), opened
    before = snapshot(served.engine)
    r = served.boot.get("/boot/ipxe", params={"mac": MAC.replace(":", "-").upper()})  # iPXE's :hexhyp form
    assert r.status_code == 200, r.text
    origin = f"http://127.0.0.1:{served.lab.boot_port}"
    assert r.text.startswith("#!ipxe\n")
    assert f"kernel {origin}/boot/images/vmlinuz initrd=initrd.img" in r.text
    assert f"initrd {origin}/boot/images/initrd.img\nboot\n" in r.text
    args = kernel_args(r.text)
    assert args["root"] == f"live:{origin}/boot/images/rootfs.squashfs"
    assert args["drover.appliance"] == origin
    assert args["BOOTIF"] == "01-" + MAC.replace(":", "-")
    assert args["drover.libvirt_allow"] == "drover"  # libvirtd can start configured before enrolment
    assert re.fullmatch(r"drv1\.[0-9a-f]{16}\.[A-Za-z0-9_-]+", args["drover.token"])
    # The pin matches the CA the boot port hands out, which the HTTPS node API is signed by.
    ca = served.boot.get("/boot/ca.pem")
    assert args["drover.ca"] == "sha256:" + hashlib.sha256(ssl.PEM_cert_to_DER_cert(ca.text)).hexdigest()
    after = snapshot(served.engine)
    assert (after[0], after[1]) == (before[0] + 1, before[1] + 1)  # one token, one event
    with session_scope(served.engine) as s:
        ev = s.scalars(select(Event).order_by(Event.id.desc())).first()
        assert ev is not None and ev.kind == "boot.script" and ev.subject == MAC and "token" in ev.message

    pinned = ssl.create_default_context(cadata=ca.text)
    api = ca.headers["X-Drover-Node-Api"]
    with httpx.Client(base_url=api, verify=pinned, trust_env=False, timeout=30) as node:

        def identify(token: str, f: wire.Facts) -> httpx.Response:
            return node.post("/node/v1/identify", content=wire.encode(wire.IdentifyRequest(token, f)))

        # Bound to MAC: another machine presenting it is refused, and the token stays unused...
        other = served.boot.get("/boot/ipxe", params={"mac": OTHER_MAC})
        stolen = identify(args["drover.token"], facts("b0070002-0000-4000-8000-000000000002", OTHER_MAC))
        assert stolen.status_code == 401, stolen.text
        # ...for the machine it was made for, which enrols with it exactly once.
        mine = facts("b0070001-0000-4000-8000-000000000001", MAC)
        ok = identify(args["drover.token"], mine)
        assert ok.status_code == 200, ok.text
        assert wire.decode(wire.IdentifyResponse, ok.content).status is wire.IdentifyStatus.ACCEPTED
        again = identify(args["drover.token"], mine)
        assert again.status_code == 401, again.text
        # The other MAC's own script works for it.
        theirs = kernel_args(other.text)["drover.token"]
        assert identify(theirs, facts("b0070002-0000-4000-8000-000000000002", OTHER_MAC)).status_code == 200
    # An enrolled MAC's next boot (its reboot) gets a token bound to its host, window or not.
    enrol(served, "--close")
    served.boot.get("/boot/ipxe", params={"mac": MAC})
    with session_scope(served.engine) as s:
        ev = s.scalars(select(Event).order_by(Event.id.desc())).first()
        assert ev is not None and ev.kind == "boot.script" and ev.host_id is not None
        bound = s.scalars(select(EnrolmentToken).where(EnrolmentToken.used_at.is_(None), EnrolmentToken.mac == MAC))
        assert [t.host_uuid for t in bound] == ["b0070001-0000-4000-8000-000000000001"]


def test_a_mac_outside_every_window_gets_no_token_and_writes_nothing(served: Served) -> None:
    before = snapshot(served.engine)
    r = served.boot.get("/boot/ipxe", params={"mac": UNLISTED})
    assert r.status_code == 200, r.text
    args = kernel_args(r.text)
    assert "drover.token" not in args and args["drover.ca"].startswith("sha256:")
    assert snapshot(served.engine) == before  # no token, no event: a spray of MACs writes no rows


def test_a_window_serves_its_count_of_machines_until_closed(served: Served) -> None:
    enrol(served, "--window", "10m", "--count", "1", "--note", "rack 7")
    first = kernel_args(served.boot.get("/boot/ipxe", params={"mac": "52:54:00:b0:07:10"}).text)
    assert "drover.token" in first
    # The same machine asking again (iPXE retries) gets a new token that replaces its first; the count holds.
    again = kernel_args(served.boot.get("/boot/ipxe", params={"mac": "52:54:00:b0:07:10"}).text)
    assert "drover.token" in again and again["drover.token"] != first["drover.token"]
    # The window is full: the next machine gets nothing.
    assert "drover.token" not in kernel_args(served.boot.get("/boot/ipxe", params={"mac": "52:54:00:b0:07:11"}).text)
    listed = enrol(served, "--list")
    assert re.search(r"window \d+ open: 1/1 host\(s\), any MAC, until .* — rack 7", listed), listed
    with session_scope(served.engine) as s:
        live = s.scalars(select(EnrolmentToken).where(EnrolmentToken.mac == "52:54:00:b0:07:10")).all()
        assert len(live) == 1  # the replaced token was deleted, not left to expire
    closed = enrol(served, "--close")
    assert closed.startswith("closed 1 enrolment window(s)"), closed
    assert "no enrolment window is open" in enrol(served, "--list")
    # Its unused token died with it.
    with session_scope(served.engine) as s:
        assert not s.scalars(select(EnrolmentToken).where(EnrolmentToken.mac == "52:54:00:b0:07:10")).all()
    bad = served.lab.drover("host", "enrol", "--window", "2x", principal=ADMIN)
    assert bad.returncode == 2 and "not a duration" in bad.stderr
    too_long = served.lab.drover("host", "enrol", "--window", "2d", principal=ADMIN)
    assert too_long.returncode == 2 and "must last from 1 second to" in too_long.stderr
    not_admin = served.lab.drover("host", "enrol", "--window", "5m", principal="nobody")
    assert not_admin.returncode != 0
    assert "no enrolment window is open" in enrol(served, "--list")


def test_chain_script_asks_for_the_per_mac_script(served: Served) -> None:
    r = served.boot.get("/boot/boot.ipxe", headers={"Host": "10.0.2.2:8081"})
    assert r.status_code == 200
    assert r.text.startswith("#!ipxe\n")
    assert "chain --autofree http://10.0.2.2:8081/boot/ipxe?mac=${netX/mac:hexhyp}" in r.text
    # The per-MAC script names the appliance as the node reached it.
    s = served.boot.get("/boot/ipxe", params={"mac": UNLISTED}, headers={"Host": "boot.example.test:8081"})
    assert kernel_args(s.text)["drover.appliance"] == "http://boot.example.test:8081"


def test_artifacts_are_the_files_byte_for_byte(served: Served) -> None:
    for name in ("vmlinuz", "initrd.img", "rootfs.squashfs"):
        data = (served.image / name).read_bytes()
        r = served.boot.get(f"/boot/images/{name}")
        assert r.status_code == 200 and r.content == data
        assert r.headers["content-length"] == str(len(data))
        head = served.boot.head(f"/boot/images/{name}")
        assert head.status_code == 200 and head.headers["content-length"] == str(len(data)) and not head.content
    data = (served.image / "initrd.img").read_bytes()
    part = served.boot.get("/boot/images/initrd.img", headers={"Range": "bytes=100-65635"})
    assert part.status_code == 206 and part.content == data[100:65636]
    assert part.headers["content-range"] == f"bytes 100-65635/{len(data)}"
    tail = served.boot.get("/boot/images/initrd.img", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    beyond = served.boot.get("/boot/images/initrd.img", headers={"Range": f"bytes={len(data) + 5}-"})
    assert beyond.status_code == 416


def test_only_manifest_names_are_served(served: Served) -> None:
    before = snapshot(served.engine)
    for path in (
        "/boot/images/manifest.json",
        "/boot/images/secret.txt",
        "/boot/images/..%2fsecret.txt",
        "/boot/images/%2e%2e/secret.txt",
        "/boot/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/boot/images//etc/passwd",
    ):
        r = served.boot.get(path)
        assert r.status_code == 404, (path, r.status_code, r.text)
        assert "outside the image" not in r.text and "root:" not in r.text
    assert snapshot(served.engine) == before


def test_malformed_mac_and_host_are_400_and_write_nothing(served: Served) -> None:
    before = snapshot(served.engine)
    for params in ({"mac": "zz:zz"}, {"mac": ""}, {}, {"mac": "52:54:00:12:34:56:78"}):
        r = served.boot.get("/boot/ipxe", params=params)
        assert r.status_code == 400, r.text
        assert r.headers["content-type"].startswith("text/plain") and "not a MAC address" in r.text
    bad_host = served.boot.get("/boot/ipxe", params={"mac": MAC}, headers={"Host": "evil kernel=x"})
    assert bad_host.status_code == 400 and "Host header" in bad_host.text
    assert snapshot(served.engine) == before


def test_no_image_is_503_with_a_reason_and_writes_nothing(served: Served) -> None:
    before = snapshot(served.engine)
    served.link.unlink()
    try:
        for path in ("/boot/ipxe?mac=" + MAC, "/boot/images/vmlinuz"):
            r = served.boot.get(path)
            assert r.status_code == 503, r.text
            assert "does not exist" in r.text and "drover boot use" in r.text
        show = served.lab.drover("boot", "show", env=served.env)
        assert show.returncode == 4 and "none" in show.stdout
        assert snapshot(served.engine) == before
    finally:
        served.publish()
    show = served.lab.drover("boot", "show", env=served.env)
    assert show.returncode == 0 and str(served.image) in show.stdout, show.stdout + show.stderr


def test_boot_use_refuses_an_image_that_does_not_match_its_manifest(served: Served, tmp_path: Path) -> None:
    broken = fake_image(tmp_path / "broken" / "out")
    with (broken / "rootfs.squashfs").open("r+b") as f:  # same size, other bytes
        f.write(b"XXXX")
    done = served.lab.drover("boot", "use", str(broken), "--verify", env=served.env)
    assert done.returncode == 2 and "rootfs.squashfs" in done.stderr, done.stderr
    (broken / "vmlinuz").write_bytes(b"short")
    done = served.lab.drover("boot", "use", str(broken), env=served.env)
    assert done.returncode == 4 and "vmlinuz" in done.stderr, done.stderr
    assert served.link.resolve() == served.image  # still serving the good one


def test_a_huge_bad_mac_is_neither_echoed_nor_logged(served: Served) -> None:
    junk = "\x1b[2J" + "A" * 60_000
    r = served.boot.get("/boot/ipxe", params={"mac": junk})
    assert r.status_code == 400 and "not a MAC address (60004 characters)" in r.text, r.text[:200]
    assert "AAAAAAAAAA" not in r.text  # nothing of it comes back
    assert "A" * 300 not in served.lab.log_text()  # the access line carries at most 200 characters of it
    assert "\x1b[2J" not in served.lab.log_text()


def test_a_flood_of_script_requests_is_cut_off_per_source(served: Served) -> None:
    """Last in this module: it spends the source's budget. 120 requests for new MACs while a window for 5 is
    open: at most SCRIPTS_PER_MINUTE answered, the rest 429; 5 tokens and 5 events, nothing more."""
    enrol(served, "--window", "10m", "--count", "5")
    before = snapshot(served.engine)
    codes = [served.boot.get("/boot/ipxe", params={"mac": f"52:54:00:f1:00:{i:02x}"}).status_code for i in range(120)]
    assert set(codes) == {200, 429}
    assert codes.count(200) <= SCRIPTS_PER_MINUTE and codes[-1] == 429
    after = snapshot(served.engine)
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (5, 5, 0)
    r = served.boot.get("/boot/ipxe", params={"mac": "52:54:00:f1:00:ff"})
    assert r.status_code == 429 and "try again in" in r.text
    enrol(served, "--close")
