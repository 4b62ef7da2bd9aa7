"""TerminalView: remote output rendered faithfully, keys and sizes sent back.

Escape sequences are written out literally, as programs emit them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from rich.color import Color
from rich.style import Style
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.geometry import Region
from textual.pilot import Pilot

from console.widgets import TerminalView


class TermApp(App[None]):
    """A bare app around one TerminalView, recording what it sends."""

    BINDINGS = [
        Binding("f6", "mark('switch')"),
        Binding("f8", "mark('control')"),
        Binding("ctrl+backslash", "mark('leave')"),
        Binding("x", "mark('x')"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.sizes: list[tuple[int, int]] = []
        self.actions: list[str] = []
        self.dropped = 0

    def compose(self) -> ComposeResult:
        yield TerminalView(self.sent.append, lambda cols, rows: self.sizes.append((cols, rows)))

    def on_terminal_view_input_dropped(self, _message: TerminalView.InputDropped) -> None:
        self.dropped += 1

    def action_mark(self, name: str) -> None:
        self.actions.append(name)

    @property
    def term(self) -> TerminalView:
        return self.query_one(TerminalView)


@pytest.fixture
async def pilot() -> AsyncIterator[Pilot[None]]:
    app = TermApp()
    async with app.run_test(size=(40, 10)) as pilot:
        await pilot.pause()
        yield pilot


def _app(pilot: Pilot[None]) -> TermApp:
    app = pilot.app
    assert isinstance(app, TermApp)
    return app


def lines(term: TerminalView) -> list[str]:
    """What the widget paints, through Textual's line cache."""
    width, height = term.size
    return [strip.text.rstrip() for strip in term.render_lines(Region(0, 0, width, height))]


def style_at(term: TerminalView, x: int, y: int) -> Style:
    """The Rich style of cell (x, y) as rendered."""
    offset = 0
    for segment in term.render_line(y):
        length = segment.cell_length
        if offset <= x < offset + length:
            assert segment.style is not None
            return segment.style
        offset += length
    raise AssertionError(f"no cell at {x},{y}")


async def feed(pilot: Pilot[None], *chunks: bytes) -> TerminalView:
    term = _app(pilot).term
    for chunk in chunks:
        term.feed(chunk)
    await pilot.pause()
    return term


# -- rendering ---------------------------------------------------------------


async def test_plain_text_and_newlines(pilot: Pilot[None]) -> None:
    term = await feed(pilot, b"hello\r\nworld\r\n$ ")
    assert lines(term)[:3] == ["hello", "world", "$"]
    assert term.text_lines[0].rstrip() == "hello"


async def test_markup_is_shown_literally(pilot: Pilot[None]) -> None:
    term = await feed(pilot, b"[bold]not markup[/]\r\n[link=http://x]y[/link] :smile:")
    assert lines(term)[0] == "[bold]not markup[/]"
    assert lines(term)[1] == "[link=http://x]y[/link] :smile:"
    assert not style_at(term, 1, 0).bold


async def test_colours_and_attributes(pilot: Pilot[None]) -> None:
    term = await feed(
        pilot,
        b"\x1b[31mR\x1b[0m"  # ANSI red
        b"\x1b[92mG\x1b[0m"  # bright green
        b"\x1b[38;5;196mX\x1b[0m"  # 256 colours
        b"\x1b[48;2;10;20;30mT\x1b[0m"  # truecolour background
        b"\x1b[1mB\x1b[22m"
        b"\x1b[3mI\x1b[23m"
        b"\x1b[4mU\x1b[24m"
        b"\x1b[9mS\x1b[29m"
        b"\x1b[7mV\x1b[27m"
        b"\x1b[33;44mY\x1b[39;49mD",
    )
    assert lines(term)[0] == "RGXTBIUSVYD"
    assert style_at(term, 0, 0).color == Color.from_ansi(1)
    assert style_at(term, 1, 0).color == Color.from_ansi(10)
    assert style_at(term, 2, 0).color == Color.from_rgb(0xFF, 0, 0)
    assert style_at(term, 3, 0).bgcolor == Color.from_rgb(10, 20, 30)
    assert style_at(term, 4, 0).bold
    assert style_at(term, 5, 0).italic
    assert style_at(term, 6, 0).underline
    assert style_at(term, 7, 0).strike
    assert style_at(term, 8, 0).reverse
    assert style_at(term, 9, 0).color == Color.from_ansi(3)  # pyte's "brown"
    assert style_at(term, 9, 0).bgcolor == Color.from_ansi(4)
    # Default colours are the widget's own (from the theme).
    plain = style_at(term, 10, 0)
    assert plain.color == term.rich_style.color
    assert plain.bgcolor == term.rich_style.bgcolor
    assert not (plain.bold or plain.italic or plain.underline or plain.strike)


