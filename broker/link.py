"""The client end of a connection to the broker, shared by agent and console.

Not server code: it imports the websockets *client* only. It knows how to
reach the broker safely (TLS verified against the pinned CA alone, never the
system store; compression off) and how to turn failures into sentences, and
it carries an SSH byte stream over the relay for asyncssh.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from broker.wire import limits
from broker.wire.errors import ProtocolError
from broker.wire.messages import Message, decode, encode

__all__ = [
    "BrokerLink",
    "LinkError",
    "bridge",
    "client_tls",
    "open_link",
]


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
    try:
        ctx.load_verify_locations(cafile=str(ca_file))
    except (ssl.SSLError, OSError) as exc:
        raise LinkError(f"cannot read the CA certificate {ca_file}: {exc}") from exc
    return ctx


class BrokerLink:
    """One WebSocket to the broker, speaking validated control messages.

    `max_size` is the largest frame this link accepts (its WebSocket
    max_size); control frames are also held to their type's own limit.
    """

    def __init__(self, ws: ClientConnection, max_size: int = limits.MAX_FRAME) -> None:
        self.ws = ws
        self.max_size = max_size

    async def send(self, msg_type: str, **fields: object) -> None:
        await self.ws.send(encode(msg_type, **fields))

    async def recv(self, timeout: float | None = None) -> Message:
        """The next control message. A broker `error` becomes a `LinkError`."""
        try:
            frame = await asyncio.wait_for(self.ws.recv(), timeout)
        except TimeoutError as exc:
            raise LinkError("the broker did not answer in time", "timeout") from exc
        except ConnectionClosed as exc:
            raise LinkError(_closed_text(exc), "closed") from exc
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


def _closed_text(exc: ConnectionClosed) -> str:
    reason = exc.rcvd.reason if exc.rcvd else ""
    return f"the broker closed the connection{': ' + reason if reason else ''}"


async def open_link(
    url: str, path: str, ca_file: Path, *, max_size: int = limits.MAX_FRAME
) -> BrokerLink:
    """Connect to ``url`` + ``path`` over TLS verified against `ca_file`.

    `max_size` bounds every frame received. Keep the default (the largest
    relay or control frame) unless this link reads the admin audit API,
    whose replies may reach `limits.MAX_ADMIN_FRAME`.
    """
    parts = urlsplit(url)
    if parts.scheme != "wss":
        raise LinkError(f"the broker URL must start with wss:// (got {url!r}); "
                        "consentry never talks to a broker without TLS")
    tls = client_tls(ca_file)
    target = url.rstrip("/") + path
    try:
        ws = await connect(
            target, ssl=tls,
            compression=None,  # ciphertext does not compress; deflate costs CPU and memory
            max_size=max_size, max_queue=limits.MAX_QUEUED_FRAMES,
            write_limit=limits.WRITE_HIGH_WATER, open_timeout=limits.OPEN_TIMEOUT,
            user_agent_header=None,
        )
    except ssl.SSLCertVerificationError as exc:
        raise LinkError(
            f"refusing to connect: the broker at {parts.netloc} presented a certificate "
            f"not signed by the CA in {ca_file} ({exc.verify_message})", "bad_certificate",
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


async def bridge(
    link: BrokerLink,
    on_control: Callable[[Message], Awaitable[None]],
) -> tuple[socket.socket, asyncio.Task[None]]:
    """Carry a byte stream over the relay.

    Returns one end of a socket pair for asyncssh (``connect(sock=...)`` or
    ``run_server(sock)``) and the task that moves bytes between the other end
    and the WebSocket. Control frames that arrive meanwhile go to
    `on_control`. The task ends when either side closes.
    """
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)

    async def upstream() -> None:
        while data := await reader.read(limits.MAX_DATA_FRAME):
            await link.ws.send(data)

    async def downstream() -> None:
        async for frame in link.ws:
            if isinstance(frame, bytes):
                writer.write(frame)
                await writer.drain()
            else:
                await on_control(decode(frame, limit=link.max_size))

    async def run() -> None:
        try:
            async with asyncio.TaskGroup() as group:
                up = group.create_task(upstream())
                down = group.create_task(downstream())
                await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
                up.cancel()
                down.cancel()
        except* (ConnectionClosed, ConnectionError):
            pass
        finally:
            writer.close()

    return theirs, asyncio.create_task(run())
