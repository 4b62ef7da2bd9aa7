"""What the TUI needs from the network, as an interface the app receives.

`ConsoleApp` is handed a `BackendFactory`; the real one (`BrokerBackend`)
talks to a broker through `console.client`, tests hand in a fake. Widgets
never touch sockets: they call these methods and get callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import asyncssh

from broker.client.relay import LinkEvent
from broker.wire.chat import ChatLine
from broker.wire.code import parse_code
from broker.wire.codes import Right
from broker.wire.errors import CodeError
from broker.wire.messages import Message
from console.chat import GARBAGE_TEXT, ChatChannel, ChatClosed, ChatError, line_text
from console.client import ConsoleClient, JoinedSession
from console.errors import ConsoleError, UsageError
from console.files import FileTransfers
from console.format import asked_rights, granted_text, link_text
from console.identity import load_file_identity
from console.roster import Roster
from console.session_end import outcome_after_shell
from console.status_line import Progress

__all__ = [
    "Backend",
    "BackendFactory",
    "BrokerBackend",
    "LiveSession",
    "Profile",
    "Progress",
    "SessionEvent",
    "Settings",
    "chat_event",
]


@dataclass(frozen=True)
class Settings:
    """What the connect screen collects (prefilled from flags)."""

    broker: str
    ca: Path
    identity: Path
    user: str
    passphrase: str | None = None


@dataclass(frozen=True)
class Profile:
    user: str
    display: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class SessionEvent:
    """Something the broker or customer did to a running session."""

    kind: str  # "rights" | "control_result" | "roster" | "ended" | "notice" | "chat"
    text: str
    granted: tuple[str, ...] = ()
    # "roster": who else is in the shared session, with their rights, escaped
    # ("Bob Builder (view)", or "nobody else" once they have all gone).
    others: str = ""
    # "chat": the line as the agent stamped it (cleaned; still shown literally).
    chat: ChatLine | None = None


def chat_event(line: ChatLine) -> SessionEvent:
    """A chat line for the session's pane (its text escaped, for a notice)."""
    return SessionEvent("chat", line_text(line), chat=line)


OutputHandler = Callable[[bytes], None]
EventHandler = Callable[[SessionEvent], None]


class LiveSession(Protocol):
    session_id: str
    alias: str
    sas: str
    bytes_in: int
    bytes_out: int

    @property
    def granted(self) -> tuple[str, ...]: ...

    async def start(self, cols: int, rows: int, on_output: OutputHandler,
                    on_event: EventHandler) -> None: ...
    def write(self, data: bytes) -> None: ...
    def resize(self, cols: int, rows: int) -> None: ...
    async def request_control(self, right: str = Right.CONTROL) -> None:
        """Ask the customer for control, or with `right` files; the answer
        comes as a "control_result" event."""
        ...
    async def say(self, text: str) -> None:
        """Send a chat line; it comes back as a "chat" event once the agent
        has it. Raises `console.chat.ChatError` with words for the engineer."""
        ...
    async def leave(self) -> None: ...
    def file_transfers(self) -> FileTransfers | None:
        """SFTP over this session's SSH connection; None until it is open."""
        ...


class Backend(Protocol):
    async def login(self) -> Profile: ...
    async def join(self, code: str, control: bool,
                   on_progress: Callable[[Progress], None],
                   files: bool = False) -> LiveSession: ...
    async def audit_query(self, **filters: Any) -> tuple[list[dict[str, Any]], bool]: ...
    async def audit_session(self, session: str) -> list[dict[str, Any]]: ...
    async def audit_verify(self) -> dict[str, Any]: ...
    async def close(self) -> None: ...


BackendFactory = Callable[[Settings], Backend]


_RESULT_TEXT = {
    "granted": "The customer granted control: you can type.",
    "denied": "The customer declined control: you can still watch.",
    "timeout": "The customer did not answer the control request.",
    "unchanged": "Nothing changed: you already have those rights or a request is pending.",
}
_FILES_RESULT_TEXT = {
    "granted": "The customer allowed file transfer: F4 shows their files.",
    "denied": "The customer declined file transfer.",
    "timeout": "The customer did not answer the request for file transfer.",
    "unchanged": _RESULT_TEXT["unchanged"],
}


# Input (a paste) waiting for the SSH channel to take it: far more than any
# paste a person makes; beyond it the rest is refused with a notice rather
# than held without bound.
MAX_PENDING_INPUT = 64 * 1024 * 1024
# Handed to the channel at a time while it has room (one SSH packet).
_INPUT_STEP = 32 * 1024


