"""A fake backend for Pilot tests: same interface as `BrokerBackend`, no network.
It behaves like the real thing where the UI can tell: progress steps, errors
of the real classes, a shell that echoes, events from the customer."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from broker.wire.chat import ChatLine
from broker.wire.messages import decode, encode
from console.backend import (
    EventHandler,
    OutputHandler,
    Profile,
    Progress,
    SessionEvent,
    Settings,
    chat_event,
    roster_event,
)
from console.chat import NO_CHAT_TEXT, ChatChannel, NoChat
from console.client import REMOVED_TEXT, SESSION_FULL_TEXT
from console.errors import BrokerError, KeyMismatch, NotApproved, SessionFull, WrongCode
from console.files import FileTransfers
from console.roster import Roster

WRONG_CODE = "1111-111-111"
DECLINED = "2222-222-222"
VIEW_ONLY = "3333-333-333"
KEY_MISMATCH = "4444-444-444"
SESSION_FULL = "5555-555-555"


@dataclass
class FakeLive:
    alias: str
    granted_rights: tuple[str, ...]
    session_id: str = "sessA1"
    sas: str = "7F3A-91C2"
    bytes_in: int = 0
    bytes_out: int = 0
    written: bytearray = field(default_factory=bytearray)
    # Sizes the remote shell was told, first the one it started with. Like
    # the real session, a resize before the shell is open reaches nobody.
    resizes: list[tuple[int, int]] = field(default_factory=list)
    open_delay: float = 0.0
    # Set by a test to hold the shell's opening until it says (no race with load).
    open_gate: asyncio.Event | None = None
    shell_open: bool = False
    control_requests: int = 0
    requested: list[str] = field(default_factory=list)  # the right of each request
    grant_on_request: bool = True
    left: bool = False
    on_output: OutputHandler | None = None
    on_event: EventHandler | None = None
    # Set by a test to a real SFTP client (tests/console/sftp_server.py).
    transfers: FileTransfers | None = None
    # Set by `open_chat` to a real chat channel (tests/console/chat_server.py).
    chat: ChatChannel | None = None

    async def open_chat(self, conn: asyncssh.SSHClientConnection) -> ChatChannel:
        """Chat over a real SSH connection, its lines to the pane as the real
        session sends them."""
        def heard(line: ChatLine) -> None:
            if self.on_event is not None:
                self.on_event(chat_event(line))

        self.chat = ChatChannel(conn, on_line=heard)
        await self.chat.open()
        return self.chat

    async def say(self, text: str) -> None:
        if self.chat is None:
            raise NoChat(NO_CHAT_TEXT)
        await self.chat.say(text)

    def file_transfers(self) -> FileTransfers | None:
        return self.transfers

    @property
    def granted(self) -> tuple[str, ...]:
        return self.granted_rights

    async def start(self, cols: int, rows: int, on_output: OutputHandler,
                    on_event: EventHandler) -> None:
        self.on_output, self.on_event = on_output, on_event
        await asyncio.sleep(self.open_delay)  # the SSH handshake over the relay
        if self.open_gate is not None:
            await self.open_gate.wait()
        self.resizes.append((cols, rows))
        self.shell_open = True
        self.emit(b"\x1b[32mcustomer@desk\x1b[0m:~$ ")

    @property
    def shell_size(self) -> tuple[int, int] | None:
        """The size the remote shell believes its terminal has."""
        return self.resizes[-1] if self.resizes else None

    def emit(self, data: bytes) -> None:
        assert self.on_output is not None
        self.bytes_in += len(data)
        self.on_output(data)

    def write(self, data: bytes) -> None:
        self.written.extend(data)
        self.bytes_out += len(data)
        self.emit(data)  # a shell echoes what you type

    def resize(self, cols: int, rows: int) -> None:
        if self.shell_open:
            self.resizes.append((cols, rows))

    async def request_control(self, right: str = "control") -> None:
        self.control_requests += 1
        self.requested.append(right)
        if self.grant_on_request:
            self.granted_rights = tuple(
                r for r in ("view", "control", "files")
                if r == "view" or r == right or r in self.granted_rights)
            assert self.on_event is not None
            text = ("The customer allowed file transfer: F4 shows their files."
                    if right == "files" else "The customer granted control: you can type.")
            self.on_event(SessionEvent("control_result", text, self.granted_rights))

    async def leave(self) -> None:
        self.left = True

    def roster(self, *seats: tuple[str, str, tuple[str, ...]], you: str = "console") -> None:
        """The broker's roster of a shared session: (seat, display, rights) each."""
        assert self.on_event is not None
        frame = encode("roster", you=you, seats=[
            {"seat": seat, "login": seat.replace("-", ""), "display": display,
             "rights": list(rights)} for seat, display, rights in seats])
        self.on_event(roster_event(Roster.from_message(decode(frame))))

    def customer_removes(self) -> None:
        assert self.on_event is not None
        self.on_event(SessionEvent("ended", REMOVED_TEXT))

    def customer_ends(self) -> None:
        assert self.on_event is not None
        self.on_event(SessionEvent("ended", "The customer ended the session."))


