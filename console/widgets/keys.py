"""Textual key events to the bytes an xterm would send to the remote shell.

Pure functions, no I/O: `TerminalView` calls `key_to_bytes` for every key
that is not in `RESERVED_KEYS` and sends the result to the agent.

What we emulate is a plain xterm (``TERM=xterm-256color``) without
modifyOtherKeys or the kitty keyboard protocol, because that is what the
remote side's terminfo expects: cursor keys honour DECCKM (application cursor
mode, ``CSI ?1h``), modified cursor/editing/function keys use xterm's
``CSI 1;<mod>X`` and ``CSI <n>;<mod>~`` forms, Alt is sent as an ESC prefix.
"""

from __future__ import annotations

from typing import Final

from textual.keys import REPLACED_KEYS, key_to_character

#: Keys the console app keeps for itself (switch session, ask for control,
#: leave, ...). `TerminalView` lets them through without sending anything to
#: the remote, so the app's bindings fire. The remote program therefore never
#: sees F3, F4, F6-F10 or Ctrl-\ (so no SIGQUIT via Ctrl-\ either).
RESERVED_KEYS: Final[frozenset[str]] = frozenset(
    {"f3", "f4", "f6", "f7", "f8", "f9", "f10", "ctrl+backslash"}
)

#: Private mode number of DECCKM (application cursor keys). pyte does not
#: name it, but records every private mode it sees as ``number << 5`` in
#: ``Screen.mode``; so ``DECCKM in screen.mode`` is the remote's choice.
DECCKM: Final[int] = 1 << 5

ESC: Final[bytes] = b"\x1b"
CSI: Final[bytes] = b"\x1b["
SS3: Final[bytes] = b"\x1bO"

# Cursor keys and Home/End: CSI <final> normally, SS3 <final> in application
# cursor mode, CSI 1;<mod> <final> when modified.
_CURSOR_FINALS: Final[dict[str, bytes]] = {
    "up": b"A",
    "down": b"B",
    "right": b"C",
    "left": b"D",
    "home": b"H",
    "end": b"F",
}

# Editing and function keys sent as CSI <n> ~ (CSI <n>;<mod> ~ when modified).
_TILDE_CODES: Final[dict[str, int]] = {
    "insert": 2,
    "delete": 3,
    "pageup": 5,
    "pagedown": 6,
    "f5": 15,
    "f6": 17,
    "f7": 18,
    "f8": 19,
    "f9": 20,
    "f10": 21,
    "f11": 23,
    "f12": 24,
}

# F1-F4 are SS3 P..S unmodified, CSI 1;<mod> P..S modified (xterm's PC-style).
_PF_FINALS: Final[dict[str, bytes]] = {"f1": b"P", "f2": b"Q", "f3": b"R", "f4": b"S"}

# Keys whose bytes do not depend on anything but the name.
_FIXED: Final[dict[str, bytes]] = {
    "enter": b"\r",
    "tab": b"\t",
    "shift+tab": CSI + b"Z",
    "backspace": b"\x7f",
    "ctrl+backspace": b"\x08",
    "escape": ESC,
    "space": b" ",
    # Textual names NUL three ways depending on the terminal and protocol.
    "ctrl+@": b"\x00",
    "ctrl+at": b"\x00",
    "ctrl+space": b"\x00",
    "ctrl+left_square_bracket": ESC,
    "ctrl+backslash": b"\x1c",
    "ctrl+right_square_bracket": b"\x1d",
    "ctrl+circumflex_accent": b"\x1e",
    "ctrl+underscore": b"\x1f",
    "ctrl+slash": b"\x1f",
    # The VT220 digit row, which xterm keeps: Ctrl-2 is NUL ... Ctrl-8 is DEL.
    "ctrl+2": b"\x00",
    "ctrl+3": ESC,
    "ctrl+4": b"\x1c",
    "ctrl+5": b"\x1d",
    "ctrl+6": b"\x1e",
    "ctrl+7": b"\x1f",
    "ctrl+8": b"\x7f",
}

