"""The broker's I/O driver: TLS WebSocket endpoints and the glue between them.

Three endpoints, each one connection kind of `broker.wire.machine.protocol`:
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
from pathlib import Path

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from broker import eventloop
from broker.admin_api import answer_audit_request
from broker.audit.checkpoints import Checkpointer
from broker.audit.retention import check_retention, retention_loop
from broker.audit.shipping import CheckpointShipper
from broker.audit.signing import load_or_create_signing_key
from broker.audit.store import AuditLog
from broker.auth import AttemptLimiter, verify_login
from broker.certs import cert_names
from broker.config import BrokerConfig
from broker.consents import Consents
from broker.crash_recovery import close_what_a_crash_left_open, record_clean_stop
from broker.errors import AuditError, AuditWriteError, ConfigError, PkiError
from broker.failures import (
    FLUSH_EVERY_SECONDS,
    FailureAggregator,
    FailureEvent,
    join_event,
    login_event,
)
from broker.keepalive import sweep_forever
from broker.limits import session_over
from broker.listener import serve_gated
from broker.pairing import NameplateBook
from broker.registry import Engineer, Registry
from broker.session import (
    RECORDED_OUTCOMES,
    AgentLink,
    Session,
    close_quietly,
    ended_frame,
    send_quietly,
    utcnow,
)
from broker.throttle import JoinLimits, LoginThrottle
from broker.wire import limits
from broker.wire.errors import ProtocolError
from broker.wire.login import NONCE_BYTES
from broker.wire.machine.protocol import Conn, Phase, check_binary, check_inbound
from broker.wire.machine.reasons import AUDIT_UNAVAILABLE
from broker.wire.messages import Message, b64decode, b64encode, decode, encode
from broker.wire.text import printable

log = logging.getLogger("consentry.broker")

PATHS = ("/v1/agent", "/v1/agent/session", "/v1/console")

def server_tls(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(limits.TLS12_CIPHERS)
    try:
        ctx.load_cert_chain(cert, key)
        names = cert_names(Path(cert))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from exc
    except PkiError as exc:
        names = []
        detail = f" ({exc})"
    else:
        detail = ""
    if not names:
        # Clients check the broker's name against the subjectAltName only.
        raise ConfigError(f"the TLS certificate {cert} names no host in a subjectAltName, so "
                          f"no agent or console would accept it{detail}; issue one with the "
                          "broker's DNS names or addresses as SANs")
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
        # Bounded memory: N timestamps for each of at most 2,000 addresses.
        self.hello_attempts = AttemptLimiter(config.agent_hellos_per_minute,
                                             limits.AGENT_HELLO_WINDOW_SECONDS, max_keys=2_000)
        # Failed logins and joins: throttled, limited, and folded into a
        # bounded number of audit events (written by `flush_failures`).
        self.login_throttle = LoginThrottle()
        self.join_limits = JoinLimits()
        self.login_failures = FailureAggregator()
        self.join_failures = FailureAggregator()
        self._failure_flusher: asyncio.Task[None] | None = None
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
        if not self.hello_attempts.allow(_peer(ws), time.monotonic()):
            raise ProtocolError("too many support programs connected from this address in "
                                "the last minute; it will be let in shortly", "rate_limited")
        device_key = b64decode(hello["device_key"])
        if len(device_key) != 32:
            raise ProtocolError("hello.device_key must be a 32-byte Ed25519 key")
        bound = await asyncio.to_thread(self.registry.bind_device,
                                        self.audit.pseudonym(hello["device_id"]), device_key,
                                        now=utcnow())
        if not bound:
            raise ProtocolError(
                "the support service knows this computer's id with a different key, so "
                "it cannot be registered (were the agent's identity files copied from "
                "another computer?); tell the support team", "device_key_mismatch")
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
        source = _peer(ws)
        # Asked before the claim: a refused join spends no customer's code.
        refusal = self.join_limits.refusal(engineer.name, source, time.monotonic())
        if refusal is not None:
            await self.record_join_failure(engineer, "rate_limited")
            raise ProtocolError(refusal, "rate_limited")
        owner = self.book.claim(join["nameplate"], time.monotonic())
        link = self.agents.get(owner) if owner else None
        if link is None:
            await self.count_join_miss(engineer, source)  # counted even if not recorded
            await self.record_join_failure(engineer, "unknown_code")
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
            if not await _first_of(session.attached, session.done, limits.OPEN_TIMEOUT):
                await self.end(session, "agent_unreachable")
                return
            if session.done.is_set():
                return  # ended meanwhile (the broker shutting down, say): both ends told
            await ws.send(encode("joined", session=session.id, alias=link.alias))
            await self.pump(session, ws, Conn.CONSOLE)
        finally:
            watchdog.cancel()
            await self.end(session, "console_lost")
            if session.end_reason == "wrong_code":  # a PAKE guess: a miss too
                await self.count_join_miss(engineer, source)
            self.sessions.pop(session.id, None)

    async def count_join_miss(self, engineer: Engineer, source: str) -> None:
        """Count a join that found no customer. When an account (or an
        address) reaches the limit - a sweep - say so once per window, in
        the audit log (`join_limit_reached`, the engineer as actor, which
        `audit list` shows as it happens, not when the folded `join_failed`
        counts are written) and in the operator's log."""
        minutes = limits.JOIN_MISS_WINDOW_SECONDS // 60
        for scope in self.join_limits.missed(engineer.name, source, time.monotonic()):
            misses = (limits.MAX_JOIN_MISSES_PER_ENGINEER if scope == "engineer"
                      else limits.MAX_JOIN_MISSES_PER_SOURCE)
            if scope == "engineer":
                log.warning(
                    "join limit: engineer %s made %d joins that found no waiting customer "
                    "within %d minutes (sweeping codes?); their joins are refused for a "
                    "while - see `consentry-broker audit list --engineer %s`",
                    printable(engineer.name), misses, minutes, printable(engineer.name))
            else:
                log.warning(
                    "join limit: %d joins from one source address found no waiting customer "
                    "within %d minutes, the last by engineer %s; joins from it by engineers "
                    "who missed are refused for a while - see "
                    "`consentry-broker audit list --type join_limit_reached`",
                    misses, minutes, printable(engineer.name))
            # Bounded: once per window per registered account or address.
            await self.audit_quietly(
                "join_limit_reached", actor=engineer.name,
                body={"scope": scope, "misses": misses, "window_minutes": minutes})

    async def record_join_failure(self, engineer: Engineer, reason: str) -> None:
        """Folded per engineer (`broker.failures`): a sweep is a few events
        with counts, not one per miss."""
        await self._note_failure(self.join_failures, join_event, engineer.name, None, reason)

    async def login(self, ws: ServerConnection) -> Engineer:
        hello = await recv_control(ws, Conn.CONSOLE, Phase.HELLO, limits.OPEN_TIMEOUT)
        user = hello["user"]
        # No lockout: whatever failed before, a correct signature gets in.
        nonce = os.urandom(NONCE_BYTES)
        await ws.send(encode("challenge", nonce=b64encode(nonce)))
        proof = await recv_control(ws, Conn.CONSOLE, Phase.LOGIN, limits.OPEN_TIMEOUT)
        engineer = await asyncio.to_thread(self.registry.get, user)
        signature = b64decode(proof["signature"])
        # One message for unknown user and wrong key: no probing the registry.
        if engineer is None or not verify_login(engineer.public_key, user, nonce, signature):
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
        """Record a failed login (folded, `broker.failures`: anyone can send
        these, and each event costs the log), then hold the refusal back
        (`broker.throttle`) - in this connection's own task, in a bounded
        number of slots."""
        source = _peer(ws)
        delay = self.login_throttle.failed(source, user, time.monotonic())
        await self._note_failure(self.login_failures, login_event, source, user, reason)
        if delay and self.login_throttle.hold():
            try:
                await asyncio.sleep(delay)
            finally:
                self.login_throttle.release()

    async def _note_failure(
        self, aggregator: FailureAggregator, to_event: FailureEvent, group: str,
        name: str | None, reason: str,
    ) -> None:
        """Count a failure; write it now if it is news, else it is folded and
        written later by the one task that writes folded failures."""
        record = aggregator.note(group, name, reason, utcnow())
        if record is not None:
            event, fields = to_event(record)
            await self.audit.append(event, now=utcnow(), **fields)
        if self._failure_flusher is None or self._failure_flusher.done():
            self._failure_flusher = asyncio.create_task(self._flush_failures_while_pending())

    async def _flush_failures_while_pending(self) -> None:
        while self.login_failures.pending or self.join_failures.pending:
            await asyncio.sleep(FLUSH_EVERY_SECONDS)
            await self.flush_failures(drain=False)

    async def flush_failures(self, *, drain: bool) -> None:
        """Write the failures that are due (all of them when `drain`)."""
        now = utcnow()
        for aggregator, to_event in ((self.login_failures, login_event),
                                     (self.join_failures, join_event)):
            for record in aggregator.drain(now) if drain else aggregator.due(now):
                event, fields = to_event(record)
                await self.audit_quietly(event, **fields)

    # -- the session, once both sides are here ------------------------------

    async def pump(self, session: Session, ws: ServerConnection, conn: Conn) -> None:
        """Read one side until it closes: relay binary, act on control."""
        async for frame in ws:
            if session.phase is Phase.CLOSED:
                # Teardown: the ends are still flushing (an SSH disconnect, a
                # last keystroke). Nothing more is relayed, and it is no error.
                continue
            try:
                if isinstance(frame, bytes):
                    check_binary(conn, session.phase)
                    await session.forward_binary(ws, frame)
                    continue
                msg = decode(frame)
                check_inbound(conn, session.phase, msg.type)
                await self.on_control(session, conn, msg)
            except ProtocolError as exc:
                # The offender hears why before anything closes; the session
                # then ends as what it is, a protocol error, not a lost link.
                log.info("protocol error in a session from %s: %s", conn.value, exc.code)
                await send_quietly(ws, error_frame(exc.code, str(exc)))
                session.violation = {"by": conn.value, "code": exc.code}
                await self.end(session, "protocol_error")
                return
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
            # The schema admits only the known failures; each is its own end
            # reason, so the engineer is told which (a key mismatch is no
            # wrong code) and the audit body keeps them apart.
            reason = msg["reason"]
            await self.audit.append(
                "pairing_failed", now=utcnow(), session=session.id,
                actor=session.engineer.name, subject=session.agent.device_id,
                body={"reason": reason},
            )
            await self.end(session, reason)
        elif msg.type == "confirm_live":
            # Only while active (the state table); an ended session was sent
            # `ended` before this could be read, and gets no answer.
            await send_quietly(session.agent_ws, encode("live", id=msg["id"]))
        elif msg.type == "input_dropped":
            session.claim_dropped(msg["bytes"])
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
        # Who broke the protocol, if that is how it ended (no content, a code).
        violation = {"violation": session.violation} if session.violation else {}
        if session.phase is Phase.ACTIVE:
            await self.audit_quietly("session_ended", session=session.id,
                                     actor=session.engineer.name,
                                     subject=session.agent.device_id,
                                     body={**session.summary(), **violation})
        elif reason not in RECORDED_OUTCOMES:
            await self.audit_quietly("join_abandoned", session=session.id,
                                     actor=session.engineer.name,
                                     subject=session.agent.device_id,
                                     body={"reason": reason, **violation})
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
        if self._failure_flusher is not None:
            self._failure_flusher.cancel()
        await self.flush_failures(drain=True)
        for session in list(self.sessions.values()):
            await self.end(session, "broker_shutdown")
        for link in list(self.agents.values()):
            await close_quietly(link.ws, "broker shutting down")


