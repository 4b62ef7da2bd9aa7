"""`TerminalView`: the remote shell, emulated by pyte, drawn by Textual.

The widget knows nothing about the network. The app hands it two callbacks
(`on_input` for bytes to send to the remote PTY, `on_resize` for the new
size) and calls `feed` with what the PTY printed.

Everything fed is *terminal content*: it goes through a VT parser into a
character grid, and the grid is drawn as Rich `Segment`s built directly from
cell text and attributes. Nothing from the network is ever parsed as Rich
markup, and control characters never reach the engineer's own terminal.

pyte does the VT100/xterm emulation. Where it falls short of what `vi`,
`less`, `top` and shells send today, this module fills in (see
`_EscapeFilter` and `_Screen`):

- the alternate screen (``CSI ?1049h``/``?1047h``/``?47h``), which pyte only
  records as a mode;
- CSI sequences pyte misparses: ``CSI > ...`` (vim's modifyOtherKeys would
  otherwise turn into "underline"), intermediates such as ``CSI !p``, and
  colon sub-parameters (``CSI 4:3m``, ``CSI 38:2::r:g:b m``) whose tails
  pyte would print as text;
- DCS/APC/PM/SOS strings (terminal queries, sixel), which pyte would print;
- characters pyte cannot place (controls, zero-width non-combining marks
  such as ZWJ or VS16), at which pyte stops drawing the rest of the text;
- DEC line drawing (``ESC ( 0``), which pyte ignores in UTF-8 mode;
- NEL (``ESC E``) without its carriage return, the pending wrap surviving
  CUU/CUD, DECCOLM resizing the grid, and DECSCNM rewriting every cell (it is
  a screen-wide flag here, drawn by the widget). tests/console/test_vttest.py
  holds the result against vttest's screens as tmux shows them.
"""

from __future__ import annotations

import codecs
import copy
import logging
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any, ClassVar, Final, cast

import pyte
from pyte.screens import Char, StaticDefaultDict
from rich.cells import cell_len
from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.geometry import Region
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget
from wcwidth import wcwidth as _wcwidth

from console.widgets.keys import DECCKM, RESERVED_KEYS, key_to_bytes

#: Bracketed paste (``CSI ?2004h``), as pyte records private modes.
BRACKETED_PASTE: Final[int] = 2004 << 5

# Alternate-screen private modes. 1049 also saves/restores the cursor.
_ALT_SCREEN_MODES: Final[frozenset[int]] = frozenset({47, 1047, 1049})

PASTE_START: Final[bytes] = b"\x1b[200~"
PASTE_END: Final[bytes] = b"\x1b[201~"

log = logging.getLogger(__name__)

MIN_COLS: Final[int] = 2
MIN_ROWS: Final[int] = 2

# A screen this big is redrawn whole rather than line by line.
_FULL_REFRESH_FRACTION: Final[float] = 0.5


@lru_cache(maxsize=4096)
def _cell_width(char: str) -> int:
    width: int = _wcwidth(char)
    return width


@lru_cache(maxsize=4096)
def _drawable(char: str) -> bool:
    """Whether pyte can place this character on the grid.

    pyte stops drawing a whole chunk at the first character wcwidth calls
    unprintable, and at zero-width characters that are not combining marks.
    xterm ignores such characters, so we drop them before pyte sees them.
    """
    width = _cell_width(char)
    return width > 0 or (width == 0 and unicodedata.combining(char) != 0)


# Private modes `_Screen` handles itself rather than through pyte:
# DECCOLM (?3), which pyte obeys by resizing to 132 columns behind the
# widget's back, and DECSCNM (?5), which pyte applies by rewriting every
# cell's reverse flag (so ?5l also wipes reverse text the program drew).
_DECCOLM: Final[int] = 3
_DECSCNM: Final[int] = 5
_OWN_PRIVATE_MODES: Final[frozenset[int]] = frozenset({_DECCOLM, _DECSCNM})


