"""How a session's end is put to the engineer (plain terminal and TUI alike):
"You left" only for a real leave, a lost broker as a broker error (exit 4),
the customer's, the shell's and the time limits' ends in their own words."""

from __future__ import annotations

import pytest

from broker.session import ended_frame
from broker.wire.messages import decode, encode
from console.client import JoinedSession
from console.errors import BrokerError, BrokerShutdown, LinkLost


def _joined(ended: str | None) -> JoinedSession:
    session = JoinedSession(link=None, session="s1", alias="desk", sas="AAAA-BBBB",  # type: ignore[arg-type]
                            host_key=None, granted=("view",), identity=None)  # type: ignore[arg-type]
    session.ended = decode(ended) if ended is not None else None
    return session


def test_a_real_leave_is_you_left() -> None:
    assert _joined(None).outcome(left=True) == "You left the session."


def test_a_lost_link_is_never_you_left() -> None:
    with pytest.raises(LinkLost) as info:
        _joined(None).outcome(left=False)
    assert info.value.exit_code == 4
    assert "connection to the broker was lost" in str(info.value)


@pytest.mark.parametrize("reason", ["customer_ended", "shell_exited", "idle_timeout",
                                    "max_duration", "agent_quit"])
def test_ends_by_others_keep_their_own_words(reason: str) -> None:
    text = _joined(ended_frame(reason)).outcome(left=False)
    assert "You left" not in text and text == decode(ended_frame(reason))["message"]


@pytest.mark.parametrize("frame", [ended_frame("audit_unavailable"),
                                   encode("error", code="internal_error", message="boom")])
def test_the_broker_failing_is_exit_4(frame: str) -> None:
    with pytest.raises(BrokerError) as info:
        _joined(frame).outcome(left=False)
    assert info.value.exit_code == 4


def test_a_broker_stop_or_restart_is_exit_9_and_says_what_to_do() -> None:
    with pytest.raises(BrokerShutdown) as info:
        _joined(ended_frame("broker_shutdown")).outcome(left=False)
    assert info.value.exit_code == 9
    assert "shut down or restarted" in str(info.value) and "join again" in str(info.value)


async def test_the_full_screen_console_says_the_same_about_a_broker_restart() -> None:
    from console.backend import RelaySession, SessionEvent

    joined = _joined(ended_frame("broker_shutdown"))
    events: list[SessionEvent] = []
    relay = RelaySession(joined)
    relay._on_event = events.append
    assert joined.ended is not None
    await relay._control(joined.ended)
    assert [e.kind for e in events] == ["ended"]
    assert "shut down or restarted" in events[0].text and "join again" in events[0].text


async def test_the_reason_is_awaited_briefly_and_no_longer_than_needed() -> None:
    import asyncio

    from console.session_end import wait_for_reason

    loop = asyncio.get_running_loop()
    link_up: asyncio.Future[None] = loop.create_future()
    pump = asyncio.ensure_future(link_up)
    joined = _joined(None)
    loop.call_later(0.1, lambda: setattr(joined, "ended", decode(ended_frame("customer_ended"))))
    started = loop.time()
    await wait_for_reason(joined, pump, grace=5)  # type: ignore[arg-type]
    assert joined.ended is not None and loop.time() - started < 1
    started = loop.time()
    await wait_for_reason(_joined(None), pump, grace=0.2)  # type: ignore[arg-type]
    assert 0.2 <= loop.time() - started < 1  # no word: the grace, then on
    pump.cancel()
    started = loop.time()
    await wait_for_reason(_joined(None), pump, grace=5)  # type: ignore[arg-type]
    assert loop.time() - started < 0.5  # the link closed: nothing more will come
