"""The broker's listening socket, with admission before TLS.

websockets' `serve` lets the event loop accept, which starts a TLS
handshake for every connection before the broker sees it. Here the broker
accepts itself: it asks `broker.admission` about each new socket while it
is still a bare descriptor, closes a refused one at once with a reset (no
TLS, no buffers, no TIME_WAIT), and hands an admitted one to the loop with
TLS, into websockets' own connection handling, unchanged.

A connection stops being pending when the broker first sends it something
that only an accepted peer gets (`ESTABLISHING_PREFIXES`): an agent its
`nameplate`, a console `login_ok`, an agent session its peer's first
`pake`. Its ticket is released when its socket closes.

Behind a load balancer (`proxy_from`: the balancers' networks), a connection
from a balancer must begin with a PROXY v2 header (`broker.proxy_protocol`),
read before TLS and before admission: admission then counts the client the
header names, not the balancer (which would otherwise be one source holding
every pending connection), and the connection's `remote_address` is that
client's. A connection from any other address is taken as before; a header
from it is not read (it would be a spoof) and fails its TLS handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import logging
import os
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any, cast

from websockets.asyncio.server import Server, ServerConnection, serve

from broker import admission, eventloop
from broker.admission import Admission, Decision, Ticket
from broker.framepath import FramePath
from broker.proxy_protocol import (
    PREFIX_LENGTH,
    Networks,
    ProxyProtocolError,
    body_length,
    is_within,
    parse,
)
from broker.wire.limits import OPEN_TIMEOUT, PROTOCOL_VERSION

__all__ = ["AdmittedConnection", "FastServerConnection", "GatedListener", "serve_gated"]

log = logging.getLogger("consentry.broker")

# The frames that show the broker accepted the peer (see the module doc).
# Frames are built by `broker.wire.messages.encode`, which always writes
# "v" then "type" first: a prefix test, no parsing, and only while pending.
ESTABLISHING_PREFIXES = tuple(
    f'{{"v":{PROTOCOL_VERSION},"type":"{t}"'
    for t in ("nameplate", "login_ok", "joined", "pake", "sealed"))

# Sockets taken from the backlog per wake-up, so that a flood cannot keep
# the loop in the accept callback while established sessions wait.
ACCEPT_BATCH = 64

# A balancer sends its PROXY header as it connects, before any client byte:
# one that has not within this long is not going to.
PROXY_HEADER_TIMEOUT = 5.0
# Connections from balancers whose header is still being read. They are not
# yet admitted (admission needs the header's address), so they are capped here.
MAX_PROXY_HEADER_READS = 256

# A linger of zero: close() resets the connection and frees it at once.
_RESET = struct.pack("ii", 1, 0)


class FastServerConnection(FramePath, ServerConnection):
    """websockets' server connection with the binary fast path (`broker.framepath`)."""


class AdmittedConnection(FastServerConnection):
    """A broker connection that tells its `Ticket` when it is established
    and when it closes."""

    ticket: Ticket | None = None
    gate: GatedListener | None = None
    # The client a balancer's PROXY header named, when it named one.
    client_address: tuple[str, int] | None = None

    @property
    def remote_address(self) -> Any:
        """The client's address: the PROXY header's behind a trusted
        balancer, the socket's peer otherwise."""
        if self.client_address is not None:
            return self.client_address
        return super().remote_address

    async def send(self, message: Any, **options: Any) -> None:
        ticket = self.ticket
        if (ticket is not None and ticket.pending and isinstance(message, str)
                and message.startswith(ESTABLISHING_PREFIXES) and self.gate is not None):
            self.gate.admission.established(ticket)
        await super().send(message, **options)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.ticket is not None and self.gate is not None:
            self.gate.release(self.ticket)


