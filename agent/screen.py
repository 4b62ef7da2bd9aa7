"""What the customer sees and types: the code, the consent prompt, and the
mirrored session under a one-line banner.

The terminal is in raw mode while the agent runs, so every key reaches us:
Ctrl-] opens the options (``e`` ends the session for everyone, ``v`` takes
control back, ``i`` shows a code for one more engineer, ``f`` shows the
files panel, ``m`` the message page of the chat line, ``q`` ends
everything and quits; with several engineers, ``v`` and ``r`` — remove one —
ask which, by the number the banner gives them). While a session runs, the
customer's other keys go to the shared shell — it is their machine, and
showing the engineer something is half of a support call; with no session,
Ctrl-C quits. Everything that came from
the network is passed through `printable` before it is drawn.

A consent prompt can open while a session is mirrored (an engineer asks for
control, or a second engineer joins). The session's output is then held back
and shown when the prompt closes, so the prompt stays readable.

The customer sees everything: nothing mirrored is dropped. Drawing never
blocks the event loop either (the relay, keepalives and the kill switch run
on it), so output goes through a bounded non-blocking writer; when the
customer's terminal falls behind (a slow ssh or serial link, a window nobody
reads), or a prompt has held back as much as it keeps, `mirror` tells the
shell session to stop reading the shell until the customer has caught up,
and the engineer's side waits through SSH flow control.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import math
import os
import signal
import termios
import textwrap
import time
import tty
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from agent.consent import TIMEOUT, ConsentRequest, Decision, decide, prompt_lines, remaining
from agent.errors import SetupError
from agent.replay import RecentOutput
from broker.client.terminal_io import TerminalFailed, TerminalOutput, set_nonblocking
from broker.wire.chat import CHAT_HISTORY, MAX_CHAT_CHARS, ChatLine
from broker.wire.text import printable

CTRL_C = 0x03
CTRL_U = 0x15
CTRL_RBRACKET = 0x1D  # Ctrl-]
ESC = 0x1B

# ANSI sequences we emit ourselves (never derived from network input).
CLEAR = "\x1b[r\x1b[H\x1b[2J"
SAVE, RESTORE = "\x1b7", "\x1b8"
REVERSE, BOLD, RESET = "\x1b[7m", "\x1b[1m", "\x1b[0m"
ALT_SCREEN_ON, ALT_SCREEN_OFF = "\x1b[?1049h", "\x1b[?1049l"
QUIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

# Mirrored output held back while a prompt is open. Bounded, so a chatty shell
# cannot grow the agent's memory while the customer reads: past the bound the
# shell waits (see `CustomerScreen.mirror`) rather than any of it be lost.
MAX_HELD_OUTPUT = 256 * 1024
# How long a passing notice replaces the banner's list of who is connected:
# that list is the customer's privacy indicator, so it must come back.
FLASH_SECONDS = 8.0


# The Ctrl-] menu on the banner row, longest first (see `_banner_text`).
_MENU_TEXTS = (
    "Options:  [e] end the session now   [v] view only (take back control)   "
    "[i] invite another engineer   [f] files   [m] message   [q] end and quit   "
    "[any other key] back",
    "[e] end the session now  [v] view only  [i] invite  [f] files  [m] message  [q] quit  "
    "[other] back",
    "[e] end session  [v] view only  [i] invite  [f] files  [m] message  [q] quit",
    "[e]end [v]view [i]add [f]files [m]chat [q]quit",
)
# The same menu while several engineers are connected: `v` and `r` then
# ask which one (by the number the banner gives each).
_SEATS_MENU_TEXTS = (
    "Options:  [e] end the session for everyone   [v] take control from one   "
    "[r] remove one   [i] invite another   [f] files   [m] message   [q] end and quit   "
    "[any other key] back",
    "[e] end for all [v] take control [r] remove [i] invite [f] files [m] message [q] quit "
    "[other] back",
    "[e] end all [v] take control [r] remove [i] add [f] files [m] message [q] quit",
    "[e]end [v]view [r]rm [i]add [f]file [m]msg [q]quit",
)
# How long the code for another engineer stays on screen at most (the
# broker's invitation lasts 10 minutes; the customer can close it sooner).
INVITE_SHOWN_SECONDS = 600.0
# How long an engineer's chat line stays in the banner: longer than a
# passing notice, since it is there to be read and perhaps answered.
CHAT_FLASH_SECONDS = 20.0
# The chat page closes by itself after this long without a key.
CHAT_PAGE_SECONDS = 600.0
# After Esc, how long to wait for the rest of a key's escape sequence (an
# arrow key sends Esc [ A): a lone Esc closes the chat page.
ESCAPE_WAIT = 0.05
# Keys waiting for the chat page: a pasted line of the longest, in UTF-8.
_CHAT_KEYS = 4 * MAX_CHAT_CHARS + 64


@dataclass
class Viewer:
    """One engineer on the customer's list of who is connected."""

    display: str
    login: str
    control: bool

    def describe(self) -> str:
        who = f"{printable(self.display, 40)} ({printable(self.login, 32)})"
        return f"{who} is {'viewing and typing' if self.control else 'viewing'}"

    def brief(self, name_len: int = 40) -> str:
        """The same, short, for a banner that also carries a note."""
        who = printable(self.display, name_len)
        return f"{who} {'can type' if self.control else 'is watching'}"