async def test_colon_sgr_forms_do_not_leak_as_text(pilot: Pilot[None]) -> None:
    term = await feed(
        pilot,
        b"\x1b[4:3mcurly\x1b[4:0m \x1b[38:2::1:2:3mtc\x1b[0m \x1b[58:5:1mu\x1b[59m",
    )
    assert lines(term)[0] == "curly tc u"
    assert style_at(term, 0, 0).underline
    assert not style_at(term, 5, 0).underline
    assert style_at(term, 6, 0).color == Color.from_rgb(1, 2, 3)


async def test_utf8_split_across_feeds(pilot: Pilot[None]) -> None:
    euro = "€".encode()
    term = await feed(pilot, b"price " + euro[:1], euro[1:2], euro[2:] + b"5")
    assert lines(term)[0] == "price €5"


async def test_escape_sequence_split_across_feeds(pilot: Pilot[None]) -> None:
    term = await feed(pilot, b"\x1b[3", b"1mred\x1b[", b"0m \x1b[>4;", b"2mplain")
    assert lines(term)[0] == "red plain"
    assert style_at(term, 0, 0).color == Color.from_ansi(1)
    assert not style_at(term, 5, 0).underline  # vim's modifyOtherKeys is not SGR 4


async def test_wide_characters_take_two_cells(pilot: Pilot[None]) -> None:
    term = await feed(pilot, "日本|".encode())
    assert lines(term)[0] == "日本|"
    assert term.render_line(0).cell_length == term.size.width
    assert term.terminal_screen.cursor.x == 5


async def test_controls_and_zero_width_do_not_eat_text(pilot: Pilot[None]) -> None:
    # pyte alone would stop drawing at \x05 and at ZWJ/VS16.
    term = await feed(pilot, "a\x05b\u200dc\ufe0fd\x90e".encode())
    assert lines(term)[0] == "abcde"


async def test_terminal_queries_and_strings_are_not_printed(pilot: Pilot[None]) -> None:
    term = await feed(
        pilot,
        b"a\x1bP+q544e\x1b\\b"  # DCS XTGETTCAP
        b"\x1b_Gf=100;AAAA\x1b\\c"  # APC (kitty graphics)
        b"\x1b]0;title\x07d"  # OSC title
        b"\x1b[!pe"  # soft reset
        b"\x1b[2 qf",  # cursor shape
        b"\x1bPq#0;2;0;0;0",  # sixel, split
        b"~~~~\x1b",
        b"\\g",
    )
    assert lines(term)[0] == "abcdefg"


async def test_dec_line_drawing(pilot: Pilot[None]) -> None:
    term = await feed(pilot, b"\x1b(0lqk\r\nx x\r\nmqj\x1b(B ok")
    assert lines(term)[:3] == ["┌─┐", "│ │", "└─┘ ok"]


async def test_cursor_positioning_and_erase(pilot: Pilot[None]) -> None:
    term = await feed(
        pilot,
        b"line1\r\nline2\r\nline3",
        b"\x1b[2;3HXY",  # CUP
        b"\x1b[1;1H\x1b[K",  # EL: erase line 1 from the cursor
        b"\x1b[3;6H\x1b[1K",  # EL 1: erase line 3 up to the cursor
        b"\x1b[5;10Hfar",
    )
    assert lines(term)[:5] == ["", "liXY2", "", "", "         far"]
    term.feed(b"\x1b[2J\x1b[Hclean")  # ED 2, home
    await pilot.pause()
    assert lines(term)[:2] == ["clean", ""]


async def test_scroll_region_insert_and_delete_lines(pilot: Pilot[None]) -> None:
    # A `top`-like screen: header rows 1-2 fixed, rows 3-5 scroll.
    rows = b"".join(b"\x1b[%d;1Hrow%d" % (n, n) for n in range(1, 7))
    term = await feed(pilot, rows, b"\x1b[3;5r", b"\x1b[5;1H\nnew")
    assert lines(term)[:6] == ["row1", "row2", "row4", "row5", "new", "row6"]
    term.feed(b"\x1b[3;1H\x1b[L")  # IL inside the region
    await pilot.pause()
    assert lines(term)[:6] == ["row1", "row2", "", "row4", "row5", "row6"]
    term.feed(b"\x1b[3;1H\x1b[2M")  # DL inside the region
    await pilot.pause()
    assert lines(term)[:6] == ["row1", "row2", "row5", "", "", "row6"]
    term.feed(b"\x1b[r\x1b[1;1H\x1b[M")  # reset region, DL at the top
    await pilot.pause()
    assert lines(term)[:2] == ["row2", "row5"]