class _Sink(asyncssh.SSHClientSession[bytes]):
    def __init__(self, owner: RelaySession) -> None:
        self._owner = owner

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self._owner.bytes_in += len(data)
        self._owner.on_output(data)

    # The channel's send buffer is past its high-water mark (the agent has
    # not taken what we sent): input waits in the session until it drains.
    def pause_writing(self) -> None:
        self._owner.input_paused = True

    def resume_writing(self) -> None:
        self._owner.input_paused = False
        self._owner.send_pending()

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.shell_closed(exc)


class RelaySession:
    """A consented session carried over the broker's relay (real network)."""

    def __init__(self, joined: JoinedSession) -> None:
        self._joined = joined
        self.session_id = joined.session
        self.alias = joined.alias
        self.sas = joined.sas
        self.bytes_in = 0
        self.bytes_out = 0
        self.on_output: OutputHandler = lambda _d: None
        self._on_event: EventHandler = lambda _e: None
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._conn: asyncssh.SSHClientConnection | None = None
        self._files: FileTransfers | None = None
        self._chat: ChatChannel | None = None
        self._chat_opening: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._ended = False
        self._left = False
        self._pending = bytearray()
        self.input_paused = False
        # Decides the outcome once the shell's connection has closed.
        self._settling: asyncio.Task[None] | None = None
        # What the request with the customer asks for, to word its answer.
        self._asking: str | None = None

    @property
    def granted(self) -> tuple[str, ...]:
        return self._joined.granted

    async def start(self, cols: int, rows: int, on_output: OutputHandler,
                    on_event: EventHandler) -> None:
        self.on_output, self._on_event = on_output, on_event
        self._joined.on_control.append(self._control)
        self._joined.on_roster.append(self._roster)
        self._joined.on_link.append(self._link)
        self._conn, self._pump = await self._joined.open_ssh()
        self._chan, _ = await self._conn.create_session(
            lambda: _Sink(self), term_type="xterm-256color", term_size=(cols, rows),
            encoding=None,
        )
        # Open now, not when the chat box is: the customer may write first.
        self._chat = ChatChannel(self._conn, on_line=lambda line: on_event(chat_event(line)),
                                 on_close=self._chat_closed)
        self._chat_opening = asyncio.get_running_loop().create_task(
            self._open_chat(self._chat))

    @staticmethod
    async def _open_chat(chat: ChatChannel) -> None:
        with contextlib.suppress(ChatError):  # why is kept, and said when they write
            await chat.open()

    def _chat_closed(self, reason: str) -> None:
        if reason == GARBAGE_TEXT and not self._ended:  # the session's end says itself
            self._on_event(SessionEvent("notice", reason))

    async def _control(self, msg: Message) -> None:
        if msg.type == "rights":
            if Right.CONTROL not in msg["granted"]:
                self._pending.clear()  # the customer took control back: not one more key
            self._on_event(SessionEvent(
                "rights", "The customer changed your rights to "
                + granted_text(msg["granted"]) + ".",
                tuple(msg["granted"])))
        elif msg.type == "control_result":
            texts = _FILES_RESULT_TEXT if self._asking == Right.FILES else _RESULT_TEXT
            if msg["decision"] != "unchanged":
                self._asking = None  # answered; "unchanged" answers a second request
            self._on_event(SessionEvent(
                "control_result", texts.get(msg["decision"], msg["decision"]),
                tuple(msg["granted"])))
        elif msg.type in ("ended", "error"):
            self.closed()  # in the same words as the plain terminal (a broker restart...)

    def _link(self, event: LinkEvent) -> None:
        text = link_text(event)
        if text is not None:
            self._on_event(SessionEvent("notice", text[0].upper() + text[1:]))

    async def _roster(self, roster: Roster) -> None:
        self._on_event(roster_event(roster))

    def closed(self) -> None:
        """The broker said the session ended (or failed): say why at once."""
        try:
            text = self._joined.outcome(left=self._left)
        except ConsoleError as exc:
            text = _sentence(exc)
        self._finish(text)

    def shell_closed(self, exc: Exception | None) -> None:
        """The shell's connection closed: the broker's word on why is usually
        a moment behind, so the outcome is decided as the plain terminal
        decides it (`console.session_end`), not at once."""
        if self._ended or self._settling is not None:
            return
        self._settling = asyncio.get_running_loop().create_task(self._settle(exc))

    async def _settle(self, exc: Exception | None) -> None:
        if self._pump is None:
            self.closed()
            return
        try:
            text = await outcome_after_shell(self._joined, self._pump, left=self._left,
                                             ssh_error=exc)
        except ConsoleError as error:
            text = _sentence(error)
        self._finish(text)

    def _finish(self, text: str) -> None:
        self._pending.clear()
        if not self._ended:
            self._ended = True
            self._on_event(SessionEvent("ended", text))

    @property
    def input_pending(self) -> int:
        """Bytes typed or pasted that the channel has not taken yet."""
        return len(self._pending)

    def write(self, data: bytes) -> None:
        """Send keys or a paste, in order, as fast as the agent takes them;
        `bytes_out` counts what has gone. Never blocks."""
        if self._chan is None or Right.CONTROL not in self.granted or self._ended:
            return
        room = MAX_PENDING_INPUT - len(self._pending)
        if len(data) > room:
            self._on_event(SessionEvent(
                "notice", f"That paste is too large: {len(data) - max(room, 0)} bytes of it "
                "were not sent."))
            data = data[:max(room, 0)]
        self._pending += data
        self.send_pending()

    def send_pending(self) -> None:
        chan = self._chan
        while self._pending and not self.input_paused and chan is not None \
                and not self._ended:
            step = bytes(self._pending[:_INPUT_STEP])
            del self._pending[:_INPUT_STEP]
            chan.write(step)  # may pause us (pause_writing) before it returns
            self.bytes_out += len(step)

    def resize(self, cols: int, rows: int) -> None:
        if self._chan is not None and not self._ended:
            self._chan.change_terminal_size(cols, rows)

    async def request_control(self, right: str = Right.CONTROL) -> None:
        if self._asking is None:
            self._asking = right
        await self._joined.request_control(right)

    async def say(self, text: str) -> None:
        if self._chat is None or self._ended:
            raise ChatClosed("The session has ended: no more chat." if self._ended
                             else "Chat is not open yet; try again in a moment.")
        await self._chat.say(text)

    def file_transfers(self) -> FileTransfers | None:
        if self._files is None and self._conn is not None and not self._ended:
            self._files = FileTransfers(self._conn)
        return self._files

    async def leave(self) -> None:
        self._ended = self._left = True
        if self._files is not None:
            self._files.forget()
        if self._chat is not None:
            await self._chat.close()
        self._pending.clear()
        if self._settling is not None:
            self._settling.cancel()  # nothing left to decide: we left
        if self._conn is not None:
            self._conn.close()
        await self._joined.leave()
        if self._pump is not None:
            self._pump.cancel()


