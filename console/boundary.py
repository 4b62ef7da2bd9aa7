"""Where a line of our own may go between the shell's output.

The plain join writes its own lines (a chat line, a prompt) into the same
terminal as the remote shell's output. Written in the middle of an escape
sequence or of a UTF-8 character, it would corrupt both: the terminal would
take our text as the sequence's parameters, or show a broken character.
`OutputBoundary` follows the shell's bytes (no I/O) and says whether they
stopped between two characters. A sequence the shell never finishes must
not hold our line forever: `CANCEL` (CAN) ends it, as VT terminals define.
"""

from __future__ import annotations

from enum import Enum

CANCEL = b"\x18"  # CAN: a terminal abandons the sequence in progress

_ESC, _BEL, _CAN, _SUB = 0x1B, 0x07, 0x18, 0x1A


class _State(Enum):
    GROUND = 0
    ESCAPE = 1  # after ESC
    ESCAPE_MORE = 2  # ESC and intermediates (0x20-0x2F), before the final byte
    CSI = 3  # ESC [ ... until a final byte 0x40-0x7E
    STRING = 4  # OSC, DCS, SOS, PM, APC: until BEL or ST (ESC \)
    STRING_ESC = 5  # an ESC inside a string: ST if a backslash follows


# ESC followed by these starts a string that runs to BEL or ST.
_STRING_STARTS = frozenset(b"]PX^_")


class OutputBoundary:
    def __init__(self) -> None:
        self._state = _State.GROUND
        self._utf8_left = 0  # continuation bytes still due
        # Nothing printed since the last line feed: a line of ours may start
        # here rather than after what the shell left on the row (its prompt).
        self.line_start = True

    @property
    def safe(self) -> bool:
        return self._state is _State.GROUND and self._utf8_left == 0

    def reset(self) -> None:
        """After `CANCEL` was written: the terminal is back at ground."""
        self._state = _State.GROUND
        self._utf8_left = 0

    def feed(self, data: bytes) -> None:
        for byte in data:
            self._byte(byte)

    def _byte(self, byte: int) -> None:
        state = self._state
        if byte in (_CAN, _SUB):  # from any state (the VT parser's "anywhere")
            self._state, self._utf8_left = _State.GROUND, 0
            return
        if state is _State.GROUND:
            self._ground(byte)
        elif state is _State.ESCAPE:
            if byte == ord("["):
                self._state = _State.CSI
            elif byte in _STRING_STARTS:
                self._state = _State.STRING
            elif 0x20 <= byte <= 0x2F:
                self._state = _State.ESCAPE_MORE
            elif byte != _ESC:
                self._state = _State.GROUND
        elif state is _State.ESCAPE_MORE:
            if not 0x20 <= byte <= 0x2F:
                self._state = _State.GROUND
        elif state is _State.CSI:
            if 0x40 <= byte <= 0x7E:
                self._state = _State.GROUND
            elif byte == _ESC:
                self._state = _State.ESCAPE
        elif state is _State.STRING:
            if byte == _BEL:
                self._state = _State.GROUND
            elif byte == _ESC:
                self._state = _State.STRING_ESC
        elif state is _State.STRING_ESC:
            self._state = _State.GROUND if byte == ord("\\") else _State.STRING

    def _ground(self, byte: int) -> None:
        if byte == 0x0A:
            self.line_start = True
        elif byte >= 0x20:
            self.line_start = False
        if byte == _ESC:
            self._state, self._utf8_left = _State.ESCAPE, 0
        elif self._utf8_left and byte & 0xC0 == 0x80:
            self._utf8_left -= 1
        elif byte & 0xE0 == 0xC0:
            self._utf8_left = 1
        elif byte & 0xF0 == 0xE0:
            self._utf8_left = 2
        elif byte & 0xF8 == 0xF0:
            self._utf8_left = 3
        else:
            self._utf8_left = 0