async def _first_of(first: asyncio.Event, second: asyncio.Event, timeout: float) -> bool:
    """Wait until either event is set; False if neither is within `timeout`."""
    waiters = [asyncio.ensure_future(event.wait()) for event in (first, second)]
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return bool(done)


def error_frame(code: str, message: str) -> str:
    return encode("error", code=code[:64], message=message[:200])


async def refuse(ws: ServerConnection, code: str, message: str) -> None:
    """Tell the peer what went wrong, in words, then close."""
    await send_quietly(ws, error_frame(code, message))
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
    shipper: CheckpointShipper | None = None
    try:
        # Refuses to start on a log that no longer holds what its newest
        # signed checkpoint covers (cut short, or an older copy restored).
        checkpointer = Checkpointer(
            audit, config.data_dir, checkpoint_file=config.checkpoint_file,
            every_events=config.checkpoint_every_events,
            every_seconds=config.checkpoint_every_seconds, witnesses=config.witnesses,
        )
        if config.checkpoint_command is not None:
            shipper = CheckpointShipper(config.checkpoint_command)
            checkpointer.add_listener(shipper.offer)
            shipper.start()
        await checkpointer.start()
    except BaseException:
        if shipper is not None:
            await shipper.stop(0)
        await audit.close()
        raise
    try:
        # Before anyone is served: sessions and agents a crashed run left open
        # are closed in the log (reason broker_crashed), and this run begins.
        await close_what_a_crash_left_open(audit, now=utcnow())
    except AuditWriteError as exc:
        # A full log still starts a broker, which refuses every session and
        # says why; the closing records are written at the next start instead.
        log.error("could not close what the previous run left open: %s", exc)
    except BaseException:
        await checkpointer.stop()
        if shipper is not None:
            await shipper.stop()
        await audit.close()
        raise
    registry = Registry(config.registry_db)
    broker = Broker(config, audit, registry)
    broker.consents.checkpoints = checkpointer  # consent receipts sealed back to agents
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
    listening = False
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
            listening = True
            port = next(iter(server.sockets)).getsockname()[1]
            print(f"consentry-broker: listening on wss://{config.host}:{port} "
                  f"(data in {config.data_dir})", flush=True)
            if ready is not None:
                ready(port)
            await stop.wait()
            print("consentry-broker: shutting down", flush=True)
            keepalive.cancel()
            await broker.shutdown()
        # Here every connection handler has finished and recorded its end.
        try:
            await record_clean_stop(audit, now=utcnow())
        except AuditError as exc:
            log.error("could not record the clean stop: %s", exc)
    except OSError as exc:
        if listening:
            raise
        raise ConfigError(f"cannot listen on {config.host}:{config.port}: "
                          f"{exc.strerror or exc} (is another broker already running "
                          "there? choose another port with --listen)") from None
    finally:
        retention.cancel()  # a purge already started finishes first
        with contextlib.suppress(asyncio.CancelledError):
            await retention
        await checkpointer.stop()  # after the last session_ended: a final checkpoint
        if shipper is not None:
            await shipper.stop()  # after the final checkpoint, so it is shipped too
        await audit.close()
