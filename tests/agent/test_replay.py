"""Painting back what a prompt covered: the painted cells are the cells the
recorded output left, colours and attributes included."""

from __future__ import annotations

import pyte

from agent.replay import RecentOutput


def _cells(text: bytes | str, cols: int, rows: int) -> list[list[tuple[object, ...]]]:
    screen = pyte.Screen(cols, rows)
    if isinstance(text, bytes):
        pyte.ByteStream(screen).feed(text)
    else:
        pyte.Stream(screen).feed(text)
    return [[tuple(screen.buffer[y][x]) for x in range(cols)] for y in range(rows)]


def test_painted_cells_match_the_recorded_output() -> None:
    recorded = (b"$ ls --color\r\n\x1b[1;34mdir\x1b[0m  \x1b[32mrun.sh\x1b[0m  "
                b"\x1b[38;5;208morange\x1b[0m \x1b[7mrev\x1b[0m \x1b[41;97mbg\x1b[0m\r\n$ ")
    recent = RecentOutput()
    recent.add(recorded[:20])
    recent.add(recorded[20:])  # a write split mid-sequence
    painted = recent.paint(40, 5, top=1)
    assert _cells(painted, 40, 5) == _cells(recorded, 40, 5)


def test_only_the_newest_output_is_kept() -> None:
    recent = RecentOutput(limit=100)
    for i in range(50):
        recent.add(f"line {i}\r\n".encode())
    painted = recent.paint(20, 3, top=1)
    screen = _cells(painted, 20, 3)
    assert "".join(str(c[0]) for c in screen[0]).startswith("line 48")