async def test_vi_like_session_uses_alternate_screen(pilot: Pilot[None]) -> None:
    app = _app(pilot)
    term = await feed(pilot, b"user@host:~$ vi notes\r\n")
    assert lines(term)[0] == "user@host:~$ vi notes"
    cursor_before = (term.terminal_screen.cursor.x, term.terminal_screen.cursor.y)

    # What vim 9 sends on start with TERM=xterm-256color, then its redraw.
    term.feed(
        b"\x1b[?1049h\x1b[22;0;0t\x1b[>4;2m\x1b[?1h\x1b=\x1b[H\x1b[2J"
        b"\x1b]11;?\x07\x1b[?2004h\x1b[?u\x1b[c\x1b[?25h"
    )
    term.feed(
        b"\x1b[?25l\x1b[1;1Hhello vim\x1b[2;1H\x1b[94m~\x1b[m\x1b[3;1H\x1b[94m~\x1b[m"
        b'\x1b[10;1H"notes" 1L, 10B\x1b[10;31H1,1\x1b[10;37HAll'
        b"\x1b[1;1H\x1b[?25h"
    )
    await pilot.pause()
    shown = lines(term)
    assert shown[0] == "hello vim"
    assert shown[1] == "~"
    assert shown[9] == '"notes" 1L, 10B               1,1   All'
    assert style_at(term, 0, 1).color == Color.from_ansi(12)
    assert not style_at(term, 1, 0).underline
    assert term.app_cursor and term.bracketed_paste
    assert b"\x1b[?6c" in app.sent  # answered the device-attributes query

    # Application cursor keys while vim runs.
    await pilot.press("up")
    assert app.sent[-1] == b"\x1bOA"

    # Insert a line (vim's `O`): IL with the cursor on row 1.
    term.feed(b"\x1b[1;1H\x1b[Lnew first\x1b[1;10H")
    await pilot.pause()
    assert lines(term)[:2] == ["new first", "hello vim"]

    # Quit: the shell's screen and cursor come back untouched.
    term.feed(b"\x1b[?2004l\x1b[>4;m\x1b[23;0;0t\x1b[?1l\x1b>\x1b[?1049l")
    await pilot.pause()
    assert lines(term)[0] == "user@host:~$ vi notes"
    assert lines(term)[1] == ""
    assert (term.terminal_screen.cursor.x, term.terminal_screen.cursor.y) == cursor_before
    assert not term.app_cursor and not term.bracketed_paste
    await pilot.press("up")
    assert app.sent[-1] == b"\x1b[A"


async def test_less_like_status_line(pilot: Pilot[None]) -> None:
    term = await feed(
        pilot,
        b"\x1b[?1049h\x1b[H\x1b[2J",
        b"".join(b"line %d\r\n" % n for n in range(1, 10)),
        b"\x1b[7m(END)\x1b[27m\x1b[K",
    )
    assert lines(term)[0] == "line 1"
    assert lines(term)[9] == "(END)"
    assert style_at(term, 0, 9).reverse
    term.feed(b"\r\x1b[K\x1b[?1049l")
    await pilot.pause()
    assert lines(term) == [""] * 10


async def test_cursor_drawn_only_when_focused_and_visible(pilot: Pilot[None]) -> None:
    term = await feed(pilot, b"ab\x1b[1;2H")
    assert term.has_focus
    assert style_at(term, 1, 0).reverse  # the cursor cell
    assert not style_at(term, 0, 0).reverse
    term.feed(b"\x1b[?25l")  # DECTCEM off
    await pilot.pause()
    assert not style_at(term, 1, 0).reverse
    term.feed(b"\x1b[?25h\x1b[2;1H")  # back on, and moved: old cell repainted
    await pilot.pause()
    assert [s.reverse for s in (style_at(term, 1, 0), style_at(term, 0, 1))] == [False, True]
    pilot.app.set_focus(None)
    await pilot.pause()
    assert not style_at(term, 0, 1).reverse


# -- input -------------------------------------------------------------------


async def test_keys_are_sent_as_xterm_bytes(pilot: Pilot[None]) -> None:
    app = _app(pilot)
    await pilot.press("l", "s", "enter", "ctrl+c", "tab", "backspace", "escape", "left", "f1")
    await pilot.press("alt+b", "shift+tab", "pagedown", "ü")
    assert app.sent == [
        b"l", b"s", b"\r", b"\x03", b"\t", b"\x7f", b"\x1b", b"\x1b[D", b"\x1bOP",
        b"\x1bb", b"\x1b[Z", b"\x1b[6~", "ü".encode(),
    ]  # fmt: skip


