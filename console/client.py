"""The console's broker client: log in, join with a code, pair, wait for
consent, and hand back a session ready for SSH; ask for control during a
session; and, for admins, read the audit log. No UI in here: progress is
reported through callbacks, so the plain terminal and the TUI share it.

Everything a broker or customer sent (aliases, names, audit events) is
untrusted text: pass it through `broker.wire.text.printable` before showing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from broker.client.handshake import HandshakeRun
from broker.client.link import BrokerLink, LinkError, open_link
from broker.client.relay import LinkEvent, Resumption, SSHRelay
from broker.cluster.urls import node_url_problem
from broker.wire import limits
from broker.wire.code import JoinCode
from broker.wire.codes import EndReason, Right
from broker.wire.errors import ProtocolError, WireError
from broker.wire.limits import SSH_CIPHERS
from broker.wire.login import login_payload
from broker.wire.machine.handshake import (
    MAX_CONSENT_WAIT,
    STEP_TIMEOUT,
    ConsoleSide,
    Established,
    Failed,
    Handshake,
    Joined,
    Paired,
    Refused,
    Source,
)
from broker.wire.messages import AUDIT_FILTERS, Message, b64decode, b64encode, validate
from broker.wire.resume.proof import ResumeKey
from broker.wire.text import printable
from console.errors import (
    BrokerError,
    BrokerShutdown,
    ConsoleError,
    JoinRefused,
    KeyMismatch,
    LinkLost,
    NotApproved,
    SessionFull,
    UsageError,
    WrongCode,
)
from console.format import granted_text
from console.identity import Identity
from console.roster import Roster
from console.status_line import CONNECTING, CONNECTING_TEXT, Progress

HANDSHAKE_TIMEOUT = STEP_TIMEOUT  # each step of the login, as of the join
# An audit page from a large log is still one indexed query on the broker.
AUDIT_TIMEOUT = 60.0
# A verify reads the whole log (a million events take a minute or so).
VERIFY_TIMEOUT = 15 * 60.0
DEFAULT_AUDIT_LIMIT = 50
# End reasons that are the broker's failure, not anyone's choice: exit 4.
BROKER_FAILURES = frozenset({EndReason.BROKER_SHUTDOWN, EndReason.AUDIT_UNAVAILABLE,
                             EndReason.PROTOCOL_ERROR})
# End reasons, while the customer is being asked, that mean they withdrew
# (quit the agent, or ended it from its menu): not approved, exit 7.
CUSTOMER_WITHDREW = frozenset({EndReason.AGENT_QUIT, EndReason.CUSTOMER_ENDED})


REMOVED_TEXT = ("The customer removed you from the session; it goes on for the others, and "
                "only the customer can let you back in (with a new code).")
SESSION_FULL_TEXT = (f"the session already has {limits.MAX_ENGINEERS_PER_SESSION} engineers, "
                     "the most one session may have; the customer was not asked. Ask them to "
                     "remove one, or to start a new session for you")


SHUTDOWN_TEXT = ("the broker shut down or restarted, so the session is over (nothing is left "
                 "running on the customer's computer); once the broker is back, ask the "
                 "customer for the new code on their screen and join again")


class Forbidden(BrokerError):
    """The broker refused a request this engineer's role does not allow
    (the audit log is for admins only). The broker has closed the link."""


@dataclass(eq=False)
class JoinedSession:
    """A consented session: the relay link and what pairing established."""

    link: BrokerLink
    session: str
    alias: str
    sas: str
    host_key: asyncssh.SSHKey
    granted: tuple[str, ...]
    identity: Identity
    on_control: list[Callable[[Message], Awaitable[None]]] = field(default_factory=list)
    ended: Message | None = None
    # Who is in the session, once it has had a second engineer: the latest
    # `roster` (None for a session nobody else ever joined). `on_roster`
    # handlers hear each new one, after `roster` is updated.
    roster: Roster | None = None
    on_roster: list[Callable[[Roster], Awaitable[None]]] = field(default_factory=list)
    # Surviving a dropped link: the pairing's resume key, how to log in
    # again, and who hears the link's state ("reconnecting", "resumed").
    resume_key: ResumeKey | None = None
    reconnect: Callable[[], Awaitable[BrokerLink]] | None = None
    on_link: list[Callable[[LinkEvent], None]] = field(default_factory=list)
    link_failure: str | None = None

    @property
    def control(self) -> bool:
        return Right.CONTROL in self.granted

    @property
    def files(self) -> bool:
        return Right.FILES in self.granted

    async def _dispatch(self, msg: Message) -> None:
        # `control_result` carries the rights in force after a request for
        # control ("granted", "denied", "timeout" by the customer, or
        # "unchanged" when there was nothing to ask), `rights` a narrowing.
        if msg.type in ("rights", "control_result"):
            self.granted = tuple(msg["granted"])
        elif msg.type in ("ended", "error"):
            self.ended = msg
        elif msg.type == "roster":
            self.roster = Roster.from_message(msg)
            for listener in self.on_roster:
                await listener(self.roster)
        for handler in self.on_control:
            await handler(msg)

    @property
    def removed(self) -> bool:
        """The customer removed this engineer (the session goes on for the others)."""
        return (self.ended is not None and self.ended.type == "ended"
                and self.ended["reason"] == EndReason.ENGINEER_REMOVED)

    def relay(self) -> SSHRelay:
        """The relay that carries this session's SSH bytes; its control frames
        (rights, roster, `ended`) come to this session. One per session.
        With a resume key it reconnects after a drop and resumes."""
        resumption = None
        if self.resume_key is not None and self.reconnect is not None:
            resumption = Resumption(key=self.resume_key, side="console",
                                    reconnect=self.reconnect, on_event=self._link_event)
        return SSHRelay(self.link, self._dispatch, resumption)

    def _link_event(self, event: LinkEvent) -> None:
        if event.kind == "gave_up":
            self.link_failure = event.text
        for listener in self.on_link:
            listener(event)

    async def open_ssh(self) -> tuple[asyncssh.SSHClientConnection, asyncio.Task[None]]:
        """SSH to the agent over the relay, its host key pinned from pairing."""
        relay = self.relay()
        try:
            conn = await asyncssh.connect(
                host="consentry-agent", tunnel=relay, username=self.identity.user,
                client_keys=[self.identity.keypair], agent_path=None, config=None,
                known_hosts=([self.host_key], [], []), preferred_auth="publickey",
                encryption_algs=list(SSH_CIPHERS), keepalive_interval=0, connect_timeout=30,
                window=limits.SSH_WINDOW,
            )
        except (OSError, asyncssh.Error) as exc:
            relay.task.cancel()
            raise BrokerError(f"the secure shell to the customer failed: {exc}") from exc
        return conn, relay.task

    async def request_control(self, right: str = Right.CONTROL) -> None:
        """Ask the customer to let the engineer type (or, with `right`
        files, copy files).

        Returns once the request is sent; the answer arrives later as a
        `control_result` message to the `on_control` handlers (after
        `granted` is updated), so call this only once `open_ssh` runs the
        relay. Asking while control is granted or a request is pending is
        answered "unchanged" by the broker.
        """
        what = "file transfer" if right == Right.FILES else "control"
        try:
            await self.link.send("request_control", right=str(right))
        except ConnectionClosed as exc:
            raise BrokerError(f"the session has ended, so {what} cannot be requested") from exc

    def outcome(self, *, left: bool) -> str:
        """How the session ended, in words, once it has: the broker's `ended`
        (the customer, the shell, a time limit...), or "You left" only if the
        engineer really left. Raises `BrokerError` when the broker ended it
        for a failure of its own or sent an error, `LinkLost` when the link
        broke with no word from the broker (a crash, a network failure)."""
        ended = self.ended
        if ended is None:
            if left:
                return "You left the session."
            if self.link_failure is not None:
                raise LinkLost(printable(self.link_failure, 300))
            raise LinkLost("the connection to the broker was lost; the session is over "
                           "(the customer's computer ends it too)")
        message = printable(ended["message"], 200)
        if ended.type == "ended" and ended["reason"] == EndReason.BROKER_SHUTDOWN:
            raise BrokerShutdown(SHUTDOWN_TEXT)
        if self.removed:
            # The broker's words are the customer's view ("removed the
            # engineer"); said to the engineer, it is "you". Exit 0: an end
            # the customer chose, like any other.
            return REMOVED_TEXT
        if ended.type == "error" or ended["reason"] in BROKER_FAILURES:
            raise BrokerError(message)
        return message

    async def leave(self) -> None:
        with contextlib.suppress(Exception):
            await self.link.send("end", reason=EndReason.ENGINEER_LEFT)
        await self.link.close()


class ConsoleClient:
    """Talks to one broker as one engineer."""

    def __init__(self, broker_url: str, ca: Path, identity: Identity, *,
                 follow_moves: bool = True) -> None:
        self.broker_url = broker_url
        # A join answered `moved` (a cluster node that does not hold the
        # code) is made again at the node named, once: never a loop.
        self.follow_moves = follow_moves
        self.ca = ca
        self.identity = identity
        self.display = identity.user
        self.role = ""
        # One logged-in link for login checks and audit reads, reused across
        # queries (the broker keeps it open between them) and reopened when
        # the broker has closed it; the lock keeps one request on it at a time.
        self._admin: BrokerLink | None = None
        self._admin_lock = asyncio.Lock()

    async def connect(self, *, max_size: int = limits.MAX_FRAME, session: bool = False,
                      opened: BrokerLink | None = None) -> BrokerLink:
        """A new logged-in connection (each join has its own: a `session` one),
        or log in on `opened`, a link already open to this broker."""
        try:
            return await self._logged_in(max_size, session=session, opened=opened)
        except LinkError as exc:
            raise BrokerError(str(exc)) from exc

    async def reconnect(self) -> BrokerLink:
        """A fresh logged-in link to resume a session on; `LinkError` (with
        its code: unreachable, login_failed...) when there is none to be had."""
        return await self._logged_in(limits.MAX_FRAME, session=True)

    async def _logged_in(self, max_size: int, *, session: bool = False,
                         opened: BrokerLink | None = None) -> BrokerLink:
        link = opened or await open_link(self.broker_url, "/v1/console", self.ca,
                                         max_size=max_size, session=session)
        try:
            await link.send("login", user=self.identity.user)
            challenge = await link.expect("challenge", timeout=HANDSHAKE_TIMEOUT)
            nonce = b64decode(challenge["nonce"])
            signature = await self.identity.sign(login_payload(self.identity.user, nonce))
            await link.send("login_proof", signature=b64encode(signature))
            ok = await link.expect("login_ok", timeout=HANDSHAKE_TIMEOUT)
        except ConnectionClosed as exc:
            await link.close()
            raise LinkError(f"the broker closed the connection: {exc}", "closed") from exc
        except WireError as exc:
            await link.close()
            raise LinkError(str(exc), "protocol") from exc
        except LinkError:
            await link.close()
            raise
        self.display, self.role = ok["display"], ok["role"]
        return link

    async def join(
        self, code: JoinCode, wants: tuple[str, ...],
        on_progress: Callable[[Progress], None] = lambda _p: None, *,
        opened: BrokerLink | None = None,
    ) -> JoinedSession:
        """`opened`: a session link already open to this broker (the plain
        join opens it while it loads the rest of itself), else a new one."""
        if opened is None:
            on_progress(Progress(CONNECTING, CONNECTING_TEXT))
        link = await self.connect(session=True, opened=opened)
        on_progress(Progress("logged_in", f"Logged in as {self.display} ({self.role})."))
        run = HandshakeRun(link, Handshake(ConsoleSide(wants, self.identity.public_line), code))
        try:
            return await self._join(run, on_progress)
        except _Moved as moved:
            await link.close()
            return await self._join_at(moved.url, code, wants, on_progress)
        except BaseException as exc:
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
                # The engineer gave up (Ctrl-C): said as such, so the customer's
                # prompt closes as withdrawn at once, not as a lost connection.
                with contextlib.suppress(Exception):
                    await run.perform(run.handshake.withdraw(EndReason.ENGINEER_LEFT))
            await link.close()
            raise

    async def _join_at(self, url: str, code: JoinCode, wants: tuple[str, ...],
                       on_progress: Callable[[Progress], None]) -> JoinedSession:
        """Join again at the node a `moved` answer named: a wss:// URL only,
        verified against the same CA, and no further move."""
        problem = node_url_problem(url)
        if problem is not None:
            raise BrokerError(f"the broker sent this join to an address that is not "
                              f"acceptable ({printable(url, 80)} {problem}); tell the "
                              "broker's operator")
        if not self.follow_moves:
            raise BrokerError("the broker node this join was sent to sent it on again "
                              f"(to {printable(url, 80)}); the cluster's nodes disagree "
                              "about who holds the code: tell the broker's operator")
        on_progress(Progress("moved", f"The code is held by node {printable(url, 80)}; "
                                      "connecting there..."))
        node = ConsoleClient(url, self.ca, self.identity, follow_moves=False)
        return await node.join(code, wants, on_progress)

    async def _join(self, run: HandshakeRun,
                    on_progress: Callable[[Progress], None]) -> JoinedSession:
        """The shared handshake, console side: join, pair, wait for consent."""
        link = run.link
        await run.start()
        alias, host_key, waiting = "", None, False
        while True:
            event = await run.next_event()
            if isinstance(event, Joined):
                alias = event.alias
                on_progress(Progress("pairing", "Pairing with the customer's computer..."))
            elif isinstance(event, Paired):
                try:
                    host_key = asyncssh.import_public_key(event.peer_key)
                except (asyncssh.KeyImportError, ValueError) as exc:
                    raise BrokerError(f"pairing failed: the customer's host key is not "
                                      f"usable: {exc}") from exc
                waiting = True
                timeout = event.consent_timeout or MAX_CONSENT_WAIT
                on_progress(Progress(
                    "waiting", f"Paired with {alias}. Pairing fingerprint {event.sas} "
                    "(the customer sees the same). Waiting for the customer to approve...",
                    deadline=time.monotonic() + min(timeout, MAX_CONSENT_WAIT),
                ))
            elif isinstance(event, Established):
                assert host_key is not None and run.handshake.session is not None
                on_progress(Progress("approved", "Approved: " + granted_text(event.granted) + "."))
                return JoinedSession(
                    link=link, session=run.handshake.session, alias=alias,
                    sas=run.handshake.sas or "", host_key=host_key, granted=event.granted,
                    identity=self.identity, resume_key=run.handshake.resume_key(),
                    reconnect=self.reconnect,
                )
            elif isinstance(event, Refused):
                reason = ("did not answer in time" if event.decision == "timeout"
                          else "declined the request")
                raise NotApproved(f"the customer {reason}")
            elif isinstance(event, Failed):
                if event.source is Source.MOVED:
                    raise _Moved(event.message)
                raise join_failure(event, waiting=waiting)


    # -- login check and the admin audit API ----------------------------------

    async def login_check(self) -> tuple[str, str]:
        """Log in and return (display name, role) as the broker knows them.

        For an admin the link stays open for the audit reads that follow;
        anyone else's is closed. Raises `BrokerError` if the broker cannot be
        reached or trusted, or refuses the login.
        """
        async with self._admin_lock:
            await self._close_admin()  # a fresh login, not a kept link's old answer
            await self._admin_link()
            if self.role != "admin":
                await self._close_admin()
        return self.display, self.role

    async def audit_query(self, **filters: Any) -> tuple[list[dict[str, Any]], bool]:
        """One page of audit events, newest first, and whether more remain.

        Filters (all optional): ``since`` / ``until`` (ISO 8601 text or an
        aware datetime; since inclusive, until exclusive), ``engineer``,
        ``alias`` (the device alias, exact but case-insensitive: every event
        of the matching devices), ``type`` (or ``event_type``), ``session``,
        ``before_seq`` (the smallest seq of the previous page, to page on),
        ``limit`` (1..200, default 50). Each event is a dict with seq, time,
        type, session, actor, subject (a pseudonym), alias, ip, body.
        Admins only: anyone else gets `Forbidden` (and the broker logs it).
        """
        fields = _audit_fields(filters)
        reply = await self._admin_request("audit_query", "audit_page", fields)
        return list(reply["events"]), bool(reply["more"])

    async def audit_session(self, session: str) -> list[dict[str, Any]]:
        """Every event of one session, oldest first; consent events carry the
        customer's signed receipt as ``receipt`` (a dict) while it is held.

        A session with more events than one reply holds (500) returns the
        first ones. Admins only, like `audit_query`.
        """
        reply = await self._admin_request("audit_session_query", "audit_session",
                                          {"session": session})
        return list(reply["events"])

    async def audit_verify(self) -> dict[str, Any]:
        """Have the broker check the whole log (hash chain, signed checkpoints,
        purge records): ``{"ok": bool, "summary": str, "first_bad_seq": int |
        None}``. The check reads every event, so allow it minutes on a long
        log. Admins only, like `audit_query`; the broker logs each run.
        """
        reply = await self._admin_request("audit_verify", "audit_verify_result", {},
                                          timeout=VERIFY_TIMEOUT)
        return {"ok": bool(reply["ok"]), "summary": str(reply["summary"]),
                "first_bad_seq": reply.get("first_bad_seq")}

    async def close(self) -> None:
        """Close the link kept for audit reads, if any."""
        async with self._admin_lock:
            await self._close_admin()

    async def _admin_link(self) -> BrokerLink:
        link = self._admin
        if link is None or link.ws.state is not State.OPEN:
            await self._close_admin()
            link = self._admin = await self.connect(max_size=limits.MAX_ADMIN_FRAME)
        return link

    async def _close_admin(self) -> None:
        link, self._admin = self._admin, None
        if link is not None:
            await link.close()

    async def _admin_request(self, msg_type: str, reply_type: str,
                             fields: dict[str, Any], *,
                             timeout: float = AUDIT_TIMEOUT) -> Message:
        async with self._admin_lock:
            for attempt in range(2):
                fresh = self._admin is None
                link = await self._admin_link()
                try:
                    await link.send(msg_type, **fields)
                    return await link.expect(reply_type, timeout=timeout)
                except ProtocolError as exc:
                    await self._close_admin()
                    raise BrokerError(f"the broker sent something unexpected: {exc}") from exc
                except (LinkError, ConnectionClosed) as exc:
                    await self._close_admin()
                    code = exc.code if isinstance(exc, LinkError) else "closed"
                    if code == "forbidden":
                        raise Forbidden(str(exc)) from exc
                    # A kept link the broker closed while idle: once more, afresh.
                    if attempt == 0 and not fresh and code in ("closed", "timeout"):
                        continue
                    raise BrokerError(str(exc)) from exc
        raise AssertionError("unreachable")  # pragma: no cover


class _Moved(Exception):
    """Inside `ConsoleClient.join`: the node sent the join to `url`."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def join_failure(failed: Failed, *, waiting: bool) -> ConsoleError:
    """The console's error, and so its exit code, for a join that failed;
    `waiting`: it failed while the customer was being asked."""
    reason = failed.reason
    if reason == "wrong_code":
        if failed.source is Source.LOCAL:  # the agent's side did not open: not this code
            return WrongCode("the code did not match; ask the customer for the new code")
        return WrongCode("the code did not match. It is now used up: ask the customer for the "
                         "new code on their screen")
    if reason == "key_mismatch":
        return KeyMismatch(
            "the customer's computer refused this console's key: it did not match the key the "
            "broker announced for you (possible interception between you and the broker). The "
            "code was right; tell the customer, and do not retry until the connection is "
            "checked")
    if reason == "broker_shutdown":
        return BrokerShutdown(SHUTDOWN_TEXT)
    if failed.source is Source.ERROR:
        # Refused before it reached a customer: no such code, too many codes
        # that found nobody (the join limits), or a shared session already
        # at its limit of engineers: a join refusal, exit 5.
        if reason in ("unknown_code", "rate_limited"):
            return JoinRefused(failed.message)
        if reason == "session_full":
            return SessionFull(SESSION_FULL_TEXT)
        return BrokerError(f"the broker refused: {failed.message}")
    if waiting and failed.source is Source.ENDED and reason in CUSTOMER_WITHDREW:
        return NotApproved("the customer closed the support program before answering, so "
                           "there is no request left to approve; ask them to start it again "
                           "and read you the new code")
    if failed.source is Source.LOCAL and reason not in ("timeout", "closed"):
        return BrokerError(f"pairing failed: {failed.message}")
    return BrokerError(failed.message)


