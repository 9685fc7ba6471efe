"""`drover image build|show|list`: build node images, describe one, list the build cache."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from image import cache, manifest
from image.build import BuildRequest, build, check_out
from image.profile import Compression, Flavor, Profile, parse_enum


def register(sub: Any) -> None:
    p = sub.add_parser("image", help="build and inspect node images")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    b = verbs.add_parser("build", help="build a node image (kernel, initrd, squashfs, boot files, node.iso), "
                         "or with --profile guest a VM disk (guest.qcow2) for `drover template import`")  # fmt: skip
    b.add_argument("--flavor", default=str(Flavor.DEBIAN), help="debian (builds here) or fedora (needs lorax)")
    b.add_argument("--profile", default=str(Profile.HYPERVISOR),
                   help="minimal or hypervisor (nodes), or guest (a Debian VM disk with cloud-init)")  # fmt: skip
    b.add_argument("--out", required=True, metavar="DIR", help="output directory (complete once manifest.json exists)")
    b.add_argument(
        "--mirror",
        action="append",
        default=[],
        metavar="SOURCE",
        help="apt sources file or archive URL (repeatable; default: this host's enabled apt sources)",
    )
    b.add_argument("--compression", default=str(Compression.XZ), help="squashfs compression: xz or zstd")
    b.add_argument("--base-url", metavar="URL", help="where nodes fetch the artifacts (default: iPXE next-server)")
    b.add_argument("--cache-dir", metavar="DIR", type=Path, help=f"build cache (default: {cache.default_dir()})")
    b.add_argument("--dry-run", action="store_true", help="print every external command instead of running it")
    b.add_argument("--force", "--no-cache", dest="force", action="store_true", help="rebuild even when cached")
    b.set_defaults(func=build_cmd)

    s = verbs.add_parser("show", help="summarise the manifest of a built image directory")
    s.add_argument("dir", type=Path, metavar="DIR")
    s.add_argument("--verify", action="store_true", help="also check every artifact's size and sha256")
    s.set_defaults(func=show_cmd)

    ls = verbs.add_parser("list", help="list cached builds")
    ls.add_argument("--cache-dir", metavar="DIR", type=Path)
    ls.set_defaults(func=list_cmd)


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the same path as Ctrl-C: every `finally` runs, children are stopped, staging removed.
    raise KeyboardInterrupt


def build_cmd(args: argparse.Namespace) -> int:
    req = BuildRequest(
        flavor=parse_enum(Flavor, args.flavor, "flavor"),
        profile=parse_enum(Profile, args.profile, "profile"),
        out=Path(args.out).resolve(),
        cache_dir=(args.cache_dir or cache.default_dir()).resolve(),
        compression=parse_enum(Compression, args.compression, "compression"),
        mirrors=tuple(args.mirror),
        base_url=args.base_url,
        force=args.force,
        dry_run=args.dry_run,
    )
    check_out(req.out)
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and a build must still stop on it.
    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        outcome = build(req)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if outcome.manifest is None:
        print("\n".join(outcome.commands))
        return 0
    print(manifest.summary(outcome.manifest), end="")
    return 0


def show_cmd(args: argparse.Namespace) -> int:
    found = manifest.load(args.dir)
    print(manifest.summary(found), end="")
    if args.verify:
        bad = found.verify(args.dir)
        if bad:
            print(f"drover: error: artifacts differ from the manifest: {', '.join(bad)}", file=sys.stderr)
            return 1
        print("verified: every artifact matches its size and sha256")
    return 0


def list_cmd(args: argparse.Namespace) -> int:
    store = cache.Cache((args.cache_dir or cache.default_dir()).resolve())
    entries = store.entries()
    if not entries:
        print(f"no cached images in {store.images}")
        return 0
    for entry in entries:
        m = entry.manifest
        size = m.payload_bytes if m.profile.is_node() else m.artifacts[manifest.GUEST_DISK].size
        print(f"{m.flavor:<7} {m.profile:<10} {size / 1e6:7.1f} MB  {m.built_at}  {entry.path}")
    return 0