async def test_terminal_keys_do_not_fire_app_bindings(pilot: Pilot[None]) -> None:
    app = _app(pilot)
    await pilot.press("x")
    assert app.sent == [b"x"]
    assert app.actions == []


async def test_reserved_keys_go_to_the_app(pilot: Pilot[None]) -> None:
    app = _app(pilot)
    await pilot.press("f6", "f8", "ctrl+backslash", "f7", "f9", "f10")
    assert app.sent == []
    assert app.actions == ["switch", "control", "leave"]


async def test_read_only_drops_input(pilot: Pilot[None]) -> None:
    app = _app(pilot)
    term = app.term
    term.set_read_only(True)
    assert term.read_only and term.has_class("-read-only")
    await pilot.press("a", "enter", "ctrl+c", "x")
    app.post_message(events.Paste("rm -rf /\n"))
    term.feed(b"\x1b[6n")  # a cursor-position query must not be answered either
    await pilot.pause()
    assert app.sent == []
    assert app.dropped == 5  # four keys and the paste: the app can say "view only"
    assert app.actions == []  # still swallowed, so no app binding fires
    await pilot.press("f6")
    assert app.actions == ["switch"]

    term.set_read_only(False)
    assert not term.has_class("-read-only")
    await pilot.press("a")
    assert app.sent == [b"a"]


async def test_paste_plain_and_bracketed(pilot: Pilot[None]) -> None:
    app = _app(pilot)
    app.post_message(events.Paste("echo hi\nls -l\r\n"))
    await pilot.pause()
    assert app.sent == [b"echo hi\rls -l\r"]

    app.term.feed(b"\x1b[?2004h")
    app.post_message(events.Paste("one\x1b[201~two"))
    await pilot.pause()
    # The embedded end marker is removed so the paste cannot break out.
    assert app.sent[-1] == b"\x1b[200~onetwo\x1b[201~"


async def test_cursor_position_report(pilot: Pilot[None]) -> None:
    app = _app(pilot)
    app.term.feed(b"\x1b[3;7H\x1b[6n")
    assert app.sent == [b"\x1b[3;7R"]


# -- size --------------------------------------------------------------------


async def test_resize_follows_the_widget() -> None:
    app = TermApp()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        term = app.term
        assert app.sizes == [(100, 30)]
        assert term.size_cells == (100, 30)
        term.feed(b"\x1b[30;1Hbottom")

        await pilot.resize_terminal(60, 20)
        await pilot.pause()
        assert app.sizes == [(100, 30), (60, 20)]
        assert term.size_cells == (60, 20)
        screen = term.terminal_screen
        assert (screen.columns, screen.lines) == (60, 20)
        assert lines(term)[19] == "bottom"  # pyte drops rows from the top
        assert screen.cursor.y < 20

        await pilot.resize_terminal(60, 20)  # unchanged: not reported again
        await pilot.pause()
        assert app.sizes == [(100, 30), (60, 20)]

        await pilot.resize_terminal(1, 1)  # never smaller than 2x2
        await pilot.pause()
        assert app.sizes[-1] == (2, 2)
        assert term.size_cells == (2, 2)


async def test_resize_inside_alternate_screen(pilot: Pilot[None]) -> None:
    app = _app(pilot)
    term = await feed(pilot, b"shell prompt$ ", b"\x1b[?1049h\x1b[Hfull screen")
    await pilot.resize_terminal(20, 5)
    await pilot.pause()
    assert app.sizes[-1] == (20, 5)
    term.feed(b"\x1b[?1049l")
    await pilot.pause()
    assert lines(term)[0] == "shell prompt$"
    assert term.terminal_screen.cursor.x < 20


async def test_reset_clears_the_screen(pilot: Pilot[None]) -> None:
    term = await feed(pilot, b"\x1b[?1049h\x1b[?1hsecret\x1bP+q")
    term.reset()
    term.feed(b"after")
    await pilot.pause()
    assert lines(term)[0] == "after"
    assert not term.app_cursor


async def test_remote_cannot_change_the_column_count(pilot: Pilot[None]) -> None:
    term = await feed(pilot, b"\x1b[?3h132 columns?")
    assert term.size_cells == (40, 10)
    assert lines(term)[0] == "132 columns?"
    # The rest of DECCOLM happens, as in xterm and tmux: a clear page, cursor home.
    term = await feed(pilot, b"\x1b[5;5H\x1b[?3lhome")
    assert term.size_cells == (40, 10)
    assert lines(term)[:2] == ["home", ""]


