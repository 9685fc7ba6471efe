"""A small real appliance peer for node agent tests: an openssl-made CA, a plain HTTP boot service
(`/boot/ca.pem`) and an HTTPS node API (`/node/v1/identify`, `/node/v1/heartbeat`) speaking nodeagent.wire.

Not the appliance: it stands in for the appliance engineer's endpoints until they exist in
`drover serve`, with scripted answers (pending, approval, failures) the agent must cope with.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nodeagent import wire

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"  # the node's interpreter: distro Python with distro packages only
KEYTAB = b"\x05\x02" + os.urandom(60)  # keytab-shaped bytes; the agent checks the 0x0502 header only
AGENT_TOKEN = "per-boot-secret"
KRB5_CONF = "[libdefaults]\n default_realm = EXAMPLE.TEST\n"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, stdin=subprocess.DEVNULL)


@dataclass(frozen=True)
class Pki:
    ca_pem: Path
    cert: Path
    key: Path

    @property
    def sha256(self) -> str:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(self.ca_pem.read_text())).hexdigest()


def make_pki(d: Path, cn: str = "drover test CA") -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl(
        "req",
        "-x509",
        *ec,
        "-subj",
        f"/CN={cn}",
        "-days",
        "2",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
        cwd=d,
    )
    _openssl("req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", "srv.key", "-out", "srv.csr", cwd=d)
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext",
        "-out",
        "srv.pem",
        cwd=d,
    )
    return Pki(d / "ca.pem", d / "srv.pem", d / "srv.key")


@dataclass
class Peer:
    pki: Pki
    boot_url: str = ""
    api_url: str = ""
    status: wire.IdentifyStatus = wire.IdentifyStatus.ACCEPTED
    approve_after: int = 0  # pending: credentials ride on this many-th heartbeat
    fail_heartbeats: set[int] = field(default_factory=set)  # 1-based heartbeat numbers answered 503
    restart_libvirtd_on: set[int] = field(default_factory=set)  # heartbeats whose answer asks for a libvirtd restart
    interval: int = 1
    requests: list[tuple[str, float, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def credentials(self) -> wire.Credentials:
        return wire.Credentials(
            "libvirt/node7.example.test@EXAMPLE.TEST",
            "EXAMPLE.TEST",
            KRB5_CONF,
            base64.b64encode(KEYTAB).decode(),
            ("drover-appliance",),
            wire.Collectd("127.0.0.1", 25826, "Sign", "drover-host-7", "collectd-secret"),
        )

    def paths(self, path: str) -> list[Any]:
        with self.lock:
            return [body for p, _, body in self.requests if p == path]

    def times(self, path: str) -> list[float]:
        with self.lock:
            return [t for p, t, _ in self.requests if p == path]

    def answer(self, path: str, body: bytes) -> tuple[int, bytes]:
        if path == "/node/v1/identify":
            req = wire.decode(wire.IdentifyRequest, body)
            with self.lock:
                self.requests.append((path, time.monotonic(), req))
            creds = self.credentials() if self.status is wire.IdentifyStatus.ACCEPTED else None
            answer = wire.IdentifyResponse(self.status, 7, self.interval, creds, agent_token=AGENT_TOKEN)
            return 200, wire.encode(answer)
        if path == "/node/v1/heartbeat":
            beat = wire.decode(wire.Heartbeat, body)
            with self.lock:
                self.requests.append((path, time.monotonic(), beat))
                n = len([p for p, _, _ in self.requests if p == path])
            if n in self.fail_heartbeats:
                return 503, b'{"error":"database unavailable"}'
            status, creds = self.status, None
            if status is wire.IdentifyStatus.PENDING and self.approve_after and n >= self.approve_after:
                status = wire.IdentifyStatus.ACCEPTED
                creds = None if beat.has_credentials else self.credentials()
            restart = n in self.restart_libvirtd_on
            return 200, wire.encode(wire.HeartbeatResponse(status, self.interval, creds, restart_libvirtd=restart))
        return 404, b'{"error":"not found"}'


def _serve(peer: Peer, tls: bool) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if tls or self.path != "/boot/ca.pem":
                self._send(404, b"not found")
                return
            self._send(200, peer.pki.ca_pem.read_bytes(), {"X-Drover-Node-Api": peer.api_url})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            code, data = peer.answer(self.path, body) if tls else (404, b"")
            self._send(code, data)

        def _send(self, code: int, data: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(peer.pki.cert, peer.pki.key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def peer(pki: Pki) -> Iterator[Peer]:
    p = Peer(pki)
    boot, api = _serve(p, tls=False), _serve(p, tls=True)
    p.boot_url = f"http://127.0.0.1:{boot.server_address[1]}"
    p.api_url = f"https://127.0.0.1:{api.server_address[1]}"
    yield p
    for s in (boot, api):
        s.shutdown()
        s.server_close()


def system_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run code with the node's interpreter, nodeagent importable, nothing from the venv."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [SYSTEM_PYTHON, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def start_agent(*args: str, log: Path, env_extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    env.update(env_extra or {})
    with open(log, "ab") as out:
        return subprocess.Popen(
            [SYSTEM_PYTHON, "-c", "import sys; from nodeagent.agent import main; sys.exit(main())", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def read_state(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data


def wait_for(cond: Any, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], timeout: float = 5) -> float:
    """SIGTERM; return how long the agent took to exit."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return time.monotonic() - t0
