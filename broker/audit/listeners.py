"""Who hears of each committed append: the one list both audit stores keep
(the checkpointer counts events with it instead of polling the database)."""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["AppendListeners"]

_log = logging.getLogger("consentry.audit")

Listener = Callable[[int, str], None]


class AppendListeners:
    """Mixed into a store: `listener(seq, hash)` after each committed append."""

    _append_listeners: list[Listener]

    def _init_listeners(self) -> None:
        self._append_listeners = []

    def add_append_listener(self, listener: Listener) -> None:
        """Call `listener(seq, hash)` after each committed append; it must be quick."""
        self._append_listeners.append(listener)

    def remove_append_listener(self, listener: Listener) -> None:
        if listener in self._append_listeners:
            self._append_listeners.remove(listener)

    def _tell_listeners(self, appended: list[tuple[int, str]]) -> None:
        # Only after the commit, and outside its try: a listener's bug must not
        # make a durable event look unwritten (the caller would fail closed).
        for seq, digest in appended:
            for listener in list(self._append_listeners):
                try:
                    listener(seq, digest)
                except Exception:
                    _log.exception("audit append listener failed")