def _audit_fields(filters: dict[str, Any]) -> dict[str, Any]:
    """An `audit_query`'s fields from the keyword filters, checked here so a
    mistake is a `UsageError` naming the filter rather than a broker refusal."""
    filters = dict(filters)
    if "type" in filters:
        # The frame's own `type` is its message type, so the wire says event_type.
        if "event_type" in filters:
            raise UsageError("give the event type as type or event_type, not both")
        filters["event_type"] = filters.pop("type")
    unknown = set(filters) - set(AUDIT_FILTERS) - {"limit"}
    if unknown:
        raise UsageError(f"unknown audit filter(s): {', '.join(sorted(unknown))}; known: "
                         "since, until, engineer, alias, type, session, before_seq, after_seq, "
                         "limit")
    fields = {k: v for k, v in filters.items() if v is not None and v != ""}
    for name in ("since", "until"):
        value = fields.get(name)
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                raise UsageError(f"{name} must be a timezone-aware time (UTC is fine)")
            fields[name] = value.astimezone(dt.UTC).isoformat()
    fields.setdefault("limit", DEFAULT_AUDIT_LIMIT)
    try:
        validate("audit_query", fields)
    except ProtocolError as exc:
        raise UsageError(str(exc).replace("audit_query.", "audit filter ")) from exc
    return fields