def roster_event(roster: Roster) -> SessionEvent:
    """The broker's latest roster, for the session's pane: a notice naming
    everyone, and who else is in it for the status bar. The names are
    escaped by `Roster`; the pane shows them literally as well."""
    return SessionEvent("roster", f"Now in this session: {roster.text()}.",
                        others=roster.others_text())


def _sentence(exc: ConsoleError) -> str:
    text = str(exc)
    return f"{text[:1].upper()}{text[1:]}."


class BrokerBackend:
    """The real backend: one engineer at one broker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: ConsoleClient | None = None
        self._sessions: list[RelaySession] = []

    def _require_client(self) -> ConsoleClient:
        if self._client is None:
            raise UsageError("not logged in")
        return self._client

    async def login(self) -> Profile:
        s = self.settings
        passphrase = s.passphrase
        identity = load_file_identity(
            s.user, s.identity.expanduser(), (lambda _p: passphrase) if passphrase else None
        )
        client = ConsoleClient(s.broker, s.ca.expanduser(), identity)
        display, role = await client.login_check()
        self._client = client
        return Profile(identity.user, display, role)

    async def join(self, code: str, control: bool,
                   on_progress: Callable[[Progress], None],
                   files: bool = False) -> LiveSession:
        try:
            parsed = parse_code(code)
        except CodeError as exc:
            raise UsageError(str(exc)) from exc
        wants = asked_rights(control=control, files=files)
        joined = await self._require_client().join(parsed, wants, on_progress)
        session = RelaySession(joined)
        self._sessions.append(session)
        return session

    async def audit_query(self, **filters: Any) -> tuple[list[dict[str, Any]], bool]:
        return await self._require_client().audit_query(**filters)

    async def audit_session(self, session: str) -> list[dict[str, Any]]:
        return await self._require_client().audit_session(session)

    async def audit_verify(self) -> dict[str, Any]:
        return await self._require_client().audit_verify()

    async def close(self) -> None:
        for session in self._sessions:
            with contextlib.suppress(Exception):
                await session.leave()
        if self._client is not None:
            await self._client.close()
