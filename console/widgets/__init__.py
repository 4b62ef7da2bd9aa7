"""Widgets of the engineer's console."""

from console.widgets.keys import RESERVED_KEYS, key_to_bytes
from console.widgets.terminal import TerminalView

__all__ = ["RESERVED_KEYS", "TerminalView", "key_to_bytes"]
