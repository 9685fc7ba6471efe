"""PNG screenshots of the web UI from headless Chromium, signed in with a Kerberos ticket.

`make demo` writes them into .demo/screenshots/ once its fleet is up, so a user on a machine without a
desktop can still see what the UI shows. Each shot waits for something the page only has once its
data arrived (a table row, a drawn graph, a console's first output), and says so when it never came
instead of saving a blank page as if it were the real one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError

from tests.lab.browser import browser

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shot:
    name: str  # the PNG's file name, without .png
    path: str  # under the UI's base URL, e.g. "/hosts/1"
    ready: str  # a CSS selector present once the page shows its data
    what: str  # how the demo names it to the user


@dataclass(frozen=True)
class Taken:
    shot: Shot
    file: Path
    complete: bool  # False: saved after waiting in vain for `ready` (the file still shows what was there)
    note: str = ""


def take(
    base_url: str,
    shots: Sequence[Shot],
    out_dir: Path,
    krb5_conf: Path,
    ccache_env: dict[str, str],
    appliance_host: str,
    timeout_s: float = 30.0,
) -> list[Taken]:
    """Sign in once with the ticket in `ccache_env`, then open each page and save it full-length."""
    out_dir.mkdir(parents=True, exist_ok=True)
    taken: list[Taken] = []
    with browser(out_dir / ".chromium", krb5_conf, ccache_env, appliance_host=appliance_host) as context:
        page = context.pages[0] if context.pages else context.new_page()
        for shot in shots:
            file = out_dir / f"{shot.name}.png"
            complete, note = True, ""
            try:
                page.goto(f"{base_url}{shot.path}", wait_until="domcontentloaded")
                page.wait_for_selector(shot.ready, state="visible", timeout=timeout_s * 1000)
            except PlaywrightError as exc:
                complete, note = False, str(exc).splitlines()[0]
                log.warning("screenshot %s: %s", shot.name, note)
            page.screenshot(path=str(file), full_page=True)
            taken.append(Taken(shot, file, complete, note))
    return taken
