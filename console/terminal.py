"""The plain-terminal join: the remote shell on your own terminal.

Raw mode while the session runs; ``Ctrl-]`` then ``q`` leaves, ``Ctrl-]``
then ``c`` asks the customer for control, ``Ctrl-]`` then ``f`` opens the
files prompt (`console.files_prompt`), ``Ctrl-]`` then ``m`` a one-line
message to the customer (`console.chat_prompt`; the shell's output is held
while either is open); ``Ctrl-]`` twice sends one ``Ctrl-]``. Chat lines
(`console.chat`) are shown between the shell's output, each on a row of
its own marked "[chat]", escaped. In view-only mode keystrokes are
not sent and a one-line notice says so. Window resizes are sent to the
agent. In a session shared with other engineers, each change of who is in
it (and with which rights) is a status line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import tty
from collections import deque

import asyncssh

from broker.client.relay import LinkEvent
from broker.client.terminal_io import (
    TerminalFailed,
    TerminalInput,
    TerminalOutput,
    set_nonblocking,
)
from broker.wire.chat import CHAT_HISTORY, ChatLine
from broker.wire.codes import EndReason, Right
from broker.wire.messages import Message
from broker.wire.text import printable
from console.boundary import CANCEL, OutputBoundary
from console.chat import GARBAGE_TEXT, ChatChannel, ChatError, terminal_line
from console.chat_prompt import ChatPrompt
from console.client import JoinedSession
from console.errors import ConsoleError, TerminalError
from console.files import FileTransfers
from console.files_prompt import FilesPrompt
from console.format import granted_text, link_text
from console.roster import Roster
from console.session_end import outcome_after_shell
from console.status_line import status

CTRL_RBRACKET = 0x1D
# Our own lines waiting for the shell's output to reach a boundary (see
# console.boundary): at most this many, for at most this long.
MAX_HELD_LINES = 50
OWN_LINE_WAIT = 0.3

# The keys after Ctrl-], said once the session starts and in view only.
KEYS_TEXT = ("Ctrl-] then q leaves, m sends the customer a message, f transfers files "
             "(or asks for them), c asks for control")

# The answers to a request for files (Ctrl-] f without the right).
FILES_RESULT_TEXT = {
    "granted": "the customer allowed file transfer: Ctrl-] f opens the files prompt",
    "denied": "the customer declined file transfer",
    "timeout": "the customer did not answer the request for file transfer",
}

UNCHANGED_TEXT = {  # either request, when there was nothing to ask
    "unchanged": "nothing to ask: you already have that right, or the customer is still "
                 "deciding on your request",
}

# What the engineer is told about the answer to Ctrl-] c.
CONTROL_RESULT_TEXT = {
    "granted": "the customer granted control: you can type now",
    "denied": "the customer declined control: you can still watch",
    "timeout": "the customer did not answer the request for control: you can still watch",
}


def roster_status(roster: Roster) -> str:
    """The status line for a new roster (names escaped by `Roster`)."""
    return f"now in this session: {roster.text()}"


class _Output(asyncssh.SSHClientSession[bytes]):
    """The shell's channel, joined to the engineer's terminal both ways
    with flow control: output past the terminal's pace pauses the channel
    (the agent stops sending), a send buffer the agent has not taken yet
    pauses reading the keyboard (a big paste waits in the terminal)."""

    def __init__(self, done: asyncio.Event, output: TerminalOutput,
                 keys: TerminalInput) -> None:
        self._done = done
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.output = output
        self.keys = keys
        self.error: Exception | None = None  # why asyncssh closed the channel, if it failed
        # The terminal is behind (flow control), or a prompt of ours is on
        # it: the shell's output waits in the channel while either holds.
        self._behind = False
        self._held = False
        # Our own lines (chat, status) go between the shell's characters and
        # sequences, never inside one: held briefly until the shell's bytes
        # reach a boundary, then, if it never comes, after a CAN.
        self.boundary = OutputBoundary()
        self._own: deque[bytes] = deque(maxlen=MAX_HELD_LINES)
        self._own_timer: asyncio.TimerHandle | None = None

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self._chan = chan

    def own(self, data: bytes) -> None:
        """Write a line of ours into the shell's output at a boundary."""
        if self.boundary.safe and not self._own:
            self._write_own(data)
            return
        self._own.append(data)
        if self._own_timer is None:
            self._own_timer = asyncio.get_running_loop().call_later(
                OWN_LINE_WAIT, self._flush_own, True)

    def at_boundary(self) -> None:
        """Before a prompt of ours: the shell's sequence, if one is open, ends."""
        if not self.boundary.safe:
            self.output.write(CANCEL)
            self.boundary.reset()
        self._flush_own()

    def _flush_own(self, waited: bool = False) -> None:
        if waited:
            self._own_timer = None
            if self._own and not self.boundary.safe:
                self.output.write(CANCEL)
                self.boundary.reset()
        if not self.boundary.safe:
            return
        if self._own_timer is not None:
            self._own_timer.cancel()
            self._own_timer = None
        while self._own:
            self._write_own(self._own.popleft())

    def _write_own(self, data: bytes) -> None:
        """On a row of its own: after what the shell left on the current one."""
        if not self.boundary.line_start:
            data = b"\r\n" + data
        self.output.write(data)
        self.boundary.feed(data)

    def _flow(self) -> None:
        if self._chan is not None:
            if self._behind or self._held:
                self._chan.pause_reading()
            else:
                self._chan.resume_reading()

    def pause_output(self) -> None:
        self._behind = True
        self._flow()

    def resume_output(self) -> None:
        self._behind = False
        self._flow()

    def hold(self, held: bool) -> None:
        """Hold the shell's output while a prompt is shown (and release it)."""
        self._held = held
        self._flow()

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.output.write(data)
        self.boundary.feed(data)
        if self._own:
            self._flush_own()

    def pause_writing(self) -> None:
        self.keys.pause()

    def resume_writing(self) -> None:
        self.keys.resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self.error = exc
        self._done.set()


