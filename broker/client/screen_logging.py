"""Logs of the programs that own a person's terminal (agent, console).

Neither configures logging, so Python's last-resort handler would print any
warning (ours, asyncssh's, websockets') to stderr: into the middle of the
customer's screen or the engineer's raw-mode shell, unescaped. What a person
must know is said on their screen by the programs themselves; the rest is
dropped here.
"""

from __future__ import annotations

import logging


def keep_logs_off_the_screen() -> None:
    root = logging.getLogger()
    if not any(isinstance(handler, logging.NullHandler) for handler in root.handlers):
        root.addHandler(logging.NullHandler())
