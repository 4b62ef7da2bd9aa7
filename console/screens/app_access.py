"""The `ConsoleApp` a screen or pane runs in, typed.

Textual types every node's `app` as a plain `App`, so `self.app.backend`
would be unchecked. These say what it is, and so let mypy check the calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.dom import DOMNode

from console.backend import Backend
from console.errors import ConsoleError

if TYPE_CHECKING:  # console.app imports the screens: for the annotations only
    from console.app import ConsoleApp

__all__ = ["backend_of", "console_app"]


def console_app(node: DOMNode) -> ConsoleApp:
    """The app `node` runs in: always a ConsoleApp, the only app here."""
    return cast("ConsoleApp", node.app)


def backend_of(node: DOMNode) -> Backend:
    """The logged-in backend. The screens that ask are shown only after the
    login, so a missing one is this program's mistake, said as an error."""
    backend = console_app(node).backend
    if backend is None:
        raise ConsoleError("not logged in to the broker")
    return backend
