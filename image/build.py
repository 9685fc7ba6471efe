"""`drover image build`: pick the backend, use the cache, and publish a complete output directory.

An output directory is complete exactly when it has a manifest.json: the old manifest is removed
first, artifacts are written into a staging directory inside --out and renamed into place one by
one, and the new manifest is renamed in last. An interrupted or failed build leaves no manifest and
no staging directory behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from appliance.errors import DroverError, UsageError
from image import bootfiles, debian, fedora, guest, iso, mirror, steps
from image.cache import Cache, Entry, key
from image.manifest import BOOT_FILES, BUILT, GUEST_DISK, MANIFEST, Artifact, Manifest, boot_files, built
from image.profile import FEDORA_RELEASE, Compression, Flavor, Profile, Recipe
from image.progress import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildRequest:
    flavor: Flavor
    profile: Profile
    out: Path
    cache_dir: Path
    compression: Compression = Compression.XZ
    mirrors: tuple[str, ...] = ()
    # Where boot.ipxe and pxelinux.cfg point the node; None: boot.ipxe uses ${drover-base}.
    base_url: str | None = None
    force: bool = False
    dry_run: bool = False


@dataclass(frozen=True)
class Outcome:
    manifest: Manifest | None  # None for a dry run
    cached: bool
    commands: tuple[str, ...] = ()  # what a dry run would run


DEFAULT_PXELINUX_BASE = "http://drover/images/node"


def _plan(req: BuildRequest, recipe: Recipe, work: Path) -> tuple[list[steps.Step], str]:
    """The backend's steps for `work` and the cache key of this request."""
    artifacts = work / "artifacts"
    if req.profile is Profile.GUEST:
        mirrors = mirror.resolve(req.mirrors)
        return guest.steps(recipe, mirrors, work, artifacts), guest.key(recipe, mirrors)
    if req.flavor is Flavor.DEBIAN:
        mirrors = mirror.resolve(req.mirrors)
        return debian.steps(recipe, mirrors, work, artifacts), key(recipe, mirrors)
    ks = fedora.render_kickstart(recipe, fedora.installation_source(req.mirrors), work / "overlay")
    fedora.validate(ks)
    template = fedora.template_text()
    return fedora.steps(recipe, work, artifacts), key(recipe, tuple(mirror.Mirror(u) for u in req.mirrors), template)


def build(req: BuildRequest, stream: TextIO | None = None) -> Outcome:
    stream = stream if stream is not None else sys.stderr
    recipe = Recipe.of(req.flavor, req.profile, req.compression)
    cache = Cache(req.cache_dir)
    if req.dry_run:
        work = cache.root / "work" / "DRY-RUN"
        plan, cache_key = _plan(req, recipe, work)
        hit = cache.lookup(recipe, cache_key)
        lines = [f"# {req.flavor} {req.profile}, cache key {cache_key[:16]}"]
        if hit and not req.force:
            lines.append(f"# cached in {hit.path}: a build would copy it, the commands below would not run")
        if req.flavor is Flavor.FEDORA:
            lines.append(f"# kickstart rendered and valid for Fedora {FEDORA_RELEASE} (pykickstart)")
        lines += steps.describe(plan)
        then = "boot.ipxe, pxelinux.cfg/default" if req.profile.is_node() else GUEST_DISK
        lines.append(f"# then: {then}, manifest.json into {req.out}")
        return Outcome(None, bool(hit), tuple(lines))

    started = time.monotonic()
    if req.flavor is Flavor.FEDORA and req.profile.is_node():
        fedora.check_lorax()
    # One build at a time per cache (its work dir is shared): a second `drover image build` (or test
    # process) waits here, then finds the first one's result in the cache.
    with _cache_lock(cache.root, stream):
        work = cache.root / "work" / "pending"
        plan, cache_key = _plan(req, recipe, work)
        hit = None if req.force else cache.lookup(recipe, cache_key)
        from_cache = hit is not None
        # Stages: the backend's commands, checksums and publishing; a cache hit only publishes.
        progress = Progress(total=len(plan) + 2 if hit is None else 1, stream=stream)
        if hit is None:
            steps.check_tools(steps.tools(plan))
            hit = _build_into_cache(req, recipe, cache, cache_key, progress, started)
        else:
            progress.note(f"cache hit: {hit.path} (built {hit.manifest.built_at}); --force rebuilds")
    with progress.stage(f"publish into {req.out}", req.out):
        manifest = publish(hit, req.out, req.base_url)
    progress.finish(f"done: {req.out}")
    return Outcome(manifest, cached=from_cache)


