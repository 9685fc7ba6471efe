"""`drover boot use|show`: which built image the boot service serves to PXE-booting nodes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from appliance import bootimage
from appliance.cli.context import load_config
from appliance.config import Config
from appliance.errors import DroverError


def register(sub: Any) -> None:
    p = sub.add_parser("boot", help="choose and inspect the image the boot service serves")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    u = verbs.add_parser("use", help="serve a built image directory (checks its manifest; takes effect at once)")
    u.add_argument("dir", type=Path, metavar="DIR", help="a `drover image build --out` directory")
    u.add_argument("--verify", action="store_true", help="also check every artifact's sha256 against the manifest")
    u.set_defaults(func=use_cmd)

    s = verbs.add_parser("show", help="the served image, the boot URLs and the token policy")
    s.set_defaults(func=show_cmd)


def _urls(cfg: Config) -> str:
    base = f"http://{cfg.hostname}:{cfg.nodes.boot_port}"
    policy = (
        "enrolled hosts rebooting and MACs inside an enrolment window (`drover host enrol`) get a one-time "
        "token; other machines wait as pending for `drover host approve`"
    )
    return (
        f"iPXE chain:   {base}/boot/boot.ipxe  (or {base}/boot/ipxe?mac=${{net0/mac}})\n"
        f"artifacts:    {base}/boot/images/<name>\n"
        f"tokens:       {policy}; valid {cfg.boot.token_ttl_seconds}s\n"
    )


def use_cmd(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    image = bootimage.publish(cfg, args.dir, verify=args.verify)
    m = image.manifest
    print(f"serving {image.directory} ({m.flavor} {m.profile}, kernel {m.kernel_version}, built {m.built_at})")
    if args.verify:
        print("verified: every artifact matches its size and sha256")
    print(f"image_dir:    {cfg.boot_image_dir}")
    print(_urls(cfg), end="")
    return 0


def show_cmd(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    print(f"image_dir:    {cfg.boot_image_dir}")
    try:
        image = bootimage.current(cfg)
    except DroverError as exc:
        print(f"image:        none ({exc.message})")
        print(_urls(cfg), end="")
        return 4
    m = image.manifest
    print(f"image:        {image.directory} ({m.flavor} {m.profile}, kernel {m.kernel_version}, built {m.built_at})")
    print(f"payload:      {m.payload_bytes / 1e6:.1f} MB; artifacts: {', '.join(image.names())}")
    print(_urls(cfg), end="")
    return 0
