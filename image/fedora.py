"""The fedora flavour: kickstart/node.ks.j2 rendered with Jinja2, checked by pykickstart, built by lorax.

livemedia-creator runs anaconda straight on the build host (`--no-virt`), so this flavour builds
only on Fedora with lorax installed; anywhere else the kickstart still renders and validates and
`--dry-run` shows the exact commands.
"""

from __future__ import annotations

import configparser
import shutil
from pathlib import Path

import jinja2
from pykickstart.errors import KickstartError
from pykickstart.parser import KickstartParser
from pykickstart.version import makeVersion

from appliance.errors import ToolMissing, UsageError
from appliance.runner import run
from image import bootfiles, payload
from image.profile import FEDORA_RELEASE, PRUNED_BELOW_KEPT, Recipe
from image.steps import Step

KICKSTART_DIR = Path(__file__).resolve().parent.parent / "kickstart"
TEMPLATE = "node.ks.j2"
# Fedora 42's python3 is 3.13; the agent goes where the distro's own python3-* packages live.
PY_SITE = "usr/lib/python3.13/site-packages"
YUM_REPOS = Path("/etc/yum.repos.d")
PACKAGES_FILE = "usr/share/drover/packages.tsv"
# The boot arguments lorax's ISO menu gets on top of its own root=live:CDLABEL=<volid>.
ISO_EXTRA_ARGS = ("rd.live.image", *bootfiles.LIVE_ARGS, *bootfiles.CONSOLE_ARGS)
# dracut for the lorax-made initrd: our /etc/dracut.conf.d files (in the overlay) do the rest.
DRACUT_ARGS = ("--no-hostonly", "--no-early-microcode", "--zstd")


def template_text() -> str:
    return (KICKSTART_DIR / TEMPLATE).read_text()


def installation_source(user: tuple[str, ...], repos: Path = YUM_REPOS) -> tuple[str, str]:
    """(url, metalink) for the kickstart: --mirror, else the host's enabled [fedora] repo, else neither."""
    if user:
        return user[0], ""
    parser = configparser.ConfigParser(interpolation=None)
    for path in sorted(repos.glob("*.repo")) if repos.is_dir() else []:
        parser.read(path)
    if parser.has_section("fedora") and parser.get("fedora", "enabled", fallback="1") == "1":
        subst = {"$releasever": str(FEDORA_RELEASE), "$basearch": "x86_64"}
        url = parser.get("fedora", "baseurl", fallback="").split()
        metalink = parser.get("fedora", "metalink", fallback="")
        for k, v in subst.items():
            metalink = metalink.replace(k, v)
            url = [u.replace(k, v) for u in url]
        return (url[0] if url else ""), ("" if url else metalink)
    return "", ""


def render_kickstart(recipe: Recipe, source: tuple[str, str], overlay_dir: Path) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(KICKSTART_DIR),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    return env.get_template(TEMPLATE).render(
        release=FEDORA_RELEASE,
        profile=str(recipe.profile),
        packages=recipe.packages,
        kept_modules=recipe.kept_modules,
        pruned_below_kept=PRUNED_BELOW_KEPT,
        overlay_dir=str(overlay_dir),
        source_url=source[0],
        source_metalink=source[1],
    )


def validate(text: str) -> None:
    """pykickstart's parser for our Fedora release; a syntax or semantic error is a UsageError."""
    handler = makeVersion(f"F{FEDORA_RELEASE}")
    parser = KickstartParser(handler, errorsAreFatal=True, missingIncludeIsFatal=True)
    try:
        parser.readKickstartFromString(text)
    except KickstartError as exc:
        raise UsageError(f"kickstart {TEMPLATE} does not validate for Fedora {FEDORA_RELEASE}: {exc}") from None


