"""vttest's screens, drawn by the console's terminal, cell by cell as tmux draws them.

The fixtures under fixtures/vttest/ are vttest's own output for menu 1
(cursor movements) and menu 2 (screen features, graphic rendition) at 80x24,
and what tmux 3.3 showed after each screen; `regenerate.py` there made them
(see its docstring). Here the same bytes go through `TerminalView.feed` into
an 80x24 widget, and every cell it paints must carry the character, bold,
underline, blink and reverse that tmux shows, with the cursor in the same place.

Three screens are checked against what vttest itself says they must show
(and xterm shows) instead, because tmux 3.3 gets them wrong:

- DECSCNM (``CSI ?5h``, "light background"): tmux ignores it; xterm and this
  widget show the whole screen in reverse video. The comparison takes that
  screen-wide reverse out, and checks it separately.
- menu1-03/04, autowrap: after a character in the last column (wrap pending)
  a backspace must land on column 79, as on a VT100 and in xterm; tmux's
  `screen_write_backspace` moves from its one-past-the-end cursor to column
  80, so its N/n, R/r, V/v, Z/z pairs break over two lines. vttest says "the
  left/right margins should have letters in order" (I i J j ... Z z).
- menu2-11, origin mode: DECSTBM homes the cursor, and with DECOM set home is
  the top margin (xterm, VT100); tmux's `screen_write_scrollregion` homes to
  row 1 whatever DECOM says, so its "This line should be at the bottom of the
  screen" is on row 2.

menu1-02 is vttest's border drawn for 132 columns (DECCOLM), on a terminal
that stays 80 wide; it is fed but not compared: what is right there is
undefined, and its right-hand column hits the same tmux backspace quirk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.geometry import Region

from console.widgets import TerminalView

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vttest"
COLS, ROWS = 80, 24
SCREENS = sorted(p.stem for p in FIXTURES.glob("menu*.bin"))
# DEC special graphics, as tmux's capture writes them between SO and SI.
_DEC_GRAPHICS = dict(zip("`abcdefghijklmnopqrstuvwxyz{|}~",
                         "◆▒␉␌␍␊°±␤␋┘┐┌└┼⎺⎻─⎼⎽├┤┴┬│≤≥π≠£·", strict=True))
_SGR = re.compile(r"\x1b\[([0-9;]*)m")
# Light background (DECSCNM) is on for these screens; see the module docstring.
LIGHT = {"menu2-03", "menu2-04", "menu2-14"}
AUTOWRAP = {"menu1-03", "menu1-04"}
ORIGIN_MODE = "menu2-11"
NOT_COMPARED = {"menu1-02"}


@dataclass(frozen=True)
class Cell:
    char: str = " "
    bold: bool = False
    underline: bool = False
    blink: bool = False
    reverse: bool = False

    def visible(self) -> tuple[object, ...]:
        """What a person can see: bold and blink on a blank are invisible."""
        if self.char == " ":
            return (self.char, self.underline, self.reverse)
        return (self.char, self.bold, self.underline, self.blink, self.reverse)


def parse_tmux(text: str) -> tuple[list[list[Cell]], tuple[int, int]]:
    """`capture-pane -p -e -N` output (plus our cursor line) as cells."""
    *lines, cursor_line = text.rstrip("\n").split("\n")
    _, x, y = cursor_line.split()
    attrs = {"bold": False, "underline": False, "blink": False, "reverse": False}
    graphics = False
    rows: list[list[Cell]] = []
    for line in lines:
        row: list[Cell] = []
        pos = 0
        while pos < len(line):
            match = _SGR.match(line, pos)
            if match:
                for code in (match.group(1) or "0").split(";"):
                    number = int(code or 0)
                    if number == 0:
                        attrs = dict.fromkeys(attrs, False)
                    names = {1: "bold", 4: "underline", 5: "blink", 7: "reverse"}
                    offs = {22: "bold", 24: "underline", 25: "blink", 27: "reverse"}
                    if number in names:
                        attrs[names[number]] = True
                    elif number in offs:
                        attrs[offs[number]] = False
                pos = match.end()
                continue
            char = line[pos]
            pos += 1
            if char in "\x0e\x0f":
                graphics = char == "\x0e"
                continue
            if graphics:
                char = _DEC_GRAPHICS.get(char, char)
            row.append(Cell(char, **attrs))
        rows.append((row + [Cell()] * COLS)[:COLS])
    rows += [[Cell()] * COLS for _ in range(ROWS - len(rows))]
    return rows, (int(x), int(y))


class VtApp(App[None]):
    def compose(self) -> ComposeResult:
        yield TerminalView(lambda _data: None, lambda _cols, _rows: None)


def painted(term: TerminalView) -> list[list[Cell]]:
    """The cells the widget paints, read back from its Rich segments."""
    rows = []
    for strip in term.render_lines(Region(0, 0, COLS, ROWS)):
        row: list[Cell] = []
        for segment in strip:
            style = segment.style
            assert style is not None
            for char in segment.text:
                row.append(Cell(char, bool(style.bold), bool(style.underline),
                                bool(style.blink), bool(style.reverse)))
        rows.append(row)
    return rows


def differences(expected: list[list[Cell]], got: list[list[Cell]]) -> list[str]:
    found = []
    for y, (want_row, got_row) in enumerate(zip(expected, got, strict=True)):
        for x, (want, cell) in enumerate(zip(want_row, got_row, strict=True)):
            if want.visible() != cell.visible():
                found.append(f"row {y} col {x}: tmux {want}, ours {cell}")
    return found


def text_screen(lines: dict[int, str]) -> list[list[Cell]]:
    return [[Cell(char) for char in lines.get(y, "").ljust(COLS)] for y in range(ROWS)]


def autowrap_screen() -> list[list[Cell]]:
    """vttest's autowrap screen as its caption describes it (module docstring)."""
    lines = {0: "Test of autowrap, mixing control and print characters.",
             1: "The left/right margins should have letters in order:",
             21: "Push <RETURN>"}
    for y, letter in enumerate("IJKLMNOPQRSTUVWXYZ", start=2):
        lines[y] = letter + " " * (COLS - 2) + letter.lower()
    return text_screen(lines)


