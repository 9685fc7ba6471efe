"""Lab helper: Debian's headless Chromium driven by Playwright, set up for Kerberos Negotiate as LAB.md says.

`browser(appliance, ticket_env)` opens a persistent context whose Chromium gets the lab krb5.conf and the
given ccache (a ticket, or none), the resolver rule that maps the appliance's name to loopback, and the
two Local State settings without which Chromium never tries Negotiate or asks for HTTP/127.0.0.1.
Playwright's own browser downloads are never used: executable_path is the Debian package's binary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import BrowserContext, sync_playwright

from tests.lab.kdc import APPLIANCE_HOST

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def _krb5_conf(base: Path, profile: Path) -> Path:
    """The lab krb5.conf plus dns_canonicalize_hostname = false, which the browser's GSS library needs."""
    text = base.read_text()
    text = text.replace("[libdefaults]", "[libdefaults]\n dns_canonicalize_hostname = false", 1)
    out = profile / "krb5.conf"
    out.write_text(text)
    return out


@contextmanager
def browser(
    profile: Path,
    krb5_conf: Path,
    ccache_env: dict[str, str],
    extra_args: Sequence[str] = (),
    appliance_host: str = APPLIANCE_HOST,
) -> Iterator[BrowserContext]:
    """A Chromium context; `ccache_env` holds KRB5CCNAME (a ticket, or a missing file for no ticket);
    `extra_args` go on Chromium's command line (e.g. the key of a certificate it is to trust).

    `appliance_host` is the name the appliance's HTTP/ principal carries: Negotiate is allowed for it only,
    and a lab name is mapped to loopback (`localhost`, the demo's, needs no mapping)."""
    data = profile / "data"
    data.mkdir(parents=True, exist_ok=True)
    prefs = {"net": {"received_http_auth_negotiate_headers": True}, "auth": {"disable_negotiate_cname_lookup": True}}
    (data / "Local State").write_text(json.dumps(prefs))
    env: dict[str, str | float | bool] = {**os.environ, "KRB5CCNAME": ccache_env["KRB5CCNAME"]}
    env["KRB5_CONFIG"] = str(_krb5_conf(krb5_conf, profile))
    args = [
        "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--auth-server-allowlist={appliance_host}", *extra_args,
    ]  # fmt: skip
    if appliance_host != "localhost":
        args.append(f"--host-resolver-rules=MAP {appliance_host} 127.0.0.1")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(data), executable_path=CHROMIUM, headless=True, args=args, env=env,
            viewport={"width": 1360, "height": 860},
        )  # fmt: skip
        try:
            yield context
        finally:
            context.close()


def screenshot(context: BrowserContext, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    context.pages[-1].screenshot(path=str(path), full_page=True)
    return path
