"""Escaping network strings before they reach a terminal or a log."""

from __future__ import annotations

import unicodedata

import pytest

from broker.wire.text import printable, validate_label

UNSAFE = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),  # CSI colour
        ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),  # clear screen
        ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),  # OSC title, BEL end
        ("\x1b]8;;http://evil\x1b\\link", "\\x1b]8;;http://evil\\x1b\\link"),  # OSC 8
        ("a\nb", "a\\x0ab"),
        ("a\rb", "a\\x0db"),
        ("a\tb", "a\\x09b"),
        ("nul\x00", "nul\\x00"),
        ("del\x7f", "del\\x7f"),
        ("\x9b31m", "\\x9b31m"),  # C1 CSI
        ("\x85", "\\x85"),  # C1 next line
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),  # bidi override
        ("\u2066x\u2069", "\\u2066x\\u2069"),  # bidi isolates
        ("a\u200db", "a\\u200db"),  # zero-width joiner
        ("a\u200bb", "a\\u200bb"),  # zero-width space
        ("a\u2028b\u2029", "a\\u2028b\\u2029"),  # line/paragraph separators
        ("\ufeff", "\\ufeff"),  # BOM
        ("\ue000", "\\ue000"),  # private use
        ("\u0378", "\\u0378"),  # unassigned
        ("\ud800", "\\ud800"),  # lone surrogate
        ("\U000e0041", "\\U000e0041"),  # tag character
    ],
)
def test_acting_characters_are_escaped(raw: str, shown: str) -> None:
    assert printable(raw) == shown


@pytest.mark.parametrize(
    "text",
    ["Kim's laptop", "Zoë Ünal", "李雷", "Ωμέγα", "مرحبا", "😀 🎉", "a\\x1b b", "[bold]x[/]", "é"],
)
def test_ordinary_text_is_kept(text: str) -> None:
    assert printable(text) == text


def test_emoji_sequence_keeps_emoji_escapes_joiner() -> None:
    assert printable("👩\u200d💻") == "👩\\u200d💻"


def test_nothing_that_acts_survives() -> None:
    everything = "".join(chr(c) for c in range(0x3000)) + "\u202e\u2066\ufeff\U000e0001"
    out = printable(everything, max_len=10**6)
    assert "\x1b" not in out and "\n" not in out and "\r" not in out
    assert all(ch == " " or unicodedata.category(ch) not in UNSAFE for ch in out)


def test_length_is_bounded_with_an_ellipsis() -> None:
    assert printable("a" * 200) == "a" * 200
    cut = printable("a" * 201)
    assert len(cut) == 200 and cut.endswith("…") and cut.startswith("a" * 199)
    assert printable("abcdef", max_len=4) == "abc…"
    # Escapes count towards the bound, not just the raw length.
    assert len(printable("\x1b" * 100, max_len=50)) == 50


def test_any_value() -> None:
    assert printable(42) == "42"
    assert printable(None) == "None"
    assert printable(b"\x1b") == "b'\\x1b'"


@pytest.mark.parametrize("good", ["Alice", "Zoë Ünal", "Kim's laptop 😀", "a", "x" * 64])
def test_validate_label_accepts(good: str) -> None:
    assert validate_label(good) is None


@pytest.mark.parametrize(
    "bad", ["", "   ", "x" * 65, "Kim\x1b[2J", "two\nlines", "tab\there", "rtl\u202e", "zw\u200b"]
)
def test_validate_label_refuses(bad: str) -> None:
    reason = validate_label(bad)
    assert isinstance(reason, str) and reason


def test_validate_label_max_len() -> None:
    assert validate_label("abcd", max_len=4) is None
    assert validate_label("abcde", max_len=4) is not None