# How long a name may be in a banner with a note: the longest that fits.
_BANNER_NAME_LENGTHS = (40, 24, 16, 12)


def chat_banner(line: ChatLine) -> str:
    """A chat line as it flashes in the banner, escaped."""
    text = printable(line.text, 100)
    if line.role == "notice":
        return text
    return f"{printable(line.sender, 40)}: {text}   (Ctrl-] m to answer)"


def chat_page_line(line: ChatLine) -> str:
    """A chat line on the customer's chat page, escaped; their own as "You"."""
    text = printable(line.text, MAX_CHAT_CHARS + 20)
    if line.role == "notice":
        return f"  ({text})"
    who = "You" if line.role == "customer" else printable(line.sender, 40)
    return f"  {who}: {text}"


def fit_lines(lines: list[str], cols: int) -> list[str]:
    """Wrap each line at word boundaries to fit `cols` (keeping its indent),
    so a narrow terminal neither cuts a word nor wraps it in two."""
    width = max(20, cols - 1)
    fitted: list[str] = []
    for line in lines:
        if len(line) <= width:
            fitted.append(line)
            continue
        indent = " " * (len(line) - len(line.lstrip(" ")) + 2)
        fitted += textwrap.wrap(line, width, subsequent_indent=indent,
                                break_on_hyphens=False) or [""]
    return fitted


def require_terminal(in_fd: int = 0, out_fd: int = 1) -> None:
    """The customer must see the code and answer the prompt: refuse to start
    (a `SetupError`, exit 2) when either end is not a terminal."""
    if not (os.isatty(in_fd) and os.isatty(out_fd)):
        which = "input" if not os.isatty(in_fd) else "output"
        raise SetupError(f"needs a terminal, and its {which} is not one: run it in a terminal "
                         "window, without redirecting it, so you can see your code and answer "
                         "requests")