def _for_pyte(modes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(mode for mode in modes if mode not in _OWN_PRIVATE_MODES)


class _Screen(pyte.Screen):
    """pyte's screen plus the alternate screen and answers to queries."""

    _main_buffer: Any
    _saved_cursor: pyte.screens.Cursor | None
    reverse_video: bool

    def __init__(self, columns: int, lines: int) -> None:
        # Replies to DA/DSR queries; set by the widget.
        self.reply: Callable[[str], None] | None = None
        super().__init__(columns, lines)

    def reset(self) -> None:
        super().reset()
        self._main_buffer = None
        self._saved_cursor = None
        # DECSCNM: the whole screen in reverse video ("light background").
        self.reverse_video = False

    @property
    def in_alternate_screen(self) -> bool:
        return self._main_buffer is not None

    def set_mode(self, *modes: int, **kwargs: Any) -> None:
        super().set_mode(*(_for_pyte(modes) if kwargs.get("private") else modes), **kwargs)
        if kwargs.get("private"):
            for mode in modes:
                self._private_mode(mode, on=True)

    def reset_mode(self, *modes: int, **kwargs: Any) -> None:
        super().reset_mode(*(_for_pyte(modes) if kwargs.get("private") else modes), **kwargs)
        if kwargs.get("private"):
            for mode in modes:
                self._private_mode(mode, on=False)

    def _private_mode(self, mode: int, *, on: bool) -> None:
        if mode in _ALT_SCREEN_MODES:
            if on:
                self._enter_alternate(save_cursor=mode == 1049)
            else:
                self._leave_alternate(restore_cursor=mode == 1049)
        elif mode == _DECCOLM:
            # The column count stays the widget's, but the rest of DECCOLM
            # happens, as in xterm and tmux: the screen is cleared and the
            # cursor goes home (vttest relies on this to start a clean page).
            self.erase_in_display(2)
            self.cursor_position()
        elif mode == _DECSCNM and on != self.reverse_video:
            self.reverse_video = on  # drawn by the widget, cells untouched
            self.dirty.update(range(self.lines))

    # pyte's "wrap pending" (after a character in the last column) is
    # cursor.x == columns, and it survives vertical moves; in xterm and tmux
    # CUU and CUD end it, so the next character lands in the last column of
    # the new line instead of wrapping below it.
    def _end_pending_wrap(self) -> None:
        if self.cursor.x >= self.columns:
            self.cursor.x = self.columns - 1

    def cursor_up(self, count: int | None = None) -> None:
        self._end_pending_wrap()
        super().cursor_up(count)

    def cursor_down(self, count: int | None = None) -> None:
        self._end_pending_wrap()
        super().cursor_down(count)

    def report_device_status(self, mode: int, **kwargs: Any) -> None:
        # The cursor's column as drawn: pyte would report one past the last
        # column while a wrap is pending, a column that does not exist.
        pending = self.cursor.x
        self._end_pending_wrap()
        try:
            super().report_device_status(mode, **kwargs)
        finally:
            self.cursor.x = pending

    def next_line(self) -> None:
        """NEL (ESC E): a new line *and* a carriage return; pyte omits the
        carriage return unless LNM is set."""
        self.carriage_return()
        self.index()

    def _enter_alternate(self, *, save_cursor: bool) -> None:
        if self._main_buffer is not None:
            return
        if save_cursor:
            self._saved_cursor = copy.copy(self.cursor)
        self._main_buffer = self.buffer
        # A fresh, empty grid, made the way pyte makes its own. pyte annotates
        # `buffer` as a plain Dict, but builds it as a defaultdict.
        grid = cast("defaultdict[int, StaticDefaultDict[int, Char]]", self.buffer)
        self.buffer = type(grid)(grid.default_factory)
        self.dirty.update(range(self.lines))

    def _leave_alternate(self, *, restore_cursor: bool) -> None:
        if self._main_buffer is None:
            return
        main = self._main_buffer
        self._main_buffer = None
        # The main screen was not resized while hidden: drop what no longer fits.
        for y in [y for y in main if y >= self.lines]:
            del main[y]
        for row in main.values():
            for x in [x for x in row if x >= self.columns]:
                del row[x]
        self.buffer = main
        if restore_cursor and self._saved_cursor is not None:
            self.cursor = self._saved_cursor
            self._saved_cursor = None
            self.ensure_hbounds()
            self.ensure_vbounds()
        self.dirty.update(range(self.lines))

    def draw(self, data: str) -> None:
        if not (data.isascii() and data.isprintable()):
            data = "".join(char for char in data if _drawable(char))
            if not data:
                return
        super().draw(data)

    def write_process_input(self, data: str) -> None:
        if self.reply is not None:
            self.reply(data)


class _Stream(pyte.Stream):
    """pyte's parser, with NEL sent to `_Screen.next_line`."""

    # Not a ClassVar annotation: pyte declares `escape` unannotated, so as an
    # instance variable, and it is read as one (`self.escape`).
    escape = {**pyte.Stream.escape, "E": "next_line"}


# Sequences pyte gets wrong, matched whole so `_EscapeFilter` can drop or
# rewrite them. Only these are matched, so ordinary output costs one scan.
_FIXUPS: Final[re.Pattern[str]] = re.compile(
    r"\x1b\[(?P<sgr>[0-9;]*:[0-9;:]*|(?:[0-9;]*;)?58;[0-9;]*)m"  # SGR needing a rewrite
    r"|\x1b\[[<=>][0-9;:?]*[ -/]*[@-~]"  # CSI > c, CSI > 4;2 m, CSI = 5 u ...
    r"|\x1b\[\??[0-9;:]*[ -/]*[!-#%-/][ -/]*[@-~]"  # intermediates: CSI ! p, CSI 0 \" q
    r"|\x1b\[\??[0-9;]*:[0-9;:]*[ -/]*[@-~]"  # colon sub-parameters outside SGR
    # "?" on a final whose pyte handler takes no `private` flag raises
    # TypeError (vim's CSI ?4m query, DECXCPR CSI ?6n, ...).
    r"|\x1b\[\?[0-9;]*['@A-HLMPXa-gmnr]"
    r"|\x1b[P_^X][^\x1b\x07]*(?:\x1b\\|\x07|(?=\x1b[^\\]))"  # DCS/APC/PM/SOS strings
)
_STRING_OPENERS: Final[tuple[str, ...]] = ("\x1bP", "\x1b_", "\x1b^", "\x1bX")
_STRING_END: Final[re.Pattern[str]] = re.compile(r"\x1b\\|\x07|\x1b(?=[^\\])")
_OPEN_CSI_TAIL: Final[re.Pattern[str]] = re.compile(r"\x1b(?:\[[<=>?]?[0-9;:]*[ -/]*)?")
# A sequence still open after this many characters is not one we care about.
_MAX_HELD: Final[int] = 256


def _rewrite_sgr(params: str) -> str:
    """An SGR pyte understands: colon forms to semicolons, underline colour dropped."""
    groups = params.split(";")
    out: list[str] = []
    i = 0
    while i < len(groups):
        group = groups[i]
        if ":" in group:
            sub = [part or "0" for part in group.split(":")]
            head = sub[0]
            if head in ("38", "48") and len(sub) >= 5 and sub[1] == "2":
                out += [head, "2", *sub[-3:]]  # both 38:2:r:g:b and 38:2:cs:r:g:b
            elif head in ("38", "48") and len(sub) >= 3 and sub[1] == "5":
                out += [head, "5", sub[2]]
            elif head == "4":  # curly/dotted/... underline: plain underline
                out.append("24" if sub[1] == "0" else "4")
            i += 1  # 58:... (underline colour) and unknown forms: dropped
            continue
        if group in ("38", "48", "58"):
            kind = groups[i + 1] if i + 1 < len(groups) else ""
            count = 3 if kind == "5" else 5 if kind == "2" else 1
            if group != "58":
                out += groups[i : i + count]
            i += count
            continue
        out.append(group)
        i += 1
    # Nothing left must not become CSI m, which would reset all attributes.
    return "\x1b[" + ";".join(out) + "m" if out else ""


class _EscapeFilter:
    """Drops or rewrites the escape sequences pyte would mishandle.

    Works on decoded text, chunk by chunk: an escape sequence cut in two by
    the network is held back until its end arrives.
    """

    def __init__(self) -> None:
        self._held = ""
        self._in_string = False

    def reset(self) -> None:
        self._held = ""
        self._in_string = False

    def feed(self, text: str) -> str:
        text = self._held + text
        self._held = ""
        if self._in_string:
            end = _STRING_END.search(text)
            if end is None:
                # Keep a final ESC: it may be the first half of ST.
                self._held = "\x1b" if text.endswith("\x1b") else ""
                return ""
            self._in_string = False
            text = text[end.start() if end.group() == "\x1b" else end.end() :]
        if "\x1b" not in text:
            return text
        text = _FIXUPS.sub(self._fix, text)
        # An unterminated string: discard it, and whatever follows until it ends.
        opener = max(text.rfind(prefix) for prefix in _STRING_OPENERS)
        if opener >= 0:
            self._in_string = True
            self._held = "\x1b" if text.endswith("\x1b") else ""
            return text[:opener]
        last_esc = text.rfind("\x1b")
        if (
            last_esc >= 0
            and len(text) - last_esc <= _MAX_HELD
            and _OPEN_CSI_TAIL.fullmatch(text, last_esc)
        ):
            self._held = text[last_esc:]
            return text[:last_esc]
        return text

    @staticmethod
    def _fix(match: re.Match[str]) -> str:
        sgr = match.group("sgr")
        return "" if sgr is None else _rewrite_sgr(sgr)


# pyte's colour names: the 8 ANSI colours ("brown" is yellow), "bright..."
# for 90-97/100-107 (with pyte's "bfightmagenta" typo for 105), or 6 hex
# digits for 256-colour and truecolour.
_ANSI_NAMES: Final[dict[str, int]] = {
    "black": 0,
    "red": 1,
    "green": 2,
    "brown": 3,
    "yellow": 3,
    "blue": 4,
    "magenta": 5,
    "cyan": 6,
    "white": 7,
}
_HEX: Final[re.Pattern[str]] = re.compile(r"[0-9a-fA-F]{6}")


@lru_cache(maxsize=1024)
def _color(name: str) -> Color | None:
    """Rich colour for a pyte colour name; None means the widget's own."""
    if name in _ANSI_NAMES:
        # Numbered ANSI colours so the engineer's terminal theme applies.
        return Color.from_ansi(_ANSI_NAMES[name])
    for prefix in ("bright", "bfight"):
        if name.startswith(prefix) and name[len(prefix) :] in _ANSI_NAMES:
            return Color.from_ansi(_ANSI_NAMES[name[len(prefix) :]] + 8)
    if _HEX.fullmatch(name):
        return Color.from_rgb(int(name[0:2], 16), int(name[2:4], 16), int(name[4:6], 16))
    return None  # "default", or something malformed from a hostile stream


# (fg, bg, bold, italics, underscore, strikethrough, reverse, blink) of a pyte Char.
_AttrKey = tuple[str, str, bool, bool, bool, bool, bool, bool]


@lru_cache(maxsize=4096)
def _cell_style(key: _AttrKey) -> Style:
    fg, bg, bold, italics, underscore, strikethrough, reverse, blink = key
    # Explicit False so a bold/italic widget style does not leak into cells.
    return Style(
        color=_color(fg),
        bgcolor=_color(bg),
        bold=bold,
        italic=italics,
        underline=underscore,
        strike=strikethrough,
        reverse=reverse,
        blink=blink,
    )


class TerminalView(Widget, can_focus=True):
    """A remote terminal: feed it PTY output, it calls back with keys and sizes.

    Args:
        on_input: Receives bytes for the remote PTY (keys, pastes, and the
            terminal's answers to device-status queries). Not called while
            read-only.
        on_resize: Receives (cols, rows) whenever the emulated screen changes
            size, including the first layout.

    Keys in `RESERVED_KEYS` bubble to the app; every other key an xterm would
    send is consumed here. While read-only, keys and pastes are swallowed and
    `InputDropped` is posted instead.
    """

    DEFAULT_CSS = """
    TerminalView {
        width: 1fr;
        height: 1fr;
        padding: 0;
        border: none;
        background: $background;
        color: $foreground;
    }
    TerminalView.-read-only {
        background-tint: $warning 6%;
    }
    """

    class InputDropped(Message):
        """A key or paste was swallowed because the view is read-only.

        Lets the app say "view only" without the widget knowing the words.
        """

    # Textual's text selection works on rendered Visuals; a Line API widget
    # has none, so selecting would only highlight nothing.
    ALLOW_SELECT: ClassVar[bool] = False

    def __init__(
        self,
        on_input: Callable[[bytes], None],
        on_resize: Callable[[int, int], None],
        *,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self._on_input = on_input
        self._on_resize = on_resize
        self._read_only = False
        self._reported_size: tuple[int, int] | None = None
        self._screen = _Screen(80, 24)
        self._screen.reply = self._reply
        self._stream = self._new_stream()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._filter = _EscapeFilter()
        # Where the cursor was last drawn, to repaint that line when it moves.
        self._drawn_cursor: tuple[int, int] | None = None

    # -- public API ------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes from the remote PTY. Chunks may split characters and sequences.

        Call it from the app's event loop (it schedules repaints).
        """
        text = self._filter.feed(self._decoder.decode(data))
        if text:
            try:
                self._stream.feed(text)
            except Exception as exc:
                # pyte raised on hostile or novel input; its parser resets
                # itself, and the session must go on.
                # The rest of this chunk is lost; later output draws normally.
                log.warning("terminal emulator rejected remote output: %r", exc)
        self._refresh_changes()

    def reset(self) -> None:
        """Forget everything shown (e.g. before showing another session)."""
        self._decoder.reset()
        self._filter.reset()
        self._screen.reset()
        self._stream = self._new_stream()  # drops any half-parsed sequence
        self._refresh_changes()

    def _new_stream(self) -> pyte.Stream:
        stream = _Stream(self._screen)
        # We decode UTF-8 ourselves, so pyte's flag only decides whether
        # ESC ( 0 (DEC line drawing) is honoured; xterm honours it in UTF-8.
        stream.use_utf8 = False
        return stream

    def set_read_only(self, flag: bool) -> None:
        """View-only: keys and pastes are swallowed, not sent."""
        self._read_only = flag
        self.set_class(flag, "-read-only")

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def size_cells(self) -> tuple[int, int]:
        """(cols, rows) of the emulated screen."""
        return self._screen.columns, self._screen.lines

    @property
    def app_cursor(self) -> bool:
        """The remote asked for application cursor keys (DECCKM)."""
        return DECCKM in self._screen.mode

    @property
    def bracketed_paste(self) -> bool:
        """The remote asked for bracketed paste (mode 2004)."""
        return BRACKETED_PASTE in self._screen.mode

    @property
    def reverse_video(self) -> bool:
        """The remote asked for the whole screen in reverse video (DECSCNM)."""
        return self._screen.reverse_video

    @property
    def terminal_screen(self) -> pyte.Screen:
        """The emulated screen, for inspection; do not feed it directly."""
        return self._screen

    @property
    def text_lines(self) -> list[str]:
        """The screen as plain text, one string per row."""
        return list(self._screen.display)

    # -- input -------------------------------------------------------------------

    def on_key(self, event: events.Key) -> None:
        if event.key in RESERVED_KEYS:
            return  # the app's bindings handle these
        data = key_to_bytes(event.key, event.character, app_cursor=self.app_cursor)
        if data is None:
            return
        # Ours, even when read-only: a typed letter must not fire an app binding.
        event.stop()
        event.prevent_default()
        if self._read_only:
            self.post_message(self.InputDropped())
        else:
            self._on_input(data)

    def on_paste(self, event: events.Paste) -> None:
        event.stop()
        event.prevent_default()
        if not event.text:
            return
        if self._read_only:
            self.post_message(self.InputDropped())
            return
        # Like xterm: pasted line ends are sent as CR, what Enter sends.
        text = event.text.replace("\r\n", "\r").replace("\n", "\r")
        data = text.encode("utf-8")
        if self.bracketed_paste:
            # A pasted end marker would let the rest run as typed commands.
            data = PASTE_START + data.replace(PASTE_END, b"") + PASTE_END
        self._on_input(data)

    def _reply(self, answer: str) -> None:
        # The remote asked its terminal (us) for the cursor position or
        # identity; only someone allowed to type may answer.
        if not self._read_only:
            self._on_input(answer.encode("utf-8"))

    # -- size ------------------------------------------------------------------

    def on_resize(self, event: events.Resize) -> None:
        self._fit()

    def on_mount(self) -> None:
        self._fit()

    def fit(self) -> None:
        """Fit the grid to the widget's size now: for a neighbour shown or
        hidden beside it, whose Resize event Textual does not always send."""
        self._fit()

    def _fit(self) -> None:
        width, height = self.size
        if width <= 0 or height <= 0:
            return  # hidden or not laid out yet: keep the last real size
        cols, rows = max(MIN_COLS, width), max(MIN_ROWS, height)
        screen = self._screen
        if (cols, rows) != (screen.columns, screen.lines):
            # In the alternate screen only the visible grid is resized; the
            # hidden main one is trimmed when the program leaves it.
            if rows < screen.lines:
                self._shrink_rows(rows)
            screen.resize(lines=rows, columns=cols)
            # pyte leaves the cursor where it was; xterm keeps it on screen
            # (x == columns is pyte's "wrap pending" state, still valid).
            screen.cursor.x = min(screen.cursor.x, screen.columns)
            screen.ensure_vbounds()
            screen.dirty.clear()
            self._drawn_cursor = None
            self.refresh()
        if (cols, rows) != self._reported_size:
            self._reported_size = (cols, rows)
            self._on_resize(cols, rows)

    def _shrink_rows(self, rows: int) -> None:
        """Lose as few lines as xterm does when the window gets shorter.

        pyte always deletes rows from the top and leaves the cursor where it
        was, so a prompt on the first row vanished and the cursor ended up
        below its text. xterm drops rows from the top only as far as needed to
        keep the cursor on screen, and the blank rows below it otherwise.
        """
        screen = self._screen
        top = max(0, screen.cursor.y + 1 - rows)
        kept = {y - top: line for y, line in screen.buffer.items() if top <= y < top + rows}
        screen.buffer.clear()
        screen.buffer.update(kept)
        screen.cursor.y -= top
        screen.lines = rows  # so pyte's resize has no rows left to delete

    # -- rendering -------------------------------------------------------------

    def on_focus(self) -> None:
        self._refresh_changes(force_cursor=True)

    def on_blur(self) -> None:
        self._refresh_changes(force_cursor=True)

    def _cursor_cell(self) -> tuple[int, int] | None:
        """Where to draw the cursor, or None when it should not be drawn."""
        screen = self._screen
        if not self.has_focus or screen.cursor.hidden:
            return None
        # pyte parks the cursor one past the last column while a wrap is pending.
        return min(screen.cursor.x, screen.columns - 1), screen.cursor.y

    def _refresh_changes(self, *, force_cursor: bool = False) -> None:
        """Repaint the lines pyte marked dirty, and the cursor's old and new line."""
        screen = self._screen
        lines = set(screen.dirty)
        screen.dirty.clear()
        cursor = self._cursor_cell()
        if cursor != self._drawn_cursor or force_cursor:
            if self._drawn_cursor is not None:
                lines.add(self._drawn_cursor[1])
            if cursor is not None:
                lines.add(cursor[1])
        self._drawn_cursor = cursor
        if not lines or not self.is_mounted:
            return
        if len(lines) >= screen.lines * _FULL_REFRESH_FRACTION:
            self.refresh()
            return
        width = self.size.width
        for start, count in _runs(sorted(y for y in lines if 0 <= y < screen.lines)):
            self.refresh(Region(0, start, width, count))

    def render_line(self, y: int) -> Strip:
        screen = self._screen
        width = self.size.width
        base = self.rich_style
        if y >= screen.lines:
            return Strip.blank(width, base)
        cursor = self._cursor_cell()
        cursor_x = cursor[0] if cursor is not None and cursor[1] == y else -1
        segments = list(
            _line_segments(screen.buffer[y], screen.columns, cursor_x, base, screen.reverse_video)
        )
        # Every row renders exactly `columns` cells; pad or crop to the widget.
        return Strip(segments, screen.columns).adjust_cell_length(width, base)


def _runs(lines: list[int]) -> Iterable[tuple[int, int]]:
    """Sorted line numbers as (start, count) runs of consecutive lines."""
    start = previous = -2
    for y in lines:
        if y != previous + 1:
            if start >= 0:
                yield start, previous - start + 1
            start = y
        previous = y
    if start >= 0:
        yield start, previous - start + 1


def _line_segments(
    row: Any, columns: int, cursor_x: int, base: Style, reverse_video: bool = False
) -> Iterable[Segment]:
    """One pyte row as Segments exactly `columns` cells wide, runs of one style merged.

    `reverse_video` (DECSCNM) inverts every cell, as the cursor inverts its own.
    """
    texts: list[str] = []
    current: _AttrKey | None = None
    x = 0
    while x < columns:
        char = row[x]
        data = char.data
        width = 1
        if not data:
            data = " "  # a wide character's stub whose owner was overwritten
        elif not data.isascii():
            width = cell_len(data)
            if width == 2:
                if x + 1 >= columns or row[x + 1].data != "":
                    # Cut at the margin, or its right half was overwritten.
                    data, width = " ", 1
            elif width != 1:
                data, width = "\ufffd", 1  # pyte and Rich disagree on its width
        key: _AttrKey = (
            char.fg,
            char.bg,
            char.bold,
            char.italics,
            char.underscore,
            char.strikethrough,
            # The cursor is the cell (or wide character) in reverse video.
            (char.reverse != reverse_video) != (x <= cursor_x < x + width),
            char.blink,
        )
        if key != current:
            if texts and current is not None:
                yield Segment("".join(texts), base + _cell_style(current))
            texts = []
            current = key
        texts.append(data)
        x += width
    if texts and current is not None:
        yield Segment("".join(texts), base + _cell_style(current))