class GatedListener:
    """Accepts on `sockets`, admits through `admission`, and opens the
    admitted ones with `factory` over TLS. Quacks like the `asyncio.Server`
    that websockets' `Server` expects."""

    def __init__(self, sockets: list[socket.socket], factory: Callable[[], ServerConnection],
                 tls: ssl.SSLContext | None, admission_: Admission,
                 handshake_timeout: float = OPEN_TIMEOUT, proxy_from: Networks = ()) -> None:
        self._sockets = sockets
        self._factory = factory
        self._tls = tls
        self.admission = admission_
        self._handshake_timeout = handshake_timeout
        self._loop = asyncio.get_running_loop()
        self._opening: set[asyncio.Task[None]] = set()
        self._serving = False
        self._proxy_from = proxy_from
        self._reading_headers: set[asyncio.Task[None]] = set()
        # A descriptor kept free for the moment accept() fails with EMFILE:
        # closed, it lets the broker accept and reset the waiting peer, which
        # would otherwise wake the loop again and again.
        self._spare: int | None = _open_spare()
        # Closed connections leave their memory on the C heap until trimmed.
        self.trimmer = eventloop.TrimAfterClose()

    # -- asyncio.Server's surface, as websockets uses it --------------------

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if not self._serving:
            self._serving = True
            for sock in self._sockets:
                self._loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        if self._serving:
            self._serving = False
            for sock in self._sockets:
                self._loop.remove_reader(sock.fileno())
        for sock in self._sockets:
            sock.close()
        for task in (*self._reading_headers, *self._opening):
            task.cancel()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
        self.trimmer.cancel()

    async def wait_closed(self) -> None:
        if self._opening or self._reading_headers:
            await asyncio.wait(self._opening | self._reading_headers)

    # -- accepting ----------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._shed_one(listener)
                elif exc.errno not in (errno.ECONNABORTED, errno.EPROTO):
                    log.warning("accept failed: %s", exc.strerror)
                return
            self._admit(sock, address)

    def _admit(self, sock: socket.socket, address: Any) -> None:
        peer = str(address[0]) if isinstance(address, tuple) else ""
        if self._proxy_from and is_within(peer, self._proxy_from):
            self._read_proxy_header(sock, (peer, int(address[1])))
        else:
            self._admit_from(sock, peer, None)

    def _read_proxy_header(self, sock: socket.socket, balancer: tuple[str, int]) -> None:
        if len(self._reading_headers) >= MAX_PROXY_HEADER_READS:
            _reset(sock)
            self.admission.refused[Decision.REFUSE_FULL] += 1
            return
        sock.setblocking(False)
        task = self._loop.create_task(self._proxied(sock, balancer))
        self._reading_headers.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._reading_headers.discard(finished)
            if finished.cancelled():
                sock.close()

        task.add_done_callback(done)

    async def _proxied(self, sock: socket.socket, balancer: tuple[str, int]) -> None:
        try:
            async with asyncio.timeout(PROXY_HEADER_TIMEOUT):
                prefix = await _receive_exactly(self._loop, sock, PREFIX_LENGTH)
                rest = await _receive_exactly(self._loop, sock, body_length(prefix))
            header = parse(prefix + rest)
        except (ProxyProtocolError, TimeoutError, OSError, EOFError) as exc:
            # Only the broker's own words: no byte of what was sent is logged.
            reason = exc if isinstance(exc, ProxyProtocolError) else (
                "it sent none in time" if isinstance(exc, TimeoutError)
                else "it closed before sending it")
            log.warning("dropped a connection from a load balancer without a usable PROXY v2 "
                        "header: %s", reason)
            _reset(sock)
            return
        # A LOCAL header (the balancer's health check) names no client: the
        # balancer is the peer, as the specification says.
        client = header.source or balancer
        self._admit_from(sock, client[0], client if header.source else None)

    def _admit_from(self, sock: socket.socket, peer: str,
                    client: tuple[str, int] | None) -> None:
        source = admission.source_of(peer)
        decision, oldest = self.admission.decide(source)
        if decision is not Decision.ADMIT:
            _reset(sock)
            return
        if oldest is not None:
            self.admission.evict(oldest)
        ticket = self.admission.admit(source)
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # keystrokes leave at once
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = self._loop.create_task(self._open(sock, ticket, client))

        def drop() -> None:  # until the TLS handshake is done
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # the peer hears it at once
            task.cancel()

        def opened(done: asyncio.Task[None]) -> None:
            self._opening.discard(done)
            if done.cancelled():  # perhaps before it ran at all: nothing else closes it
                sock.close()
                self.release(ticket)

        ticket.drop = drop
        self._opening.add(task)
        task.add_done_callback(opened)

    async def _open(self, sock: socket.socket, ticket: Ticket,
                    client: tuple[str, int] | None = None) -> None:
        def made() -> ServerConnection:
            conn = self._factory()
            if isinstance(conn, AdmittedConnection):
                conn.ticket, conn.gate, conn.client_address = ticket, self, client
            return conn

        try:
            transport, _conn = await self._loop.connect_accepted_socket(
                made, sock, ssl=self._tls,
                ssl_handshake_timeout=self._handshake_timeout if self._tls else None)
        except BaseException:
            # TLS failed or timed out, or this pending socket made room for
            # a newer one: the protocol never saw it, so release it here.
            sock.close()
            self.release(ticket)
            raise
        ticket.drop = transport.abort

    def release(self, ticket: Ticket) -> None:
        if not ticket.closed:
            self.admission.release(ticket)
            if self._serving:
                self.trimmer.closed()

    def _shed_one(self, listener: socket.socket) -> None:
        if self._spare is None:
            return
        os.close(self._spare)
        self._spare = None
        with contextlib.suppress(OSError):
            sock, _address = listener.accept()
            _reset(sock)
        self._spare = _open_spare()
        self.admission.refused[Decision.REFUSE_FULL] += 1