class CustomerScreen:
    def __init__(self, in_fd: int = 0, out_fd: int = 1) -> None:
        self.in_fd, self.out_fd = in_fd, out_fd
        self.quit = asyncio.Event()
        self.on_end_all: Callable[[], None] = lambda: None
        # Called with the seat to narrow, or None for everyone (one engineer).
        self.on_view_only: Callable[[str | None], None] = lambda _seat: None
        self.on_remove: Callable[[str], None] = lambda _seat: None
        self.on_invite: Callable[[], None] = lambda: None
        self.on_customer_input: Callable[[bytes], None] = lambda _data: None
        # File transfers (agent.transfers.view): Ctrl-] x cancels the running
        # ones, Ctrl-] f shows where files go and what moved.
        self.on_cancel_transfers: Callable[[], object] = lambda: None
        self.on_files: Callable[[], None] = lambda: None
        # The chat line (agent.chat): what the customer sends from the chat
        # page (Ctrl-] m), and the lines of the running sessions, kept for
        # that page and forgotten once nobody is connected.
        self.on_chat_send: Callable[[str], None] = lambda _text: None
        self._chat: deque[ChatLine] = deque(maxlen=CHAT_HISTORY)
        self._chat_draft: str | None = None  # the page's line being typed, while open
        # A prompt needs the screen: the chat page closes, keeping what was typed.
        self._chat_yield = False
        self._chat_kept = ""
        self._chat_task: asyncio.Task[None] | None = None
        self._activity = ""
        self._saved_tty: list[Any] | None = None  # termios.tcgetattr's attributes
        self._code: str | None = None
        self._code_expires = 0.0
        self._notice = ""
        self._viewers: dict[str, Viewer] = {}
        self._menu = False
        # After `v` or `r` with several engineers connected: which one.
        self._picking: str | None = None
        # The open code for another engineer (its lines), to redraw on a resize.
        self._inviting: list[str] | None = None
        self._keys: asyncio.Queue[str] | None = None
        # The open prompt (request, started, timeout, max_rights), to redraw on a resize.
        self._asking: tuple[ConsentRequest, float, float, str] | None = None
        self._prompt_lock = asyncio.Lock()
        self._banner_timer: asyncio.TimerHandle | None = None
        self._flash_timer: asyncio.TimerHandle | None = None
        self._held: deque[bytes] = deque()
        self._recent = RecentOutput()  # what a prompt covers, to paint back
        self._held_bytes = 0
        # Everything drawn goes through here, in order, never blocking.
        self._out = TerminalOutput(out_fd, on_pause=self._terminal_behind,
                                   on_resume=self._terminal_caught_up,
                                   on_error=self._terminal_failed)
        self._terminal_paused = False
        # Pending while the shells must wait for the customer's screen.
        self._behind: asyncio.Future[None] | None = None
        self._restore_blocking: Callable[[], None] = lambda: None

    # -- terminal setup -------------------------------------------------------

    async def __aenter__(self) -> CustomerScreen:
        loop = asyncio.get_running_loop()
        # On purpose (uvloop would anyway, for the input it watches, which is
        # the same open terminal), and undone on the way out.
        self._restore_blocking = set_nonblocking(self.in_fd, self.out_fd)
        if os.isatty(self.in_fd):
            self._saved_tty = termios.tcgetattr(self.in_fd)
            tty.setraw(self.in_fd)
            # The alternate screen, as full-screen programs use: on the way
            # out the customer's terminal is as it was, not left under our code.
            self._emit(ALT_SCREEN_ON)
            loop.add_signal_handler(signal.SIGWINCH, self.redraw)
        # A polite stop (kill, a closed terminal window) ends as Ctrl-C does,
        # so the engineer is told and the terminal restored on the way out.
        for sig in QUIT_SIGNALS:
            loop.add_signal_handler(sig, self.quit.set)
        loop.add_reader(self.in_fd, self._on_input)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.in_fd)
        for sig in (signal.SIGWINCH, *QUIT_SIGNALS):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        for timer in (self._banner_timer, self._flash_timer):
            if timer is not None:
                timer.cancel()
        if self._chat_task is not None:
            self._chat_task.cancel()
        if self._saved_tty is not None:
            # Cleared first: a mirrored program that left the alternate screen
            # itself (vi's exit) would otherwise leave our drawing behind.
            self._emit(RESET + CLEAR + ALT_SCREEN_OFF)
        # Bounded: a terminal nobody reads any more does not keep us here.
        await self._out.drain()
        drained = self._out.buffered == 0
        self._out.close()
        self._restore_blocking()
        if self._saved_tty is not None:
            # TCSADRAIN would wait for a terminal that stopped reading.
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self.in_fd, termios.TCSADRAIN if drained else termios.TCSANOW,
                                  self._saved_tty)

    def _emit(self, text: str) -> None:
        self._write(text.encode())

    def _write(self, data: bytes) -> None:
        self._out.write(data)

    # -- keeping up with the customer's terminal ------------------------------

    def _terminal_behind(self) -> None:
        self._terminal_paused = True
        self._update_room()

    def _terminal_caught_up(self) -> None:
        self._terminal_paused = False
        self._update_room()

    def _terminal_failed(self, exc: TerminalFailed) -> None:
        # The customer can no longer see what happens on their computer, nor
        # answer: nothing may go on unseen, so everything ends.
        self._terminal_paused = False
        self._update_room()
        self.quit.set()

    def _update_room(self) -> None:
        behind = self._terminal_paused or self._held_bytes > MAX_HELD_OUTPUT
        if behind and self._behind is None:
            self._behind = asyncio.get_running_loop().create_future()
        elif not behind and self._behind is not None:
            future, self._behind = self._behind, None
            if not future.done():
                future.set_result(None)

    def _size(self) -> tuple[int, int]:
        try:
            size = os.get_terminal_size(self.out_fd)
            return size.columns, size.lines
        except OSError:
            return 80, 24

    def _lines(self, lines: list[str]) -> None:
        self._emit("".join(line + "\x1b[K\r\n" for line in lines))

    # -- keys ----------------------------------------------------------------

    def _on_input(self) -> None:
        try:
            data = os.read(self.in_fd, 1024)
        except (BlockingIOError, InterruptedError):
            return  # a wakeup with nothing to read (the terminal is non-blocking)
        except OSError:
            data = b""
        if not data:  # stdin closed: nobody can answer prompts or end sessions
            asyncio.get_running_loop().remove_reader(self.in_fd)
            return
        self._on_keys(data)

    def _on_keys(self, data: bytes) -> None:
        """Route a chunk of keys: prompt, menu, or the shared shell."""
        typed = bytearray()
        for byte in data:
            if (self._viewers and self._keys is None and not self._menu
                    and self._picking is None and byte != CTRL_RBRACKET):
                typed.append(byte)
                continue
            if typed:
                self.on_customer_input(bytes(typed))
                typed.clear()
            self._key(byte)
        if typed:
            self.on_customer_input(bytes(typed))

    def _key(self, byte: int) -> None:
        if byte == CTRL_C and not self._viewers:
            self.quit.set()
        elif self._keys is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self._keys.put_nowait(chr(byte))
        elif self._picking is not None:
            action, self._picking = self._picking, None
            seats = list(self._viewers)
            if ord("1") <= byte < ord("1") + len(seats):
                seat = seats[byte - ord("1")]
                (self.on_view_only if action == "v" else self.on_remove)(seat)
            self.draw_banner()
        elif self._menu:
            self._menu = False
            several = len(self._viewers) > 1
            if byte in (ord("e"), ord("E")):
                self.on_end_all()
            elif byte in (ord("v"), ord("V")):
                if several:
                    self._picking = "v"
                else:
                    self.on_view_only(None)
            elif byte in (ord("r"), ord("R")) and several:
                self._picking = "r"
            elif byte in (ord("i"), ord("I")):
                self.on_invite()
            elif byte in (ord("x"), ord("X")):
                self.on_cancel_transfers()
            elif byte in (ord("f"), ord("F")):
                self.on_files()
            elif byte in (ord("m"), ord("M")):
                self.open_chat()
            elif byte in (ord("q"), ord("Q")):
                self.quit.set()
            self.draw_banner()
        elif byte == CTRL_RBRACKET and self._viewers:
            self._menu = True
            self.draw_banner()

    # -- the idle screen: code and who is connected ----------------------------

    def set_code(self, code: str | None, expires_in: int) -> None:
        self._code = code
        self._code_expires = time.monotonic() + expires_in
        if not self._viewers and self._keys is None:
            self.show_idle()

    def notice(self, text: str) -> None:
        """Tell the customer something: on the code screen until the next
        notice; during a session beside who is connected, for a while."""
        self.flash(text)

    def flash(self, text: str, seconds: float = FLASH_SECONDS) -> None:
        """A notice that, during a session, shows in the banner next to who is
        connected for `seconds` and then goes, leaving the banner as it was."""
        self._notice = text
        if self._flash_timer is not None:
            self._flash_timer.cancel()
            self._flash_timer = None
        if self._viewers:
            self._flash_timer = asyncio.get_running_loop().call_later(
                seconds, self._end_flash, text)
            self.draw_banner()
        elif self._keys is None:
            self.show_idle()

    def _end_flash(self, text: str) -> None:
        self._flash_timer = None
        if self._notice == text and self._viewers:
            self._notice = ""
            self.draw_banner()

    def _code_lines(self) -> list[str]:
        minutes = max(0, math.ceil((self._code_expires - time.monotonic()) / 60))
        lines = [f"{BOLD}consentry remote support{RESET}", ""]
        if self._code:
            lines += [
                f"  Your support code:  {BOLD}{self._code}{RESET}",
                f"  Read it to your support engineer. It works once and expires in "
                f"{minutes or '<1'} min.",
            ]
        else:
            lines.append("  Connecting to the support service...")
        lines.append("")
        if self._notice:
            lines += [f"  {self._notice}", ""]
        lines.append("  Nobody can connect without your approval. Ctrl-C quits.")
        return lines

    def show_idle(self) -> None:
        self._emit(CLEAR)
        self._lines(self._code_lines())

    def redraw(self) -> None:
        """At once, on a resize: what is on screen, laid out for the new size."""
        if self._viewers:
            self._set_region()
            if self._asking is None:
                # The session as it stands, laid out again (and the cursor back
                # where the output left it, not at the top of the region).
                self._paint_recent()
        if self._inviting is not None:
            self._draw_invite(self._inviting)
        elif self._chat_draft is not None:
            self._draw_chat()
        elif self._asking is not None:
            request, started, timeout, max_rights = self._asking
            self._draw_prompt(request, remaining(started, time.monotonic(), timeout),
                              max_rights)
        elif not self._viewers:
            self.show_idle()

    # -- consent -------------------------------------------------------------

    async def ask_consent(
        self, request: ConsentRequest, timeout: float, max_rights: str
    ) -> Decision:
        """Ask, one prompt at a time; silence until `timeout` is a refusal."""
        self._make_way_for_prompt()
        async with self._prompt_lock:
            self._keys = asyncio.Queue(maxsize=64)
            started = time.monotonic()
            self._asking = (request, started, timeout, max_rights)
            drawn = False
            try:
                while True:
                    left = remaining(started, time.monotonic(), timeout)
                    if left <= 0:
                        return TIMEOUT
                    # A terminal that is behind still gets the prompt, but
                    # not a countdown tick a second piling up behind it.
                    if not drawn or not self._terminal_paused:
                        self._draw_prompt(request, left, max_rights)
                        drawn = True
                    try:
                        key = await asyncio.wait_for(self._keys.get(), min(1.0, left))
                    except TimeoutError:
                        continue
                    decision = decide(key, request, max_rights)
                    if decision is not None:
                        return decision
            finally:
                self._keys = None
                self._asking = None
                self._close_prompt()

    async def show_invite(self, code: str, expires_in: int, claimed: asyncio.Event) -> None:
        """Show the code for one more engineer, as the waiting code is shown,
        until the customer presses a key, the code is used, or it expires.
        The session's output is held meanwhile, as under a prompt."""
        self._make_way_for_prompt()
        async with self._prompt_lock:
            if claimed.is_set() or not self._viewers:
                return
            self._keys = asyncio.Queue(maxsize=64)
            minutes = max(1, math.ceil(expires_in / 60))
            self._inviting = [
                f"{BOLD}consentry: a code for one more engineer{RESET}", "",
                f"  Your support code:  {BOLD}{code}{RESET}",
                f"  Read it to the engineer you want to add. It works once, for one more "
                f"engineer, and expires in {minutes} min.",
                "",
                "  They join the session already running, and you are asked to approve them "
                "as usual.",
                "  Press any key to go back to the session.",
            ]
            waiters = [asyncio.ensure_future(self._keys.get()),
                       asyncio.ensure_future(claimed.wait())]
            try:
                self._draw_invite(self._inviting)
                await asyncio.wait(waiters, timeout=min(expires_in, INVITE_SHOWN_SECONDS),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
                self._keys = None
                self._inviting = None
                self._close_prompt()

    def _draw_invite(self, lines: list[str]) -> None:
        cols, _rows = self._size()
        self._emit("\x1b[2;1H\x1b[J")
        self._lines(fit_lines(lines, cols))

    def _close_prompt(self) -> None:
        if not self._viewers:
            self.redraw()
            self._discard_held()
            return
        # Paint back what the prompt covered, then the output held meanwhile.
        self._set_region()
        self._paint_recent()
        held = b"".join(self._held)
        self._discard_held()
        if held:
            self.mirror(held)

    def _paint_recent(self) -> None:
        cols, rows = self._size()
        self._emit(self._recent.paint(cols, rows - 1, top=2))

    def _discard_held(self) -> None:
        self._held.clear()
        self._held_bytes = 0
        self._update_room()

    def _hold(self, data: bytes) -> None:
        self._held.append(data)
        self._held_bytes += len(data)

    def _draw_prompt(self, request: ConsentRequest, left: float, max_rights: str) -> None:
        cols, _rows = self._size()
        prompt = fit_lines(prompt_lines(request, left, max_rights), cols)
        if self._viewers:
            self._emit("\x1b[2;1H\x1b[J")
        else:
            self._emit(CLEAR)
        self._lines([f"{BOLD}consentry: approval needed{RESET}", "", *prompt])

    # -- the mirrored session ------------------------------------------------

    def session_started(self, session: str, viewer: Viewer) -> None:
        first = not self._viewers
        self._viewers[session] = viewer
        self._notice = ""
        if first:
            self._emit(CLEAR)
            self._recent.clear()  # the session's screen starts blank
        self._set_region()

    def session_ended(self, session: str, message: str) -> None:
        self._viewers.pop(session, None)
        self._menu = False
        self._picking = None
        if not self._viewers:
            self._recent.clear()  # no session's output kept once nobody is connected
            self._chat.clear()  # nor what was said
            self._chat_kept = ""
            if self._chat_draft is not None and self._keys is not None:
                with contextlib.suppress(asyncio.QueueFull):
                    self._keys.put_nowait("")  # the chat page closes
        self.flash(message)  # on the code screen, or beside who is still connected
        if not self._viewers and self._asking is not None:
            self.redraw()  # a prompt still open gets the whole screen, banner gone

    def set_control(self, session: str, control: bool) -> None:
        if session in self._viewers:
            self._viewers[session].control = control
            self.draw_banner()

    def mirror(self, data: bytes) -> asyncio.Future[None] | None:
        """Show the session's output as the engineer sees it (held back while
        a prompt is open: pausing the drawing, not the shell, keeps the prompt
        readable and still shows the customer everything afterwards).

        Returns None while the customer's screen keeps up, else a future done
        once it has caught up: the caller reads no more output until then."""
        if self._keys is not None:
            self._hold(data)
        else:
            self._write(data)
            self._recent.add(data)
            # Redraw the banner once output pauses, so we never split an
            # escape sequence of the shell's with one of ours.
            if self._banner_timer is not None:
                self._banner_timer.cancel()
            self._banner_timer = asyncio.get_running_loop().call_later(0.3, self.draw_banner)
        self._update_room()
        return self._behind

    def _banner_text(self) -> str:
        if self._menu:
            # The longest wording that fits: every choice must stay on the
            # customer's one banner row, whatever its width.
            cols, _rows = self._size()
            texts = _SEATS_MENU_TEXTS if len(self._viewers) > 1 else _MENU_TEXTS
            return next((text for text in texts if len(text) <= cols), texts[-1])
        if self._picking is not None:
            what = "Take control from" if self._picking == "v" else "Remove"
            names = "  ".join(f"[{n}] {printable(v.display, 24)}"
                              for n, v in enumerate(self._viewers.values(), 1))
            return f"{what}:  {names}  [other key] back"
        if len(self._viewers) > 1:
            # Numbered, so the menu can name one; short, so all of them fit.
            who = "; ".join(f"[{n}] {v.brief()}" for n, v in enumerate(self._viewers.values(), 1))
            note = (printable(self._notice, 160) if self._notice
                    else self._activity or "Ctrl-] for options")
            return f"consentry: {who} -- {note}"
        if self._notice:
            # Who is connected comes first, always: it is the customer's
            # privacy indicator; the note rides beside it (who in short, to
            # leave the note room) while it lasts. A long name is cut
            # rather than the note, which may say how to end the session.
            cols, _rows = self._size()
            note = printable(self._notice, 160)
            for name_len in _BANNER_NAME_LENGTHS:
                who = "; ".join(v.brief(name_len) for v in self._viewers.values())
                text = f"consentry: {who} -- {note}"
                if len(text) <= cols:
                    break
            return text
        if self._activity:
            who = "; ".join(v.brief() for v in self._viewers.values())
            return f"consentry: {who} -- {self._activity}"
        who = "; ".join(v.describe() for v in self._viewers.values())
        return f"consentry: {who} -- Ctrl-] for options"

    def set_activity(self, text: str) -> None:
        """The running file transfers' line (escaped by its maker), shown
        beside who is connected while no notice is; "" when none runs."""
        self._activity = text
        self.draw_banner()

    async def show_panel(self, lines: Callable[[], list[str]],
                         actions: Mapping[str, Callable[[], object]]) -> None:
        """A page over the session (as the invite code is shown) until a key:
        a key in `actions` (lower case) calls its action first. Output is
        held meanwhile."""
        async with self._prompt_lock:
            if not self._viewers:
                return
            self._keys = asyncio.Queue(maxsize=64)
            self._inviting = lines()
            try:
                self._draw_invite(self._inviting)
                with contextlib.suppress(TimeoutError):
                    key = await asyncio.wait_for(self._keys.get(), INVITE_SHOWN_SECONDS)
                    action = actions.get(key.lower())
                    if action is not None:
                        action()
            finally:
                self._keys = None
                self._inviting = None
                self._close_prompt()

    # -- the chat line -------------------------------------------------------

    def chat_line(self, line: ChatLine) -> None:
        """A line of a running session's chat: kept for the chat page and,
        from someone else, shown in the banner at once."""
        self._chat.append(line)
        if self._chat_draft is not None:
            self._draw_chat()
        elif line.role != "customer":
            self.flash(chat_banner(line), CHAT_FLASH_SECONDS)

    def _make_way_for_prompt(self) -> None:
        """A consent prompt or a code must not wait behind the chat page
        (the engineer's request would time out meanwhile): it closes."""
        if self._chat_draft is not None and self._keys is not None:
            self._chat_yield = True
            with contextlib.suppress(asyncio.QueueFull):
                self._keys.put_nowait("")

    def open_chat(self) -> None:
        """Ctrl-] m: the chat page, unless it is open already."""
        if self._viewers and (self._chat_task is None or self._chat_task.done()):
            self._chat_task = asyncio.get_running_loop().create_task(self.show_chat())

    async def show_chat(self) -> None:
        """The chat page: what was said and a line to type. Enter sends it
        (the page stays, to see the answer); Esc, Ctrl-] or Ctrl-C goes back
        to the session. The session's output is held meanwhile."""
        async with self._prompt_lock:
            if not self._viewers:
                return
            keys: asyncio.Queue[str] = asyncio.Queue(maxsize=_CHAT_KEYS)
            self._keys = keys
            self._chat_draft, self._chat_kept = self._chat_kept, ""
            self._chat_yield = False
            # Keys come a byte at a time; a letter outside ASCII is several.
            utf8 = codecs.getincrementaldecoder("utf-8")("ignore")
            # Keys typed after the customer closed the page (Esc, then at once
            # Ctrl-] e) are theirs too: routed as if the page had never been up.
            leaving, following = False, ""
            try:
                self._draw_chat()
                while self._viewers and not self._chat_yield:
                    try:
                        key = await asyncio.wait_for(keys.get(), CHAT_PAGE_SECONDS)
                    except TimeoutError:
                        break
                    if not key:
                        continue  # woken: the loop checks why
                    code = ord(key)
                    if code in (ESC, CTRL_RBRACKET, CTRL_C):
                        if code != ESC:
                            leaving = True
                            break
                        sequence, after = await self._escape_sequence(keys)
                        if not sequence:
                            leaving, following = True, after
                            break
                    elif key in ("\r", "\n"):
                        draft, self._chat_draft = self._chat_draft, ""
                        if draft.strip():
                            self.on_chat_send(draft)
                    elif code in (0x7F, 0x08):
                        self._chat_draft = self._chat_draft[:-1]
                    elif code == CTRL_U:
                        self._chat_draft = ""
                    elif code >= 0x20:
                        letters = utf8.decode(bytes([code]))
                        if len(self._chat_draft) + len(letters) <= MAX_CHAT_CHARS:
                            self._chat_draft += letters
                    self._draw_chat()
            finally:
                if self._chat_yield and self._viewers:
                    self._chat_kept = self._chat_draft or ""
                    self.flash("The message page closed for a question; Ctrl-] m opens it "
                               "again with what you typed.")
                self._keys = None
                self._chat_draft = None
                self._close_prompt()
                if leaving:
                    while not keys.empty():
                        following += keys.get_nowait()
                    if following:
                        self._on_keys(following.encode("latin-1"))

    async def _escape_sequence(self, keys: asyncio.Queue[str]) -> tuple[bool, str]:
        """After Esc: (True, "") if an escape sequence followed (an arrow key,
        read and ignored); (False, key) for Esc on its own, with the key read
        while waiting ("" if none), which is not part of it."""
        try:
            first = await asyncio.wait_for(keys.get(), ESCAPE_WAIT)
        except TimeoutError:
            return False, ""
        if first not in ("[", "O"):
            return False, first
        for _ in range(16):  # a CSI sequence ends with a byte in @..~
            try:
                key = await asyncio.wait_for(keys.get(), ESCAPE_WAIT)
            except TimeoutError:
                break
            if key and 0x40 <= ord(key) <= 0x7E:
                break
        return True, ""

    def _draw_chat(self) -> None:
        assert self._chat_draft is not None
        cols, rows = self._size()
        who = "your support engineers" if len(self._viewers) > 1 else "your support engineer"
        head = [f"{BOLD}consentry: messages with {who}{RESET}", ""]
        prefix = "  Your message: "
        room = max(1, cols - len(prefix) - 1)
        typed = printable(self._chat_draft, MAX_CHAT_CHARS * 10)[-room:]
        hint = fit_lines(["  Enter sends it. Esc goes back to the session. The support "
                          "service's log keeps only how many messages there were."], cols)
        foot = ["", prefix + typed, *hint]
        said = fit_lines([chat_page_line(line) for line in self._chat], cols)
        space = max(1, rows - 1 - len(head) - len(foot))
        body = said[-space:] if said else ["  No messages yet. Type one below."]
        self._emit("\x1b[2;1H\x1b[J" + "\x1b[K\r\n".join(head + body + foot) + "\x1b[K")
        # The cursor where the next letter goes, as in any text box.
        self._emit(f"\x1b[{len(hint)}A\x1b[{len(prefix) + len(typed) + 1}G")

    def _set_region(self) -> None:
        _cols, rows = self._size()
        # Row 1 is ours; the session scrolls in rows 2..N.
        self._emit(f"\x1b[2;{rows}r\x1b[2;1H")
        self.draw_banner()

    def draw_banner(self) -> None:
        if not self._viewers:
            return
        cols, _rows = self._size()
        text = self._banner_text()[:cols].ljust(cols)
        self._emit(f"{SAVE}\x1b[1;1H{REVERSE}{text}{RESET}{RESTORE}")
