"""The plain join's one-line editor, key by key."""

from __future__ import annotations

from console.line_edit import Key, LineEdit


def feed(edit: LineEdit, data: bytes) -> list[Key]:
    index, did = 0, []
    while index < len(data):
        index, key = edit.key(data, index)
        did.append(key)
    return did


def test_backspace_takes_a_whole_character_and_cursor_keys_are_ignored() -> None:
    edit = LineEdit(lambda text: True)
    feed(edit, "Grüße\x1b[D\x1bOA".encode())
    assert edit.text == "Grüße"
    feed(edit, b"\x7f\x7f")
    assert edit.text == "Grü"
    assert feed(edit, b"\x15") == [Key.CHANGED] and edit.text == ""


def test_a_key_past_the_limit_is_refused_and_enter_and_esc_answer() -> None:
    edit = LineEdit(lambda text: len(text) <= 3)
    assert feed(edit, b"abcd") == [Key.CHANGED] * 3 + [Key.REFUSED]
    assert edit.text == "abc"
    assert feed(edit, b"\r") == [Key.SUBMIT]
    assert feed(edit, b"\x1b") == [Key.CANCEL] and feed(edit, b"\x03") == [Key.CANCEL]
    assert feed(edit, b"\x01") == [Key.IGNORED]