def check_lorax() -> None:
    if shutil.which("livemedia-creator", path="/usr/bin:/usr/sbin:/bin:/sbin") is None and (
        shutil.which("livemedia-creator") is None
    ):
        raise ToolMissing(
            "lorax's livemedia-creator is not installed: the fedora flavour builds only on a Fedora host "
            "(dnf install lorax); --dry-run still renders and checks the kickstart"
        )


def prepare(recipe: Recipe, mirrors: tuple[str, ...], work: Path) -> None:
    """The kickstart and the overlay its %post copies into the installed root."""
    overlay = work / "overlay"
    dracut = payload.dracut_files(recipe.initrd_drivers)
    # Fedora has no dhclient any more: its initrd brings the network up with systemd-networkd.
    conf, mode = dracut["etc/dracut.conf.d/90-drover.conf"]
    dracut["etc/dracut.conf.d/90-drover.conf"] = (conf.replace(b"network-legacy", b"systemd-networkd"), mode)
    payload.write_tree(overlay, payload.overlay(PY_SITE) | dracut)
    text = render_kickstart(recipe, installation_source(mirrors), overlay)
    validate(text)
    (work / "node.ks").write_text(text)


def lorax_args(recipe: Recipe, work: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The two livemedia-creator command lines: PXE artifacts, then the ISO."""
    common = (
        "--no-virt",
        f"--ks={work / 'node.ks'}",
        "--project=drover-node",
        f"--releasever={FEDORA_RELEASE}",
        f"--tmp={work / 'tmp'}",
        f"--compression={recipe.compression}",
        *(f"--dracut-arg={arg}" for arg in DRACUT_ARGS),
    )
    pxe = (
        "livemedia-creator",
        "--make-pxe-live",
        "--squashfs-only",
        *common,
        f"--resultdir={work / 'pxe'}",
        f"--logfile={work / 'logs/pxe.log'}",
    )
    iso = (
        "livemedia-creator",
        "--make-iso",
        "--squashfs-only",
        "--iso-only",
        "--iso-name=node.iso",
        f"--volid={bootfiles.ISO_LABEL}",
        f"--extra-boot-args={' '.join(ISO_EXTRA_ARGS)}",
        *common,
        f"--resultdir={work / 'iso'}",
        f"--logfile={work / 'logs/iso.log'}",
    )
    return pxe, iso


def steps(recipe: Recipe, work: Path, artifacts: Path) -> list[Step]:
    pxe, iso = lorax_args(recipe, work)
    return [
        Step(name="PXE live image (livemedia-creator)", argv=pxe, watch=work / "pxe"),
        Step(name="ISO (livemedia-creator)", argv=iso, watch=work / "iso"),
        Step(
            name="package list (unsquashfs)",
            argv=("unsquashfs", "-cat", str(artifacts / "rootfs.squashfs"), PACKAGES_FILE),
            prepare=lambda: collect(work, artifacts),
        ),
    ]


def collect(work: Path, artifacts: Path) -> None:
    """Give lorax's outputs the layout every flavour shares."""
    artifacts.mkdir(parents=True, exist_ok=True)
    pxe = work / "pxe"
    shutil.move(next(pxe.glob("vmlinuz-*")), artifacts / "vmlinuz")
    shutil.move(next(pxe.glob("initramfs-*.img")), artifacts / "initrd.img")
    shutil.move(next(pxe.glob("*.squashfs.img")), artifacts / "rootfs.squashfs")
    shutil.move(work / "iso/node.iso", artifacts / "node.iso")


def results(work: Path, artifacts: Path) -> tuple[str, dict[str, str]]:
    kver = next((work / "pxe").glob("initramfs-*.img"), None)
    name = kver.name.removeprefix("initramfs-").removesuffix(".img") if kver else "unknown"
    listing = run(["unsquashfs", "-cat", str(artifacts / "rootfs.squashfs"), PACKAGES_FILE]).stdout
    pkgs = {}
    for line in listing.splitlines():
        pkg, _, version = line.partition("\t")
        if pkg:
            pkgs[pkg] = version
    return name, pkgs