def _size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
        return size.columns, size.lines
    except OSError:
        return 80, 24


def _same_file(fd_a: int, fd_b: int) -> bool:
    try:
        a, b = os.fstat(fd_a), os.fstat(fd_b)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


async def run_terminal_session(joined: JoinedSession) -> str:
    """Run the shell until someone ends it; return why it ended, in words.
    Raises `BrokerError` (`LinkLost`) when the broker failed or vanished,
    `TerminalError` when the engineer's own terminal failed."""
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    failure: TerminalFailed | None = None
    escape = False
    prompt: FilesPrompt | None = None  # Ctrl-] f, once the SSH connection is up
    chat: ChatChannel | None = None  # the chat line, once the SSH connection is up
    chat_prompt: ChatPrompt | None = None  # Ctrl-] m
    # Chat lines that arrived while the files prompt was open: shown once it
    # closes (its own lines would be broken up by them).
    held_lines: deque[ChatLine] = deque(maxlen=CHAT_HISTORY)
    leaving = False  # the engineer chose to leave (Ctrl-] q)
    warned_view_only = False
    requests: set[asyncio.Task[None]] = set()

    def failed(exc: TerminalFailed) -> None:
        nonlocal failure
        if failure is None:
            failure = exc
        done.set()

    def on_keys(data: bytes) -> None:
        nonlocal escape, leaving
        out = bytearray()
        for index, byte in enumerate(data):
            if prompt is not None and prompt.active:
                prompt.feed(data[index:])  # the rest is the prompt's
                break
            if chat_prompt is not None and chat_prompt.active:
                chat_prompt.feed(data[index:])
                break
            if escape:
                escape = False
                if byte in (ord("q"), ord("Q")):
                    leaving = True
                    done.set()
                    keys.close()
                    return
                if byte in (ord("f"), ord("F")) and not joined.files:
                    # Without the right, the key asks the customer for it
                    # (as Ctrl-] c asks for control); with it, the prompt.
                    task = loop.create_task(ask_for(Right.FILES))
                    requests.add(task)
                    task.add_done_callback(requests.discard)
                    continue
                if byte in (ord("f"), ord("F")) and prompt is not None:
                    if out:
                        send(bytes(out))
                        out.clear()
                    session.hold(True)
                    session.at_boundary()
                    prompt.open()
                    continue
                if byte in (ord("m"), ord("M")) and chat_prompt is not None:
                    if out:
                        send(bytes(out))
                        out.clear()
                    if chat is None or not chat.is_open:
                        say(chat.closed_reason if chat is not None and chat.closed_reason
                            else "chat is not open yet; try again in a moment")
                        continue
                    session.hold(True)
                    session.at_boundary()
                    chat_prompt.open()
                    continue
                if byte in (ord("c"), ord("C")):
                    task = loop.create_task(ask_for(Right.CONTROL))
                    requests.add(task)
                    task.add_done_callback(requests.discard)
                    continue
                if byte == CTRL_RBRACKET:
                    out.append(byte)
                continue
            if byte == CTRL_RBRACKET:
                escape = True
                continue
            out.append(byte)
        if out:
            send(bytes(out))

    def send(data: bytes) -> None:
        nonlocal warned_view_only
        if joined.control:
            chan.write(data)
        elif not warned_view_only:
            warned_view_only = True
            say(f"view only: your keystrokes are not sent ({KEYS_TEXT})")

    keys = TerminalInput(stdin, on_data=on_keys, on_error=failed)
    session = _Output(done, TerminalOutput(stdout, on_pause=lambda: session.pause_output(),
                                           on_resume=lambda: session.resume_output(),
                                           on_error=failed), keys)
    # Status lines share the terminal with the remote output: in order, and
    # through the same non-blocking writer, when they go to the same place.
    status_to_output = _same_file(sys.stderr.fileno(), stdout)

    def say(text: str) -> None:
        if status_to_output:
            session.own(f"consentry: {text}\r\n".encode())
        else:
            status(text)

    async def on_control(msg: Message) -> None:
        if msg.type == "rights":
            say("the customer changed your rights to: " + granted_text(msg["granted"]))
        elif msg.type == "control_result":
            decision = msg["decision"]
            texts = FILES_RESULT_TEXT if asking[0] == Right.FILES else CONTROL_RESULT_TEXT
            if decision == "unchanged":
                texts = UNCHANGED_TEXT
            else:
                asking[0] = None  # answered
            say(texts.get(decision, printable(decision, 40)))
        elif msg.type in ("ended", "error"):
            done.set()

    async def on_roster(roster: Roster) -> None:
        say(roster_status(roster))

    def on_chat_line(line: ChatLine) -> None:
        if chat_prompt is not None and chat_prompt.active:
            chat_prompt.show_line(line)
        elif prompt is not None and prompt.active:
            held_lines.append(line)
        else:
            session.own(terminal_line(line).encode())

    def on_chat_closed(reason: str) -> None:
        # The end of the session closes chat too: said once, by the session.
        if reason == GARBAGE_TEXT:
            if chat_prompt is not None:
                chat_prompt.close()
            say(reason)

    def files_closed() -> None:
        session.hold(False)
        while held_lines:
            session.own(terminal_line(held_lines.popleft()).encode())

    async def open_chat() -> None:
        assert chat is not None
        with contextlib.suppress(ChatError):  # why is kept, and said at Ctrl-] m
            await chat.open()

    # What the request with the customer asks for, to word its answer (a
    # second request meanwhile is answered "unchanged" at once).
    asking: list[Right | None] = [None]

    async def ask_for(right: Right) -> None:
        if asking[0] is None:
            asking[0] = right
        try:
            await joined.request_control(right)
        except ConsoleError as exc:
            say(str(exc))
            return
        say("asking the customer to allow file transfer..." if right == Right.FILES
            else "asking the customer for control...")

    def on_link(event: LinkEvent) -> None:
        # The shell stays open on the customer's side while the link is down;
        # what is typed meanwhile is kept and sent once it is back.
        text = link_text(event)
        if text is not None:
            say(text)

    joined.on_control.append(on_control)
    joined.on_roster.append(on_roster)
    joined.on_link.append(on_link)
    saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    if saved is not None:
        # Keys typed while the shell opens (Ctrl-] q at once) are kept for
        # the session, not echoed meanwhile: raw mode comes with TCSANOW,
        # which, unlike setraw's default, does not flush them.
        quiet = termios.tcgetattr(stdin)
        quiet[3] &= ~termios.ECHO
        termios.tcsetattr(stdin, termios.TCSANOW, quiet)
    try:
        conn, pump = await joined.open_ssh()
    except BaseException:
        if saved is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(stdin, termios.TCSANOW, saved)
        raise
    transfers = FileTransfers(conn)
    prompt = FilesPrompt(transfers, lambda text: session.output.write(text.encode()),
                         files_closed)
    chat = ChatChannel(conn, on_line=on_chat_line, on_close=on_chat_closed)
    chat_prompt = ChatPrompt(chat.say, lambda text: session.output.write(text.encode()),
                             lambda: session.hold(False))
    opening_chat: asyncio.Task[None] | None = None
    # uvloop makes a watched descriptor non-blocking and never undoes it;
    # we do it on purpose, and undo it, for stdin and stdout alike.
    restore_blocking = set_nonblocking(stdin, stdout)
    finished = False
    try:
        cols, rows = _size()
        term = os.environ.get("TERM", "xterm-256color")
        chan, _session = await conn.create_session(
            lambda: session, term_type=term, term_size=(cols, rows), encoding=None,
        )
        if saved is not None:
            tty.setraw(stdin, termios.TCSANOW)
        keys.start()
        # Open now, not at Ctrl-] m: the customer may write first.
        opening_chat = loop.create_task(open_chat())
        loop.add_signal_handler(signal.SIGWINCH, lambda: chan.change_terminal_size(*_size()))
        await asyncio.wait(
            [asyncio.ensure_future(done.wait()), pump], return_when=asyncio.FIRST_COMPLETED)
        finished = True
    except BaseException:
        pump.cancel()
        await joined.link.close()
        raise
    finally:
        keys.close()
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(signal.SIGWINCH)
        if prompt.busy is not None:
            prompt.busy.cancel()  # its partial file is removed as it stops
            with contextlib.suppress(BaseException):
                await prompt.busy
        transfers.forget()
        if opening_chat is not None:
            opening_chat.cancel()
        conn.close()
        if finished and failure is None and not leaving:
            await session.output.drain()  # the shell's last words
        session.output.close()
        restore_blocking()
        if saved is not None:
            # TCSAFLUSH: keys and paste not read yet are dropped, never
            # left for the engineer's own shell to run. A terminal that
            # hung up cannot be restored, and needs no restoring.
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(stdin, termios.TCSAFLUSH, saved)
    if failure is not None:
        # Not a leave, and nothing to resume: the broker hears console_lost
        # now rather than holding the seat for a console that is gone.
        pump.cancel()
        with contextlib.suppress(Exception):
            await joined.link.send("end", reason=EndReason.CONSOLE_LOST)
        await joined.link.close()
        raise TerminalError(f"your terminal failed ({failure.strerror}), so the session "
                            "is over (the customer's computer ends it too)")
    return await outcome_after_shell(joined, pump, left=leaving, ssh_error=session.error)
