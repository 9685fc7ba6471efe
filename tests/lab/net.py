"""Loopback helpers for the lab: free ports, waiting for a listener, where lab names are written."""

from __future__ import annotations

import socket
import time
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def free_tcp_udp_port(host: str = "127.0.0.1", tries: int = 50) -> int:
    """A port free for both TCP and UDP, for servers that take both (a KDC): a port picked for TCP alone was
    once a parallel test's UDP port (a monitor receiver's), and krb5kdc refused to start."""
    for _ in range(tries):
        port = free_port(host)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no port free for both TCP and UDP on {host} after {tries} tries")


def wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


def etc_hosts_twin(nss_hosts: Path) -> Path:
    """The /etc/hosts-format twin tests.lab.libvirtd.LabHosts keeps beside its nss_wrapper hosts file."""
    return nss_hosts.with_name(nss_hosts.name + ".etc")
