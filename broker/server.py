"""The broker's I/O driver: TLS WebSocket endpoints and the glue between them.

Three endpoints, each one connection kind of `broker.wire.machine.protocol`:
``/v1/agent`` (a waiting agent), ``/v1/agent/session`` (the agent's side of
one join), ``/v1/console`` (the engineer's side of one join). Every frame is
checked against the schema and the catalogue; a bad one closes that
connection with a clear `error` message. Every event that matters is written
to the audit log *before* the broker acts on it; if that write fails, the
broker refuses rather than proceed unrecorded.

Here: registering agents and their nameplates, the console's login, the
admin audit API, and the checks before a join (rate limits, the nameplate
claim). From the join on, a session is its machine
(`broker.wire.machine.session`), performed on the sockets by
`broker.session.SessionDriver`: this module only hands it the connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import secrets
import signal
import ssl
import time
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from broker import eventloop
from broker.admin_api import answer_audit_request
from broker.audit.checkpoints import Checkpointer
from broker.audit.interface import AuditStore
from broker.audit.retention import check_retention, retention_loop
from broker.audit.shipping import CheckpointShipper
from broker.audit.signing import load_or_create_signing_key
from broker.audit.store import AuditLog
from broker.audit.stores import open_store
from broker.auth import AttemptLimiter, verify_login
from broker.certs import cert_names
from broker.cluster.health import AuditHealth, health_answer
from broker.cluster.lost import lost_nodes_loop
from broker.cluster.membership import DATABASE_TROUBLE
from broker.cluster.node import ClusterNode
from broker.config import BrokerConfig
from broker.crash_recovery import close_what_a_crash_left_open, record_clean_stop
from broker.errors import AuditError, AuditWriteError, ConfigError, PkiError, RegistryError
from broker.failures import (
    FLUSH_EVERY_SECONDS,
    FailureAggregator,
    FailureEvent,
    join_event,
    login_event,
)
from broker.keepalive import sweep_forever
from broker.listener import serve_gated
from broker.pairing import NameplateBook
from broker.pg_registry import PgLoginCounts, PgRegistry
from broker.registry import Engineer, Registry, ThreadedRegistry
from broker.session import AgentLink, SessionDriver, close_quietly, refuse, utcnow
from broker.throttle import JoinLimits, LoginThrottle
from broker.wire import limits
from broker.wire.codes import RIGHTS, ErrorCode, Right
from broker.wire.errors import ProtocolError
from broker.wire.login import NONCE_BYTES
from broker.wire.machine.lobby import Lobby
from broker.wire.machine.protocol import Conn
from broker.wire.machine.reasons import AUDIT_UNAVAILABLE
from broker.wire.machine.session import CONSOLE, AgentFacts, SessionMachine
from broker.wire.messages import Message, b64decode, b64encode, encode
from broker.wire.text import printable

log = logging.getLogger("consentry.broker")

PATHS = ("/v1/agent", "/v1/agent/session", "/v1/console")
# Plain HTTPS GET for a load balancer's check (broker.cluster.health).
HEALTH_PATH = "/healthz"
# The nameplate book's owner for a session's invitation (agents are owned
# by their connection id, which has no colon).
_INVITE = "invite:"

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


async def recv_control(ws: ServerConnection, lobby: Lobby) -> Message:
    """Receive the next control frame, as `lobby` allows it (which, and how long)."""
    try:
        frame = await asyncio.wait_for(ws.recv(), lobby.timeout(time.monotonic()))
    except TimeoutError as exc:
        raise lobby.timed_out() from exc
    return lobby.accept(frame, time.monotonic())


class Broker:
    def __init__(self, config: BrokerConfig, audit: AuditStore,
                 registry: Registry | ThreadedRegistry | PgRegistry) -> None:
        self.config = config
        self.audit = audit
        # Who may log in: the node's SQLite file, or the cluster's tables.
        self.registry = ThreadedRegistry(registry) if isinstance(registry, Registry) else registry
        # Failed logins counted by every node together (a cluster), else None.
        self.login_counts: PgLoginCounts | None = None
        self.book = NameplateBook()
        self.agents: dict[str, AgentLink] = {}
        self.sessions: dict[str, SessionDriver] = {}
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
        # Set once the log is checked against its checkpoints: each consent
        # event's covering checkpoint then goes back to the agent
        # (`consent_sealed`), sealed here or, in a cluster, by the leader.
        self.checkpoints: Checkpointer | None = None
        # One node of several (broker.cluster), else None.
        self.cluster: ClusterNode | None = None
        self.audit_health = AuditHealth()
        audit.add_append_listener(self.audit_health.wrote)
        self._background: set[asyncio.Task[None]] = set()

    def join_cluster(self, cluster: ClusterNode) -> None:
        self.cluster = cluster
        cluster.membership.on_change = self.lease_changed

    def lease_changed(self, slot: int | None) -> None:
        """Our slot is new, or gone: nameplates drawn under the old prefix
        are no longer ours to honour, so they are forgotten; without a lease
        the waiting agents are told why and sent away (they retry, and the
        balancer takes them to a node that has one)."""
        assert self.cluster is not None
        self.book.clear()
        self.book.prefix = self.cluster.prefix or ""
        if slot is not None:
            return
        for link in list(self.agents.values()):
            self._in_background(refuse(link.ws, ErrorCode.NODE_UNAVAILABLE, NO_LEASE))

    def _in_background(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- routing and error handling ---------------------------------------

    def check_path(self, ws: ServerConnection, request: Request) -> Response | None:
        if request.path == HEALTH_PATH:
            status, text = health_answer(
                clustered=self.cluster is not None,
                slot=self.cluster.healthy_slot if self.cluster is not None else None,
                audit=self.audit_health)
            return ws.respond(status, text)
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
            log.info("protocol error on %s: %s", ws.request.path, exc.code,
                     extra={"path": ws.request.path, "code": str(exc.code)})
            await refuse(ws, exc.code, str(exc))
        except AuditWriteError as exc:
            log.error("audit log unavailable: %s", exc)
            self.audit_health.failed(str(exc))
            await refuse(ws, ErrorCode.AUDIT_UNAVAILABLE, AUDIT_UNAVAILABLE)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("internal error on %s", ws.request.path)
            await refuse(ws, ErrorCode.INTERNAL_ERROR,
                         "internal broker error; the operator has details")

    # -- agents -----------------------------------------------------------

    async def agent_control(self, ws: ServerConnection) -> None:
        lobby = Lobby(Conn.AGENT, time.monotonic())
        hello = await recv_control(ws, lobby)
        if not self.hello_attempts.allow(_peer(ws), time.monotonic()):
            raise ProtocolError("too many support programs connected from this address in "
                                "the last minute; it will be let in shortly",
                                ErrorCode.RATE_LIMITED)
        device_key = b64decode(hello["device_key"])
        if len(device_key) != 32:
            raise ProtocolError("hello.device_key must be a 32-byte Ed25519 key")
        try:
            bound = await self.registry.bind_device(
                self.audit.pseudonym(hello["device_id"]), device_key, now=utcnow())
        except RegistryError as exc:
            # The registry's database (the cluster's) is down: nothing can be
            # recorded either; refused with the audit reason, and retried.
            raise AuditWriteError(f"the registry is unavailable: {exc}") from exc
        if not bound:
            raise ProtocolError(
                "the support service knows this computer's id with a different key, so "
                "it cannot be registered (were the agent's identity files copied from "
                "another computer?); tell the support team", ErrorCode.DEVICE_KEY_MISMATCH)
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
                lobby.accept(frame, time.monotonic())  # nothing is due from a waiting agent
        finally:
            self.book.release(link.conn_id)
            self.agents.pop(link.conn_id, None)
            await self.audit_quietly("agent_disconnected", subject=link.device_id)

    async def issue_nameplate(self, link: AgentLink) -> None:
        if link.conn_id not in self.agents:
            return  # gone: a nameplate now would only wait in the book for nobody
        if self.cluster is not None and self.cluster.healthy_slot is None:
            # Not raised: this also runs inside a session (the agent's next
            # code), which must go on. The agent retries, at another node.
            await refuse(link.ws, ErrorCode.NODE_UNAVAILABLE, NO_LEASE)
            return
        plate = self.book.allocate(link.conn_id, time.monotonic())
        await link.ws.send(
            encode("nameplate", nameplate=plate.value, expires_in=int(self.book.lifetime))
        )

    async def agent_session(self, ws: ServerConnection) -> None:
        first = await recv_control(ws, Lobby(Conn.AGENT_SESSION, time.monotonic()))
        session = self.sessions.get(first["session"])
        if session is None:
            raise ProtocolError("unknown or expired session", ErrorCode.UNKNOWN_SESSION)
        if first.type == "resume":
            # The agent's side of a seat whose link broke, back with its token.
            held = session.machine.held_agent_side(first.get("token") or "")
            if held is None:
                raise ProtocolError("no connection of that session waits to be resumed",
                                    ErrorCode.UNKNOWN_SESSION)
            await session.resume(held, ws, first)
            await session.pump(held, ws)
            return
        # The machine says if it is awaited, and for which seat.
        conn = await session.attach(ws, first["token"])
        await session.pump(conn, ws)

    # -- consoles ---------------------------------------------------------

    async def console(self, ws: ServerConnection) -> None:
        # An admin's connection stays here across audit reads; one that sits
        # idle for the handshake timeout is closed, and the console reconnects.
        lobby = Lobby(Conn.CONSOLE, time.monotonic(),
                      ready_timeout=self.config.timeouts.handshake)
        engineer = await self.login(ws, lobby)
        while True:
            msg = await recv_control(ws, lobby)
            if msg.type == "join":
                await self.join(ws, engineer, msg)
                return
            if msg.type == "resume":
                await self.resume_console(ws, engineer, msg)
                return
            await answer_audit_request(self.audit, ws, engineer, msg,
                                       checkpoint_file=self.config.checkpoint_file)

    async def join(self, ws: ServerConnection, engineer: Engineer, join: Message) -> None:
        # The asked set as it is (files is orthogonal to control), in order.
        wants = (Right.VIEW, *(r for r in RIGHTS if r != Right.VIEW and r in join["wants"]))
        source = _peer(ws)
        # Asked before the claim: a refused join spends no customer's code.
        refusal = self.join_limits.refusal(engineer.name, source, time.monotonic())
        if refusal is not None:
            await self.record_join_failure(engineer, "rate_limited")
            raise ProtocolError(refusal, ErrorCode.RATE_LIMITED)
        if self.cluster is not None and await self.moved_elsewhere(ws, join["nameplate"]):
            return
        owner = self.book.claim(join["nameplate"], time.monotonic())
        invited = self.sessions.get(owner.removeprefix(_INVITE)) if owner and owner.startswith(
            _INVITE) else None
        if invited is not None:
            await self.join_session(ws, engineer, wants, invited, source)
            return
        link = self.agents.get(owner) if owner else None
        if link is None:
            await self.count_join_miss(engineer, source)  # counted even if not recorded
            await self.record_join_failure(engineer, "unknown_code")
            raise ProtocolError(
                "no customer is waiting with that code: check it, or ask the customer "
                "for the code now on their screen (codes are single-use and expire)",
                ErrorCode.UNKNOWN_CODE,
            )
        machine = SessionMachine(
            session_id=secrets.token_urlsafe(9), token=secrets.token_urlsafe(24),
            nameplate=join["nameplate"],
            agent=AgentFacts(link.device_id, link.device_key, link.alias),
            engineer=engineer, wants=wants, timeouts=self.config.timeouts, now=time.monotonic(),
            node_url=self.config.node_url if self.cluster is not None else None)
        session = SessionDriver(machine, self, link, ws)
        await self.cluster_session_started(session.id)
        self.sessions[session.id] = session
        try:
            await session.open()
            await session.pump(CONSOLE, ws)
        finally:
            await self.seat_done(session, CONSOLE, engineer, source, ws)

    async def resume_console(self, ws: ServerConnection, engineer: Engineer,
                             msg: Message) -> None:
        """A logged-in console comes back to its seat after its link broke.
        The broker checks only that this engineer has a held seat there; the
        agent's side decides, from a proof only the paired console can make."""
        session = self.sessions.get(msg["session"])
        held = session.machine.held_console(engineer.name) if session is not None else None
        if session is None or held is None:
            raise ProtocolError(
                "that session is over, or has no connection of yours waiting to be resumed "
                f"(a session waits {limits.RESUME_WINDOW_SECONDS:.0f} s for a lost end)",
                ErrorCode.UNKNOWN_SESSION)
        await session.resume(held, ws, msg)
        try:
            await session.pump(held, ws)
        finally:
            if session.machine.ended is not None:
                session.stop()
                self.session_over(session)

    async def join_session(self, ws: ServerConnection, engineer: Engineer,
                           wants: tuple[str, ...], session: SessionDriver,
                           source: str) -> None:
        """A console joined with an invitation: a new seat of that running
        session, paired and consented like the first (or refused when the
        session is full, without asking the customer)."""
        console = await session.add_seat(ws, engineer, wants)
        if console is None:
            return  # refused, and told why
        try:
            await session.pump(console, ws)
        finally:
            await self.seat_done(session, console, engineer, source, ws)

    async def seat_done(self, session: SessionDriver, console: str, engineer: Engineer,
                        source: str, ws: ServerConnection) -> None:
        """One console's connection is over: its seat has left (the session
        may go on with others)."""
        seat = session.machine.seat_of(console)
        if seat.left is None and session.sockets.get(console) is ws:
            # Left before its pump ran (our own failure); a seat held for a
            # resume, or resumed on another socket, is not this socket's to end.
            await session.lost(console, ws)
        if seat.left == "wrong_code":  # a PAKE guess: a miss too
            await self.count_join_miss(engineer, source)
        if session.machine.ended is not None:
            session.stop()
            self.session_over(session)

    def issue_invite(self, session: str) -> tuple[str, int]:
        """Bind a fresh nameplate to a running session, for another engineer
        (the customer asked); it replaces that session's previous one."""
        plate = self.book.allocate(_INVITE + session, time.monotonic())
        return plate.value, int(self.book.lifetime)

    def session_over(self, session: SessionDriver) -> None:
        self.sessions.pop(session.id, None)
        self.book.release(_INVITE + session.id)
        if self.cluster is not None:
            self._in_background(self._cluster_session_over(session.id))

    # -- cluster ------------------------------------------------------------

    def require_lease(self) -> None:
        """In a cluster, no nameplate is issued or honoured without our lease
        (another node may hold our slot's prefix by now), nor while renewing
        it fails (the database is away: nothing could be recorded there)."""
        if self.cluster is not None and self.cluster.healthy_slot is None:
            raise ProtocolError(NO_LEASE, ErrorCode.NODE_UNAVAILABLE)

    async def moved_elsewhere(self, ws: ServerConnection, nameplate: str) -> bool:
        """A join whose nameplate another live node issued is told that
        node's URL (`moved`) and closed; True if so. A nameplate of no live
        node is this node's to refuse as unknown."""
        assert self.cluster is not None
        self.require_lease()
        slot = self.cluster.owner_slot(nameplate)
        if slot is None or slot == self.cluster.slot:
            return False
        try:
            url = await self.cluster.url_of(slot)
        except DATABASE_TROUBLE as exc:
            raise AuditWriteError(f"the cluster database is unreachable: {exc}") from exc
        if url is None:
            return False
        await ws.send(encode("moved", url=url))
        await close_quietly(ws, "moved to another node")
        return True

    async def cluster_session_started(self, session: str) -> None:
        """The node table says which node holds the session, so that the
        leader can close it in the log if this node dies."""
        if self.cluster is None:
            return
        slot = self.cluster.slot
        if slot is None:
            raise ProtocolError(NO_LEASE, ErrorCode.NODE_UNAVAILABLE)
        try:
            await self.cluster.table.session_started(session, self.cluster.node_id, slot)
        except DATABASE_TROUBLE as exc:
            raise AuditWriteError(f"the cluster database is unreachable: {exc}") from exc

    async def _cluster_session_over(self, session: str) -> None:
        assert self.cluster is not None
        try:
            await self.cluster.table.session_over(session)
        except DATABASE_TROUBLE as exc:
            # Left in the table: the leader records it in node_lost should
            # this node die; harmless otherwise.
            log.warning("could not note the end of a session in the node table: %s", exc)

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
                    printable(engineer.name), misses, minutes, printable(engineer.name),
                    extra={"scope": scope, "engineer": printable(engineer.name),
                           "misses": misses, "window_minutes": minutes})
            else:
                log.warning(
                    "join limit: %d joins from one source address found no waiting customer "
                    "within %d minutes, the last by engineer %s; joins from it by engineers "
                    "who missed are refused for a while - see "
                    "`consentry-broker audit list --type join_limit_reached`",
                    misses, minutes, printable(engineer.name),
                    extra={"scope": scope, "engineer": printable(engineer.name),
                           "misses": misses, "window_minutes": minutes})
            # Bounded: once per window per registered account or address.
            await self.audit_quietly(
                "join_limit_reached", actor=engineer.name,
                body={"scope": scope, "misses": misses, "window_minutes": minutes})

    async def record_join_failure(self, engineer: Engineer, reason: str) -> None:
        """Folded per engineer (`broker.failures`): a sweep is a few events
        with counts, not one per miss."""
        await self._note_failure(self.join_failures, join_event, engineer.name, None, reason)

    async def login(self, ws: ServerConnection, lobby: Lobby) -> Engineer:
        hello = await recv_control(ws, lobby)
        user = hello["user"]
        # No lockout: whatever failed before, a correct signature gets in.
        nonce = os.urandom(NONCE_BYTES)
        await ws.send(encode("challenge", nonce=b64encode(nonce)))
        proof = await recv_control(ws, lobby)
        try:
            engineer = await self.registry.get(user)
        except RegistryError as exc:
            raise AuditWriteError(f"the registry is unavailable: {exc}") from exc
        signature = b64decode(proof["signature"])
        # One message for unknown user and wrong key: no probing the registry.
        if engineer is None or not verify_login(engineer.public_key, user, nonce, signature):
            await self.record_login_failure(ws, user, "unknown_user_or_key")
            raise ProtocolError(
                "login refused: this user is not registered with the broker, or the key "
                "does not match the one registered", ErrorCode.LOGIN_FAILED,
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
        if self.login_counts is not None:
            # Behind a balancer a guesser would get each node's free tries
            # anew: the count that sets the delay is the cluster's.
            try:
                worst = await self.login_counts.failed(source, user, utcnow())
            except RegistryError as exc:
                log.warning("failed logins not counted cluster-wide: %s", exc)
            else:
                delay = max(delay, self.login_throttle.delay_for(worst))
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

    async def audit_quietly(self, event: str, **fields: Any) -> None:
        """For events recorded while tearing down: a failure is logged, not raised,
        because there is nothing left to refuse. `fields` are `AuditLog.append`'s."""
        try:
            await self.audit.append(event, now=utcnow(), **fields)
        except AuditError as exc:
            log.error("could not record %s: %s", event, exc)

    async def shutdown(self) -> None:
        if self._failure_flusher is not None:
            self._failure_flusher.cancel()
        await self.flush_failures(drain=True)
        for session in list(self.sessions.values()):
            await session.shutdown()
        for link in list(self.agents.values()):
            await close_quietly(link.ws, "broker shutting down")


NO_LEASE = ("this support server node has lost its place in the cluster (its lease on "
            "the shared database lapsed), so it issues no codes and takes no joins; "
            "try again")


def _peer(ws: ServerConnection) -> str:
    # Behind a trusted balancer, the client its PROXY header named
    # (broker.listener.AdmittedConnection.remote_address).
    addr = ws.remote_address
    return str(addr[0]) if addr else "unknown"


def _announce(config: BrokerConfig, message: str, **fields: object) -> None:
    """What the operator watches for (listening, shutting down): a plain line
    on stdout for a person, a log record like any other in JSON."""
    if config.log_format == "json":
        log.info(message, extra=fields)
    else:
        print(f"consentry-broker: {message}", flush=True)


async def _join_cluster(config: BrokerConfig, broker: Broker) -> ClusterNode | None:
    """With --database-url: this node's slot, claimed before anyone is served
    (none free: it serves, says 503 on /healthz, and keeps trying)."""
    if config.database_url is None or config.node_url is None:
        return None
    try:
        cluster = await ClusterNode.open(config.database_url, config.node_url,
                                         config.node_lease_seconds)
    except DATABASE_TROUBLE as exc:
        raise ConfigError(f"cannot reach the cluster database: {exc}") from None
    broker.join_cluster(cluster)
    try:
        await cluster.membership.join()
    except DATABASE_TROUBLE as exc:
        await cluster.close()
        raise ConfigError(f"cannot claim a slot in the cluster database: {exc}") from None
    except BaseException:
        await cluster.close()
        raise
    return cluster


async def run_broker(config: BrokerConfig, *, ready: Callable[[int], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then end every session cleanly."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)
    tls = server_tls(config.cert, config.key)
    check_retention(config.pii_retention_days, config.event_retention_days)
    audit = await open_store(
        config.data_dir, database_url=config.database_url,
        max_bytes=None if config.audit_max_mb is None else config.audit_max_mb * 1024 * 1024,
    )
    # In a cluster only the leader writes checkpoints (a job of `cluster.lead`
    # below); every node holds the log against them first.
    clustered = config.database_url is not None and config.node_url is not None
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
        if clustered:
            await checkpointer.check()
        else:
            await checkpointer.start()
    except BaseException:
        if shipper is not None:
            await shipper.stop(0)
        await audit.close()
        raise
    try:
        # Before anyone is served: sessions and agents a crashed run left open
        # are closed in the log (reason broker_crashed), and this run begins.
        # (SQLite statements: on PostgreSQL the cluster's leader closes a
        # dead node's sessions instead, node_lost.)
        if isinstance(audit, AuditLog):
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
    broker.checkpoints = checkpointer  # consent receipts sealed back to agents
    try:
        cluster = await _join_cluster(config, broker)
        if cluster is not None:
            # Engineers, device bindings and failed logins are the cluster's.
            broker.registry = PgRegistry(cluster.pool)
            broker.login_counts = PgLoginCounts(
                cluster.pool, dt.timedelta(seconds=limits.LOGIN_WINDOW_SECONDS))
    except BaseException:
        await checkpointer.stop()
        if shipper is not None:
            await shipper.stop()
        await audit.close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Retention runs now and then hourly, beside the sessions; its events go
    # through the same log (and checkpoints) as theirs.
    def retain() -> Coroutine[Any, Any, None]:
        return retention_loop(
            audit, signing_key=load_or_create_signing_key(config.data_dir),
            pii_days=config.pii_retention_days, event_days=config.event_retention_days,
            interval=config.retention_interval)

    retention: asyncio.Task[None] | None = None
    if cluster is None:
        retention = asyncio.create_task(retain())
    else:
        # Cluster-wide jobs run on the one node that holds the leader lock.
        table = cluster.table
        grace = cluster.lease_seconds
        cluster.lead([retain, checkpointer.lead,
                      lambda: lost_nodes_loop(table, audit, grace=grace,
                                              every=min(5.0, grace / 3))])
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
            proxy_protocol_from=config.proxy_protocol_from,
        ) as server:
            keepalive = asyncio.create_task(sweep_forever(
                lambda: server.connections, interval=config.timeouts.ping_interval,
                timeout=config.timeouts.ping_timeout))
            listening = True
            port = next(iter(server.sockets)).getsockname()[1]
            _announce(config, f"listening on wss://{config.host}:{port} "
                              f"(data in {config.data_dir})",
                      host=config.host, port=port, data_dir=str(config.data_dir))
            if ready is not None:
                ready(port)
            await stop.wait()
            _announce(config, "shutting down")
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
        if retention is not None:
            retention.cancel()  # a purge already started finishes first
            with contextlib.suppress(asyncio.CancelledError):
                await retention
        if cluster is not None:
            await cluster.close()  # the slot is free at once
        # After the last session_ended: a final checkpoint (in a cluster, the
        # leader's job wrote it as `cluster.close` ended the job).
        await checkpointer.stop()
        if shipper is not None:
            await shipper.stop()  # after the final checkpoint, so it is shipped too
        await audit.close()
