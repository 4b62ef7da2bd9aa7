"""Textual key events to xterm bytes: the table the remote shell relies on."""

from __future__ import annotations

import pytest

from console.widgets.keys import RESERVED_KEYS, key_to_bytes

# (key, character, bytes) in normal cursor mode.
TABLE: list[tuple[str, str | None, bytes | None]] = [
    # Printable, including non-ASCII, as UTF-8.
    ("a", "a", b"a"),
    ("A", "A", b"A"),
    ("shift+a", "A", b"A"),
    ("shift+a", None, b"A"),
    ("exclamation_mark", "!", b"!"),
    ("minus", None, b"-"),
    ("space", " ", b" "),
    ("ü", "ü", "ü".encode()),
    ("€", "€", "€".encode()),
    ("日", "日", "日".encode()),
    # Editing keys.
    ("enter", "\r", b"\r"),
    ("enter", None, b"\r"),
    ("shift+enter", None, b"\r"),
    ("tab", "\t", b"\t"),
    ("shift+tab", None, b"\x1b[Z"),
    ("backspace", "\x7f", b"\x7f"),
    ("backspace", "\x08", b"\x7f"),
    ("ctrl+backspace", None, b"\x08"),
    ("escape", "\x1b", b"\x1b"),
    # Control characters.
    ("ctrl+a", None, b"\x01"),
    ("ctrl+c", "\x03", b"\x03"),
    ("ctrl+d", None, b"\x04"),
    ("ctrl+z", None, b"\x1a"),
    ("ctrl+shift+c", None, b"\x03"),
    ("ctrl+@", None, b"\x00"),
    ("ctrl+at", None, b"\x00"),
    ("ctrl+space", None, b"\x00"),
    ("ctrl+right_square_bracket", "\x1d", b"\x1d"),
    ("ctrl+underscore", None, b"\x1f"),
    ("ctrl+backslash", None, b"\x1c"),
    # Cursor keys and Home/End.
    ("up", None, b"\x1b[A"),
    ("down", None, b"\x1b[B"),
    ("right", None, b"\x1b[C"),
    ("left", None, b"\x1b[D"),
    ("home", None, b"\x1b[H"),
    ("end", None, b"\x1b[F"),
    ("ctrl+left", None, b"\x1b[1;5D"),
    ("shift+up", None, b"\x1b[1;2A"),
    ("alt+right", None, b"\x1b[1;3C"),
    ("ctrl+shift+end", None, b"\x1b[1;6F"),
    # Editing block.
    ("insert", None, b"\x1b[2~"),
    ("delete", None, b"\x1b[3~"),
    ("pageup", None, b"\x1b[5~"),
    ("pagedown", None, b"\x1b[6~"),
    ("ctrl+delete", None, b"\x1b[3;5~"),
    ("shift+pageup", None, b"\x1b[5;2~"),
    # Function keys, xterm style.
    ("f1", None, b"\x1bOP"),
    ("f2", None, b"\x1bOQ"),
    ("f3", None, b"\x1bOR"),
    ("f4", None, b"\x1bOS"),
    ("f5", None, b"\x1b[15~"),
    ("f6", None, b"\x1b[17~"),
    ("f7", None, b"\x1b[18~"),
    ("f8", None, b"\x1b[19~"),
    ("f9", None, b"\x1b[20~"),
    ("f10", None, b"\x1b[21~"),
    ("f11", None, b"\x1b[23~"),
    ("f12", None, b"\x1b[24~"),
    ("shift+f1", None, b"\x1b[1;2P"),
    ("ctrl+f5", None, b"\x1b[15;5~"),
    # Alt is an ESC prefix.
    ("alt+x", "x", b"\x1bx"),
    ("alt+x", None, b"\x1bx"),
    ("alt+shift+x", "X", b"\x1bX"),
    ("alt+ctrl+a", None, b"\x1b\x01"),
    ("alt+backspace", None, b"\x1b\x7f"),
    ("alt+period", ".", b"\x1b."),
    # Nothing an xterm would send.
    ("super+a", None, None),
    ("ctrl+f13", None, None),
    ("f13", None, None),
    ("ctrl+period", None, None),
]


@pytest.mark.parametrize(("key", "character", "expected"), TABLE)
def test_key_table(key: str, character: str | None, expected: bytes | None) -> None:
    assert key_to_bytes(key, character, app_cursor=False) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("up", b"\x1bOA"),
        ("down", b"\x1bOB"),
        ("right", b"\x1bOC"),
        ("left", b"\x1bOD"),
        ("home", b"\x1bOH"),
        ("end", b"\x1bOF"),
        # Modified cursor keys and the rest do not change with DECCKM.
        ("ctrl+left", b"\x1b[1;5D"),
        ("pageup", b"\x1b[5~"),
        ("f1", b"\x1bOP"),
        ("a", b"a"),
    ],
)
def test_application_cursor_mode(key: str, expected: bytes) -> None:
    assert key_to_bytes(key, None, app_cursor=True) == expected


def test_reserved_keys_are_the_apps() -> None:
    assert RESERVED_KEYS == frozenset(
        {"f3", "f4", "f6", "f7", "f8", "f9", "f10", "ctrl+backslash"})


def test_control_characters_never_pass_as_printable() -> None:
    # A key with an odd name but a control character must not be sent as
    # text with the wrong meaning: it is sent as the control byte itself.
    assert key_to_bytes("unknown_key", "\x07", app_cursor=False) == b"\x07"
    assert key_to_bytes("unknown_key", None, app_cursor=False) is None