async def _receive_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                           count: int) -> bytes:
    """`count` bytes and not one more: what follows (the client's TLS) stays
    in the socket for the handshake."""
    data = b""
    while len(data) < count:
        chunk = await loop.sock_recv(sock, count - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    sock.close()


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def listening_sockets(host: str, port: int, backlog: int = socket.SOMAXCONN,
                      ) -> list[socket.socket]:
    """Non-blocking listening sockets for every address `host` names, on
    one port (the first one's, when `port` is 0)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    # typeshed types an address's host as str | int (int for AF_CAN and the like).
    seen: set[tuple[int, str | int]] = set()
    try:
        for family, kind, proto, _name, address in infos:
            if (family, address[0]) in seen:
                continue
            seen.add((family, address[0]))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            bound = (address[0], port or (sockets[0].getsockname()[1] if len(sockets) > 1
                                          else 0), *address[2:])
            sock.bind(bound)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def serve_gated(handler: Callable[[ServerConnection], Awaitable[None]], host: str, port: int,
                *, ssl: ssl.SSLContext | None, open_timeout: float = OPEN_TIMEOUT,
                proxy_protocol_from: Networks = (), **kwargs: Any) -> Server:
    """websockets' `serve(...)`, accepting through a `GatedListener`.

    Raises the open-file limit first and sizes the connections' share of
    descriptors from what is left. Use as ``async with serve_gated(...) as
    server``; `server.server.admission` holds the counts. Memory the
    closed connections leave behind is trimmed (`eventloop.TrimAfterClose`).
    Connections from `proxy_protocol_from` must begin with a PROXY v2 header
    (see the module doc).
    """
    soft, _hard = admission.raise_open_file_limit()
    ws_server = serve(handler, host, port, open_timeout=open_timeout,
                      create_connection=AdmittedConnection, **kwargs)
    factory = _websockets_protocol_factory(ws_server)

    async def create_server() -> GatedListener:
        sockets = listening_sockets(host, port)
        # What is open now (databases, logs, the loop, these sockets) stays
        # open; connections get what is left after the reserve.
        capacity = admission.capacity_for(soft, admission.open_descriptors() + 1)
        gate = GatedListener(sockets, factory, ssl, Admission(capacity), open_timeout,
                             proxy_from=proxy_protocol_from)
        await gate.start_serving()
        return gate

    # websockets types create_server as making an asyncio.Server; GatedListener
    # is not one but offers the part of it that websockets' Server uses.
    ws_server.create_server = create_server  # type: ignore[assignment]
    return ws_server


def _websockets_protocol_factory(ws_server: Server) -> Callable[[], ServerConnection]:
    """The per-connection factory websockets' `serve` builds (a closure it
    hands only to `loop.create_server`): with it, every connection gets
    exactly websockets' own set-up."""
    factory = inspect.getclosurevars(ws_server.create_server).nonlocals.get("protocol_factory")
    if not callable(factory):
        raise RuntimeError("this websockets version does not build its connections the way "
                           "broker.listener expects; pin websockets to a tested version")
    # The closure's variables are typed Any; this one is websockets' own
    # factory of ServerConnection (checked callable above).
    return cast("Callable[[], ServerConnection]", factory)
