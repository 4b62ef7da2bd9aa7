"""The client end of a connection to the broker, shared by agent and console.

Not server code: it imports the websockets *client* only. It knows how to
reach the broker safely (TLS verified against the pinned CA alone, never the
system store; compression off) and how to turn failures into sentences.
An SSH byte stream rides on a link through `broker.client.relay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from broker import eventloop
from broker.framepath import FramePath
from broker.wire import limits
from broker.wire.errors import ProtocolError
from broker.wire.messages import Message, decode, encode
from broker.wire.text import printable

__all__ = [
    "BrokerLink",
    "FastClientConnection",
    "LinkError",
    "broker_url",
    "client_tls",
    "open_link",
]


class FastClientConnection(FramePath, ClientConnection):
    """websockets' client connection with the binary fast path (`broker.framepath`)."""


class LinkError(Exception):
    """The broker could not be reached, could not be trusted, or refused us.

    `code` is the broker's machine-readable reason when it sent one.
    """

    def __init__(self, message: str, code: str = "link") -> None:
        super().__init__(message)
        self.code = code


def client_tls(ca_file: Path) -> ssl.SSLContext:
    """A TLS context that trusts exactly the CA in `ca_file`."""
    if not ca_file.is_file():
        raise LinkError(f"no CA certificate at {ca_file}; pass --ca with the broker's ca.crt")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies and checks hostnames
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(limits.TLS12_CIPHERS)
    # The broker's name must be in the certificate's subjectAltName; a bare
    # common name (deprecated since RFC 2818) is not accepted.
    ctx.hostname_checks_common_name = False
    try:
        ctx.load_verify_locations(cafile=str(ca_file))
    except (ssl.SSLError, OSError) as exc:
        raise LinkError(f"cannot read the CA certificate {ca_file}: {exc}") from exc
    return eventloop.bounded_tls_reads(ctx)


class BrokerLink:
    """One WebSocket to the broker, speaking validated control messages.

    `max_size` is the largest frame this link accepts (its WebSocket
    max_size); control frames are also held to their type's own limit.

    Binary (relay) frames never wait in websockets' message queue: from the
    moment the link opens they are held here, in order, until an `SSHRelay`
    takes them over. Holding is bounded; a peer that sends more before the
    relay exists is cut off.
    """

    def __init__(self, ws: ClientConnection, max_size: int = limits.MAX_FRAME) -> None:
        self.ws = ws
        self.max_size = max_size
        self._held: list[bytes] = []
        self._held_bytes = 0
        if isinstance(ws, FastClientConnection):
            ws.binary_sink = self._hold

    def _hold(self, data: bytes) -> None:
        self._held_bytes += len(data)
        if self._held_bytes > _MAX_HELD_BYTES:
            self._held.clear()
            asyncio.get_running_loop().create_task(self.ws.close(1008, "too much early data"))
            return
        self._held.append(data)

    def take_held(self) -> list[bytes]:
        held, self._held, self._held_bytes = self._held, [], 0
        return held

    def hold_binary(self) -> None:
        """Hold binary frames here again (the relay that took them is gone)."""
        if isinstance(self.ws, FastClientConnection):
            self.ws.binary_sink = self._hold

    async def send(self, msg_type: str, **fields: object) -> None:
        await self.ws.send(encode(msg_type, **fields))

    async def recv_frame(self, timeout: float | None = None) -> str | bytes:
        """The next frame as it came, undecoded (a handshake decodes its own).
        Raises `LinkError` "timeout" or "closed"."""
        try:
            return await asyncio.wait_for(self.ws.recv(), timeout)
        except TimeoutError as exc:
            raise LinkError("the broker did not answer in time", "timeout") from exc
        except ConnectionClosed as exc:
            raise LinkError(_closed_text(exc), "closed") from exc

    async def recv(self, timeout: float | None = None) -> Message:
        """The next control message. A broker `error` becomes a `LinkError`."""
        frame = await self.recv_frame(timeout)
        msg = decode(frame, limit=self.max_size)
        if msg.type == "error":
            raise LinkError(f"the broker refused: {msg['message']}", msg["code"])
        return msg

    async def expect(self, *types: str, timeout: float | None = None) -> Message:
        msg = await self.recv(timeout)
        if msg.type not in types:
            if msg.type == "ended":
                raise LinkError(msg["message"], msg["reason"])
            raise ProtocolError(f"expected {' or '.join(types)}, got {msg.type}")
        return msg

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()


# Relay bytes that may arrive before SSH is attached: the peer's banner and
# key exchange, a few KiB. Far more than that is not an SSH handshake.
_MAX_HELD_BYTES = 256 * 1024