@contextlib.contextmanager
def _cache_lock(root: Path, stream: TextIO) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "build.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            stream.write(f"waiting for another image build using {root}\n")
            stream.flush()
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_into_cache(
    req: BuildRequest, recipe: Recipe, cache: Cache, cache_key: str, progress: Progress, started: float
) -> Entry:
    work = cache.workdir(cache_key)
    try:
        plan, _ = _plan(req, recipe, work)
        if req.flavor is Flavor.FEDORA and req.profile.is_node():
            fedora.prepare(recipe, req.mirrors, work)
        steps.execute(plan, progress)
        artifacts = work / "artifacts"
        cmdline = " ".join(bootfiles.network_cmdline(bootfiles.IPXE_DEFAULT_BASE))
        if req.profile is Profile.GUEST:
            kver, packages, cmdline = guest.results(work)
        elif req.flavor is Flavor.DEBIAN:
            kver, packages = debian.results(work)
        else:
            kver, packages = fedora.results(work, artifacts)
        with progress.stage("checksums"):
            sums = {name: Artifact.of(artifacts / name) for name in built(recipe.profile)}
        manifest = Manifest(
            flavor=recipe.flavor,
            profile=recipe.profile,
            compression=recipe.compression,
            kernel_version=kver,
            kernel_cmdline=cmdline,
            iso_cmdline=_iso_cmdline(work) if req.profile.is_node() else "",
            packages=packages,
            artifacts=sums,
            cache_key=cache_key,
            built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            build_seconds=round(time.monotonic() - started, 1),
        )
        (artifacts / MANIFEST).write_text(manifest.to_json())
        path = cache.commit(recipe, cache_key, artifacts)
        return Entry(path, manifest)
    except OSError as exc:
        raise _disk_error(exc, cache.root) from exc
    finally:
        remove_tree(work)


def _iso_cmdline(work: Path) -> str:
    written = work / iso.CMDLINE_FILE
    return written.read_text() if written.is_file() else " ".join(bootfiles.media_cmdline())


def _disk_error(exc: OSError, where: Path) -> DroverError:
    if exc.errno == errno.ENOSPC:
        return DroverError(f"no space left on device writing {exc.filename or where}", "free space or use another dir")
    return DroverError(f"cannot write {exc.filename or where}: {exc.strerror}")


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(prefix)]


def remove_tree(path: Path) -> None:
    """rmtree that refuses to descend into anything still mounted below `path` (a chroot's /dev)."""
    if not path.exists():
        return
    mounted = _mounts_below(path)
    if mounted:
        log.error("not removing %s: still mounted below it: %s", path, ", ".join(mounted))
        return
    shutil.rmtree(path, ignore_errors=True)


def publish(entry: Entry, out: Path, base_url: str | None = None) -> Manifest:
    """Copy a cache entry into `out` with freshly rendered boot files; manifest.json goes in last."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).unlink(missing_ok=True)  # from here until the end `out` is incomplete
        stage = Path(tempfile.mkdtemp(prefix=".drover-staging-", dir=out))
    except OSError as exc:
        raise _disk_error(exc, out) from exc
    profile = entry.manifest.profile
    names, rendered = built(profile), boot_files(profile)
    try:
        for name in names:
            shutil.copyfile(entry.path / name, stage / name)
        boot = {
            "boot.ipxe": bootfiles.ipxe_script(base_url),
            "pxelinux.cfg/default": bootfiles.pxelinux_config(base_url or DEFAULT_PXELINUX_BASE),
        }
        for name in rendered:
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            (stage / name).write_text(boot[name])
        artifacts = dict(entry.manifest.artifacts)
        for name in names:
            if (stage / name).stat().st_size != artifacts[name].size:
                raise DroverError(f"copy of {name} from {entry.path} is incomplete")
        artifacts.update({name: Artifact.of(stage / name) for name in rendered})
        manifest = entry.manifest
        if profile.is_node():  # a guest's command line is its own, not the PXE one
            cmdline = " ".join(bootfiles.network_cmdline(base_url or "${drover-base}"))
            manifest = replace(manifest, artifacts=artifacts, kernel_cmdline=cmdline)
        (stage / MANIFEST).write_text(manifest.to_json())
        for name in (*names, *rendered):
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / name, out / name)
        os.replace(stage / MANIFEST, out / MANIFEST)
        return manifest
    except OSError as exc:
        raise _disk_error(exc, out) from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def check_out(out: Path) -> None:
    """--out must be a directory drover may fill: absent, empty, or a previous output."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        ours = {MANIFEST, *BUILT, GUEST_DISK, *(n.split("/")[0] for n in BOOT_FILES)}
        stray = [p.name for p in out.iterdir() if p.name not in ours and not p.name.startswith(".drover-staging-")]
        if stray and (out / MANIFEST).exists() is False and len(stray) == len(list(out.iterdir())):
            raise UsageError(f"--out {out} holds other files ({', '.join(sorted(stray)[:3])})", "use an empty dir")
