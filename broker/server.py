"""The broker's I/O driver: TLS WebSocket endpoints and the glue between them.

Three endpoints, each one connection kind of `broker.wire.states`:
``/v1/agent`` (a waiting agent), ``/v1/agent/session`` (the agent's side of
one join), ``/v1/console`` (the engineer's side of one join). Every frame is
checked against the schema and the state table; a bad one closes that
connection with a clear `error` message. Every event that matters is written
to the audit log *before* the broker acts on it; if that write fails, the
broker refuses rather than proceed unrecorded.

A logged-in console either joins (one join per connection) or, for admins,
reads the audit log through `broker.admin_api` as many times as it likes
first. In an active session the engineer may ask for control: the broker
forwards the request, records the customer's new signed receipt, and only
then tells both ends the outcome (`broker.consents`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import signal
import ssl
import time
from collections.abc import Callable
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from broker import eventloop
from broker.admin_api import answer_audit_request
from broker.audit.checkpoints import Checkpointer
from broker.audit.retention import check_retention, retention_loop
from broker.audit.signing import load_or_create_signing_key
from broker.audit.store import AuditLog
from broker.auth import AttemptLimiter, verify_login
from broker.config import BrokerConfig
from broker.consents import Consents
from broker.errors import AuditError, AuditWriteError, ConfigError
from broker.keepalive import sweep_forever
from broker.limits import session_over
from broker.listener import serve_gated
from broker.pairing import NameplateBook
from broker.registry import Engineer, Registry
from broker.session import (
    AgentLink,
    Session,
    close_quietly,
    ended_frame,
    send_quietly,
    utcnow,
)
from broker.wire import limits
from broker.wire.errors import ProtocolError
from broker.wire.login import NONCE_BYTES
from broker.wire.messages import Message, b64decode, b64encode, decode, encode
from broker.wire.states import Conn, Phase, check_binary, check_inbound

log = logging.getLogger("consentry.broker")

PATHS = ("/v1/agent", "/v1/agent/session", "/v1/console")

# Fail closed: what an agent or console is told when the audit log cannot be
# written (disk full, the operator's --audit-max-mb reached, database error).
AUDIT_UNAVAILABLE = ("the broker cannot record sessions right now, so no session can start; "
                     "ask the operator to check the audit log's disk space or quota")


def server_tls(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from exc
    return eventloop.bounded_tls_reads(ctx)


async def recv_control(
    ws: ServerConnection, conn: Conn, phase: Phase, timeout: float | None
) -> Message:
    """Receive one control frame that `conn` may send in `phase`."""
    try:
        frame = await asyncio.wait_for(ws.recv(), timeout)
    except TimeoutError as exc:
        raise ProtocolError("timed out waiting for the next message", "timeout") from exc
    msg = decode(frame)
    check_inbound(conn, phase, msg.type)
    return msg


class Broker:
    def __init__(self, config: BrokerConfig, audit: AuditLog, registry: Registry) -> None:
        self.config = config
        self.audit = audit
        self.registry = registry
        self.book = NameplateBook()
        self.agents: dict[str, AgentLink] = {}
        self.sessions: dict[str, Session] = {}
        self.user_attempts = AttemptLimiter(limits.MAX_LOGIN_ATTEMPTS_PER_USER)
        self.ip_attempts = AttemptLimiter(limits.MAX_LOGIN_ATTEMPTS_PER_IP)
        self.consents = Consents(audit, self.end)

    # -- routing and error handling ---------------------------------------

    def check_path(self, ws: ServerConnection, request: Request) -> Response | None:
        if request.path not in PATHS:
            return ws.respond(HTTPStatus.NOT_FOUND, "unknown endpoint\n")
        return None

    async def handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        # Nothing reads the handshake's headers again; an idle agent should
        # not keep a few KiB of them alive for as long as it stays connected.
        ws.request.headers.clear()
        if ws.response is not None:
            ws.response.headers.clear()
        route = {
            "/v1/agent": self.agent_control,
            "/v1/agent/session": self.agent_session,
            "/v1/console": self.console,
        }[ws.request.path]
        try:
            await route(ws)
        except ProtocolError as exc:
            # Operational log: the path and the reason code only — no addresses,
            # names or payloads (those belong in the audit log, encrypted, or nowhere).
            log.info("protocol error on %s: %s", ws.request.path, exc.code)
            await refuse(ws, exc.code, str(exc))
        except AuditWriteError as exc:
            log.error("audit log unavailable: %s", exc)
            await refuse(ws, "audit_unavailable", AUDIT_UNAVAILABLE)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("internal error on %s", ws.request.path)
            await refuse(ws, "internal_error", "internal broker error; the operator has details")

    # -- agents -----------------------------------------------------------

    async def agent_control(self, ws: ServerConnection) -> None:
        hello = await recv_control(ws, Conn.AGENT, Phase.HELLO, limits.OPEN_TIMEOUT)
        device_key = b64decode(hello["device_key"])
        if len(device_key) != 32:
            raise ProtocolError("hello.device_key must be a 32-byte Ed25519 key")
        link = AgentLink(
            conn_id=secrets.token_hex(8), ws=ws, device_id=hello["device_id"],
            device_key=device_key, alias=hello["alias"], ip=_peer(ws),
        )
        personal = {"alias": link.alias, "ip": link.ip}
        personal.update({k: hello[k] for k in ("hostname", "os_user") if hello.get(k)})
        await self.audit.append(
            "agent_connected", now=utcnow(), subject=link.device_id, personal=personal,
            body={"shared": sorted(k for k in personal if k in ("hostname", "os_user"))},
        )
        self.agents[link.conn_id] = link
        try:
            await self.issue_nameplate(link)
            while True:
                plate = self.book.current(link.conn_id)
                wait = max(0.0, plate.expires_at - time.monotonic()) if plate else None
                try:
                    # asyncio.timeout, not wait_for: no extra task per idle agent.
                    async with asyncio.timeout(wait):
                        frame = await ws.recv()
                except TimeoutError:
                    current = self.book.current(link.conn_id)
                    if current is None or current.expires_at <= time.monotonic():
                        await self.issue_nameplate(link)  # expired: a fresh code
                    continue
                check_inbound(Conn.AGENT, Phase.READY, decode(frame).type)
        finally:
            self.book.release(link.conn_id)
            self.agents.pop(link.conn_id, None)
            await self.audit_quietly("agent_disconnected", subject=link.device_id)

    async def issue_nameplate(self, link: AgentLink) -> None:
        plate = self.book.allocate(link.conn_id, time.monotonic())
        await link.ws.send(
            encode("nameplate", nameplate=plate.value, expires_in=int(self.book.lifetime))
        )

    async def agent_session(self, ws: ServerConnection) -> None:
        attach = await recv_control(ws, Conn.AGENT_SESSION, Phase.HELLO, limits.OPEN_TIMEOUT)
        session = self.sessions.get(attach["session"])
        if (
            session is None
            or not hmac.compare_digest(session.token.encode(), attach["token"].encode())
            or session.agent_ws is not None
            or session.done.is_set()
        ):
            raise ProtocolError("unknown or expired session", "unknown_session")
        session.agent_ws = ws
        session.attached.set()
        try:
            await self.pump(session, ws, Conn.AGENT_SESSION)
        finally:
            await self.end(session, "agent_lost")

    # -- consoles ---------------------------------------------------------

    async def console(self, ws: ServerConnection) -> None:
        engineer = await self.login(ws)
        # An admin's connection stays here across audit reads; one that sits
        # idle for the handshake timeout is closed, and the console reconnects.
        while True:
            msg = await recv_control(ws, Conn.CONSOLE, Phase.READY,
                                     self.config.timeouts.handshake)
            if msg.type == "join":
                await self.join(ws, engineer, msg)
                return
            await answer_audit_request(self.audit, ws, engineer, msg,
                                       checkpoint_file=self.config.checkpoint_file)

    async def join(self, ws: ServerConnection, engineer: Engineer, join: Message) -> None:
        wants = ("view", "control") if "control" in join["wants"] else ("view",)
        owner = self.book.claim(join["nameplate"], time.monotonic())
        link = self.agents.get(owner) if owner else None
        if link is None:
            await self.audit.append("join_failed", now=utcnow(), actor=engineer.name,
                                    body={"reason": "unknown_code"})
            raise ProtocolError(
                "no customer is waiting with that code: check it, or ask the customer "
                "for the code now on their screen (codes are single-use and expire)",
                "unknown_code",
            )
        session = Session(
            id=secrets.token_urlsafe(9), token=secrets.token_urlsafe(24), agent=link,
            console=ws, engineer=engineer, wants=wants,
        )
        self.sessions[session.id] = session
        watchdog = asyncio.create_task(self.watch(session))
        try:
            try:
                await self.audit.append(
                    "join_requested", now=utcnow(), session=session.id, actor=engineer.name,
                    subject=link.device_id, body={"wants": list(wants)},
                )
            except AuditWriteError:
                # Fail closed, and both ends hear why: the console's join ends
                # with the reason; the agent, whose code this join spent, is
                # refused too, and on reconnecting (which must be recorded
                # again) is either told the same or given a fresh code.
                await self.end(session, "audit_unavailable")
                await refuse(link.ws, "audit_unavailable", AUDIT_UNAVAILABLE)
                raise
            try:
                await link.ws.send(encode(
                    "join_request", nameplate=join["nameplate"], session=session.id,
                    token=session.token,
                    engineer_login=engineer.name, engineer_display=engineer.display,
                    engineer_role=engineer.role, engineer_key=engineer.public_key,
                    wants=list(wants),
                ))
                # Single-use: whatever happens next, this code is spent.
                await self.issue_nameplate(link)
            except ConnectionClosed:
                await self.end(session, "agent_unreachable")
                return
            try:
                await asyncio.wait_for(session.attached.wait(), limits.OPEN_TIMEOUT)
            except TimeoutError:
                await self.end(session, "agent_unreachable")
                return
            await ws.send(encode("joined", session=session.id, alias=link.alias))
            await self.pump(session, ws, Conn.CONSOLE)
        finally:
            watchdog.cancel()
            await self.end(session, "console_lost")
            self.sessions.pop(session.id, None)

    async def login(self, ws: ServerConnection) -> Engineer:
        hello = await recv_control(ws, Conn.CONSOLE, Phase.HELLO, limits.OPEN_TIMEOUT)
        user = hello["user"]
        now = time.monotonic()
        if self.ip_attempts.blocked(_peer(ws), now) or self.user_attempts.blocked(user, now):
            await self.record_login_failure(ws, user, "rate_limited")
            raise ProtocolError("too many failed logins; wait a few minutes", "rate_limited")
        nonce = os.urandom(NONCE_BYTES)
        await ws.send(encode("challenge", nonce=b64encode(nonce)))
        proof = await recv_control(ws, Conn.CONSOLE, Phase.LOGIN, limits.OPEN_TIMEOUT)
        engineer = await asyncio.to_thread(self.registry.get, user)
        signature = b64decode(proof["signature"])
        # One message for unknown user and wrong key: no probing the registry.
        if engineer is None or not verify_login(engineer.public_key, user, nonce, signature):
            failed_at = time.monotonic()
            self.ip_attempts.record(_peer(ws), failed_at)
            self.user_attempts.record(user, failed_at)
            await self.record_login_failure(ws, user, "unknown_user_or_key")
            raise ProtocolError(
                "login refused: this user is not registered with the broker, or the key "
                "does not match the one registered", "login_failed",
            )
        await self.audit.append("engineer_login", now=utcnow(), actor=engineer.name,
                                body={"role": engineer.role, "key": engineer.fingerprint})
        await ws.send(encode("login_ok", user=engineer.name, display=engineer.display,
                             role=engineer.role))
        return engineer

    async def record_login_failure(self, ws: ServerConnection, user: str, reason: str) -> None:
        """A failed login names whatever the client typed — possibly someone's
        e-mail address — so that name goes in the erasable personal part."""
        await self.audit.append(
            "login_failed", now=utcnow(), subject=f"login:{user}",
            personal={"user": user, "ip": _peer(ws)}, body={"reason": reason},
        )

    # -- the session, once both sides are here ------------------------------

    async def pump(self, session: Session, ws: ServerConnection, conn: Conn) -> None:
        """Read one side until it closes: relay binary, act on control."""
        async for frame in ws:
            if session.phase is Phase.CLOSED:
                # Teardown: the ends are still flushing (an SSH disconnect, a
                # last keystroke). Nothing more is relayed, and it is no error.
                continue
            if isinstance(frame, bytes):
                check_binary(conn, session.phase)
                await session.forward_binary(ws, frame)
                continue
            msg = decode(frame)
            check_inbound(conn, session.phase, msg.type)
            try:
                await self.on_control(session, conn, msg)
            except AuditWriteError:
                # Nothing goes on unrecorded (a consent, a change of rights):
                # the session ends here and both ends are told why.
                await self.end(session, "audit_unavailable")
                raise
            if session.done.is_set():
                return

    async def on_control(self, session: Session, conn: Conn, msg: Message) -> None:
        if msg.type in ("pake", "sealed"):
            # Opaque to us: re-encoded after validation, never opened.
            peer = session.agent_ws if conn is Conn.CONSOLE else session.console
            await send_quietly(peer, encode(msg.type, body=msg["body"]))
        elif msg.type == "end":
            allowed, default = (
                (limits.CONSOLE_END_REASONS, "engineer_left") if conn is Conn.CONSOLE
                else (limits.AGENT_END_REASONS, "customer_ended")
            )
            await self.end(session, msg["reason"] if msg["reason"] in allowed else default)
        elif msg.type == "pairing_failed":
            await self.audit.append(
                "pairing_failed", now=utcnow(), session=session.id,
                actor=session.engineer.name, subject=session.agent.device_id,
                body={"reason": "key_mismatch" if msg["reason"] == "key_mismatch"
                      else "wrong_code"},
            )
            await self.end(session, "wrong_code")
        elif msg.type == "consent":
            await self.consents.record(session, msg)
        elif msg.type == "request_control":
            await self.consents.request_control(session)
        elif msg.type == "rights":
            granted = tuple(msg["granted"])
            if "view" not in granted or not set(granted) <= set(session.granted):
                raise ProtocolError("rights can only be narrowed here", "bad_rights")
            session.granted = granted
            await self.audit.append(
                "rights_changed", now=utcnow(), session=session.id,
                actor=session.engineer.name, subject=session.agent.device_id,
                body={"granted": list(granted), "by": "customer"},
            )
            await send_quietly(session.console, encode("rights", granted=list(granted)))

    async def watch(self, session: Session) -> None:
        """End sessions that idle too long, last too long, or never finish pairing."""
        timeouts = self.config.timeouts
        with contextlib.suppress(asyncio.CancelledError):
            while not session.done.is_set():
                await asyncio.sleep(min(5.0, timeouts.idle / 4))
                now = time.monotonic()
                if session.phase is Phase.ACTIVE:
                    assert session.active_since is not None
                    reason = session_over(now, session.active_since, session.last_activity,
                                          timeouts)
                elif now - session.created >= timeouts.handshake:
                    reason = "timeout"
                else:
                    reason = None
                if reason:
                    await self.end(session, reason)

    async def end(self, session: Session, reason: str) -> None:
        """End a session once: record why, tell both sides, close both.

        A second caller waits until the first has told both ends: returning
        from a connection handler closes that socket, and it must not close
        before its peer's `ended` (with the reason) went out.
        """
        if session.done.is_set():
            await session.finished.wait()
            return
        session.done.set()
        try:
            await self._finish(session, reason)
        finally:
            session.finished.set()

    async def _finish(self, session: Session, reason: str) -> None:
        session.stop_fast_relay()
        session.end_reason = reason
        if session.phase is Phase.ACTIVE:
            await self.audit_quietly("session_ended", session=session.id,
                                     actor=session.engineer.name,
                                     subject=session.agent.device_id, body=session.summary())
        elif reason not in ("wrong_code", "denied", "timeout"):
            await self.audit_quietly("join_abandoned", session=session.id,
                                     actor=session.engineer.name,
                                     subject=session.agent.device_id, body={"reason": reason})
        session.phase = Phase.CLOSED
        frame = ended_frame(reason)
        peers = (session.console, session.agent_ws)
        for ws in peers:  # both hear why before either is closed
            await send_quietly(ws, frame)
        for ws in peers:
            await close_quietly(ws, reason)

    async def audit_quietly(self, event: str, **fields: object) -> None:
        """For events recorded while tearing down: a failure is logged, not raised,
        because there is nothing left to refuse."""
        try:
            await self.audit.append(event, now=utcnow(), **fields)  # type: ignore[arg-type]
        except AuditError as exc:
            log.error("could not record %s: %s", event, exc)

    async def shutdown(self) -> None:
        for session in list(self.sessions.values()):
            await self.end(session, "broker_shutdown")
        for link in list(self.agents.values()):
            await close_quietly(link.ws, "broker shutting down")


async def refuse(ws: ServerConnection, code: str, message: str) -> None:
    """Tell the peer what went wrong, in words, then close."""
    await send_quietly(ws, encode("error", code=code[:64], message=message[:200]))
    with contextlib.suppress(ConnectionClosed, RuntimeError):
        await ws.close(1008, code[:100])


def _peer(ws: ServerConnection) -> str:
    addr = ws.remote_address
    return str(addr[0]) if addr else "unknown"


async def run_broker(config: BrokerConfig, *, ready: Callable[[int], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then end every session cleanly."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)
    tls = server_tls(config.cert, config.key)
    check_retention(config.pii_retention_days, config.event_retention_days)
    audit = await AuditLog.open(
        config.data_dir,
        max_bytes=None if config.audit_max_mb is None else config.audit_max_mb * 1024 * 1024,
    )
    try:
        # Refuses to start on a log that no longer holds what its newest
        # signed checkpoint covers (cut short, or an older copy restored).
        checkpointer = Checkpointer(
            audit, config.data_dir, checkpoint_file=config.checkpoint_file,
            every_events=config.checkpoint_every_events,
            every_seconds=config.checkpoint_every_seconds,
        )
        await checkpointer.start()
    except BaseException:
        await audit.close()
        raise
    registry = Registry(config.registry_db)
    broker = Broker(config, audit, registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Retention runs now and then hourly, beside the sessions; its events go
    # through the same log (and checkpoints) as theirs.
    retention = asyncio.create_task(retention_loop(
        audit, signing_key=load_or_create_signing_key(config.data_dir),
        pii_days=config.pii_retention_days, event_days=config.event_retention_days,
        interval=config.retention_interval,
    ))
    try:
        # Accepts through broker.admission (per-source and descriptor caps,
        # before TLS); connections are FastServerConnections (binary frames
        # skip the queue).
        async with serve_gated(
            broker.handle, config.host, config.port, ssl=tls,
            process_request=broker.check_path,
            compression=None,  # ciphertext does not compress; deflate costs ~14x CPU
            max_size=limits.MAX_FRAME, max_queue=limits.MAX_QUEUED_FRAMES,
            write_limit=limits.WRITE_HIGH_WATER,
            ping_interval=None,  # one sweep for all connections, below
            open_timeout=limits.OPEN_TIMEOUT, server_header=None,
        ) as server:
            keepalive = asyncio.create_task(sweep_forever(
                lambda: server.connections, interval=config.timeouts.ping_interval,
                timeout=config.timeouts.ping_timeout))
            port = next(iter(server.sockets)).getsockname()[1]
            print(f"consentry-broker: listening on wss://{config.host}:{port} "
                  f"(data in {config.data_dir})", flush=True)
            if ready is not None:
                ready(port)
            await stop.wait()
            print("consentry-broker: shutting down", flush=True)
            keepalive.cancel()
            await broker.shutdown()
    finally:
        retention.cancel()  # a purge already started finishes first
        with contextlib.suppress(asyncio.CancelledError):
            await retention
        await checkpointer.stop()  # after the last session_ended: a final checkpoint
        await audit.close()
