"""The agent's I/O driver: wait at the broker, pair, ask, serve, mirror.

One control connection waits for engineers. Each join gets its own session
connection and runs: SPAKE2 pairing with the local secret, the key exchange
under the PAKE key, the customer's decision, a signed receipt, and — only if
granted and only after the broker confirms it recorded the receipt — an SSH
server over the relay whose output is mirrored on the customer's terminal.

During a view-only session the engineer may ask for control: the broker
forwards `control_request`, which means only "ask the customer". The
customer is asked again (or, on a computer that allows view only, the
request is refused at once), a new receipt is signed, kept and sent, and the
engineer's keystrokes pass only once the broker confirms it recorded a grant.

Several engineers: while a session runs the customer may ask for a code for
one more engineer (`invite` on the session's connection; the broker answers
with an `invitation`'s nameplate and the agent draws the secret digits, so
only a customer who reads the code out can add anyone). That engineer's
`join_request` carries the running session's id; it pairs and is asked about
exactly as the first, on a session connection of its own (a *seat*), and a
grant gives them their own SSH connection to the same shell
(`agent.sshd.SharedShell`). Each seat has its own rights and receipt; the
customer can take control from one or remove one, and ending ends all.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import platform
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import asyncssh
from websockets.exceptions import ConnectionClosed

from agent.chat import ChatRoom
from agent.config import AgentConfig
from agent.consent import DENY, ConsentRequest, Decision, allowed
from agent.errors import BrokerLost
from agent.identity import DeviceIdentity
from agent.link_notice import link_notice
from agent.liveness import Heartbeat, InputGuard
from agent.screen import Viewer
from agent.sshd import Gate, Services, SharedShell, serve_shell
from agent.transfers.disk import Roots
from agent.transfers.hub import TransferHub
from agent.transfers.jail import Limits
from agent.transfers.server import Engineer
from agent.transfers.session import session_hub, sftp_factory
from agent.transfers.view import TransferView
from agent.ui import CustomerUI
from broker.client.handshake import HandshakeRun
from broker.client.link import BrokerLink, LinkError, open_link
from broker.client.relay import LinkEvent, Resumption, SSHRelay
from broker.cluster.urls import node_url_problem
from broker.wire.code import JoinCode, draw_secret
from broker.wire.codes import EndReason, ErrorCode, Right, upgrade_for
from broker.wire.errors import WireError
from broker.wire.limits import MAX_CHAT_LINES, MAX_ENGINEERS_PER_SESSION
from broker.wire.machine.handshake import (
    STEP_TIMEOUT,
    AgentSide,
    Established,
    Failed,
    Failure,
    Handshake,
    Paired,
    Refused,
    Sealed,
    Source,
)
from broker.wire.messages import Message, b64encode
from broker.wire.receipt import Receipt, sign_receipt
from broker.wire.resume.proof import ResumeKey
from broker.wire.text import printable

log = logging.getLogger("consentry.agent")

HANDSHAKE_TIMEOUT = STEP_TIMEOUT  # also how long a grant of control waits for the broker
# Link failures worth retrying once registered: the broker went away or is
# temporarily unable to record sessions, or pacing registrations from this
# address. Anything else (untrusted certificate, protocol refusal) needs a person.
_RETRY_CODES = frozenset({"closed", "unreachable", ErrorCode.TIMEOUT,
                          ErrorCode.AUDIT_UNAVAILABLE, ErrorCode.RATE_LIMITED,
                          ErrorCode.NODE_UNAVAILABLE})
_MAX_RETRY_DELAY = 30.0
# How long to wait for the broker to say why, when the engineer's SSH closes.
_ENDED_GRACE = 5.0
_KEEP_CODES = 4  # codes remembered for joins that race a fresh nameplate
# How long the broker has to answer `confirm_live` before held input is discarded.
LIVENESS_TIMEOUT = 10.0
# The dropped-input and chat totals go to the broker at most this often (and
# before `end`): the first change at once, so a session that ends within the
# interval, by the engineer leaving, still has its totals recorded.
DROPPED_REPORT_INTERVAL = 1.0




@dataclass(eq=False)
class ActiveSession:
    """One engineer's seat in a running session."""

    id: str
    link: BrokerLink
    viewer: Viewer
    gate: Gate
    request: ConsentRequest  # what the customer approved, for asking again
    conn: asyncssh.SSHServerConnection | None = None
    ended_by: str | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    # A request for control is being answered (the prompt, then the broker).
    asking: bool = False
    # Set while a granted upgrade awaits the broker's `control_result`.
    confirm: asyncio.Future[tuple[str, ...]] | None = None
    # Bumped when the customer takes control back: a grant still waiting for
    # the broker's confirmation then never opens the gate.
    epoch: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # Pending `confirm_live` questions by id: True on `live`, False on the end.
    live_checks: dict[int, asyncio.Future[bool]] = field(default_factory=dict)
    next_check: int = 0
    reported_dropped: int = 0
    # Chat lines (counts only, for the audit): this seat's engineer's, and the
    # customer's while this seat was connected; the last totals reported.
    chat_engineer: int = 0
    chat_customer: int = 0
    reported_chat: tuple[int, int] = (0, 0)
    report: asyncio.TimerHandle | None = None
    reported_at: float | None = None  # when the totals last went (loop time)
    # The key of this seat (in `Agent.sessions` and on the customer's banner).
    seat: str = ""
    # Set while this seat's `invite` awaits the broker's `invitation`.
    inviting: bool = False
    relay: SSHRelay | None = None

    def settle_checks(self, live: bool, check: int | None = None) -> None:
        for key in [check] if check is not None else list(self.live_checks):
            future = self.live_checks.pop(key, None) if key is not None else None
            if future is not None and not future.done():
                future.set_result(live)


