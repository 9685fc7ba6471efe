"""The appliance as a libvirt client: its Kerberos ticket (drover@REALM from its keytab, in a private
ccache renewed early) and the URI of a host's libvirtd. For the task engine and the host browser alike.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from appliance.errors import DroverError
from appliance.kerberos.realm import Realm
from appliance.kerberos.ticket import kinit_keytab

log = logging.getLogger(__name__)

# Tickets live 10 h (kerberos.profile); a fresh one every hour leaves ample margin, and connections
# already open stay authenticated whatever happens to the ccache.
RENEW_SECONDS = 3600.0


def host_uri(hostname: str, port: int) -> str:
    """Where the appliance reaches a host's libvirtd: by name, so the service principal is libvirt/<fqdn>."""
    return f"qemu+tcp://{hostname}:{port}/system"


class ClientTicket:
    """kinit as the appliance into `ccache`, point this process's KRB5CCNAME at it, and renew it hourly.

    libvirt's SASL GSSAPI client reads KRB5CCNAME from the process environment, so in `drover serve`
    the host browser's ticket and this one are the same principal's: whichever was written last serves
    both, and each is whole (written to a new file renamed over the old).
    """

    def __init__(self, realm: Realm, ccache: Path, name: str = "libvirt-ticket") -> None:
        self.realm = realm
        self.ccache = ccache
        self.name = name  # of the renewing thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        self.ccache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = self.ccache.with_name(self.ccache.name + ".new")
        env = kinit_keytab(self.realm.appliance_principal, self.realm.files.appliance_keytab, fresh,
                           self.realm.env())  # fmt: skip
        os.replace(fresh, self.ccache)
        os.environ.update({**env, "KRB5CCNAME": f"FILE:{self.ccache}"})
        log.info("libvirt client ticket for %s in %s", self.realm.appliance_principal, self.ccache)

    def start(self) -> None:
        self.acquire()
        self._thread = threading.Thread(target=self._renew, name=self.name, daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            try:
                self.acquire()
            except DroverError as exc:
                log.error("renewing the libvirt client ticket failed (retrying in %ss): %s", RENEW_SECONDS, exc)

    def stop(self) -> None:
        self._stop.set()
