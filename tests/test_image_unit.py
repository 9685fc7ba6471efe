"""The image builder without building: CLI errors, dry runs, the kickstart, cache keys, boot files, publish."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.errors import DroverError, UsageError
from appliance.runner import run
from image import bootfiles, cache, fedora, guest, hook, mirror, payload, profile
from image.build import publish
from image.cache import Entry
from image.manifest import BOOT_FILES, BUILT, MANIFEST, Artifact, Manifest, load
from image.profile import FEDORA_RELEASE, Compression, Flavor, Profile, Recipe

DEBIAN_SOURCES = """\
Types: deb
URIs: http://archive.invalid/debian
Suites: bookworm
Components: main
"""


@pytest.fixture
def apt_dir(tmp_path: Path) -> Path:
    d = tmp_path / "apt"
    (d / "sources.list.d").mkdir(parents=True)
    (d / "sources.list.d/main.sources").write_text(DEBIAN_SOURCES)
    (d / "sources.list.d/third.sources.disabled-by-farm").write_text(DEBIAN_SOURCES)
    (d / "sources.list.d/off.sources").write_text(DEBIAN_SOURCES + "Enabled: no\n")
    (d / "sources.list.d/comments.list").write_text("# deb http://archive.invalid/x bookworm main\n")
    (d / "sources.list.d/extra.list").write_text("deb http://archive.invalid/extra bookworm main\n")
    return d


def test_host_sources_takes_only_enabled_files(apt_dir: Path) -> None:
    found = [Path(m.spec).name for m in mirror.host_sources(apt_dir)]
    assert found == ["extra.list", "main.sources"]


def test_mirror_option_accepts_files_and_urls(apt_dir: Path) -> None:
    src = apt_dir / "sources.list.d/main.sources"
    assert mirror.resolve((str(src), "http://mirror.invalid/debian")) == (
        mirror.Mirror(str(src)),
        mirror.Mirror("http://mirror.invalid/debian"),
    )
    with pytest.raises(UsageError, match="no such file"):
        mirror.resolve(("not-a-file-nor-url",))
    with pytest.raises(UsageError, match="no enabled apt sources"):
        mirror.resolve((), apt_dir / "nowhere")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--flavor", "arch"], "unknown flavor 'arch'"),
        (["--profile", "huge"], "unknown profile 'huge'"),
        (["--compression", "lz4"], "unknown compression 'lz4'"),
    ],
)
def test_bad_choices_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["image", "build", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert f"drover: error: {message}" in err
    assert "drover: hint: choose one of:" in err
    assert not (tmp_path / "out").exists()


def test_debian_dry_run_prints_every_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    sources = tmp_path / "my.sources"
    sources.write_text(DEBIAN_SOURCES)
    rc = main(
        ["image", "build", "--out", str(out), "--cache-dir", str(tmp_path / "c"), "--mirror", str(sources), "--dry-run"]
    )
    assert rc == 0
    text = capsys.readouterr().out
    commands = [shlex.split(line) for line in text.splitlines() if line and not line.startswith("#")]
    tools = [argv[0] for argv in commands]
    assert tools == ["unshare", "mksquashfs", "grub-mkrescue"]
    bootstrap = commands[0]
    assert bootstrap[bootstrap.index("--") + 1] == "mmdebstrap"
    assert bootstrap[-3:-1] == ["bookworm", str(tmp_path / "c/work/DRY-RUN/root")]
    assert bootstrap[-1] == str(sources)  # the sources file, never a host name
    assert any(a.startswith("--include=") and "libvirt-daemon-system" in a for a in bootstrap)
    assert "#   runs: chroot" in text and "dracut --force" in text
    assert not out.exists()  # a dry run writes nothing


def test_guest_dry_run_makes_one_disk_without_mounting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    sources = tmp_path / "my.sources"
    sources.write_text(DEBIAN_SOURCES)
    argv = ["image", "build", "--profile", "guest", "--out", str(out), "--cache-dir", str(tmp_path / "c"),
            "--mirror", str(sources), "--dry-run"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    commands = [shlex.split(line) for line in text.splitlines() if line and not line.startswith("#")]
    assert [argv[0] for argv in commands] == ["unshare", "qemu-img"]
    bootstrap = commands[0]
    include = next(a for a in bootstrap if a.startswith("--include="))
    assert {"cloud-init", "qemu-guest-agent", "linux-image-amd64"} <= set(include.split("=", 1)[1].split(","))
    assert not any("libvirt" in a or "dracut" in a for a in bootstrap)  # a guest, not a node
    assert commands[1][-1] == str(tmp_path / "c/work/DRY-RUN/artifacts/guest.qcow2")
    assert "#   runs: syslinux --install" in text and "mount" not in text.replace("unshare --mount", "")
    assert "guest.qcow2, manifest.json into" in text
    assert not out.exists()
    # Only the debian flavour builds it.
    assert main(["image", "build", "--flavor", "fedora", "--profile", "guest", "--out", str(out), "--dry-run"]) == 2
    assert "the guest profile is built by the debian flavour only" in capsys.readouterr().err


def test_guest_disk_layout_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = bytes(range(256)) + bytes(184)
    record = guest.mbr(code, [(2048, 131072, 0x0C, True), (133120, 1000, 0x83, False)])
    assert len(record) == 512 and record[:440] == code[:440] and record[510:] == b"\x55\xaa"
    boot = record[446:462]
    assert boot[0] == 0x80 and boot[4] == 0x0C and int.from_bytes(boot[8:12], "little") == 2048
    root = record[462:478]
    assert root[0] == 0 and root[4] == 0x83 and int.from_bytes(root[8:16], "little") == 133120 | (1000 << 32)
    assert record[478:510] == bytes(32)
    recipe = Recipe.of(Flavor.DEBIAN, Profile.GUEST)
    assert recipe.initrd_drivers == profile.GUEST_INITRD_MODULES and "fs/isofs" in recipe.kept_modules
    mirrors = (mirror.Mirror("http://mirror.invalid/debian"),)
    first = guest.key(recipe, mirrors)
    # The node agent is not in the guest: changing it must not rebuild the guest (it does the node).
    node_before = cache.key(Recipe.of(Flavor.DEBIAN, Profile.HYPERVISOR), mirrors)
    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / "x.py").write_text("changed = True\n")
    monkeypatch.setattr(payload, "agent_root", lambda: agent)
    monkeypatch.setattr(payload, "agent_files", lambda: [agent / "x.py"])
    assert guest.key(recipe, mirrors) == first
    assert cache.key(Recipe.of(Flavor.DEBIAN, Profile.HYPERVISOR), mirrors) != node_before
    assert guest.key(recipe, (mirror.Mirror("http://other.invalid/debian"),)) != first


def test_fedora_dry_run_validates_the_kickstart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["image", "build", "--flavor", "fedora", "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path)])
    assert rc == 3  # no lorax on this host: the real build refuses in one line
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "livemedia-creator is not installed" in err[0]
    rc = main(["image", "build", "--flavor", "fedora", "--out", str(tmp_path / "o"), "--dry-run"])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"kickstart rendered and valid for Fedora {FEDORA_RELEASE}" in out
    assert out.count("livemedia-creator --make-") == 2


@pytest.mark.parametrize("profile", [p for p in Profile if p.is_node()])
def test_kickstart_renders_and_validates(tmp_path: Path, profile: Profile) -> None:
    recipe = Recipe.of(Flavor.FEDORA, profile)
    text = fedora.render_kickstart(recipe, ("http://mirror.invalid/fedora/42/x86_64/os", ""), tmp_path / "ov")
    fedora.validate(text)
    assert "url --url=http://mirror.invalid/fedora/42/x86_64/os" in text
    assert f'cp -a {tmp_path / "ov"}/. "$ANA_INSTALL_PATH/"' in text
    assert ("qemu-kvm-core" in text.split()) == profile.runs_guests()
    for package in ("python3-libvirt", "python3-gssapi", "python3-dbus", "python3-inotify", "python3-zeroconf"):
        assert package in text.split()
    with pytest.raises(UsageError, match="does not validate"):
        fedora.validate(text + "\nnosuchcommand --really\n")


def test_livemedia_creator_argument_lists(tmp_path: Path) -> None:
    pxe, iso = fedora.lorax_args(Recipe.of(Flavor.FEDORA, Profile.HYPERVISOR, Compression.XZ), tmp_path)
    common = [
        "--no-virt",
        f"--ks={tmp_path}/node.ks",
        "--project=drover-node",
        f"--releasever={FEDORA_RELEASE}",
        f"--tmp={tmp_path}/tmp",
        "--compression=xz",
        "--dracut-arg=--no-hostonly",
        "--dracut-arg=--no-early-microcode",
        "--dracut-arg=--zstd",
    ]
    assert list(pxe) == [
        "livemedia-creator",
        "--make-pxe-live",
        "--squashfs-only",
        *common,
        f"--resultdir={tmp_path}/pxe",
        f"--logfile={tmp_path}/logs/pxe.log",
    ]
    assert list(iso) == [
        "livemedia-creator",
        "--make-iso",
        "--squashfs-only",
        "--iso-only",
        "--iso-name=node.iso",
        "--volid=DROVER-NODE",
        "--extra-boot-args=rd.live.image rd.live.ram=1 rd.live.overlay.overlayfs=1 console=tty0 console=ttyS0,115200",
        *common,
        f"--resultdir={tmp_path}/iso",
        f"--logfile={tmp_path}/logs/iso.log",
    ]


def test_missing_mmdebstrap_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = os.environ["PATH"]
    os.environ["PATH"] = str(tmp_path)  # nothing on PATH, not even mmdebstrap
    try:
        rc = main(["image", "build", "--force", "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")])
    finally:
        os.environ["PATH"] = saved
    assert rc == 3
    err = capsys.readouterr().err
    assert "required tool 'mmdebstrap' not found" in err
    assert "apt-get install mmdebstrap" in err
    assert not (tmp_path / "o/manifest.json").exists()


def test_cache_key_follows_every_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "a.sources"
    src.write_text(DEBIAN_SOURCES)
    mirrors = (mirror.Mirror(str(src)),)
    hyper = Recipe.of(Flavor.DEBIAN, Profile.HYPERVISOR)
    base = cache.key(hyper, mirrors)
    assert cache.key(hyper, mirrors) == base
    assert cache.key(Recipe.of(Flavor.DEBIAN, Profile.MINIMAL), mirrors) != base
    assert cache.key(Recipe.of(Flavor.DEBIAN, Profile.HYPERVISOR, Compression.ZSTD), mirrors) != base
    src.write_text(DEBIAN_SOURCES.replace("main", "main contrib"))
    assert cache.key(hyper, mirrors) != base
    src.write_text(DEBIAN_SOURCES)
    agent = tmp_path / "nodeagent"
    agent.mkdir()
    (agent / "__init__.py").write_text("")
    monkeypatch.setattr(payload, "agent_root", lambda: agent)
    with_empty_agent = cache.key(hyper, mirrors)
    (agent / "__main__.py").write_text("print('hello')\n")
    assert cache.key(hyper, mirrors) != with_empty_agent


def test_agent_unit_waits_for_the_agent() -> None:
    files = payload.overlay("usr/lib/python3/dist-packages")
    unit = files["etc/systemd/system/drover-agent.service"][0].decode()
    assert "ConditionPathExists=/usr/lib/python3/dist-packages/nodeagent/__main__.py" in unit
    assert "After=network-online.target" in unit and "ExecStart=/usr/bin/python3 -m nodeagent" in unit
    assert "usr/lib/python3/dist-packages/nodeagent/__init__.py" in files


def test_boot_files_carry_extra_arguments() -> None:
    extra = ["drover.appliance=https://appliance.example.test:8443", "drover.token=abc123", "drover.ca=sha256:00ff"]
    script = bootfiles.ipxe_script("http://10.0.2.2:8080/img", extra)
    kernel_line = next(line for line in script.splitlines() if line.startswith("kernel "))
    assert kernel_line.split()[1] == "http://10.0.2.2:8080/img/vmlinuz"
    assert "root=live:http://10.0.2.2:8080/img/rootfs.squashfs" in kernel_line
    assert kernel_line.endswith(" ".join(extra))
    assert "rd.live.ram=1" in kernel_line
    default = bootfiles.ipxe_script()
    assert "isset ${drover-base} || set drover-base http://${next-server}/drover" in default
    assert "kernel ${drover-base}/vmlinuz" in default
    pxelinux = bootfiles.pxelinux_config("http://appliance.example.test/img", extra)
    assert "APPEND root=live:http://appliance.example.test/img/rootfs.squashfs" in pxelinux
    assert "drover.token=abc123" in pxelinux
    for bad in ("two words", "x\nchain http://evil", "a;b", 'q"uote'):
        with pytest.raises(UsageError):
            bootfiles.ipxe_script("http://10.0.2.2/img", [bad])


def _fake_entry(tmp_path: Path, big: int = 1000) -> Entry:
    entry = tmp_path / "entry"
    entry.mkdir()
    sums = {}
    for name in BUILT:
        (entry / name).write_bytes(os.urandom(big if name == "rootfs.squashfs" else 100))
        sums[name] = Artifact.of(entry / name)
    m = Manifest(
        flavor=Flavor.DEBIAN,
        profile=Profile.MINIMAL,
        compression=Compression.ZSTD,
        kernel_version="6.1.0-test",
        kernel_cmdline="",
        iso_cmdline="",
        packages={"systemd": "252"},
        artifacts=sums,
        cache_key="0" * 64,
        built_at="2026-01-01T00:00:00Z",
        build_seconds=1.0,
    )
    (entry / MANIFEST).write_text(m.to_json())
    return Entry(entry, m)


def test_publish_writes_manifest_last_and_round_trips(tmp_path: Path) -> None:
    entry = _fake_entry(tmp_path)
    out = tmp_path / "out"
    m = publish(entry, out, "http://10.0.2.2:1234/x")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*BUILT, "boot.ipxe", "pxelinux.cfg", MANIFEST]
    )
    assert load(out) == m
    assert m.verify(out) == []
    assert set(m.artifacts) == {*BUILT, *BOOT_FILES}
    assert m.payload_bytes == sum(m.artifacts[n].size for n in ("vmlinuz", "initrd.img", "rootfs.squashfs"))
    (out / "initrd.img").write_bytes(b"tampered")
    assert m.verify(out) == ["initrd.img"]


def test_show_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entry = _fake_entry(tmp_path)
    publish(entry, tmp_path / "out")
    assert main(["image", "show", str(tmp_path / "out"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "kernel:       6.1.0-test" in out and "verified" in out
    assert main(["image", "show", str(tmp_path)]) == 4
    assert "no manifest.json" in capsys.readouterr().err
    assert main(["image", "list", "--cache-dir", str(tmp_path / "empty")]) == 0
    assert "no cached images" in capsys.readouterr().out


def test_publish_refuses_quietly_on_a_full_disk(tmp_path: Path) -> None:
    """A tmpfs too small for the squashfs: a clear error, no manifest, no staging directory."""
    entry = _fake_entry(tmp_path, big=3 * 1024 * 1024)
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=1m", "drover-test-tiny", str(tiny)])
    try:
        with pytest.raises(DroverError, match="no space left on device"):
            publish(entry, tiny)
        assert sorted(p.name for p in tiny.iterdir()) == []
    finally:
        run(["umount", str(tiny)])


def test_module_pruning_keeps_what_kept_modules_need(tmp_path: Path) -> None:
    kver = "6.1.0-test"
    moddir = tmp_path / "usr/lib/modules" / kver
    mods = {
        "kernel/arch/x86/kvm/kvm.ko": ["kernel/virt/lib/irqbypass.ko"],
        "kernel/virt/lib/irqbypass.ko": [],
        "kernel/drivers/ata/libata.ko": ["kernel/drivers/scsi/scsi_mod.ko"],
        "kernel/drivers/scsi/scsi_mod.ko": [],
        "kernel/drivers/gpu/drm/drm.ko": [],
        "kernel/net/wireless/cfg80211.ko": [],
        "kernel/drivers/net/virtio_net.ko": [],
        "kernel/drivers/net/ethernet/intel/ice/ice.ko": [],
    }
    for path in mods:
        (moddir / path).parent.mkdir(parents=True, exist_ok=True)
        (moddir / path).write_bytes(b"\0")
    (moddir / "modules.dep").write_text("".join(f"{m}: {' '.join(d)}\n" for m, d in mods.items()))
    kept, removed = hook.prune_modules(
        tmp_path, kver, ["arch/x86/kvm", "drivers/ata", "drivers/net", "net"], ["net/wireless"]
    )
    left = sorted(p.relative_to(moddir).as_posix() for p in moddir.rglob("*.ko"))
    assert left == sorted(
        [
            "kernel/arch/x86/kvm/kvm.ko",
            "kernel/virt/lib/irqbypass.ko",  # not on the list, but kvm links against it
            "kernel/drivers/ata/libata.ko",
            "kernel/drivers/scsi/scsi_mod.ko",
            "kernel/drivers/net/virtio_net.ko",
            "kernel/drivers/net/ethernet/intel/ice/ice.ko",
        ]
    )
    assert (kept, removed) == (6, 2)
    assert not (moddir / "kernel/drivers/gpu").exists()  # emptied directories go too
    # depmod after pruning; then the initrd gets virtio_net and what it needs, not every kept driver.
    (moddir / "modules.dep").write_text("".join(f"{m}: {' '.join(mods[m])}\n" for m in left))
    assert hook.initrd_omissions(tmp_path, kver, ["virtio_net", "libata"]) == ["ice"]
