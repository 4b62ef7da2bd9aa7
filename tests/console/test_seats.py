"""A shared session, the console's side: the broker's real `roster`,
`ended engineer_removed` and `error session_full` frames through the
client (`JoinedSession`, the console's handshake), and how each is put
to the engineer."""

from __future__ import annotations

from broker.session import ended_frame
from broker.wire.machine.handshake import Failed, Handshake
from broker.wire.machine.session import SESSION_FULL
from broker.wire.messages import Message, decode, encode
from console.client import JoinedSession, join_failure
from console.errors import SessionFull
from console.roster import Roster
from tests.wire.handshakes import CODE, console_side


def joined() -> JoinedSession:
    return JoinedSession(link=None, session="s1", alias="desk", sas="AAAA-BBBB",  # type: ignore[arg-type]
                         host_key=None, granted=("view", "control"), identity=None)  # type: ignore[arg-type]


def roster_frame(*seats: tuple[str, str, str, list[str]], you: str = "console") -> str:
    return encode("roster", seats=[{"seat": s, "login": login, "display": display,
                                    "rights": rights} for s, login, display, rights in seats],
                  you=you)


ALICE = ("console", "alice", "Alice Example", ["view", "control"])
BOB = ("console-2", "bob", "Bob Builder", ["view"])


async def test_each_roster_is_kept_and_heard_by_the_handlers() -> None:
    session = joined()
    heard: list[Roster] = []
    seen: list[str] = []

    async def on_roster(roster: Roster) -> None:
        heard.append(roster)

    async def on_control(msg: Message) -> None:
        seen.append(msg.type)

    session.on_roster.append(on_roster)
    session.on_control.append(on_control)
    assert session.roster is None  # nobody else has ever joined
    await session._dispatch(decode(roster_frame(ALICE, BOB)))
    assert session.roster is not None and heard == [session.roster]
    assert session.roster.text() == "Alice Example (control), Bob Builder (view)"
    assert session.roster.others_text() == "Bob Builder (view)"
    await session._dispatch(decode(roster_frame(ALICE)))  # Bob left
    assert len(heard) == 2 and session.roster.others_text() == "nobody else"
    assert seen == ["roster", "roster"]  # the other handlers still hear everything
    assert session.ended is None


async def test_roster_names_are_escaped() -> None:
    session = joined()
    # A label the broker passed (printable, no control characters) can still
    # be odd; what reaches a screen goes through `printable` regardless.
    await session._dispatch(decode(roster_frame(ALICE, ("console-2", "eve", "Eve [x]", ["view"]))))
    assert session.roster is not None
    assert "\x1b" not in session.roster.text()
    fake = Roster.from_message(Message("roster", {"seats": [
        {"seat": "console-2", "login": "eve", "display": "Eve\x1b[2J", "rights": ["view"]}],
        "you": "console"}))  # built without the codec: escaping does not rest on it
    assert "\x1b" not in fake.others_text() and "Eve" in fake.others_text()


async def test_removed_by_the_customer_is_a_clear_end_exit_0() -> None:
    session = joined()
    await session._dispatch(decode(ended_frame("engineer_removed")))
    assert session.removed
    text = session.outcome(left=False)  # no exception: exit 0, an end the customer chose
    assert text.startswith("The customer removed you from the session")
    assert "goes on for the others" in text


async def test_other_ends_are_not_a_removal() -> None:
    session = joined()
    await session._dispatch(decode(ended_frame("customer_ended")))
    assert not session.removed


def test_a_full_session_refuses_the_join_exit_5_without_asking() -> None:
    handshake = Handshake(console_side(), CODE)
    handshake.start(now=0.0)
    # The broker's own refusal, as its machine words it.
    events = handshake.receive_frame(encode("error", code="session_full", message=SESSION_FULL),
                                     now=1.0)
    failed = [e for e in events if isinstance(e, Failed)]
    assert len(failed) == 1
    error = join_failure(failed[0], waiting=False)
    assert type(error) is SessionFull and error.exit_code == 5
    assert "already has 4 engineers" in str(error)
    assert "customer was not asked" in str(error)


async def test_the_full_screen_console_hears_the_roster_and_the_removal() -> None:
    from console.backend import RelaySession, SessionEvent

    session = joined()
    events: list[SessionEvent] = []
    relay = RelaySession(session)
    relay._on_event = events.append
    session.on_roster.append(relay._roster)  # as `start` wires it
    session.on_control.append(relay._control)
    await session._dispatch(decode(roster_frame(ALICE, BOB)))
    await session._dispatch(decode(ended_frame("engineer_removed")))
    assert [e.kind for e in events] == ["roster", "ended"]
    assert events[0].others == "Bob Builder (view)"
    assert events[0].text == "Now in this session: Alice Example (control), Bob Builder (view)."
    assert events[1].text.startswith("The customer removed you from the session")


async def test_the_plain_console_says_each_roster_as_a_status_line() -> None:
    from console.terminal import roster_status

    session = joined()
    await session._dispatch(decode(roster_frame(ALICE, BOB)))
    assert session.roster is not None
    assert (f"consentry: {roster_status(session.roster)}"
            == "consentry: now in this session: Alice Example (control), Bob Builder (view)")


async def test_frames_from_a_real_link_reach_the_session_in_order() -> None:
    """The relay's control reader on a loopback WebSocket: the broker's roster
    while the shell runs, then its `ended engineer_removed`, then the close."""
    import asyncio

    from websockets.asyncio.client import connect
    from websockets.asyncio.server import ServerConnection, serve

    from broker.client.link import BrokerLink, FastClientConnection
    from broker.client.relay import SSHRelay

    async def broker(ws: ServerConnection) -> None:
        await ws.send(roster_frame(ALICE, BOB))
        await ws.send(roster_frame(ALICE))
        await ws.send(ended_frame("engineer_removed"))
        await ws.close(1000, "engineer_removed")

    heard: list[Roster] = []

    async def on_roster(roster: Roster) -> None:
        heard.append(roster)

    async with serve(broker, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}",
                           create_connection=FastClientConnection) as ws:
            session = joined()
            session.link = BrokerLink(ws)
            session.on_roster.append(on_roster)
            relay = SSHRelay(session.link, session._dispatch)  # as `open_ssh` runs it
            await asyncio.wait_for(relay.task, 5)
    assert [r.others_text() for r in heard] == ["Bob Builder (view)", "nobody else"]
    assert session.removed
    assert session.outcome(left=False).startswith("The customer removed you")
