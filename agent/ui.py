"""What the agent needs of the customer's screen.

`agent.screen.CustomerScreen` is the real one; the bench's fake customer
(`bench.agents.HarnessScreen`) is another. Typing `Agent` against this
protocol, not the class, lets the type checker tell when a new call to the
screen is missing from either (a missing method once killed the bench's
agents at the end of their first session).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from agent.consent import ConsentRequest, Decision
    from agent.screen import Viewer
    from broker.wire.chat import ChatLine


class CustomerUI(Protocol):
    quit: asyncio.Event
    # Set by the agent: what the customer's keys ask for.
    on_end_all: Callable[[], None]
    on_view_only: Callable[[str | None], None]
    on_remove: Callable[[str], None]
    on_invite: Callable[[], None]
    on_customer_input: Callable[[bytes], None]
    on_cancel_transfers: Callable[[], object]
    on_files: Callable[[], None]
    on_chat_send: Callable[[str], None]

    def set_code(self, code: str | None, expires_in: int) -> None: ...
    def notice(self, text: str) -> None: ...
    def flash(self, text: str, seconds: float = ...) -> None: ...
    async def ask_consent(self, request: ConsentRequest, timeout: float,
                          max_rights: str) -> Decision: ...
    async def show_invite(self, code: str, expires_in: int,
                          claimed: asyncio.Event) -> None: ...
    async def show_panel(self, lines: Callable[[], list[str]],
                         actions: Mapping[str, Callable[[], object]]) -> None: ...
    def session_started(self, session: str, viewer: Viewer) -> None: ...
    def session_ended(self, session: str, message: str) -> None: ...
    def set_control(self, session: str, control: bool) -> None: ...
    def set_activity(self, text: str) -> None: ...
    def mirror(self, data: bytes) -> asyncio.Future[None] | None: ...
    def chat_line(self, line: ChatLine) -> None: ...