def origin_mode_screen() -> list[list[Cell]]:
    return text_screen({
        22: "This line should be the one above the bottom of the screen. Push <RETURN>",
        23: "Origin mode test. This line should be at the bottom of the screen."})


async def test_vttest_menus_1_and_2_look_as_in_tmux() -> None:
    app = VtApp()
    async with app.run_test(size=(COLS, ROWS)) as pilot:
        term = app.query_one(TerminalView)
        term.blur()  # the cursor is compared by position, not as a painted cell
        await pilot.pause()
        assert term.size_cells == (COLS, ROWS)
        report = []
        for name in SCREENS:
            term.feed((FIXTURES / f"{name}.bin").read_bytes())
            await pilot.pause()
            if name in NOT_COMPARED:
                continue
            expected, cursor = parse_tmux((FIXTURES / f"{name}.tmux").read_text())
            if name in AUTOWRAP:
                expected, cursor = autowrap_screen(), (13, 21)
            elif name == ORIGIN_MODE:
                expected = origin_mode_screen()
            light = term.reverse_video
            got = painted(term)
            if light:  # take the screen-wide reverse out (module docstring)
                got = [[Cell(c.char, c.bold, c.underline, c.blink, not c.reverse) for c in row]
                       for row in got]
            diff = differences(expected, got)
            screen = term.terminal_screen
            ours = (min(screen.cursor.x, COLS - 1), screen.cursor.y)
            if ours != cursor:
                diff.append(f"cursor: tmux {cursor}, ours {ours}")
            if light != (name in LIGHT):
                diff.append(f"light background: {light}")
            if diff:
                report.append(f"{name}: {len(diff)} differences, first: " + "; ".join(diff[:6]))
        assert not report, "\n".join(report)


def test_the_fixtures_are_all_there() -> None:
    # Both menus, every screen: a regeneration that lost some would pass vacuously.
    assert len([s for s in SCREENS if s.startswith("menu1-")]) == 6
    assert len([s for s in SCREENS if s.startswith("menu2-")]) == 15


@pytest.mark.parametrize("name", ["menu2-13"])
def test_the_rendition_screen_has_every_combination(name: str) -> None:
    """The expected side itself is right: tmux shows blink and negative."""
    rows, _ = parse_tmux((FIXTURES / f"{name}.tmux").read_text())
    seen = {(c.bold, c.underline, c.blink, c.reverse) for row in rows for c in row
            if c.char != " "}
    assert len(seen) == 16
