"""What the customer is told about a session's link to the broker.

Short on purpose: during a session the notice rides in the one banner row
beside who is connected (`agent.screen`), and the way to end the session
must stay on that row at 80 columns, however long the engineer's name.
"""

from __future__ import annotations

from broker.client.relay import LinkEvent

__all__ = ["link_notice"]


def link_notice(event: LinkEvent) -> str | None:
    """The notice for `event`, None for states the customer need not see."""
    if event.kind == "retrying":
        return f"Reconnecting ({event.seconds:.0f} s)… Ctrl-] e ends it"
    if event.kind == "peer_lost":
        # "Them": who it is stands at the banner's start, before the note.
        return f"Waiting for them ({event.seconds:.0f} s)… Ctrl-] e ends it"
    if event.kind == "resumed":
        return f"Connection restored (it was down {event.seconds:.1f} s)"
    return None
