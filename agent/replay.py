"""What the customer was watching, painted back after a prompt covered it.

A consent prompt during a session is drawn over the mirrored session. The
terminal cannot be asked what it showed, so the screen keeps the session's
most recent output (bounded) and, when the prompt closes, plays it into a VT
emulator (pyte, already the console's) the size of the session's rows and
paints the result back: the history the customer was reading is still there.

Only the emulator's cells are written (printable characters and our own SGR
sequences), never the recorded bytes themselves; the output held back while
the prompt was open is then written as it came, as before.
"""

from __future__ import annotations

from collections import deque

import pyte
from pyte.graphics import FG_AIXTERM, FG_ANSI

# Enough for a full screen of a busy program several times over; bounded, so
# a chatty shell cannot grow the agent, and quick to replay (~70 ms).
MAX_RECENT_OUTPUT = 64 * 1024

_RESET = "\x1b[0m"
_FG = {name: code for code, name in {**FG_ANSI, **FG_AIXTERM}.items() if name != "default"}


class RecentOutput:
    """The last `MAX_RECENT_OUTPUT` bytes of mirrored output, in whole writes."""

    def __init__(self, limit: int = MAX_RECENT_OUTPUT) -> None:
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self._bytes = 0

    def add(self, data: bytes) -> None:
        if len(data) > self.limit:
            data = data[-self.limit:]
        self._chunks.append(data)
        self._bytes += len(data)
        while self._bytes > self.limit and len(self._chunks) > 1:
            self._bytes -= len(self._chunks.popleft())

    def clear(self) -> None:
        self._chunks.clear()
        self._bytes = 0

    def paint(self, cols: int, rows: int, top: int) -> str:
        """The terminal text that paints `rows` x `cols` cells from screen row
        `top` as the recorded output left them, ending with the cursor where
        the output left it."""
        screen = pyte.Screen(max(1, cols), max(1, rows))
        stream = pyte.ByteStream(screen)
        for chunk in self._chunks:
            stream.feed(chunk)
        out: list[str] = []
        for y in range(screen.lines):
            out.append(f"\x1b[{top + y};1H{_RESET}")
            line = screen.buffer[y]
            last = max((x for x, ch in line.items() if ch.data.strip() or _styled(ch)),
                       default=-1)
            style = ""
            for x in range(min(last + 1, screen.columns)):
                ch = line[x]
                wanted = _sgr(ch)
                if wanted != style:
                    out.append(_RESET + wanted)
                    style = wanted
                out.append(ch.data)
            out.append(_RESET + "\x1b[K")
        out.append(f"\x1b[{top + screen.cursor.y};{screen.cursor.x + 1}H")
        return "".join(out)


def _styled(ch: pyte.screens.Char) -> bool:
    return bool(ch.bg != "default" or ch.reverse or ch.underscore)


def _color(value: str, base: int) -> str:
    """An SGR colour parameter: names as pyte keeps them, else its hex."""
    if value == "default":
        return ""
    if value in _FG:
        return str(_FG[value] + base - 30)
    try:
        r, g, b = (int(value[i:i + 2], 16) for i in (0, 2, 4))
    except ValueError:
        return ""
    return f"{base + 8};2;{r};{g};{b}"


def _sgr(ch: pyte.screens.Char) -> str:
    params = [p for p in (
        "1" if ch.bold else "", "3" if ch.italics else "", "4" if ch.underscore else "",
        "5" if ch.blink else "", "7" if ch.reverse else "", "9" if ch.strikethrough else "",
        _color(ch.fg, 30), _color(ch.bg, 40),
    ) if p]
    return f"\x1b[{';'.join(params)}m" if params else ""