def _same_key(a: str, b: str) -> bool:
    try:
        first, second = asyncssh.import_public_key(a), asyncssh.import_public_key(b)
    except (asyncssh.KeyImportError, ValueError):
        return False
    return bool(first.public_data == second.public_data)


class Agent:
    def __init__(self, config: AgentConfig, identity: DeviceIdentity,
                 screen: CustomerUI) -> None:
        self.config = config
        self.identity = identity
        self.screen = screen
        self.codes: OrderedDict[str, JoinCode] = OrderedDict()
        # Every engineer's seat, by seat key (the session id for the first).
        self.sessions: dict[str, ActiveSession] = {}
        # The running sessions: their one shell, shared by their seats.
        self.shells: dict[str, RunningSession] = {}
        # Codes the customer made for one more engineer, by nameplate.
        self.invites: dict[str, Invite] = {}
        self._seat_count = 0
        self.registered = False  # once true, a lost broker is retried, not fatal
        # Set while the "lost the support service" notice is up: the first new
        # code replaces it, so the screen never says "retrying" once it is back.
        self.reconnecting = False
        # Joins still pairing or asking the customer (not yet serving): the
        # customer quitting withdraws them at once, for the engineer too.
        self.joining: set[asyncio.Task[None]] = set()
        screen.on_end_all = self.end_all
        screen.on_view_only = self.view_only
        screen.on_remove = self.remove
        screen.on_invite = self.invite
        screen.on_customer_input = self.customer_typed
        # What the customer sees of file transfers, in every running session.
        self.transfer_view = TransferView(screen, config.state_dir)
        screen.on_cancel_transfers = self.transfer_view.cancel
        screen.on_files = lambda: self._show_files()
        screen.on_chat_send = self.customer_chat

    async def run(self) -> None:
        """Wait for engineers until the customer quits (Ctrl-C).

        A broker that cannot be reached or trusted at start is an error. Once
        registered, a lost connection is retried with backoff; sessions already
        running have their own connections and carry on meanwhile.
        """
        try:
            async with asyncio.TaskGroup() as sessions:
                await self._stay_connected(sessions)
        except* BrokerLost as group:
            raise group.exceptions[0] from None

    async def _stay_connected(self, sessions: asyncio.TaskGroup) -> None:
        quit_task = asyncio.ensure_future(self.screen.quit.wait())
        delay = 1.0
        while not self.screen.quit.is_set():
            try:
                await self._wait_for_engineers(sessions, quit_task)
                break  # the customer quit
            except LinkError as exc:
                if not self.registered or exc.code not in _RETRY_CODES:
                    raise BrokerLost(str(exc)) from None
                self.codes.clear()
                self.reconnecting = True
                self.screen.set_code(None, 0)
                # Reachable but unable to record sessions is not "lost": say
                # which, and give the broker's whole sentence.
                what = ("The support service cannot start sessions right now"
                        if exc.code == "audit_unavailable" else "Lost the support service")
                self.screen.notice(
                    f"{what} ({printable(exc, 240)}); retrying in {delay:.0f} s. Ctrl-C quits."
                )
                await asyncio.wait([quit_task], timeout=delay)
                delay = min(delay * 2, _MAX_RETRY_DELAY)
        quit_task.cancel()
        for task in list(self.joining):
            task.cancel()
        await self._end_everything(EndReason.AGENT_QUIT)

    async def _wait_for_engineers(self, sessions: asyncio.TaskGroup,
                                  quit_task: asyncio.Future[Literal[True]]) -> None:
        control = await open_link(self.config.broker, "/v1/agent", self.config.ca)
        hello: dict[str, str] = {
            "device_id": self.identity.device_id,
            "device_key": b64encode(self.identity.public_key),
            "alias": self.config.alias,
        }
        if self.config.share_hostname:
            hello["hostname"] = platform.node()[:255]
        if self.config.share_user:
            hello["os_user"] = getpass.getuser()[:64]
        try:
            await control.send("hello", **hello)
            listener = asyncio.ensure_future(self._listen(control, sessions))
            waiters: list[asyncio.Future[Any]] = [listener, quit_task]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if not listener.done():
                listener.cancel()
                return
            listener.result()  # raises the LinkError that ended it
        finally:
            await control.close()

    async def _listen(self, control: BrokerLink, group: asyncio.TaskGroup) -> None:
        while True:
            msg = await control.recv()
            if msg.type == "nameplate":
                # Registered only once the broker has accepted us (recorded the
                # connection, issued a code): a refusal of the very first hello
                # (a broker that cannot record sessions, say) ends the program
                # with the broker's reason, as an unreachable broker at start does.
                self.registered = True
                code = JoinCode(msg["nameplate"], draw_secret())
                self.codes[code.nameplate] = code
                while len(self.codes) > _KEEP_CODES:
                    self.codes.popitem(last=False)
                self.screen.set_code(str(code), msg["expires_in"])
                if self.reconnecting:
                    self.reconnecting = False
                    self._say_reconnected(code)
            elif msg.type == "join_request":
                if msg["session"] in self.shells:
                    # One more engineer for a running session: only with the
                    # code the customer made for it (the request names the
                    # session, and its nameplate may be the session's first).
                    claimed = self._claim_invite(msg["session"], msg["nameplate"])
                else:
                    claimed = self.codes.pop(msg["nameplate"], None)
                if claimed is not None:
                    task = group.create_task(self._join(msg, claimed))
                    self.joining.add(task)
                    task.add_done_callback(self.joining.discard)
            else:
                raise LinkError(f"the broker sent an unexpected {msg.type!r} message")

    def _say_reconnected(self, code: JoinCode) -> None:
        """The control connection is back with a new code. On the code screen
        the code itself is shown; during a session that screen is hidden (a
        session whose broker node died keeps retrying its own link), so the
        banner carries the code, first, where a narrow banner still shows it."""
        if self.sessions:
            self.screen.flash(f"New support code {code} (connected to the support service "
                              "again; the old code no longer works).")
        else:
            self.screen.flash("Connected to the support service again. The old "
                              "code no longer works; use the new one.")

    # -- one join -------------------------------------------------------------

    def _session_url(self, request: Message) -> str:
        """Where this join's session connection goes: a cluster node names
        itself (a balancer in front might pick another node); a URL that is
        not a plain wss://HOST:PORT is not followed."""
        node = request.get("node")
        if node and node_url_problem(node) is None:
            return str(node)
        return self.config.broker

    async def _join(self, request: Message, code: JoinCode) -> None:
        session_url = self._session_url(request)
        try:
            link = await open_link(session_url, "/v1/agent/session", self.config.ca,
                                            session=True)
        except LinkError as exc:
            self.screen.notice(f"A support engineer tried to connect, but: {exc}")
            return
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        side = AgentSide(
            session=request["session"], token=request["token"],
            engineer_key=request["engineer_key"],
            host_key=host_key.export_public_key("openssh").decode().strip(),
            # The console shows the customer's deadline, so it learns it here.
            consent_timeout=int(self.config.consent_timeout),
        )
        run = HandshakeRun(link, Handshake(side, code))
        try:
            await run.start()
            paired = await self._pair(run)
            if paired is None:
                return
            ask, decision = await self._consent(run, request, paired)
            outcome = await self._outcome(run)
            if isinstance(outcome, Refused):
                what = "did not answer in time" if decision.decision == "timeout" else "declined"
                self.screen.notice(
                    f"You {what}: {printable(request['engineer_display'], 40)} was not connected."
                )
                return
            if isinstance(outcome, Failed):
                if outcome.reason in _ENGINEER_GONE or outcome.reason == Failure.CLOSED:
                    raise _withdrawn(outcome)  # gone between the answer and the relay
                self.screen.notice(
                    f"The support connection ended: {printable(outcome.message, 160)}")
                return
            task = asyncio.current_task()
            if task is not None:
                self.joining.discard(task)  # from here on it ends as a session does
            await self._serve(link, request, host_key, ask, decision,
                              run.handshake.resume_key())
        except Withdrawn as exc:
            self.screen.notice(_withdrawn_text(exc, request["engineer_display"]))
        except LinkError as exc:
            self.screen.notice(f"The support connection ended: {printable(exc, 160)}")
        except (WireError, ConnectionClosed) as exc:
            self.screen.notice(f"The support connection ended: {printable(exc, 160)}")
        except asyncio.CancelledError:
            # The customer quit while this join was pairing or being asked:
            # the engineer hears it now, not when the prompt would have timed out.
            await _quietly(run.perform(run.handshake.withdraw(EndReason.AGENT_QUIT)))
            raise
        finally:
            await link.close()

    def _keep_seal(self, seq: int, checkpoint: str) -> None:
        """A `consent_sealed`: keep the checkpoint beside the receipt."""
        if not self.identity.keep_checkpoint(checkpoint, seq):
            log.warning("the broker's checkpoint for consent event %d was not a "
                        "checkpoint covering it; not kept", seq)

    async def _outcome(self, run: HandshakeRun) -> Established | Refused | Failed:
        """After the answer: the broker's confirmation (`relay_open`) or, after
        a refusal, its seal; the checkpoints that come meanwhile are kept."""
        while True:
            event = await run.next_event()
            if isinstance(event, Sealed):
                self._keep_seal(event.seq, event.checkpoint)
            elif isinstance(event, Established | Refused | Failed):
                return event

    async def _pair(self, run: HandshakeRun) -> Paired | None:
        """The shared handshake, agent side, up to the pairing: SPAKE2 with
        the local secret, then the key exchange under its key.

        Returns what pairing established, or None if it failed; a wrong code
        or an engineer key the broker did not announce spends the code (the
        handshake has told the broker) and the customer is warned.
        """
        event = await run.next_event()
        while not isinstance(event, Paired | Failed):
            event = await run.next_event()
        if isinstance(event, Paired):
            return event
        if event.source is Source.LOCAL and event.reason == Failure.WRONG_CODE:
            self.screen.notice(
                "Someone tried to connect with a wrong code. If you did not just read your "
                "code to an engineer, someone may be trying to intercept. "
                "The old code no longer works; a new one is shown above."
            )
        elif event.source is Source.LOCAL and event.reason == Failure.KEY_MISMATCH:
            self.screen.notice(
                "A connection was refused: the engineer's key did not match the one the "
                "support service announced (possible interception). A new code is shown."
            )
        elif event.reason in _ENGINEER_GONE:
            raise _withdrawn(event)
        else:
            self.screen.notice(f"The support connection ended: {printable(event.message, 160)}")
        return None

    async def _consent(self, run: HandshakeRun, request: Message,
                       paired: Paired) -> tuple[ConsentRequest, Decision]:
        """Ask the customer, sign the receipt, keep a copy, send it."""
        fingerprint = asyncssh.import_public_key(request["engineer_key"]).get_fingerprint("sha256")
        ask = ConsentRequest(
            session=request["session"], engineer_login=request["engineer_login"],
            engineer_display=request["engineer_display"], engineer_role=request["engineer_role"],
            key_fingerprint=fingerprint, wants=tuple(request["wants"]), sas=paired.sas,
            joining=self._connected_to(request["session"]),
        )
        prompt = asyncio.ensure_future(self.screen.ask_consent(
            ask, self.config.consent_timeout, self.config.max_rights))
        # The broker sends nothing more until the customer answers, unless the
        # join is over (the engineer gave up, the broker went away): then the
        # prompt closes at once instead of waiting for an answer nobody awaits.
        news = asyncio.ensure_future(run.next_event())
        try:
            done, _ = await asyncio.wait([prompt, news], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (prompt, news):
                waiter.cancel()
        error = news.exception() if news in done else None
        outcome = run.handshake.outcome
        if error is not None or isinstance(outcome, Failed):
            # Even if the customer answered in the same moment: nobody awaits it.
            with contextlib.suppress(asyncio.CancelledError):
                await prompt  # let it close what it drew
            if error is not None:
                raise error
            assert isinstance(outcome, Failed)
            raise _withdrawn(outcome)
        decision = prompt.result()
        await self._send_receipt(run, ask, decision)
        return ask, decision

    def _signed_receipt(self, ask: ConsentRequest, decision: Decision) -> tuple[bytes, bytes]:
        """The customer's answer as a receipt signed with the device key; the
        customer keeps a copy whether or not it can be sent."""
        receipt = Receipt.make(
            session=ask.session, device_id=self.identity.device_id,
            engineer=ask.engineer_login, key_fingerprint=ask.key_fingerprint, asked=ask.wants,
            granted=decision.granted, decision=decision.decision, now=_now(),
        )
        data, signature = sign_receipt(receipt, self.identity.key)
        self.identity.keep_receipt(data, signature)
        return data, signature

    async def _send_receipt(self, run: HandshakeRun, ask: ConsentRequest,
                            decision: Decision) -> None:
        """Sign and keep the customer's answer to the join, and send it
        through the handshake. A link that closed as they answered is a
        withdrawn request."""
        data, signature = self._signed_receipt(ask, decision)
        handshake = run.handshake
        await run.perform(handshake.answer(receipt=data, signature=signature,
                                           decision=decision.decision,
                                           granted=decision.granted, now=run.clock()))
        if isinstance(handshake.outcome, Failed):
            # The answer came as the engineer's side went: nobody is left to
            # hear it, which is a withdrawn request, not a failure.
            raise _withdrawn(handshake.outcome)

    async def _serve(self, link: BrokerLink, request: Message, host_key: asyncssh.SSHKey,
                     ask: ConsentRequest, decision: Decision,
                     resume_key: ResumeKey | None = None) -> None:
        """Run the shell for the engineer until someone ends it. A broken
        link to the broker is restored and the session resumed (the shell
        and the consent stand) while the broker holds the seat."""
        session_id = request["session"]
        viewer = Viewer(display=request["engineer_display"], login=request["engineer_login"],
                        control=Right.CONTROL in decision.granted)
        gate = Gate(control=viewer.control, on_output=self.screen.mirror,
                    files=Right.FILES in decision.granted)
        active = ActiveSession(session_id, link, viewer, gate, ask)
        running = self.shells.get(session_id)
        if running is None:
            active.seat = session_id  # the first engineer: as for a session of one
            running = self.shells[session_id] = RunningSession(
                session_id, SharedShell(self.config.shell, self.screen.mirror),
                transfers=self._transfer_hub(session_id), chat=ChatRoom(self.screen.chat_line))
            self.transfer_view.watch(running.transfers)
        else:
            self._seat_count += 1
            active.seat = f"{session_id}#{self._seat_count}"
        running.seats.append(active)

        async def on_control(msg: Message) -> None:
            if msg.type == "control_request":
                # The reader must keep reading (the broker's confirmation comes
                # through it), so the customer is asked in a task of its own.
                if not active.asking and not active.ended.is_set():
                    active.asking = True
                    right = Right(msg.get("right") or Right.CONTROL)
                    task = asyncio.get_running_loop().create_task(
                        self._ask_for_control(active, right))
                    active.tasks.add(task)
                    task.add_done_callback(active.tasks.discard)
            elif msg.type == "consent_sealed":
                self._keep_seal(msg["seq"], msg["checkpoint"])
            elif msg.type == "control_result":
                if active.confirm is not None and not active.confirm.done():
                    active.confirm.set_result(tuple(msg["granted"]))
            elif msg.type == "live":
                active.settle_checks(True, msg["id"])
            elif msg.type == "invitation":
                if active.inviting:  # only the customer asks for a code
                    active.inviting = False
                    self._invited(active, msg["nameplate"], int(msg["expires_in"]))
            elif msg.type == "roster":
                # Who the broker says is in the session; the banner shows the
                # agent's own list (each seat it paired and asked about).
                running.roster = [
                    (printable(str(seat.get("display", "")), 40),
                     printable(str(seat.get("rights", "")), 40))
                    for seat in msg["seats"] if isinstance(seat, dict)
                ][:16]
            elif msg.type == "ended":
                active.ended_by = active.ended_by or msg["reason"]
                active.ended.set()
                active.settle_checks(False)
            elif msg.type == "error":
                active.ended_by = active.ended_by or "error"
                active.ended.set()
                active.settle_checks(False)

        heartbeat = Heartbeat()
        gate.guard = InputGuard(heartbeat, lambda: self._confirm_live(active),
                                lambda count: self._discarded(active, count))
        gate.on_dropped = lambda: self._schedule_report(active)
        gate.on_file_transferred = lambda direction, count, outcome: self._report_file(
            active, direction, count, outcome)
        gate.on_chat = lambda: self._chatted(active, engineer=True)
        heartbeat.start()
        resumption = None
        if resume_key is not None:
            resumption = Resumption(
                key=resume_key, side="agent", token=request["token"],
                reconnect=lambda: open_link(self._session_url(request), "/v1/agent/session",
                                            self.config.ca, session=True),
                on_event=lambda event: self._link_event(active, event))
        relay = active.relay = SSHRelay(link, on_control, resumption)
        pump = relay.task  # ends when the link is over for good
        self.sessions[active.seat] = active
        self.screen.session_started(active.seat, viewer)
        try:
            active.conn = await serve_shell(
                tunnel=relay, host_key=host_key, engineer_key=request["engineer_key"],
                shell=self.config.shell, gate=gate, shared=running.shell,
                services=Services(
                    sftp=sftp_factory(running.transfers, Engineer(viewer.display, viewer.login)),
                    # Their lines are signed with the name the customer approved.
                    chat=running.chat.handler(viewer.display)),
            )
            waiters = [asyncio.ensure_future(w) for w in
                       (gate.closed.wait(), active.ended.wait())]
            await asyncio.wait([*waiters, pump], return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            if active.ended_by is None and gate.exit_status is None and gate.closed.is_set():
                # The engineer's side closed SSH; the broker's `ended`, with
                # the real reason, is on its way - do not claim it was us.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(active.ended.wait(), _ENDED_GRACE)
            if active.ended_by is None and pump.done():
                # The link broke with no word from the broker: nobody chose this.
                active.ended_by = "broker_lost"
            if active.ended_by is None:
                await self._end(active, EndReason.SHELL_EXITED if gate.exit_status is not None
                                else EndReason.CUSTOMER_ENDED)
        except (OSError, asyncssh.Error) as exc:
            log.info("ssh session ended: %s", exc)
        finally:
            heartbeat.stop()
            self._withdraw_files(active)  # the seat ends: so do its transfers
            active.settle_checks(False)
            if active.report is not None:
                active.report.cancel()
            self.sessions.pop(active.seat, None)
            if active in running.seats:
                running.seats.remove(active)
            if not running.seats and self.shells.get(session_id) is running:
                del self.shells[session_id]
                self.transfer_view.unwatch(running.transfers)
                running.chat.close()  # what was said is forgotten with the session
                for nameplate in [n for n, i in self.invites.items() if i.session == session_id]:
                    self.invites.pop(nameplate).claimed.set()
            for task in list(active.tasks):
                task.cancel()  # an open prompt for this session closes with it
            if active.conn is not None:
                active.conn.close()
            relay.finish()  # an `end` made while the link was down still goes
            self.screen.session_ended(active.seat, _ended_text(active.ended_by, viewer))

    def _link_event(self, active: ActiveSession, event: LinkEvent) -> None:
        """The state of this seat's link, on the customer's screen."""
        notice = link_notice(event)
        if notice is not None:
            self.screen.notice(notice)

    def _transfer_hub(self, session_id: str) -> TransferHub:
        config = self.config
        return session_hub(session_id, transfers_dir=config.transfers_dir, share=config.share,
                           limits=Limits(config.max_file_bytes, config.max_session_bytes),
                           state_dir=config.state_dir)

    def _show_files(self) -> None:
        """Ctrl-] f: where files go and what moved (x there cancels the
        running transfers, w withdraws the files right from everyone)."""
        task = asyncio.get_running_loop().create_task(self.screen.show_panel(
            self.transfer_view.panel,
            {"x": self.transfer_view.cancel, "w": self.withdraw_files}))
        self.joining.add(task)
        task.add_done_callback(self.joining.discard)

    async def _confirm_live(self, active: ActiveSession) -> bool:
        """Ask the broker whether this session is still live (see
        `agent.liveness`): True only on its `live` answer."""
        if active.ended.is_set():
            return False
        active.next_check += 1
        check = active.next_check
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        active.live_checks[check] = future
        try:
            await active.link.send("confirm_live", id=check)
            return await asyncio.wait_for(future, LIVENESS_TIMEOUT) and not active.ended.is_set()
        except (TimeoutError, ConnectionClosed, LinkError):
            return False
        finally:
            active.live_checks.pop(check, None)

    def _discarded(self, active: ActiveSession, count: int) -> None:
        active.gate.drop(count)
        who = printable(active.viewer.display, 40)
        self.screen.flash(f"{who} typed {count} bytes while this computer was not responding, "
                          "and the session could not be confirmed as still running: nothing "
                          "of it ran.")

    def _schedule_report(self, active: ActiveSession) -> None:
        if active.report is not None or active.ended.is_set():
            return
        loop = asyncio.get_running_loop()
        since = (loop.time() - active.reported_at if active.reported_at is not None
                 else DROPPED_REPORT_INTERVAL)
        active.report = loop.call_later(max(0.0, DROPPED_REPORT_INTERVAL - since),
                                        lambda: self._report_now(active))

    def _report_now(self, active: ActiveSession) -> None:
        active.report = None
        active.reported_at = asyncio.get_running_loop().time()
        task = asyncio.get_running_loop().create_task(self._report_totals(active))
        active.tasks.add(task)
        task.add_done_callback(active.tasks.discard)

    def _report_file(self, active: ActiveSession, direction: str, count: int,
                     outcome: str) -> None:
        """Tell the broker one file moved (its audit keeps no name); the
        broker bounds how many it records per session."""
        if active.ended.is_set():
            return
        task = asyncio.get_running_loop().create_task(_quietly(active.link.send(
            "file_transferred", direction=direction, bytes=max(0, count), outcome=outcome)))
        active.tasks.add(task)
        task.add_done_callback(active.tasks.discard)

    async def _report_totals(self, active: ActiveSession) -> None:
        """The seat's running totals the broker records: dropped input and
        chat lines (each sent only when it grew)."""
        await self._report_dropped(active)
        totals = (min(active.chat_engineer, MAX_CHAT_LINES),
                  min(active.chat_customer, MAX_CHAT_LINES))
        if totals != active.reported_chat:
            active.reported_chat = totals
            await _quietly(active.link.send("chat_lines", engineer=totals[0],
                                            customer=totals[1]))

    async def _report_dropped(self, active: ActiveSession) -> None:
        total = active.gate.dropped_bytes
        if total > active.reported_dropped:
            active.reported_dropped = total
            await _quietly(active.link.send("input_dropped", bytes=total))

    def _chatted(self, active: ActiveSession, *, engineer: bool) -> None:
        """One chat line said at this seat (the audit keeps the count, never
        the text): by its engineer, or by the customer while it was there."""
        if engineer:
            active.chat_engineer += 1
        else:
            active.chat_customer += 1
        self._schedule_report(active)

    async def _ask_for_control(self, active: ActiveSession,
                               right: Right = Right.CONTROL) -> None:
        """Answer the engineer's request for control (or files) with a signed
        receipt, and open the gate only once the broker has recorded a grant."""
        # What the broker expects an upgrade to ask for at this seat: view,
        # the right asked for, and every right the seat holds (never dropped).
        held = [Right.VIEW, *([Right.CONTROL] if active.gate.control else []),
                *([Right.FILES] if active.gate.files else [])]
        ask = replace(active.request, upgrade=True, adds=right,
                      wants=upgrade_for(held, right))
        who = printable(ask.engineer_display, 40)
        what = "Files" if right == Right.FILES else "Control"
        try:
            if right not in allowed(self.config.max_rights):
                # The customer's own rule answers: no prompt to click through.
                decision = DENY
                self.screen.flash(f"{what} declined: this computer does not allow "
                                  + ("copying files." if right == Right.FILES else "control."))
            else:
                decision = await self.screen.ask_consent(
                    ask, self.config.consent_timeout, self.config.max_rights)
            if active.ended.is_set():
                return
            epoch = active.epoch
            granted = decision.decision == "granted"
            if granted:
                active.confirm = asyncio.get_running_loop().create_future()
            data, signature = self._signed_receipt(ask, decision)
            await active.link.send("consent", receipt=b64encode(data),
                                   signature=b64encode(signature))
            unchanged = ("can still only watch" if not active.gate.control and
                         not active.gate.files else "keeps what they had")
            if not granted:
                if right in allowed(self.config.max_rights):
                    said = "did not answer" if decision.decision == "timeout" else "said no"
                    self.screen.flash(f"You {said}: they {unchanged}.")
                return
            assert active.confirm is not None
            try:
                rights = await asyncio.wait_for(active.confirm, HANDSHAKE_TIMEOUT)
            except TimeoutError:
                self.screen.flash(f"The support service did not confirm the change, so {who} "
                                  f"{unchanged}.")
                return
            if right in rights and active.epoch == epoch and not active.ended.is_set():
                if right == Right.FILES:
                    active.gate.files = True
                    self.screen.flash(f"{who} may now copy files: you see each one here.")
                else:
                    active.gate.control = True
                    self.screen.set_control(active.seat, True)
        except (LinkError, WireError, ConnectionClosed) as exc:
            log.info("request for control not answered: %s", exc)
        finally:
            active.asking = False
            active.confirm = None

    # -- the customer's controls ---------------------------------------------

    def end_all(self) -> None:
        asyncio.get_running_loop().create_task(self._end_everything(EndReason.CUSTOMER_ENDED))

    def customer_typed(self, data: bytes) -> None:
        """The customer's keys go to the newest session's shell (theirs to use)."""
        for active in reversed(list(self.sessions.values())):
            if active.gate.local_input is not None:
                active.gate.local_input(data)
                return

    def customer_chat(self, text: str) -> None:
        """The customer's line from the chat page: to the newest running
        session's chat (the one their keys go to)."""
        for running in reversed(list(self.shells.values())):
            present = [a for a in running.seats if not a.ended.is_set()]
            if present:
                if running.chat.say(running.chat.customer, text) is not None:
                    for active in present:
                        self._chatted(active, engineer=False)
                return
        self.screen.flash("Nobody is connected to read your message.")

    def view_only(self, seat: str | None = None) -> None:
        """Take control back: from every engineer, or from the one at `seat`."""
        for key, active in list(self.sessions.items()):
            if seat is not None and key != seat:
                continue
            if active.gate.control or active.gate.files or active.confirm is not None:
                # Also a grant the broker has not confirmed yet: it must not
                # open the gate once it is, and the broker narrows it again.
                active.epoch += 1
                active.gate.control = False
                self._withdraw_files(active)
                self.screen.set_control(active.seat, False)
                asyncio.get_running_loop().create_task(
                    _quietly(active.link.send("rights", granted=[Right.VIEW]))
                )

    def withdraw_files(self) -> None:
        """The customer takes the files right back from every engineer, and
        only that: control and watching stay as they are."""
        took = []
        for active in list(self.sessions.values()):
            if not active.gate.files or active.ended.is_set():
                continue
            took.append(printable(active.viewer.display, 40))
            self._withdraw_files(active)
            kept = [Right.VIEW, *([Right.CONTROL] if active.gate.control else [])]
            asyncio.get_running_loop().create_task(
                _quietly(active.link.send("rights", granted=[str(r) for r in kept])))
        self.screen.flash(f"File transfer is off: {', '.join(took)} can no longer copy files."
                          if took else "No engineer can copy files now.")

    def _withdraw_files(self, active: ActiveSession) -> None:
        """The seat loses the files right: no new transfer, and its running
        ones stop (the hub is shared by the session's seats)."""
        active.gate.files = False
        running = self.shells.get(active.id)
        if running is not None:
            running.transfers.withdraw(active.gate)

    def remove(self, seat: str) -> None:
        """The customer removes one engineer; the others go on. The broker
        answers on that seat's connection (`ended engineer_removed`)."""
        active = self.sessions.get(seat)
        if active is None or active.ended.is_set():
            return
        active.epoch += 1
        active.gate.control = False  # not one more keystroke of theirs
        self._withdraw_files(active)
        self.screen.set_control(seat, False)
        asyncio.get_running_loop().create_task(_quietly(active.link.send("remove")))

    def invite(self) -> None:
        """The customer asks for a code for one more engineer, on the newest
        running session's first live seat's connection."""
        for running in reversed(list(self.shells.values())):
            active = next((a for a in running.seats
                           if a.conn is not None and not a.ended.is_set()), None)
            if active is None:
                continue
            if len(running.seats) >= MAX_ENGINEERS_PER_SESSION:
                self.screen.flash(f"At most {MAX_ENGINEERS_PER_SESSION} engineers can share "
                                  "a session.")
                return
            active.inviting = True
            asyncio.get_running_loop().create_task(_quietly(active.link.send("invite")))
            return

    def _invited(self, active: ActiveSession, nameplate: str, expires_in: int) -> None:
        """The broker's `invitation`: draw the secret and show the code."""
        for old in [n for n, i in self.invites.items() if i.session == active.id]:
            self.invites.pop(old).claimed.set()  # a new code replaces the previous
        invite = Invite(active.id, JoinCode(nameplate, draw_secret()))
        self.invites[nameplate] = invite
        task = asyncio.get_running_loop().create_task(
            self.screen.show_invite(str(invite.code), expires_in, invite.claimed))
        active.tasks.add(task)
        task.add_done_callback(active.tasks.discard)

    def _claim_invite(self, session: str, nameplate: str) -> JoinCode | None:
        """The code the customer made for one more engineer in `session`,
        spent (there is at most one: a new code replaces the previous)."""
        chosen = self.invites.get(nameplate)
        if chosen is None or chosen.session != session:
            chosen = next((i for i in self.invites.values() if i.session == session), None)
        if chosen is None:
            return None
        for key in [n for n, i in self.invites.items() if i is chosen]:
            del self.invites[key]
        chosen.claimed.set()
        return chosen.code

    def _connected_to(self, session: str) -> tuple[str, ...]:
        """Who is already in `session` (empty for a new session)."""
        running = self.shells.get(session)
        if running is None:
            return ()
        return tuple(a.viewer.display for a in running.seats if not a.ended.is_set())

    async def _end_everything(self, reason: str) -> None:
        seats = list(self.sessions.values())
        for active in seats:
            active.gate.control = False
            await self._report_totals(active)  # every seat's final totals, before `end`
        await asyncio.gather(*(self._end(active, reason) for active in seats))

    async def _end(self, active: ActiveSession, reason: str) -> None:
        # Not one more keystroke lands from here on; the broker hears why
        # before the SSH connection drops, so the engineer is told the reason
        # rather than just seeing the connection close.
        active.gate.control = False
        running = self.shells.get(active.id)
        # One `end` ends the session for every engineer (the shell is
        # shared): the broker tells the others, on their own connections.
        # (Checked and set before any await: `_end_everything` runs these
        # side by side.)
        first = running is None or not running.end_sent
        if running is not None:
            running.end_sent = True
        if first:
            if active.ended_by is None:
                active.ended_by = reason
            if active.relay is not None and active.relay.down:
                # Ended here while the link is down: said to the broker as
                # soon as the link is back, and the engineer told.
                active.relay.end_while_down(reason)
            else:
                await self._report_totals(active)  # the final totals, before `end`
                await _quietly(active.link.send("end", reason=reason))
        else:
            # Another seat's `end` ended it: closing this seat's connections
            # first could reach the broker before that `end` and read as this
            # seat lost, so wait (briefly) for the broker's `ended` here.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(active.ended.wait(), _ENDED_GRACE)
            if active.ended_by is None:
                active.ended_by = reason
        if active.conn is not None:
            active.conn.close()
        active.ended.set()


@dataclass(eq=False)
class RunningSession:
    """A session's one shell and the seats sharing it."""

    id: str
    shell: SharedShell
    seats: list[ActiveSession] = field(default_factory=list)
    end_sent: bool = False
    # The broker's last `roster` (display, rights), escaped.
    roster: list[tuple[str, str]] = field(default_factory=list)
    # The session's file transfers, shared by its seats' SFTP channels.
    transfers: TransferHub = field(default_factory=lambda: TransferHub(
        "", Roots("/nonexistent"), Limits()))
    # The session's chat line, shared by its seats' chat channels.
    chat: ChatRoom = field(default_factory=lambda: ChatRoom(lambda _line: None))


@dataclass(eq=False)
class Invite:
    """A code the customer made for one more engineer in `session`."""

    session: str
    code: JoinCode
    claimed: asyncio.Event = field(default_factory=asyncio.Event)


# End reasons that mean the engineer is gone,
# so a pending request is withdrawn: gave up, or their connection dropped.
_ENGINEER_GONE = frozenset({EndReason.ENGINEER_LEFT, EndReason.CONSOLE_LOST})


class Withdrawn(Exception):
    """The join ended on the engineer's or the broker's side while the
    customer was being asked (or as they answered): `reason` is the
    broker's end reason, or "closed" when the link just closed."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _withdrawn(failed: Failed) -> Withdrawn:
    """A join that ended on the other side (or whose link closed) while the
    customer was asked or answering: `reason` is the broker's end reason."""
    return Withdrawn(failed.reason, failed.message)


def _withdrawn_text(exc: Withdrawn, display: str) -> str:
    who = printable(display, 40)
    if exc.reason in _ENGINEER_GONE:
        return f"The engineer ({who}) withdrew the request; nobody was connected."
    return (f"The request from {who} was withdrawn ({printable(exc, 120)}); "
            "nobody was connected.")


async def _quietly(coro: Awaitable[object]) -> None:
    with contextlib.suppress(Exception):
        await coro


def _ended_text(reason: str | None, viewer: Viewer) -> str:
    who = printable(viewer.display, 40)
    texts: dict[str, str] = {
        EndReason.CUSTOMER_ENDED: f"You ended the session with {who}.",
        EndReason.AGENT_QUIT: f"The session with {who} ended.",
        EndReason.ENGINEER_LEFT: f"{who} left the session.",
        EndReason.ENGINEER_REMOVED: f"You removed {who} from the session.",
        EndReason.SHELL_EXITED: f"The shell exited; the session with {who} ended.",
        EndReason.IDLE_TIMEOUT: f"The session with {who} was idle too long and ended.",
        EndReason.MAX_DURATION: f"The session with {who} reached its time limit.",
        EndReason.CONSOLE_LOST: f"The connection to {who} was lost.",
        "broker_lost": f"The connection to the support service was lost; the session with "
                       f"{who} ended.",
        EndReason.BROKER_SHUTDOWN: f"The support service shut down or restarted; the session with "
                           f"{who} ended. A new code appears once it is back.",
    }
    shown = printable(reason or "unknown", 40)
    return texts.get(reason or "", f"The session with {who} ended ({shown}).")


def _now() -> datetime:
    return datetime.now(UTC)
