"""What the engineer is told while the session's link is down and when it
is back, on the full-screen console and in the session's outcome."""

from __future__ import annotations

import pytest

from broker.client.relay import LinkEvent
from console.errors import LinkLost
from console.format import link_text
from tests.console.test_seats import joined


def test_each_link_state_has_its_words() -> None:
    assert link_text(LinkEvent("retrying", 3.2)) == "connection lost — reconnecting (3 s)…"
    assert "waiting up to 120 s" in (link_text(LinkEvent("peer_lost", 120)) or "")
    assert link_text(LinkEvent("resumed", 4.25)) == "resumed (the connection was down 4.2 s)"
    assert link_text(LinkEvent("lost")) is None  # "retrying" follows at once


async def test_the_full_screen_console_shows_the_link_as_notices() -> None:
    from console.backend import RelaySession, SessionEvent

    session = joined()
    events: list[SessionEvent] = []
    relay = RelaySession(session)
    relay._on_event = events.append
    session.on_link.append(relay._link)  # as `start` wires it
    for event in (LinkEvent("lost"), LinkEvent("retrying", 1.0), LinkEvent("resumed", 1.5)):
        session._link_event(event)
    assert [(e.kind, e.text) for e in events] == [
        ("notice", "Connection lost — reconnecting (1 s)…"),
        ("notice", "Resumed (the connection was down 1.5 s)")]


def test_a_link_that_could_not_be_restored_ends_with_its_reason() -> None:
    session = joined()
    session._link_event(LinkEvent("gave_up", text="the broker refused: that session is over"))
    with pytest.raises(LinkLost, match="that session is over"):
        session.outcome(left=False)
