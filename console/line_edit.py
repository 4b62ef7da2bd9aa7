"""One line typed on the engineer's raw terminal, for the plain join's small
prompts (files, chat): printable keys are added, Backspace takes a whole
UTF-8 character, Ctrl-U clears, cursor and function keys are ignored, Enter
submits, Esc or Ctrl-C cancels. No I/O: the prompt feeds it keys and draws.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

ESC, CTRL_C, CTRL_U, BS, DEL = 0x1B, 0x03, 0x15, 0x08, 0x7F


class Key(Enum):
    SUBMIT = "submit"
    CANCEL = "cancel"
    CHANGED = "changed"  # the line is different: draw it again
    REFUSED = "refused"  # a key past the limit: nothing added (say so with a bell)
    IGNORED = "ignored"


def skip_sequence(data: bytes, index: int) -> int:
    """Past the key sequence whose ESC was just before `index` (CSI or SS3)."""
    if data[index] == ord("O"):
        return min(index + 2, len(data))
    if data[index] != ord("["):
        return index + 1  # Alt+key
    index += 1
    while index < len(data) and not 0x40 <= data[index] <= 0x7E:
        index += 1
    return index + 1


class LineEdit:
    """The line so far; `fits(text)` says whether a longer line is taken."""

    def __init__(self, fits: Callable[[str], bool]) -> None:
        self._fits = fits
        self._line = bytearray()

    @property
    def text(self) -> str:
        return self._line.decode("utf-8", "replace")

    def clear(self) -> None:
        self._line.clear()

    def key(self, data: bytes, index: int) -> tuple[int, Key]:
        """The key at `data[index]`: where the next one starts, and what it did."""
        byte = data[index]
        index += 1
        if byte == ESC and index < len(data):
            return skip_sequence(data, index), Key.IGNORED  # a cursor key, not Esc
        if byte in (ESC, CTRL_C):
            return index, Key.CANCEL
        if byte in (0x0D, 0x0A):
            return index, Key.SUBMIT
        if byte in (BS, DEL):
            if not self._line:
                return index, Key.IGNORED
            self._drop_char()
            return index, Key.CHANGED
        if byte == CTRL_U:
            self._line.clear()
            return index, Key.CHANGED
        if byte < 0x20:
            return index, Key.IGNORED
        self._line.append(byte)
        if not self._fits(self.text):
            self._drop_char()
            return index, Key.REFUSED
        return index, Key.CHANGED

    def _drop_char(self) -> None:
        """The last character, whole: not one byte of its UTF-8."""
        while self._line and self._line[-1] & 0xC0 == 0x80:  # continuation bytes
            del self._line[-1]
        if self._line:
            del self._line[-1]  # and the byte that starts the character
