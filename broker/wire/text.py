"""Making strings from the network safe to show.

Aliases, names and reasons arrive from peers we do not trust. Before one
reaches a terminal, a TUI or a log line it goes through `printable`, which
shows control characters (ESC, CSI, OSC, newlines, bidi overrides) literally
as escapes instead of letting them act, and bounds the length.
"""

from __future__ import annotations

import unicodedata

__all__ = ["printable", "validate_label"]

# Unicode categories that act rather than print: controls, format characters
# (bidi overrides, zero-width joiners), separators other than space,
# surrogates, private use and unassigned code points.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(value: object, max_len: int = 200) -> str:
    """Return `value` as a single line in which nothing can act on a terminal.

    Control and format characters become visible escapes (``\\x1b``), a
    backslash stays a backslash. Longer results are cut with an ellipsis.
    """
    text = str(value)
    out = []
    for ch in text:
        if ch == " " or unicodedata.category(ch) not in _UNSAFE_CATEGORIES:
            out.append(ch)
        else:
            out.append(_escape_char(ch))
    result = "".join(out)
    if len(result) > max_len:
        result = result[: max_len - 1] + "…"
    return result


def validate_label(value: str, max_len: int = 64) -> str | None:
    """Return why `value` is unfit as a name or alias, or None if it is fine.

    Used where we *store* a label we chose to accept (registry display names,
    agent aliases typed by the customer); network strings are still passed
    through `printable` at display time regardless.
    """
    if not value or not value.strip():
        return "must not be empty"
    if len(value) > max_len:
        return f"must be at most {max_len} characters"
    if printable(value, max_len=10 * max_len) != value:
        return "must not contain control characters"
    return None
