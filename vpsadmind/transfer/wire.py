"""The transfer protocol between two vpsadmind nodes (``transfer.protocol: vpsadmind``), over TCP or TLS.

::

    receiver -> sender   {"proto": "vpsadmind-transfer/1", "nonce": <64 hex>}\\n
    sender   -> receiver {"chain": <id>, "mac": HMAC-SHA256(secret, nonce), "guid": <guid of the last snapshot>,
                          "estimate": <bytes or null>, "resume": <bool>}\\n
    receiver -> sender   {"ok": true, "token": <receive_resume_token or null>}\\n    (or the connection closes)
    sender   -> receiver frames: u32 big-endian length + payload, ..., u32 0 (the end of the stream)
    receiver -> sender   {"ok": true, "bytes": n} | {"ok": false, "error": "<zfs recv's message>"}\\n

The secret is made by Recv on the receiving node and reaches the sending node only through the database (the
node table ``vpsadmind_transfers``); it never crosses the wire, and a fresh nonce per connection makes a
recorded handshake worthless. A connection that does not present a valid MAC is closed before ``zfs recv``
even starts. The explicit end frame lets the receiver tell a complete stream from a connection that broke
(a sender killed mid-stream): only a complete one is reported as received.

``transfer.protocol: nc`` is v2.0's wire format instead: the raw ``zfs send`` stream on a plain connection,
nothing else, so that a Ruby vpsAdmind node can be the other end.

Everything here is blocking socket code: it runs in worker threads (see :mod:`vpsadmind.transfer.pump`),
so that the daemon's event loop never copies stream bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import socket
import ssl
import struct
from typing import Any, Final

from vpsadmind.config import TlsConfig
from vpsadmind.transfer.errors import AuthRejected, ProtocolError, StreamBroken

__all__ = [
    "PROTO",
    "END",
    "HEADER",
    "new_secret",
    "mac",
    "verify",
    "send_line",
    "recv_line",
    "client_context",
    "server_context",
]

PROTO: Final = "vpsadmind-transfer/1"
HEADER: Final = struct.Struct(">I")
END: Final = HEADER.pack(0)
MAX_FRAME: Final = 16 * 1024 * 1024
_MAX_LINE: Final = 8192


def new_secret() -> str:
    """A per-transfer secret: 32 random bytes as hex (what ``vpsadmind_transfers.secret`` holds)."""
    return secrets.token_hex(32)


def mac(secret: str, nonce: str) -> str:
    return hmac.new(secret.encode(), nonce.encode(), hashlib.sha256).hexdigest()


def verify(secret: str, nonce: str, presented: object) -> bool:
    return isinstance(presented, str) and hmac.compare_digest(mac(secret, nonce), presented)


def send_line(sock: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
    try:
        sock.sendall(data)
    except OSError as exc:
        raise StreamBroken(f"cannot send to the peer: {exc}") from exc


def recv_line(sock: socket.socket, *, what: str) -> dict[str, Any]:
    """One JSON object line; byte by byte up to the newline, so that no stream byte is read ahead."""
    buf = bytearray()
    while len(buf) < _MAX_LINE:
        try:
            ch = sock.recv(1)
        except (TimeoutError, OSError) as exc:
            raise StreamBroken(f"no {what} from the peer: {exc}") from exc
        if not ch:
            raise (AuthRejected if what == "answer to the handshake" else StreamBroken)(
                f"the peer closed the connection before its {what}")
        if ch == b"\n":
            break
        buf += ch
    else:
        raise ProtocolError(f"the {what} is longer than {_MAX_LINE} bytes")
    try:
        value = json.loads(buf)
    except ValueError as exc:
        raise ProtocolError(f"the {what} is not JSON: {bytes(buf[:80])!r}") from exc
    if not isinstance(value, dict):
        raise ProtocolError(f"the {what} is not an object: {bytes(buf[:80])!r}")
    return value


def client_context(tls: TlsConfig) -> ssl.SSLContext:
    """Mutual TLS, sender side: the node certificate, peers verified against the cluster CA. Nodes are
    addressed by IP (``server_ip4``), so the certificate chain is checked but not a host name."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """Mutual TLS, receiver side: a sender without a certificate of the cluster CA is refused."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tls.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(tls.cert, tls.key)
    return ctx