def make_events(count: int) -> list[dict[str, Any]]:
    events = []
    for seq in range(1, count + 1):
        kind = ("agent_connected", "engineer_login", "join_requested", "consent_granted",
                "session_started", "session_ended")[seq % 6]
        events.append({
            "seq": seq, "time": f"2026-11-{1 + seq % 20:02d}T10:00:{seq % 60:02d}.000000Z",
            "type": kind, "session": f"sess{seq // 6}" if kind != "engineer_login" else None,
            "actor": "alice", "subject": "9f31eea66f3e6dba", "alias": "front desk",
            "ip": "127.0.0.1", "body": {"reason": "customer_ended"} if kind == "session_ended"
            else {},
        })
    return events


class FakeBackend:
    def __init__(self, settings: Settings, *, role: str = "engineer",
                 login_error: Exception | None = None, alias: str = "front desk",
                 events: int = 120) -> None:
        self.settings = settings
        self.role = role
        self.login_error = login_error
        self.alias = alias
        self.sessions: list[FakeLive] = []
        self.joins: list[str] = []  # every code join() was called with
        self.asked: list[tuple[str, bool, bool]] = []  # (code, control, files) of each join
        self.queries: list[dict[str, Any]] = []
        self.events = make_events(events)
        self.closed = False
        self.consent_delay = 0.05
        self.open_delay = 0.0  # how long the shell takes to open after consent
        self.open_gate: asyncio.Event | None = None  # or: until this is set
        self.verifies = 0
        self.verify_result: dict[str, Any] = {
            "ok": True, "summary": "audit log intact: 120 events (seq 1-120), 2 checkpoints",
            "first_bad_seq": None}

    async def login(self) -> Profile:
        if self.login_error is not None:
            raise self.login_error
        return Profile(self.settings.user, "Alice Example", self.role)

    async def join(self, code: str, control: bool, on_progress,  # type: ignore[no-untyped-def]
                   files: bool = False) -> FakeLive:
        self.joins.append(code)
        self.asked.append((code, control, files))
        on_progress(Progress("connecting", "Connecting to the broker..."))
        await asyncio.sleep(0)
        on_progress(Progress("pairing", "Pairing with the customer's computer..."))
        if code == WRONG_CODE:
            raise WrongCode("the code did not match. It is now used up")
        if code == KEY_MISMATCH:
            raise KeyMismatch("the customer's computer refused this console's key: it did not "
                              "match the key the broker announced for you")
        on_progress(Progress("waiting", "Waiting for the customer to approve...",
                             deadline=time.monotonic() + 60))
        await asyncio.sleep(self.consent_delay)
        if code == DECLINED:
            raise NotApproved("the customer declined the request")
        if code == SESSION_FULL:
            raise SessionFull(SESSION_FULL_TEXT)
        if code == "9999-999-999":
            raise BrokerError("cannot reach the broker at 127.0.0.1:9: Connection refused")
        granted: tuple[str, ...] = (
            ("view", "control") if control and code != VIEW_ONLY else ("view",))
        if files and code != VIEW_ONLY:
            granted += ("files",)
        live = FakeLive(self.alias, granted, open_delay=self.open_delay,
                        open_gate=self.open_gate)
        self.sessions.append(live)
        return live

    async def audit_query(self, **filters: Any) -> tuple[list[dict[str, Any]], bool]:
        self.queries.append(filters)
        if self.role != "admin":
            raise BrokerError("the broker refused: the audit log is for admins only")
        rows = [e for e in reversed(self.events)
                if (not filters.get("type") or e["type"] == filters["type"])
                and (filters.get("before_seq") is None or e["seq"] < filters["before_seq"])
                and (filters.get("after_seq") is None or e["seq"] > filters["after_seq"])]
        limit = int(filters.get("limit", 50))
        return rows[:limit], len(rows) > limit

    async def audit_session(self, session: str) -> list[dict[str, Any]]:
        found = []
        for event in self.events:
            if event["session"] == session:
                event = dict(event)
                if event["type"] == "consent_granted":
                    event["receipt"] = {"decision": "granted", "granted": ["view", "control"]}
                found.append(event)
        return found

    async def audit_verify(self) -> dict[str, Any]:
        self.verifies += 1
        if self.role != "admin":
            raise BrokerError("the broker refused: the audit log is for admins only")
        return dict(self.verify_result)

    async def close(self) -> None:
        self.closed = True
