"""How a session ended, once the shell's connection has closed: the same
answer for the plain terminal and the full-screen console.

Why wait: the agent tells the broker why it ends a session (the customer
pressed Ctrl-] e, the shell exited) and closes the shell's SSH connection
at once; the broker's `ended`, with that reason, records the end first and
so arrives a moment after the closed connection. Deciding at the close
would call every such end a lost broker.
"""

from __future__ import annotations

import asyncio

from broker.wire.text import printable
from console.client import JoinedSession
from console.errors import BrokerError

# How long the broker has to say why, after the shell's connection closed.
ENDED_GRACE = 3.0
_STEP = 0.05


async def wait_for_reason(joined: JoinedSession, pump: asyncio.Task[None],
                          grace: float = ENDED_GRACE) -> None:
    """Return once the broker said why the session ended (`joined.ended`),
    the link to it closed (`pump` is done), or `grace` has passed."""
    deadline = asyncio.get_running_loop().time() + grace
    while joined.ended is None and not pump.done():
        if asyncio.get_running_loop().time() >= deadline:
            return
        await asyncio.sleep(_STEP)


async def outcome_after_shell(joined: JoinedSession, pump: asyncio.Task[None], *,
                              left: bool, ssh_error: Exception | None) -> str:
    """The end in words, once the shell's connection closed (`left`: the
    engineer chose to). Raises `BrokerError` (or `LinkLost`) when the broker
    failed or vanished, or the secure shell failed under a live link."""
    if not left:
        await wait_for_reason(joined, pump)
    if joined.ended is None and not left and ssh_error is not None and not pump.done():
        # The secure shell failed (not a leave): the broker sees the link drop.
        pump.cancel()
        await joined.link.close()
        raise BrokerError("the secure shell to the customer's computer failed "
                          f"({printable(str(ssh_error), 200)}), so the session is over")
    lost = joined.ended is None and not left and pump.done()
    if joined.ended is None and not lost:
        # The link is up and the shell closed: we end it (the engineer's
        # own leave is said to the broker here too, as `engineer_left`).
        await joined.leave()
        left = True
    pump.cancel()
    return joined.outcome(left=left)