# OpenSSL's verify codes (x509_vfy.h) that a person can act on differently.
_CERT_NOT_YET_VALID = 9
_CERT_EXPIRED = 10
_HOSTNAME_MISMATCH = 62
_IP_ADDRESS_MISMATCH = 64


def _certificate_problem(exc: ssl.SSLCertVerificationError, host: str, ca_file: Path) -> str:
    """What is wrong with the broker's certificate, as the end of a sentence."""
    code = exc.verify_code
    if code in (_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH):
        return (f"that does not name {host} in its subjectAltName (the name in --broker "
                "must be one the certificate was issued for)")
    if code == _CERT_EXPIRED:
        return "that has expired (the operator must renew it; check this computer's clock too)"
    if code == _CERT_NOT_YET_VALID:
        return "that is not valid yet (check this computer's clock)"
    return f"not signed by the CA in {ca_file} ({exc.verify_message})"


def _closed_text(exc: ConnectionClosed) -> str:
    reason = exc.rcvd.reason if exc.rcvd else ""
    return f"the broker closed the connection{': ' + reason if reason else ''}"


def broker_url(url: str) -> str:
    """The broker's URL as the WebSocket client takes it (wss://), or a
    LinkError that says what to type instead.

    https:// is accepted as wss:// (a URL copied from a browser or a ticket):
    it is the same TLS connection to the same host and port. Anything without
    TLS is refused: consentry never talks to a broker in clear.
    """
    text = url.strip()
    parts = urlsplit(text if "://" in text else f"//{text}")
    scheme = parts.scheme.lower()
    target = parts.netloc + parts.path if parts.netloc else text
    if scheme == "https":
        parts = parts._replace(scheme="wss")
    elif scheme in ("ws", "http"):
        raise LinkError(f"the broker URL {printable(url, 200)!r}: {scheme}:// is a connection "
                        f"without TLS: use wss://{printable(target, 200)} (consentry never "
                        "talks to a broker in clear)")
    elif scheme != "wss":
        raise LinkError(f"the broker URL must start with wss://, like "
                        f"wss://{printable(target or 'broker.example:8443', 200)} "
                        f"(got {printable(url, 200)!r})")
    if not parts.hostname:
        raise LinkError(f"the broker URL {printable(url, 200)} names no host: it looks like "
                        "wss://HOST:PORT")
    return parts.geturl()


async def open_link(
    url: str, path: str, ca_file: Path, *, max_size: int = limits.MAX_FRAME,
    session: bool = False,
) -> BrokerLink:
    """Connect to ``url`` + ``path`` over TLS verified against `ca_file`.

    `max_size` bounds every frame received. Keep the default (the largest
    relay or control frame) unless this link reads the admin audit API,
    whose replies may reach `limits.MAX_ADMIN_FRAME`. A `session` link
    (one that carries SSH) is kept alive more often, so a silent drop is
    noticed while a resume can still be made.
    """
    url = broker_url(url)
    parts = urlsplit(url)
    tls = client_tls(ca_file)
    target = url.rstrip("/") + path
    try:
        ws = await connect(
            target, ssl=tls,
            compression=None,  # ciphertext does not compress; deflate costs CPU and memory
            max_size=max_size, max_queue=limits.MAX_QUEUED_FRAMES,
            write_limit=limits.WRITE_HIGH_WATER, open_timeout=limits.OPEN_TIMEOUT,
            ping_interval=(limits.SESSION_PING_INTERVAL if session
                           else limits.CLIENT_PING_INTERVAL),
            ping_timeout=limits.SESSION_PING_TIMEOUT if session else limits.CLIENT_PING_TIMEOUT,
            user_agent_header=None, create_connection=FastClientConnection,
        )
    except ssl.SSLCertVerificationError as exc:
        raise LinkError(
            f"refusing to connect: the broker at {parts.netloc} presented a certificate "
            f"{_certificate_problem(exc, parts.hostname or parts.netloc, ca_file)}",
            "bad_certificate",
        ) from exc
    except ssl.SSLError as exc:
        raise LinkError(f"TLS with the broker at {parts.netloc} failed: {exc}", "tls") from exc
    except (OSError, TimeoutError) as exc:
        raise LinkError(f"cannot reach the broker at {parts.netloc}: "
                        f"{exc.strerror or exc.__class__.__name__}", "unreachable") from exc
    except (InvalidHandshake, InvalidURI) as exc:
        raise LinkError(f"the broker at {parts.netloc} did not accept the connection: {exc}",
                        "handshake") from exc
    return BrokerLink(ws, max_size)
