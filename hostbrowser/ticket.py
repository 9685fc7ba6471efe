"""The appliance's own Kerberos ticket for libvirt: kinit from its keytab into a private ccache, renewed early."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from appliance.errors import DroverError
from appliance.kerberos.realm import Realm
from appliance.kerberos.ticket import kinit_keytab

log = logging.getLogger(__name__)

# Tickets live 10 h (profile.krb5_conf); a fresh one every hour leaves ample margin, and connections
# already open stay authenticated whatever happens to the ccache.
RENEW_SECONDS = 3600.0


class ApplianceTicket:
    def __init__(self, realm: Realm, ccache: Path) -> None:
        self.realm = realm
        self.ccache = ccache
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """kinit now; libvirt's SASL GSSAPI client reads KRB5CCNAME from this process's environment.

        Into a new file renamed over the old one: a connection being opened meanwhile reads either the
        whole old ccache or the whole new one (which holds a TGT and no stale service tickets).
        """
        self.ccache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = self.ccache.with_name(self.ccache.name + ".new")
        env = kinit_keytab(self.realm.appliance_principal, self.realm.files.appliance_keytab, fresh,
                           self.realm.env())  # fmt: skip
        os.replace(fresh, self.ccache)
        os.environ.update({**env, "KRB5CCNAME": f"FILE:{self.ccache}"})
        log.info("libvirt client ticket for %s in %s", self.realm.appliance_principal, self.ccache)

    def start(self) -> None:
        self.acquire()
        self._thread = threading.Thread(target=self._renew, name="hostbrowser-ticket", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            try:
                self.acquire()
            except DroverError as exc:
                log.error("renewing the libvirt client ticket failed (retrying in %ss): %s", RENEW_SECONDS, exc)

    def stop(self) -> None:
        self._stop.set()