# Keys that xterm sends the same with or without Shift.
_SHIFT_INSENSITIVE: Final[frozenset[str]] = frozenset({"enter", "backspace", "escape", "space"})

# xterm's modifier parameter is 1 + the sum of these bits.
_MODIFIER_BITS: Final[dict[str, int]] = {"shift": 1, "alt": 2, "ctrl": 4, "meta": 8}


def _split(key: str) -> tuple[frozenset[str], str]:
    """``"ctrl+shift+left"`` -> ({"ctrl", "shift"}, "left").

    Single-character key names never contain "+" (Textual calls it "plus"),
    so splitting on "+" is safe.
    """
    *mods, base = key.split("+")
    return frozenset(mods), base


def _modifier_param(mods: frozenset[str]) -> int:
    return 1 + sum(_MODIFIER_BITS.get(mod, 0) for mod in mods)


def _printable(text: str | None) -> str | None:
    """The text if a terminal would type it as-is (no control characters)."""
    if text and text.isprintable():
        return text
    return None


def key_to_bytes(key: str, character: str | None, *, app_cursor: bool) -> bytes | None:
    """What an xterm sends for this Textual key event, or None to send nothing.

    Args:
        key: Textual's key name (``events.Key.key``), e.g. ``"ctrl+c"``.
        character: The character Textual decoded for it, if any.
        app_cursor: DECCKM is set by the remote (cursor keys use SS3).
    """
    if key in _FIXED:
        return _FIXED[key]

    mods, base = _split(key)
    unknown_mods = mods - _MODIFIER_BITS.keys()
    if unknown_mods:  # super/hyper: no xterm encoding, let the app have it
        return None

    # Cursor, editing and function keys: modifiers go into a CSI parameter.
    if base in _CURSOR_FINALS:
        final = _CURSOR_FINALS[base]
        if mods:
            return CSI + b"1;%d" % _modifier_param(mods) + final
        return (SS3 if app_cursor else CSI) + final
    if base in _TILDE_CODES:
        code = _TILDE_CODES[base]
        if mods:
            return CSI + b"%d;%d~" % (code, _modifier_param(mods))
        return CSI + b"%d~" % code
    if base in _PF_FINALS:
        if mods:
            return CSI + b"1;%d" % _modifier_param(mods) + _PF_FINALS[base]
        return SS3 + _PF_FINALS[base]

    # Alt (or Meta) on anything else is an ESC prefix on the unmodified key.
    if "alt" in mods or "meta" in mods:
        rest = "+".join([*sorted(mods - {"alt", "meta"}), base])
        inner = key_to_bytes(rest, character, app_cursor=app_cursor)
        return None if inner is None else ESC + inner

    if "ctrl" in mods:
        if len(base) == 1 and "a" <= base.lower() <= "z":
            return bytes([ord(base.lower()) - ord("a") + 1])
        # ctrl+shift+<symbol> etc.: fall back to the byte the terminal gave us.
        if character is not None and len(character) == 1 and (
            ord(character) < 0x20 or ord(character) == 0x7F
        ):
            return character.encode("ascii")
        return None

    if mods == {"shift"} and base in _SHIFT_INSENSITIVE:
        return key_to_bytes(base, character, app_cursor=app_cursor)

    # Printable keys (any script): what was typed, as UTF-8. Pilot and some
    # drivers give no character, so derive it from the key name.
    text = _printable(character)
    if text is None and not mods:
        # "minus" -> "hyphen_minus" -> "-": undo Textual's friendlier names.
        name = REPLACED_KEYS.get(base, base)
        text = _printable(base if len(base) == 1 else key_to_character(name))
    if text is None and mods == {"shift"} and len(base) == 1:
        text = _printable(base.upper())
    if text is not None:
        return text.encode("utf-8")

    # Unnamed control bytes the driver passed through unchanged.
    if character is not None and len(character) == 1 and ord(character) < 0x20:
        return character.encode("ascii")
    return None