async def test_nel_starts_the_next_line_at_column_one(pilot: Pilot[None]) -> None:
    term = await feed(pilot, b"abc\x1bEdef")
    assert lines(term)[:2] == ["abc", "def"]


async def test_light_background_inverts_the_screen_not_the_cells(pilot: Pilot[None]) -> None:
    term = await feed(pilot, b"\x1b[7mneg\x1b[0m plain\x1b[?5h")
    app = _app(pilot)
    app.set_focus(None)  # the cursor cell would be inverted too
    await pilot.pause()
    assert term.reverse_video
    assert style_at(term, 0, 0).reverse is False  # reverse text on a reversed screen
    assert style_at(term, 4, 0).reverse is True
    term.feed(b"\x1b[?5l")
    await pilot.pause()
    # Leaving it restores the program's own reverse text (pyte would wipe it).
    assert style_at(term, 0, 0).reverse is True
    assert style_at(term, 4, 0).reverse is False


async def test_blink_is_drawn(pilot: Pilot[None]) -> None:
    term = await feed(pilot, b"\x1b[5;7mboth\x1b[25mrev")
    assert style_at(term, 0, 0).blink is True
    assert style_at(term, 0, 0).reverse is True
    assert style_at(term, 4, 0).blink is False


async def test_full_reset_leaves_the_alternate_screen(pilot: Pilot[None]) -> None:
    term = await feed(pilot, b"\x1b[?1049hinside\x1bcfresh")
    assert lines(term)[0] == "fresh"
    term.feed(b"\x1b[?1049l")  # nothing to go back to: no crash, nothing shown
    await pilot.pause()
    assert lines(term)[0] == "fresh"


async def test_private_queries_pyte_cannot_take_do_not_lose_output(pilot: Pilot[None]) -> None:
    # pyte raises TypeError on these and would drop the rest of the chunk.
    term = await feed(pilot, b"a\x1b[?4mb\x1b[?6nc\x1b[?5Wd")
    assert lines(term)[0] == "abcd"


async def test_hostile_parameters_do_not_break_the_widget(pilot: Pilot[None]) -> None:
    term = await feed(pilot, b"\x1b[1;2;3;4Hlost", b"\r\nkept\x1b[38;2;999;0;0mz\x1b[38;5;300my")
    assert lines(term)[1] == "keptzy"


async def test_shrinking_keeps_a_prompt_at_the_top(pilot: Pilot[None]) -> None:
    """pyte alone deletes rows from the top on shrink; xterm keeps the cursor's
    text and drops blank rows below it."""
    term = await feed(pilot, b"prompt$ ")
    await pilot.resize_terminal(40, 6)
    await pilot.pause()
    assert lines(term)[0] == "prompt$"
    assert (term.terminal_screen.cursor.y, term.terminal_screen.cursor.x) == (0, 8)


async def test_shrinking_with_a_full_screen_keeps_the_cursor_on_its_text(
    pilot: Pilot[None],
) -> None:
    term = await feed(pilot, b"\r\n".join(b"l%d" % i for i in range(10)))
    await pilot.resize_terminal(40, 4)
    await pilot.pause()
    assert lines(term) == ["l6", "l7", "l8", "l9"]
    assert term.terminal_screen.cursor.y == 3


# What tmux 3.3 shows for the same bytes (40 columns, as this module's app).
@pytest.mark.parametrize(("data", "expected"), [
    # A vertical move ends the pending wrap: B goes in the last column above/below.
    (b"\r\n" + b"A" * 40 + b"\x1b[AB", [" " * 39 + "B", "A" * 40]),
    (b"A" * 40 + b"\x1b[BB", ["A" * 40, " " * 39 + "B"]),
    # Horizontal moves and CR from the pending state, unchanged from pyte.
    (b"A" * 40 + b"\rB", ["B" + "A" * 39, ""]),
    (b"A" * 40 + b"\x1b[KB", ["A" * 40, "B"]),
], ids=["CUU", "CUD", "CR", "EL"])
async def test_pending_wrap_as_tmux_has_it(pilot: Pilot[None], data: bytes,
                                           expected: list[str]) -> None:
    term = await feed(pilot, data)
    assert lines(term)[:2] == [line.rstrip() for line in expected]


async def test_cursor_report_at_the_right_margin_names_a_real_column(pilot: Pilot[None]) -> None:
    app = _app(pilot)
    app.term.feed(b"A" * 40 + b"\x1b[6n")
    assert app.sent == [b"\x1b[1;40R"]
