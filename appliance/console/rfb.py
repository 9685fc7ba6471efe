"""The two RFB (VNC) handshakes the proxy makes, so the VNC password never leaves the appliance.

Towards the VM's VNC server (qemu) the appliance is the client: RFB 3.8, VNC authentication with the one-time
password it has just set through libvirt (DES of the server's challenge, RFC 6143 7.2.2). Towards the
browser it is the server: RFB 3.8 offering security type None, because the browser already proved who it is
with its one-time ticket. After both, the bytes are relayed as they are (ClientInit, ServerInit, the rest).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

VERSION = b"RFB 003.008\n"
SECURITY_NONE = 1
SECURITY_VNC = 2
HANDSHAKE_SECONDS = 10.0


class RfbError(Exception):
    """The other side broke the RFB handshake (wrong version, refused password, no usable security type)."""


def _des_key(password: str) -> bytes:
    """VNC's DES key: the password's first 8 bytes, zero-padded, each byte's bits mirrored (a historic quirk)."""
    raw = password.encode("latin-1")[:8].ljust(8, b"\0")
    return bytes(int(f"{b:08b}"[::-1], 2) for b in raw)


def vnc_response(password: str, challenge: bytes) -> bytes:
    key = _des_key(password)
    # Three equal keys make TripleDES single DES, which is what VNC authentication uses.
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


async def _read(reader: asyncio.StreamReader, n: int) -> bytes:
    try:
        return await asyncio.wait_for(reader.readexactly(n), HANDSHAKE_SECONDS)
    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError) as exc:
        raise RfbError(f"VNC handshake cut short ({type(exc).__name__})") from None


async def _reason(reader: asyncio.StreamReader) -> str:
    (length,) = struct.unpack(">I", await _read(reader, 4))
    return (await _read(reader, min(length, 4096))).decode("utf-8", "replace")


async def authenticate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, password: str) -> None:
    """Log in to a VNC server as its client, up to (not including) ClientInit."""
    version = await _read(reader, 12)
    if not version.startswith(b"RFB 003."):
        raise RfbError(f"not a VNC server (it said {version!r})")
    writer.write(VERSION)
    (count,) = await _read(reader, 1)
    if count == 0:
        raise RfbError(f"the VNC server refused the connection: {await _reason(reader)}")
    types = await _read(reader, count)
    if SECURITY_VNC not in types:
        raise RfbError(f"the VNC server offers no password authentication (types {list(types)})")
    writer.write(bytes([SECURITY_VNC]))
    challenge = await _read(reader, 16)
    writer.write(vnc_response(password, challenge))
    await writer.drain()
    (result,) = struct.unpack(">I", await _read(reader, 4))
    if result != 0:
        raise RfbError(f"the VNC server refused the one-time password: {await _reason(reader)}")


async def offer_none(read: Callable[[int], Awaitable[bytes]], send: Callable[[bytes], Awaitable[None]]) -> None:
    """Be the browser's VNC server up to ClientInit: RFB 3.8, security type None, result OK."""
    await send(VERSION)
    version = await read(12)
    if version != VERSION:
        # noVNC answers 3.8 to a 3.8 server; anything else is not a client this proxy speaks to.
        raise RfbError(f"the browser asked for {version!r}, not RFB 3.8")
    await send(bytes([1, SECURITY_NONE]))
    (choice,) = await read(1)
    if choice != SECURITY_NONE:
        raise RfbError(f"the browser chose security type {choice}, not None")
    await send(struct.pack(">I", 0))
